"""What the projection's tests share: a database of the test's own (the reconciliation compares
the whole catalog with the engine, which lives as long as the test), a control plane on the
embedded engine, a realistic mixed history, and the assertion that reconciliation is clean."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from grants.model import Category
from ledger import db
from ledger.client import open_ledger
from ledger.clock import ManualClock, datetime_of_ns
from ledger.embedded import EmbeddedEngine
from ledger.repositories import finance as finance_rows
from ledger.repositories import projection as projection_rows
from ledger.repositories.resources import ResourceKind
from ledger.settings import LedgerSettings
from tests.conftest import SETTINGS
from wallets.catalog import Catalog, OverdraftMode, Period, Wallet
from wallets.chains import Overage
from wallets.control import ControlPlane, GrantRequest
from wallets.dimensions import DimensionSets
from wallets.projection import ProjectionFeed
from wallets.reconcile_projection import CheckResult, ProjectionCheck
from wallets.service import CreditService

TENANT = 7
S = 1_000_000_000


async def own_pool(fresh_db_url: Callable[..., str], template_db: str) -> AsyncIterator[db.Pool]:
    """A pool on a new database cloned from the migrated template (the body of a fixture)."""
    pool = await db.open_pool(SETTINGS, conninfo=fresh_db_url(template_db))
    try:
        yield pool
    finally:
        await db.close(pool)


def plane_on(pool: db.Pool, engine: EmbeddedEngine, clock: Callable[[], int]) -> ControlPlane:
    ledger = open_ledger(LedgerSettings(), engine=engine)
    service = CreditService(ledger, Catalog(), dimensions=DimensionSets(pool), clock_ns=clock)
    return ControlPlane(pool, service)


def check_of(plane: ControlPlane, **options: Any) -> ProjectionCheck:
    # The catalog's rows are as old as the test: no grace for rows being created.
    return ProjectionCheck(plane.service.ledger, plane.pool, catalog_grace_s=0, **options)


async def reconcile(plane: ControlPlane, **options: Any) -> CheckResult:
    return await check_of(plane, **options).run_to_watermark()


def described(result: CheckResult) -> str:
    return msgspec.json.encode(result.examples).decode()


async def assert_reconciled(plane: ControlPlane) -> CheckResult:
    """Reconciliation of the projection is clean, every part of it."""
    result = await reconcile(plane)
    assert result.clean, described(result)
    assert result.complete and result.accounts > 0
    return result


@dataclass
class History:
    """What `mixed_history` made, for the tests that then break something."""

    plane: ControlPlane
    clock: ManualClock
    feed: ProjectionFeed
    ledger_id: int
    agent_wallet: Wallet
    blocks: dict[str, int] = field(default_factory=dict)
    operations: dict[str, int] = field(default_factory=dict)


async def mixed_history(plane: ControlPlane, clock: ManualClock) -> History:
    """Debits with dimensions, a reservation settled in part across two blocks, one released,
    one timed out, one still open, a usage refund, a voided grant, an expiry sweep, overdraft
    draws (bounded and unbounded) repaid by new grants, budgets on the path; projected."""
    ledger_id = 300
    await plane.create_credit_type(
        ledger=ledger_id, code="rc", name="Credits", asset_scale=0, actor="a", tenant=0, key="ct"
    )
    customer, _ = await plane.create_customer(name="Acme", actor="a", tenant=0, key="cu")
    resources = {}
    parent = None
    for kind in (ResourceKind.SUBSCRIPTION, ResourceKind.TEAM, ResourceKind.AGENT):
        resource, _ = await plane.create_resource(
            customer_id=customer.id, kind=kind, actor="a", tenant=0, key=kind, parent_id=parent
        )
        resources[kind] = parent = resource.id

    async def wallet(kind: ResourceKind, **kw: Any) -> Wallet:
        made, _ = await plane.create_wallet(
            resource_id=resources[kind], ledger=ledger_id, actor="a", tenant=0, key=f"w{kind}", **kw
        )
        return made

    team = await wallet(ResourceKind.TEAM)
    agent = await wallet(
        ResourceKind.AGENT, overdraft_mode=OverdraftMode.SOFT, overdraft_limit=50, fall_through=True
    )
    subscription = await wallet(ResourceKind.SUBSCRIPTION, overdraft_mode=OverdraftMode.UNBOUNDED)
    for kind, period in ((ResourceKind.TEAM, Period.DAY), (ResourceKind.AGENT, Period.LIFETIME)):
        await plane.create_budget(
            resource_id=resources[kind],
            ledger=ledger_id,
            period=period,
            cap=100_000,
            actor="a",
            tenant=0,
            key=f"b{kind}",
        )
    feed = ProjectionFeed(plane.service.ledger, plane.pool, clock_ns=clock)
    history = History(plane, clock, feed, ledger_id, agent)
    now = datetime_of_ns(clock())

    async def grant(name: str, to: Wallet, amount: int, **kw: Any) -> None:
        request = GrantRequest(
            wallet_id=to.id,
            amount=amount,
            category=kw.pop("category", Category.PAID),
            consideration_minor=kw.pop("consideration_minor", amount * 10),
            currency="USD",
            **kw,
        )
        result, _ = await plane.issue_grant(request, tenant=TENANT, key=name, actor="a")
        history.blocks[name] = result.grant_id

    await grant("paid", agent, 1000)
    await grant(
        "promo",
        agent,
        100,
        category=Category.PROMOTIONAL,
        consideration_minor=0,
        expires_at=now + dt.timedelta(minutes=10),
    )
    await grant("to-void", agent, 200, priority=5)
    await grant("team", team, 500)
    svc = plane.service
    spend = {"tenant": TENANT, "ledger": ledger_id, "wallet_id": agent.id}
    debit = await svc.debit(
        key="d1", amount=60, dimensions={"feature": "chat", "model": "m1"}, **spend
    )
    history.operations["d1"] = debit.operation_id
    # 40 left in the promotional block: the reservation holds it and 260 of the paid one.
    held = await svc.reserve(
        key="r1", amount=300, timeout_s=600, dimensions={"feature": "s"}, **spend
    )
    await svc.settle(tenant=TENANT, key="s1", reservation_id=held.reservation_id, amount=120)
    released = await svc.reserve(key="r2", amount=40, timeout_s=600, **spend)
    await svc.release(tenant=TENANT, key="x2", reservation_id=released.reservation_id)
    timed_out = await svc.reserve(key="r3", amount=25, timeout_s=5, **spend)
    history.operations["r3"] = timed_out.reservation_id
    clock.advance(6)
    await plane.refund(debit.operation_id, 20, tenant=TENANT, key="rf1", actor="a")
    await plane.void_grant(history.blocks["to-void"], tenant=TENANT, key="v1", actor="a")
    clock.advance(601)  # the promotional block has expired
    await plane.sweep(clock())
    # Everything the agent has left, the team's block (fall-through), and 30 of the overdraft.
    (paid,) = await svc.ledger.lookup_accounts([history.blocks["paid"]])
    left = paid.credits_posted - paid.debits_posted - paid.debits_pending
    await svc.debit(key="d2", amount=left + 500 + 30, dimensions={"feature": "batch"}, **spend)
    await grant("repays", agent, 100)  # repays the 30 first
    await grant("sub", subscription, 10)
    await svc.debit(
        tenant=TENANT, key="d3", amount=25, ledger=ledger_id, wallet_id=subscription.id
    )  # 15 of it drawn from the unbounded overdraft
    await grant("sub-repays", subscription, 50)
    overage = await svc.reserve(key="r4", amount=10, timeout_s=600, **spend)
    history.operations["r4"] = overage.reservation_id
    await svc.settle(
        tenant=TENANT,
        key="s4",
        reservation_id=overage.reservation_id,
        amount=15,
        policy=Overage.OVERDRAFT,
    )
    await svc.reserve(key="r5", amount=5, timeout_s=3600, **spend)  # open at the end
    await feed.catch_up()
    return history


async def fresh_plane(pool: db.Pool) -> AsyncIterator[ControlPlane]:
    """A control plane on a new embedded engine whose service records dimension sets, over an
    emptied projection: the `plane` fixture of the projection's tests."""
    engine = EmbeddedEngine()
    ledger = open_ledger(LedgerSettings(), engine=engine)
    service = CreditService(ledger, Catalog(), dimensions=DimensionSets(pool))
    plane = ControlPlane(pool, service)
    async with pool.connection() as conn:
        await projection_rows.reset(conn)
    yield plane
    await ledger.close()
    engine.close()


# 2025-01-10T09:00:00Z: where the finance tests' clock starts (ACCOUNTING.md's first event).
JANUARY_10 = dt.datetime(2025, 1, 10, 9, tzinfo=dt.UTC)


def january_clock() -> ManualClock:
    return ManualClock(start_ns=int(JANUARY_10.timestamp()) * 1_000_000_000)


async def clocked_plane(pool: db.Pool, clock: ManualClock) -> AsyncIterator[ControlPlane]:
    """A control plane whose embedded engine and service read `clock`, with the finance
    partitions this process knew forgotten (the body of the finance tests' `plane` fixture)."""
    finance_rows.forget_partitions()
    with EmbeddedEngine(clock_ns=clock) as engine:
        made = plane_on(pool, engine, clock)
        yield made
        await made.service.ledger.close()
