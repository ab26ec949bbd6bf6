"""Garbage collection for a process that holds a large heap for its whole life.

With the embedded engine, the service process keeps the ledger's state in memory: millions of
long-lived objects, growing with every transfer. CPython's cyclic collector walks every tracked
container of the generation it collects, and the oldest generation is collected whenever it has
grown by a quarter, so under load the process paused for 60-100 ms every few seconds, walking
objects that can never be garbage. Measured on the debit benchmark: full collections took 1.3 s
of a 20 s run, and request p99 was 107 ms; with this policy, 25-37 ms, and 20% more debits/s.

The policy (`manage_heap`, a task each process below runs):
- every `freeze_every_s`, collect the two young generations and move every survivor to the
  permanent generation (`gc.freeze()`), which no collection walks; the collector then only ever
  sees the objects made since the last freeze;
- no automatic full collection: a full collection also *untracks* every dict whose values are
  all untracked, such as the engine's index of transfers (tuples of ints); the next insert
  tracks it again as a young object, and the next young collections walk its millions of
  entries (60-200 ms pauses, measured). So the oldest generation's threshold is out of reach;
- every `full_every_s`, unfreeze, collect everything once, and freeze again: this reclaims the
  reference cycles that became garbage after they were frozen or old (rare: reference counting
  frees everything else as usual), so nothing leaks for longer than that. That step, and the
  few young collections after it, pause the process (a few hundred ms on a large heap), once
  an interval;
- the youngest generation is collected when `young_threshold` more objects are tracked than at
  the last collection, not CPython's 700. A young collection walks every young object alive:
  in the server, those of the requests in flight (40,000 to 70,000 under batch load), which
  die by reference counting once answered, having been walked at every collection meanwhile.
  At 50,000 (before), the server ran about 5 young collections a second under batch
  ingestion, 7 to 16 ms each; at 500,000, 1 a second or fewer, for a tenth of the time (in a
  30-second run over HTTP: 2.1 to 2.4 s of the server's CPU in collections, then 0.12 to
  0.28). Cycles that die young are still collected within `freeze_every_s`.

Processes (each runs `manage_heap`):
- the server (`api.app`);
- the projection feed (`credit-ledger projection feed`): with CPython's defaults it collected
  5,000 times in that run, 2.6 s of CPU; with this policy, 45 ms;
- the engine process (`ledger.embedded.process`), which also calls `freeze_survivors` after
  each read of requests: what a request leaves (its transfers, now the engine's state) goes to
  the permanent generation at once, and no young collection walks it. Without that, every
  transfer was walked once or twice before its layer went to the store (1.1 s of the engine's
  CPU in that run; with it, 15 ms). A cycle a request makes is frozen with the rest, so in the
  engine only the full step reclaims it (within `full_every_s`, not `freeze_every_s`). Its
  requests make none, whether created, refused, failed or read
  (tests/unit/test_heap.py); a failed journal write may, once.

The checkpointer process (`ledger/embedded/checkpointer.py`) runs no automatic collection at
all: a checkpoint makes no cycles (tests/unit/test_checkpointer_keys.py), and it collects once
after each, which walks only what that checkpoint left.

Nothing here changes what is freed by reference counting, which is almost everything.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeapPolicy:
    freeze_every_s: float = 10.0
    full_every_s: float = 3600.0
    young_threshold: int = 500_000


@dataclass(frozen=True)
class HeapReport:
    frozen: int  # objects in the permanent generation after the step
    collected: int  # unreachable objects found by the step's collection
    seconds: float


# Collections of the oldest generation happen when this many young-middle collections have
# run: never, in practice; `full()` does them on schedule.
_NEVER = 1 << 30


def freeze() -> HeapReport:
    """Collect the young generations (never a full collection, see above), then freeze what
    survived."""
    start = time.perf_counter()
    collected = gc.collect(1)
    gc.freeze()
    return HeapReport(gc.get_freeze_count(), collected, time.perf_counter() - start)


def freeze_survivors() -> None:
    """Moves every object the collector tracks to the permanent generation, without a
    collection (in constant time); see the engine process above."""
    gc.freeze()


def full() -> HeapReport:
    """Unfreeze, collect everything, freeze again (reclaims cycles that died while frozen)."""
    start = time.perf_counter()
    gc.unfreeze()
    collected = gc.collect()
    gc.freeze()
    return HeapReport(gc.get_freeze_count(), collected, time.perf_counter() - start)


async def manage_heap(policy: HeapPolicy) -> None:
    """Runs the policy until cancelled; on cancel, leaves the collector as it found it, with
    nothing frozen."""
    thresholds = gc.get_threshold()
    gc.set_threshold(policy.young_threshold, thresholds[1], _NEVER)
    freeze()
    last_full = time.monotonic()
    try:
        while True:
            await asyncio.sleep(policy.freeze_every_s)
            if time.monotonic() - last_full >= policy.full_every_s:
                report = full()
                last_full = time.monotonic()
                _logger.info(
                    "full collection: %d unreachable, %d frozen, %.0f ms",
                    report.collected,
                    report.frozen,
                    report.seconds * 1000,
                )
            else:
                freeze()
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
