"""The poster: journals of revenue recognition from the projection's entries on blocks.

Invariants:
- It reads `ledger_entries` on blocks in engine time order, from its watermark up to the
  projection's (every entry finance reads of engine time up to the projection's watermark is
  written by then: only timeouts come later, and they post nothing), at most
  FINANCE_POST_ENTRIES_MAX per batch, cut between engine timestamps, through a window of
  engine time that adapts to how dense the entries are.
- One batch, one transaction: it takes `finance_state`'s row lock first (a second poster, or a
  period being closed, waits), writes journals, lines, memo rows and the blocks' new state, and
  moves the watermark. A crash loses nothing and posts nothing twice.
- A journal's period is the month of its accounting date (the entry's business effective time)
  unless that month is closed: then it is booked in the first open month after the last closed
  one, as a prior-period adjustment naming the month it belongs to. A correction (a usage
  refund) of usage booked in a closed month is an adjustment of that month too.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

import msgspec

from finance import recognition as rec
from finance.currencies import functional_consideration
from ledger.clock import datetime_of_ns
from ledger.db import Connection, Pool
from ledger.ids import derive_id, journal_id, leg_id
from ledger.limits import FINANCE_POST_ENTRIES_MAX
from ledger.repositories import finance as repo
from ledger.repositories import projection as projection_repo

_logger = logging.getLogger(__name__)

# Entry kind -> route; `correction` depends on its sign.
_ROUTES: dict[str, rec.Route] = {
    "grant": rec.Route.GRANT,
    "debit": rec.Route.USAGE,
    "settle": rec.Route.USAGE,
    "overdraft_repay": rec.Route.USAGE,
    "refund": rec.Route.RESTORE,
    "expire": rec.Route.EXPIRE,
    "void": rec.Route.VOID,
    "refund_out": rec.Route.REFUND,
}
_MEMO_KINDS: dict[rec.Route, str] = {
    rec.Route.GRANT: "granted",
    rec.Route.USAGE: "consumed",
    rec.Route.RESTORE: "restored",
    rec.Route.EXPIRE: "expired",
    rec.Route.VOID: "voided",
    rec.Route.REFUND: "refunded",
    rec.Route.ROLLOVER_OUT: "rolled_over",
    rec.Route.ROLLOVER_IN: "rolled_in",
}
# How far a usage refund's legs are looked for among its operation's legs (a refund has a
# header and one leg per block it gives back to).
_REFUND_LEGS_MAX = 256
SYSTEM_ACTOR = "system"
WINDOW_NS_MIN = 1_000_000_000  # 1 s of engine time
WINDOW_NS_MAX = 1 << 62  # about 146 years: everything
RUNTIME_ACTOR = "runtime"
_NS_PER_DAY = 86_400 * 1_000_000_000
_EPOCH = dt.date(1970, 1, 1)


def route_of(entry: repo.BlockEntry) -> rec.Route:
    route = _ROUTES.get(entry.kind)
    if route is not None:
        return route
    if entry.kind == "correction":
        return rec.Route.RESTORE if entry.amount > 0 else rec.Route.USAGE
    if entry.kind == "rollover":
        return rec.Route.ROLLOVER_IN if entry.amount > 0 else rec.Route.ROLLOVER_OUT
    raise KeyError(entry.kind)


def accounting_date_ns(entry: repo.BlockEntry) -> int:
    """When an entry counts in the books (ns since the epoch; the journal keeps the µs): its
    business effective time, except for a void, which counts when it happened (its engine
    time): a void's transfer carries the block's expiry in `user_data_64`, for the readers of
    the ledger, not the day it was voided."""
    if entry.kind == "void":
        return entry.engine_ts
    return entry.effective_at_ns


def month_of(at_ns: int) -> dt.date:
    """The month (UTC) of an instant, ns since the epoch."""
    return _month_of_day(at_ns // _NS_PER_DAY)


@functools.lru_cache(maxsize=4096)
def _month_of_day(day: int) -> dt.date:
    at = _EPOCH + dt.timedelta(days=day)
    return dt.date(at.year, at.month, 1)


def booking(accounting_date_ns: int, last_closed: dt.date | None) -> tuple[dt.date, dt.date | None]:
    """(posting period, the closed period it adjusts or None)."""
    period = month_of(accounting_date_ns)
    if last_closed is not None and period <= last_closed:
        return repo.next_period(last_closed), period
    return period, None


def terms_of(block: repo.Block, functional_currency: str) -> rec.Terms:
    rate = None if block.exchange_rate is None else Fraction(block.exchange_rate)
    if block.currency == functional_currency:
        rate = Fraction(1)
    return rec.Terms(
        credits=block.credits,
        consideration_minor=block.consideration_minor,
        paid=block.category == "paid",
        functional_consideration=(
            None
            if rate is None or block.currency is None
            else Fraction(block.functional_consideration_minor)
            if block.functional_consideration_minor is not None
            else functional_consideration(
                block.consideration_minor, block.currency, rate, functional_currency
            )
        ),
        breakage_rate=Fraction(block.rate) if block.method == "proportional" else Fraction(0),
    )


def state_of(block: repo.Block) -> rec.State:
    return rec.State(
        credits_out=block.credits_out,
        credits_used=block.credits_used,
        value_out_minor=block.value_out_minor,
        accrued_minor=block.accrued_minor,
        functional_out_minor=block.functional_out_minor,
        functional_accrued_minor=block.functional_accrued_minor,
    )


def policy_for(
    policies: Sequence[repo.Policy], credit_type_id: int, effective_at: dt.datetime
) -> tuple[str, Decimal]:
    """The breakage method of a block: the latest policy of its product in effect at its
    effective time; the remote method when there is none."""
    chosen = ("remote", Decimal(0))
    for policy in policies:
        if policy.credit_type_id == credit_type_id and policy.effective_from <= effective_at:
            chosen = (policy.method, policy.rate)
    return chosen


def new_block(
    entry: repo.BlockEntry, grant: repo.GrantRow | None, policies: Sequence[repo.Policy]
) -> repo.Block:
    """A block as its grant entry and catalog row describe it. A block the catalog does not
    know (written outside the service) is taken as promotional: nothing says it was paid for."""
    effective_at = datetime_of_ns(entry.effective_at_ns)
    method, rate = policy_for(policies, entry.credit_type_id, effective_at)
    return repo.Block(
        block_id=entry.block_id,
        customer_id=entry.customer_id,
        wallet_id=grant.wallet_id if grant else entry.wallet_id,
        resource_id=entry.resource_id,
        credit_type_id=entry.credit_type_id,
        category=grant.category if grant else "promotional",
        currency=grant.currency if grant else None,
        credits=grant.credits if grant else abs(entry.amount),
        consideration_minor=grant.consideration_minor if grant else 0,
        exchange_rate=grant.exchange_rate if grant else None,
        effective_at=grant.effective_at if grant else effective_at,
        expires_at=grant.expires_at if grant else None,
        method=method,
        rate=rate,
        credits_out=0,
        credits_used=0,
        value_out_minor=0,
        functional_out_minor=None,
        accrued_minor=0,
        functional_accrued_minor=None,
        granted_period=month_of(entry.effective_at_ns),
    )


@dataclass
class _Context:
    """What one batch needs to know besides its entries."""

    blocks: dict[int, repo.Block]
    grants: Mapping[int, repo.GrantRow]
    policies: Sequence[repo.Policy]
    last_closed: dt.date | None
    refunds: Mapping[int, tuple[int, str, str]]
    voids: Mapping[int, tuple[str, str]]
    usage_refunds: Mapping[int, tuple[str, str]]  # refund leg id -> (actor, reason)
    usage_periods: Mapping[int, dt.date]
    functional_currency: str
    seq: int
    terms: dict[int, rec.Terms] = field(default_factory=dict)
    journals: list[repo.Journal] = field(default_factory=list)
    memo: list[repo.MemoRow] = field(default_factory=list)
    # The blocks the batch moved -> where their recognition stands now, in the order the batch
    # first moved them; `blocks` keeps their terms (`changed` joins the two once, at the end).
    states: dict[int, rec.State] = field(default_factory=dict)
    # A rollover's transfer -> the value (in minor units, and in the functional currency when
    # known) its source block gave up: its rollover block's consideration.
    rolled: dict[int, tuple[int, int | None]] = field(default_factory=dict)

    def changed(self) -> list[repo.Block]:
        """The blocks the batch moved, each in its new state."""
        return [_with_state(self.blocks[block_id], s) for block_id, s in self.states.items()]


_BIRTHS = (rec.Route.GRANT, rec.Route.ROLLOVER_IN)


def sources_first(entries: Sequence[repo.BlockEntry]) -> list[repo.BlockEntry]:
    """The entries in their order, but a rollover's entry on its source block before the one
    on its rollover block (same transfer, same engine time: the order between them is not
    the query's), so that the value the source gives up is known when the new block is born."""
    out = list(entries)
    sources = {e.transfer_id: i for i, e in enumerate(out) if e.kind == "rollover" and e.amount < 0}
    for i, e in enumerate(out):
        j = sources.get(e.transfer_id) if e.kind == "rollover" and e.amount > 0 else None
        if j is not None and j > i:
            out[i], out[j] = out[j], out[i]
            sources[e.transfer_id] = i
    return out


def post_entries(entries: Sequence[repo.BlockEntry], ctx: _Context) -> None:
    """Turns entries into journals and memo rows (pure, given the context)."""
    seq = ctx.seq
    bookings: dict[int, tuple[dt.date, dt.date | None]] = {}  # by day: a day books alike
    for entry in sources_first(entries):
        route = route_of(entry)
        block = ctx.blocks.get(entry.block_id)
        if block is None:
            block = _new_block(entry, route, ctx)
        block_id = block.block_id
        terms = ctx.terms.get(block_id)
        if terms is None:  # fixed at the grant: worked out once per block and batch
            terms = ctx.terms[block_id] = terms_of(block, ctx.functional_currency)
        credits = abs(entry.amount)
        refund = ctx.refunds.get(entry.operation_id) if route is rec.Route.REFUND else None
        before = rec.State() if route in _BIRTHS else ctx.states.get(block_id)
        if before is None:
            before = state_of(block)
        drafts, state = rec.apply(
            terms,
            before,
            route,
            credits,
            refund_minor=None if refund is None else refund[0],
        )
        if route is rec.Route.ROLLOVER_OUT:
            ctx.rolled[entry.transfer_id] = _given_up(terms, before, state)
        ctx.states[block_id] = state
        at_ns = accounting_date_ns(entry)
        booked = bookings.get(day := at_ns // _NS_PER_DAY)
        if booked is None:
            booked = bookings[day] = booking(at_ns, ctx.last_closed)
        period, adjusts = booked
        if route is rec.Route.RESTORE and adjusts is None:
            original = ctx.usage_periods.get(entry.operation_id)
            if original is not None and ctx.last_closed is not None and original <= ctx.last_closed:
                adjusts = original
        if not terms.paid:
            seq += 1
            ctx.memo.append(_memo(entry, route, credits, period, adjusts, seq, at_ns))
            continue
        for index, draft in enumerate(drafts):
            assert rec.balanced(draft), draft
            seq += 1
            actor, reason = _who(entry, route, draft, ctx)
            ctx.journals.append(
                _journal(entry, block, draft, index, period, adjusts, seq, actor, reason, at_ns)
            )
    ctx.seq = seq


def _new_block(entry: repo.BlockEntry, route: rec.Route, ctx: _Context) -> repo.Block:
    """The block of an entry on a block finance does not know yet, as its grant describes it;
    a rollover block is born with exactly the value its source gave up, whatever its grants
    row says (a source finance never saw gives nothing: then the row's)."""
    if route is rec.Route.ROLLOVER_IN:
        block = new_block(entry, ctx.grants.get(entry.block_id), ctx.policies)
        moved = ctx.rolled.get(entry.transfer_id)
        if moved is not None:
            block = msgspec.structs.replace(
                block, consideration_minor=moved[0], functional_consideration_minor=moved[1]
            )
        if block.consideration_minor and block.currency is None:
            block = msgspec.structs.replace(block, consideration_minor=0)
    else:
        if route is not rec.Route.GRANT:
            _logger.error("finance: entry %s on a block without its grant", entry.transfer_id)
        block = new_block(entry, ctx.grants.get(entry.block_id), ctx.policies)
    ctx.blocks[block.block_id] = block
    return block


def _given_up(terms: rec.Terms, before: rec.State, state: rec.State) -> tuple[int, int | None]:
    """What a rollover's source block gave up: its rollover block's consideration."""
    if not terms.paid:
        return 0, None
    functional = (
        None
        if state.functional_out_minor is None or before.functional_out_minor is None
        else state.functional_out_minor - before.functional_out_minor
    )
    return state.value_out_minor - before.value_out_minor, functional


def _with_state(block: repo.Block, state: rec.State) -> repo.Block:
    return msgspec.structs.replace(
        block,
        credits_out=state.credits_out,
        credits_used=state.credits_used,
        value_out_minor=state.value_out_minor,
        functional_out_minor=state.functional_out_minor,
        accrued_minor=state.accrued_minor,
        functional_accrued_minor=state.functional_accrued_minor,
    )


def _who(
    entry: repo.BlockEntry, route: rec.Route, draft: rec.Draft, ctx: _Context
) -> tuple[str, str]:
    """The actor and reason a journal names."""
    if route is rec.Route.USAGE:  # most journals: first
        return RUNTIME_ACTOR, entry.kind if draft.kind == "usage" else draft.reason
    if route is rec.Route.GRANT:
        grant = ctx.grants.get(entry.block_id)
        return (grant.actor, grant.reason or "purchase") if grant else (SYSTEM_ACTOR, "purchase")
    if route is rec.Route.REFUND:
        refund = ctx.refunds.get(entry.operation_id)
        return (refund[1], refund[2] or draft.reason) if refund else (SYSTEM_ACTOR, draft.reason)
    if route is rec.Route.VOID:
        actor, reason = ctx.voids.get(entry.operation_id) or ctx.voids.get(
            entry.block_id, (SYSTEM_ACTOR, "")
        )
        return actor, reason or "void"
    if route is rec.Route.RESTORE and entry.kind == "refund":
        actor, reason = ctx.usage_refunds.get(entry.transfer_id, (SYSTEM_ACTOR, ""))
        return actor, reason or "usage refund"
    if route is rec.Route.EXPIRE:
        return SYSTEM_ACTOR, "expiry" if draft.credits else draft.reason
    if route in (rec.Route.ROLLOVER_OUT, rec.Route.ROLLOVER_IN):
        return SYSTEM_ACTOR, draft.reason
    return RUNTIME_ACTOR, entry.kind if draft.kind == "usage" else draft.reason


def _journal(
    entry: repo.BlockEntry,
    block: repo.Block,
    draft: rec.Draft,
    index: int,
    period: dt.date,
    adjusts: dt.date | None,
    seq: int,
    actor: str,
    reason: str,
    at_ns: int,
) -> repo.Journal:
    # Positional (the fields' order), as the memo's: a batch makes thousands.
    return repo.Journal(
        journal_id(entry.transfer_id, entry.kind, entry.block_id, index),
        seq,
        period,
        at_ns,  # accounting_date_ns
        entry.engine_ts,
        draft.kind,
        entry.block_id,
        block.customer_id,
        entry.credit_type_id,
        entry.wallet_id,
        entry.resource_id,
        entry.operation_id,
        entry.dimension_set_id,
        block.currency or "",
        draft.credits,
        (entry.transfer_id,),  # source_transfer_ids
        actor,
        reason,
        adjusts,  # adjusts_period
        tuple(
            [
                repo.JournalLine(
                    number,
                    line.account,
                    line.debit_minor,
                    line.credit_minor,
                    line.functional_debit_minor,
                    line.functional_credit_minor,
                )
                for number, line in enumerate(draft.lines, start=1)
            ]
        ),
    )


def _memo(
    entry: repo.BlockEntry,
    route: rec.Route,
    credits: int,
    period: dt.date,
    adjusts: dt.date | None,
    seq: int,
    at_ns: int,
) -> repo.MemoRow:
    return repo.MemoRow(
        derive_id("finance/memo", entry.transfer_id, entry.kind, entry.block_id),
        seq,
        period,
        at_ns,  # accounting_date_ns
        entry.engine_ts,
        _MEMO_KINDS[route],
        entry.block_id,
        entry.customer_id,
        entry.credit_type_id,
        credits,
        entry.transfer_id,
        adjusts,  # adjusts_period
    )


class Poster:
    """Posts journals from the projection, a batch per transaction (`step`), or until caught up
    (`catch_up`)."""

    def __init__(
        self,
        pool: Pool,
        *,
        functional_currency: str = "USD",
        entries_max: int = FINANCE_POST_ENTRIES_MAX,
    ) -> None:
        assert 0 < entries_max <= FINANCE_POST_ENTRIES_MAX
        self.pool = pool
        self.functional_currency = functional_currency
        self.entries_max = entries_max
        # The window of engine time a batch reads: halved when a batch is full, doubled when
        # it is a quarter full.
        self.window_ns = WINDOW_NS_MIN

    async def step(self) -> int:
        """Posts one batch; returns how many entries it read (0: caught up)."""
        try:
            return await self._step()
        except BaseException:
            # The partitions this process believes exist may have been created by the
            # transaction that just rolled back.
            repo.forget_partitions()
            raise

    async def _step(self) -> int:
        async with self.pool.connection() as conn, conn.transaction():
            state = await repo.lock_state(conn)
            projection = await projection_repo.read_state(conn)
            if projection.watermark_ts <= state.watermark_ts:
                return 0
            # A window of engine time, not everything up to the projection's watermark: the
            # entries have a BRIN index on engine time, which finds a window's rows cheaply
            # but cannot hand out the first N of a long range in order.
            through = min(projection.watermark_ts, state.watermark_ts + self.window_ns)
            entries = await repo.block_entries(
                conn, state.watermark_ts, through, self.entries_max + 1
            )
            if len(entries) > self.entries_max:
                # Cut before the first entry of the engine timestamp that did not fit whole.
                through = entries[self.entries_max].engine_ts - 1
                entries = [e for e in entries if e.engine_ts <= through]
                self.window_ns = max(WINDOW_NS_MIN, self.window_ns // 2)
            elif len(entries) * 4 < self.entries_max:
                self.window_ns = min(WINDOW_NS_MAX, self.window_ns * 2)
            ctx = await self._context(conn, entries, state.seq)
            post_entries(entries, ctx)
            await repo.insert_journals(conn, ctx.journals)
            await repo.insert_memo(conn, ctx.memo)
            await repo.save_blocks(conn, ctx.changed())
            await repo.advance(
                conn, repo.State(through, ctx.seq, state.journals + len(ctx.journals))
            )
            return max(len(entries), 1)

    async def catch_up(self, *, batches_max: int | None = None) -> int:
        """Posts until the poster has reached the projection's watermark (or has posted
        `batches_max` batches); returns the entries read."""
        total = batches = 0
        while (batches_max is None or batches < batches_max) and (read := await self.step()):
            total += read
            batches += 1
        return total

    async def _context(
        self, conn: Connection, entries: Sequence[repo.BlockEntry], seq: int
    ) -> _Context:
        ids = {e.block_id for e in entries}
        known = await repo.blocks(conn, ids)
        fresh = {e.block_id for e in entries if e.kind == "grant"} | (ids - known.keys())
        periods = await repo.periods(conn)
        refund_ops = {e.operation_id for e in entries if e.kind == "refund_out"}
        voided = {e.block_id for e in entries if e.kind == "void"}
        refunded_debits = {e.operation_id for e in entries if e.kind == "refund"}
        return _Context(
            blocks=dict(known),
            grants=await repo.grant_rows(conn, fresh),
            policies=await repo.policies(conn) if fresh else [],
            last_closed=periods[-1].period_start if periods else None,
            refunds=await repo.refunds(conn, refund_ops),
            voids=_voids(await repo.audited(conn, "grant.void", voided)),
            usage_refunds=_refund_legs(
                await repo.audited(conn, "debit.refund", refunded_debits),
                {e.transfer_id for e in entries if e.kind == "refund"},
            ),
            usage_periods=await repo.usage_periods(conn, refunded_debits),
            functional_currency=self.functional_currency,
            seq=seq,
        )


def _voids(
    audited: Sequence[tuple[int, str, str, dict[str, object]]],
) -> dict[int, tuple[str, str]]:
    """(actor, reason) of the voids: a void of part of a block by its operation (its audit
    row's `void_id`: the transfer's `user_data_128`), a void of what is left by its block."""
    found: dict[int, tuple[str, str]] = {}
    for block, actor, reason, details in audited:
        void_id = details.get("void_id")
        if isinstance(void_id, str) and void_id:
            found[uuid.UUID(void_id).int] = (actor, reason)
        else:
            found[block] = (actor, reason)
    return found


def _refund_legs(
    audited: Sequence[tuple[int, str, str, dict[str, object]]], legs: set[int]
) -> dict[int, tuple[str, str]]:
    """refund leg id -> (actor, reason) of the usage refund that wrote it (its audit row)."""
    found: dict[int, tuple[str, str]] = {}
    for _, actor, reason, details in audited:
        refund_id = details.get("refund_id")
        if not isinstance(refund_id, str) or not refund_id.isdigit():
            continue
        for index in range(_REFUND_LEGS_MAX):
            leg = leg_id(int(refund_id), index)
            if leg in legs:
                found[leg] = (actor, reason)
    return found
