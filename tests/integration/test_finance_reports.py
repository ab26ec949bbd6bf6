"""The finance reports and exports (finance/exports.py) over the projection's mixed history,
posted by the poster and closed: CSV and JSON with control totals and a checksum of the bytes,
a closed month exported again byte for byte after late entries, aging tied to the rollforward,
the summary journal in the ERP layouts, and a customer filter."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
import io
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli import main
from finance import exports, periods
from finance.currencies import major
from finance.exports import ExportRequest
from finance.posting import Poster
from finance.reports import ErpMapping, Layout, Report
from ledger import db
from ledger.clock import ManualClock
from ledger.ids import operation_id
from tests.conftest import SETTINGS
from tests.integration.projection_support import (
    JANUARY_10,
    History,
    check_of,
    clocked_plane,
    january_clock,
    mixed_history,
)
from wallets.control import ControlPlane

pytestmark = pytest.mark.anyio

JANUARY = dt.date(2025, 1, 1)
FEBRUARY = dt.date(2025, 2, 1)


@pytest.fixture
def database_url(fresh_db_url: Callable[..., str], template_db: str) -> str:
    return fresh_db_url(template_db)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[db.Pool]:
    made = await db.open_pool(SETTINGS, conninfo=database_url)
    try:
        yield made
    finally:
        await db.close(made)


@pytest.fixture
def clock() -> ManualClock:
    return january_clock()


@pytest.fixture
async def plane(pool: db.Pool, clock: ManualClock) -> AsyncIterator[ControlPlane]:
    async for made in clocked_plane(pool, clock):
        yield made


async def _posted(plane: ControlPlane, clock: ManualClock) -> tuple[History, Poster]:
    history = await mixed_history(plane, clock)
    poster = Poster(plane.pool)
    await poster.catch_up()
    return history, poster


async def _close_january(plane: ControlPlane, clock: ManualClock, history: History) -> None:
    clock.advance_ns(
        int((dt.datetime(2025, 2, 1, tzinfo=dt.UTC) - JANUARY_10).total_seconds()) * 10**9
    )
    await plane.sweep(clock())
    await history.feed.catch_up()
    await history.feed.step()
    checker = check_of(plane)

    async def reconciled() -> bool:
        return (await checker.run_to_watermark()).clean

    await periods.close_period(
        plane.pool,
        JANUARY,
        actor="controller",
        clock_ns=clock,
        poster=Poster(plane.pool),
        check_projection=reconciled,
    )


def _rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


async def _csv(pool: db.Pool, report: Report, **kw: object) -> tuple[bytes, exports.Control]:
    return await exports.export_csv(pool, ExportRequest(report, JANUARY, **kw))  # type: ignore[arg-type]


async def test_every_report_exports_with_control_totals_and_the_checksum_of_its_bytes(
    plane: ControlPlane, clock: ManualClock
) -> None:
    await _posted(plane, clock)
    lines, control = await _csv(plane.pool, Report.JOURNAL_LINES)
    assert control.provisional  # January is open
    assert control.sha256 == hashlib.sha256(lines).hexdigest()
    rows = _rows(lines)
    assert control.rows == len(rows) > 0
    assert lines.startswith(b"journal_id,seq,posting_period,accounting_date,kind,line,account,")
    assert lines.endswith(b"\r\n")
    seqs = [(int(r["seq"]), int(r["line"])) for r in rows]
    assert seqs == sorted(seqs)
    for currency, totals in control.totals.items():
        debit = sum(int(r["debit"].replace(".", "")) for r in rows if r["currency"] == currency)
        credit = sum(int(r["credit"].replace(".", "")) for r in rows if r["currency"] == currency)
        assert totals == {"credit": major(credit, currency), "debit": major(debit, currency)}
        assert debit == credit  # every journal balances, so do the lines
    assert {r["posting_period"] for r in rows} == {"2025-01"}
    assert all(r["accounting_date"].endswith("Z") and r["source_transfer_ids"] for r in rows)
    # The summary's totals are the detail's, in every layout.
    for layout in Layout:
        summary, summary_control = await _csv(plane.pool, Report.SUMMARY_JOURNAL, layout=layout)
        assert summary_control.totals == control.totals, layout
        assert summary_control.sha256 == hashlib.sha256(summary).hexdigest()
    netsuite, _ = await _csv(plane.pool, Report.SUMMARY_JOURNAL, layout=Layout.NETSUITE)
    assert netsuite.startswith(
        b"External ID,Date,Subsidiary,Currency,Account,Debit,Credit,Memo\r\n"
    )
    assert _rows(netsuite)[0]["Date"] == "01/31/2025"
    qbo, _ = await _csv(
        plane.pool,
        Report.SUMMARY_JOURNAL,
        layout=Layout.QBO,
        mapping=ErpMapping(accounts={"2100": "Deferred Revenue"}),
    )
    assert qbo.startswith(
        b"Journal No,Journal Date,Currency,Account,Debits,Credits,Description,Name\r\n"
    )
    assert "Deferred Revenue" in {r["Account"] for r in _rows(qbo)}
    assert "2100" not in {r["Account"] for r in _rows(qbo)}
    # The JSON carries the same rows and the CSV's checksum.
    document = json.loads(
        await exports.export_json(plane.pool, ExportRequest(Report.JOURNAL_LINES, JANUARY))
    )
    assert document["provisional"] is True and document["period"] == "2025-01"
    assert document["control"]["sha256"] == control.sha256
    assert [dict(zip(document["columns"], r, strict=True)) for r in document["rows"]] == rows
    # Aging ties to the rollforward's closing, per currency; the check is 0.
    rolled = _rows((await _csv(plane.pool, Report.ROLLFORWARD))[0])
    assert rolled and all(r["check"] == major(0, r["currency"]) for r in rolled)
    _, aging = await _csv(plane.pool, Report.AGING)
    assert {c: t["remaining"] for c, t in aging.totals.items()} == {
        r["currency"]: r["closing"] for r in rolled if r["closing"] != major(0, r["currency"])
    }
    # Every other report answers, and the reconciliation is clean.
    for report in (Report.REVENUE, Report.BLOCKS, Report.PROMOTIONAL_MEMO):
        data, other = await _csv(plane.pool, report)
        assert other.sha256 == hashlib.sha256(data).hexdigest() and other.rows == len(_rows(data))
    unchecked = _rows((await _csv(plane.pool, Report.RECONCILIATION))[0])
    assert [r["check"] for r in unchecked] == ["ledger-projection", "summary"]
    assert "projection_check=none" in unchecked[0]["detail"]
    assert (await check_of(plane).run_to_watermark()).clean
    memo = _rows((await _csv(plane.pool, Report.PROMOTIONAL_MEMO))[0])
    assert ("granted", "100") in {(r["kind"], r["credits"]) for r in memo}
    reconciliation = _rows((await _csv(plane.pool, Report.RECONCILIATION))[0])
    assert [r["check"] for r in reconciliation] == ["summary"], reconciliation


async def test_a_closed_month_exports_the_same_bytes_after_late_entries(
    plane: ControlPlane, clock: ManualClock, tmp_path: Path
) -> None:
    history, poster = await _posted(plane, clock)
    await _close_january(plane, clock, history)
    before = {report: await _csv(plane.pool, report) for report in Report}
    assert not before[Report.JOURNAL_LINES][1].provisional
    # A late usage refund of January's debit: booked in February as an adjustment of January.
    await plane.refund(operation_id(7, "d2"), 40, tenant=7, key="late", actor="a")
    await history.feed.catch_up()
    await poster.catch_up()
    for report in Report:
        assert await _csv(plane.pool, report) == before[report], report
    february = _rows(
        (await exports.export_csv(plane.pool, ExportRequest(Report.JOURNAL_LINES, FEBRUARY)))[0]
    )
    assert {r["adjusts_period"] for r in february if r["kind"] == "correction"} == {"2025-01"}
    reconciliation = _rows(before[Report.RECONCILIATION][0])
    assert [r["check"] for r in reconciliation] == ["summary"], reconciliation
    # The control of a file: what the CLI writes beside it.
    out = tmp_path / "lines.csv"
    with out.open("wb") as f:
        control = await exports.write_csv(
            plane.pool, ExportRequest(Report.JOURNAL_LINES, JANUARY), f
        )
    assert hashlib.sha256(out.read_bytes()).hexdigest() == control.sha256
    assert json.loads(exports.control_json(control))["rows"] == control.rows


async def test_a_customer_filter_keeps_its_rows_only(
    plane: ControlPlane, clock: ManualClock
) -> None:
    await _posted(plane, clock)
    data, _ = await _csv(plane.pool, Report.JOURNAL_LINES)
    customers = {r["customer_id"] for r in _rows(data)}
    assert customers
    one = sorted(customers)[0]
    import uuid

    mine, mine_control = await _csv(
        plane.pool, Report.JOURNAL_LINES, customer_id=uuid.UUID(one).int
    )
    assert {r["customer_id"] for r in _rows(mine)} == {one}
    assert mine_control.customer_id == one
    nobody, _ = await _csv(plane.pool, Report.REVENUE, customer_id=12345)
    assert _rows(nobody) == []


async def _cli(database_url: str, tmp_path: Path, *args: str) -> Result:
    env = {"DATABASE_URL": database_url, "CREDIT_LEDGER_DATA_DIR": str(tmp_path / "data")}
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=env)


async def test_the_commands_export_close_and_list(
    plane: ControlPlane, clock: ManualClock, database_url: str, tmp_path: Path
) -> None:
    history = await mixed_history(plane, clock)
    posted = await _cli(database_url, tmp_path, "finance", "post")
    assert posted.exit_code == 0, posted.output
    assert "caught up" in posted.output
    await _close_january(plane, clock, history)
    listed = await _cli(database_url, tmp_path, "period", "list")
    assert listed.exit_code == 0 and "2025-01  closed" in listed.output, listed.output
    out = tmp_path / "jan.csv"
    done = await _cli(
        database_url, tmp_path, "export", "journal-lines", "--period", "2025-01", "--out", str(out)
    )
    assert done.exit_code == 0, done.output
    expected, control = await _csv(plane.pool, Report.JOURNAL_LINES)
    assert out.read_bytes() == expected
    beside = json.loads((tmp_path / "jan.csv.control.json").read_text())
    assert beside["sha256"] == control.sha256 == hashlib.sha256(expected).hexdigest()
    assert beside["provisional"] is False and beside["rows"] == control.rows
    assert "final" in done.output
    as_json = await _cli(
        database_url, tmp_path, "export", "rollforward", "--period", "2025-01", "--format", "json"
    )
    assert json.loads(as_json.stdout)["report"] == "rollforward"
    bad = await _cli(database_url, tmp_path, "export", "aging", "--period", "2025-13")
    assert bad.exit_code == 2 and "--period" in bad.output
    layout = await _cli(
        database_url, tmp_path, "export", "aging", "--period", "2025-01", "--layout", "qbo"
    )
    assert layout.exit_code == 2 and "summary-journal" in layout.output
    locked = await _cli(database_url, tmp_path, "period", "lock", "2025-01", "--actor", "cfo")
    assert locked.exit_code == 0 and "locked" in locked.output, locked.output
    refused = await _cli(database_url, tmp_path, "period", "lock", "2025-02")
    assert refused.exit_code == 1 and "period_not_closed" in refused.output
