"""Every error code of `api.errors.STATUS` that the API can produce, as problem+json with its
status, its stable code and its members; and the state each refusal leaves alone."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from api.errors import STATUS
from ledger import db
from ledger.embedded import EmbeddedEngine
from ledger.repositories import api_keys
from tests.api.conftest import Api
from tests.api.support import (
    MISSING_ID,
    SwitchableLedger,
    World,
    assert_problem,
    balance,
    created,
    make_world,
    running_api,
    scope_keys,
)

pytestmark = pytest.mark.anyio


async def test_insufficient_credits_says_what_was_available_and_needed(api: Api) -> None:
    world = await make_world(api, granted=1000)
    r = await api.post("/v1/debits", world.spend(amount=1001), key="runtime")
    assert_problem(r, "insufficient_credits", available=1000, needed=1001)
    r = await api.post("/v1/reservations", world.spend(amount=5000), key="runtime")
    assert_problem(r, "insufficient_credits", available=1000, needed=5000)
    assert await balance(api, world.wallet["id"]) == (1000, 0, 0)
    # What is held is not available.
    assert (await api.post("/v1/reservations", world.spend(amount=600), key="runtime")).is_success
    r = await api.post("/v1/debits", world.spend(amount=401), key="runtime")
    assert_problem(r, "insufficient_credits", available=400, needed=401)
    assert await balance(api, world.wallet["id"]) == (400, 600, 0)
    # A settle whose overage `reject` cannot collect says so too (the overage is what it needed).
    held = (await api.post("/v1/reservations", world.spend(amount=100), key="runtime")).json()
    r = await api.post(
        f"/v1/reservations/{held['id']}/settle", {"amount": 600, "overage": "reject"}, "runtime"
    )
    assert_problem(r, "insufficient_credits", available=300, needed=500)


async def test_budget_exceeded_names_the_budget(api: Api) -> None:
    world = await make_world(api, granted=1000)
    budget = await created(
        api,
        "/v1/budgets",
        {"resource_id": world.team["id"], "credit_type": world.code, "period": "day", "cap": 100},
    )
    assert (await api.post("/v1/debits", world.spend(amount=60), key="runtime")).status_code == 201
    r = await api.post("/v1/debits", world.spend(amount=41), key="runtime")
    assert_problem(
        r, "budget_exceeded", budget_id=budget["id"], resource_id=world.team["id"], needed=41
    )
    r = await api.post("/v1/reservations", world.spend(amount=41), key="runtime")
    assert_problem(r, "budget_exceeded", budget_id=budget["id"])
    assert await balance(api, world.wallet["id"]) == (940, 0, 60)
    r = await api.get(f"/v1/budgets/{budget['id']}", key="finance")
    assert (r.json()["used"], r.json()["headroom"]) == (60, 40)


async def test_reservation_expired(api: Api) -> None:
    world = await make_world(api, granted=1000)
    ids = []
    for amount in (100, 50):
        r = await api.post(
            "/v1/reservations", world.spend(amount=amount, timeout_s=1), key="runtime"
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    assert await balance(api, world.wallet["id"]) == (850, 150, 0)
    await asyncio.sleep(1.1)
    r = await api.get(f"/v1/reservations/{ids[0]}", key="runtime")
    assert (r.status_code, r.json()["status"]) == (200, "expired")
    # Nothing left to settle for nothing; nothing left to release.
    assert_problem(
        await api.post(f"/v1/reservations/{ids[0]}/settle", {"amount": 0}, key="runtime"),
        "reservation_expired",
    )
    assert_problem(
        await api.post(f"/v1/reservations/{ids[1]}/release", None, key="runtime"),
        "reservation_expired",
    )
    # The held credits came back by themselves, and the refusals moved nothing.
    assert await balance(api, world.wallet["id"]) == (1000, 0, 0)
    # The entries say so, at the instant of each timeout, and end at the wallet's figures.
    r = await api.get(f"/v1/wallets/{world.wallet['id']}/entries", key="finance")
    entries = r.json()["entries"]
    assert [(e["type"], e["amount"]) for e in entries] == [
        ("grant", 1000),
        ("reserve", -100),
        ("reserve", -50),
        ("reservation_expired", 100),
        ("reservation_expired", 50),
    ]
    assert (entries[-1]["available_after"], entries[-1]["held_after"]) == (1000, 0)
    # A settle with a measured cost after the timeout is collected as a direct debit instead.
    r = await api.post(f"/v1/reservations/{ids[1]}/settle", {"amount": 30}, key="runtime")
    assert r.status_code == 200, r.text
    assert (r.json()["fallback_debit"], r.json()["collected"]) == (True, 30)
    assert await balance(api, world.wallet["id"]) == (970, 0, 30)


async def test_reservation_already_settled(api: Api) -> None:
    world = await make_world(api, granted=1000)
    reservation = (await created(api, "/v1/reservations", world.spend(amount=100), "runtime"))["id"]
    r = await api.post(f"/v1/reservations/{reservation}/settle", {"amount": 40}, key="runtime")
    assert r.status_code == 200, r.text
    assert_problem(
        await api.post(f"/v1/reservations/{reservation}/settle", {"amount": 40}, key="runtime"),
        "reservation_already_settled",
    )
    assert_problem(
        await api.post(f"/v1/reservations/{reservation}/release", None, key="runtime"),
        "reservation_already_settled",
    )
    assert await balance(api, world.wallet["id"]) == (960, 0, 40)


async def test_reservation_already_released(api: Api) -> None:
    world = await make_world(api, granted=1000)
    reservation = (await created(api, "/v1/reservations", world.spend(amount=100), "runtime"))["id"]
    r = await api.post(f"/v1/reservations/{reservation}/release", None, key="runtime")
    assert r.status_code == 200, r.text
    assert_problem(
        await api.post(f"/v1/reservations/{reservation}/release", None, key="runtime"),
        "reservation_already_released",
    )
    assert_problem(
        await api.post(f"/v1/reservations/{reservation}/settle", {"amount": 10}, key="runtime"),
        "reservation_already_released",
    )
    assert await balance(api, world.wallet["id"]) == (1000, 0, 0)


async def test_idempotency_conflict(api: Api) -> None:
    world = await make_world(api, granted=1000)
    key = api.k("conflict")
    r = await api.post("/v1/debits", world.spend(amount=10), key="runtime", idem=key)
    assert r.status_code == 201, r.text
    r = await api.post("/v1/debits", world.spend(amount=11), key="runtime", idem=key)
    assert_problem(r, "idempotency_conflict")
    assert await balance(api, world.wallet["id"]) == (990, 0, 10)


async def test_conflict_with_what_exists(api: Api) -> None:
    world = await make_world(api, granted=1000)
    r = await api.post("/v1/credit-types", {"code": world.code, "name": "Again"})
    assert_problem(r, "conflict", field="code")
    r = await api.get(f"/v1/credit-types/{world.code}", key="runtime")
    assert r.json()["name"] == "Credits"
    r = await api.post(
        "/v1/wallets",
        {
            "resource_id": world.agent["id"],
            "credit_type": world.code,
            "overdraft_mode": "unbounded",
        },
    )
    assert_problem(r, "conflict", field="resource_id")
    r = await api.get(f"/v1/wallets/{world.wallet['id']}", key="runtime")
    assert (r.json()["wallet"]["overdraft_mode"], r.json()["available"]) == ("hard", 1000)


async def test_not_found_for_every_kind_of_object(api: Api) -> None:
    world = await make_world(api, granted=1000)
    reads = [
        "/v1/credit-types/nosuchcode",
        f"/v1/customers/{MISSING_ID}",
        f"/v1/resources/{MISSING_ID}",
        f"/v1/wallets/{MISSING_ID}",
        f"/v1/wallets/{MISSING_ID}/entries",
        f"/v1/grants/{MISSING_ID}",
        f"/v1/grants/{world.wallet['id']}",  # an id, but not a grant's
        f"/v1/reservations/{MISSING_ID}",
        f"/v1/budgets/{MISSING_ID}",
        "/v1/no-such-route",
    ]
    details = []
    for path in reads:
        details.append(assert_problem(await api.get(path, key="runtime"), "not_found"))
    writes: list[tuple[str, Any, str]] = [
        (f"/v1/reservations/{MISSING_ID}/settle", {"amount": 1}, "runtime"),
        (f"/v1/reservations/{MISSING_ID}/release", None, "runtime"),
        (f"/v1/debits/{MISSING_ID}/refund", {"amount": 1}, "admin"),
        (f"/v1/debits/{world.grant['id']}/refund", {"amount": 1}, "admin"),
        (f"/v1/grants/{MISSING_ID}/void", {}, "admin"),
        (
            "/v1/debits",
            {"credit_type": world.code, "resource_id": MISSING_ID, "amount": 1},
            "runtime",
        ),
        (
            "/v1/debits",
            {"credit_type": world.code, "wallet_id": MISSING_ID, "amount": 1},
            "runtime",
        ),
        ("/v1/debits", world.spend(amount=1, credit_type="nosuchcode"), "runtime"),
        (
            "/v1/check",
            {"credit_type": world.code, "resource_id": MISSING_ID, "amount": 1},
            "runtime",
        ),
        (
            "/v1/reservations",
            {"credit_type": world.code, "resource_id": world.team["id"], "amount": 1},
            "runtime",
        ),  # the team has no wallet
        ("/v1/resources", {"customer_id": MISSING_ID, "kind": "team"}, "admin"),
        (
            "/v1/resources",
            {"customer_id": world.customer["id"], "kind": "agent", "parent_id": MISSING_ID},
            "admin",
        ),
        ("/v1/wallets", {"resource_id": MISSING_ID, "credit_type": world.code}, "admin"),
        ("/v1/wallets", {"resource_id": world.team["id"], "credit_type": "nosuchcode"}, "admin"),
        ("/v1/grants", {"wallet_id": MISSING_ID, "amount": 1, "category": "promotional"}, "admin"),
        (
            "/v1/budgets",
            {"resource_id": MISSING_ID, "credit_type": world.code, "period": "day", "cap": 1},
            "admin",
        ),
        (
            "/v1/prices",
            {"feature": "f", "credit_type": "nosuchcode", "credits_per_unit": 1},
            "admin",
        ),
    ]
    for path, body, key in writes:
        details.append(assert_problem(await api.post(path, body, key=key), "not_found"))
    assert await balance(api, world.wallet["id"]) == (1000, 0, 0)
    # An id in a message is the text the caller sent (UUID text), never a u128 in decimal.
    for body in details:
        assert not re.search(r"[0-9]{11,}", body.get("detail", "")), body
    no_wallet = f"resource {world.team['id']} has no wallet for credit type {world.code!r}"
    assert no_wallet in [b.get("detail") for b in details]


async def test_validation_error_names_the_field(api: Api) -> None:
    world = await make_world(api, granted=1000)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/debits", world.spend(amount="5"), "amount"),
        ("/v1/debits", world.spend(amount=0), "amount"),
        ("/v1/debits", world.spend(amount=1, dimensions={"": "x"}), "dimensions"),
        ("/v1/debits", world.spend(usage={"feature": "nope", "quantity": 1}), "usage.feature"),
        ("/v1/debits", world.spend(usage={"feature": "f", "quantity": 0}), "usage.quantity"),
        ("/v1/reservations", world.spend(amount=1, timeout_s=0), "timeout_s"),
        (
            "/v1/grants",
            {"wallet_id": world.wallet["id"], "amount": 5, "category": "gift"},
            "category",
        ),
        (
            "/v1/grants",
            {"wallet_id": world.wallet["id"], "amount": 5, "category": "paid"},
            "currency",
        ),
        ("/v1/resources", {"customer_id": world.customer["id"], "kind": "planet"}, "kind"),
        ("/v1/credit-types", {"code": "Has Spaces", "name": "x"}, "code"),
        (
            "/v1/credit-types",
            {"code": f"v{api.seq}", "name": "x", "asset_scale": 19},
            "asset_scale",
        ),
        (
            "/v1/wallets",
            {"resource_id": world.team["id"], "credit_type": world.code, "overdraft_mode": "soft"},
            "overdraft_limit",
        ),
        (
            "/v1/budgets",
            {
                "resource_id": world.team["id"],
                "credit_type": world.code,
                "period": "decade",
                "cap": 5,
            },
            "period",
        ),
    ]
    for path, body, field in cases:
        key = "runtime" if path in ("/v1/debits", "/v1/reservations") else "admin"
        r = await api.post(path, body, key=key)
        assert_problem(r, "validation_error", field=field)
    r = await api.get(f"/v1/wallets/{world.wallet['id']}/entries?limit=0", key="runtime")
    assert_problem(r, "validation_error", field="limit")
    r = await api.get("/v1/wallets/not-an-id", key="runtime")
    assert_problem(r, "validation_error", field="wallet_id")
    r = await api.post("/v1/debits", world.spend(amount=1), key="runtime", idem=None)
    assert_problem(r, "validation_error", field="Idempotency-Key")
    assert await balance(api, world.wallet["id"]) == (1000, 0, 0)


async def test_unauthorized_for_missing_malformed_unknown_and_revoked_keys(
    api: Api, pool: db.Pool
) -> None:
    world = await make_world(api, granted=1000)
    good = api.keys["runtime"]
    headers: list[dict[str, str]] = [
        {},
        {"Authorization": ""},
        {"Authorization": good},  # no scheme
        {"Authorization": f"Basic {good}"},
        {"Authorization": f"Bearer  {good}"},  # two spaces
        {"Authorization": f"Bearer {good} "},
        {"Authorization": f"Bearer {good}x"},
        {"Authorization": f"Bearer {good[:-1]}"},
        {"Authorization": "Bearer clk_" + "A" * 43},  # well formed, unknown
        {"Authorization": "Bearer " + "x" * 300},
    ]
    for extra in headers:
        r = await api.client.post(
            "/v1/debits",
            json=world.spend(amount=1),
            headers={**extra, "Idempotency-Key": api.k("unauth")},
        )
        body = assert_problem(r, "unauthorized")
        assert good not in r.text
        assert body["detail"]
    for path in (f"/v1/wallets/{world.wallet['id']}", f"/v1/grants/{world.grant['id']}"):
        assert_problem(await api.client.get(path), "unauthorized")
    # The scheme is case-insensitive (RFC 9110); the key is not.
    r = await api.client.get(
        f"/v1/wallets/{world.wallet['id']}", headers={"Authorization": f"bEaReR {good}"}
    )
    assert r.status_code == 200, r.text
    r = await api.client.get(
        f"/v1/wallets/{world.wallet['id']}", headers={"Authorization": f"Bearer {good.upper()}"}
    )
    assert_problem(r, "unauthorized")
    assert await balance(api, world.wallet["id"]) == (1000, 0, 0)


async def test_a_revoked_key_is_refused(pool: db.Pool, migrated_db_url: str) -> None:
    keys = await scope_keys(pool)
    engine = EmbeddedEngine()
    try:
        async with running_api(pool, migrated_db_url, keys, engine=engine) as (api, _, _):
            world = await make_world(api)
            assert (await api.get(f"/v1/wallets/{world.wallet['id']}", "runtime")).is_success
        async with pool.connection() as conn, conn.transaction():
            rows = await api_keys.list_active_keys(conn)
            key_id = next(k.id for h, k in rows if h == api_keys.hash_key(keys["runtime"]))
            assert await api_keys.revoke_key(conn, key_id) is not None
        async with running_api(pool, migrated_db_url, keys, engine=engine) as (api, _, _):
            r = await api.post("/v1/debits", world.spend(amount=1), key="runtime")
            assert_problem(r, "unauthorized", detail="the API key is unknown or revoked")
            assert_problem(
                await api.get(f"/v1/wallets/{world.wallet['id']}", "runtime"), "unauthorized"
            )
            assert await balance(api, world.wallet["id"]) == (1000, 0, 0)
    finally:
        engine.close()


async def test_forbidden_names_the_scopes_required(api: Api) -> None:
    world = await make_world(api, granted=1000)
    r = await api.post("/v1/debits", world.spend(amount=1), key="admin")
    assert_problem(r, "forbidden", required_scopes=["runtime"])
    r = await api.post("/v1/check", world.spend(amount=1), key="finance")
    assert_problem(r, "forbidden", required_scopes=["admin", "runtime"])
    r = await api.post("/v1/customers", {"name": "x"}, key="runtime")
    assert_problem(r, "forbidden", required_scopes=["admin"])
    assert await balance(api, world.wallet["id"]) == (1000, 0, 0)


async def test_payload_too_large(api: Api) -> None:
    world = await make_world(api, granted=1000)
    padding = "x" * (1024 * 1024)
    big = world.spend(amount=1, dimensions={"feature": padding})
    r = await api.post("/v1/debits", big, key="runtime")
    assert_problem(r, "payload_too_large")
    r = await api.post("/v1/customers", {"name": padding})
    assert_problem(r, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the limit holds on the bytes read, too.
        yield b'{"credit_type": "' + world.code.encode() + b'", "padding": "'
        for _ in range(64):
            yield b"y" * 32 * 1024
        yield b'"}'

    r = await api.client.post(
        "/v1/debits",
        content=chunks(),
        headers={**api.headers("runtime", api.k("chunked")), "content-type": "application/json"},
    )
    assert_problem(r, "payload_too_large")
    # Just under the limit is read (and then judged on its content).
    r = await api.post(
        "/v1/debits", world.spend(amount=1, dimensions={"feature": "x" * 1000}), key="runtime"
    )
    assert assert_problem(r, "validation_error")["field"].startswith("dimensions")
    assert await balance(api, world.wallet["id"]) == (1000, 0, 0)


async def test_method_not_allowed(api: Api) -> None:
    for method, path in (("DELETE", "/v1/debits"), ("PUT", "/v1/wallets"), ("GET", "/v1/check")):
        r = await api.client.request(method, path, headers=api.headers("all"))
        assert_problem(r, "method_not_allowed")


# -- the ledger does not answer ---------------------------------------------------------------


@dataclass
class Outage:
    api: Api
    ledger: SwitchableLedger
    world: World
    reservation: str
    debit: str
    budget: str


@pytest.fixture
async def outage(pool: db.Pool, migrated_db_url: str) -> AsyncIterator[Outage]:
    """A world with a budget, a debit and a reservation, made while the ledger answered."""
    keys = await scope_keys(pool)
    async with running_api(pool, migrated_db_url, keys) as (api, _, ledger):
        world = await make_world(api, granted=1000)
        budget = await created(
            api,
            "/v1/budgets",
            {
                "resource_id": world.team["id"],
                "credit_type": world.code,
                "period": "day",
                "cap": 10_000,
            },
        )
        debit = await created(api, "/v1/debits", world.spend(amount=10), "runtime")
        reservation = await created(api, "/v1/reservations", world.spend(amount=20), "runtime")
        yield Outage(api, ledger, world, reservation["id"], debit["id"], budget["id"])


Call = Callable[[Outage], Awaitable[Any]]


OUTAGE_CALLS: list[Any] = [
    pytest.param(
        lambda o: o.api.post("/v1/debits", o.world.spend(amount=1), key="runtime"), id="debit"
    ),
    pytest.param(
        lambda o: o.api.post("/v1/reservations", o.world.spend(amount=1), key="runtime"),
        id="reserve",
    ),
    pytest.param(
        lambda o: o.api.post("/v1/check", o.world.spend(amount=1), key="runtime"), id="check"
    ),
    pytest.param(
        lambda o: o.api.get(f"/v1/reservations/{o.reservation}", key="runtime"),
        id="get_reservation",
    ),
    pytest.param(
        lambda o: o.api.post(
            f"/v1/reservations/{o.reservation}/settle", {"amount": 1}, key="runtime"
        ),
        id="settle",
    ),
    pytest.param(
        lambda o: o.api.post(f"/v1/reservations/{o.reservation}/release", None, key="runtime"),
        id="release",
    ),
    pytest.param(
        lambda o: o.api.post(
            "/v1/debits/batch",
            {"debits": [{**o.world.spend(amount=1), "idempotency_key": o.api.k("batch")}]},
            key="runtime",
        ),
        id="batch",
    ),
    pytest.param(
        lambda o: o.api.get(f"/v1/wallets/{o.world.wallet['id']}"),
        id="get_wallet",
    ),
    pytest.param(
        lambda o: o.api.get(f"/v1/wallets/{o.world.wallet['id']}/entries"),
        id="entries",
    ),
    pytest.param(
        lambda o: o.api.get(f"/v1/grants/{o.world.grant['id']}"),
        id="get_grant",
    ),
    pytest.param(
        lambda o: o.api.get(f"/v1/budgets/{o.budget}"),
        id="get_budget",
    ),
    pytest.param(
        lambda o: o.api.post(
            "/v1/grants",
            {"wallet_id": o.world.wallet["id"], "amount": 5, "category": "promotional"},
        ),
        id="create_grant",
    ),
    pytest.param(
        lambda o: o.api.post(f"/v1/grants/{o.world.grant['id']}/void", {}),
        id="void",
    ),
    pytest.param(
        lambda o: o.api.post(f"/v1/debits/{o.debit}/refund", {"amount": 1}),
        id="refund",
    ),
    pytest.param(
        lambda o: o.api.post(
            "/v1/wallets", {"resource_id": o.world.team["id"], "credit_type": o.world.code}
        ),
        id="create_wallet",
    ),
    pytest.param(
        lambda o: o.api.post("/v1/credit-types", {"code": f"lu{o.api.seq}", "name": "x"}),
        id="create_credit_type",
    ),
]


@pytest.mark.parametrize("call", OUTAGE_CALLS)
async def test_ledger_unavailable_is_503_with_the_retry_hint(outage: Outage, call: Call) -> None:
    outage.ledger.down = True
    r = await call(outage)
    body = assert_problem(r, "ledger_unavailable")
    assert "retry with the same idempotency key" in body["title"]
    assert STATUS["ledger_unavailable"] == 503


async def test_ledger_unavailable_on_a_spend_under_a_new_budget(outage: Outage) -> None:
    budget = await created(
        outage.api,
        "/v1/budgets",
        {
            "resource_id": outage.world.agent["id"],
            "credit_type": outage.world.code,
            "period": "week",
            "cap": 500,
        },
    )
    assert budget["cap"] == 500
    outage.ledger.down = True
    r = await outage.api.post("/v1/debits", outage.world.spend(amount=1), key="runtime")
    assert_problem(r, "ledger_unavailable")


async def test_a_retry_with_the_same_key_after_an_outage_applies_once(outage: Outage) -> None:
    api, world = outage.api, outage.world
    before = await balance(api, world.wallet["id"])
    outage.ledger.down = True
    debit_key, grant_key = api.k("outage-debit"), api.k("outage-grant")
    r = await api.post("/v1/debits", world.spend(amount=7), key="runtime", idem=debit_key)
    assert_problem(r, "ledger_unavailable")
    grant = {"wallet_id": world.wallet["id"], "amount": 100, "category": "promotional"}
    r = await api.post("/v1/grants", grant, idem=grant_key)
    assert r.status_code >= 500, r.text  # 503 once the outage is mapped everywhere
    r = await api.client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    assert any(p.startswith("ledger:") for p in r.json()["problems"])

    outage.ledger.down = False
    assert (await api.client.get("/readyz")).status_code == 200
    for _ in range(2):
        r = await api.post("/v1/debits", world.spend(amount=7), key="runtime", idem=debit_key)
        assert (r.status_code, r.json()["amount"]) == (201, 7)
        r = await api.post("/v1/grants", grant, idem=grant_key)
        assert (r.status_code, r.json()["amount"]) == (201, 100)
    available, held, consumed = before
    assert await balance(api, world.wallet["id"]) == (available - 7 + 100, held, consumed + 7)


async def test_an_unexpected_failure_is_a_500_problem_that_reveals_nothing(
    outage: Outage,
) -> None:
    class Boom(Exception):
        pass

    outage.ledger.fail_with = Boom
    r = await outage.api.post("/v1/debits", outage.world.spend(amount=1), key="runtime")
    body = assert_problem(r, "internal_error")
    assert "Boom" not in r.text and "Traceback" not in r.text
    assert body["detail"] == "an unexpected error; it has been logged"
