"""Engine benchmark: prints ops/s and p50/p99 latency per scenario. Not a test.

    python -m bench.engine                      # embedded engine, durable (fsync), temp dir
    TB_ADDRESSES=127.0.0.1:3000 python -m bench.engine   # a real TigerBeetle cluster

Scenarios (each through `ledger.open_ledger`, the interface the service uses):
- batch:    full requests of 8189 single-phase transfers, one caller;
- chains:   full requests of linked chains of 4 transfers (2047 chains per request);
- two-phase: requests of 4094 pending transfers, then a request posting them;
- single:   one transfer per request, from 64 concurrent async callers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ledger.client import Ledger, open_ledger
from ledger.limits import BATCH_EVENTS_MAX
from ledger.settings import LedgerSettings
from ledger.types import (
    Account,
    CreateTransferStatus,
    Transfer,
    TransferFlags,
    new_id,
)

ACCOUNTS = 10_000
CREATED = CreateTransferStatus.CREATED


def _percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _row(name: str, ops: int, unit: str, seconds: float, latencies_s: list[float]) -> None:
    p50 = _percentile(latencies_s, 50) * 1000
    p99 = _percentile(latencies_s, 99) * 1000
    print(
        f"{name:<34} {ops / seconds:>12,.0f} {unit + '/s':<14} "
        f"p50 {p50:>8.2f} ms   p99 {p99:>8.2f} ms   ({ops:,} in {seconds:.2f} s)",
        flush=True,
    )


class Bench:
    def __init__(self, ledger: Ledger, ledger_id: int) -> None:
        self.ledger = ledger
        self.ledger_id = ledger_id
        self.base = new_id()

    def _account(self, i: int) -> int:
        return self.base + (i % ACCOUNTS)

    async def setup(self) -> None:
        accounts = [
            Account(id=self._account(i), ledger=self.ledger_id, code=1) for i in range(ACCOUNTS)
        ]
        results = await self.ledger.create_accounts(accounts)
        assert all(r.status.name in ("CREATED", "EXISTS") for r in results)

    def _transfer(self, i: int, **fields: int) -> Transfer:
        return Transfer(
            id=new_id(),
            debit_account_id=self._account(i),
            credit_account_id=self._account(i + 1),
            amount=1,
            ledger=self.ledger_id,
            code=1,
            **fields,
        )

    async def _timed(self, requests: list[list[Transfer]]) -> tuple[float, list[float]]:
        latencies = []
        start = time.perf_counter()
        for request in requests:
            t0 = time.perf_counter()
            results = await self.ledger.create_transfers(request)
            latencies.append(time.perf_counter() - t0)
            assert all(r.status == CREATED for r in results), {r.status for r in results}
        return time.perf_counter() - start, latencies

    async def batch(self, requests: int) -> None:
        batches = [[self._transfer(i) for i in range(BATCH_EVENTS_MAX)] for _ in range(requests)]
        seconds, latencies = await self._timed(batches)
        _row(
            "batch of 8189 transfers", requests * BATCH_EVENTS_MAX, "transfers", seconds, latencies
        )

    async def chains(self, requests: int) -> None:
        per_request = BATCH_EVENTS_MAX // 4
        batches = [
            [
                self._transfer(i, flags=TransferFlags.LINKED if i % 4 != 3 else 0)
                for i in range(per_request * 4)
            ]
            for _ in range(requests)
        ]
        seconds, latencies = await self._timed(batches)
        _row(
            "linked chains of 4 (full batches)",
            requests * per_request,
            "chains",
            seconds,
            latencies,
        )
        _row(
            "  the same, in transfers", requests * per_request * 4, "transfers", seconds, latencies
        )

    async def two_phase(self, requests: int) -> None:
        per_request = BATCH_EVENTS_MAX // 2
        pendings = [
            [
                self._transfer(i, flags=TransferFlags.PENDING, timeout=3600)
                for i in range(per_request)
            ]
            for _ in range(requests)
        ]
        posts = [
            [
                Transfer(
                    id=new_id(),
                    pending_id=p.id,
                    amount=1,
                    flags=TransferFlags.POST_PENDING_TRANSFER,
                )
                for p in batch
            ]
            for batch in pendings
        ]
        latencies = []
        start = time.perf_counter()
        for pending_batch, post_batch in zip(pendings, posts, strict=True):
            t0 = time.perf_counter()
            for batch in (pending_batch, post_batch):
                results = await self.ledger.create_transfers(batch)
                assert all(r.status == CREATED for r in results)
            latencies.append(time.perf_counter() - t0)
        seconds = time.perf_counter() - start
        _row(
            "pending-then-post pairs (batches)", requests * per_request, "pairs", seconds, latencies
        )

    async def single(self, total: int, callers: int) -> None:
        transfers = [self._transfer(i) for i in range(total)]
        latencies: list[float] = []
        queue = iter(transfers)

        async def caller() -> None:
            for transfer in queue:
                t0 = time.perf_counter()
                results = await self.ledger.create_transfers([transfer])
                latencies.append(time.perf_counter() - t0)
                assert results[0].status == CREATED

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        seconds = time.perf_counter() - start
        _row(f"single transfers, {callers} callers", total, "requests", seconds, latencies)


async def main(args: argparse.Namespace) -> None:
    settings = LedgerSettings.from_env()
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        engine = None
        if not settings.tb_addresses:
            from ledger.embedded import EmbeddedEngine

            engine = EmbeddedEngine(Path(tmp), fsync=not args.no_fsync)
        ledger = open_ledger(settings, engine=engine)
        where = (
            f"cluster {settings.tb_addresses}"
            if settings.tb_addresses
            else f"embedded engine, journal in {tmp}, fsync {'off' if args.no_fsync else 'on'}"
        )
        print(f"engine: {where}; python {sys.version.split()[0]}; {os.cpu_count()} cores")
        bench = Bench(ledger, ledger_id=args.ledger)
        await bench.setup()
        scenarios: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("batch", lambda: bench.batch(args.batches)),
            ("chains", lambda: bench.chains(args.batches)),
            ("two-phase", lambda: bench.two_phase(args.batches)),
            ("single", lambda: bench.single(args.singles, args.callers)),
        ]
        for name, run in scenarios:
            if args.only and name not in args.only:
                continue
            await run()
        await ledger.close()
        if engine is not None:
            engine.close()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="requests per batch scenario")
    parser.add_argument("--singles", type=int, default=20_000, help="single-transfer requests")
    parser.add_argument("--callers", type=int, default=64, help="concurrent single callers")
    parser.add_argument("--ledger", type=int, default=9, help="TigerBeetle ledger to use")
    parser.add_argument("--no-fsync", action="store_true", help="embedded: skip fsync")
    parser.add_argument("--only", nargs="*", choices=["batch", "chains", "two-phase", "single"])
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
