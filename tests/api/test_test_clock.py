"""A sandbox on a test clock, through HTTP: the clock stands still until advanced, goes only
forward, is said on every response and in /readyz; advancing makes happen what the time brings
(reservations time out, blocks expire and are swept at their expiry, budget periods roll over),
before the advance answers."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import Any

import pytest

from ledger import db
from tests.api.conftest import Api
from tests.api.support import assert_problem, created, make_world

pytestmark = pytest.mark.anyio


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def _advance(api: Api, **body: Any) -> dict[str, Any]:
    r = await api.post("/v1/test-clock/advance", body, idem=None)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def _entries(pool: db.Pool, operation_id: str, kind: str) -> list[tuple[int, dt.datetime]]:
    deadline_s = time.monotonic() + 20
    while True:
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT amount, effective_at FROM ledger_entries"
                " WHERE operation_id = %s AND kind = %s ORDER BY engine_ts",
                (uuid.UUID(operation_id), kind),
            )
            rows = await cursor.fetchall()
        if rows:
            return [(int(a), at) for a, at in rows]
        assert time.monotonic() < deadline_s, f"the feed never projected {kind}"
        await asyncio.sleep(0.05)


async def test_every_response_says_the_clock(clocked_api: Api) -> None:
    api = clocked_api
    start = "2025-01-01T00:00:00.000000000Z"
    responses = [
        await api.client.get("/readyz"),
        await api.client.get("/healthz"),
        await api.get("/v1/test-clock"),
        await api.client.get("/v1/test-clock"),  # 401
        await api.post("/v1/debits", {"credit_type": "nope", "amount": 1}, key="runtime"),  # lane
        await api.client.get("/schema/openapi.json"),
    ]
    for r in responses:
        assert r.headers["Test-Clock"] == start, (r.request.url, r.status_code)
    assert responses[0].json()["test_clock"] == {"now": start}
    assert responses[2].json() == {"now": start, "swept_blocks": 0}
    moved = await _advance(api, seconds=90)
    assert moved["now"] == "2025-01-01T00:01:30.000000000Z"
    r = await api.client.get("/readyz")
    assert r.headers["Test-Clock"] == moved["now"]
    assert r.json()["test_clock"] == {"now": moved["now"]}


async def test_an_instance_on_the_wall_clock_has_no_test_clock(api: Api) -> None:
    r = await api.client.get("/readyz")
    assert "Test-Clock" not in r.headers
    assert r.json()["test_clock"] is None
    assert_problem(await api.get("/v1/test-clock"), "not_found")
    r = await api.post("/v1/test-clock/advance", {"seconds": 1}, idem=None)
    assert_problem(r, "not_found")


async def test_the_clock_never_goes_back(clocked_api: Api) -> None:
    api = clocked_api
    await _advance(api, to="2025-01-10T00:00:00Z")
    r = await api.post("/v1/test-clock/advance", {"to": "2025-01-09T23:59:59Z"}, idem=None)
    assert_problem(r, "test_clock_backwards", now="2025-01-10T00:00:00.000000000Z")
    for body in ({"seconds": -1}, {}, {"seconds": 1, "to": "2025-02-01T00:00:00Z"}):
        r = await api.post("/v1/test-clock/advance", body, idem=None)
        assert_problem(r, "validation_error")
    r = await api.post("/v1/test-clock/advance", {"to": "2027-01-01T00:00:00Z"}, idem=None)
    assert_problem(r, "validation_error", field="to")  # over a year and a month at once
    assert (await api.get("/v1/test-clock")).json()["now"] == "2025-01-10T00:00:00.000000000Z"
    # To where it stands: nothing moves, and it is not an error.
    assert (await _advance(api, to="2025-01-10T00:00:00Z"))["now"].startswith("2025-01-10T00:00")
    r = await api.post("/v1/test-clock/advance", {"seconds": 1}, key="runtime", idem=None)
    assert_problem(r, "forbidden")


async def test_a_month_goes_by(clocked_api: Api, pool: db.Pool) -> None:
    """The lead's golden scenario, in short: blocks granted at the clock's now, reservations
    that time out and settle across a month's end, an expiry swept at its instant."""
    api = clocked_api
    await _advance(api, to="2025-01-10T09:00:00Z")
    world = await make_world(api, granted=1000)
    r = await api.get(f"/v1/grants/{world.grant['id']}")
    assert _at(r.json()["effective_at"]) == _at("2025-01-10T09:00:00Z")
    expiring = await created(
        api,
        "/v1/grants",
        {
            "wallet_id": world.wallet["id"],
            "amount": 500,
            "category": "paid",
            "consideration_minor": 5000,
            "currency": "USD",
            "expires_at": "2025-02-15T00:00:00Z",
        },
    )

    # 2025-01-15: a reservation nobody settles times out an hour later.
    await _advance(api, to="2025-01-15T12:00:00Z")
    r = await api.post("/v1/reservations", world.spend(amount=100, timeout_s=3600), "runtime")
    held = r.json()["id"]
    assert (await api.get(f"/v1/reservations/{held}")).json()["status"] == "held"
    # (The engine stamped it a few ns after 12:00: at 13:00 sharp it still holds.)
    await _advance(api, seconds=3601)
    assert (await api.get(f"/v1/reservations/{held}")).json()["status"] == "expired"
    wallet = (await api.get(f"/v1/wallets/{world.wallet['id']}")).json()
    assert wallet["available"] == 1500

    # 2025-01-31 23:59: reserved, settled 2025-02-01 00:00:10.
    await _advance(api, to="2025-01-31T23:59:00Z")
    r = await api.post("/v1/reservations", world.spend(amount=200, timeout_s=600), "runtime")
    reservation = r.json()["id"]
    await _advance(api, to="2025-02-01T00:00:10Z")
    r = await api.post(f"/v1/reservations/{reservation}/settle", {"amount": 150}, "runtime")
    assert r.status_code == 200, r.text
    settles = await _entries(pool, r.json()["id"], "settle")
    assert {at for _, at in settles} == {_at("2025-02-01T00:00:10Z")}

    # Past the expiry: the block is swept to breakage before the advance answers, dated at
    # its expiry; a spend no longer sees it.
    moved = await _advance(api, to="2025-02-16T00:00:00Z")
    assert moved["swept_blocks"] == 1
    block = (await api.get(f"/v1/grants/{expiring['id']}")).json()
    assert block["state"] == "expired" and block["available"] == 0
    expired = await _entries(pool, expiring["id"], "expire")
    assert [at for _, at in expired] == [_at("2025-02-15T00:00:00Z")]
    # The burn order took the sooner-expiring block first: 150 of its 500 were used.
    assert sum(amount for amount, _ in expired) == -350
    timeouts = await _entries(pool, held, "timeout")
    assert {at for _, at in timeouts} == {_at("2025-01-15T13:00:00Z")}


async def test_a_budget_period_rolls_over(clocked_api: Api) -> None:
    api = clocked_api
    await _advance(api, to="2025-01-20T00:00:00Z")
    world = await make_world(api, granted=1000)
    await created(
        api,
        "/v1/budgets",
        {
            "resource_id": world.agent["id"],
            "credit_type": world.code,
            "period": "month",
            "cap": 100,
        },
    )
    r = await api.post("/v1/debits", world.spend(amount=100), "runtime")
    assert r.status_code == 201, r.text
    assert_problem(
        await api.post("/v1/debits", world.spend(amount=1), "runtime"), "budget_exceeded"
    )
    await _advance(api, to="2025-02-01T00:00:00Z")
    r = await api.post("/v1/debits", world.spend(amount=100), "runtime")
    assert r.status_code == 201, r.text


async def test_occurred_at_is_bounded_by_the_test_clock(clocked_api: Api) -> None:
    api = clocked_api
    world = await make_world(api, granted=1000)
    late = {"amount": 1, "occurred_at": "2025-01-02T00:00:00Z"}
    r = await api.post("/v1/debits", world.spend(**late), "runtime")
    assert_problem(r, "occurred_at_out_of_range", field="occurred_at")
    await _advance(api, to="2025-01-03T00:00:00Z")
    # Now it lies in the past, after the block was granted (2025-01-01): accepted.
    r = await api.post("/v1/debits", world.spend(**late), "runtime")
    assert r.status_code == 201, r.text
