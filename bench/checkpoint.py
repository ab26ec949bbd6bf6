"""What one checkpoint of the embedded engine costs the engine's process. Not a test.

    python -m bench.checkpoint                  # 31 full batches (253,859 transfers), both ways
    python -m bench.checkpoint --batches 8      # a smaller layer
    python -m bench.checkpoint --accounts 1000000   # a layer that changes 253,859 of 1 million

Makes 1,000 accounts (`--accounts`) and checkpoints them; fills an engine (fsync on, its own
checkpoints held back) with full batches of transfers that go round those accounts, four in
five with a `user_data_128` of their own (as the service's debits have), freezes that layer,
and writes it to the store as a checkpoint does, once in batches in this process and once
through the checkpointer process (SST files), each on a fresh engine. Prints, per way: how long
the freeze held the engine's lock; this process's CPU per transfer (all its threads, RocksDB's
included; not the checkpointer's), the wall time, and the longest gap and the 99th percentile
gap seen by a thread that wakes every 0.5 ms, which is how long requests would have waited for
the GIL; and the checkpointer's CPU per transfer and RSS, at its peak and after (Linux).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

from ledger.embedded import EmbeddedEngine
from ledger.heap import HeapPolicy
from ledger.types import Account, Transfer

ACCOUNTS = 1000
BATCH = 8189


def _measure(directory: Path, batches: int, ingest: bool, accounts: int) -> str:
    rng = random.Random(1)
    with EmbeddedEngine(directory, snapshot_bytes=1 << 40) as engine:
        store, journal = engine.store, engine.journal
        assert store is not None and journal is not None
        client = engine.client_sync()
        for start in range(0, accounts, BATCH):
            ids = range(start + 1, min(accounts, start + BATCH) + 1)
            client.create_accounts([Account(id=i, ledger=1, code=1) for i in ids])
        engine.snapshot()  # the accounts are in the store: the layer below changes some
        for batch in range(batches):
            client.create_transfers(
                [
                    Transfer(
                        id=rng.getrandbits(120) + 1,
                        debit_account_id=1 + (batch * BATCH + i) % accounts,
                        credit_account_id=1 + (batch * BATCH + i + 1) % accounts,
                        amount=1,
                        ledger=1,
                        code=1,
                        user_data_128=rng.getrandbits(120) if i % 5 else 0,
                    )
                    for i in range(BATCH)
                ]
            )
        # The engine process's collector (ledger/heap.py): what requests left is frozen, and
        # no automatic collection walks it.
        gc.set_threshold(HeapPolicy().young_threshold, 10, 1 << 30)
        gc.freeze()
        freeze = time.perf_counter()
        checkpoint = engine.state.freeze(journal.appended)
        freeze = time.perf_counter() - freeze
        store.ingest_min = 0 if ingest else 1 << 62
        if ingest:  # started ahead, as it is after the first checkpoint
            store._checkpointer._start()
            time.sleep(1.0)
        gaps: list[float] = []
        stop = threading.Event()

        def spin() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                now = time.perf_counter()
                gaps.append(now - last)
                last = now
                time.sleep(0.0005)

        spinner = threading.Thread(target=spin)
        spinner.start()
        child = _cpu_s(store._checkpointer.pid)
        cpu, wall = time.process_time(), time.perf_counter()
        store.write(checkpoint)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        child = _cpu_s(store._checkpointer.pid) - child
        stop.set()
        spinner.join()
        if ingest:
            time.sleep(0.5)  # it gives its memory back once it has answered
        rss = _rss_mib(store._checkpointer.pid) if ingest else None
        n = len(checkpoint.layer.log)
        gaps.sort()
        way = "through the checkpointer" if ingest else "in batches, in-process"
        return (
            f"{way:<26} {n:,} transfers, {len(checkpoint.accounts):,} accounts: the freeze held"
            f" the lock {freeze * 1e3:.0f} ms; {cpu * 1e6 / n:5.2f} µs of this process's CPU per "
            f"transfer, wall {wall:.2f} s, longest gap {gaps[-1] * 1e3:6.1f} ms, "
            f"p99 gap {gaps[int(len(gaps) * 0.99)] * 1e3:.2f} ms"
            + (
                ""
                if rss is None
                else f"; the checkpointer's CPU {child * 1e6 / n:.2f} µs per transfer, "
                f"its RSS at its peak {rss[0]:,.0f} MiB, after {rss[1]:,.0f} MiB"
            )
        )


def _cpu_s(pid: int | None) -> float:
    """A process's CPU time so far (user and system)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int | None) -> tuple[float, float] | None:
    """A process's peak RSS and its RSS now."""
    if pid is None:
        return None
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=31, help="full batches in the layer")
    parser.add_argument(
        "--accounts", type=int, default=ACCOUNTS, help="accounts, made and checkpointed first"
    )
    args = parser.parse_args()
    for ingest in (False, True):
        directory = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
        try:
            print(_measure(directory, args.batches, ingest, args.accounts), flush=True)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
