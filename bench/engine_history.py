"""History-size sweep of the embedded engine: what its memory, disk, start-up and speed do as the
number of transfers it holds grows. Not a test.

    python -m bench.engine_history                     # 1, 5 and 20 million transfers
    python -m bench.engine_history --sizes 0.1,0.5     # millions; a quick look
    python -m bench.engine_history --dir /var/tmp/x    # where the data directories go
    python -m bench.engine_history --accounts 1000000  # transfers among 1 million accounts

For each size, on a fresh data directory, with fsync on: a process fills the engine with that
many transfers in full batches (8189); waits until it is quiet (the fill's checkpoint or
snapshot and RocksDB's compactions done: "settle s"); then measures, at that size, transfers/s
in full batches and the latency of 200,000 single-transfer requests (64 concurrent callers;
`--singles`: a window long enough to take in the checkpoints that come with them), and its own
RSS (after a full GC); the directory's bytes on disk per transfer; then a new process opens the
engine on that directory and times it until it answers a lookup (start-up), with its RSS then.
Each phase runs in a process of its own so that RSS is the engine's and nothing else's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ledger.client import Ledger, open_ledger
from ledger.limits import BATCH_EVENTS_MAX
from ledger.settings import LedgerSettings
from ledger.types import Account, CreateTransferStatus, Transfer, new_id

ACCOUNTS = 10_000  # the default: transfers go between neighbours, a batch across 8,189 of them
LEDGER = 9
CREATED = CreateTransferStatus.CREATED


def _rss_mib() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process, in MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def _p(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else 0.0
    )


def _quiet(longest: float = 300.0) -> float:
    """Waits until the process (all its threads: a checkpoint or snapshot, RocksDB's
    compactions) has done with the fill, so that what is measured next is what requests cost in
    a steady state, not the tail of the fill. Returns how long that took."""
    start = time.perf_counter()
    while time.perf_counter() - start < longest:
        cpu = time.process_time()
        time.sleep(0.5)
        if time.process_time() - cpu < 0.05:
            break
    return time.perf_counter() - start


def _random_id() -> int:
    return random.getrandbits(127) + 1


class Filler:
    def __init__(self, ledger: Ledger, random_ids: bool, accounts: int) -> None:
        self.ledger = ledger
        self.base = new_id()
        self.new_id = _random_id if random_ids else new_id
        self.accounts = accounts
        self.next = 0  # the first account of the next batch

    def transfer(self, i: int) -> Transfer:
        n = self.accounts
        return Transfer(
            id=self.new_id(),
            debit_account_id=self.base + (i % n),
            credit_account_id=self.base + ((i + 1) % n),
            amount=1,
            ledger=LEDGER,
            code=1,
        )

    async def setup(self) -> None:
        for start in range(0, self.accounts, BATCH_EVENTS_MAX):
            ids = range(start, min(self.accounts, start + BATCH_EVENTS_MAX))
            accounts = [Account(id=self.base + i, ledger=LEDGER, code=1) for i in ids]
            results = await self.ledger.create_accounts(accounts)
            assert all(r.status.name == "CREATED" for r in results)

    async def batches(self, count: int) -> list[float]:
        latencies = []
        for _ in range(count):
            first, self.next = self.next, self.next + BATCH_EVENTS_MAX  # (on to the next ones)
            batch = [self.transfer(first + i) for i in range(BATCH_EVENTS_MAX)]
            t0 = time.perf_counter()
            results = await self.ledger.create_transfers(batch)
            latencies.append(time.perf_counter() - t0)
            assert all(r.status == CREATED for r in results)
        return latencies

    async def singles(self, total: int, callers: int) -> tuple[float, list[float]]:
        queue = iter(range(total))
        latencies: list[float] = []

        async def caller() -> None:
            for i in queue:
                transfer = self.transfer(i)
                t0 = time.perf_counter()
                (result,) = await self.ledger.create_transfers([transfer])
                latencies.append(time.perf_counter() - t0)
                assert result.status == CREATED

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return time.perf_counter() - start, latencies


async def _fill(
    directory: Path, transfers: int, random_ids: bool, singles: int, accounts: int
) -> dict[str, Any]:
    from ledger.embedded import EmbeddedEngine

    engine = EmbeddedEngine(directory, fsync=True)
    ledger = open_ledger(LedgerSettings(), engine=engine)
    filler = Filler(ledger, random_ids, accounts)
    await filler.setup()
    full = -(-transfers // BATCH_EVENTS_MAX)
    start = time.perf_counter()
    step = max(1, full // 10)
    for done in range(0, full, step):
        await filler.batches(min(step, full - done))
        print(
            f"  filled {min(done + step, full) * BATCH_EVENTS_MAX:,} transfers"
            f" ({time.perf_counter() - start:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    fill_s = time.perf_counter() - start
    gc.collect()
    rss, hwm = _rss_mib()
    quiet_s = _quiet()
    measured = await filler.batches(10)
    _quiet()
    single_s, single = await filler.singles(singles, 64)
    await ledger.close()
    engine.close()
    return {
        "transfers": full * BATCH_EVENTS_MAX,
        "fill_per_s": full * BATCH_EVENTS_MAX / fill_s,
        "quiet_s": quiet_s,
        "rss_mib": rss,
        "hwm_mib": hwm,
        "batch_per_s": 10 * BATCH_EVENTS_MAX / sum(measured),
        "single_per_s": singles / single_s,
        "single_p50_ms": _p(single, 50) * 1000,
        "single_p99_ms": _p(single, 99) * 1000,
    }


async def _start(directory: Path) -> dict[str, Any]:
    from ledger.embedded import EmbeddedEngine

    t0 = time.perf_counter()
    engine = EmbeddedEngine(directory, fsync=True)
    ledger = open_ledger(LedgerSettings(), engine=engine)
    await ledger.lookup_accounts([1])
    ready_s = time.perf_counter() - t0
    gc.collect()
    rss, _ = _rss_mib()
    await ledger.close()
    engine.close()
    return {"start_s": ready_s, "start_rss_mib": rss}


def _phase(
    phase: str,
    directory: Path,
    transfers: int,
    random_ids: bool,
    singles: int = 0,
    accounts: int = ACCOUNTS,
) -> dict[str, Any]:
    """Runs one phase in a process of its own; its answer is the JSON on its last line."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.engine_history", "--phase", phase),
            *("--dir", str(directory), "--transfers", str(transfers)),
            *("--singles", str(singles), "--accounts", str(accounts)),
            *(["--random-ids"] if random_ids else []),
        ],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _disk_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,5,20", help="millions of transfers, comma-separated")
    parser.add_argument("--dir", type=Path, default=None, help="where the data directories go")
    parser.add_argument(
        "--random-ids",
        action="store_true",
        help="random 127-bit transfer ids (as the service derives them) instead of"
        " TigerBeetle's time-based ids",
    )
    parser.add_argument(
        "--singles",
        type=int,
        default=200_000,
        help="single-transfer requests measured at each size (a window long enough to take in"
        " the engine's checkpoints, which come every 32 MiB of journal)",
    )
    parser.add_argument(
        "--accounts",
        type=int,
        default=ACCOUNTS,
        help="accounts the transfers go between (each batch to the next 8,189 of them, so that"
        " a checkpoint has many of them to write when there are many)",
    )
    parser.add_argument("--phase", choices=["fill", "start"], help=argparse.SUPPRESS)
    parser.add_argument("--transfers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        run = (
            _fill(args.dir, args.transfers, args.random_ids, args.singles, args.accounts)
            if args.phase == "fill"
            else _start(args.dir)
        )
        print(json.dumps(asyncio.run(run)), flush=True)
        return
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    root = Path(tempfile.mkdtemp(prefix="bench-history-", dir=args.dir))
    print(
        f"embedded engine, fsync on; python {sys.version.split()[0]}; {os.cpu_count()} cores;"
        f" {'random' if args.random_ids else 'time-based'} ids; {args.accounts:,} accounts;"
        f" data in {root}",
        flush=True,
    )
    header = (
        f"{'transfers':>12} {'RSS MiB':>9} {'disk B/tr':>9} {'start s':>8} {'start RSS':>9}"
        f" {'fill tr/s':>10} {'settle s':>8} {'batch tr/s':>10} {'single/s':>9} {'p50 ms':>7}"
        f" {'p99 ms':>7}"
    )
    print(header, flush=True)
    try:
        for millions in sizes:
            directory = root / f"{millions}m"
            directory.mkdir()
            filled = _phase(
                "fill",
                directory,
                int(millions * 1_000_000),
                args.random_ids,
                args.singles,
                args.accounts,
            )
            disk = _disk_bytes(directory)
            started = _phase("start", directory, 0, False)
            print(
                f"{filled['transfers']:>12,} {filled['rss_mib']:>9,.0f}"
                f" {disk / filled['transfers']:>9,.0f} {started['start_s']:>8.1f}"
                f" {started['start_rss_mib']:>9,.0f} {filled['fill_per_s']:>10,.0f}"
                f" {filled['quiet_s']:>8.1f}"
                f" {filled['batch_per_s']:>10,.0f} {filled['single_per_s']:>9,.0f}"
                f" {filled['single_p50_ms']:>7.2f} {filled['single_p99_ms']:>7.2f}",
                flush=True,
            )
            shutil.rmtree(directory)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
