"""The embedded engine in a process of its own (`ledger.embedded.process`): the same answers as
in-process, the same errors, the same journal, one owner of a data directory, and a clear
failure when the process dies."""

from __future__ import annotations

import asyncio
import dataclasses
import marshal
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.client import LedgerUnavailable, open_ledger
from ledger.embedded import DataDirectoryLocked, EmbeddedEngine, JournalCorrupt
from ledger.embedded import process as process_module
from ledger.embedded.process import EngineProcess
from ledger.embedded.supervisor import EngineSupervisor
from ledger.limits import BATCH_EVENTS_MAX
from ledger.settings import LedgerSettings
from ledger.types import (
    Account,
    AccountFlags,
    ClientClosedError,
    CreateTransferStatus,
    IntegerOverflowError,
    TooMuchDataError,
    Transfer,
    TransferFlags,
)
from tests.conformance._helpers import account_filter, query_filter, transfer

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def _without_timestamps(value: Any) -> Any:
    """What an answer says, but for the engine's clock (the two engines' clocks differ)."""
    if isinstance(value, list):
        return [_without_timestamps(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        fields.pop("timestamp", None)
        return (type(value).__name__, fields)
    return value


async def _workload(client: Any) -> list[Any]:
    """Accounts, a failing and a succeeding chain, a pending transfer posted and one voided,
    balancing, every read: everything the answers of both engines must agree on."""
    out: list[Any] = []
    history = AccountFlags.HISTORY
    limited = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | history
    out.append(
        await client.create_accounts(
            [
                Account(id=1, ledger=7, code=1, flags=history),
                Account(id=2, ledger=7, code=1, flags=limited),
                Account(id=3, ledger=7, code=1, user_data_64=9),
                Account(id=3, ledger=7, code=2),  # exists with another code
                Account(id=4, ledger=8, code=1),
            ]
        )
    )
    linked, balancing = TransferFlags.LINKED, TransferFlags.BALANCING_DEBIT
    pending = TransferFlags.PENDING
    out.append(
        await client.create_transfers(
            [
                transfer(1, 2, 100, 7, id=10),
                # A chain whose second event fails: both are refused, nothing moves.
                transfer(2, 3, 60, 7, id=11, flags=linked),
                transfer(2, 3, 60, 7, id=12),
                transfer(2, 3, 1_000, 7, id=13, flags=balancing),  # takes what there is
                transfer(1, 4, 1, 7, id=14),  # another ledger's account
                transfer(1, 3, 5, 7, id=15, code=3, flags=pending, timeout=3600),
                transfer(1, 3, 6, 7, id=16, code=3, flags=pending),
            ]
        )
    )
    out.append(
        await client.create_transfers(
            [
                Transfer(id=17, pending_id=15, amount=4, flags=TransferFlags.POST_PENDING_TRANSFER),
                Transfer(id=18, pending_id=16, flags=TransferFlags.VOID_PENDING_TRANSFER),
                transfer(1, 2, 100, 7, id=10),  # exists
            ]
        )
    )
    out.append(await client.lookup_accounts([1, 2, 3, 4, 99]))
    out.append(await client.lookup_transfers([10, 11, 13, 15, 17, 18, 99]))
    out.append(await client.get_account_transfers(account_filter(1, limit=10)))
    out.append(await client.get_account_balances(account_filter(1, limit=10)))
    out.append(await client.query_accounts(query_filter(ledger=7, limit=10)))
    out.append(await client.query_transfers(query_filter(code=3, limit=10)))
    return out


async def test_the_same_answers_as_the_engine_in_this_process(tmp_path: Path) -> None:
    with EmbeddedEngine(tmp_path / "here") as here:
        expected = await _workload(here.client_async())
    there = EngineProcess(tmp_path / "there")
    try:
        got = await _workload(there.client_async())
    finally:
        await there.aclose()
    assert _without_timestamps(got) == _without_timestamps(expected)
    statuses = [r.status for r in got[1]]
    assert statuses[:4] == [
        CreateTransferStatus.CREATED,
        CreateTransferStatus.LINKED_EVENT_FAILED,
        CreateTransferStatus.EXCEEDS_CREDITS,
        CreateTransferStatus.CREATED,
    ]
    assert got[3][1].debits_posted == 100  # balancing took exactly what account 2 had


async def test_its_journal_is_the_engines_journal(tmp_path: Path) -> None:
    """What the process wrote, the engine in-process reads, and the other way round."""
    with EmbeddedEngine(tmp_path) as engine:
        await engine.client_async().create_accounts(
            [Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1)]
        )
    process = EngineProcess(tmp_path)
    try:
        assert process.replayed_records == 1
        client = process.client_async()
        results = await client.create_transfers(
            [Transfer(id=5, debit_account_id=1, credit_account_id=2, amount=9, ledger=1, code=1)]
        )
        assert results[0].status is CreateTransferStatus.CREATED
    finally:
        await process.aclose()
    with EmbeddedEngine(tmp_path) as engine:
        accounts = await engine.client_async().lookup_accounts([2])
        assert accounts[0].credits_posted == 9


async def test_bad_input_raises_here_and_sends_nothing(tmp_path: Path) -> None:
    process = EngineProcess(tmp_path)
    try:
        client = process.client_async()
        with pytest.raises(IntegerOverflowError, match="amount"):
            await client.create_transfers([Transfer(id=1, amount=1 << 128, ledger=1, code=1)])
        with pytest.raises(TooMuchDataError):
            await client.create_accounts(
                [Account(id=i + 1, ledger=1, code=1) for i in range(BATCH_EVENTS_MAX + 1)]
            )
        with pytest.raises(TooMuchDataError):
            await client.lookup_accounts(list(range(1, BATCH_EVENTS_MAX + 2)))
        # Nothing reached the engine: the first request it gets is the first journal record.
        await client.create_accounts([Account(id=1, ledger=1, code=1)])
    finally:
        await process.aclose()
    with EmbeddedEngine(tmp_path) as engine:
        assert engine.replayed_records == 1


async def test_concurrent_callers_each_get_their_own_answer(tmp_path: Path) -> None:
    process = EngineProcess(tmp_path)
    try:
        client = process.client_async()
        await client.create_accounts([Account(id=i, ledger=1, code=i) for i in range(1, 201)])
        found = await asyncio.gather(*(client.lookup_accounts([i]) for i in range(1, 201)))
        assert [a[0].code for a in found] == list(range(1, 201))
    finally:
        await process.aclose()


async def test_a_second_owner_of_the_data_directory_is_refused(tmp_path: Path) -> None:
    process = EngineProcess(tmp_path)
    try:
        with pytest.raises(DataDirectoryLocked):
            EngineProcess(tmp_path)
        with pytest.raises(DataDirectoryLocked):  # a first start, not a restart: it raises
            EngineSupervisor(tmp_path)
        with pytest.raises(DataDirectoryLocked):
            EmbeddedEngine(tmp_path)
    finally:
        await process.aclose()
    EmbeddedEngine(tmp_path).close()  # released on close


async def test_a_dead_engine_process_is_unavailable_not_a_hang(tmp_path: Path) -> None:
    process = EngineProcess(tmp_path)
    client = process.client_async()
    await client.create_accounts([Account(id=1, ledger=1, code=1)])
    os.kill(process.pid, signal.SIGKILL)
    with pytest.raises(LedgerUnavailable, match=r"the engine process (exited|closed)"):
        await asyncio.wait_for(client.lookup_accounts([1]), 10)
    with pytest.raises(LedgerUnavailable):
        await client.create_accounts([Account(id=2, ledger=1, code=1)])
    await process.aclose()
    # What it acknowledged is in the journal.
    with EmbeddedEngine(tmp_path) as engine:
        assert len(engine.client_sync().lookup_accounts([1])) == 1


async def test_closed_means_closed(tmp_path: Path) -> None:
    process = EngineProcess(tmp_path)
    client = process.client_async()
    await client.create_accounts([Account(id=1, ledger=1, code=1)])
    await process.aclose()
    assert process._child.returncode == 0  # it closed its journal and exited by itself
    with pytest.raises(ClientClosedError):
        await client.lookup_accounts([1])


async def test_open_ledger_runs_it_when_the_settings_say_so(tmp_path: Path) -> None:
    ledger = open_ledger(LedgerSettings(data_dir=tmp_path, engine_process=True))
    assert ledger.engine_name.startswith("embedded (process ")
    # Supervised (tests/integration/test_engine_supervisor.py).
    assert ledger.health is not None and ledger.health.state == "running"
    await ledger.create_accounts([Account(id=1, ledger=1, code=1)])
    assert len(await ledger.lookup_accounts([1])) == 1
    await ledger.close()
    with EmbeddedEngine(tmp_path) as engine:
        assert engine.replayed_records == 1


@given(
    st.lists(
        st.tuples(st.sampled_from(list(CreateTransferStatus)), st.integers(1, 2**63)), max_size=30
    ),
    st.integers(1, 2**62),
    st.integers(0, 30),
)
def test_compact_answers_stand_for_every_result(
    odd: list[tuple[CreateTransferStatus, int]], first: int, created: int
) -> None:
    """A batch's results: a run of consecutive creations with odd ones mixed in (other
    statuses, other timestamps); the compact answer, through marshal, gives them all back."""
    results: list[tuple[CreateTransferStatus, int]] = [
        (CreateTransferStatus.CREATED, first + i) for i in range(created)
    ]
    for i, item in enumerate(odd):
        results.insert((i * 7) % (len(results) + 1), item)
    answer = marshal.loads(marshal.dumps(process_module._compact(results)))
    expanded = process_module._expand(*answer)
    assert [(r.status, r.timestamp) for r in expanded] == results


def test_the_engine_process_ends_with_its_parent(tmp_path: Path) -> None:
    """However the parent ends (here: `os._exit`, no clean-up at all), the engine process sees
    its socket close and exits, releasing the data directory."""
    script = textwrap.dedent(
        f"""
        import os, sys
        from ledger.embedded.process import EngineProcess
        process = EngineProcess({str(tmp_path)!r})
        print(process.pid, flush=True)
        os._exit(0)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    pid = int(out.stdout.strip())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid)
    EmbeddedEngine(tmp_path).close()  # the directory is free again


@pytest.mark.parametrize("start", [EngineProcess, EngineSupervisor])
async def test_a_start_up_failure_is_raised_here(
    tmp_path: Path, start: Callable[[Path], object]
) -> None:
    """A journal the engine refuses at start-up: the same exception, here, and no process
    left behind; supervised too (a first start that fails is not a restart)."""
    with EmbeddedEngine(tmp_path) as engine:
        client = engine.client_async()
        for i in range(1, 4):
            await client.create_accounts([Account(id=i, ledger=1, code=1)])
    segment = sorted(tmp_path.glob("journal-*.log"))[-1]
    data = bytearray(segment.read_bytes())
    data[12] ^= 0xFF  # inside the first record
    segment.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match="fails its checksum"):
        start(tmp_path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent, which is gone) counts as ended.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_an_unused_engine_process_closes_without_a_loop(tmp_path: Path) -> None:
    process = EngineProcess(tmp_path)
    process.close()
    assert process._child.returncode == 0
    EmbeddedEngine(tmp_path).close()  # the directory is free again
