"""The control plane against a real Postgres and the embedded engine: admin operations write
both stores in order, replays return the stored outcome, and reconciliation finishes a dual
write that a crash cut in two (the crash injected between the stores)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest

from grants.errors import BudgetExceeded, Conflict, IdempotencyConflict, InvalidRequest
from grants.model import Category
from ledger import db
from ledger.client import open_ledger
from ledger.clock import ns_of_datetime
from ledger.embedded import EmbeddedEngine
from ledger.notify import CatalogChange
from ledger.repositories import grants as grant_rows
from ledger.repositories import idempotency, wallet_changes
from ledger.repositories import wallets as wallet_rows
from ledger.repositories.grants import GrantState
from ledger.repositories.resources import ResourceKind
from ledger.repositories.wallet_changes import ChangeState
from ledger.settings import LedgerSettings
from wallets.catalog import Catalog, OverdraftMode, PathError, Period, Wallet
from wallets.control import ControlPlane, GrantRequest, PolicyRefused
from wallets.limit_accounts import credited, overdraft_account
from wallets.service import CreditService

pytestmark = pytest.mark.anyio

TENANT = 42


class Crash(Exception):
    pass


@pytest.fixture
async def plane(pool: db.Pool) -> AsyncIterator[ControlPlane]:
    engine = EmbeddedEngine()
    ledger = open_ledger(LedgerSettings(), engine=engine)
    service = CreditService(ledger, Catalog())
    plane = ControlPlane(pool, service)
    yield plane
    await ledger.close()
    engine.close()


async def _world(plane: ControlPlane, tag: int) -> Wallet:
    credit_type, _ = await plane.create_credit_type(
        ledger=100 + tag,
        code=f"c{tag}",
        name="Credits",
        asset_scale=2,
        actor="admin",
        tenant=0,
        key=f"ct{tag}",
    )
    customer, _ = await plane.create_customer(name="Acme", actor="admin", tenant=0, key=f"cu{tag}")
    resource, _ = await plane.create_resource(
        customer_id=customer.id, kind=ResourceKind.AGENT, actor="admin", tenant=0, key=f"re{tag}"
    )
    wallet, _ = await plane.create_wallet(
        resource_id=resource.id, ledger=credit_type.ledger, actor="admin", tenant=0, key=f"wa{tag}"
    )
    return wallet


def _request(wallet: Wallet, amount: int = 500) -> GrantRequest:
    return GrantRequest(
        wallet_id=wallet.id,
        amount=amount,
        category=Category.PAID,
        consideration_minor=5000,
        currency="USD",
    )


async def test_issue_writes_both_stores_and_replays(plane: ControlPlane, pool: db.Pool) -> None:
    wallet = await _world(plane, 1)
    result, replayed = await plane.issue_grant(_request(wallet), tenant=43, key="g1", actor="a")
    assert not replayed and result.amount == 500
    again, replayed = await plane.issue_grant(_request(wallet), tenant=43, key="g1", actor="a")
    assert replayed and again == result
    with pytest.raises(IdempotencyConflict):
        await plane.issue_grant(_request(wallet, 501), tenant=43, key="g1", actor="a")
    async with pool.connection() as conn:
        row = await grant_rows.get_grant(conn, result.grant_id)
    assert row is not None and row.state is GrantState.ACTIVE
    (account,) = await plane.service.ledger.lookup_accounts([result.grant_id])
    assert account.credits_posted == 500
    debit = await plane.service.debit(
        tenant=43, key="d1", amount=200, ledger=wallet.ledger, wallet_id=wallet.id
    )
    assert debit.amount == 200


@pytest.mark.parametrize("crash_at", ["ledger", "final_state"])
async def test_reconcile_finishes_a_grant_cut_by_a_crash(
    plane: ControlPlane, pool: db.Pool, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    wallet = await _world(plane, 2 if crash_at == "ledger" else 3)
    tenant = 44
    real_issue = plane.grant_service.issue
    real_set_state = grant_rows.set_grant_state

    async def crash_before_ledger(*args: object, **kw: object) -> object:
        raise Crash()

    async def crash_after_ledger(*args: object, **kw: object) -> object:
        raise Crash()

    if crash_at == "ledger":
        monkeypatch.setattr(plane.grant_service, "issue", crash_before_ledger)
    else:
        monkeypatch.setattr(grant_rows, "set_grant_state", crash_after_ledger)
    with pytest.raises(Crash):
        await plane.issue_grant(_request(wallet), tenant=tenant, key=f"g2-{crash_at}", actor="a")
    monkeypatch.setattr(plane.grant_service, "issue", real_issue)
    monkeypatch.setattr(grant_rows, "set_grant_state", real_set_state)

    async with pool.connection() as conn:
        (pending,) = await grant_rows.list_pending_grants(conn, dt.datetime.now(dt.UTC))
        record = await idempotency.get(conn, tenant=tenant, key=f"g2-{crash_at}")
    assert record is not None and not record.completed
    report = await plane.reconcile()
    assert report.grants_finished == [pending.id]
    async with pool.connection() as conn:
        row = await grant_rows.get_grant(conn, pending.id)
    assert row is not None and row.state is GrantState.ACTIVE
    (account,) = await plane.service.ledger.lookup_accounts([pending.id])
    assert account.credits_posted == 500  # funded exactly once, whatever step crashed
    # The caller's retry finishes the open key and gets the outcome.
    result, replayed = await plane.issue_grant(
        _request(wallet), tenant=tenant, key=f"g2-{crash_at}", actor="a"
    )
    assert (result.grant_id, result.amount, replayed) == (pending.id, 500, False)
    assert (await plane.reconcile()).grants_finished == []


async def test_the_cache_loads_from_postgres(plane: ControlPlane) -> None:
    wallet = await _world(plane, 4)
    result, _ = await plane.issue_grant(_request(wallet), tenant=45, key="g4", actor="a")
    fresh = ControlPlane(
        plane.pool, CreditService(plane.service.ledger, Catalog()), plane.grant_service
    )
    await fresh.load()
    assert fresh.catalog.wallets[wallet.id] == wallet
    assert result.grant_id in fresh.catalog.grants


async def test_a_resource_keeps_its_external_ref_through_every_cache_path(
    plane: ControlPlane,
) -> None:
    customer, _ = await plane.create_customer(name="Acme", actor="a", tenant=0, key="cu-ref")
    request: dict[str, Any] = {"customer_id": customer.id, "kind": ResourceKind.TEAM}
    created, _ = await plane.create_resource(
        **request, actor="a", tenant=0, key="re-ref", external_ref="crm-team-7"
    )
    replayed, hit = await plane.create_resource(
        **request, actor="a", tenant=0, key="re-ref", external_ref="crm-team-7"
    )
    assert hit and created.external_ref == replayed.external_ref == "crm-team-7"
    assert plane.catalog.resources[created.id].external_ref == "crm-team-7"
    fresh = ControlPlane(
        plane.pool, CreditService(plane.service.ledger, Catalog()), plane.grant_service
    )
    await fresh.load()
    assert fresh.catalog.resources[created.id] == created
    fresh.catalog.resources.pop(created.id)
    await fresh.apply_change(CatalogChange("resources", created.id))
    assert fresh.catalog.resources[created.id] == created


async def test_bad_grants_are_refused_with_the_field(plane: ControlPlane) -> None:
    wallet = await _world(plane, 5)
    bad = GrantRequest(wallet_id=wallet.id, amount=10, category=Category.PAID)
    with pytest.raises(InvalidRequest, match="currency"):
        await plane.issue_grant(bad, tenant=46, key="g5", actor="a")
    with pytest.raises(InvalidRequest, match="amount"):
        await plane.issue_grant(_request(wallet, 0), tenant=46, key="g6", actor="a")


async def test_another_process_cache_follows_changes(
    plane: ControlPlane, migrated_db_url: str
) -> None:
    import asyncio

    other = ControlPlane(
        plane.pool, CreditService(plane.service.ledger, Catalog()), plane.grant_service
    )
    follower = asyncio.create_task(other.follow(migrated_db_url))
    try:
        for _ in range(200):  # the first (re)connection loads everything
            if other.reloads:
                break
            await asyncio.sleep(0.01)
        wallet = await _world(plane, 6)
        for _ in range(500):
            if wallet.id in other.catalog.wallets:
                break
            await asyncio.sleep(0.01)
        assert other.catalog.wallets[wallet.id] == wallet
    finally:
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower


async def test_void_and_sweep_keep_postgres_in_step(plane: ControlPlane, pool: db.Pool) -> None:
    wallet = await _world(plane, 8)
    result, _ = await plane.issue_grant(_request(wallet), tenant=48, key="g8", actor="a")
    voided, replayed = await plane.void_grant(result.grant_id, tenant=48, key="v8", actor="a")
    assert (voided.amount, replayed) == (500, False)
    again, replayed = await plane.void_grant(result.grant_id, tenant=48, key="v8", actor="a")
    assert (again, replayed) == (voided, True)
    async with pool.connection() as conn:
        row = await grant_rows.get_grant(conn, result.grant_id)
    assert row is not None and row.state is GrantState.VOIDED


async def test_prices_are_cached_and_loaded(plane: ControlPlane) -> None:
    await _world(plane, 9)
    now_ns = plane.service.clock_ns()
    first, _ = await plane.set_price(
        feature="gpt-tokens", ledger=109, credits_per_unit=3, actor="a"
    )
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    await plane.set_price(
        feature="gpt-tokens", ledger=109, credits_per_unit=5, actor="a", effective_at=later
    )
    later_ns = ns_of_datetime(later)
    assert plane.catalog.price("gpt-tokens", 109, 1000, now_ns + 10**9) == 3000
    assert plane.catalog.price("gpt-tokens", 109, 1000, later_ns) == 5000
    fresh = ControlPlane(
        plane.pool, CreditService(plane.service.ledger, Catalog()), plane.grant_service
    )
    await fresh.load()
    # The whole history is cached: the price of each time, the one to come included.
    assert fresh.catalog.price("gpt-tokens", 109, 2, later_ns - 1) == 6
    assert fresh.catalog.price("gpt-tokens", 109, 2, later_ns) == 10
    with pytest.raises(PathError):
        fresh.catalog.price("gpt-tokens", 109, 2, ns_of_datetime(first.effective_at) - 1)
    with pytest.raises(InvalidRequest):
        await plane.set_price(feature="", ledger=109, credits_per_unit=3, actor="a")
    with pytest.raises(InvalidRequest, match="past"):
        await plane.set_price(
            feature="gpt-tokens",
            ledger=109,
            credits_per_unit=3,
            actor="a",
            effective_at=first.effective_at,
        )


async def test_refunds_are_audited(plane: ControlPlane, pool: db.Pool) -> None:
    from ledger.repositories import audit

    wallet = await _world(plane, 10)
    await plane.issue_grant(_request(wallet), tenant=50, key="g10", actor="a")
    debit = await plane.service.debit(
        tenant=50, key="d10", amount=40, ledger=wallet.ledger, wallet_id=wallet.id
    )
    result = await plane.refund(
        debit.operation_id, 15, tenant=50, key="rf10", actor="ops", reason="bad answer"
    )
    assert result.restored and sum(a for _, a in result.restored) == 15
    async with pool.connection() as conn:
        entries = await audit.list_for_object(conn, "debit", debit.operation_id)
    assert [(e.actor, e.action, e.reason) for e in entries] == [
        ("ops", "debit.refund", "bad answer")
    ]


async def test_concurrent_refunds_never_give_back_more_than_was_taken(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    # A slow read between "how much was refunded already" and the refund itself: without the
    # lock, every concurrent refund would read 0 and pass.
    real_query = plane.service.ledger.query_transfers

    async def slow_query(*args: object) -> object:
        answer = await real_query(*args)  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        return answer

    monkeypatch.setattr(plane.service.ledger, "query_transfers", slow_query)
    wallet = await _world(plane, 11)
    await plane.issue_grant(_request(wallet), tenant=51, key="g11", actor="a")
    debit = await plane.service.debit(
        tenant=51, key="d11", amount=40, ledger=wallet.ledger, wallet_id=wallet.id
    )

    async def refund(n: int) -> bool:
        try:
            await plane.refund(debit.operation_id, 30, tenant=51, key=f"rf11-{n}", actor="ops")
        except InvalidRequest:
            return False
        return True

    outcomes = await asyncio.gather(*(refund(n) for n in range(4)))
    assert sorted(outcomes) == [False, False, False, True]
    (account,) = await plane.service.ledger.lookup_accounts([debit.funded_by[0].account_id])
    assert account.credits_posted - account.debits_posted == 500 - 40 + 30


async def test_a_restart_still_voids_what_comes_back_to_a_voided_grant(
    plane: ControlPlane,
) -> None:
    wallet = await _world(plane, 12)
    result, _ = await plane.issue_grant(_request(wallet), tenant=52, key="g12", actor="a")
    reservation = await plane.service.reserve(
        tenant=52, key="r12", amount=200, ledger=wallet.ledger, wallet_id=wallet.id, timeout_s=600
    )
    voided, _ = await plane.void_grant(result.grant_id, tenant=52, key="v12", actor="a")
    assert voided.amount == 300  # 200 stay held
    # A new process: a fresh cache, a fresh admin, the same ledger and database.
    service = CreditService(plane.service.ledger, Catalog())
    restarted = ControlPlane(plane.pool, service)
    await restarted.load()
    assert result.grant_id in restarted.grant_service.voided
    await restarted.service.release(
        tenant=52, key="rel12", reservation_id=reservation.reservation_id
    )
    report = await restarted.sweep(plane.service.clock_ns())
    assert [(s.grant_id, s.amount, s.reason) for s in report.swept] == [
        (result.grant_id, 200, "voided")
    ]
    (account,) = await plane.service.ledger.lookup_accounts([result.grant_id])
    assert account.credits_posted - account.debits_posted - account.debits_pending == 0


async def _credited(plane: ControlPlane, wallet: Wallet) -> int:
    """What the wallet's bounded overdraft account holds of its limit, on the ledger."""
    tenant = plane.catalog.resources[wallet.resource_id].tenant
    account = overdraft_account(wallet.id, wallet.ledger, tenant)
    return (await credited(plane.service.ledger, account)).amount


async def test_reconcile_never_credits_a_changed_limit_twice(plane: ControlPlane) -> None:
    wallet = await _world(plane, 20)
    soft, _ = await plane.update_wallet(
        wallet.id,
        actor="a",
        tenant=0,
        key="w20-soft",
        overdraft_mode=OverdraftMode.SOFT,
        overdraft_limit=100,
    )
    raised, _ = await plane.update_wallet(
        wallet.id, actor="a", tenant=0, key="w20-raise", overdraft_limit=150
    )
    assert (soft.overdraft_limit, raised.overdraft_limit) == (100, 150)
    assert await _credited(plane, wallet) == 150
    report = await plane.reconcile()
    assert (report.failed, report.interrupted) == ([], None)
    assert await _credited(plane, wallet) == 150  # not 150 + a second funding of 150
    lowered, _ = await plane.update_wallet(
        wallet.id, actor="a", tenant=0, key="w20-hard", overdraft_mode=OverdraftMode.HARD
    )
    assert (lowered.overdraft_mode, await _credited(plane, wallet)) == (OverdraftMode.HARD, 0)
    await plane.reconcile()
    assert await _credited(plane, wallet) == 0


@pytest.mark.parametrize("crash_at", ["ledger", "final_state"])
async def test_reconcile_finishes_a_limit_change_cut_by_a_crash(
    plane: ControlPlane, pool: db.Pool, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    wallet = await _world(plane, 21 if crash_at == "ledger" else 22)
    await plane.update_wallet(
        wallet.id,
        actor="a",
        tenant=0,
        key=f"w-{crash_at}-1",
        overdraft_mode=OverdraftMode.SOFT,
        overdraft_limit=100,
    )

    async def crash(*args: object, **kw: object) -> object:
        raise Crash()

    if crash_at == "ledger":
        monkeypatch.setattr(plane.service, "sync_overdraft_limit", crash)
    else:  # after the ledger moved, before Postgres recorded it
        monkeypatch.setattr(wallet_rows, "update_wallet_policy", crash)
    with pytest.raises(Crash):
        await plane.update_wallet(
            wallet.id, actor="a", tenant=0, key=f"w-{crash_at}-2", overdraft_limit=250
        )
    monkeypatch.undo()
    async with pool.connection() as conn:
        row = await wallet_rows.get_wallet(conn, wallet.id)
        pending = await wallet_changes.pending_change_of(conn, wallet.id)
    # The wallet's row still says what it was: it changes after the ledger, never before.
    assert row is not None and row.overdraft_limit == 100
    assert pending is not None and pending.overdraft_limit == 250
    assert await _credited(plane, wallet) == (100 if crash_at == "ledger" else 250)
    # Another change waits for this one.
    with pytest.raises(Conflict):
        await plane.update_wallet(wallet.id, actor="a", tenant=0, key="w-other", fall_through=True)

    report = await plane.reconcile()
    assert report.wallet_changes_finished == [pending.id]
    async with pool.connection() as conn:
        row = await wallet_rows.get_wallet(conn, wallet.id)
        finished = await wallet_changes.get_change(conn, pending.id)
    assert row is not None and row.overdraft_limit == 250
    assert finished is not None and finished.state is ChangeState.APPLIED
    assert await _credited(plane, wallet) == 250  # moved once, whatever step crashed
    # The caller's retry with its key gets the outcome.
    again, replayed = await plane.update_wallet(
        wallet.id, actor="a", tenant=0, key=f"w-{crash_at}-2", overdraft_limit=250
    )
    assert (again.overdraft_limit, replayed) == (250, False)
    assert await _credited(plane, wallet) == 250


async def test_a_refused_lowering_stays_refused_for_its_key(plane: ControlPlane) -> None:
    wallet = await _world(plane, 23)
    await plane.update_wallet(
        wallet.id,
        actor="a",
        tenant=0,
        key="w23-soft",
        overdraft_mode=OverdraftMode.SOFT,
        overdraft_limit=100,
    )
    await plane.service.debit(
        tenant=0, key="d23", amount=60, ledger=wallet.ledger, wallet_id=wallet.id
    )
    for _ in range(2):
        with pytest.raises(PolicyRefused, match="60 drawn"):
            await plane.update_wallet(
                wallet.id, actor="a", tenant=0, key="w23-cut", overdraft_limit=50
            )
    assert await _credited(plane, wallet) == 100
    cut, _ = await plane.update_wallet(
        wallet.id, actor="a", tenant=0, key="w23-cut-2", overdraft_limit=60
    )
    assert (cut.overdraft_limit, await _credited(plane, wallet)) == (60, 60)


async def test_a_cap_change_reaches_the_period_even_after_a_crash(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    wallet = await _world(plane, 24)
    await plane.issue_grant(_request(wallet), tenant=0, key="g24", actor="a")
    budget, _ = await plane.create_budget(
        resource_id=wallet.resource_id,
        ledger=wallet.ledger,
        period=Period.LIFETIME,
        cap=100,
        actor="a",
        tenant=0,
        key="b24",
    )
    # A process whose cache still has the old cap opens the period after the change did.
    stale = CreditService(plane.service.ledger, Catalog())
    fresh = ControlPlane(plane.pool, stale, plane.grant_service)
    await fresh.load()

    async def crash(*args: object, **kw: object) -> object:
        raise Crash()

    monkeypatch.setattr(plane, "_sync_budget", crash)
    with pytest.raises(Crash):
        await plane.update_budget(budget.id, cap=40, actor="a", tenant=0, key="b24-cut")
    monkeypatch.undo()
    report = await plane.reconcile()
    assert report.budgets >= 1
    spend = {"ledger": wallet.ledger, "wallet_id": wallet.id}
    with pytest.raises(BudgetExceeded):
        await stale.debit(tenant=0, key="d24-1", amount=41, **spend)
    await stale.debit(tenant=0, key="d24-2", amount=40, **spend)
    again, replayed = await plane.update_budget(
        budget.id, cap=40, actor="a", tenant=0, key="b24-cut"
    )
    assert (again.cap, replayed) == (40, False)
