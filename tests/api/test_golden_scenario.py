"""ACCOUNTING.md's golden scenario, driven through the HTTP API on a test clock, gives exactly
its numbers in every report: January usage $40.00, breakage $0, deferred closing $60.00;
February usage $30.00, breakage $30.00, deferred closing $0.00; the promotional block (200
granted, 50 consumed, 150 expired) in the memo only; $100.00 of revenue over the block's life.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ledger import db
from ledger.repositories import finance as finance_repo
from tests.api.conftest import Api
from tests.api.support import created

pytestmark = pytest.mark.anyio


async def _advance(api: Api, to: str) -> None:
    r = await api.post("/v1/test-clock/advance", {"to": to}, idem=None)
    assert r.status_code == 200, r.text


async def _close(api: Api, period: str) -> dict[str, Any]:
    """Closes `period`, waiting for the feed to see the clock pass its end (the only checks
    that may refuse it in this scenario are the ones that wait on the feed). `expiry_swept` is
    one of them: the advance swept the block that expired in the month, but that sweep's engine
    time is after the month's end, so the month's other checks may pass before the feed and the
    poster have it."""
    deadline_s = time.monotonic() + 30
    while True:
        r = await api.post(f"/v1/periods/{period}/close", None, key="finance", idem=None)
        if r.status_code == 200:
            body: dict[str, Any] = r.json()
            return body
        assert r.status_code == 409, r.text
        assert r.json()["check"] in ("projection_complete", "posted", "expiry_swept"), r.text
        assert time.monotonic() < deadline_s, r.text
        await asyncio.sleep(0.05)


async def _report(api: Api, report: str, period: str) -> list[dict[str, str]]:
    r = await api.client.get(
        f"/v1/reports/{report}", params={"period": period}, headers=api.headers("finance")
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["provisional"] is False  # the month is closed
    return [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]


async def _spend(
    api: Api, agent: str, code: str, at: str, reserve: int, settle: int | None
) -> None:
    await _advance(api, at)
    held = await created(
        api,
        "/v1/reservations",
        {"resource_id": agent, "credit_type": code, "amount": reserve, "timeout_s": 3600},
        "runtime",
    )
    if settle is not None:
        r = await api.post(
            f"/v1/reservations/{held['id']}/settle", {"amount": settle}, key="runtime"
        )
        assert r.status_code == 200, r.text
    else:
        r = await api.post(f"/v1/reservations/{held['id']}/release", None, key="runtime")
        assert r.status_code == 200, r.text


async def test_the_golden_scenario(clocked_api: Api, pool: db.Pool) -> None:
    api = clocked_api
    finance_repo.forget_partitions()
    code = "golden"
    assert (
        await api.post("/v1/credit-types", {"code": code, "name": "Credits"})
    ).status_code == 201
    customer = await created(api, "/v1/customers", {"name": "Golden"})
    agent = await created(api, "/v1/resources", {"customer_id": customer["id"], "kind": "agent"})
    agent_id = agent["id"]
    wallet = await created(api, "/v1/wallets", {"resource_id": agent_id, "credit_type": code})

    # 1. 2025-01-10 09:00, paid B1: 1,000 credits for $100.00, expires 2025-02-15 00:00.
    await _advance(api, "2025-01-10T09:00:00Z")
    b1 = await created(
        api,
        "/v1/grants",
        {
            "wallet_id": wallet["id"],
            "amount": 1000,
            "category": "paid",
            "consideration_minor": 10_000,
            "currency": "USD",
            "expires_at": "2025-02-15T00:00:00Z",
        },
    )
    # 2. 09:05, promotional B2: 200 credits, expires 2025-06-30 00:00.
    await _advance(api, "2025-01-10T09:05:00Z")
    b2 = await created(
        api,
        "/v1/grants",
        {
            "wallet_id": wallet["id"],
            "amount": 200,
            "category": "promotional",
            "expires_at": "2025-06-30T00:00:00Z",
        },
    )
    # 3.-5. Reserve 200, settle 150; reserve 50, released; reserve 250, settle 250.
    await _spend(api, agent_id, code, "2025-01-15T12:00:00Z", 200, 150)
    await _spend(api, agent_id, code, "2025-01-20T12:00:00Z", 50, None)
    await _spend(api, agent_id, code, "2025-01-25T12:00:00Z", 250, 250)
    # 6. 2025-01-31 23:59 reserve 100, pending at the month's end; settled 02-01 00:00:10.
    await _advance(api, "2025-01-31T23:59:00Z")
    late = await created(
        api,
        "/v1/reservations",
        {"resource_id": agent_id, "credit_type": code, "amount": 100, "timeout_s": 3600},
        "runtime",
    )
    await _advance(api, "2025-02-01T00:00:10Z")
    r = await api.post(f"/v1/reservations/{late['id']}/settle", {"amount": 100}, key="runtime")
    assert r.status_code == 200, r.text
    january = await _close(api, "2025-01")
    assert january["state"] == "closed"

    # 7. 2025-02-10 reserve 200, settle 200. 8. 2025-02-15 00:00 B1 expires with 300 left.
    await _spend(api, agent_id, code, "2025-02-10T12:00:00Z", 200, 200)
    await _advance(api, "2025-02-15T00:00:01Z")
    read = await api.get(f"/v1/grants/{b1['id']}", key="finance")
    assert read.json()["expired"] == 300, read.text
    await _advance(api, "2025-03-01T00:00:01Z")
    await _close(api, "2025-02")

    # 9. 2025-03-03 debit 50 (from B2); 2025-06-30 B2 expires with 150 left.
    await _advance(api, "2025-03-03T12:00:00Z")
    await created(
        api, "/v1/debits", {"resource_id": agent_id, "credit_type": code, "amount": 50}, "runtime"
    )
    await _advance(api, "2025-07-01T00:00:01Z")
    for month in ("2025-03", "2025-04", "2025-05", "2025-06"):
        await _close(api, month)

    # The rollforward: January closes at $60.00, February at $0.00, with the $60.00 of
    # February's revenue recognized out of its opening balance.
    rolled = {p: await _report(api, "rollforward", p) for p in ("2025-01", "2025-02")}
    assert [
        (r["opening"], r["additions"], r["usage"], r["breakage"], r["closing"], r["check"])
        for r in rolled["2025-01"]
    ] == [("0.00", "100.00", "40.00", "0.00", "60.00", "0.00")]
    assert [
        (r["opening"], r["additions"], r["usage"], r["breakage"], r["closing"], r["check"])
        for r in rolled["2025-02"]
    ] == [("60.00", "0.00", "30.00", "30.00", "0.00", "0.00")]
    assert rolled["2025-02"][0]["recognized_from_opening"] == "60.00"

    # Revenue: usage $40.00 in January; usage $30.00 and breakage $30.00 in February.
    def revenue(rows: list[dict[str, str]]) -> dict[str, str]:
        return {row["type"]: row["revenue"] for row in rows}

    assert revenue(await _report(api, "revenue", "2025-01")) == {"usage": "40.00"}
    assert revenue(await _report(api, "revenue", "2025-02")) == {
        "usage": "30.00",
        "breakage": "30.00",
    }
    for month in ("2025-03", "2025-04", "2025-05", "2025-06"):
        # The promotional block's activity posts nothing.
        assert await _report(api, "revenue", month) == []
        assert await _report(api, "journal-lines", month) == []

    # The journal lines: the purchase, then a usage slice per settle, each balanced.
    lines = await _report(api, "journal-lines", "2025-01")
    assert [(r["kind"], r["account"], r["debit"], r["credit"]) for r in lines] == [
        ("purchase", "1010", "100.00", "0.00"),
        ("purchase", "2100", "0.00", "100.00"),
        ("usage", "2100", "15.00", "0.00"),
        ("usage", "4000", "0.00", "15.00"),
        ("usage", "2100", "25.00", "0.00"),
        ("usage", "4000", "0.00", "25.00"),
    ]
    assert {r["block_id"] for r in lines} == {b1["id"]}
    february = await _report(api, "journal-lines", "2025-02")
    assert [(r["kind"], r["account"], r["debit"], r["credit"]) for r in february] == [
        ("usage", "2100", "10.00", "0.00"),
        ("usage", "4000", "0.00", "10.00"),
        ("usage", "2100", "20.00", "0.00"),
        ("usage", "4000", "0.00", "20.00"),
        ("breakage", "2100", "30.00", "0.00"),
        ("breakage", "4050", "0.00", "30.00"),
    ]
    # The expiry is dated at B1's expires_at, the late settle at its own time.
    assert february[-1]["accounting_date"].startswith("2025-02-15T00:00:00")
    assert february[0]["accounting_date"].startswith("2025-02-01T00:00:10")

    # Aging at January's end: the $60.00 left expires 15 days later; it ties to the closing.
    aging = await _report(api, "aging", "2025-01")
    assert [(r["bucket"], r["remaining"]) for r in aging if r["remaining"] != "0.00"] == [
        ("0-30", "60.00")
    ]
    assert {r["remaining"] for r in await _report(api, "aging", "2025-02")} <= {"0.00"}

    # The promotional memo: 200 granted in January, 50 consumed in March, 150 expired in June.
    memo = {
        month: {(r["kind"], r["credits"]) for r in await _report(api, "promotional-memo", month)}
        for month in ("2025-01", "2025-03", "2025-06")
    }
    assert memo == {
        "2025-01": {("granted", "200")},
        "2025-03": {("consumed", "50")},
        "2025-06": {("expired", "150")},
    }
    assert all(r["block_id"] == b2["id"] for r in await _report(api, "promotional-memo", "2025-06"))

    # Over the block's life: usage $70.00 + breakage $30.00 = the $100.00 of cash.
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT l.account, sum(l.credit_minor - l.debit_minor)"
            " FROM finance_journals j JOIN finance_journal_lines l"
            " ON l.journal_id = j.id AND l.posting_period = j.posting_period"
            " GROUP BY l.account ORDER BY l.account"
        )
        assert await cursor.fetchall() == [
            ("1010", -10_000),
            ("2100", 0),
            ("4000", 7_000),
            ("4050", 3_000),
        ]
    # Reconciliation of every closed month is clean: no differences, only the summary.
    for month in ("2025-01", "2025-02"):
        rows = await _report(api, "reconciliation", month)
        assert [r["check"] for r in rows] == ["summary"] and rows[0]["actual"] == "0", rows
