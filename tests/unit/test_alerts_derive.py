"""The pure half of the alerts deriver (wallets.alerts.derive): crossings per operation, once
per crossing, re-armed on recovery; no I/O."""

from __future__ import annotations

import datetime as dt

from ledger.repositories.alerts import (
    AlertEntry,
    BudgetPeriod,
    Mark,
    Rule,
    Threshold,
    WalletFigures,
)
from wallets.alerts import Context, derive, wallet_level

WALLET = 10
BLOCK = 11
OVERDRAFT = 12
BUDGET = 20
PERIOD = 21
NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def _entry(
    transfer: int,
    kind: str,
    amount: int,
    *,
    pending: int = 0,
    account: int = BLOCK,
    account_kind: str = "block",
    operation: int = 0,
    reservation: int = 0,
) -> AlertEntry:
    return AlertEntry(
        transfer_id=transfer,
        kind=kind,
        engine_ts=1000 + transfer,
        account_id=account,
        account_kind=account_kind,
        wallet_id=WALLET,
        operation_id=operation,
        reservation_id=reservation,
        amount=amount,
        pending=pending,
    )


def _threshold(id_: int, *, amount: int | None = None, percent: int | None = None) -> Threshold:
    return Threshold(
        id=id_,
        wallet_id=WALLET,
        budget_id=None,
        amount=amount,
        percent=percent,
        actor="a",
        created_at=NOW,
    )


def _context(*thresholds: Threshold, available: int = 0, rule: Rule | None = None) -> Context:
    return Context(
        block_wallets={BLOCK: WALLET},
        overdraft_wallets={OVERDRAFT: WALLET},
        wallets={WALLET: WalletFigures(wallet_id=WALLET, available=available)},
        budgets={},
        thresholds=list(thresholds),
        marks={},
        allocations={},
        rules={} if rule is None else {WALLET: rule},
    )


def _types(ctx: Context) -> list[str]:
    return [e.type for e in ctx.emitted]


def test_many_debits_below_the_line_are_one_crossing() -> None:
    ctx = _context(_threshold(1, amount=100), available=200)
    derive([_entry(n, "debit", -30) for n in range(1, 7)], ctx)  # 170 ... 20
    assert _types(ctx) == ["balance.low"]
    assert ctx.emitted[0].data["available"] == "80"
    derive([_entry(7, "grant", 500), _entry(8, "debit", -500)], ctx)  # back above, then below
    assert [e.key for e in ctx.emitted if e.type == "balance.low"] == [
        ("threshold", 1, WALLET, 1),
        ("threshold", 1, WALLET, 2),
    ]
    derive([_entry(9, "debit", -20)], ctx)  # 20 -> 0
    assert _types(ctx)[-1] == "balance.depleted"
    assert _types(ctx).count("balance.low") == 2


def test_one_operation_is_compared_once() -> None:
    """A grant that repays the deficit is one operation: its transient figure re-arms
    nothing."""
    ctx = _context(_threshold(1, amount=100), available=0)
    ctx.marks[(1, WALLET)] = Mark(threshold_id=1, subject_id=WALLET, armed=False, crossings=1)
    ctx.wallets[WALLET].deficit = 80
    derive(
        [
            _entry(1, "grant", 150, operation=99),
            _entry(2, "overdraft_repay", -80, operation=99),
            _entry(
                2, "overdraft_repay", 80, account=OVERDRAFT, account_kind="overdraft", operation=99
            ),
        ],
        ctx,
    )
    assert _types(ctx) == ["overdraft.repaid"]  # 70 left: still below 100, not a new crossing
    assert ctx.marks[(1, WALLET)].armed is False


def test_a_percent_threshold_needs_an_allocation() -> None:
    share = _threshold(1, percent=25)
    assert wallet_level(share, None) is None
    assert wallet_level(share, 1000) == 250
    ctx = _context(share, available=300)
    derive([_entry(1, "debit", -100)], ctx)
    assert ctx.emitted == []
    ctx.allocations[WALLET] = 1000
    derive([_entry(2, "debit", -1)], ctx)
    assert _types(ctx) == ["balance.low"]


def test_a_rule_crosses_once_until_it_recovers() -> None:
    rule = Rule(
        wallet_id=WALLET,
        threshold=100,
        amount=500,
        consideration_minor=0,
        currency="USD",
        priority=0,
        expires_in_days=None,
        daily_max=1,
        enabled=True,
        armed=True,
        crossings=0,
        actor="a",
        created_at=NOW,
        updated_at=NOW,
    )
    ctx = _context(available=120, rule=rule)
    derive([_entry(n, "debit", -10) for n in range(1, 21)], ctx)
    assert [c.crossing for c in ctx.crossings] == [1]
    derive([_entry(30, "grant", 500), _entry(31, "debit", -600)], ctx)
    assert [c.crossing for c in ctx.crossings] == [1, 2]


def test_budget_threshold_and_exceeded() -> None:
    ctx = _context()
    ctx.budgets[PERIOD] = BudgetPeriod(account_id=PERIOD, budget_id=BUDGET, period_start_ns=0)
    ctx.thresholds = [
        Threshold(
            id=5,
            wallet_id=None,
            budget_id=BUDGET,
            amount=None,
            percent=50,
            actor="a",
            created_at=NOW,
        )
    ]

    def spend(transfer: int, amount: int, kind: str = "budget_usage") -> AlertEntry:
        return _entry(transfer, kind, amount, account=PERIOD, account_kind="budget")

    derive([spend(1, 100, "budget_limit"), spend(2, -40), spend(3, -20), spend(4, -30)], ctx)
    assert _types(ctx) == ["budget.threshold_reached"]
    assert ctx.emitted[0].data["used"] == "60"
    derive([spend(5, -10)], ctx)
    assert _types(ctx) == ["budget.threshold_reached", "budget.exceeded"]


def test_timeouts_and_expiry() -> None:
    ctx = _context(available=100)
    derive(
        [
            _entry(1, "reserve", 0, pending=40, operation=7, reservation=7),
            _entry(2, "timeout", 0, pending=-40, operation=7, reservation=7),
            _entry(3, "expire", -100),
        ],
        ctx,
    )
    assert _types(ctx) == ["reservation.timed_out", "grant.expired", "balance.depleted"]
    assert ctx.emitted[0].data["credits"] == "40"
