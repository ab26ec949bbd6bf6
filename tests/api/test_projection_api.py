"""The projection as a user of the HTTP API meets it: the service's own feed writes the entries
of spends made over HTTP, with their dimensions; a wallet's entries carry the dimensions of the
spend they belong to; /readyz says where the projection stands."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from ledger import db
from tests.api.conftest import Api
from tests.api.support import make_world

pytestmark = pytest.mark.anyio


async def _rows(pool: db.Pool, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(sql, params)
        return list(await cursor.fetchall())


async def test_entries_carry_the_dimensions_of_their_spend(api: Api) -> None:
    world = await make_world(api, granted=1000)
    chat = {"feature": "chat", "model": "small"}
    r = await api.post("/v1/debits", world.spend(amount=100, dimensions=chat), key="runtime")
    debit = r.json()["id"]
    search = {"feature": "search"}
    r = await api.post("/v1/reservations", world.spend(amount=50, dimensions=search), key="runtime")
    reservation = r.json()["id"]
    # Settled past what was held: the overage legs carry the reservation's dimensions too.
    r = await api.post(
        f"/v1/reservations/{reservation}/settle", {"amount": 70, "overage": "cap"}, key="runtime"
    )
    assert r.status_code == 200, r.text
    r = await api.post(f"/v1/debits/{debit}/refund", {"amount": 10}, key="admin")
    assert r.status_code in (200, 201), r.text
    await api.post("/v1/debits", world.spend(amount=1), key="runtime")  # no dimensions

    r = await api.get(f"/v1/wallets/{world.wallet['id']}/entries", key="finance")
    entries = [(e["type"], e["amount"], e["dimensions"]) for e in r.json()["entries"]]
    assert entries == [
        ("grant", 1000, {}),
        ("debit", -100, chat),
        ("reserve", -50, search),
        ("settle", -50, search),
        ("debit", -20, search),
        ("refund", 10, chat),
        ("debit", -1, {}),
    ]


async def test_the_services_feed_projects_what_was_spent_over_http(api: Api, pool: db.Pool) -> None:
    world = await make_world(api, granted=1000)
    dims = {"user": f"u-{uuid.uuid4().hex[:8]}", "model": "large"}
    r = await api.post("/v1/debits", world.spend(amount=33, dimensions=dims), key="runtime")
    debit = uuid.UUID(r.json()["id"])
    deadline = time.monotonic() + 20
    while True:
        found = await _rows(
            pool,
            "SELECT e.kind, e.amount, d.dimensions, e.customer_id, e.resource_id"
            " FROM ledger_entries e LEFT JOIN dimension_sets d ON d.id = e.dimension_set_id"
            " WHERE e.operation_id = %s",
            debit,
        )
        if found:
            break
        assert time.monotonic() < deadline, "the service's feed never projected the debit"
        await asyncio.sleep(0.05)
    assert [(k, int(a), d) for k, a, d, _, _ in found] == [("debit", -33, dims)]
    assert str(found[0][3]) == world.customer["id"]
    assert str(found[0][4]) == world.agent["id"]
    # /readyz reads the projection's state as of at most a second ago.
    while True:
        projection = (await api.client.get("/readyz")).json()["projection"]
        if projection["watermark_ts"]:
            break
        assert time.monotonic() < deadline, projection
        await asyncio.sleep(0.1)
    assert 0 <= projection["lag_s"] < 20
