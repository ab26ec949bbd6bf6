"""Dimensions are never lost (issue 10): `credit-ledger serve` under mixed load (debits, batches,
reservations settled in part, in full, beyond what they hold, after their timeout, released or
left to time out; usage refunds; random dimensions), its server process SIGKILLed and started
again, and in other rounds only its engine process, or only its projection feed process. Every
call that got no answer or a 503 is sent again with its key and body until acknowledged. Then,
once the projection has caught up, every acknowledged operation is in `ledger_entries` with its
amounts, its wallet and exactly the dimensions it was sent with, and nothing else is there; the
usage rollups add up per dimension set; the engine's `consumed` agrees.

The loop is `bench.projection_kill` (`python -m bench.projection_kill` runs it longer). Bounded
for CI: KILL_ROUNDS kills (6 by default: two of each process), KILL_LOAD_S seconds of load
around each (1.5), KILL_WORKERS threads of load (4); KILL_LATE_SETTLES is the share of the
reservations left to time out that are settled after it (0.3).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest

from bench import projection_kill as loop

ROUNDS = int(os.environ.get("KILL_ROUNDS", "6"))
LOAD_S = float(os.environ.get("KILL_LOAD_S", "1.5"))
WORKERS = int(os.environ.get("KILL_WORKERS", "4"))
LATE_SETTLES = float(os.environ.get("KILL_LATE_SETTLES", str(loop.LATE_SETTLES)))

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="finds the server's children in /proc (Linux)"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> loop.Run:
    data_dir = tmp_path_factory.mktemp("projection-kill")
    settings = loop.Settings(
        kills=ROUNDS, workers=WORKERS, load_s=LOAD_S, late_settles=LATE_SETTLES
    )
    result = loop.run(settings, data_dir, log=sys.stderr)
    print(loop.report(result), file=sys.stderr)
    return result


def test_every_acknowledged_operation_is_projected_with_its_dimensions(run: loop.Run) -> None:
    findings = run.findings
    assert run.book.anomalies == []
    assert findings.clean, loop.report(run)
    assert findings.entries >= sum(findings.acknowledged.values())
    assert run.stopped_with == 0


def test_the_kills_happened_under_load(run: loop.Run) -> None:
    """Each kind of kill happened (the feed's when serve runs it beside itself, as it does on
    a data directory whose socket path is short enough), the server's children ended with it,
    calls were cut short by the kills, and every kind of operation was acknowledged."""
    cycle = ("server", "engine", "feed") if run.feed_beside else ("server", "engine")
    assert [k.target for k in run.kills] == [cycle[n % len(cycle)] for n in range(ROUNDS)]
    assert all(k.children_ended for k in run.kills if k.target == "server")
    assert sum(run.book.retried.values()) > 0
    kinds = {"debit", "batch_debit", "reserve", "reserve_timeout", "settle", "release", "refund"}
    kinds |= {"settle_late"} if LATE_SETTLES else set()
    assert kinds <= set(run.findings.acknowledged), run.findings.acknowledged


def test_the_comparison_sees_what_is_lost_added_or_relabelled(run: loop.Run) -> None:
    """The comparison is not vacuous: an entry left out, one of an operation never acknowledged,
    one with other dimensions, a set without its row, an entry twice: each shows up."""
    rows = list(run.rows)
    book = run.book
    consumed = run.findings.engine_consumed
    usage = loop.expected_usage(book)

    def findings(changed: list[tuple[object, ...]]) -> loop.Findings:
        return loop.findings_of(book, changed, 0, usage, consumed)

    assert findings(rows).clean
    debit = next(i for i, r in enumerate(rows) if r[1] == "debit" and r[6] is not None)
    op, dimensions = rows[debit][0], rows[debit][6]
    lost = findings(rows[:debit] + rows[debit + 1 :])
    assert (op, "debit", "funds") in {k for k, _, _ in lost.amounts_differ} | set(lost.missing)
    stranger = findings([*rows, ("00000000-0000-0000-0000-000000000001", *rows[debit][1:])])
    assert stranger.extra == [("00000000-0000-0000-0000-000000000001", "debit", "funds")]

    def with_field(index: int, value: object) -> list[tuple[object, ...]]:
        changed = list(rows)
        changed[debit] = (*rows[debit][:index], value, *rows[debit][index + 1 :])
        return changed

    assert (
        len(findings(with_field(6, {**dimensions, "feature": "not-sent"})).dimensions_differ) == 1
    )
    assert "has no row" in findings(with_field(6, None)).dimensions_differ[0]
    assert len(findings(with_field(8, None)).wallets_differ) == 1
    assert len(findings([*rows, rows[debit]]).amounts_differ) == 1
    assert not dataclasses.replace(run.findings, rollups_differ=["x"]).clean
