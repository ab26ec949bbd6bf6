"""The finance reports' shapes: columns and rows of text, and their control totals (pure: what
the reports read comes from ledger/repositories/finance_reports.py and finance.balances;
finance/exports.py reads and writes them). finance/README.md lists every report's columns.

Invariants:
- Money is printed in major units with the fixed decimals of its currency (finance.currencies),
  times in ISO-8601 UTC (`2025-01-10T09:00:00Z`), periods as `YYYY-MM`; nothing depends on
  when a report is generated, so the same rows are the same bytes.
- Control totals are summed from the integers (minor units, credits), never from the text.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Final

import msgspec

from finance import periods
from finance import recognition as rec
from finance.balances import BlockBalance, RollforwardRow
from finance.currencies import major
from grants.errors import InvalidRequest
from ledger.ids import id_text
from ledger.repositories import finance_reports as rows


class Report(enum.StrEnum):
    JOURNAL_LINES = "journal-lines"
    SUMMARY_JOURNAL = "summary-journal"
    ROLLFORWARD = "rollforward"
    REVENUE = "revenue"
    AGING = "aging"
    BLOCKS = "blocks"
    PROMOTIONAL_MEMO = "promotional-memo"
    RECONCILIATION = "reconciliation"


class Layout(enum.StrEnum):
    GENERIC = "generic"
    NETSUITE = "netsuite"
    QBO = "qbo"


# Revenue accounts and the type each is reported as.
REVENUE_TYPES: Final = {
    rec.REVENUE_USAGE: "usage",
    rec.REVENUE_BREAKAGE: "breakage",
    rec.CONTRA_REVENUE: "contra",
}
# Aging buckets: (name, last day inclusive), days after the period's end; past due counts in
# the first.
AGING_BUCKETS: Final = (
    ("0-30", 30),
    ("31-90", 90),
    ("91-180", 180),
    ("181-365", 365),
    (">365", None),
)
NO_EXPIRY: Final = "no-expiry"
_MONTH: Final = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
_DAY_S: Final = 86_400


def parse_period(text: str) -> dt.date:
    """`YYYY-MM` as the month's first day; anything else is 422 naming `period`."""
    if not _MONTH.fullmatch(text):
        raise InvalidRequest(f"a period is a month written YYYY-MM, not {text!r}", field="period")
    return periods.parse_period(text)


def parse_report(text: str) -> Report:
    try:
        return Report(text)
    except ValueError:
        names = ", ".join(r.value for r in Report)
        raise InvalidRequest(f"no report {text!r} (one of {names})", field="report") from None


def parse_layout(text: str, report: Report) -> Layout:
    try:
        layout = Layout(text)
    except ValueError:
        names = ", ".join(x.value for x in Layout)
        raise InvalidRequest(f"no layout {text!r} (one of {names})", field="layout") from None
    if layout is not Layout.GENERIC and report is not Report.SUMMARY_JOURNAL:
        raise InvalidRequest(
            f"the {layout} layout is for the summary-journal report only", field="layout"
        )
    return layout


def month(period: dt.date) -> str:
    return f"{period.year:04d}-{period.month:02d}"


def period_end(period: dt.date) -> dt.datetime:
    """The instant a period ends (the next month's first instant, UTC)."""
    following = dt.date(period.year + period.month // 12, period.month % 12 + 1, 1)
    return dt.datetime(following.year, following.month, 1, tzinfo=dt.UTC)


def iso(at: dt.datetime | None) -> str:
    """ISO-8601 in UTC with a Z; microseconds only when there are some."""
    if at is None:
        return ""
    at = at.astimezone(dt.UTC)
    spec = "seconds" if at.microsecond == 0 else "microseconds"
    return at.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def _id(value: int | None) -> str:
    return "" if not value else id_text(value)


def _money(amount: int | None, currency: str | None) -> str:
    return "" if amount is None or not currency else major(amount, currency)


def _decimal(value: Decimal | None) -> str:
    return "" if value is None else format(value.normalize(), "f")


class Totals:
    """Control totals: sums of amount columns per group (a currency, or a credit type for
    credits), kept as integers and printed at the end."""

    def __init__(self, money: bool = True) -> None:
        self.money = money
        self.rows = 0
        self._sums: dict[str, dict[str, int]] = {}

    def add(self, group: str, **amounts: int | None) -> None:
        sums = self._sums.setdefault(group, {})
        for name, value in amounts.items():
            sums[name] = sums.get(name, 0) + (value or 0)

    def raw(self) -> dict[str, dict[str, int]]:
        return {group: dict(sums) for group, sums in self._sums.items()}

    def rendered(self) -> dict[str, dict[str, str]]:
        return {
            group: {
                name: major(value, group) if self.money and group else str(value)
                for name, value in sorted(sums.items())
            }
            for group, sums in sorted(self._sums.items())
        }


class Table(msgspec.Struct):
    """A report's rows as text, its columns, and its control totals."""

    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    totals: dict[str, dict[str, str]]
    extra: dict[str, int] = msgspec.field(default_factory=dict)


# -- journal lines ---------------------------------------------------------------------------------

JOURNAL_LINE_COLUMNS: Final = (
    "journal_id",
    "seq",
    "posting_period",
    "accounting_date",
    "kind",
    "line",
    "account",
    "account_name",
    "debit",
    "credit",
    "currency",
    "functional_debit",
    "functional_credit",
    "functional_currency",
    "credits",
    "block_id",
    "customer_id",
    "credit_type_id",
    "credit_type",
    "wallet_id",
    "resource_id",
    "operation_id",
    "source_transfer_ids",
    "actor",
    "reason",
    "adjusts_period",
)


def journal_line_row(
    line: rows.LineRecord, functional_currency: str, totals: Totals
) -> tuple[str, ...]:
    totals.rows += 1
    totals.add(line.currency, debit=line.debit_minor, credit=line.credit_minor)
    return (
        id_text(line.journal_id),
        str(line.seq),
        month(line.posting_period),
        iso(line.accounting_date),
        line.kind,
        str(line.line),
        line.account,
        rec.ACCOUNTS.get(line.account, ""),
        major(line.debit_minor, line.currency),
        major(line.credit_minor, line.currency),
        line.currency,
        _money(line.functional_debit_minor, functional_currency),
        _money(line.functional_credit_minor, functional_currency),
        functional_currency,
        str(line.credits),
        id_text(line.block_id),
        _id(line.customer_id),
        str(line.credit_type_id),
        line.credit_type,
        _id(line.wallet_id),
        _id(line.resource_id),
        _id(line.operation_id),
        " ".join(id_text(t) for t in line.source_transfer_ids),
        line.actor,
        line.reason,
        "" if line.adjusts_period is None else month(line.adjusts_period),
    )


# -- summary journal -------------------------------------------------------------------------------

SUMMARY_COLUMNS: Final = {
    Layout.GENERIC: (
        "period",
        "account",
        "account_name",
        "erp_account",
        "currency",
        "credit_type_id",
        "credit_type",
        "debit",
        "credit",
        "functional_debit",
        "functional_credit",
        "functional_currency",
        "lines",
    ),
    # NetSuite's journal entry CSV import (Transactions > Financial > Make Journal Entries >
    # Import): one entry per External ID, at least two lines, debits = credits.
    Layout.NETSUITE: (
        "External ID",
        "Date",
        "Subsidiary",
        "Currency",
        "Account",
        "Debit",
        "Credit",
        "Memo",
    ),
    # QuickBooks Online's journal entry import (Settings > Import data > Journal entries).
    Layout.QBO: (
        "Journal No",
        "Journal Date",
        "Currency",
        "Account",
        "Debits",
        "Credits",
        "Description",
        "Name",
    ),
}


class ErpMapping(msgspec.Struct, frozen=True):
    """How the default chart's accounts are named in the ERP (identity unless configured), and
    NetSuite's subsidiary (empty unless configured)."""

    accounts: dict[str, str] = msgspec.field(default_factory=dict)
    subsidiary: str = ""

    def account(self, code: str) -> str:
        return self.accounts.get(code, code)


def erp_date(period: dt.date) -> str:
    """The period's last day as the ERP imports take a date by default (MM/DD/YYYY)."""
    last = period_end(period).date() - dt.timedelta(days=1)
    return f"{last.month:02d}/{last.day:02d}/{last.year:04d}"


def summary_table(
    records: Sequence[rows.SummaryRecord],
    period: dt.date,
    layout: Layout,
    mapping: ErpMapping,
    functional_currency: str,
) -> Table:
    """The period's lines per account x currency x product. The ERP layouts make one journal
    entry per currency (`CL-YYYY-MM-CUR`, dated the period's last day) whose lines carry the
    gross debits and credits (a debit line and a credit line when an account has both), so
    every layout's control totals equal the journal lines'."""
    totals = Totals()
    out: list[tuple[str, ...]] = []
    for s in records:
        totals.add(s.currency, debit=s.debit_minor, credit=s.credit_minor)
        if layout is Layout.GENERIC:
            out.append(
                (
                    month(period),
                    s.account,
                    rec.ACCOUNTS.get(s.account, ""),
                    mapping.account(s.account),
                    s.currency,
                    str(s.credit_type_id),
                    s.credit_type,
                    major(s.debit_minor, s.currency),
                    major(s.credit_minor, s.currency),
                    _money(s.functional_debit_minor, functional_currency),
                    _money(s.functional_credit_minor, functional_currency),
                    functional_currency,
                    str(s.lines),
                )
            )
            continue
        entry = f"CL-{month(period)}-{s.currency}"
        memo = f"credit-ledger {month(period)} {rec.ACCOUNTS.get(s.account, s.account)}"
        memo += f" ({s.credit_type})"
        for debit, credit in ((s.debit_minor, 0), (0, s.credit_minor)):
            if not debit and not credit:
                continue
            amounts = (
                major(debit, s.currency) if debit else "",
                major(credit, s.currency) if credit else "",
            )
            if layout is Layout.NETSUITE:
                out.append(
                    (
                        entry,
                        erp_date(period),
                        mapping.subsidiary,
                        s.currency,
                        mapping.account(s.account),
                        *amounts,
                        memo,
                    )
                )
            else:
                account = mapping.account(s.account)
                out.append((entry, erp_date(period), s.currency, account, *amounts, memo, ""))
    totals.rows = len(out)
    return Table(SUMMARY_COLUMNS[layout], out, totals.rendered())


# -- rollforward -----------------------------------------------------------------------------------

ROLLFORWARD_COLUMNS: Final = (
    "period",
    "currency",
    "opening",
    "additions",
    "usage",
    "breakage",
    "refunds",
    "adjustments",
    "closing",
    "check",
    "recognized_from_opening",
)


def rollforward_table(records: Iterable[RollforwardRow], period: dt.date) -> Table:
    totals = Totals()
    out: list[tuple[str, ...]] = []
    for r in sorted(records, key=lambda x: x.currency):
        c = r.currency
        totals.rows += 1
        totals.add(c, opening=r.opening_minor, closing=r.closing_minor, check=r.check_minor)
        out.append(
            (
                month(period),
                c,
                major(r.opening_minor, c),
                major(r.additions_minor, c),
                major(r.usage_minor, c),
                major(r.breakage_minor, c),
                major(r.refunds_minor, c),
                major(r.adjustments_minor, c),
                major(r.closing_minor, c),
                major(r.check_minor, c),
                major(r.from_opening_minor, c),
            )
        )
    return Table(ROLLFORWARD_COLUMNS, out, totals.rendered())


# -- revenue ---------------------------------------------------------------------------------------

REVENUE_COLUMNS: Final = (
    "period",
    "customer_id",
    "credit_type_id",
    "credit_type",
    "type",
    "account",
    "currency",
    "debit",
    "credit",
    "revenue",
)


def revenue_table(records: Iterable[rows.RevenueRecord], period: dt.date) -> Table:
    """Net revenue (credits less debits: contra revenue is negative) per customer x product x
    type x currency."""
    totals = Totals()
    out: list[tuple[str, ...]] = []
    for r in records:
        net = r.credit_minor - r.debit_minor
        kind = REVENUE_TYPES[r.account]
        totals.rows += 1
        totals.add(r.currency, revenue=net, **{kind: net})
        out.append(
            (
                month(period),
                _id(r.customer_id),
                str(r.credit_type_id),
                r.credit_type,
                kind,
                r.account,
                r.currency,
                major(r.debit_minor, r.currency),
                major(r.credit_minor, r.currency),
                major(net, r.currency),
            )
        )
    return Table(REVENUE_COLUMNS, out, totals.rendered())


# -- aging and the block register ------------------------------------------------------------------


AGING_COLUMNS: Final = ("period", "currency", "bucket", "blocks", "remaining")


def bucket_of(expires_at: dt.datetime | None, end: dt.datetime) -> str:
    """The aging bucket of a remaining obligation: days from the period's end to its expiry
    (a part of a day counts as a day; past due counts in the first bucket)."""
    if expires_at is None:
        return NO_EXPIRY
    seconds = (expires_at - end).total_seconds()
    days = max(0, -(-int(seconds) // _DAY_S))
    for name, last in AGING_BUCKETS:
        if last is None or days <= last:
            return name
    raise AssertionError("the last bucket is open")


def aging_table(balances: Iterable[BlockBalance], period: dt.date) -> Table:
    """Remaining obligation per currency x bucket; every bucket of every currency is a row (0
    where nothing falls in it), so that the totals tie to the rollforward's closing."""
    end = period_end(period)
    sums: dict[str, dict[str, list[int]]] = {}
    names = [name for name, _ in AGING_BUCKETS] + [NO_EXPIRY]
    for b in balances:
        if b.remaining_minor == 0:
            continue
        by_bucket = sums.setdefault(b.currency, {name: [0, 0] for name in names})
        cell = by_bucket[bucket_of(b.expires_at, end)]
        cell[0] += 1
        cell[1] += b.remaining_minor
    totals = Totals()
    out: list[tuple[str, ...]] = []
    for currency, by_bucket in sorted(sums.items()):
        for name in names:
            count, remaining = by_bucket[name]
            totals.rows += 1
            totals.add(currency, remaining=remaining)
            out.append((month(period), currency, name, str(count), major(remaining, currency)))
    return Table(AGING_COLUMNS, out, totals.rendered())


BLOCK_COLUMNS: Final = (
    "period",
    "block_id",
    "customer_id",
    "credit_type_id",
    "credit_type",
    "currency",
    "credits",
    "consideration",
    "exchange_rate",
    "effective_at",
    "expires_at",
    "method",
    "breakage_rate",
    "opening",
    "recognized",
    "closing",
)


def blocks_table(
    balances: Iterable[BlockBalance],
    terms: Mapping[int, rows.BlockTerms],
    period: dt.date,
) -> Table:
    totals = Totals()
    out: list[tuple[str, ...]] = []
    for b in sorted(balances, key=lambda x: (x.customer_id, x.block_id)):
        t = terms.get(b.block_id)
        c = b.currency
        totals.rows += 1
        totals.add(c, opening=b.opening_minor, recognized=b.recognized_minor)
        totals.add(c, closing=b.remaining_minor)
        out.append(
            (
                month(period),
                id_text(b.block_id),
                _id(b.customer_id),
                str(b.credit_type_id),
                "" if t is None else t.credit_type,
                c,
                "" if t is None else str(t.credits),
                "" if t is None else major(t.consideration_minor, c),
                "" if t is None else _decimal(t.exchange_rate),
                "" if t is None else iso(t.effective_at),
                iso(b.expires_at),
                "" if t is None else t.method,
                "" if t is None else _decimal(t.rate),
                major(b.opening_minor, c),
                major(b.recognized_minor, c),
                major(b.remaining_minor, c),
            )
        )
    return Table(BLOCK_COLUMNS, out, totals.rendered())


# -- promotional memo ------------------------------------------------------------------------------

MEMO_COLUMNS: Final = (
    "period",
    "block_id",
    "customer_id",
    "credit_type_id",
    "credit_type",
    "kind",
    "credits",
    "entries",
)


def memo_table(records: Iterable[rows.MemoRecord], period: dt.date) -> Table:
    """Promotional credits per block x kind, in credits (no money: they have no consideration).
    Totals per credit type and kind."""
    totals = Totals(money=False)
    out: list[tuple[str, ...]] = []
    for m in records:
        totals.rows += 1
        totals.add(m.credit_type, **{m.kind: m.credits})
        out.append(
            (
                month(period),
                id_text(m.block_id),
                _id(m.customer_id),
                str(m.credit_type_id),
                m.credit_type,
                m.kind,
                str(m.credits),
                str(m.rows),
            )
        )
    return Table(MEMO_COLUMNS, out, totals.rendered())


# -- reconciliation --------------------------------------------------------------------------------

RECONCILIATION_COLUMNS: Final = (
    "period",
    "check",
    "block_id",
    "customer_id",
    "currency",
    "expected",
    "actual",
    "difference",
    "detail",
)


class LiabilityAtClose(msgspec.Struct, frozen=True):
    """A closed period's per-block check: its journals' 2100 balance through the period
    against the remaining obligation the close stored."""

    block_id: int
    customer_id: int | None
    currency: str
    stored_minor: int
    journal_minor: int


def reconciliation_table(
    period: dt.date,
    *,
    projection: Mapping[str, str],
    projection_clean: bool,
    checks: Sequence[rows.BlockCheck] = (),
    at_close: Sequence[LiabilityAtClose] = (),
) -> Table:
    """Rows only for differences, then one summary row. `projection` describes the ledger ↔
    projection check (the latest run, or the one a closed period stored); `checks` are the
    open period's blocks (projection ↔ finance credits, journals ↔ finance liability);
    `at_close` a closed period's (journals ↔ the stored remaining obligation)."""
    p = month(period)
    out: list[tuple[str, ...]] = []
    detail = " ".join(f"{k}={v}" for k, v in sorted(projection.items()))
    if not projection_clean:
        out.append((p, "ledger-projection", "", "", "", "clean", "not clean", "", detail))
    for c in checks:
        if c.finance_credits is None or c.projected_credits != c.finance_credits:
            actual = "" if c.finance_credits is None else str(c.finance_credits)
            difference = (
                "" if c.finance_credits is None else str(c.finance_credits - c.projected_credits)
            )
            out.append(
                (
                    p,
                    "projection-finance-credits",
                    id_text(c.block_id),
                    _id(c.customer_id),
                    c.currency or "",
                    str(c.projected_credits),
                    actual,
                    difference,
                    "" if c.finance_credits is not None else "no finance block",
                )
            )
        if c.category == "paid" and c.currency and c.expected_liability_minor is not None:
            if c.journal_liability_minor != c.expected_liability_minor:
                out.append(
                    (
                        p,
                        "journals-liability",
                        id_text(c.block_id),
                        _id(c.customer_id),
                        c.currency,
                        major(c.expected_liability_minor, c.currency),
                        major(c.journal_liability_minor, c.currency),
                        major(c.journal_liability_minor - c.expected_liability_minor, c.currency),
                        "",
                    )
                )
    for a in at_close:
        if a.journal_minor != a.stored_minor:
            out.append(
                (
                    p,
                    "journals-liability",
                    id_text(a.block_id),
                    _id(a.customer_id),
                    a.currency,
                    major(a.stored_minor, a.currency),
                    major(a.journal_minor, a.currency),
                    major(a.journal_minor - a.stored_minor, a.currency),
                    "stored at close",
                )
            )
    differences = len(out)
    blocks = len(checks) + len(at_close)
    summary = f"blocks={blocks} differences={differences}"
    out.append((p, "summary", "", "", "", "0", str(differences), "", f"{summary} {detail}"))
    return Table(
        RECONCILIATION_COLUMNS,
        out,
        {"": {"blocks": str(blocks), "differences": str(differences)}},
        extra={"differences": differences, "blocks": blocks},
    )
