"""An app on the embedded engine (in memory) and a real Postgres, driven through litestar's
async test client; API keys of every scope, and one bound to a customer."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from api.app import ApiSettings, create_app
from ledger import db
from ledger.client import open_ledger
from ledger.clock import TestClock
from ledger.embedded import EmbeddedEngine
from ledger.repositories import api_keys
from ledger.settings import LedgerSettings

_counter = itertools.count(1)


@dataclass
class Api:
    client: httpx.AsyncClient
    keys: dict[str, str]
    engine: EmbeddedEngine
    app: Any = None
    seq: int = field(default_factory=lambda: next(_counter))

    def headers(self, key: str = "admin", idem: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.keys[key]}"}
        if idem is not None:
            headers["Idempotency-Key"] = idem
        return headers

    def k(self, name: str) -> str:
        return f"t{self.seq}-{name}"

    async def post(
        self,
        path: str,
        body: Any,
        key: str = "admin",
        idem: str | None = "auto",
    ) -> Any:
        idem_key = self.k(f"{path}-{next(_counter)}") if idem == "auto" else idem
        return await self.client.post(path, json=body, headers=self.headers(key, idem_key))

    async def get(self, path: str, key: str = "admin") -> Any:
        return await self.client.get(path, headers=self.headers(key))


async def wait_until_following(client: httpx.AsyncClient, pool: db.Pool) -> None:
    """Returns once the app follows catalog changes. Its listener reloads the whole catalog when
    its LISTEN is in place, a moment after start; an object created before that reload ends
    can be missing from the cache until its notification comes through. A key created now is
    known only after that reload (through it, or through its own notification), so once it
    authenticates, the reload is behind us."""
    async with pool.connection() as conn, conn.transaction():
        _, probe = await api_keys.create_key(conn, name="test-probe", scopes=["finance"])
    deadline_s = time.monotonic() + 10.0
    while True:
        r = await client.get("/v1/credit-types/probe", headers={"Authorization": f"Bearer {probe}"})
        if r.status_code != 401:
            return
        assert time.monotonic() < deadline_s, "the app did not start following catalog changes"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def app_on(
    pool: db.Pool, migrated_db_url: str, test_clock: TestClock | None = None
) -> AsyncIterator[Api]:
    """The app on an in-memory engine; with `test_clock`, a sandbox's (`serve --test-clock`):
    the engine and the service both read it."""
    keys = {}
    async with pool.connection() as conn, conn.transaction():
        for scope in ("admin", "runtime", "finance"):
            _, keys[scope] = await api_keys.create_key(conn, name=f"test-{scope}", scopes=[scope])
        _, keys["all"] = await api_keys.create_key(
            conn, name="test-all", scopes=["admin", "runtime", "finance"]
        )
    engine = EmbeddedEngine() if test_clock is None else EmbeddedEngine(clock_ns=test_clock)
    ledger = open_ledger(LedgerSettings(), engine=engine)
    app = create_app(
        ApiSettings(database=migrated_db_url), ledger=ledger, pool=pool, test_clock=test_clock
    )
    # The app runs on this test's event loop, the loop its Postgres pool belongs to (litestar's
    # AsyncTestClient would run it in a thread of its own, with another loop).
    transport = httpx.ASGITransport(app=app)
    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        await wait_until_following(client, pool)
        yield Api(client, keys, engine, app)
    await ledger.close()
    engine.close()


@pytest.fixture
async def api(pool: db.Pool, migrated_db_url: str) -> AsyncIterator[Api]:
    async with app_on(pool, migrated_db_url) as running:
        yield running


# 2025-01-01T00:00:00Z, where the sandboxes of the tests start.
TEST_CLOCK_START_NS = 1_735_689_600 * 1_000_000_000


@pytest.fixture
async def clocked_api(pool: db.Pool, migrated_db_url: str) -> AsyncIterator[Api]:
    """The app on a test clock at 2025-01-01T00:00:00Z (`api.app.services.test_clock`)."""
    async with app_on(pool, migrated_db_url, TestClock(TEST_CLOCK_START_NS)) as running:
        yield running
