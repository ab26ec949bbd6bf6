"""The engine process, supervised: a dead one is replaced while the service stays up.

`EngineSupervisor(data_dir)` starts an `EngineProcess` as its constructor does, so a first start
that fails raises what it raises (`DataDirectoryLocked`, `JournalCorrupt`, `EngineProcessError`):
that is a service that cannot start, not one to restart. Its `client_async()` is the engine
process's client over whichever process is current, so `open_ledger` and `Ledger` work as with
an unsupervised process. The server runs the engine process this way.

Invariants:
- One engine process at a time on the data directory, as the journal's lock demands: a
  replacement starts only once the dead process has exited and been reaped (one that lost its
  connection but lingers is killed after `ENGINE_EXIT_GRACE_S`). If the lock is held all the
  same, by another process, that attempt fails with `DataDirectoryLocked` and is tried again.
- Requests in flight when the engine dies raise `LedgerUnavailable`: their outcome is unknown,
  as one may have been journaled. So does every request while there is no engine, at once,
  without waiting for the restart (nothing was sent). Over HTTP both are 503
  `ledger_unavailable`: the caller retries with the same idempotency key.
- What was acknowledged survives: an answer leaves the engine only once its journal record is
  durable, and the replacement replays the same journal. Transfer ids are derived from the
  idempotency key, so the retry of a request that was applied before the death finds its
  transfers there and is applied once.
- The request path costs what it did: `call` reads one field and hands the request to the
  current process, with no lock and no await of its own.

The death is noticed when the connection is lost (`EngineProcess.on_lost`), which asyncio
reports as soon as the child's end of the socket closes, so in-flight requests fail at once and
the restart begins in a background task. The first process connects on its first request (it
is started before an event loop serves any); a replacement is connected as soon as it has
started, so its death is noticed even if no request comes.

Restarts (limits in `ledger.limits`): the first attempt after a death at once, then after
pauses that double from `ENGINE_RESTART_PAUSE_S_MIN` up to `ENGINE_RESTART_PAUSE_S_MAX`. The
count starts afresh only after an engine that ran `ENGINE_RUN_STABLE_S`, so that a crash loop
backs off too. A failure that may pass (the lock still held, a process that dies as it starts)
is tried again without end, but after `ENGINE_RESTART_ATTEMPTS_MAX` attempts `health()` says
the service cannot recover by itself, so that /healthz fails and systemd or Kubernetes restarts
the whole service. A journal found corrupt will not mend by itself: the supervisor gives up at
once (state "failed") and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.client import EngineHealth, LedgerUnavailable
from ledger.embedded.journal import JournalCorrupt
from ledger.embedded.process import EngineProcess, EngineProcessClientAsync
from ledger.limits import (
    ENGINE_EXIT_GRACE_S,
    ENGINE_RESTART_ATTEMPTS_MAX,
    ENGINE_RESTART_PAUSE_S_MAX,
    ENGINE_RESTART_PAUSE_S_MIN,
    ENGINE_RUN_STABLE_S,
    JOURNAL_SNAPSHOT_BYTES_DEFAULT,
)
from ledger.types import ClientClosedError

_logger = logging.getLogger(__name__)

# Doublings of the pause past this many attempts would pass any sensible longest pause, and
# 2.0 ** n overflows a float for a large enough n (a supervisor that has been retrying for days).
_DOUBLINGS_MAX = 64


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a dead engine process, and when to call it hopeless."""

    pause_s_min: float = ENGINE_RESTART_PAUSE_S_MIN
    pause_s_max: float = ENGINE_RESTART_PAUSE_S_MAX
    run_stable_s: float = ENGINE_RUN_STABLE_S
    attempts_max: int = ENGINE_RESTART_ATTEMPTS_MAX
    exit_grace_s: float = ENGINE_EXIT_GRACE_S

    def __post_init__(self) -> None:
        assert 0 < self.pause_s_min <= self.pause_s_max
        assert self.attempts_max >= 1
        assert self.exit_grace_s > 0

    def pause_s(self, attempt: int) -> float:
        """The pause before restart attempt `attempt` (1-based): none before the first."""
        assert attempt >= 1
        if attempt == 1:
            return 0.0
        doublings = min(attempt - 2, _DOUBLINGS_MAX)
        return min(self.pause_s_min * 2.0**doublings, self.pause_s_max)


class EngineSupervisor:
    """Owns the current `EngineProcess` on `data_dir` and replaces it when it dies; see the
    module docstring."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        fsync: bool = True,
        snapshot_bytes: int = JOURNAL_SNAPSHOT_BYTES_DEFAULT,
        policy: RestartPolicy | None = None,
    ) -> None:
        self._data_dir = Path(data_dir)
        self._fsync = fsync
        self._snapshot_bytes = snapshot_bytes
        self._policy = RestartPolicy() if policy is None else policy
        self._state = "running"
        self._attempt = 0  # restart attempts since an engine last ran well
        self._restarts = 0
        self._detail = ""
        self._started_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._process: EngineProcess | None = None
        self._adopt(EngineProcess(data_dir, fsync=fsync, snapshot_bytes=snapshot_bytes))

    @property
    def pid(self) -> int | None:
        """The current engine process's, None while there is none."""
        return None if self._process is None else self._process.pid

    def client_async(self) -> EngineProcessClientAsync:
        return EngineProcessClientAsync(self)

    def call(self, operation: str, argument: Any) -> Awaitable[Any]:
        # Not a coroutine function: the caller awaits the process's own call directly.
        process = self._process
        if process is not None:
            return process.call(operation, argument)
        return self._refuse()

    async def _refuse(self) -> Any:
        if self._state == "closed":
            raise ClientClosedError()
        raise LedgerUnavailable(
            f"{self._detail}; this request was not sent: retry with the same ids once it is back"
        )

    def health(self) -> EngineHealth:
        state = self._state
        hopeless = state == "failed" or (
            state == "restarting" and self._attempt > self._policy.attempts_max
        )
        return EngineHealth(
            state=state,
            attempt=self._attempt,
            restarts=self._restarts,
            detail=self._detail,
            recoverable=not hopeless,
        )

    def _adopt(self, process: EngineProcess) -> None:
        process.on_lost = self._on_lost
        self._process = process
        self._state = "running"
        self._detail = ""
        self._started_at = time.monotonic()

    def _on_lost(self, process: EngineProcess) -> None:
        if process is not self._process or self._state == "closed":
            return  # closed by this supervisor, not dead
        if time.monotonic() - self._started_at >= self._policy.run_stable_s:
            self._attempt = 0  # it ran well: this death starts a new count
        self._process = None
        self._state = "restarting"
        self._detail = f"the engine process (pid {process.pid}) died; restarting it"
        task = asyncio.get_running_loop().create_task(self._restart(process), name="engine-restart")
        task.add_done_callback(self._restart_ended)
        self._task = task

    async def _restart(self, dead: EngineProcess) -> None:
        code = await asyncio.to_thread(dead.reap, self._policy.exit_grace_s)
        _logger.error(
            "the engine process (pid %d) died: %s; restarting it on %s",
            dead.pid,
            _describe_exit(code),
            self._data_dir,
        )
        failure = ""
        while True:
            self._attempt += 1
            attempt = self._attempt
            self._detail = f"engine restarting (attempt {attempt}){failure}"
            await asyncio.sleep(self._policy.pause_s(attempt))
            try:
                process = await EngineProcess.start(
                    self._data_dir, fsync=self._fsync, snapshot_bytes=self._snapshot_bytes
                )
            except JournalCorrupt as error:
                self._state = "failed"
                self._detail = f"the engine cannot restart, its journal is corrupt: {error}"
                _logger.critical(
                    "engine restart attempt %d: the journal is corrupt; giving up (repair it, "
                    "then restart the service): %s",
                    attempt,
                    error,
                )
                return
            except Exception as error:  # the lock still held, a start-up failure: may pass
                failure = f"; attempt {attempt} failed: {error}"
                _logger.warning("engine restart attempt %d failed: %s", attempt, error)
                continue
            self._adopt(process)
            self._restarts += 1
            _logger.warning(
                "the engine process is back (pid %d, restart attempt %d, %d journal records "
                "replayed)",
                process.pid,
                attempt,
                process.replayed_records,
            )
            return

    def _restart_ended(self, task: asyncio.Task[None]) -> None:
        """A restart that ended in an exception is a bug: the engine is then given up on, as
        said, rather than the exception left for the event loop to report."""
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        self._state = "failed"
        self._detail = f"the engine supervisor failed: {error!r}"
        _logger.error("the engine supervisor failed", exc_info=error)

    async def aclose(self) -> None:
        """Stops restarting, then closes the current engine process (it answers what it was
        sent, closes its journal and exits)."""
        if self._state == "closed":
            return
        self._state = "closed"
        self._detail = "the engine was closed"
        task = self._task
        if task is not None and not task.done():
            task.cancel()  # a replacement being started is killed
            await asyncio.wait([task])
        process, self._process = self._process, None
        if process is not None:
            await process.aclose()


def _describe_exit(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    with contextlib.suppress(ValueError):
        return f"killed by {signal.Signals(-code).name}"
    return f"killed by signal {-code}"
