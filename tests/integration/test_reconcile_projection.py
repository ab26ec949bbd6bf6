"""Reconciliation of the projection against the engine (wallets/reconcile_projection.py): clean
after a realistic mixed history, and every injected difference caught, by the part of the check
that should catch it: deleted and altered entries, a transfer and an account the catalog does not
know, catalog rows without their accounts, a timeout the engine did not make."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from api.metrics import Metrics
from grants.model import Category
from ledger import db
from ledger.clock import ManualClock, datetime_of_ns
from ledger.codes import AccountCode, TransferCode, account_flags
from ledger.embedded import EmbeddedEngine
from ledger.ids import leg_ids, system_account_id
from ledger.repositories import grants, wallets
from ledger.repositories.grants import GrantCategory, GrantSource, GrantState, NewGrant
from ledger.types import (
    Account,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    CreateAccountStatus,
    CreateTransferStatus,
    Transfer,
    TransferFlags,
)
from tests.integration.projection_support import (
    TENANT,
    History,
    assert_reconciled,
    check_of,
    described,
    mixed_history,
    own_pool,
    plane_on,
    reconcile,
)
from wallets.control import ControlPlane

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pool(fresh_db_url: Callable[..., str], template_db: str) -> AsyncIterator[db.Pool]:
    async for made in own_pool(fresh_db_url, template_db):
        yield made


@pytest.fixture
async def history(pool: db.Pool) -> AsyncIterator[History]:
    clock = ManualClock(start_ns=1_735_689_600 * 1_000_000_000)  # 2025-01-01T00:00:00Z
    engine = EmbeddedEngine(clock_ns=clock)
    plane = plane_on(pool, engine, clock)
    made = await mixed_history(plane, clock)
    yield made
    await plane.service.ledger.close()
    engine.close()


async def sql(pool: db.Pool, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(statement, params)
        return list(await cursor.fetchall()) if cursor.description else []


async def test_clean_after_a_mixed_history(history: History, pool: db.Pool) -> None:
    result = await assert_reconciled(history.plane)
    kinds = {row[0] for row in await sql(pool, "SELECT DISTINCT kind FROM ledger_entries")}
    assert {
        "grant", "debit", "reserve", "settle", "release", "timeout", "expire", "void", "refund",
        "overdraft_draw", "overdraft_repay", "overdraft_limit", "budget_usage", "budget_limit",
    } <= kinds  # fmt: skip
    assert result.transfers > 100 and result.from_ts == 1
    # Every owned account was compared: the blocks, both overdraft accounts of three wallets,
    # the budgets' periods.
    assert result.accounts >= len(history.blocks) + 3 + 2
    (check,) = await sql(
        pool, "SELECT from_ts, through_ts, clean, range_clean, differences FROM projection_checks"
    )
    assert check == (1, result.watermark_ts, True, True, [])
    # The next run starts after it: nothing new, an empty range, still clean.
    again = await reconcile(history.plane)
    assert again.clean and again.transfers == 0
    assert again.from_ts == result.watermark_ts + 1 and again.through_ts == result.watermark_ts


async def test_an_overdraft_repay_is_an_entry_on_both_of_its_accounts(
    history: History, pool: db.Pool
) -> None:
    """A grant repaying an overdraft moves credits from one owned account to another: each has
    its entry (keyed by transfer and kind alone, one of them was dropped)."""
    rows = await sql(
        pool,
        "SELECT transfer_id, account_kind, amount FROM ledger_entries"
        " WHERE kind = 'overdraft_repay' ORDER BY transfer_id, amount",
    )
    by_transfer: dict[Any, list[tuple[str, int]]] = {}
    for transfer, kind, amount in rows:
        by_transfer.setdefault(transfer, []).append((kind, int(amount)))
    assert sorted(by_transfer.values()) == [
        [("block", -30), ("overdraft", 30)],
        [("block", -15), ("overdraft", 15)],
    ]
    await assert_reconciled(history.plane)


async def test_a_deleted_entry_is_caught_in_its_range_and_in_its_block(
    history: History, pool: db.Pool
) -> None:
    await sql(
        pool,
        "DELETE FROM ledger_entries WHERE kind = 'debit' AND operation_id = %s",
        uuid.UUID(int=history.operations["d1"]),
    )
    result = await reconcile(history.plane)
    assert set(result.counts) == {"totals", "balance"}, described(result)
    (totals,) = [d.detail for d in result.examples if d.kind == "totals"]
    assert totals["code"] == "DEBIT" and totals["form"] == "posted"
    assert totals["engine"]["movements"] - totals["entries"]["movements"] == 1
    assert totals["engine"]["debited"] - totals["entries"]["debited"] == 60
    (balance,) = [d.detail for d in result.examples if d.kind == "balance"]
    assert balance["entries"]["balance"] - balance["engine"]["balance"] == 60
    # Not clean: the next run checks the same range again, and still finds it.
    again = await reconcile(history.plane)
    assert again.from_ts == result.from_ts and again.counts == result.counts
    rows = await sql(pool, "SELECT clean, range_clean, differences FROM projection_checks")
    assert [(r[0], r[1]) for r in rows] == [(False, False), (False, False)]
    assert [g["kind"] for g in rows[0][2]] == ["totals", "balance"]
    assert rows[0][2][1]["count"] == 1 and rows[0][2][1]["examples"] == [balance]


async def test_an_entry_deleted_from_a_range_already_checked_is_caught_by_its_balance(
    history: History, pool: db.Pool
) -> None:
    await assert_reconciled(history.plane)
    await sql(pool, "DELETE FROM ledger_entries WHERE kind = 'expire'")
    result = await reconcile(history.plane)
    assert result.counts == {"balance": 1}, described(result)
    assert result.range_clean  # the range moves on: the state says what is wrong


async def test_an_altered_amount_is_caught(history: History, pool: db.Pool) -> None:
    await sql(
        pool,
        "UPDATE ledger_entries SET amount = amount - 1 WHERE (transfer_id, kind) IN"
        " (SELECT transfer_id, kind FROM ledger_entries WHERE kind = 'settle'"
        " AND account_kind = 'block' LIMIT 1)",
    )
    result = await reconcile(history.plane)
    assert set(result.counts) == {"totals", "balance"}, described(result)
    (totals,) = [d.detail for d in result.examples if d.kind == "totals"]
    assert (totals["code"], totals["form"]) == ("RESERVE", "post")
    assert totals["entries"]["debited"] - totals["engine"]["debited"] == 1


async def test_an_altered_code_is_caught_by_the_counts_per_code(
    history: History, pool: db.Pool
) -> None:
    """The balances cannot see a code: the counts and sums per code do."""
    await sql(
        pool,
        "UPDATE ledger_entries SET code = %s WHERE kind = 'refund'",
        int(TransferCode.CORRECTION),
    )
    result = await reconcile(history.plane)
    assert result.counts == {"totals": 2}, described(result)
    codes = {d.detail["code"]: d.detail for d in result.examples}
    assert codes["USAGE_REFUND"]["entries"]["movements"] == 0
    assert codes["CORRECTION"]["engine"]["movements"] == 0


async def test_a_deleted_or_altered_timeout_is_caught(history: History, pool: db.Pool) -> None:
    # The timed-out reservation had three legs: its block's and its two budgets'.
    timeouts = "kind = 'timeout' AND account_kind = 'block'"
    ((leg, when),) = await sql(
        pool, f"SELECT transfer_id, engine_ts FROM ledger_entries WHERE {timeouts}"
    )
    await sql(
        pool, "UPDATE ledger_entries SET engine_ts = engine_ts + 1 WHERE transfer_id = %s", leg
    )
    result = await reconcile(history.plane)
    assert result.counts == {"timeout": 1}, described(result)
    (detail,) = [d.detail for d in result.examples]
    assert detail["engine"]["engine_ts"] + 1 == detail["entries"]["engine_ts"] == when + 1
    await sql(pool, f"DELETE FROM ledger_entries WHERE {timeouts}")
    result = await reconcile(history.plane)
    assert set(result.counts) == {"timeout", "totals", "balance"}, described(result)
    (balance,) = [d.detail for d in result.examples if d.kind == "balance"]
    assert balance["entries"]["pending"] - balance["engine"]["pending"] == 25


async def test_a_transfer_on_an_account_the_catalog_does_not_know_is_caught(
    history: History, pool: db.Pool
) -> None:
    ledger, ledger_id = history.plane.service.ledger, history.ledger_id
    stranger = uuid.uuid4().int
    (made,) = await ledger.create_accounts(
        [
            Account(
                id=stranger,
                ledger=ledger_id,
                code=AccountCode.GRANT,
                user_data_128=history.agent_wallet.id,
                flags=AccountFlags(account_flags(AccountCode.GRANT)),
            )
        ]
    )
    assert made.status is CreateAccountStatus.CREATED
    (funded,) = await ledger.create_transfers(
        [
            Transfer(
                id=uuid.uuid4().int,
                debit_account_id=system_account_id(ledger_id, AccountCode.ISSUANCE_PAID),
                credit_account_id=stranger,
                amount=77,
                ledger=ledger_id,
                code=TransferCode.GRANT_FUNDING,
            )
        ]
    )
    assert funded.status is CreateTransferStatus.CREATED
    await history.feed.catch_up()
    result = await reconcile(history.plane)
    # The projection has the transfer as it has every other: only the catalog lacks the block.
    assert result.counts == {"account_unknown": 1}, described(result)
    (detail,) = [d.detail for d in result.examples]
    assert detail["account"] == str(uuid.UUID(int=stranger))
    assert detail["account_code"] == "GRANT"


async def test_catalog_rows_without_their_accounts_are_caught(
    history: History, pool: db.Pool
) -> None:
    agent = history.agent_wallet
    missing = uuid.uuid4().int
    now = datetime_of_ns(history.clock())
    async with pool.connection() as conn:
        await grants.insert_grant(
            conn,
            NewGrant(
                id=missing,
                wallet_id=agent.id,
                credit_type_id=history.ledger_id,
                amount=5,
                category=GrantCategory(Category.PROMOTIONAL.value),
                effective_at=now,
                source=GrantSource.ADMIN,
                actor="test",
                state=GrantState.ACTIVE,
            ),
        )
        # A pending grant has no account yet: finishing it is the dual writes' reconciliation.
        await grants.insert_grant(
            conn,
            NewGrant(
                id=uuid.uuid4().int,
                wallet_id=agent.id,
                credit_type_id=history.ledger_id,
                amount=5,
                category=GrantCategory(Category.PROMOTIONAL.value),
                effective_at=now,
                source=GrantSource.ADMIN,
                actor="test",
            ),
        )
        cursor = await conn.execute(
            "INSERT INTO resources (id, customer_id, kind) SELECT %s, customer_id, 'agent'"
            " FROM resources LIMIT 1 RETURNING id",
            (uuid.uuid4(),),
        )
        (resource,) = await cursor.fetchone() or (None,)
        await wallets.insert_wallet(
            conn, id=uuid.uuid4().int, resource_id=resource.int, credit_type_id=history.ledger_id
        )
        # A projected entry moved to an account the engine does not have.
        await conn.execute(
            "UPDATE ledger_entries SET account_id = %s WHERE kind = 'budget_limit'"
            " AND transfer_id = (SELECT transfer_id FROM ledger_entries"
            " WHERE kind = 'budget_limit' ORDER BY transfer_id LIMIT 1)",
            (uuid.uuid4(),),
        )
    result = await reconcile(history.plane)
    assert set(result.counts) == {
        "grant_without_account",
        "wallet_without_account",
        "entries_without_account",
        "balance",
    }, described(result)
    assert result.counts["grant_without_account"] == 1
    (grant,) = [d.detail for d in result.examples if d.kind == "grant_without_account"]
    assert grant == {"grant": str(uuid.UUID(int=missing))}
    (wallet,) = [d.detail for d in result.examples if d.kind == "wallet_without_account"]
    assert wallet["account_code"] == "OVERDRAFT_UNBOUNDED"
    # A wallet younger than the grace is being created: not yet a difference.
    fresh = await check_of(history.plane).run()
    assert "wallet_without_account" in fresh.counts
    graced = await type(check_of(history.plane))(
        history.plane.service.ledger, pool, catalog_grace_s=3600
    ).run()
    assert "wallet_without_account" not in graced.counts


async def test_a_long_history_is_checked_in_bounded_runs(history: History, pool: db.Pool) -> None:
    first = await check_of(history.plane, transfers_max=40).run()
    assert first.clean and not first.complete and first.transfers == 40
    last = await reconcile(history.plane, transfers_max=40)
    assert last.clean and last.complete
    ranges = await sql(pool, "SELECT from_ts, through_ts FROM projection_checks ORDER BY id")
    assert ranges[0][0] == 1 and ranges[-1][1] == last.watermark_ts
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))
    assert len(ranges) > 3


async def test_the_metric_says_the_last_run(history: History, pool: db.Pool) -> None:
    check = check_of(history.plane)
    metrics = Metrics(CollectorRegistry())
    metrics.watch_projection_check(check)
    assert b"credit_projection_differences{" not in generate_latest(metrics.registry)
    await check.run()
    text = generate_latest(metrics.registry).decode()
    assert 'credit_projection_differences{kind="balance"} 0.0' in text
    assert "credit_projection_check_clean 1.0" in text
    await sql(pool, "DELETE FROM ledger_entries WHERE kind = 'expire'")
    other = check_of(history.plane)  # another process's run: this one reads it
    await other.run()
    await check.refresh()
    text = generate_latest(metrics.registry).decode()
    assert 'credit_projection_differences{kind="balance"} 1.0' in text
    assert "credit_projection_check_clean 0.0" in text


async def test_clean_on_a_fresh_engine_and_an_empty_projection(pool: db.Pool) -> None:
    clock = ManualClock()
    with EmbeddedEngine(clock_ns=clock) as engine:
        plane: ControlPlane = plane_on(pool, engine, clock)
        result = await reconcile(plane)
        assert result.clean and result.transfers == 0 and result.accounts == 0
        assert (result.from_ts, result.through_ts) == (1, 0)
        await plane.service.ledger.close()


async def test_timeouts_of_legs_from_earlier_ranges_are_checked_leg_by_leg(
    history: History, pool: db.Pool
) -> None:
    plane, ledger, ledger_id = history.plane, history.plane.service.ledger, history.ledger_id
    await assert_reconciled(plane)
    # A pending leg on a block that no reservation made: it has no marker, as reservations
    # made before markers had none; its resolution is searched for on its account.
    (made,) = await ledger.create_transfers(
        [
            Transfer(
                id=uuid.uuid4().int,
                debit_account_id=history.blocks["repays"],
                credit_account_id=system_account_id(ledger_id, AccountCode.BREAKAGE),
                amount=3,
                ledger=ledger_id,
                code=TransferCode.RESERVE,
                flags=TransferFlags.PENDING,
                timeout=10,
            )
        ]
    )
    assert made.status is CreateTransferStatus.CREATED
    await history.feed.catch_up()
    await assert_reconciled(plane)
    # That leg and the reservation left open time out; a debit shows the engine's clock past.
    history.clock.advance(3700)
    await plane.service.debit(
        tenant=TENANT, key="later", amount=1, ledger=ledger_id, wallet_id=history.agent_wallet.id
    )
    await history.feed.catch_up()
    # A timeout entry made up for a leg whose reservation was settled before it expired.
    reservation = uuid.UUID(int=history.operations["r4"])
    ((leg_id, effective_at),) = await sql(
        pool,
        "SELECT transfer_id, effective_at FROM ledger_entries WHERE kind = 'reserve'"
        " AND reservation_id = %s AND account_kind = 'block'",
        reservation,
    )
    (leg,) = await ledger.lookup_transfers([leg_id.int])
    await sql(
        pool,
        "INSERT INTO ledger_entries (transfer_id, kind, effective_at, engine_ts, code,"
        " credit_type_id, account_id, account_kind, wallet_id, reservation_id, amount, pending,"
        " value_minor) SELECT transfer_id, 'timeout', effective_at, %s, code, credit_type_id,"
        " account_id, account_kind, wallet_id, reservation_id, 0, -pending, 0"
        " FROM ledger_entries WHERE kind = 'reserve' AND transfer_id = %s AND effective_at = %s",
        leg.timestamp + leg.timeout * 1_000_000_000,
        leg_id,
        effective_at,
    )
    result = await reconcile(plane)
    assert set(result.counts) == {"timeout", "totals", "balance"}, described(result)
    (timeout,) = [d.detail for d in result.examples if d.kind == "timeout"]
    assert timeout["leg"] == str(leg_id)
    assert timeout["why"] == "the leg's reservation was settled or released before it expired"
    made_up = "kind = 'timeout' AND transfer_id = %s"
    await sql(pool, f"DELETE FROM ledger_entries WHERE {made_up}", leg_id)
    result = await assert_reconciled(plane)
    # The range held the timeouts of legs made in earlier ranges, each confirmed by the engine.
    earlier = await sql(
        pool,
        "SELECT count(*) FROM ledger_entries WHERE kind = 'timeout' AND engine_ts >= %s",
        result.from_ts,
    )
    assert earlier == [(4,)]  # the open reservation's three legs and the leg made above


async def test_a_leg_the_engine_releases_within_a_later_request_is_no_difference(
    history: History, pool: db.Pool
) -> None:
    """TigerBeetle releases expired legs before a request, not between its events: a transfer
    of a request that began a moment before a leg's expiry comes after the expiry, with the leg
    still held. The entries (released at the expiry) and that balance are both right."""
    plane, clock = history.plane, history.clock
    ledger = plane.service.ledger
    block = history.blocks["repays"]
    spend = {"tenant": TENANT, "ledger": history.ledger_id, "wallet_id": history.agent_wallet.id}
    held = await plane.service.reserve(key="brief", amount=2, timeout_s=5, **spend)
    legs = [
        t
        for t in await ledger.lookup_transfers(leg_ids(held.reservation_id, range(4, 20)))
        if t.flags & TransferFlags.PENDING and t.amount
    ]  # its budgets' legs, then its block's: they expire in that order, a few ns apart
    (leg,) = [t for t in legs if t.debit_account_id == block]
    expiry = leg.timestamp + 5 * 1_000_000_000
    # The next request starts 1 ns before the first leg expires: none is due, none released.
    clock.advance_ns(min(t.timestamp for t in legs) + 5 * 1_000_000_000 - 1 - clock())
    await plane.service.debit(key="just-after", amount=1, **spend)
    (after,) = await ledger.get_account_balances(
        AccountFilter(
            account_id=block,
            user_data_128=0,
            user_data_64=0,
            user_data_32=0,
            code=0,
            timestamp_min=0,
            timestamp_max=0,
            limit=1,
            flags=AccountFilterFlags.DEBITS
            | AccountFilterFlags.CREDITS
            | AccountFilterFlags.REVERSED,
        )
    )
    assert after.timestamp > expiry and after.debits_pending == 5 + 2  # still held then
    await history.feed.catch_up()
    ((when,),) = await sql(
        pool, "SELECT engine_ts FROM ledger_entries WHERE kind = 'timeout' AND transfer_id = %s",
        uuid.UUID(int=leg.id),
    )  # fmt: skip
    assert when == expiry < after.timestamp
    await assert_reconciled(plane)
