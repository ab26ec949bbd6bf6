"""Plans and recurring allocations: the catalog of plans, subscriptions of resources to them,
and the allocations that the job issues each period (ledger/repositories/plans.py holds the
rows, migration 0012 their schema).

Invariants:
- Period k of a rule is computed from the subscription's anchor (wallets/plan_periods.py). Its
  allocation is a grant through ControlPlane.issue_grant: effective at the period's start,
  expiring at the end of the period (or of `expiry_periods` periods), source 'plan_allocation',
  tenant 0 and a key derived from the allocation row, whose id derives from (subscription,
  rule, period index, seq). However late it runs, a period is allocated once, with its own
  dates.
- The dual write is ordered: the row 'pending' (with its grant id) in one transaction, then the
  ledger, then the row 'done' with the `allocation.issued` event in one transaction. A crash
  leaves a pending row that the next tick finishes; finishing is idempotent (the grant's key is
  fixed), and a pending row is finished under its row lock (SKIP LOCKED: two ticks never work
  on the same row; a second pass finds it done).
- Regular allocations of a rule go on from max(first period starting at or after
  `allocate_from`, last period with a row + 1). A change of plan moves `allocate_from` to the
  change, and writes the adjustments of the current period as rows of seq = the change's
  number: the new plan's part granted (a block for the rest of the period, with the period's
  expiry), or the old plan's voided from the period's newest block (a partial void, capped at
  what that block has left when the change is made). Prorated (the NEW plan's `prorate`): the
  difference times the fraction of the period left, rounded toward zero; else the whole.
- A rule's rollover policy goes with each of its blocks (GrantRequest.rollover): at the block's
  expiry, min(max, max(min, remaining)) credits roll into a block that lasts one more period.
- A paused subscription gets nothing; on resume, periods that started while it was paused are
  skipped. A cancelled one gets nothing more; what it was given stays.
- A resource has at most one live (active or paused) subscription of a plan (a unique index):
  a second, by subscribe or by a change of plan, is AlreadySubscribed naming the live one.
- Before a change of plan, a pause or a cancellation, the subscription's due allocations are
  issued first, so that the change applies to the periods as they stand.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, NoReturn

import msgspec
import psycopg

from grants.errors import (
    AlreadySubscribed,
    Conflict,
    CreditError,
    IdempotencyConflict,
    InvalidRequest,
    LedgerUnavailableError,
    NotFound,
    SubscriptionCancelled,
)
from grants.model import Category, RolloverPolicy, Source
from ledger.client import LedgerUnavailable
from ledger.clock import datetime_of_ns, ns_of_datetime, rfc3339_of
from ledger.db import Connection
from ledger.ids import derive_id, id_text, operation_id
from ledger.limits import (
    AMOUNT_MAX_REQUEST,
    BUSINESS_TIME_NS_MAX,
    MONEY_MINOR_MAX,
    PLAN_ALLOCATIONS_PER_TICK,
    PLAN_CATCH_UP_ALLOCATIONS_MAX,
    PLAN_RULES_MAX,
    SUBSCRIPTION_ALLOCATIONS_SHOWN_MAX,
)
from ledger.repositories import audit, events
from ledger.repositories import plans as repo
from ledger.repositories._rows import Keyset
from ledger.repositories.plans import Allocation, Plan, PlanRule, Subscription
from wallets.control import ControlPlane, GrantRequest, business_time_ns
from wallets.plan_periods import (
    PERIOD_INDEX_MAX,
    PeriodUnit,
    first_index_from,
    period_bounds,
    period_start,
    prorate,
    remaining_fraction_ns,
)

_logger = logging.getLogger(__name__)
PERIOD_COUNT_MAX = 1000
EXPIRY_PERIODS_MAX = 1000
SYSTEM_TENANT = 0  # the allocations' idempotency records: the job acts for nobody's key
ALLOCATION_ACTOR = "plan-allocations"


class RolloverSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What of a block rolls over at its expiry: min(max, max(min, remaining))."""

    min_credits: int = 0
    max_credits: int


class RuleSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One allocation rule of a new plan."""

    ledger: int
    amount: int
    period_unit: PeriodUnit
    period_count: int = 1
    category: Category
    consideration_minor: int = 0
    currency: str | None = None
    priority: int = 0
    expiry_periods: int = 1
    rollover: RolloverSpec | None = None


class PlanView(msgspec.Struct, frozen=True, kw_only=True):
    plan: Plan
    rules: list[PlanRule]


class SubscriptionView(msgspec.Struct, frozen=True, kw_only=True):
    subscription: Subscription
    allocations: list[Allocation] = []


class AllocationReport(msgspec.Struct, kw_only=True):
    planned: int = 0  # rows written pending
    finished: int = 0  # rows brought to done
    issued: int = 0  # of them, rows that granted a block
    failed: list[str] = []  # rows that could not be finished this time (logged)


def grant_key(allocation_id: int) -> str:
    return f"plan-allocation/{id_text(allocation_id)}"


def void_key(allocation_id: int) -> str:
    return f"plan-void/{id_text(allocation_id)}"


def _unit(rule: PlanRule) -> PeriodUnit:
    return PeriodUnit(rule.period_unit)


def allocation_row(
    sub: Subscription, rule: PlanRule, index: int, *, seq: int = 0, effective_at: dt.datetime
) -> Allocation:
    """The row of `rule`'s period `index` for `sub` (its own allocation when seq is 0), before
    its amounts are set."""
    unit = _unit(rule)
    start, end = period_bounds(sub.anchor_at, unit, rule.period_count, index)
    expires = period_start(sub.anchor_at, unit, rule.period_count, index + rule.expiry_periods)
    allocation_id = derive_id("plan-allocation", sub.id, rule.id, index, seq)
    return Allocation(
        id=allocation_id,
        subscription_id=sub.id,
        rule_id=rule.id,
        credit_type_id=rule.credit_type_id,
        period_index=index,
        seq=seq,
        kind="period" if seq == 0 else "change",
        period_start=start,
        period_end=end,
        effective_at=effective_at,
        expires_at=expires,
        amount=rule.amount if seq == 0 else 0,
        grant_id=operation_id(SYSTEM_TENANT, grant_key(allocation_id)) if seq == 0 else None,
        consideration_minor=rule.consideration_minor if seq == 0 else 0,
        voided=0,
        void_grant_id=None,
        state="pending",
    )


def due_rows(
    sub: Subscription,
    rules: list[PlanRule],
    last: dict[int, int],
    at: dt.datetime,
    room: int,
) -> tuple[list[Allocation], dt.datetime | None]:
    """The regular allocations of `sub` due at `at` (at most `room`), and the start of the
    earliest period left to allocate after them. Pure."""
    rows: list[Allocation] = []
    next_due: dt.datetime | None = None
    for rule in rules:
        unit, count = _unit(rule), rule.period_count
        index = max(
            first_index_from(sub.anchor_at, unit, count, sub.allocate_from),
            last.get(rule.id, -1) + 1,
        )
        while len(rows) < room:
            row = _row_or_none(sub, rule, index)
            if row is None or row.period_start > at:
                break
            rows.append(row)
            index += 1
        following = _row_or_none(sub, rule, index)
        if following is not None:
            start = following.period_start
            next_due = start if next_due is None else min(next_due, start)
    return rows, next_due


def _row_or_none(sub: Subscription, rule: PlanRule, index: int) -> Allocation | None:
    """Period `index`'s row; None past the times the ledger can hold (a plan of many years
    near the year 2554, the end of its u64 of nanoseconds): that rule has no more periods."""
    if index >= PERIOD_INDEX_MAX:
        return None
    try:
        row = allocation_row(sub, rule, index, effective_at=sub.anchor_at)
    except OverflowError:
        return None
    if ns_of_datetime(row.expires_at) > BUSINESS_TIME_NS_MAX:
        return None
    return msgspec.structs.replace(row, effective_at=row.period_start)


def _validate_rule(rule: RuleSpec, i: int) -> None:
    def bad(message: str, name: str) -> InvalidRequest:
        return InvalidRequest(message, field=f"allocations[{i}].{name}")

    if not 1 <= rule.amount <= AMOUNT_MAX_REQUEST:
        raise bad(f"amount must be in 1..{AMOUNT_MAX_REQUEST}", "amount")
    if not 1 <= rule.period_count <= PERIOD_COUNT_MAX:
        raise bad(f"period_count must be in 1..{PERIOD_COUNT_MAX}", "period_count")
    if not 1 <= rule.expiry_periods <= EXPIRY_PERIODS_MAX:
        raise bad(f"expiry_periods must be in 1..{EXPIRY_PERIODS_MAX}", "expiry_periods")
    if rule.category is Category.PAID and not rule.currency:
        raise bad("a paid allocation needs its currency", "currency")
    if rule.category is Category.PROMOTIONAL and rule.consideration_minor:
        raise bad("a promotional allocation has no consideration", "consideration_minor")
    if not 0 <= rule.consideration_minor <= MONEY_MINOR_MAX:
        raise bad(f"consideration_minor must be in 0..{MONEY_MINOR_MAX}", "consideration_minor")
    if rule.rollover is not None and not (
        0 <= rule.rollover.min_credits <= rule.rollover.max_credits <= AMOUNT_MAX_REQUEST
    ):
        raise bad("rollover needs 0 <= min_credits <= max_credits", "rollover")


class PlanService:
    """Plans, subscriptions and their allocations, over the control plane."""

    def __init__(self, control: ControlPlane) -> None:
        self.control = control
        self.pool = control.pool

    def _now(self) -> dt.datetime:
        return datetime_of_ns(self.control.service.clock_ns())

    # -- plans ----------------------------------------------------------------------------------

    async def create_plan(
        self,
        *,
        code: str,
        name: str,
        prorate: bool,
        rules: list[RuleSpec],
        actor: str,
        tenant: int,
        key: str,
    ) -> tuple[PlanView, bool]:
        """A plan with its allocation rules (one per credit type), once per key."""
        if not 1 <= len(rules) <= PLAN_RULES_MAX:
            raise InvalidRequest(f"a plan has 1..{PLAN_RULES_MAX} allocations", field="allocations")
        for i, rule in enumerate(rules):
            _validate_rule(rule, i)
            if rule.ledger not in self.control.catalog.credit_types:
                raise NotFound(
                    f"credit type {rule.ledger} not found", field=f"allocations[{i}].credit_type"
                )
        if len({r.ledger for r in rules}) != len(rules):
            raise InvalidRequest("one allocation per credit type", field="allocations")
        plan_id = derive_id("plan", tenant, key)

        async def first(conn: Connection) -> None:
            if await repo.get_plan_by_code(conn, code) is not None:
                raise Conflict(f"plan {code!r} exists", field="code")
            await repo.insert_plan(conn, id=plan_id, code=code, name=name, prorate=prorate)
            for rule in rules:
                await repo.insert_rule(conn, _rule_row(plan_id, rule))
            await audit.append(
                conn,
                actor=actor,
                action="plan.create",
                object_type="plan",
                object_id=plan_id,
                details={"code": code, "prorate": prorate, "allocations": str(len(rules))},
            )

        async def then() -> PlanView:
            return await self.get_plan(plan_id)

        return await self.control._once(
            tenant=tenant,
            key=key,
            operation="plan.create",
            request={"code": code, "name": name, "prorate": prorate, "rules": rules},
            first=first,
            then=then,
            result_type=PlanView,
        )

    async def get_plan(self, plan_id: int) -> PlanView:
        async with self.pool.connection() as conn:
            plan = await repo.get_plan(conn, plan_id)
            if plan is None:
                raise NotFound(f"plan {id_text(plan_id)} not found", field="plan_id")
            rules = await repo.rules_of(conn, plan_id)
        return PlanView(plan=plan, rules=rules)

    async def list_plans(self, *, after: Keyset | None, limit: int) -> tuple[list[PlanView], bool]:
        async with self.pool.connection() as conn:
            return await list_plan_views(conn, after=after, limit=limit)

    # -- subscriptions --------------------------------------------------------------------------

    async def subscribe(
        self,
        *,
        resource_id: int,
        plan_id: int,
        start: dt.datetime | None,
        actor: str,
        tenant: int,
        key: str,
    ) -> tuple[SubscriptionView, bool]:
        """Puts a resource on a plan from `start` (default now), once per key. The resource
        gets a wallet (default policy: hard limit) for every credit type of the plan it has
        none for; the periods already due are allocated before this answers."""
        if resource_id not in self.control.catalog.resources:
            raise NotFound(f"resource {id_text(resource_id)} not found", field="resource_id")
        view = await self.get_plan(plan_id)
        business_time_ns(start, "start")
        anchor = start or self._now()
        sub_id = derive_id("subscription", tenant, key)
        await self._ensure_wallets(resource_id, view.rules, sub_id, actor)

        async def first(conn: Connection) -> None:
            inserted = await repo.insert_subscription(
                conn,
                id=sub_id,
                resource_id=resource_id,
                plan_id=plan_id,
                anchor_at=anchor,
                next_due_at=anchor,
            )
            if not inserted:
                await _refuse_second(conn, resource_id, plan_id)
            await audit.append(
                conn,
                actor=actor,
                action="subscription.create",
                object_type="subscription",
                object_id=sub_id,
                details={
                    "resource_id": id_text(resource_id),
                    "plan_id": id_text(plan_id),
                    "start": anchor.isoformat(),
                },
            )

        async def then() -> SubscriptionView:
            await self._catch_up(sub_id, strict=False)
            return await self.get_subscription(sub_id)

        return await self.control._once(
            tenant=tenant,
            key=key,
            operation="subscription.create",
            request={"resource_id": id_text(resource_id), "plan_id": id_text(plan_id),
                     "start": None if start is None else start.isoformat()},
            first=first,
            then=then,
            result_type=SubscriptionView,
        )  # fmt: skip

    async def _ensure_wallets(
        self, resource_id: int, rules: list[PlanRule], sub_id: int, actor: str
    ) -> None:
        catalog = self.control.catalog
        tenant = catalog.resources[resource_id].tenant
        for rule in rules:
            if (resource_id, rule.credit_type_id) in catalog.wallet_of:
                continue
            try:
                await self.control.create_wallet(
                    resource_id=resource_id,
                    ledger=rule.credit_type_id,
                    actor=actor,
                    tenant=tenant,
                    key=f"plan-wallet/{id_text(sub_id)}/{rule.credit_type_id}",
                )
            except (Conflict, psycopg.errors.UniqueViolation):
                # Created meanwhile by another request (its key is another subscription's):
                # it is there, which is all we need.
                pass

    async def get_subscription(self, sub_id: int) -> SubscriptionView:
        async with self.pool.connection() as conn:
            sub = await repo.get_subscription(conn, sub_id)
            if sub is None:
                raise NotFound(f"subscription {id_text(sub_id)} not found")
            rows = await repo.allocations_of(conn, sub_id, limit=SUBSCRIPTION_ALLOCATIONS_SHOWN_MAX)
        return SubscriptionView(subscription=sub, allocations=rows)

    async def _existing(self, sub_id: int) -> Subscription:
        """The subscription (404 without). Its state is checked under its lock, after the
        idempotency key: a replay answers what was done, even once cancelled."""
        return (await self.get_subscription(sub_id)).subscription

    async def change_plan(
        self, sub_id: int, *, plan_id: int, actor: str, tenant: int, key: str
    ) -> tuple[SubscriptionView, bool]:
        """Moves the subscription to another plan now, once per key: the new plan's periods
        start after the change; the current period's difference is granted or voided, prorated
        or whole per the NEW plan's `prorate` (module docstring)."""
        sub = await self._existing(sub_id)
        new = await self.get_plan(plan_id)
        if sub.state != "cancelled":
            await self._ensure_wallets(sub.resource_id, new.rules, sub_id, actor)
            await self._catch_up(sub_id, strict=True)

        async def first(conn: Connection) -> None:
            locked = await _lock_live(conn, sub_id)
            if locked.plan_id == plan_id:
                raise Conflict("the subscription is on this plan already", field="plan_id")
            at = self._now()
            seq = locked.changes + 1
            old_rules = await repo.rules_of(conn, locked.plan_id)
            rows: list[Allocation] = []
            if locked.state == "active" and at >= locked.anchor_at:
                rows = await self._adjustments(conn, locked, old_rules, new, at, seq)
            for row in rows:
                await repo.insert_allocation(conn, row)
            moved = await repo.move_to_plan(
                conn,
                sub_id,
                plan_id=plan_id,
                allocate_from=max(locked.allocate_from, at),
                changes=seq,
            )
            if moved is None:
                await _refuse_second(conn, locked.resource_id, plan_id)
            await self._reschedule(conn, moved, new.rules)
            await audit.append(
                conn,
                actor=actor,
                action="subscription.change_plan",
                object_type="subscription",
                object_id=sub_id,
                details={
                    "from_plan_id": id_text(locked.plan_id),
                    "to_plan_id": id_text(plan_id),
                    "prorated": new.plan.prorate,
                    "at": at.isoformat(),
                    "granted": {id_text(r.rule_id): str(r.amount) for r in rows if r.amount},
                    "voided": {id_text(r.rule_id): str(r.voided) for r in rows if r.voided},
                },
            )

        async def then() -> SubscriptionView:
            await self._finish_pending(PLAN_CATCH_UP_ALLOCATIONS_MAX, only=sub_id)
            return await self.get_subscription(sub_id)

        return await self.control._once(
            tenant=tenant,
            key=key,
            operation="subscription.change_plan",
            request={"subscription_id": id_text(sub_id), "plan_id": id_text(plan_id)},
            first=first,
            then=then,
            result_type=SubscriptionView,
        )

    async def _adjustments(
        self,
        conn: Connection,
        sub: Subscription,
        old_rules: list[PlanRule],
        new: PlanView,
        at: dt.datetime,
        seq: int,
    ) -> list[Allocation]:
        """The rows of a change at `at`: per credit type, the difference of the current
        period granted or voided. Rules of one credit type with the same period net out into
        one row; otherwise the old rule's part is voided and the new one's granted."""
        old = {r.credit_type_id: r for r in old_rules}
        fresh = {r.credit_type_id: r for r in new.rules}
        rows: list[Allocation] = []
        for ledger in sorted(old.keys() | fresh.keys()):
            o, n = old.get(ledger), fresh.get(ledger)
            blocks = await repo.blocks_at(conn, sub.id, ledger, at)
            had = o is not None and await _allocated_at(conn, sub, o, at)
            entitled = n is not None and _entitled(sub, n, at)
            made: list[Allocation | None] = []
            if o is not None and n is not None and _same_period(o, n):
                if not (had or entitled):
                    continue
                delta = n.amount - (o.amount if had else 0)
                made.append(await self._change_row(sub, n, at, seq, delta, new, blocks))
            else:
                if o is not None and had:
                    made.append(await self._change_row(sub, o, at, seq, -o.amount, new, blocks))
                if n is not None and entitled:
                    made.append(await self._change_row(sub, n, at, seq, n.amount, new, blocks))
            rows += [row for row in made if row is not None]
        return rows

    async def _change_row(
        self,
        sub: Subscription,
        rule: PlanRule,
        at: dt.datetime,
        seq: int,
        delta: int,
        new: PlanView,
        blocks: list[Allocation],
    ) -> Allocation | None:
        """One adjustment: `delta` credits of `rule`'s current period (prorated by what is left
        of it when the new plan says so), granted when positive, voided when negative. None
        when the rule's block could not be issued (it would expire past the times the ledger
        holds): as for its regular allocations (`_row_or_none`), nothing."""
        found = remaining_fraction_ns(sub.anchor_at, _unit(rule), rule.period_count, at)
        assert found is not None  # at >= the anchor
        index, left_ns, length_ns = found
        if new.plan.prorate:
            delta = prorate(delta, left_ns, length_ns)
        try:
            row = allocation_row(sub, rule, index, seq=seq, effective_at=at)
        except OverflowError:
            return None
        if delta > 0 and ns_of_datetime(row.expires_at) > BUSINESS_TIME_NS_MAX:
            return None
        if delta > 0:
            return msgspec.structs.replace(
                row,
                amount=delta,
                grant_id=operation_id(SYSTEM_TENANT, grant_key(row.id)),
                consideration_minor=rule.consideration_minor * delta // rule.amount,
            )
        block = next((b for b in blocks if b.grant_id is not None), None)
        if delta == 0 or block is None or block.grant_id is None:
            return row
        found_left = await self.control.grant_service.left(block.grant_id)
        voided = min(-delta, 0 if found_left is None else found_left[0])
        if voided == 0:
            return row
        return msgspec.structs.replace(row, voided=voided, void_grant_id=block.grant_id)

    async def _reschedule(self, conn: Connection, sub: Subscription, rules: list[PlanRule]) -> None:
        last = await repo.last_indexes(conn, sub.id)
        _, next_due = due_rows(sub, rules, last, sub.allocate_from, 0)
        await repo.update_subscription(conn, sub.id, next_due_at=next_due)

    async def pause(
        self, sub_id: int, *, actor: str, tenant: int, key: str
    ) -> tuple[SubscriptionView, bool]:
        """No allocation for periods that start while paused; what was given stays."""
        await self._existing(sub_id)
        await self._catch_up(sub_id, strict=True)

        async def first(conn: Connection) -> None:
            locked = await _lock_live(conn, sub_id)
            if locked.state == "paused":
                raise Conflict("the subscription is paused already")
            await repo.update_subscription(conn, sub_id, state="paused", paused_at=self._now())
            await audit.append(
                conn,
                actor=actor,
                action="subscription.pause",
                object_type="subscription",
                object_id=sub_id,
            )

        return await self._change(sub_id, tenant, key, "subscription.pause", first)

    async def resume(
        self, sub_id: int, *, actor: str, tenant: int, key: str
    ) -> tuple[SubscriptionView, bool]:
        """Allocations go on from the first period that starts from now."""
        await self._existing(sub_id)

        async def first(conn: Connection) -> None:
            locked = await _lock_live(conn, sub_id)
            if locked.state != "paused":
                raise Conflict("the subscription is not paused")
            now = self._now()
            resumed = await repo.update_subscription(
                conn,
                sub_id,
                state="active",
                paused_at=None,
                live_from=max(locked.live_from, now),
                allocate_from=max(locked.allocate_from, now),
            )
            await self._reschedule(conn, resumed, await repo.rules_of(conn, resumed.plan_id))
            await audit.append(
                conn,
                actor=actor,
                action="subscription.resume",
                object_type="subscription",
                object_id=sub_id,
            )

        return await self._change(sub_id, tenant, key, "subscription.resume", first)

    async def cancel(
        self, sub_id: int, *, actor: str, tenant: int, key: str
    ) -> tuple[SubscriptionView, bool]:
        """No further allocation; the credits already allocated stay until they expire."""
        await self._existing(sub_id)
        await self._catch_up(sub_id, strict=True)

        async def first(conn: Connection) -> None:
            await _lock_live(conn, sub_id)
            await repo.update_subscription(
                conn,
                sub_id,
                state="cancelled",
                cancelled_at=self._now(),
                paused_at=None,
                next_due_at=None,
            )
            await audit.append(
                conn,
                actor=actor,
                action="subscription.cancel",
                object_type="subscription",
                object_id=sub_id,
            )

        return await self._change(sub_id, tenant, key, "subscription.cancel", first)

    async def _change(
        self, sub_id: int, tenant: int, key: str, operation: str, first: Any
    ) -> tuple[SubscriptionView, bool]:
        async def then() -> SubscriptionView:
            return await self.get_subscription(sub_id)

        return await self.control._once(
            tenant=tenant,
            key=key,
            operation=operation,
            request={"subscription_id": id_text(sub_id)},
            first=first,
            then=then,
            result_type=SubscriptionView,
        )

    # -- allocation -----------------------------------------------------------------------------

    async def allocate_due(
        self, at_ns: int, limit: int = PLAN_ALLOCATIONS_PER_TICK
    ) -> AllocationReport:
        """Issues the allocations due at `at_ns`, at most `limit` rows in this call: first the
        pending ones (a crash's leftovers), then the periods that have started."""
        assert limit >= 1
        at = datetime_of_ns(at_ns)
        report = AllocationReport()
        await self._finish_pending(limit, report=report)
        room = limit - report.finished - len(report.failed)
        if room > 0:
            report.planned = await self._plan(at, room)
            await self._finish_pending(report.planned, report=report)
        return report

    async def allocate_all_due(self, at_ns: int, rounds_max: int = 100) -> AllocationReport:
        """allocate_due until nothing is due (a test clock's advance), in bounded rounds."""
        total = AllocationReport()
        for _ in range(rounds_max):
            report = await self.allocate_due(at_ns)
            total.planned += report.planned
            total.finished += report.finished
            total.issued += report.issued
            total.failed += report.failed
            if report.planned == 0 and report.finished == 0:
                break
        return total

    async def _catch_up(self, sub_id: int, *, strict: bool) -> None:
        """Issues the subscription's allocations due now. `strict`: refused (409) when it is
        further behind than one request may catch up on (the job catches up meanwhile)."""
        at = self._now()
        planned = await self._plan(at, PLAN_CATCH_UP_ALLOCATIONS_MAX, only=sub_id)
        report = AllocationReport()
        await self._finish_pending(planned + PLAN_RULES_MAX, report=report, only=sub_id)
        if not strict:
            return
        async with self.pool.connection() as conn:
            sub = await repo.get_subscription(conn, sub_id)
        assert sub is not None
        if report.failed or _due(sub, at):
            raise Conflict(
                "the subscription's allocations are behind: retry once the job has caught up"
            )

    async def _plan(self, at: dt.datetime, room: int, *, only: int | None = None) -> int:
        """Writes pending rows for the periods due at `at` (at most `room`); the row count."""
        planned = 0
        async with self.pool.connection() as conn, conn.transaction():
            if only is None:
                subs = await repo.lock_due_subscriptions(conn, at, min(room, 1000))
            else:
                one = await repo.lock_subscription(conn, only)
                subs = [one] if one is not None and _due(one, at) else []
            for sub in subs:
                if planned >= room:
                    break
                rules = await repo.rules_of(conn, sub.plan_id)
                last = await repo.last_indexes(conn, sub.id)
                rows, next_due = due_rows(sub, rules, last, at, room - planned)
                for row in rows:
                    planned += await repo.insert_allocation(conn, row)
                await repo.update_subscription(conn, sub.id, next_due_at=next_due)
        return planned

    async def _finish_pending(
        self, limit: int, *, report: AllocationReport | None = None, only: int | None = None
    ) -> AllocationReport:
        """Finishes pending rows (at most `limit`), each under its row lock: the ledger side,
        then 'done' with its event, in the lock's transaction."""
        report = report if report is not None else AllocationReport()
        skip: list[int] = []
        for _ in range(limit):
            async with self.pool.connection() as conn, conn.transaction():
                row = await repo.lock_pending(conn, skip=skip, only_subscription=only)
                if row is None:
                    break
                try:
                    await self._apply(row)
                except (LedgerUnavailable, LedgerUnavailableError):
                    raise
                except Exception as error:  # one row never stops the others
                    text = f"{type(error).__name__}: {error}"
                    _logger.error("allocation %s not finished: %s", id_text(row.id), text)
                    skip.append(row.id)
                    report.failed.append(f"{id_text(row.id)}: {text}")
                    continue
                done = await repo.mark_done(conn, row.id)
                if done is not None and done.amount > 0:
                    await self._emit(conn, done)
            report.finished += 1
            report.issued += row.amount > 0
        return report

    async def _apply(self, row: Allocation) -> None:
        """The ledger side of a row: its block issued, its void applied. Idempotent."""
        async with self.pool.connection() as conn:
            sub = await repo.get_subscription(conn, row.subscription_id)
            rule = await repo.get_rule(conn, row.rule_id)
        assert sub is not None and rule is not None
        if row.amount > 0:
            wallet = self.control.catalog.wallet_for(sub.resource_id, row.credit_type_id)
            request = GrantRequest(
                wallet_id=wallet.id,
                amount=row.amount,
                category=rule.category,
                consideration_minor=row.consideration_minor,
                currency=rule.currency,
                priority=rule.priority,
                effective_at=row.effective_at,
                expires_at=row.expires_at,
                source=Source.PLAN_ALLOCATION,
                reason=f"plan allocation, period {row.period_index}"
                + ("" if row.seq == 0 else f", change {row.seq}"),
                external_ref=id_text(row.id),
                rollover=_rollover(sub, rule, row),
            )
            issued, _ = await self.control.issue_grant(
                request, tenant=SYSTEM_TENANT, key=grant_key(row.id), actor=ALLOCATION_ACTOR
            )
            assert issued.grant_id == row.grant_id
        if row.voided > 0:
            assert row.void_grant_id is not None
            try:
                await self.control.void_grant(
                    row.void_grant_id,
                    tenant=SYSTEM_TENANT,
                    key=void_key(row.id),
                    actor=ALLOCATION_ACTOR,
                    reason=f"change of plan {row.seq}: the old plan's part of the period",
                    amount=row.voided,
                )
            except (IdempotencyConflict, LedgerUnavailableError):
                raise
            except CreditError as error:
                # The block has less left than when the change was made (spent meanwhile):
                # nothing more to take back from it.
                _logger.warning("allocation %s: void refused: %s", id_text(row.id), error)

    async def _emit(self, conn: Connection, row: Allocation) -> None:
        sub = await repo.get_subscription(conn, row.subscription_id)
        assert sub is not None and row.grant_id is not None
        catalog = self.control.catalog
        resource = catalog.resources[sub.resource_id]
        wallet = catalog.wallet_for(sub.resource_id, row.credit_type_id)
        await events.emit(
            conn,
            type_="allocation.issued",
            key=(id_text(row.id),),
            occurred_at=row.effective_at,
            customer_id=resource.customer_id,
            wallet_id=wallet.id,
            data={
                "allocation_id": id_text(row.id),
                "subscription_id": id_text(sub.id),
                "plan_id": id_text(sub.plan_id),
                "resource_id": id_text(sub.resource_id),
                "wallet_id": id_text(wallet.id),
                "grant_id": id_text(row.grant_id),
                "credit_type": catalog.credit_types[row.credit_type_id].code,
                "kind": row.kind,
                "amount": str(row.amount),
                "period_index": row.period_index,
                "period_start": rfc3339_of(row.period_start),
                "period_end": rfc3339_of(row.period_end),
                "expires_at": rfc3339_of(row.expires_at),
            },
        )


async def list_plan_views(
    conn: Connection, *, after: Keyset | None, limit: int
) -> tuple[list[PlanView], bool]:
    """A page of plans with their rules, in (created_at, id) order, and whether more follow."""
    rows, more = await repo.list_plans(conn, after=after, limit=limit)
    return [PlanView(plan=p, rules=await repo.rules_of(conn, p.id)) for p in rows], more


async def list_subscription_views(
    conn: Connection,
    *,
    resource_id: int | None,
    plan_id: int | None,
    state: str | None,
    customer_id: int | None,
    after: Keyset | None,
    limit: int,
) -> tuple[list[SubscriptionView], bool]:
    """A page of subscriptions (without their allocations) with every filter given, in
    (created_at, id) order, and whether more follow."""
    rows, more = await repo.list_subscriptions(
        conn,
        resource_id=resource_id,
        plan_id=plan_id,
        state=state,
        customer_id=customer_id,
        after=after,
        limit=limit,
    )
    return [SubscriptionView(subscription=s) for s in rows], more


def _rule_row(plan_id: int, rule: RuleSpec) -> PlanRule:
    return PlanRule(
        id=derive_id("plan-rule", plan_id, rule.ledger),
        plan_id=plan_id,
        credit_type_id=rule.ledger,
        amount=rule.amount,
        period_unit=rule.period_unit.value,
        period_count=rule.period_count,
        category=rule.category,
        consideration_minor=rule.consideration_minor,
        currency=rule.currency,
        priority=rule.priority,
        expiry_periods=rule.expiry_periods,
        rollover_min=None if rule.rollover is None else rule.rollover.min_credits,
        rollover_max=None if rule.rollover is None else rule.rollover.max_credits,
    )


async def _refuse_second(conn: Connection, resource_id: int, plan_id: int) -> NoReturn:
    """409 already_subscribed, naming the resource's live subscription of the plan (the unique
    index refused a second one: it is there, committed by whoever won)."""
    live = await repo.live_subscription(conn, resource_id, plan_id)
    raise AlreadySubscribed(
        f"resource {id_text(resource_id)} has a live subscription of plan {id_text(plan_id)}",
        field="plan_id",
        subscription_id=None if live is None else live.id,
    )


async def _lock_live(conn: Connection, sub_id: int) -> Subscription:
    locked = await repo.lock_subscription(conn, sub_id)
    if locked is None:
        raise NotFound(f"subscription {id_text(sub_id)} not found")
    if locked.state == "cancelled":
        raise SubscriptionCancelled(f"subscription {id_text(sub_id)} is cancelled")
    return locked


def _rollover(sub: Subscription, rule: PlanRule, row: Allocation) -> RolloverPolicy | None:
    """The rule's rollover for the block of `row`: what rolls over lasts one more period (it
    expires at the end of the period after the block's own expiry). None without a policy, and
    for a change of plan's block: a period rolls over once, from its own block, with the rule's
    floor and cap once (a second block with its own would give the floor twice)."""
    if not rule.rollover_max or row.seq != 0:
        return None
    index = row.period_index + rule.expiry_periods + 1
    try:
        expires_at = period_start(sub.anchor_at, _unit(rule), rule.period_count, index)
    except OverflowError:
        return None
    if ns_of_datetime(expires_at) > BUSINESS_TIME_NS_MAX:
        return None
    return RolloverPolicy(
        max_credits=rule.rollover_max, min_credits=rule.rollover_min or 0, expires_at=expires_at
    )


def _due(sub: Subscription, at: dt.datetime) -> bool:
    return sub.state == "active" and sub.next_due_at is not None and sub.next_due_at <= at


def _same_period(a: PlanRule, b: PlanRule) -> bool:
    return (a.period_unit, a.period_count) == (b.period_unit, b.period_count)


def _entitled(sub: Subscription, rule: PlanRule, at: dt.datetime) -> bool:
    """Whether `rule`'s period holding `at` started while the subscription was live (so that
    a plan with it then would have allocated it)."""
    found = remaining_fraction_ns(sub.anchor_at, _unit(rule), rule.period_count, at)
    if found is None:
        return False
    start = period_start(sub.anchor_at, _unit(rule), rule.period_count, found[0])
    return start >= sub.live_from


async def _allocated_at(
    conn: Connection, sub: Subscription, rule: PlanRule, at: dt.datetime
) -> bool:
    """Whether `rule` has a row (any seq) for its period holding `at`."""
    found = remaining_fraction_ns(sub.anchor_at, _unit(rule), rule.period_count, at)
    if found is None:
        return False
    last = await repo.last_indexes(conn, sub.id)
    return last.get(rule.id, -1) >= found[0]
