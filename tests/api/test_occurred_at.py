"""`occurred_at` over HTTP: accepted on a debit, each debit of a batch and a settle; a time
without an offset or out of range is 422; the same key with another occurred_at is a conflict;
the projection's entries are dated by it (and land in its month's partition)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import Any

import pytest

from ledger import db
from ledger.limits import OCCURRED_AT_AGE_S_MAX
from tests.api.conftest import Api
from tests.api.support import assert_problem, created, make_world

pytestmark = pytest.mark.anyio


def _iso(at: dt.datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def _world(api: Api) -> tuple[Any, dt.datetime]:
    """A world whose agent holds a block effective since 40 days ago."""
    world = await make_world(api, granted=1)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    await created(
        api,
        "/v1/grants",
        {
            "wallet_id": world.wallet["id"],
            "amount": 1000,
            "category": "paid",
            "consideration_minor": 100,
            "currency": "USD",
            "effective_at": _iso(now - dt.timedelta(days=40)),
        },
    )
    return world, now


async def _entries(
    pool: db.Pool, operation_id: str
) -> tuple[list[tuple[str, int, dt.datetime]], set[str]]:
    """The projection's entries of an operation, once the feed has written them."""
    deadline_s = time.monotonic() + 20
    while True:
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT kind, amount, effective_at, tableoid::regclass::text FROM ledger_entries"
                " WHERE operation_id = %s ORDER BY engine_ts",
                (uuid.UUID(operation_id),),
            )
            rows = await cursor.fetchall()
        if rows:
            return [(k, int(a), at) for k, a, at, _ in rows], {p for *_, p in rows}
        assert time.monotonic() < deadline_s, "the feed never projected the operation"
        await asyncio.sleep(0.05)


async def test_a_debit_with_occurred_at_is_projected_at_it(api: Api, pool: db.Pool) -> None:
    world, now = await _world(api)
    # Last month's usage, arriving now: its entries belong to last month.
    occurred = (now.replace(day=1) - dt.timedelta(days=1)).replace(hour=23, minute=59)
    r = await api.post(
        "/v1/debits", world.spend(amount=7, occurred_at=_iso(occurred)), key="runtime"
    )
    assert r.status_code == 201, r.text
    entries, partitions = await _entries(pool, r.json()["id"])
    assert entries == [("debit", -7, occurred)]
    assert partitions == {f"ledger_entries_{occurred:y%Ym%m}"}


async def test_a_settle_with_occurred_at_is_projected_at_it(api: Api, pool: db.Pool) -> None:
    world, now = await _world(api)
    r = await api.post("/v1/reservations", world.spend(amount=50), key="runtime")
    reservation = r.json()["id"]
    occurred = now - dt.timedelta(seconds=30)
    r = await api.post(
        f"/v1/reservations/{reservation}/settle",
        {"amount": 60, "overage": "cap", "occurred_at": _iso(occurred)},
        key="runtime",
    )
    assert r.status_code == 200, r.text
    entries, _ = await _entries(pool, r.json()["id"])
    assert {(kind, at) for kind, _, at in entries} == {("settle", occurred), ("debit", occurred)}
    assert sum(amount for _, amount, _ in entries) == -60


async def test_a_batch_debit_carries_its_own_occurred_at(api: Api, pool: db.Pool) -> None:
    world, now = await _world(api)
    occurred = now - dt.timedelta(hours=5)
    items = [
        {**world.spend(amount=3), "idempotency_key": api.k("b1"), "occurred_at": _iso(occurred)},
        {**world.spend(amount=4), "idempotency_key": api.k("b2")},
        {
            **world.spend(amount=5),
            "idempotency_key": api.k("b3"),
            "occurred_at": _iso(now + dt.timedelta(days=1)),
        },
    ]
    r = await api.post("/v1/debits/batch", {"debits": items}, key="runtime", idem=None)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [201, 201, 422]
    assert results[2]["error"]["code"] == "occurred_at_out_of_range"
    entries, _ = await _entries(pool, results[0]["debit"]["id"])
    assert entries == [("debit", -3, occurred)]


@pytest.mark.parametrize(
    ("occurred_at", "code"),
    [
        ("2025-01-01T00:00:00", "validation_error"),  # no offset
        ("not a time", "validation_error"),
        ("2999-01-01T00:00:00Z", "occurred_at_out_of_range"),
        ("1969-01-01T00:00:00Z", "occurred_at_out_of_range"),
    ],
)
async def test_a_bad_occurred_at_is_422_naming_the_field(
    api: Api, occurred_at: str, code: str
) -> None:
    world, _ = await _world(api)
    at = occurred_at
    for path, body in (
        ("/v1/debits", world.spend(amount=1, occurred_at=occurred_at)),
        (
            "/v1/debits/batch",
            {"debits": [{**world.spend(amount=1), "idempotency_key": "x", "occurred_at": at}]},
        ),
    ):
        r = await api.post(path, body, key="runtime")
        if path.endswith("batch") and code != "validation_error":
            assert r.json()["results"][0]["error"]["code"] == code
            continue
        problem = assert_problem(r, code)
        assert "occurred_at" in problem["field"]


async def test_too_old_is_refused_and_moves_nothing(api: Api) -> None:
    world, now = await _world(api)
    old = now - dt.timedelta(seconds=OCCURRED_AT_AGE_S_MAX + 60)
    r = await api.post("/v1/debits", world.spend(amount=1, occurred_at=_iso(old)), key="runtime")
    assert_problem(r, "occurred_at_out_of_range", field="occurred_at")
    r = await api.get(f"/v1/wallets/{world.wallet['id']}")
    assert r.json()["available"] == 1001


async def test_the_same_key_with_another_occurred_at_is_a_conflict(api: Api) -> None:
    world, now = await _world(api)
    at = _iso(now - dt.timedelta(hours=1))
    first = await api.post("/v1/debits", world.spend(amount=2, occurred_at=at), "runtime", "k1")
    assert first.status_code == 201, first.text
    again = await api.post("/v1/debits", world.spend(amount=2, occurred_at=at), "runtime", "k1")
    assert again.status_code == 201 and again.headers["Idempotency-Hit"] == "true"
    other = _iso(now - dt.timedelta(hours=2))
    r = await api.post("/v1/debits", world.spend(amount=2, occurred_at=other), "runtime", "k1")
    assert_problem(r, "idempotency_conflict")
    r = await api.post("/v1/debits", world.spend(amount=2), "runtime", "k1")
    assert_problem(r, "idempotency_conflict")
