"""Alerts derived from the projection, and automatic top-ups (ledger/README.md, "Alerts").

The hot path never touches Postgres, so the crossings it causes are derived afterwards from
the projection's entries (`ledger_entries`), in engine order, by a deriver with a watermark of
its own (engine time), the way finance's poster reads them.

Invariants:
- One batch, one transaction: the deriver locks its state row, reads the entries after its
  watermark up to the projection's (every entry of engine time up to the projection's
  watermark is written by then, timeouts included), updates each wallet's available credits
  and deficit and each budget period's usage, and writes the events, the threshold marks, the
  top-ups the crossings cause and its new watermark. A crash loses nothing and writes nothing
  twice; a second deriver waits on the row and then finds nothing to do.
- A crossing is evaluated after each operation (the consecutive entries of one operation id: a
  debit drawing on several blocks, a grant and the deficit it repays), not after each entry,
  so a transient figure inside one operation crosses nothing.
- Each threshold fires once per crossing: it is armed while the figure is on the safe side,
  fires and disarms when it crosses, and is armed again once the figure is back. Event keys
  name the cause (a threshold and its crossing number, a wallet and its depletion number, a
  transfer), so the same crossing is the same event id.
- A top-up is a row per crossing of the wallet's rule (id from the wallet and the crossing
  number), written 'pending' by the deriver (or 'capped' when the UTC day has its maximum),
  then issued through the control plane (key derived from the top-up's id: a retry after a
  crash finds the grant issued) and marked 'issued' with `top_up.issued` in one transaction.
  Twenty debits crossing the line in a burst are one crossing in the projection: one top-up.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from grants.errors import (
    CreditError,
    InvalidRequest,
    LedgerUnavailableError,
    NotFound,
    TooManyThresholds,
)
from grants.model import Category
from ledger.client import LedgerUnavailable
from ledger.clock import datetime_of_ns, rfc3339_of
from ledger.db import Connection
from ledger.ids import budget_account_id, derive_id, id_text
from ledger.limits import (
    ALERTS_ENTRIES_MAX,
    AMOUNT_MAX_REQUEST,
    GRANT_EXPIRING_NOTICE_S_DEFAULT,
    GRANT_EXPIRING_SCAN_MAX,
    MONEY_MINOR_MAX,
    PERCENT_OF_ALLOCATION_MAX,
    THRESHOLDS_PER_SUBJECT_MAX,
    TOP_UP_EXPIRY_DAYS_MAX,
    TOP_UPS_PER_DAY_MAX,
    TOP_UPS_PER_TICK,
)
from ledger.repositories import alerts as repo
from ledger.repositories import audit, events
from ledger.repositories import budgets as budget_rows
from ledger.repositories import projection as projection_repo
from ledger.repositories.grants import GrantSource
from wallets.catalog import Period, period_start_ns
from wallets.control import ControlPlane, GrantRequest

_logger = logging.getLogger(__name__)

NS_PER_S: Final = 1_000_000_000
WINDOW_NS_MIN: Final = NS_PER_S
WINDOW_NS_MAX: Final = 1 << 62
TOP_UP_ACTOR: Final = "top-up"
# Crash points the tests inject a failure at (`Alerts.fault`).
FAULT_BEFORE_COMMIT: Final = "deriver:before-commit"
FAULT_BEFORE_GRANT: Final = "top-up:before-grant"
FAULT_AFTER_GRANT: Final = "top-up:after-grant"


def top_up_id(wallet_id: int, crossing: int) -> int:
    return derive_id("alerts/top-up", wallet_id, crossing)


def top_up_key(top_up: int) -> str:
    """The idempotency key of a top-up's grant (its grant id is operation_id(tenant, key))."""
    return f"top-up/{id_text(top_up)}"


class Emitted(msgspec.Struct, frozen=True):
    type: str
    key: tuple[int | str, ...]
    occurred_at_ns: int
    data: dict[str, Any]
    wallet_id: int | None = None
    budget_id: int | None = None


class Crossing(msgspec.Struct, frozen=True):
    """A wallet's top-up rule crossed below its threshold."""

    wallet_id: int
    crossing: int
    transfer_id: int
    engine_ts: int
    available: int


@dataclass
class Context:
    """What a batch needs besides its entries; the figures are updated in place."""

    block_wallets: dict[int, int]  # block -> wallet
    overdraft_wallets: dict[int, int]  # overdraft account -> wallet
    wallets: dict[int, repo.WalletFigures]
    budgets: dict[int, repo.BudgetPeriod]  # budget period account -> figures
    thresholds: Sequence[repo.Threshold]
    marks: dict[tuple[int, int], repo.Mark]
    allocations: dict[int, int]  # wallet -> its last plan allocation's amount
    rules: dict[int, repo.Rule]
    emitted: list[Emitted] = field(default_factory=list)
    crossings: list[Crossing] = field(default_factory=list)
    changed_marks: dict[tuple[int, int], repo.Mark] = field(default_factory=dict)


def _groups(entries: Sequence[repo.AlertEntry]) -> list[list[repo.AlertEntry]]:
    """Consecutive entries of one operation (or of one transfer when it names none)."""
    out: list[list[repo.AlertEntry]] = []
    last: tuple[int, int] | None = None
    for entry in entries:
        key = (entry.operation_id, 0) if entry.operation_id else (0, entry.transfer_id)
        if key != last:
            out.append([])
            last = key
        out[-1].append(entry)
    return out


# A wallet's threshold that stands at a level: (threshold, the level, its mark's key).
_Level = tuple[int, int, tuple[int, int]]
# A budget's threshold: (threshold, its percent of the cap).
_Percent = tuple[int, int]


def derive(entries: Sequence[repo.AlertEntry], ctx: Context) -> None:
    """Applies the entries to the figures and records the events and rule crossings (pure)."""
    # Each subject's thresholds, found once for the batch rather than at every operation
    # (neither the thresholds nor the allocations change inside it).
    levels = _wallet_levels(ctx)
    percents = _budget_percents(ctx)
    for group in _groups(entries):
        wallets_before: dict[int, tuple[int, int]] = {}
        budgets_before: dict[int, int] = {}
        timeouts: dict[int, tuple[repo.AlertEntry, int, int]] = {}
        for entry in group:
            wallet_id = _apply(entry, ctx, wallets_before, budgets_before)
            if entry.kind == "expire" and entry.account_kind == "block" and entry.amount < 0:
                ctx.emitted.append(_expired(entry, wallet_id))
            if entry.kind == "timeout" and entry.account_kind != "budget":
                key = entry.reservation_id or entry.transfer_id
                _, credits, _ = timeouts.get(key, (entry, 0, 0))
                timeouts[key] = (entry, credits - entry.pending, wallet_id)
        for key, (entry, credits, wallet_id) in timeouts.items():
            ctx.emitted.append(_timed_out(entry, key, credits, wallet_id))
        last = group[-1]
        for wallet_id, before in wallets_before.items():
            figures = ctx.wallets[wallet_id]
            _evaluate_wallet(ctx, figures, before, last, levels.get(wallet_id, ()))
        for account_id, balance in budgets_before.items():
            period = ctx.budgets[account_id]
            _evaluate_budget(ctx, period, balance, last, percents.get(period.budget_id, ()))


def _wallet_levels(ctx: Context) -> dict[int, list[_Level]]:
    """wallet -> its thresholds that stand at a level, in `ctx.thresholds`' order."""
    out: dict[int, list[_Level]] = {}
    for threshold in ctx.thresholds:
        wallet_id = threshold.wallet_id
        if wallet_id is None:
            continue
        level = wallet_level(threshold, ctx.allocations.get(wallet_id))
        if level is not None:
            out.setdefault(wallet_id, []).append((threshold.id, level, (threshold.id, wallet_id)))
    return out


def _budget_percents(ctx: Context) -> dict[int, list[_Percent]]:
    """budget -> its thresholds, in `ctx.thresholds`' order."""
    out: dict[int, list[_Percent]] = {}
    for threshold in ctx.thresholds:
        if threshold.budget_id is not None:
            assert threshold.percent is not None
            out.setdefault(threshold.budget_id, []).append((threshold.id, threshold.percent))
    return out


def _apply(
    entry: repo.AlertEntry,
    ctx: Context,
    wallets_before: dict[int, tuple[int, int]],
    budgets_before: dict[int, int],
) -> int:
    """Adds the entry to its wallet's or budget period's figures; returns the wallet (0)."""
    if entry.account_kind == "budget":
        period = ctx.budgets.get(entry.account_id)
        if period is None:
            return 0
        budgets_before.setdefault(entry.account_id, period.balance)
        if entry.kind == "budget_limit":
            period.credit_limit += entry.amount
        period.balance += entry.amount - entry.pending
        return 0
    owners = ctx.block_wallets if entry.account_kind == "block" else ctx.overdraft_wallets
    wallet_id = owners.get(entry.account_id, 0)
    figures = ctx.wallets.get(wallet_id)
    if figures is None:
        return 0
    wallets_before.setdefault(wallet_id, (figures.available, figures.deficit))
    if entry.account_kind == "block":
        figures.available += entry.amount - entry.pending
    elif entry.kind != "overdraft_limit":
        figures.deficit += entry.pending - entry.amount
    return wallet_id


def _evaluate_wallet(
    ctx: Context,
    figures: repo.WalletFigures,
    before: tuple[int, int],
    last: repo.AlertEntry,
    levels: Sequence[_Level],
) -> None:
    available_before, deficit_before = before
    wallet_id = figures.wallet_id
    available = figures.available
    if available_before > 0 >= available:
        figures.depletions += 1
        ctx.emitted.append(
            _wallet_event(
                "balance.depleted",
                (wallet_id, figures.depletions),
                last,
                wallet_id,
                {"available": str(available)},
            )
        )
    if deficit_before <= 0 < figures.deficit:
        figures.overdrafts += 1
        ctx.emitted.append(
            _wallet_event(
                "overdraft.opened",
                (wallet_id, figures.overdrafts),
                last,
                wallet_id,
                {"deficit": str(figures.deficit)},
            )
        )
    elif deficit_before > 0 >= figures.deficit:
        ctx.emitted.append(
            _wallet_event(
                "overdraft.repaid",
                (wallet_id, figures.overdrafts),
                last,
                wallet_id,
                {"repaid": str(deficit_before)},
            )
        )
    for threshold_id, level, key in levels:
        mark = _mark(ctx, key)
        if available >= level:
            _arm(ctx, key, mark, True)
        elif mark.armed:
            _arm(ctx, key, mark, False)
            mark.crossings += 1
            ctx.emitted.append(
                _wallet_event(
                    "balance.low",
                    ("threshold", threshold_id, wallet_id, mark.crossings),
                    last,
                    wallet_id,
                    {
                        "threshold_id": id_text(threshold_id),
                        "threshold": str(level),
                        "available": str(available),
                        "crossing": mark.crossings,
                    },
                )
            )
    rule = ctx.rules.get(wallet_id)
    if rule is not None:
        if available >= rule.threshold:
            rule.armed = True
        elif rule.armed:
            rule.armed = False
            rule.crossings += 1
            ctx.crossings.append(
                Crossing(wallet_id, rule.crossings, last.transfer_id, last.engine_ts, available)
            )


def _wallet_event(
    type_: str,
    key: tuple[int | str, ...],
    last: repo.AlertEntry,
    wallet_id: int,
    data: dict[str, Any],
) -> Emitted:
    """A wallet's event at the operation that ends with `last` (its data made only when it
    fires: most operations cross nothing)."""
    common = {"wallet_id": id_text(wallet_id), "transfer_id": id_text(last.transfer_id)}
    return Emitted(type_, key, last.engine_ts, {**common, **data}, wallet_id=wallet_id)


def wallet_level(threshold: repo.Threshold, allocation: int | None) -> int | None:
    """The credits a wallet threshold stands at (None: a percentage with no allocation)."""
    if threshold.amount is not None:
        return threshold.amount
    assert threshold.percent is not None
    if not allocation:
        return None
    return allocation * threshold.percent // 100


def _evaluate_budget(
    ctx: Context,
    period: repo.BudgetPeriod,
    balance_before: int,
    last: repo.AlertEntry,
    percents: Sequence[_Percent],
) -> None:
    credit_limit = period.credit_limit
    used = credit_limit - period.balance
    if credit_limit > 0 and balance_before > 0 >= period.balance:
        period.exceedings += 1
        ctx.emitted.append(
            Emitted(
                "budget.exceeded",
                (period.account_id, period.exceedings),
                last.engine_ts,
                _budget_common(period, used, last),
                budget_id=period.budget_id,
            )
        )
    if credit_limit <= 0:
        return
    for threshold_id, percent in percents:
        key = (threshold_id, period.account_id)
        mark = _mark(ctx, key)
        if used * 100 < percent * credit_limit:
            _arm(ctx, key, mark, True)
        elif mark.armed:
            _arm(ctx, key, mark, False)
            mark.crossings += 1
            ctx.emitted.append(
                Emitted(
                    "budget.threshold_reached",
                    ("threshold", threshold_id, period.account_id, mark.crossings),
                    last.engine_ts,
                    {
                        **_budget_common(period, used, last),
                        "threshold_id": id_text(threshold_id),
                        "percent": percent,
                        "crossing": mark.crossings,
                    },
                    budget_id=period.budget_id,
                )
            )


def _budget_common(period: repo.BudgetPeriod, used: int, last: repo.AlertEntry) -> dict[str, Any]:
    """What every event of a budget period says (made only when one fires)."""
    return {
        "budget_id": id_text(period.budget_id),
        "period_start": rfc3339_of(datetime_of_ns(period.period_start_ns)),
        "cap": str(period.credit_limit),
        "used": str(used),
        "transfer_id": id_text(last.transfer_id),
    }


def _mark(ctx: Context, key: tuple[int, int]) -> repo.Mark:
    """The mark of (threshold, subject), a new one (armed) the first time."""
    mark = ctx.marks.get(key)
    if mark is None:
        mark = ctx.marks[key] = repo.Mark(threshold_id=key[0], subject_id=key[1])
    return mark


def _arm(ctx: Context, key: tuple[int, int], mark: repo.Mark, armed: bool) -> None:
    """Sets the mark (its key), recorded to be saved: every mark the batch evaluates is."""
    if mark.armed != armed or key not in ctx.changed_marks:
        mark.armed = armed
        ctx.changed_marks[key] = mark


def _expired(entry: repo.AlertEntry, wallet_id: int) -> Emitted:
    return Emitted(
        "grant.expired",
        (entry.transfer_id, entry.account_id),
        entry.engine_ts,
        {
            "grant_id": id_text(entry.account_id),
            "wallet_id": id_text(wallet_id) if wallet_id else None,
            "credits": str(-entry.amount),
            "transfer_id": id_text(entry.transfer_id),
        },
        wallet_id=wallet_id or None,
    )


def _timed_out(entry: repo.AlertEntry, key: int, credits: int, wallet_id: int) -> Emitted:
    spender = entry.wallet_id or wallet_id
    return Emitted(
        "reservation.timed_out",
        (key,),
        entry.engine_ts,
        {
            "reservation_id": id_text(key),
            "wallet_id": id_text(spender) if spender else None,
            "credits": str(credits),
        },
        wallet_id=spender or None,
    )


def _period_start(budget: budget_rows.Budget, account_id: int, instants: set[int]) -> int:
    """The start of the budget's period whose account is `account_id`, among the periods of
    these instants (0 when none matches: a lifetime budget's, or unknown)."""
    period = Period(budget.period.value)
    for at_ns in sorted(instants):
        start = period_start_ns(period, at_ns)
        if budget_account_id(budget.resource_id, budget.id, start) == account_id:
            return start
    return 0


class TickReport(msgspec.Struct, frozen=True):
    entries: int  # projected entries read
    events: int  # events written (new ones)
    top_ups: int  # top-ups issued
    batches: int


class Alerts:
    """The deriver (`step`, `tick`), the top-ups' second step (`issue_pending`) and the
    expiring scan (`scan_expiring`). Functions take the instant (`at_ns`) from the caller."""

    def __init__(
        self,
        control: ControlPlane,
        *,
        entries_max: int = ALERTS_ENTRIES_MAX,
        notice_s: int = GRANT_EXPIRING_NOTICE_S_DEFAULT,
    ) -> None:
        assert 16 <= entries_max <= ALERTS_ENTRIES_MAX
        assert notice_s > 0
        self.control = control
        self.pool = control.pool
        self.entries_max = entries_max
        self.notice_s = notice_s
        self.window_ns = WINDOW_NS_MIN
        # Tests set this to raise at a named step (a crash in the middle).
        self.fault: Callable[[str], None] | None = None

    def _at(self, point: str) -> None:
        if self.fault is not None:
            self.fault(point)

    # -- the deriver --------------------------------------------------------------------------

    async def step(self) -> tuple[int, int]:
        """Derives one batch: (entries read, or 1 when only the watermark moved, 0 when caught
        up; events written)."""
        async with self.pool.connection() as conn, conn.transaction():
            watermark, _ = await repo.lock_state(conn)
            projection = await projection_repo.read_state(conn)
            if projection.watermark_ts <= watermark:
                return 0, 0
            through, entries = await self._read(conn, watermark, projection.watermark_ts)
            ctx = await self._context(conn, entries, watermark)
            derive(entries, ctx)
            written = await self._write(conn, ctx)
            self._at(FAULT_BEFORE_COMMIT)
            await repo.advance(conn, through, len(entries))
            return max(len(entries), 1), written

    async def _read(
        self, conn: Connection, watermark: int, limit_ts: int
    ) -> tuple[int, list[repo.AlertEntry]]:
        """A window of engine time after the watermark (widened while empty: the entries' BRIN
        index finds a window's rows cheaply, not the first N of a long range)."""
        while True:
            through = min(limit_ts, watermark + self.window_ns)
            entries = await repo.read_entries(conn, watermark, through, self.entries_max + 1)
            if len(entries) > self.entries_max:
                # Cut before the first engine timestamp that did not fit whole.
                through = entries[self.entries_max].engine_ts - 1
                entries = [e for e in entries if e.engine_ts <= through]
                self.window_ns = max(WINDOW_NS_MIN, self.window_ns // 2)
                assert entries, "one engine timestamp has more entries than a batch"
                return through, entries
            if len(entries) * 4 < self.entries_max:
                self.window_ns = min(WINDOW_NS_MAX, self.window_ns * 2)
            if entries or through >= limit_ts:
                return through, entries

    async def _context(
        self, conn: Connection, entries: Sequence[repo.AlertEntry], watermark: int
    ) -> Context:
        blocks = {e.account_id for e in entries if e.account_kind == "block"}
        overdrafts = {e.account_id for e in entries if e.account_kind == "overdraft"}
        budget_accounts = {e.account_id for e in entries if e.account_kind == "budget"}
        block_wallets = await repo.block_wallets(conn, blocks)
        overdraft_wallets = await repo.overdraft_wallets(conn, overdrafts)
        wallet_ids = set(block_wallets.values()) | set(overdraft_wallets.values())
        figures = await repo.wallet_figures(conn, wallet_ids)
        figures.update(await repo.seed_wallets(conn, wallet_ids - figures.keys(), watermark))
        for wallet_id in wallet_ids - figures.keys():
            figures[wallet_id] = repo.WalletFigures(wallet_id=wallet_id)
        budgets = await self._budget_periods(conn, entries, budget_accounts, watermark)
        thresholds = await repo.thresholds_of(
            conn, wallets=wallet_ids, budgets={p.budget_id for p in budgets.values()}
        )
        return Context(
            block_wallets=block_wallets,
            overdraft_wallets=overdraft_wallets,
            wallets=figures,
            budgets=budgets,
            thresholds=thresholds,
            marks=await repo.marks(conn, [t.id for t in thresholds]),
            allocations=await repo.last_allocations(
                conn, {t.wallet_id for t in thresholds if t.percent is not None and t.wallet_id}
            ),
            rules=await repo.rules(conn, wallet_ids),
        )

    async def _budget_periods(
        self,
        conn: Connection,
        entries: Sequence[repo.AlertEntry],
        accounts: set[int],
        watermark: int,
    ) -> dict[int, repo.BudgetPeriod]:
        """The budget periods' figures. A period seen for the first time is named by its
        account on the engine (`user_data_128`: the budget), its start found among the
        periods of its entries' instants (the account's id derives from it), its figures
        summed from the entries before the watermark."""
        known = await repo.budget_periods(conn, accounts)
        missing = sorted(accounts - known.keys())
        if not missing:
            return known
        sums = await repo.seed_budget_sums(conn, missing, watermark)
        instants: dict[int, set[int]] = {}
        for e in entries:
            if e.account_id in accounts:
                instants.setdefault(e.account_id, set()).update((e.effective_at_ns, e.engine_ts))
        for account in await self.control.service.ledger.lookup_accounts(missing):
            budget = await budget_rows.get_budget(conn, account.user_data_128)
            start = 0
            if budget is not None:
                start = _period_start(budget, account.id, instants.get(account.id, set()))
            credit_limit, balance = sums.get(account.id, (0, 0))
            known[account.id] = repo.BudgetPeriod(
                account_id=account.id,
                budget_id=account.user_data_128,
                period_start_ns=start,
                credit_limit=credit_limit,
                balance=balance,
            )
        return known

    async def _write(self, conn: Connection, ctx: Context) -> int:
        await repo.save_wallet_figures(conn, list(ctx.wallets.values()))
        await repo.save_budget_periods(conn, list(ctx.budgets.values()))
        await repo.save_marks(conn, list(ctx.changed_marks.values()))
        await repo.save_rule_marks(conn, list(ctx.rules.values()))
        owners = await projection_repo.wallet_owners(
            conn, {e.wallet_id for e in ctx.emitted if e.wallet_id}
        )
        budget_owners = await projection_repo.budget_owners(
            conn, {e.budget_id for e in ctx.emitted if e.budget_id}
        )
        written = 0
        for e in ctx.emitted:
            owner = owners.get(e.wallet_id or 0) or budget_owners.get(e.budget_id or 0)
            written += await events.emit(
                conn,
                type_=e.type,
                key=e.key,
                occurred_at=datetime_of_ns(e.occurred_at_ns),
                data=e.data,
                customer_id=owner[1] if owner else None,
                wallet_id=e.wallet_id,
            )
        for crossing in ctx.crossings:
            await self._record_top_up(conn, ctx.rules[crossing.wallet_id], crossing)
        return written

    async def _record_top_up(self, conn: Connection, rule: repo.Rule, crossing: Crossing) -> None:
        crossed_at = datetime_of_ns(crossing.engine_ts)
        day = crossed_at.astimezone(dt.UTC).date()
        capped = await repo.top_ups_on(conn, rule.wallet_id, day) >= rule.daily_max
        await repo.insert_top_up(
            conn,
            repo.TopUp(
                id=top_up_id(rule.wallet_id, crossing.crossing),
                wallet_id=rule.wallet_id,
                crossing=crossing.crossing,
                state="capped" if capped else "pending",
                threshold=rule.threshold,
                amount=rule.amount,
                consideration_minor=rule.consideration_minor,
                currency=rule.currency,
                priority=rule.priority,
                expires_at=None
                if rule.expires_in_days is None
                else crossed_at + dt.timedelta(days=rule.expires_in_days),
                crossed_at=crossed_at,
                day=day,
                transfer_id=crossing.transfer_id,
            ),
        )
        if capped:
            _logger.warning(
                "top-up of wallet %s capped: %d today", id_text(rule.wallet_id), rule.daily_max
            )

    # -- top-ups ------------------------------------------------------------------------------

    async def issue_pending(self, limit: int = TOP_UPS_PER_TICK) -> int:
        """Issues the pending top-ups (the deriver's, and any a crash left): the grant through
        the control plane (key derived from the top-up: two ticks, or a retry after a crash,
        issue the one grant), then 'issued' and `top_up.issued` in one transaction, which only
        the first to finish writes (`WHERE state = 'pending'`)."""
        async with self.pool.connection() as conn:
            ids = await repo.pending_top_up_ids(conn, limit)
        issued = 0
        for top_up in ids:
            try:
                issued += await self._issue(top_up)
            except (LedgerUnavailable, LedgerUnavailableError) as error:  # the next tick retries
                _logger.warning("top-up %s not issued yet: %s", id_text(top_up), error)
            except CreditError as error:
                # A refusal is for good (the same key gets the same answer): recorded, so that
                # it is not tried again every tick and the wallet's top-ups show why.
                _logger.error("top-up %s refused: %s", id_text(top_up), error)
                async with self.pool.connection() as conn:
                    await repo.mark_refused(conn, top_up, f"{error.code}: {error}")
        return issued

    async def _issue(self, id_: int) -> int:
        async with self.pool.connection() as conn:
            top_up = await repo.get_top_up(conn, id_)
        if top_up is None or top_up.state != "pending":
            return 0
        wallet = self.control.catalog.wallets.get(top_up.wallet_id)
        if wallet is None:
            _logger.error("top-up %s: its wallet is not in the catalog", id_text(id_))
            return 0
        self._at(FAULT_BEFORE_GRANT)
        tenant = self.control.catalog.resources[wallet.resource_id].tenant
        # A block lives `expires_in_days` from its crossing; one issued late (the service was
        # down) lives as long from now, never born expired.
        now = datetime_of_ns(self.control.service.clock_ns())
        expires_at = top_up.expires_at
        if expires_at is not None and expires_at <= now:
            expires_at = now + (expires_at - top_up.crossed_at)
        result, _ = await self.control.issue_grant(
            GrantRequest(
                wallet_id=top_up.wallet_id,
                amount=top_up.amount,
                category=Category.PAID,
                consideration_minor=top_up.consideration_minor,
                currency=top_up.currency,
                priority=top_up.priority,
                expires_at=expires_at,
                source=GrantSource.PURCHASE,
                reason="automatic top-up",
                external_ref=id_text(top_up.id),
            ),
            tenant=tenant,
            key=top_up_key(top_up.id),
            actor=TOP_UP_ACTOR,
        )
        self._at(FAULT_AFTER_GRANT)
        async with self.pool.connection() as conn, conn.transaction():
            if not await repo.mark_issued(conn, top_up.id, result.grant_id):
                return 0  # another tick recorded it
            owners = await projection_repo.wallet_owners(conn, [top_up.wallet_id])
            owner = owners.get(top_up.wallet_id)
            await events.emit(
                conn,
                type_="top_up.issued",
                key=(top_up.id,),
                occurred_at=datetime_of_ns(self.control.service.clock_ns()),
                data={
                    "top_up_id": id_text(top_up.id),
                    "wallet_id": id_text(top_up.wallet_id),
                    "grant_id": id_text(result.grant_id),
                    "amount": str(top_up.amount),
                    "consideration_minor": str(top_up.consideration_minor),
                    "currency": top_up.currency,
                    "threshold": str(top_up.threshold),
                    "crossed_at": rfc3339_of(top_up.crossed_at),
                },
                customer_id=owner[1] if owner else None,
                wallet_id=top_up.wallet_id,
            )
            return 1

    async def tick(self, *, batches_max: int) -> TickReport:
        """Derives up to `batches_max` batches, then issues the pending top-ups (bounded)."""
        entries = written = batches = 0
        while batches < batches_max:
            read, emitted = await self.step()
            if not read:
                break
            entries += read
            written += emitted
            batches += 1
        issued = await self.issue_pending()
        return TickReport(entries, written, issued, batches)

    # -- grant.expiring -------------------------------------------------------------------------

    async def scan_expiring(self, at_ns: int, limit: int = GRANT_EXPIRING_SCAN_MAX) -> int:
        """Announces the active blocks with credits left that expire within the notice window
        (once per block and expiry: a changed expiry is announced again); returns how many."""
        now = datetime_of_ns(at_ns)
        through = now + dt.timedelta(seconds=self.notice_s)
        async with self.pool.connection() as conn, conn.transaction():
            blocks = await repo.expiring_blocks(conn, now, through, limit)
            owners = await projection_repo.wallet_owners(conn, {b.wallet_id for b in blocks})
            announced = 0
            for block in blocks:
                if not await repo.insert_notice(
                    conn, block.grant_id, block.expires_at, block.credits
                ):
                    continue
                if block.credits <= 0:
                    continue
                owner = owners.get(block.wallet_id)
                announced += await events.emit(
                    conn,
                    type_="grant.expiring",
                    key=(block.grant_id, block.expires_at.isoformat()),
                    occurred_at=now,
                    data={
                        "grant_id": id_text(block.grant_id),
                        "wallet_id": id_text(block.wallet_id),
                        "expires_at": rfc3339_of(block.expires_at),
                        "credits": str(block.credits),
                    },
                    customer_id=owner[1] if owner else None,
                    wallet_id=block.wallet_id,
                )
            return announced


# -- administration: thresholds and top-up rules (idempotent, audited) ----------------------------


class ThresholdView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    wallet_id: int | None
    budget_id: int | None
    amount: int | None
    percent: int | None
    created_at: dt.datetime


def _threshold_view(row: repo.Threshold) -> ThresholdView:
    return ThresholdView(
        id=row.id,
        wallet_id=row.wallet_id,
        budget_id=row.budget_id,
        amount=row.amount,
        percent=row.percent,
        created_at=row.created_at,
    )


def _check_threshold(
    control: ControlPlane,
    wallet_id: int | None,
    budget_id: int | None,
    amount: int | None,
    percent: int | None,
) -> None:
    if (wallet_id is None) == (budget_id is None):
        raise InvalidRequest("a threshold is a wallet's or a budget's")
    if wallet_id is not None and wallet_id not in control.catalog.wallets:
        raise NotFound(f"wallet {id_text(wallet_id)} not found")
    if budget_id is not None and budget_id not in control.catalog.budgets:
        raise NotFound(f"budget {id_text(budget_id)} not found")
    if budget_id is not None and (amount is not None or percent is None):
        raise InvalidRequest("a budget's threshold is a percent of its cap", field="percent")
    if (amount is None) == (percent is None):
        raise InvalidRequest(
            "give either amount or percent_of_allocation", field="percent_of_allocation"
        )
    if amount is not None and not 1 <= amount <= AMOUNT_MAX_REQUEST:
        raise InvalidRequest(f"amount must be in 1..{AMOUNT_MAX_REQUEST}", field="amount")
    top = 100 if budget_id is not None else PERCENT_OF_ALLOCATION_MAX
    if percent is not None and not 1 <= percent <= top:
        field_name = "percent" if budget_id is not None else "percent_of_allocation"
        raise InvalidRequest(f"{field_name} must be in 1..{top}", field=field_name)


async def create_threshold(
    control: ControlPlane,
    *,
    wallet_id: int | None = None,
    budget_id: int | None = None,
    amount: int | None = None,
    percent: int | None = None,
    actor: str,
    tenant: int,
    key: str,
) -> tuple[ThresholdView, bool]:
    """A threshold on a wallet (absolute credits, or a percent of its last plan allocation) or
    a budget (a percent of its cap); it fires at the next crossing, or at the next movement
    of a subject already below it."""
    _check_threshold(control, wallet_id, budget_id, amount, percent)
    threshold_id = derive_id("alerts/threshold", tenant, key)

    async def first(conn: Connection) -> None:
        count = await repo.count_thresholds(conn, wallet_id=wallet_id, budget_id=budget_id)
        if count >= THRESHOLDS_PER_SUBJECT_MAX:
            raise TooManyThresholds(
                f"at most {THRESHOLDS_PER_SUBJECT_MAX} thresholds per wallet or budget"
            )
        await repo.insert_threshold(
            conn,
            id_=threshold_id,
            wallet_id=wallet_id,
            budget_id=budget_id,
            amount=amount,
            percent=percent,
            actor=actor,
        )
        await audit.append(
            conn,
            actor=actor,
            action="threshold.create",
            object_type="threshold",
            object_id=threshold_id,
            details={
                "wallet_id": id_text(wallet_id) if wallet_id else None,
                "budget_id": id_text(budget_id) if budget_id else None,
                "amount": None if amount is None else str(amount),
                "percent": percent,
            },
        )

    async def then() -> ThresholdView:
        async with control.pool.connection() as conn:
            row = await repo.get_threshold(conn, threshold_id)
        if row is None:
            raise NotFound(f"threshold {id_text(threshold_id)} was removed")
        return _threshold_view(row)

    return await control._once(
        tenant=tenant,
        key=key,
        operation="threshold.create",
        request=(wallet_id, budget_id, amount, percent),
        first=first,
        then=then,
        result_type=ThresholdView,
    )


async def list_thresholds(
    control: ControlPlane, *, wallet_id: int | None = None, budget_id: int | None = None
) -> list[ThresholdView]:
    async with control.pool.connection() as conn:
        rows = await repo.thresholds_of(
            conn,
            wallets=[wallet_id] if wallet_id is not None else [],
            budgets=[budget_id] if budget_id is not None else [],
        )
    return [_threshold_view(r) for r in rows]


async def remove_threshold(
    control: ControlPlane,
    threshold_id: int,
    *,
    wallet_id: int | None = None,
    budget_id: int | None = None,
    actor: str,
    tenant: int,
    key: str,
) -> tuple[ThresholdView, bool]:
    """Removes a threshold of this wallet or budget (it fires no more)."""

    async def first(conn: Connection) -> None:
        row = await repo.get_threshold(conn, threshold_id)
        if row is None or row.wallet_id != wallet_id or row.budget_id != budget_id:
            raise NotFound(f"threshold {id_text(threshold_id)} not found")
        await repo.remove_threshold(conn, threshold_id)
        await audit.append(
            conn,
            actor=actor,
            action="threshold.remove",
            object_type="threshold",
            object_id=threshold_id,
        )

    async def then() -> ThresholdView:
        async with control.pool.connection() as conn:
            row = await repo.get_threshold(conn, threshold_id, removed=True)
        assert row is not None, "the claim found it"
        return _threshold_view(row)

    return await control._once(
        tenant=tenant,
        key=key,
        operation="threshold.remove",
        request=(threshold_id, wallet_id, budget_id),
        first=first,
        then=then,
        result_type=ThresholdView,
    )


class RuleView(msgspec.Struct, frozen=True, kw_only=True):
    wallet_id: int
    threshold: int
    amount: int
    consideration_minor: int
    currency: str
    priority: int
    expires_in_days: int | None
    daily_max: int
    enabled: bool
    updated_at: dt.datetime


def _rule_view(rule: repo.Rule) -> RuleView:
    return RuleView(
        wallet_id=rule.wallet_id,
        threshold=rule.threshold,
        amount=rule.amount,
        consideration_minor=rule.consideration_minor,
        currency=rule.currency,
        priority=rule.priority,
        expires_in_days=rule.expires_in_days,
        daily_max=rule.daily_max,
        enabled=rule.enabled,
        updated_at=rule.updated_at,
    )


def _check_rule(
    control: ControlPlane,
    wallet_id: int,
    *,
    threshold: int,
    amount: int,
    consideration_minor: int,
    currency: str,
    expires_in_days: int | None,
    daily_max: int,
) -> None:
    if wallet_id not in control.catalog.wallets:
        raise NotFound(f"wallet {id_text(wallet_id)} not found")
    for name, value in (("threshold", threshold), ("amount", amount)):
        if not 1 <= value <= AMOUNT_MAX_REQUEST:
            raise InvalidRequest(f"{name} must be in 1..{AMOUNT_MAX_REQUEST}", field=name)
    if not 0 <= consideration_minor <= MONEY_MINOR_MAX:
        raise InvalidRequest(
            f"consideration_minor must be in 0..{MONEY_MINOR_MAX}", field="consideration_minor"
        )
    if len(currency) != 3 or not currency.isascii() or not currency.isupper():
        raise InvalidRequest("currency is an ISO 4217 code (3 capitals)", field="currency")
    if expires_in_days is not None and not 1 <= expires_in_days <= TOP_UP_EXPIRY_DAYS_MAX:
        raise InvalidRequest(
            f"expires_in_days must be in 1..{TOP_UP_EXPIRY_DAYS_MAX}", field="expires_in_days"
        )
    if not 1 <= daily_max <= TOP_UPS_PER_DAY_MAX:
        raise InvalidRequest(f"daily_max must be in 1..{TOP_UPS_PER_DAY_MAX}", field="daily_max")


async def set_top_up_rule(
    control: ControlPlane,
    wallet_id: int,
    *,
    threshold: int,
    amount: int,
    consideration_minor: int,
    currency: str,
    daily_max: int,
    priority: int = 0,
    expires_in_days: int | None = None,
    actor: str,
    tenant: int,
    key: str,
) -> tuple[RuleView, bool]:
    """Sets (or replaces) the wallet's automatic top-up rule."""
    terms: dict[str, int | str | None] = {
        "threshold": threshold,
        "amount": amount,
        "consideration_minor": consideration_minor,
        "currency": currency,
        "expires_in_days": expires_in_days,
        "daily_max": daily_max,
    }
    _check_rule(
        control,
        wallet_id,
        threshold=threshold,
        amount=amount,
        consideration_minor=consideration_minor,
        currency=currency,
        expires_in_days=expires_in_days,
        daily_max=daily_max,
    )

    async def first(conn: Connection) -> None:
        await repo.put_rule(
            conn,
            wallet_id=wallet_id,
            threshold=threshold,
            amount=amount,
            consideration_minor=consideration_minor,
            currency=currency,
            priority=priority,
            expires_in_days=expires_in_days,
            daily_max=daily_max,
            actor=actor,
        )
        await audit.append(
            conn,
            actor=actor,
            action="top_up_rule.set",
            object_type="wallet",
            object_id=wallet_id,
            details={k: v if isinstance(v, str | None) else str(v) for k, v in terms.items()},
        )

    async def then() -> RuleView:
        async with control.pool.connection() as conn:
            rule = await repo.get_rule(conn, wallet_id)
        if rule is None:
            raise NotFound("the wallet's top-up rule was removed")
        return _rule_view(rule)

    return await control._once(
        tenant=tenant,
        key=key,
        operation="top_up_rule.set",
        request=(wallet_id, terms, priority),
        first=first,
        then=then,
        result_type=RuleView,
    )


async def get_top_up_rule(control: ControlPlane, wallet_id: int) -> RuleView:
    async with control.pool.connection() as conn:
        rule = await repo.get_rule(conn, wallet_id)
    if rule is None:
        raise NotFound(f"wallet {id_text(wallet_id)} has no top-up rule")
    return _rule_view(rule)


async def remove_top_up_rule(
    control: ControlPlane, wallet_id: int, *, actor: str, tenant: int, key: str
) -> tuple[RuleView, bool]:
    """Disables the wallet's rule (pending top-ups are still issued)."""

    async def first(conn: Connection) -> None:
        rule = await repo.get_rule(conn, wallet_id)
        if rule is None:
            raise NotFound(f"wallet {id_text(wallet_id)} has no top-up rule")
        await repo.disable_rule(conn, wallet_id)
        await audit.append(
            conn,
            actor=actor,
            action="top_up_rule.remove",
            object_type="wallet",
            object_id=wallet_id,
        )

    async def then() -> RuleView:
        async with control.pool.connection() as conn:
            rule = await repo.get_rule(conn, wallet_id, disabled=True)
        assert rule is not None, "the claim found it"
        return _rule_view(rule)

    return await control._once(
        tenant=tenant,
        key=key,
        operation="top_up_rule.remove",
        request=(wallet_id,),
        first=first,
        then=then,
        result_type=RuleView,
    )
