"""A refund in money as the projection sees it: its `refund_out` entry joins its
`grant_refunds` row by operation id, and the projection's reconciliation stays clean. A module
of its own: the check compares the whole catalog with this test's engine."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from ledger import db
from tests.api.conftest import Api
from tests.api.support import make_world, services_of

pytestmark = pytest.mark.anyio


async def _rows(pool: db.Pool, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(sql, params)
        return list(await cursor.fetchall())


async def test_the_projection_joins_refund_out_to_its_row(api: Api, pool: db.Pool) -> None:
    world = await make_world(api, granted=1000)
    r = await api.post(
        f"/v1/grants/{world.grant['id']}/refund", {"amount": 250, "refund_minor": 2000}
    )
    assert r.status_code == 200, r.text
    refund_id = uuid.UUID(r.json()["id"])
    deadline = time.monotonic() + 20
    while True:
        found = await _rows(
            pool,
            "SELECT e.kind, e.amount, e.account_id, r.refund_minor, r.currency, r.credits"
            " FROM ledger_entries e JOIN grant_refunds r ON r.operation_id = e.operation_id"
            " WHERE e.operation_id = %s",
            refund_id,
        )
        if found:
            break
        assert time.monotonic() < deadline, "the feed never projected the refund"
        await asyncio.sleep(0.05)
    assert found == [("refund_out", -250, uuid.UUID(world.grant["id"]), 2000, "USD", 250)]
    r = await api.get(f"/v1/wallets/{world.wallet['id']}/entries", key="finance")
    assert [(e["type"], e["amount"]) for e in r.json()["entries"]] == [
        ("grant", 1000),
        ("refund_out", -250),
    ]
    services = services_of(api.app)
    while True:  # the projection check compares up to the watermark: let it pass the refund
        (state,) = await _rows(pool, "SELECT watermark_ts FROM projection_state")
        transfers = await services.service.ledger.lookup_transfers([refund_id.int])
        if state[0] >= transfers[0].timestamp:
            break
        await asyncio.sleep(0.05)
    result = await services.projection_check.run_to_watermark()
    assert result.clean, result
