"""A period's balances: each paid block's remaining obligation, and the deferred revenue
rollforward per currency.

Invariants:
- A closed period's balances are what it stored when it closed (finance_period_blocks,
  finance_period_balances): read back, never recomputed, so its reports never change.
- An open period's are computed from the last closed period before it plus the journals of
  the periods after that one, up to it; with the months closed in order, that is its own
  journals only.
- The rollforward's check is `closing - sum of the blocks' remaining obligations`: 0, because
  every 2100 line belongs to exactly one category (purchase, usage, breakage, refund, or an
  adjustment: a correction, or any journal booked for a closed period).
- The revenue recognized from the opening balance (ASC 606-10-50-8(b)) is, per block,
  `min(opening, recognized in the period)`: a block's own revenue comes out of what it owed at
  the start before anything bought during the period.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import msgspec

from ledger.db import Connection
from ledger.repositories import finance as repo

BlockBalance = repo.BlockBalanceRow


class RollforwardRow(msgspec.Struct, frozen=True):
    period_start: dt.date
    currency: str
    opening_minor: int
    additions_minor: int
    usage_minor: int
    breakage_minor: int
    refunds_minor: int
    adjustments_minor: int
    closing_minor: int
    from_opening_minor: int
    check_minor: int


async def closed_periods(conn: Connection) -> dict[dt.date, repo.Period]:
    return {p.period_start: p for p in await repo.periods(conn)}


async def period_blocks(
    conn: Connection, period: dt.date, *, customer_id: int | None = None
) -> list[BlockBalance]:
    """Every paid block with an obligation at the start or end of `period`, or a movement in
    it: its opening, the revenue recognized from it in the period, and its remaining."""
    closed = await closed_periods(conn)
    if period in closed:
        return await repo.stored_blocks(conn, period, customer_id)
    base = max((p for p in closed if p < period), default=None)
    return await repo.computed_blocks(conn, period, base, customer_id)


async def rollforward(
    conn: Connection, period: dt.date, *, customer_id: int | None = None
) -> list[RollforwardRow]:
    """The deferred revenue rollforward of `period`, per currency."""
    closed = await closed_periods(conn)
    if period in closed and customer_id is None:
        return [_stored(period, row) for row in await repo.stored_balances(conn, period)]
    blocks = await period_blocks(conn, period, customer_id=customer_id)
    totals = await repo.category_totals(conn, period, customer_id)
    return compute_rollforward(period, blocks, totals)


def compute_rollforward(
    period: dt.date, blocks: list[BlockBalance], totals: list[repo.CategoryTotals]
) -> list[RollforwardRow]:
    opening: dict[str, int] = defaultdict(int)
    remaining: dict[str, int] = defaultdict(int)
    from_opening: dict[str, int] = defaultdict(int)
    for block in blocks:
        opening[block.currency] += block.opening_minor
        remaining[block.currency] += block.remaining_minor
        from_opening[block.currency] += max(0, min(block.opening_minor, block.recognized_minor))
    by_currency = {t.currency: t for t in totals}
    rows = []
    for currency in sorted(set(opening) | set(by_currency)):
        t = by_currency.get(currency, repo.CategoryTotals(currency, 0, 0, 0, 0, 0))
        closing = (
            opening[currency]
            + t.additions_minor
            - t.usage_minor
            - t.breakage_minor
            - t.refunds_minor
            + t.adjustments_minor
        )
        rows.append(
            RollforwardRow(
                period_start=period,
                currency=currency,
                opening_minor=opening[currency],
                additions_minor=t.additions_minor,
                usage_minor=t.usage_minor,
                breakage_minor=t.breakage_minor,
                refunds_minor=t.refunds_minor,
                adjustments_minor=t.adjustments_minor,
                closing_minor=closing,
                from_opening_minor=from_opening[currency],
                check_minor=closing - remaining[currency],
            )
        )
    return rows


def _stored(period: dt.date, row: tuple[object, ...]) -> RollforwardRow:
    currency = str(row[0])
    opening, additions, usage, breakage, refunds, adjustments, closing, from_opening = (
        int(str(value)) for value in row[1:]
    )
    return RollforwardRow(
        period,
        currency,
        opening,
        additions,
        usage,
        breakage,
        refunds,
        adjustments,
        closing,
        from_opening,
        check_minor=0,
    )
