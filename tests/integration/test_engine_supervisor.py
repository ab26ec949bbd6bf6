"""The supervised engine process (`ledger.embedded.supervisor`): killed under load, it is
replaced on the same journal without a new supervisor, and retries with the same ids apply
once; a restart that cannot take the lock keeps trying and says when it is hopeless; a journal
found corrupt at restart is given up on; a replacement ends with its parent too. (A first start
that fails raises as an unsupervised one does: tests/integration/test_engine_process.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ledger.client import LedgerUnavailable
from ledger.embedded import EmbeddedEngine
from ledger.embedded.supervisor import EngineSupervisor, RestartPolicy
from ledger.types import Account, CreateTransferStatus, Transfer
from tests.integration.test_engine_process import ROOT, _alive

pytestmark = pytest.mark.anyio

# Short pauses and a low bar for "hopeless", so that the tests see several attempts quickly.
QUICK = RestartPolicy(pause_s_min=0.01, pause_s_max=0.05, attempts_max=3)
# How long a test waits for something that should happen by itself: a generous bound for a
# shared two-core machine, polled, never asserted on.
PATIENCE_S = 60.0
LEDGER, CODE = 1, 1
SOURCE, TARGET = 1, 2


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        await asyncio.sleep(0.01)


async def _answers(supervisor: EngineSupervisor) -> bool:
    try:
        await supervisor.client_async().lookup_accounts([SOURCE])
    except LedgerUnavailable:
        return False
    return True


async def _until_it_answers(supervisor: EngineSupervisor) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not await _answers(supervisor):
        assert time.monotonic() < deadline, "the engine did not come back"
        await asyncio.sleep(0.01)


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the event loop's exception handler (an exception nobody handled)."""
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    yield errors
    loop.set_exception_handler(None)


@pytest.fixture
async def supervisor(tmp_path: Path) -> AsyncIterator[EngineSupervisor]:
    engine = EngineSupervisor(tmp_path, policy=QUICK)
    await engine.client_async().create_accounts(
        [Account(id=SOURCE, ledger=LEDGER, code=CODE), Account(id=TARGET, ledger=LEDGER, code=CODE)]
    )
    yield engine
    await engine.aclose()


def _transfer(transfer_id: int) -> Transfer:
    return Transfer(
        id=transfer_id,
        debit_account_id=SOURCE,
        credit_account_id=TARGET,
        amount=transfer_id % 97 + 1,
        ledger=LEDGER,
        code=CODE,
    )


@dataclass
class Load:
    """Transfers sent by several tasks at once, and what became of each."""

    acknowledged: list[int] = field(default_factory=list)
    unavailable: list[int] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, supervisor: EngineSupervisor, first_id: int) -> None:
        client = supervisor.client_async()
        transfer_id = first_id
        while not self.stop.is_set():
            transfers = [_transfer(transfer_id), _transfer(transfer_id + 1)]
            transfer_id += 2
            try:
                results = await client.create_transfers(transfers)
            except LedgerUnavailable:  # anything else fails the test
                self.unavailable += [t.id for t in transfers]
                # A caller backs off; without a pause this task would refuse itself in a loop
                # that never yields to the restart.
                await asyncio.sleep(0.005)
                continue
            assert [r.status for r in results] == [CreateTransferStatus.CREATED] * 2
            self.acknowledged += [t.id for t in transfers]


async def test_a_killed_engine_is_replaced_and_retries_apply_once(
    supervisor: EngineSupervisor, loop_errors: list[dict[str, Any]]
) -> None:
    load = Load()
    workers = [
        asyncio.create_task(load.worker(supervisor, first_id=(w + 1) << 32)) for w in range(6)
    ]
    await _until(lambda: len(load.acknowledged) >= 200, "transfers before the kill")
    dead = supervisor.pid
    assert dead is not None
    before_kill = set(load.acknowledged)
    os.kill(dead, signal.SIGKILL)
    await _until(lambda: bool(load.unavailable), "a call to fail")
    # The same supervisor answers again by itself, through a new engine process.
    await _until_it_answers(supervisor)
    assert supervisor.pid not in (None, dead)
    after_restart = len(load.acknowledged)
    await _until(lambda: len(load.acknowledged) >= after_restart + 200, "transfers after it")
    load.stop.set()
    await asyncio.gather(*workers)

    # Retried with the same ids, a transfer that failed is created, or was already (it was in
    # flight and journaled before the engine died).
    client = supervisor.client_async()
    retried = await client.create_transfers([_transfer(i) for i in load.unavailable])
    assert {r.status for r in retried} <= {
        CreateTransferStatus.CREATED,
        CreateTransferStatus.EXISTS,
    }
    assert not set(load.unavailable) & set(load.acknowledged)
    sent = sorted({*load.acknowledged, *load.unavailable})
    assert len(sent) == len(load.acknowledged) + len(load.unavailable)  # each id sent once
    found = [t.id for t in await client.lookup_transfers(sent)]
    assert sorted(found) == sent  # each present exactly once, the acknowledged ones among them
    assert before_kill <= set(found)
    (target,) = await client.lookup_accounts([TARGET])
    assert target.credits_posted == sum(_transfer(i).amount for i in sent)
    health = supervisor.health()
    assert (health.state, health.restarts, health.recoverable) == ("running", 1, True)
    assert loop_errors == []


async def test_a_restart_that_finds_the_lock_held_keeps_trying(
    supervisor: EngineSupervisor, tmp_path: Path, loop_errors: list[dict[str, Any]]
) -> None:
    """With the lock held by another process at restart, the supervisor keeps trying; after
    `attempts_max` attempts its health says the service cannot recover by itself; once the lock
    is free, the engine comes back."""
    with _lock_held_elsewhere(tmp_path):
        os.kill(_pid(supervisor), signal.SIGKILL)
        await _until(lambda: not supervisor.health().recoverable, "the supervisor to despair")
        health = supervisor.health()
        assert health.state == "restarting" and health.attempt > QUICK.attempts_max
        assert "in use by another process" in health.detail
        # Refused, not left waiting for a restart that may never come.
        with pytest.raises(LedgerUnavailable, match=r"engine restarting \(attempt \d+\)"):
            await asyncio.wait_for(supervisor.client_async().lookup_accounts([SOURCE]), 10)
    await _until_it_answers(supervisor)
    health = supervisor.health()
    assert (health.state, health.restarts, health.recoverable) == ("running", 1, True)
    assert loop_errors == []


@contextlib.contextmanager
def _lock_held_elsewhere(data_dir: Path) -> Iterator[None]:
    """Holds the data directory's journal lock the moment the engine dies, with no race
    against the restart: the engine holds its `flock` on the LOCK file it opened; this unlinks
    that file and locks a new one under the same name, which the next engine finds held."""
    path = data_dir / "LOCK"
    path.unlink()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(fd, b"test", 0)
        yield
    finally:
        os.close(fd)


def _pid(supervisor: EngineSupervisor) -> int:
    pid = supervisor.pid
    assert pid is not None
    return pid


async def test_a_journal_found_corrupt_at_restart_is_given_up_on(
    supervisor: EngineSupervisor, tmp_path: Path, loop_errors: list[dict[str, Any]]
) -> None:
    client = supervisor.client_async()
    for i in range(3):
        await client.create_transfers([_transfer(10 + i)])
    # The running engine reads its journal only at start: damage an early record under it.
    segment = sorted(tmp_path.glob("journal-*.log"))[-1]
    with open(segment, "r+b") as f:
        f.seek(12)
        byte = f.read(1)
        f.seek(12)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.kill(_pid(supervisor), signal.SIGKILL)
    await _until(lambda: supervisor.health().state == "failed", "the supervisor to give up")
    health = supervisor.health()
    assert not health.recoverable and "journal is corrupt" in health.detail
    with pytest.raises(LedgerUnavailable, match="journal is corrupt"):
        await client.lookup_accounts([SOURCE])
    assert supervisor.pid is None  # nothing runs on the damaged journal
    assert loop_errors == []


async def test_closing_while_it_restarts_stops_the_restarts(
    supervisor: EngineSupervisor, tmp_path: Path, loop_errors: list[dict[str, Any]]
) -> None:
    with _lock_held_elsewhere(tmp_path):
        os.kill(_pid(supervisor), signal.SIGKILL)
        await _until(lambda: supervisor.health().attempt >= 2, "a failed restart")
        await supervisor.aclose()
    assert supervisor.health().state == "closed"
    await asyncio.sleep(QUICK.pause_s_max * 4)  # time for a restart that should not happen
    EmbeddedEngine(tmp_path).close()  # nothing holds the directory
    assert loop_errors == []


def test_a_replacement_ends_with_its_parent(tmp_path: Path) -> None:
    """The engine process that replaced a dead one still exits when the parent ends however
    it ends (here: `os._exit`, no clean-up at all)."""
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from ledger.client import LedgerUnavailable
        from ledger.embedded.supervisor import EngineSupervisor

        async def main():
            supervisor = EngineSupervisor({str(tmp_path)!r})
            client = supervisor.client_async()
            await client.lookup_accounts([1])
            first = supervisor.pid
            os.kill(first, signal.SIGKILL)
            while True:
                try:
                    await client.lookup_accounts([1])
                    break
                except LedgerUnavailable:
                    await asyncio.sleep(0.01)
            print(first, supervisor.pid, flush=True)
            os._exit(0)

        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=PATIENCE_S,
    )
    first, replacement = (int(pid) for pid in out.stdout.split())
    assert replacement != first
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(replacement):
        time.sleep(0.05)
    assert not _alive(replacement)
    EmbeddedEngine(tmp_path).close()  # the directory is free again


def test_restart_pauses_double_up_to_their_cap() -> None:
    policy = RestartPolicy(pause_s_min=0.1, pause_s_max=1.0)
    pauses = [policy.pause_s(attempt) for attempt in range(1, 8)]
    assert pauses == pytest.approx([0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert policy.pause_s(10**6) == 1.0  # days of attempts: still the cap, no overflow
