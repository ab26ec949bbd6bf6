"""Plans and their allocations: each period once with its own dates however late, a bounded
tick, a crash between the steps, two schedulers at once, changes of plan, pause and cancel."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from grants.errors import Conflict, SubscriptionCancelled
from grants.model import Category
from jobs.scheduler import Jobs, JobSettings
from ledger import db
from ledger.clock import ManualClock, ns_of_datetime
from ledger.codes import TransferCode
from ledger.embedded import EmbeddedEngine
from ledger.repositories import events
from ledger.repositories import plans as repo
from ledger.repositories.resources import ResourceKind
from ledger.types import AccountFilter, AccountFilterFlags
from tests.integration.projection_support import plane_on
from wallets.control import ControlPlane
from wallets.plan_periods import PeriodUnit
from wallets.plans import PlanService, RolloverSpec, RuleSpec

pytestmark = pytest.mark.anyio
UTC = dt.UTC
NS = 1_000_000_000
# A month-end anchor: the months that follow start on the last day of the shorter ones.
JAN_31 = dt.datetime(2025, 1, 31, 10, tzinfo=UTC)


class Crash(BaseException):
    """A process dying between two steps (not an Exception: nothing catches it)."""


@dataclass
class World:
    plane: ControlPlane
    plans: PlanService
    clock: ManualClock
    ledger: int
    customer_id: int
    tag: str
    engine: EmbeddedEngine
    n: int = 0

    def key(self, name: str) -> str:
        self.n += 1
        return f"{name}-{self.tag}-{self.n}"

    def move_to(self, at: dt.datetime) -> int:
        at_ns = ns_of_datetime(at)
        self.clock.advance_ns(at_ns - self.clock())
        return at_ns

    async def resource(self) -> int:
        r, _ = await self.plane.create_resource(
            customer_id=self.customer_id,
            kind=ResourceKind.AGENT,
            actor="t",
            tenant=0,
            key=self.key("res"),
        )
        return r.id

    async def plan(self, amount: int, *, prorate: bool = False, **rule: Any) -> int:
        spec = RuleSpec(
            ledger=self.ledger,
            amount=amount,
            period_unit=rule.pop("unit", PeriodUnit.MONTH),
            category=rule.pop("category", Category.PROMOTIONAL),
            **rule,
        )
        view, _ = await self.plans.create_plan(
            code=self.key("plan").replace("-", "_"),
            name="P",
            prorate=prorate,
            rules=[spec],
            actor="t",
            tenant=0,
            key=self.key("plan"),
        )
        return view.plan.id

    async def subscribe(self, resource_id: int, plan_id: int, start: dt.datetime) -> int:
        view, _ = await self.plans.subscribe(
            resource_id=resource_id,
            plan_id=plan_id,
            start=start,
            actor="t",
            tenant=0,
            key=self.key("sub"),
        )
        return view.subscription.id

    async def available(self, resource_id: int) -> int:
        wallet = self.plane.catalog.wallet_for(resource_id, self.ledger)
        async with self.plane.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT id FROM grants WHERE wallet_id = %s AND state = 'active'",
                (repo.to_uuid(wallet.id),),
            )
            ids = [row[0].int for row in await cursor.fetchall()]
        total = 0
        for grant_id in ids:
            left = await self.plane.grant_service.left(grant_id)
            total += 0 if left is None else left[0]
        return total

    async def rows(self, sub_id: int) -> list[repo.Allocation]:
        return (await self.plans.get_subscription(sub_id)).allocations


_worlds = itertools.count(1)


async def _world(pool: db.Pool, clock: ManualClock) -> AsyncIterator[World]:
    """A fresh engine on `clock` with a credit type and a customer of their own (the database
    is shared by the tests: every key and code here is new)."""
    n = f"{next(_worlds)}{uuid.uuid4().hex[:8]}"
    with EmbeddedEngine(clock_ns=clock) as engine:
        plane = plane_on(pool, engine, clock)
        ct, _ = await plane.create_credit_type(
            code=f"plans{n}", name="P", asset_scale=0, actor="t", tenant=0, key=f"p-ct-{n}"
        )
        cu, _ = await plane.create_customer(name="P", actor="t", tenant=0, key=f"p-cu-{n}")
        yield World(plane, PlanService(plane), clock, ct.ledger, cu.id, n, engine)
        await plane.service.ledger.close()


@pytest.fixture
def migrated_db_url(fresh_db_url: Callable[..., str], template_db: str) -> str:
    """A database of each test's own: the allocator works on every subscription it finds, and
    another test's engine and catalog know none of this one's wallets."""
    return fresh_db_url(template_db)


@pytest.fixture
async def world(pool: db.Pool) -> AsyncIterator[World]:
    async for w in _world(pool, ManualClock(ns_of_datetime(JAN_31))):
        yield w


async def _plan_grants(world: World) -> list[tuple[int, int, dt.datetime, dt.datetime]]:
    async with world.plane.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT id, amount, effective_at, expires_at FROM grants"
            " WHERE source = 'plan_allocation' AND credit_type_id = %s ORDER BY effective_at, id",
            (world.ledger,),
        )
        return [(r[0].int, int(r[1]), r[2], r[3]) for r in await cursor.fetchall()]


def _d(m: int, d: int, y: int = 2025) -> dt.datetime:
    return dt.datetime(y, m, d, 10, tzinfo=UTC)


async def test_a_late_allocation_happens_once_per_period_with_its_own_dates(
    world: World, pool: db.Pool
) -> None:
    resource = await world.resource()
    sub = await world.subscribe(resource, await world.plan(100), JAN_31)
    assert [(r.period_index, r.state) for r in await world.rows(sub)] == [(0, "done")]
    # The service was down across three month ends.
    at_ns = world.move_to(_d(5, 15))
    report = await world.plans.allocate_due(at_ns)
    assert (report.planned, report.finished, report.issued) == (3, 3, 3)
    grants = await _plan_grants(world)
    assert [(g[2], g[3]) for g in grants] == [
        (_d(1, 31), _d(2, 28)),
        (_d(2, 28), _d(3, 31)),
        (_d(3, 31), _d(4, 30)),
        (_d(4, 30), _d(5, 31)),
    ]
    assert {g[1] for g in grants} == {100}
    again = await world.plans.allocate_due(at_ns)
    assert (again.planned, again.finished) == (0, 0)
    assert len(await _plan_grants(world)) == 4
    # One allocation.issued event per period.
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM events WHERE type = 'allocation.issued' AND wallet_id = %s",
            (repo.to_uuid(world.plane.catalog.wallet_for(resource, world.ledger).id),),
        )
        assert (await cursor.fetchone()) == (4,)
        event = await events.get_event(
            conn, events.event_id("allocation.issued", repo_id(await world.rows(sub), 2))
        )
    assert event is not None and event.data["period_start"] == "2025-03-31T10:00:00Z"
    assert event.data["amount"] == "100"


def repo_id(rows: list[repo.Allocation], index: int) -> str:
    from ledger.ids import id_text

    return id_text(next(r for r in rows if r.period_index == index).id)


async def test_a_tick_is_bounded_and_a_second_does_nothing(world: World, pool: db.Pool) -> None:
    plan = await world.plan(5, unit=PeriodUnit.DAY)
    subs = [await world.subscribe(await world.resource(), plan, _d(1, 31)) for _ in range(3)]
    at_ns = world.move_to(_d(2, 9))  # nine more days each: 27 due
    first = await world.plans.allocate_due(at_ns, limit=10)
    assert first.finished == 10
    totals = [first.finished]
    while True:
        report = await world.plans.allocate_due(at_ns, limit=10)
        if report.finished == 0:
            break
        assert report.finished <= 10
        totals.append(report.finished)
    assert sum(totals) == 27
    for sub in subs:
        assert sorted(r.period_index for r in await world.rows(sub)) == list(range(10))
    assert len(await _plan_grants(world)) == 30


async def test_a_crash_between_the_steps_is_finished_once_by_the_next_tick(
    world: World, pool: db.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    resource = await world.resource()
    sub = await world.subscribe(resource, await world.plan(100), JAN_31)
    at_ns = world.move_to(_d(3, 1))  # period 1 (Feb 28) is due
    real_done = repo.mark_done

    async def crash_after_the_ledger(*args: Any, **kwargs: Any) -> Any:
        raise Crash

    monkeypatch.setattr(repo, "mark_done", crash_after_the_ledger)
    with pytest.raises(Crash):
        await world.plans.allocate_due(at_ns)
    monkeypatch.setattr(repo, "mark_done", real_done)
    rows = await world.rows(sub)
    assert [(r.period_index, r.state) for r in rows] == [(0, "done"), (1, "pending")]
    assert await world.available(resource) == 200  # the ledger moved, the row did not
    report = await world.plans.allocate_due(at_ns)
    assert (report.planned, report.finished) == (0, 1)
    assert [r.state for r in await world.rows(sub)] == ["done", "done"]
    assert await world.available(resource) == 200
    assert len(await _plan_grants(world)) == 2

    # A crash before the ledger: the pending row is issued by the next tick.
    at_ns = world.move_to(_d(4, 1))
    real_issue = world.plane.issue_grant

    async def crash_before_the_ledger(*args: Any, **kwargs: Any) -> Any:
        raise Crash

    monkeypatch.setattr(world.plane, "issue_grant", crash_before_the_ledger)
    with pytest.raises(Crash):
        await world.plans.allocate_due(at_ns)
    monkeypatch.setattr(world.plane, "issue_grant", real_issue)
    assert [r.state for r in await world.rows(sub)] == ["done", "done", "pending"]
    assert (await world.plans.allocate_due(at_ns)).finished == 1
    assert (await world.plans.allocate_due(at_ns)).finished == 0
    assert await world.available(resource) == 300
    assert len(await _plan_grants(world)) == 3


async def test_two_schedulers_at_once_double_nothing(world: World, pool: db.Pool) -> None:
    plan = await world.plan(7, unit=PeriodUnit.DAY)
    subs = [await world.subscribe(await world.resource(), plan, _d(1, 31)) for _ in range(4)]
    at_ns = world.move_to(_d(2, 20))  # 20 more days each
    other = PlanService(world.plane)
    for _ in range(10):
        a, b = await asyncio.gather(
            world.plans.allocate_due(at_ns, limit=15), other.allocate_due(at_ns, limit=15)
        )
        if a.finished == b.finished == 0:
            break
    for sub in subs:
        indexes = [r.period_index for r in await world.rows(sub)]
        assert sorted(indexes) == list(range(21))
    assert len(await _plan_grants(world)) == 4 * 21


async def test_two_jobs_processes_at_once_double_nothing(world: World, pool: db.Pool) -> None:
    """Two schedulers each with its own control plane and cache (two processes), over one
    database and engine, both believing they lead."""
    plan = await world.plan(3, unit=PeriodUnit.DAY)
    subs = [await world.subscribe(await world.resource(), plan, _d(1, 31)) for _ in range(5)]
    world.move_to(_d(3, 2))  # 30 more days each
    second = plane_on(pool, world.engine, world.clock)
    await second.load()
    first_jobs = Jobs(world.plane, JobSettings(), plans=world.plans)
    second_jobs = Jobs(second, JobSettings())
    first_jobs.leader = second_jobs.leader = True
    await asyncio.gather(first_jobs.allocate_plans(), second_jobs.allocate_plans())
    await asyncio.gather(first_jobs.allocate_plans(), second_jobs.allocate_plans())
    for sub in subs:
        assert sorted(r.period_index for r in await world.rows(sub)) == list(range(31))
    assert len(await _plan_grants(world)) == 5 * 31
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT count(*) FROM events WHERE type = 'allocation.issued'")
        assert await cursor.fetchone() == (5 * 31,)
    await second.service.ledger.close()


async def test_the_jobs_tick_runs_on_the_leader(world: World) -> None:
    resource = await world.resource()
    sub = await world.subscribe(resource, await world.plan(10), JAN_31)
    world.move_to(_d(3, 1))
    jobs = Jobs(world.plane, JobSettings(), plans=world.plans)
    await jobs.allocate_plans()
    assert jobs.plan_allocations == 0 and len(await world.rows(sub)) == 1
    jobs.leader = True
    await jobs.allocate_plans()
    assert jobs.plan_allocations == 1 and len(await world.rows(sub)) == 2


async def _change(world: World, sub: int, plan: int) -> list[repo.Allocation]:
    view, _ = await world.plans.change_plan(
        sub, plan_id=plan, actor="t", tenant=0, key=world.key("chg")
    )
    return [r for r in view.allocations if r.seq == view.subscription.changes]


async def test_an_upgrade_mid_period_prorated_and_not(world: World) -> None:
    # April has 30 days: on Apr 15 at 10:00 (period from Mar 31), half of it... from Mar 31 to
    # Apr 30 is 30 days; Apr 15 leaves 15 of them.
    small, big = await world.plan(100), await world.plan(400, prorate=True)
    whole = await world.plan(400)
    world.move_to(_d(3, 31))
    r1, r2 = await world.resource(), await world.resource()
    s1 = await world.subscribe(r1, small, _d(3, 31))
    s2 = await world.subscribe(r2, small, _d(3, 31))
    world.move_to(_d(4, 15))
    (prorated,) = await _change(world, s1, big)
    assert (prorated.amount, prorated.voided) == (150, 0)  # (400 - 100) * 15/30
    assert prorated.effective_at == _d(4, 15) and prorated.expires_at == _d(4, 30)
    assert prorated.state == "done"
    assert await world.available(r1) == 250
    (full,) = await _change(world, s2, whole)
    assert full.amount == 300 and await world.available(r2) == 400
    # The new plan's periods follow: the next one is the new plan's, once.
    at_ns = world.move_to(_d(5, 1))
    await world.plans.allocate_due(at_ns)
    await world.plane.sweep(at_ns)
    assert await world.available(r1) == 400  # April's block expired at Apr 30
    rows = await world.rows(s1)
    assert [(r.period_index, r.seq, r.amount) for r in rows] == [
        (0, 0, 100),
        (0, 1, 150),
        (1, 0, 400),
    ]


async def test_changing_to_the_same_plan_or_a_cancelled_subscription_is_refused(
    world: World,
) -> None:
    plan, other = await world.plan(100), await world.plan(50)
    sub = await world.subscribe(await world.resource(), plan, JAN_31)
    with pytest.raises(Conflict):
        await world.plans.change_plan(sub, plan_id=plan, actor="t", tenant=0, key="same")
    await world.plans.cancel(sub, actor="t", tenant=0, key="cancel")
    with pytest.raises(SubscriptionCancelled):
        await world.plans.change_plan(sub, plan_id=other, actor="t", tenant=0, key="late")
    with pytest.raises(SubscriptionCancelled):
        await world.plans.pause(sub, actor="t", tenant=0, key="pause")


async def test_a_downgrade_mid_period_voids_the_difference(world: World) -> None:
    big, small = await world.plan(400), await world.plan(100, prorate=True)
    world.move_to(_d(3, 31))
    r = await world.resource()
    s = await world.subscribe(r, big, _d(3, 31))
    world.move_to(_d(4, 15))
    (row,) = await _change(world, s, small)
    assert (row.amount, row.voided) == (0, 150)  # (100 - 400) * 15/30
    assert await world.available(r) == 250


async def test_pause_resume_and_cancel(world: World) -> None:
    r = await world.resource()
    sub = await world.subscribe(r, await world.plan(10, unit=PeriodUnit.DAY), JAN_31)
    world.move_to(_d(2, 2))  # periods 1 and 2 due; the pause catches them up first
    await world.plans.pause(sub, actor="t", tenant=0, key="p")
    assert [r.period_index for r in await world.rows(sub)] == [0, 1, 2]
    at_ns = world.move_to(_d(2, 5, 2025) + dt.timedelta(hours=1))
    assert (await world.plans.allocate_due(at_ns)).planned == 0
    view, _ = await world.plans.resume(sub, actor="t", tenant=0, key="r")
    assert view.subscription.state == "active"
    # Periods 3, 4 and 5 started while paused: skipped. Period 6 starts Feb 6.
    at_ns = world.move_to(_d(2, 7))
    await world.plans.allocate_due(at_ns)
    assert [r.period_index for r in await world.rows(sub)] == [0, 1, 2, 6, 7]
    view, replayed = await world.plans.cancel(sub, actor="t", tenant=0, key="c")
    assert view.subscription.state == "cancelled" and not replayed
    again, replayed = await world.plans.cancel(sub, actor="t", tenant=0, key="c")
    assert replayed and again.subscription.state == "cancelled"
    at_ns = world.move_to(_d(3, 1))
    assert (await world.plans.allocate_due(at_ns)).planned == 0
    assert len(await world.rows(sub)) == 5


async def test_a_rule_with_rollover_carries_what_is_left_one_more_period(world: World) -> None:
    r = await world.resource()
    plan = await world.plan(100, rollover=RolloverSpec(min_credits=10, max_credits=30))
    sub = await world.subscribe(r, plan, JAN_31)
    assert await world.available(r) == 100
    at_ns = world.move_to(_d(3, 1))
    await world.plans.allocate_due(at_ns)
    report = await world.plane.sweep(at_ns)
    # January's block: 30 of its 100 roll into a block to Mar 31; February's is whole.
    assert [(x.taken, x.floor) for x in report.rolled_over] == [(30, 0)]
    assert await world.available(r) == 130
    assert len(await world.rows(sub)) == 2


async def test_an_upgrade_mid_period_rolls_the_period_over_once(world: World) -> None:
    """The change's block carries no rollover: the floor and the cap apply once a period."""
    spec = RolloverSpec(min_credits=40, max_credits=50)
    small = await world.plan(100, rollover=spec)
    big = await world.plan(400, rollover=spec)
    world.move_to(_d(3, 31))
    r = await world.resource()
    s = await world.subscribe(r, small, _d(3, 31))
    world.move_to(_d(4, 15))
    (up,) = await _change(world, s, big)
    assert up.amount == 300 and await world.available(r) == 400
    at_ns = world.move_to(_d(5, 1))
    await world.plans.allocate_due(at_ns)
    report = await world.plane.sweep(at_ns)
    # April's own block (100 left) carries 50; the change's 300 expire at Apr 30.
    assert [(x.taken, x.floor) for x in report.rolled_over] == [(50, 0)]
    assert await world.available(r) == 400 + 50


async def test_a_downgrade_not_prorated_voids_the_whole_difference_once(world: World) -> None:
    big, small = await world.plan(400), await world.plan(100)
    world.move_to(_d(3, 31))
    r = await world.resource()
    s = await world.subscribe(r, big, _d(3, 31))
    at_ns = world.move_to(_d(4, 15))
    (row,) = await _change(world, s, small)
    assert (row.amount, row.voided, row.state) == (0, 300, "done")
    assert await world.available(r) == 100
    # The tick after it changes nothing; the next period is the small plan's.
    assert (await world.plans.allocate_due(at_ns)).finished == 0
    at_ns = world.move_to(_d(5, 1))
    await world.plans.allocate_due(at_ns)
    await world.plane.sweep(at_ns)
    assert await world.available(r) == 100
    # Back up in the same period: the difference is granted again.
    (up,) = await _change(world, s, big)
    assert (up.amount, up.voided) == (300, 0)
    assert await world.available(r) == 400


async def test_a_change_between_rules_of_other_periods_voids_one_and_grants_the_other(
    world: World,
) -> None:
    monthly = await world.plan(300)
    weekly = await world.plan(70, prorate=True, unit=PeriodUnit.WEEK)
    world.move_to(_d(3, 31))
    r = await world.resource()
    s = await world.subscribe(r, monthly, _d(3, 31))
    world.move_to(_d(4, 4))  # 26 of April's 30 days left; 3 of the week's 7
    rows = await _change(world, s, weekly)
    assert sorted((x.amount, x.voided) for x in rows) == [(0, 260), (30, 0)]
    assert await world.available(r) == 300 - 260 + 30
    weekly_row = next(x for x in rows if x.amount)
    assert (weekly_row.period_start, weekly_row.expires_at) == (_d(3, 31), _d(4, 7))
    at_ns = world.move_to(_d(4, 8))
    report = await world.plans.allocate_due(at_ns)
    assert report.finished == 1  # the week from Apr 7, once
    assert (await world.plans.allocate_due(at_ns)).finished == 0


@pytest.mark.parametrize("period_count", [1, 10])
async def test_a_change_to_a_rule_whose_blocks_outlive_the_ledger_grants_nothing(
    world: World, period_count: int
) -> None:
    """A rule whose block would expire past the times the ledger holds (year 2554; past year
    9999 with 10-year periods) gets no allocation (`_row_or_none`): a change of plan to it
    neither answers 500 (OverflowError) nor leaves a row pending for ever that no tick can
    issue, which would refuse every later change, pause or cancellation (409)."""
    monthly = await world.plan(300)
    forever = await world.plan(
        70, unit=PeriodUnit.YEAR, period_count=period_count, expiry_periods=1000
    )
    world.move_to(_d(3, 31))
    r = await world.resource()
    s = await world.subscribe(r, monthly, _d(3, 31))
    world.move_to(_d(4, 15))
    rows = await _change(world, s, forever)
    assert [(x.amount, x.voided) for x in rows] == [(0, 300)]
    assert all(x.state == "done" for x in await world.rows(s))
    view, _ = await world.plans.cancel(s, actor="t", tenant=0, key=world.key("cancel"))
    assert view.subscription.state == "cancelled"


async def test_a_change_between_rules_of_other_periods_grants_before_it_voids(
    world: World,
) -> None:
    """The new rule's block is issued before the old rule's part is voided, so that the
    wallet's available credits never dip through zero on the way (a dip is a crossing to the
    alerts: balance.low, balance.depleted, an automatic top-up charged for nothing). Rows of one
    change are written in one transaction: their order must not be left to their ids."""
    monthly = await world.plan(300)
    weekly = await world.plan(70, unit=PeriodUnit.WEEK)
    world.move_to(_d(3, 31))
    subs = []
    for _ in range(8):  # each change's two rows have ids of their own: 8 draws
        r = await world.resource()
        subs.append((r, await world.subscribe(r, monthly, _d(3, 31))))
    world.move_to(_d(4, 4))
    for r, s in subs:
        rows = await _change(world, s, weekly)
        granted = next(x for x in rows if x.amount)
        voided = next(x for x in rows if x.voided)
        assert granted.grant_id is not None and voided.void_grant_id is not None
        (account,) = await world.plane.service.ledger.lookup_accounts([granted.grant_id])
        voids = await world.plane.service.ledger.get_account_transfers(
            AccountFilter(
                account_id=voided.void_grant_id, user_data_128=0, user_data_64=0,
                user_data_32=0, code=TransferCode.GRANT_VOID, timestamp_min=0, timestamp_max=0,
                limit=10, flags=AccountFilterFlags.DEBITS,
            )
        )  # fmt: skip
        assert [t.amount for t in voids] == [300]
        assert account.timestamp < voids[0].timestamp, (r, account.timestamp, voids)
