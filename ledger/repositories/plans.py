"""Plans, their allocation rules, subscriptions, and the allocations issued (migration 0012).

Invariants (enforced by the schema):
- Plans and rules are never changed once written; one rule per (plan, credit type).
- One allocation row per (subscription, rule, period index, seq): the period's own allocation
  has seq 0, the adjustments of a change of plan seq = that change's number. A row is written
  'pending' with its derived grant id before anything reaches the ledger, and turns 'done'
  once it has (wallets/plans.py).
- At most one live (active or paused) subscription of a plan per resource (the partial unique
  index subscriptions_one_live_per_plan_idx): `insert_subscription` and `move_to_plan` answer
  False / None instead of a second one, whoever wins a race.
- The job reads active subscriptions by `next_due_at`, locked with SKIP LOCKED, and pending
  allocations the same way: two schedulers share the work instead of doing it twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec
import psycopg

from ledger.db import Connection
from ledger.repositories._rows import (
    ROWS_PER_PAGE_DEFAULT,
    Keyset,
    equal,
    fetch_page,
    from_amount,
    from_uuid,
    from_uuid_or_none,
    page_limit,
    resource_of_customer,
    to_amount,
    to_uuid,
    to_uuid_or_none,
)
from ledger.repositories.grants import GrantCategory

_PLAN_COLUMNS: Final = "id, code, name, prorate, created_at"
_RULE_COLUMNS: Final = (
    "id, plan_id, credit_type_id, amount, period_unit, period_count, category,"
    " consideration_minor, currency, priority, expiry_periods, rollover_min, rollover_max"
)
_SUBSCRIPTION_COLUMNS: Final = (
    "id, resource_id, plan_id, anchor_at, allocate_from, live_from, state, changes,"
    " next_due_at, created_at, updated_at, paused_at, cancelled_at"
)
_ALLOCATION_COLUMNS: Final = (
    "id, subscription_id, rule_id, credit_type_id, period_index, seq, kind, period_start,"
    " period_end, effective_at, expires_at, amount, grant_id, consideration_minor, voided,"
    " void_grant_id, state, created_at, done_at"
)


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    code: str
    name: str
    prorate: bool
    created_at: datetime


class PlanRule(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    plan_id: int
    credit_type_id: int
    amount: int
    period_unit: str  # day | week | month | year
    period_count: int
    category: GrantCategory
    consideration_minor: int
    currency: str | None
    priority: int
    expiry_periods: int
    rollover_min: int | None
    rollover_max: int | None  # None: nothing rolls over


class Subscription(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    resource_id: int
    plan_id: int
    anchor_at: datetime
    allocate_from: datetime
    live_from: datetime
    state: str  # active | paused | cancelled
    changes: int
    next_due_at: datetime | None
    created_at: datetime
    updated_at: datetime
    paused_at: datetime | None
    cancelled_at: datetime | None


class Allocation(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    subscription_id: int
    rule_id: int
    credit_type_id: int
    period_index: int
    seq: int
    kind: str  # period | change
    period_start: datetime
    period_end: datetime
    effective_at: datetime
    expires_at: datetime
    amount: int
    grant_id: int | None
    consideration_minor: int
    voided: int
    void_grant_id: int | None
    state: str  # pending | done
    created_at: datetime | None = None
    done_at: datetime | None = None


def _plan(row: tuple[Any, ...]) -> Plan:
    id_, code, name, prorate, created_at = row
    return Plan(id=from_uuid(id_), code=code, name=name, prorate=prorate, created_at=created_at)


def _rule(row: tuple[Any, ...]) -> PlanRule:
    (id_, plan_id, ct, amount, unit, count, category, consideration, currency, priority,
     expiry, rollover_min, rollover_max) = row  # fmt: skip
    return PlanRule(
        id=from_uuid(id_),
        plan_id=from_uuid(plan_id),
        credit_type_id=int(ct),
        amount=from_amount(amount),
        period_unit=unit,
        period_count=int(count),
        category=GrantCategory(category),
        consideration_minor=int(consideration),
        currency=currency,
        priority=int(priority),
        expiry_periods=int(expiry),
        rollover_min=None if rollover_min is None else from_amount(rollover_min),
        rollover_max=None if rollover_max is None else from_amount(rollover_max),
    )


def _subscription(row: tuple[Any, ...]) -> Subscription:
    (id_, resource_id, plan_id, anchor_at, allocate_from, live_from, state, changes,
     next_due_at, created_at, updated_at, paused_at, cancelled_at) = row  # fmt: skip
    return Subscription(
        id=from_uuid(id_),
        resource_id=from_uuid(resource_id),
        plan_id=from_uuid(plan_id),
        anchor_at=anchor_at,
        allocate_from=allocate_from,
        live_from=live_from,
        state=state,
        changes=int(changes),
        next_due_at=next_due_at,
        created_at=created_at,
        updated_at=updated_at,
        paused_at=paused_at,
        cancelled_at=cancelled_at,
    )


def _allocation(row: tuple[Any, ...]) -> Allocation:
    (id_, sub, rule, ct, index, seq, kind, start, end, effective_at, expires_at, amount,
     grant_id, consideration, voided, void_grant_id, state, created_at, done_at) = row  # fmt: skip
    return Allocation(
        id=from_uuid(id_),
        subscription_id=from_uuid(sub),
        rule_id=from_uuid(rule),
        credit_type_id=int(ct),
        period_index=int(index),
        seq=int(seq),
        kind=kind,
        period_start=start,
        period_end=end,
        effective_at=effective_at,
        expires_at=expires_at,
        amount=from_amount(amount),
        grant_id=from_uuid_or_none(grant_id),
        consideration_minor=int(consideration),
        voided=from_amount(voided),
        void_grant_id=from_uuid_or_none(void_grant_id),
        state=state,
        created_at=created_at,
        done_at=done_at,
    )


# -- plans ----------------------------------------------------------------------------------------


async def insert_plan(conn: Connection, *, id: int, code: str, name: str, prorate: bool) -> None:
    await conn.execute(
        "INSERT INTO plans (id, code, name, prorate) VALUES (%s, %s, %s, %s)",
        (to_uuid(id), code, name, prorate),
    )


async def insert_rule(conn: Connection, rule: PlanRule) -> None:
    await conn.execute(
        f"INSERT INTO plan_rules ({_RULE_COLUMNS})"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            to_uuid(rule.id),
            to_uuid(rule.plan_id),
            rule.credit_type_id,
            to_amount(rule.amount),
            rule.period_unit,
            rule.period_count,
            rule.category.value,
            rule.consideration_minor,
            rule.currency,
            rule.priority,
            rule.expiry_periods,
            None if rule.rollover_min is None else to_amount(rule.rollover_min),
            None if rule.rollover_max is None else to_amount(rule.rollover_max),
        ),
    )


async def get_plan(conn: Connection, id: int) -> Plan | None:
    cursor = await conn.execute(f"SELECT {_PLAN_COLUMNS} FROM plans WHERE id = %s", (to_uuid(id),))
    row = await cursor.fetchone()
    return None if row is None else _plan(row)


async def get_plan_by_code(conn: Connection, code: str) -> Plan | None:
    cursor = await conn.execute(f"SELECT {_PLAN_COLUMNS} FROM plans WHERE code = %s", (code,))
    row = await cursor.fetchone()
    return None if row is None else _plan(row)


async def rules_of(conn: Connection, plan_id: int) -> list[PlanRule]:
    """A plan's rules, by credit type."""
    cursor = await conn.execute(
        f"SELECT {_RULE_COLUMNS} FROM plan_rules WHERE plan_id = %s ORDER BY credit_type_id",
        (to_uuid(plan_id),),
    )
    return [_rule(row) for row in await cursor.fetchall()]


async def get_rule(conn: Connection, id: int) -> PlanRule | None:
    cursor = await conn.execute(
        f"SELECT {_RULE_COLUMNS} FROM plan_rules WHERE id = %s", (to_uuid(id),)
    )
    row = await cursor.fetchone()
    return None if row is None else _rule(row)


async def list_plans(
    conn: Connection, *, after: Keyset | None = None, limit: int = ROWS_PER_PAGE_DEFAULT
) -> tuple[list[Plan], bool]:
    """A page of plans in (created_at, id) order, and whether more follow."""
    return await fetch_page(
        conn, f"SELECT {_PLAN_COLUMNS} FROM plans", [], _plan, after=after, limit=limit
    )


# -- subscriptions --------------------------------------------------------------------------------


async def insert_subscription(
    conn: Connection,
    *,
    id: int,
    resource_id: int,
    plan_id: int,
    anchor_at: datetime,
    next_due_at: datetime | None,
) -> bool:
    """Writes the subscription; False (nothing written) when the resource has a live one of
    that plan (see `live_subscription`)."""
    cursor = await conn.execute(
        "INSERT INTO subscriptions (id, resource_id, plan_id, anchor_at, allocate_from,"
        " live_from, next_due_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (resource_id, plan_id) WHERE state <> 'cancelled' DO NOTHING",
        (to_uuid(id), to_uuid(resource_id), to_uuid(plan_id), anchor_at, anchor_at, anchor_at,
         next_due_at),
    )  # fmt: skip
    return cursor.rowcount == 1


async def live_subscription(
    conn: Connection, resource_id: int, plan_id: int
) -> Subscription | None:
    """The resource's live (active or paused) subscription of the plan, if any."""
    cursor = await conn.execute(
        f"SELECT {_SUBSCRIPTION_COLUMNS} FROM subscriptions"
        " WHERE resource_id = %s AND plan_id = %s AND state <> 'cancelled'",
        (to_uuid(resource_id), to_uuid(plan_id)),
    )
    row = await cursor.fetchone()
    return None if row is None else _subscription(row)


async def move_to_plan(
    conn: Connection, id: int, *, plan_id: int, allocate_from: datetime, changes: int
) -> Subscription | None:
    """The subscription on `plan_id` (with its `allocate_from` and `changes`); None, nothing
    changed, when the resource has another live subscription of that plan. A savepoint keeps
    the caller's transaction usable after the unique index refuses it."""
    try:
        async with conn.transaction():
            return await update_subscription(
                conn, id, plan_id=plan_id, allocate_from=allocate_from, changes=changes
            )
    except psycopg.errors.UniqueViolation as error:
        if error.diag.constraint_name != "subscriptions_one_live_per_plan_idx":
            raise
        return None


async def list_subscriptions(
    conn: Connection,
    *,
    resource_id: int | None = None,
    plan_id: int | None = None,
    state: str | None = None,
    customer_id: int | None = None,
    after: Keyset | None = None,
    limit: int = ROWS_PER_PAGE_DEFAULT,
) -> tuple[list[Subscription], bool]:
    """A page of subscriptions with every filter given, in (created_at, id) order, and whether
    more follow. `customer_id`: those of that customer's resources."""
    conditions = equal(
        resource_id=to_uuid_or_none(resource_id), plan_id=to_uuid_or_none(plan_id), state=state
    )
    if customer_id is not None:
        conditions.append(resource_of_customer(customer_id))
    select = f"SELECT {_SUBSCRIPTION_COLUMNS} FROM subscriptions"
    return await fetch_page(conn, select, conditions, _subscription, after=after, limit=limit)


async def get_subscription(conn: Connection, id: int) -> Subscription | None:
    cursor = await conn.execute(
        f"SELECT {_SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = %s", (to_uuid(id),)
    )
    row = await cursor.fetchone()
    return None if row is None else _subscription(row)


async def lock_subscription(conn: Connection, id: int) -> Subscription | None:
    """The subscription, locked until the transaction ends: its changes and the planning of
    its allocations run one at a time."""
    cursor = await conn.execute(
        f"SELECT {_SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = %s FOR UPDATE",
        (to_uuid(id),),
    )
    row = await cursor.fetchone()
    return None if row is None else _subscription(row)


async def lock_due_subscriptions(
    conn: Connection, at: datetime, limit: int, *, only: int | None = None
) -> list[Subscription]:
    """Active subscriptions with an allocation due at `at`, earliest first, locked; those
    another transaction holds are skipped (it is planning them). `only`: that one alone."""
    only_clause = "" if only is None else " AND id = %s"
    params: tuple[Any, ...] = (at,) if only is None else (at, to_uuid(only))
    cursor = await conn.execute(
        f"SELECT {_SUBSCRIPTION_COLUMNS} FROM subscriptions"
        f" WHERE state = 'active' AND next_due_at <= %s{only_clause}"
        " ORDER BY next_due_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
        (*params, page_limit(limit)),
    )
    return [_subscription(row) for row in await cursor.fetchall()]


async def update_subscription(conn: Connection, id: int, **columns: Any) -> Subscription:
    """Sets the columns named (plan_id, allocate_from, live_from, state, changes, next_due_at,
    paused_at, cancelled_at), and updated_at."""
    allowed = {
        "plan_id", "allocate_from", "live_from", "state", "changes", "next_due_at",
        "paused_at", "cancelled_at",
    }  # fmt: skip
    assert columns and set(columns) <= allowed, columns
    values = [to_uuid(v) if name == "plan_id" else v for name, v in columns.items()]
    sets = ", ".join(f"{name} = %s" for name in columns)
    cursor = await conn.execute(
        f"UPDATE subscriptions SET {sets}, updated_at = now() WHERE id = %s"
        f" RETURNING {_SUBSCRIPTION_COLUMNS}",
        (*values, to_uuid(id)),
    )
    row = await cursor.fetchone()
    assert row is not None
    return _subscription(row)


# -- allocations ----------------------------------------------------------------------------------


async def insert_allocation(conn: Connection, a: Allocation) -> bool:
    """Writes the allocation 'pending'; False when (subscription, rule, period, seq) has one."""
    cursor = await conn.execute(
        "INSERT INTO plan_allocations (id, subscription_id, rule_id, credit_type_id,"
        " period_index, seq, kind, period_start, period_end, effective_at, expires_at, amount,"
        " grant_id, consideration_minor, voided, void_grant_id)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING",
        (
            to_uuid(a.id),
            to_uuid(a.subscription_id),
            to_uuid(a.rule_id),
            a.credit_type_id,
            a.period_index,
            a.seq,
            a.kind,
            a.period_start,
            a.period_end,
            a.effective_at,
            a.expires_at,
            to_amount(a.amount),
            to_uuid_or_none(a.grant_id),
            a.consideration_minor,
            to_amount(a.voided),
            to_uuid_or_none(a.void_grant_id),
        ),
    )
    return cursor.rowcount == 1


async def last_indexes(conn: Connection, subscription_id: int) -> dict[int, int]:
    """The highest period index each rule has a row for (any seq), by rule id."""
    cursor = await conn.execute(
        "SELECT rule_id, max(period_index) FROM plan_allocations WHERE subscription_id = %s"
        " GROUP BY rule_id",
        (to_uuid(subscription_id),),
    )
    return {from_uuid(rule): int(index) for rule, index in await cursor.fetchall()}


async def blocks_at(
    conn: Connection, subscription_id: int, credit_type_id: int, at: datetime
) -> list[Allocation]:
    """The allocations of a credit type that granted a block for a period holding `at`,
    newest first."""
    cursor = await conn.execute(
        f"SELECT {_ALLOCATION_COLUMNS} FROM plan_allocations WHERE subscription_id = %s"
        " AND credit_type_id = %s AND grant_id IS NOT NULL"
        " AND period_start <= %s AND %s < period_end ORDER BY created_at DESC, seq DESC",
        (to_uuid(subscription_id), credit_type_id, at, at),
    )
    return [_allocation(row) for row in await cursor.fetchall()]


async def lock_pending(
    conn: Connection, *, skip: list[int], only_subscription: int | None = None
) -> Allocation | None:
    """The oldest pending allocation not in `skip`, locked; one another transaction holds is
    skipped (it is finishing it). Of the rows written together (a change of plan's), those
    that grant come before those that void, so that the wallet never dips on the way."""
    clause = "" if only_subscription is None else " AND subscription_id = %s"
    extra: tuple[Any, ...] = () if only_subscription is None else (to_uuid(only_subscription),)
    cursor = await conn.execute(
        f"SELECT {_ALLOCATION_COLUMNS} FROM plan_allocations"
        f" WHERE state = 'pending' AND NOT (id = ANY(%s)){clause}"
        " ORDER BY created_at, amount = 0, id LIMIT 1 FOR UPDATE SKIP LOCKED",
        ([to_uuid(i) for i in skip], *extra),
    )
    row = await cursor.fetchone()
    return None if row is None else _allocation(row)


async def mark_done(conn: Connection, id: int) -> Allocation | None:
    """The pending allocation 'done'; None when it was not pending."""
    cursor = await conn.execute(
        "UPDATE plan_allocations SET state = 'done', done_at = now()"
        f" WHERE id = %s AND state = 'pending' RETURNING {_ALLOCATION_COLUMNS}",
        (to_uuid(id),),
    )
    row = await cursor.fetchone()
    return None if row is None else _allocation(row)


async def allocations_of(
    conn: Connection, subscription_id: int, *, limit: int = ROWS_PER_PAGE_DEFAULT
) -> list[Allocation]:
    """A subscription's latest allocations, oldest first among them."""
    cursor = await conn.execute(
        f"SELECT {_ALLOCATION_COLUMNS} FROM (SELECT * FROM plan_allocations"
        " WHERE subscription_id = %s ORDER BY period_start DESC, seq DESC, credit_type_id"
        " LIMIT %s) latest ORDER BY period_start, seq, credit_type_id",
        (to_uuid(subscription_id), page_limit(limit)),
    )
    return [_allocation(row) for row in await cursor.fetchall()]
