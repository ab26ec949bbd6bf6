"""Helpers of the API contract tests: a world to spend in, problem+json assertions, balances,
customer-bound keys, and an app whose ledger can be switched off.

Everything runs on the test's event loop (the app, its lifespan and the pool), as in
`tests/api/conftest.py`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from litestar import Litestar

from api.app import ApiSettings, create_app
from api.errors import PROBLEM_MEDIA_TYPE, STATUS, TITLES
from api.services import Services
from ledger import db
from ledger.client import LedgerUnavailable, open_ledger
from ledger.embedded import EmbeddedEngine
from ledger.repositories import api_keys
from ledger.settings import LedgerSettings
from tests.api.conftest import Api, wait_until_following

MISSING_ID = "00000000-0000-0000-0000-0000000000ff"
AMOUNT_MAX = (1 << 63) - 1


def assert_problem(response: httpx.Response, code: str, **fields: Any) -> dict[str, Any]:
    """`response` is the problem+json of `code` (RFC 9457 members and the stable code), with
    `fields` among its members; returns the body."""
    status = STATUS[code]
    assert response.status_code == status, (code, response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE), response.headers
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status, body
    assert body["title"] == TITLES[code], body
    assert body["type"] == f"https://credit-ledger.dev/problems/{code.replace('_', '-')}", body
    for name, value in fields.items():
        assert body.get(name) == value, (name, value, body)
    return body


@dataclass
class World:
    """A customer with a team (budgeted in some tests) and an agent under it; the agent's
    wallet holds one paid grant of `granted` credits."""

    code: str
    customer: dict[str, Any]
    team: dict[str, Any]
    agent: dict[str, Any]
    wallet: dict[str, Any]
    grant: dict[str, Any]

    def spend(self, **extra: Any) -> dict[str, Any]:
        return {"resource_id": self.agent["id"], "credit_type": self.code, **extra}


async def created(api: Api, path: str, body: Any, key: str = "admin") -> dict[str, Any]:
    r = await api.post(path, body, key=key)
    assert r.status_code == 201, (path, r.text)
    result: dict[str, Any] = r.json()
    return result


async def make_world(
    api: Api, *, granted: int = 1000, code: str | None = None, name: str = "Acme"
) -> World:
    if code is None:
        code = f"cr{api.seq}"
        r = await api.post("/v1/credit-types", {"code": code, "name": "Credits"})
        assert r.status_code == 201, r.text
    customer = await created(api, "/v1/customers", {"name": name})
    team = await created(api, "/v1/resources", {"customer_id": customer["id"], "kind": "team"})
    agent = await created(
        api,
        "/v1/resources",
        {"customer_id": customer["id"], "kind": "agent", "parent_id": team["id"]},
    )
    wallet = await created(api, "/v1/wallets", {"resource_id": agent["id"], "credit_type": code})
    grant = await created(
        api,
        "/v1/grants",
        {
            "wallet_id": wallet["id"],
            "amount": granted,
            "category": "paid",
            "consideration_minor": granted * 10,
            "currency": "USD",
        },
    )
    return World(code, customer, team, agent, wallet, grant)


async def balance(api: Api, wallet_id: str) -> tuple[int, int, int]:
    """(available, held, consumed) of a wallet."""
    r = await api.get(f"/v1/wallets/{wallet_id}", key="finance")
    assert r.status_code == 200, r.text
    body = r.json()
    return body["available"], body["held"], body["consumed"]


CATALOG_TABLES = (
    "credit_types",
    "customers",
    "resources",
    "wallets",
    "grants",
    "budgets",
    "prices",
)


async def catalog_counts(pool: db.Pool) -> dict[str, int]:
    """How many rows each catalog table holds: what a refused request must leave alone."""
    counts = {}
    async with pool.connection() as conn:
        for table in CATALOG_TABLES:
            cursor = await conn.execute(f"SELECT count(*) FROM {table}")
            row = await cursor.fetchone()
            assert row is not None
            counts[table] = int(row[0])
    return counts


def services_of(app: Litestar) -> Services:
    services: Services = app.state.services
    return services


async def bound_key(pool: db.Pool, customer_id: str, scopes: Iterable[str]) -> str:
    """A new key bound to one customer. Create it while no app runs, or restart the app: a
    running app learns of it through a change notification, a little later."""
    async with pool.connection() as conn, conn.transaction():
        _, key = await api_keys.create_key(
            conn,
            name=f"bound-{uuid.uuid4().hex[:8]}",
            scopes=list(scopes),
            customer_id=uuid.UUID(customer_id).int,
        )
    return key


class SwitchableLedger:
    """The real ledger until told to fail: then every call raises `fail_with`, by default
    `LedgerUnavailable`, as the ledger client does when the cluster does not answer within its
    deadline."""

    def __init__(self, ledger: Any) -> None:
        self._ledger = ledger
        self.fail_with: type[Exception] | None = None

    @property
    def down(self) -> bool:
        return self.fail_with is not None

    @down.setter
    def down(self, value: bool) -> None:
        self.fail_with = LedgerUnavailable if value else None

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._ledger, name)
        if not callable(attribute) or name == "close":
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.fail_with is not None:
                raise self.fail_with(f"{name}: the cluster did not answer (test)")
            return await attribute(*args, **kwargs)

        return call


@contextlib.asynccontextmanager
async def running_api(
    pool: db.Pool,
    migrated_db_url: str,
    keys: dict[str, str],
    *,
    engine: EmbeddedEngine | None = None,
) -> AsyncIterator[tuple[Api, Litestar, SwitchableLedger]]:
    """Like the `api` fixture, with the app and a switchable ledger in hand. Given an `engine`,
    the app runs on it and leaves it open: a second app started on it after the first one
    stopped is the same service restarted (it loads the catalog and the keys afresh)."""
    own_engine = engine is None
    engine = engine if engine is not None else EmbeddedEngine()
    ledger = open_ledger(LedgerSettings(), engine=engine)
    switch = SwitchableLedger(ledger)
    app = create_app(
        ApiSettings(database=migrated_db_url),
        ledger=switch,  # type: ignore[arg-type]
        pool=pool,
    )
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    try:
        async with (
            app.lifespan(),
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
        ):
            await wait_until_following(client, pool)
            yield Api(client, keys, engine), app, switch
    finally:
        await ledger.close()
        if own_engine:
            engine.close()


async def scope_keys(pool: db.Pool) -> dict[str, str]:
    keys = {}
    async with pool.connection() as conn, conn.transaction():
        for scopes in (["admin"], ["runtime"], ["finance"], ["admin", "runtime", "finance"]):
            name = "all" if len(scopes) == 3 else scopes[0]
            _, keys[name] = await api_keys.create_key(
                conn, name=f"test-{name}-{uuid.uuid4().hex[:6]}", scopes=scopes
            )
    return keys
