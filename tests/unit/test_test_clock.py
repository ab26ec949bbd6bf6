"""The test clock: frozen, forward only, durable in the engine's data directory, shared by every
process that opens it; a data directory runs on one clock for its whole life."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.clock import (
    TEST_CLOCK_FILE,
    ClockMismatch,
    TestClock,
    business_clock,
    read_instant,
    refuse_wall_clock_on,
    wall_clock_ns,
)
from ledger.codes import AccountCode
from ledger.embedded import EmbeddedEngine
from ledger.types import Account

S = 1_000_000_000
JAN_1 = 1_735_689_600 * S  # 2025-01-01T00:00:00Z


def test_it_stands_still_until_advanced_and_never_goes_back() -> None:
    clock = TestClock(JAN_1)
    assert clock() == clock() == JAN_1
    assert clock.advance_to(JAN_1 + 5 * S) == JAN_1 + 5 * S
    assert clock() == JAN_1 + 5 * S
    assert clock.advance_to(JAN_1 + 5 * S) == JAN_1 + 5 * S  # where it stands: nothing moves
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance_to(JAN_1)
    assert clock() == JAN_1 + 5 * S


def test_it_is_kept_in_the_data_directory_and_resumes_where_it_stood(tmp_path: Path) -> None:
    clock = TestClock.start(tmp_path, JAN_1)
    assert read_instant(tmp_path / TEST_CLOCK_FILE) == JAN_1
    clock.advance_to(JAN_1 + 86_400 * S)
    # A restart: an earlier START is ignored, a later one moves it on.
    assert TestClock.start(tmp_path, JAN_1)() == JAN_1 + 86_400 * S
    assert TestClock.start(tmp_path, JAN_1 + 2 * 86_400 * S)() == JAN_1 + 2 * 86_400 * S
    assert read_instant(tmp_path / TEST_CLOCK_FILE) == JAN_1 + 2 * 86_400 * S
    assert not list(tmp_path.glob("*.tmp"))


def test_another_process_s_clock_sees_an_advance(tmp_path: Path) -> None:
    writer = TestClock.start(tmp_path, JAN_1)
    reader = TestClock.follow(tmp_path)
    assert reader is not None and reader() == JAN_1
    writer.advance_to(JAN_1 + 60 * S)
    assert reader() == JAN_1 + 60 * S
    # The reader never goes back, and refuses to advance behind what the file says.
    with pytest.raises(ValueError):
        reader.advance_to(JAN_1 + 30 * S)
    assert TestClock.follow(tmp_path / "elsewhere") is None


def test_the_engine_of_a_sandbox_data_directory_reads_its_test_clock(tmp_path: Path) -> None:
    clock = TestClock.start(tmp_path, JAN_1)
    engine = EmbeddedEngine(tmp_path, fsync=False)
    try:
        client = engine.client_sync()
        client.create_accounts([Account(id=1, ledger=1, code=int(AccountCode.CONSUMED))])
        (first,) = client.lookup_accounts([1])
        assert JAN_1 < first.timestamp < JAN_1 + S  # frozen: the next nanoseconds
        clock.advance_to(JAN_1 + 3600 * S)
        client.create_accounts([Account(id=2, ledger=1, code=int(AccountCode.CONSUMED))])
        (second,) = client.lookup_accounts([2])
        assert JAN_1 + 3600 * S <= second.timestamp < JAN_1 + 3601 * S
    finally:
        engine.close()


def test_a_data_directory_keeps_the_clock_it_was_written_by(tmp_path: Path) -> None:
    wall = tmp_path / "wall"
    engine = EmbeddedEngine(wall, fsync=False)
    engine.client_sync().create_accounts([Account(id=1, ledger=1, code=1)])
    engine.close()
    with pytest.raises(ClockMismatch, match="wall clock"):
        TestClock.start(wall, JAN_1)
    refuse_wall_clock_on(wall)  # its own clock: fine
    assert business_clock(wall) is wall_clock_ns

    sandbox = tmp_path / "sandbox"
    TestClock.start(sandbox, JAN_1)
    with pytest.raises(ClockMismatch, match="--test-clock"):
        refuse_wall_clock_on(sandbox)
    assert business_clock(sandbox)() == JAN_1
    # A fresh directory, or one whose engine never wrote, may start on a test clock.
    TestClock.start(tmp_path / "fresh", JAN_1)
