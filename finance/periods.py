"""Accounting periods: calendar months in UTC, open -> closed -> locked.

Invariants:
- A month without a row in finance_periods is open. Closing inserts its row, with the checks it
  passed and what it keeps (each block's obligation, the rollforward), in one transaction that
  holds the poster's lock: nothing is posted while a month closes, and after it nothing is ever
  booked into it (the poster books late events in the first open month, as prior-period
  adjustments).
- Months close in order: a month closes only when it has ended (by the service's clock), the
  month before it is closed or nothing was booked before it, and every check passes:
  `period_ended`, `previous_period_closed`, `projection_complete` (the projection is known
  complete past the month's end), `posted` (the poster has every projected entry),
  `expiry_swept` (no block that expired before the month's end still has available credits),
  `journals_balanced`, `rollforward_zero`, `reconciliation_clean` (the engine against the
  projection, and the projection against the journals). A refusal names the check.
- Locking is closed -> locked only (a trigger refuses any other change and any delete).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from finance import balances
from finance.posting import Poster
from grants.errors import Conflict, InvalidRequest
from ledger.clock import datetime_of_ns, ns_of_datetime
from ledger.db import Connection, Pool
from ledger.limits import FINANCE_POST_BATCHES_PER_TICK
from ledger.repositories import finance as repo
from ledger.repositories import projection as projection_repo

# Runs the reconciliation of the engine against the projection through its watermark; True
# when clean. The service passes its ProjectionCheck; None: the last recorded run is used.
ProjectionChecker = Callable[[], Awaitable[bool]]


class PeriodCloseRefused(Conflict):
    """A check failed: the month stays open (409 `period_close_refused`, naming the check)."""

    code = "period_close_refused"

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"the period cannot close: {check}: {detail}", check=check)
        self.check = check


class PeriodNotClosed(Conflict):
    code = "period_not_closed"


class PeriodView(msgspec.Struct, frozen=True):
    period: str  # YYYY-MM
    state: str  # open | closed | locked
    closed_at: dt.datetime | None = None
    closed_by: str | None = None
    locked_at: dt.datetime | None = None
    locked_by: str | None = None
    checks: dict[str, Any] | None = None


def parse_period(text: str) -> dt.date:
    """'YYYY-MM' -> the month's first day; InvalidRequest otherwise."""
    try:
        start = dt.datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        raise InvalidRequest(
            f"a period is a month written YYYY-MM, not {text!r}", field="period"
        ) from None
    if not 1970 <= start.year <= 2554:
        raise InvalidRequest("a period is between 1970-01 and 2554-06", field="period")
    return start


def period_text(period: dt.date) -> str:
    return f"{period.year:04d}-{period.month:02d}"


def period_end_ns(period: dt.date) -> int:
    end = repo.next_period(period)
    return ns_of_datetime(dt.datetime(end.year, end.month, 1, tzinfo=dt.UTC))


def view(period: repo.Period) -> PeriodView:
    return PeriodView(
        period=period_text(period.period_start),
        state=period.state,
        closed_at=period.closed_at,
        closed_by=period.closed_by,
        locked_at=period.locked_at,
        locked_by=period.locked_by,
        checks=period.checks,
    )


async def list_periods(pool: Pool) -> list[PeriodView]:
    """The closed and locked months, and the open months that have journals or memo rows."""
    async with pool.connection() as conn:
        closed = await repo.periods(conn)
        active = await repo.active_periods(conn)
    views = {p.period_start: view(p) for p in closed}
    for start in active:
        views.setdefault(start, PeriodView(period=period_text(start), state="open"))
    return [views[start] for start in sorted(views)]


async def close_period(
    pool: Pool,
    period: dt.date,
    *,
    actor: str,
    clock_ns: Callable[[], int],
    poster: Poster,
    check_projection: ProjectionChecker | None = None,
) -> PeriodView:
    """Closes `period` once every check passes (PeriodCloseRefused names the first that
    fails); closing a closed month again answers its row."""
    end_ns = period_end_ns(period)
    if clock_ns() < end_ns:
        raise PeriodCloseRefused("period_ended", f"{period_text(period)} has not ended yet")
    reconciled = None if check_projection is None else await check_projection()
    # Bounded: a poster far behind makes the close refuse (`posted`), not hang the caller.
    await poster.catch_up(batches_max=FINANCE_POST_BATCHES_PER_TICK)
    async with pool.connection() as conn, conn.transaction():
        state = await repo.lock_state(conn)
        closed = await repo.periods(conn)
        known = {p.period_start: p for p in closed}
        if period in known:
            return view(known[period])
        checks = await _checks(conn, period, end_ns, state, closed, reconciled)
        blocks = await balances.period_blocks(conn, period)
        totals = await repo.category_totals(conn, period, None)
        rollforward = balances.compute_rollforward(period, blocks, totals)
        bad = [r for r in rollforward if r.check_minor != 0]
        if bad:
            raise PeriodCloseRefused(
                "rollforward_zero",
                f"the rollforward's check is {bad[0].check_minor} in {bad[0].currency}",
            )
        checks["rollforward_zero"] = True
        closed_at = datetime_of_ns(clock_ns())
        row = repo.Period(
            period, "closed", closed_at, actor, None, None, state.watermark_ts, checks
        )
        await repo.insert_period(conn, row, blocks, rollforward_rows(rollforward))
    return view(row)


def rollforward_rows(rows: list[balances.RollforwardRow]) -> list[tuple[Any, ...]]:
    return [
        (
            r.currency,
            r.opening_minor,
            r.additions_minor,
            r.usage_minor,
            r.breakage_minor,
            r.refunds_minor,
            r.adjustments_minor,
            r.closing_minor,
            r.from_opening_minor,
        )
        for r in rows
    ]


async def _checks(
    conn: Connection,
    period: dt.date,
    end_ns: int,
    state: repo.State,
    closed: list[repo.Period],
    reconciled: bool | None,
) -> dict[str, Any]:
    """Runs the checks in order; the first that fails refuses the close."""
    text = period_text(period)
    if closed and repo.next_period(closed[-1].period_start) != period:
        if period < closed[-1].period_start:
            raise PeriodCloseRefused("previous_period_closed", f"{text} is before a closed month")
        raise PeriodCloseRefused(
            "previous_period_closed",
            f"close {period_text(repo.next_period(closed[-1].period_start))} first",
        )
    if not closed and await repo.booked_before(conn, period):
        raise PeriodCloseRefused(
            "previous_period_closed", f"months before {text} have journals: close them first"
        )
    projection = await projection_repo.read_state(conn)
    complete_ns = max(projection.watermark_ts, projection.caught_up_ns)
    if complete_ns < end_ns:
        raise PeriodCloseRefused(
            "projection_complete",
            f"the projection is complete up to {datetime_of_ns(complete_ns).isoformat()} only",
        )
    # Everything the engine did up to the month's end (and the projection has) is posted;
    # what came after may keep arriving while the month closes.
    if state.watermark_ts < min(projection.watermark_ts, end_ns):
        raise PeriodCloseRefused(
            "posted", "the poster has not posted everything projected up to the month's end"
        )
    unswept = await repo.unswept_blocks(conn, end_ns)
    if unswept:
        raise PeriodCloseRefused(
            "expiry_swept", f"{len(unswept)} expired blocks still have available credits"
        )
    unbalanced = await repo.unbalanced_journals(conn, period)
    if unbalanced:
        raise PeriodCloseRefused("journals_balanced", f"{unbalanced} journals do not balance")
    if reconciled is None:
        reconciled = await repo.last_projection_check_clean(conn)
    if not reconciled:
        raise PeriodCloseRefused(
            "reconciliation_clean", "the engine and the projection differ (credit-ledger reconcile)"
        )
    base = closed[-1].period_start if closed else None
    differences = await repo.block_differences(conn, period, state.watermark_ts, base)
    if differences:
        raise PeriodCloseRefused(
            "reconciliation_clean",
            f"{len(differences)} blocks differ between the projection and the journals",
        )
    return {
        "period_ended": True,
        "previous_period_closed": True,
        "projection_complete": True,
        "posted": True,
        "expiry_swept": True,
        "journals_balanced": True,
        "reconciliation_clean": True,
    }


async def lock_period(
    pool: Pool, period: dt.date, *, actor: str, clock_ns: Callable[[], int]
) -> PeriodView:
    """closed -> locked; a locked month answers its row again."""
    async with pool.connection() as conn, conn.transaction():
        row = await repo.period_for_update(conn, period)
        if row is None:
            raise PeriodNotClosed(f"{period_text(period)} is open: close it before locking it")
        if row.state == "closed":
            row = await repo.lock_period(conn, period, actor, datetime_of_ns(clock_ns()))
    return view(row)
