"""Refunds in money of unused paid credits (POST /v1/grants/{id}/refund) and the exchange rate
of a block at receipt, through the HTTP API: what moves on the ledger, what Postgres records,
what the projection and its reconciliation see."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from ledger import db
from ledger.client import LedgerUnavailable
from tests.api.conftest import Api
from tests.api.support import assert_problem, balance, created, make_world, services_of

pytestmark = pytest.mark.anyio


async def _rows(pool: db.Pool, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(sql, params)
        return list(await cursor.fetchall())


async def _grant(api: Api, grant_id: str) -> dict[str, Any]:
    r = await api.get(f"/v1/grants/{grant_id}", key="finance")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    parts = ("available", "upcoming", "held", "consumed", "expired", "voided", "refunded")
    assert body["granted"] == sum(body[p] for p in (*parts, "repaid")), body
    return body


async def _refund_row(pool: db.Pool, refund_id: str) -> tuple[Any, ...]:
    (row,) = await _rows(
        pool,
        "SELECT grant_id::text, credits, refund_minor, currency, state, whole, actor, reason"
        " FROM grant_refunds WHERE operation_id = %s",
        uuid.UUID(refund_id),
    )
    return row


async def test_a_part_is_refunded_then_the_rest(api: Api, pool: db.Pool) -> None:
    world = await make_world(api, granted=1000)
    grant = world.grant["id"]
    r = await api.post("/v1/debits", world.spend(amount=100), key="runtime")
    assert r.status_code == 201, r.text
    r = await api.post("/v1/reservations", world.spend(amount=200), key="runtime")
    assert r.status_code == 201, r.text

    r = await api.post(
        f"/v1/grants/{grant}/refund", {"amount": 300, "refund_minor": 3000, "reason": "downgrade"}
    )
    assert r.status_code == 200, r.text
    part = r.json()
    assert part == {
        "id": part["id"],
        "grant_id": grant,
        "refunded": 300,
        "refund_minor": 3000,
        "currency": "USD",
    }
    assert await _refund_row(pool, part["id"]) == (
        grant,
        300,
        3000,
        "USD",
        "applied",
        False,
        "test-admin",
        "downgrade",
    )
    block = await _grant(api, grant)
    assert (block["state"], block["available"], block["held"], block["refunded"]) == (
        "active",
        400,
        200,
        300,
    )
    # All: what is available now; the credits the reservation holds stay held.
    r = await api.post(f"/v1/grants/{grant}/refund", {"refund_minor": 3900})
    assert r.status_code == 200, r.text
    rest = r.json()
    assert (rest["refunded"], rest["refund_minor"]) == (400, 3900)
    assert (await _refund_row(pool, rest["id"]))[4:6] == ("applied", True)
    block = await _grant(api, grant)
    assert (block["state"], block["available"], block["held"], block["refunded"]) == (
        "active",
        0,
        200,
        700,
    )
    assert await balance(api, world.wallet["id"]) == (0, 200, 100)
    # Nothing left to refund: all of nothing is refused too.
    r = await api.post(f"/v1/grants/{grant}/refund", {"refund_minor": 0})
    assert_problem(r, "refund_exceeds_available", refundable=0)
    audit = await _rows(
        pool,
        "SELECT details->>'refund_id', details->>'credits' FROM audit_log"
        " WHERE action = 'grant.refund' AND object_id = %s ORDER BY id",
        uuid.UUID(grant),
    )
    assert audit == [(part["id"], "300"), (rest["id"], "400")]


async def test_refused_refunds_move_nothing(api: Api, pool: db.Pool) -> None:
    world = await make_world(api, granted=1000)
    grant = world.grant["id"]
    await api.post("/v1/reservations", world.spend(amount=250), key="runtime")
    promo = await created(
        api,
        "/v1/grants",
        {"wallet_id": world.wallet["id"], "amount": 50, "category": "promotional"},
    )
    before = await _rows(pool, "SELECT count(*) FROM grant_refunds")

    r = await api.post(f"/v1/grants/{grant}/refund", {"amount": 751, "refund_minor": 10})
    assert_problem(r, "refund_exceeds_available", refundable=750, field="amount")
    r = await api.post(f"/v1/grants/{promo['id']}/refund", {"amount": 1, "refund_minor": 0})
    assert_problem(r, "grant_not_refundable")
    r = await api.post(f"/v1/grants/{grant}/refund", {"amount": 10})
    assert_problem(r, "validation_error")
    r = await api.post(
        f"/v1/grants/{grant}/refund", {"amount": 10, "refund_minor": 1}, key="runtime"
    )
    assert r.status_code == 403, r.text
    r = await api.post(f"/v1/grants/{grant}/refund", {"amount": 10, "refund_minor": 1}, idem=None)
    assert_problem(r, "validation_error")

    assert await _rows(pool, "SELECT count(*) FROM grant_refunds") == before
    block = await _grant(api, grant)
    assert (block["available"], block["held"], block["refunded"]) == (750, 250, 0)
    # A voided block has nothing to refund.
    r = await api.post(f"/v1/grants/{grant}/void", {})
    assert r.status_code == 200, r.text
    r = await api.post(f"/v1/grants/{grant}/refund", {"amount": 1, "refund_minor": 1})
    assert_problem(r, "grant_not_refundable", state="voided")


async def test_a_refund_replays_under_its_key(api: Api, pool: db.Pool) -> None:
    world = await make_world(api, granted=1000)
    path = f"/v1/grants/{world.grant['id']}/refund"
    key = api.k("refund-once")
    first = await api.post(path, {"amount": 100, "refund_minor": 900}, idem=key)
    assert first.status_code == 200, first.text
    assert "Idempotency-Hit" not in first.headers
    again = await api.post(path, {"amount": 100, "refund_minor": 900}, idem=key)
    assert again.status_code == 200, again.text
    assert again.headers["Idempotency-Hit"] == "true"
    assert again.json() == first.json()
    other = await api.post(path, {"amount": 100, "refund_minor": 901}, idem=key)
    assert_problem(other, "idempotency_conflict")
    assert (await _grant(api, world.grant["id"]))["refunded"] == 100
    rows = await _rows(pool, "SELECT count(*) FROM grant_refunds WHERE grant_id = %s",
                       uuid.UUID(world.grant["id"]))  # fmt: skip
    assert rows == [(1,)]


async def test_a_refund_the_ledger_refuses_is_recorded_refused(api: Api, pool: db.Pool) -> None:
    """The engine decides: a refund written 'pending' that finds the block emptied since (here
    by a debit between the check and the transfer) is refused, moves nothing, and stays so."""
    world = await make_world(api, granted=100)
    services = services_of(api.app)
    control = services.control
    grant_id = uuid.UUID(world.grant["id"]).int
    left = control.grant_service.left

    async def spent_meanwhile(gid: int) -> tuple[int, int] | None:
        found = await left(gid)
        if found is not None and found[0] == 100:  # the check saw 100: spend some now
            r = await api.post("/v1/debits", world.spend(amount=30), key="runtime")
            assert r.status_code == 201, r.text
        return found

    control.grant_service.left = spent_meanwhile  # type: ignore[method-assign]
    key = api.k("refused")
    try:
        r = await api.post(
            f"/v1/grants/{world.grant['id']}/refund", {"refund_minor": 500}, idem=key
        )
    finally:
        control.grant_service.left = left  # type: ignore[method-assign]
    body = assert_problem(r, "refund_exceeds_available", refundable=70)
    assert "Idempotency-Hit" not in r.headers
    (row,) = await _rows(
        pool,
        "SELECT state, credits, refusal FROM grant_refunds WHERE grant_id = %s",
        uuid.UUID(world.grant["id"]),
    )
    assert row[:2] == ("refused", 100) and row[2], (row, body)
    again = await api.post(
        f"/v1/grants/{world.grant['id']}/refund", {"refund_minor": 500}, idem=key
    )
    assert_problem(again, "refund_exceeds_available")
    assert again.headers["Idempotency-Hit"] == "true"
    block = await _grant(api, world.grant["id"])
    assert (block["available"], block["consumed"], block["refunded"]) == (70, 30, 0)
    assert grant_id  # the block is the one the row names
    # The table is append-only: a finished refund is never changed, nor deleted.
    async with pool.connection() as conn:
        for sql in (
            "UPDATE grant_refunds SET refund_minor = 1",
            "UPDATE grant_refunds SET state = 'applied'",
            "DELETE FROM grant_refunds",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                async with conn.transaction():
                    await conn.execute(sql)


async def test_exchange_rates_at_receipt(api: Api, pool: db.Pool) -> None:
    world = await make_world(api, granted=10)
    wallet = world.wallet["id"]
    paid = {"wallet_id": wallet, "amount": 100, "category": "paid", "consideration_minor": 100}

    async def issue(**fields: Any) -> Any:
        return await api.post("/v1/grants", {**paid, **fields})

    cases = [
        ({"currency": "EUR", "exchange_rate": "1.0842"}, "1.0842"),
        ({"currency": "EUR", "exchange_rate": "1.08420000"}, "1.0842"),
        ({"currency": "JPY", "exchange_rate": "0.0066666667"}, "0.0066666667"),
        ({"currency": "GBP", "exchange_rate": "123456789012"}, "123456789012"),
        ({"currency": "EUR"}, None),  # unknown: reported in its own currency only
        ({"currency": "USD"}, "1"),
        ({"currency": "USD", "exchange_rate": "1.000"}, "1"),
    ]
    for fields, stored in cases:
        r = await issue(**fields)
        assert r.status_code == 201, (fields, r.text)
        block = await _grant(api, r.json()["id"])
        assert (block["currency"], block["exchange_rate"]) == (fields["currency"], stored), block
        r = await api.get(f"/v1/grants?wallet_id={wallet}&limit=1000", key="finance")
        listed = {g["id"]: g["exchange_rate"] for g in r.json()["items"]}
        assert listed[block["id"]] == stored
    promo = await created(
        api, "/v1/grants", {"wallet_id": wallet, "amount": 5, "category": "promotional"}
    )
    assert (await _grant(api, promo["id"]))["exchange_rate"] is None

    refused = [
        {"currency": "EUR", "exchange_rate": "0"},
        {"currency": "EUR", "exchange_rate": "0.0000000000"},
        {"currency": "EUR", "exchange_rate": "-1.2"},
        {"currency": "EUR", "exchange_rate": "1e3"},
        {"currency": "EUR", "exchange_rate": "1."},
        {"currency": "EUR", "exchange_rate": 1.08},
        {"currency": "EUR", "exchange_rate": "12.3456789012"},  # 12 digits, 10 places: fine
        {"currency": "EUR", "exchange_rate": "12.34567890123"},  # 13 digits
        {"currency": "EUR", "exchange_rate": "0.00000000001"},  # 11 decimal places
        {"currency": "USD", "exchange_rate": "1.01"},  # the functional currency's rate is 1
    ]
    for fields in refused:
        r = await issue(**fields)
        if fields["exchange_rate"] == "12.3456789012":
            assert r.status_code == 201, r.text
            continue
        assert_problem(r, "validation_error", field="exchange_rate")
    r = await api.post(
        "/v1/grants",
        {"wallet_id": wallet, "amount": 5, "category": "promotional", "exchange_rate": "1.1"},
    )
    assert_problem(r, "validation_error", field="exchange_rate")
    # Never changed after issue: the database refuses it.
    async with pool.connection() as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("UPDATE grants SET exchange_rate = 2 WHERE exchange_rate = 1")


async def test_a_refund_cut_short_is_finished_by_reconciliation(api: Api, pool: db.Pool) -> None:
    """The row is written before the engine moves: a refund whose transfer never got there
    (the engine did not answer) stays 'pending', moves nothing, and reconciliation (or a retry
    with the same key) applies it."""
    world = await make_world(api, granted=100)
    control = services_of(api.app).control
    refund_out = control.grant_service.refund_out

    async def unanswered(*args: Any, **kwargs: Any) -> bool:
        raise LedgerUnavailable("the engine did not answer")

    control.grant_service.refund_out = unanswered  # type: ignore[method-assign]
    key = api.k("cut-short")
    try:
        r = await api.post(
            f"/v1/grants/{world.grant['id']}/refund", {"amount": 40, "refund_minor": 400}, idem=key
        )
    finally:
        control.grant_service.refund_out = refund_out  # type: ignore[method-assign]
    assert_problem(r, "ledger_unavailable")
    (row,) = await _rows(
        pool,
        "SELECT operation_id, state FROM grant_refunds WHERE grant_id = %s",
        uuid.UUID(world.grant["id"]),
    )
    assert row[1] == "pending"
    assert (await _grant(api, world.grant["id"]))["refunded"] == 0

    report = await control.reconcile()
    assert report.grant_refunds_finished == [row[0].int], report
    assert (await _refund_row(pool, str(row[0])))[4] == "applied"
    assert (await _grant(api, world.grant["id"]))["refunded"] == 40
    # The key's answer is the refund's, once.
    r = await api.post(
        f"/v1/grants/{world.grant['id']}/refund", {"amount": 40, "refund_minor": 400}, idem=key
    )
    assert r.status_code == 200, r.text
    assert (r.json()["id"], r.json()["refunded"]) == (str(row[0]), 40)
    assert (await _grant(api, world.grant["id"]))["refunded"] == 40


async def test_the_functional_currency_is_a_setting(api: Api) -> None:
    world = await make_world(api, granted=10)
    control = services_of(api.app).control
    paid = {"wallet_id": world.wallet["id"], "amount": 5, "category": "paid"}
    control.functional_currency = "EUR"
    try:
        eur = await created(api, "/v1/grants", {**paid, "currency": "EUR"})
        usd = await created(api, "/v1/grants", {**paid, "currency": "USD"})
        r = await api.post("/v1/grants", {**paid, "currency": "EUR", "exchange_rate": "0.92"})
    finally:
        control.functional_currency = "USD"
    assert_problem(r, "validation_error", field="exchange_rate")
    assert (await _grant(api, eur["id"]))["exchange_rate"] == "1"
    assert (await _grant(api, usd["id"]))["exchange_rate"] is None
