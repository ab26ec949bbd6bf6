"""Credit service benchmark: debits and reserve-then-settle through the service layer, from 64
concurrent async callers, on one hot wallet and on many wallets. Prints ops/s and p50/p99.
Not a test.

    python -m bench.credits                        # embedded engine, durable (fsync)
    TB_ADDRESSES=127.0.0.1:3000 python -m bench.credits   # a real TigerBeetle cluster
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from grants.model import Category, Grant
from grants.service import GrantService
from ledger.client import open_ledger
from ledger.ids import operation_id, request_fingerprint
from ledger.settings import LedgerSettings
from wallets.catalog import Catalog, CreditType, Resource, Wallet
from wallets.service import CreditService

TENANT = 1


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def _row(name: str, ops: int, seconds: float, latencies: list[float]) -> None:
    print(
        f"{name:<44} {ops / seconds:>10,.0f} ops/s   p50 {_pct(latencies, 50):>7.2f} ms   "
        f"p99 {_pct(latencies, 99):>7.2f} ms   ({ops:,} in {seconds:.2f} s)",
        flush=True,
    )


class Bench:
    def __init__(self, service: CreditService, grant_service: GrantService, ledger_id: int) -> None:
        self.service = service
        self.grant_service = grant_service
        self.ledger_id = ledger_id
        self.run = f"{random.randrange(1 << 60):x}"
        self.n = 0

    def key(self) -> str:
        self.n += 1
        return f"{self.run}-{self.n}"

    async def wallets(self, count: int, credits: int) -> list[Wallet]:
        catalog = self.service.catalog
        base = random.randrange(1 << 60)
        wallets = []
        for i in range(count):
            resource = Resource(base + i, 1, TENANT, "agent")
            catalog.put_resource(resource)
            wallet = Wallet(base + 10_000_000 + i, resource.id, self.ledger_id)
            catalog.put_wallet(wallet)
            await self.service.open_wallet(wallet, TENANT)
            key = self.key()
            grant = Grant(
                id=operation_id(TENANT, key),
                wallet_id=wallet.id,
                ledger=self.ledger_id,
                amount=credits,
                category=Category.PAID,
                effective_at_ns=time.time_ns() - 10**9,
            )
            await self.grant_service.issue(
                grant, tenant=TENANT, fingerprint=request_fingerprint(b"b")
            )
            wallets.append(wallet)
        return wallets

    async def load(
        self, name: str, wallets: list[Wallet], total: int, callers: int, pair: bool
    ) -> None:
        latencies: list[float] = []
        todo = iter(range(total))

        async def caller() -> None:
            for i in todo:
                wallet = wallets[i % len(wallets)]
                t0 = time.perf_counter()
                if pair:
                    r = await self.service.reserve(
                        tenant=TENANT,
                        key=self.key(),
                        amount=3,
                        ledger=self.ledger_id,
                        wallet_id=wallet.id,
                        timeout_s=60,
                    )
                    await self.service.settle(
                        tenant=TENANT, key=self.key(), reservation_id=r.reservation_id, amount=2
                    )
                else:
                    await self.service.debit(
                        tenant=TENANT,
                        key=self.key(),
                        amount=1,
                        ledger=self.ledger_id,
                        wallet_id=wallet.id,
                    )
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        _row(name, total, time.perf_counter() - start, latencies)


async def main(args: argparse.Namespace) -> None:
    settings = LedgerSettings.from_env()
    with tempfile.TemporaryDirectory(prefix="bench-credits-") as tmp:
        engine = None
        if not settings.tb_addresses:
            from ledger.embedded import EmbeddedEngine

            engine = EmbeddedEngine(Path(tmp))
        ledger = open_ledger(settings, engine=engine)
        where = settings.tb_addresses or f"embedded engine, journal in {tmp}, fsync on"
        print(
            f"credits through the service layer; engine: {where}; "
            f"python {sys.version.split()[0]}; {args.callers} callers"
        )
        ledger_id = random.randrange(1000, 1 << 31)
        catalog = Catalog()
        catalog.put_credit_type(CreditType(ledger_id, "bench", "Bench", 0))
        service = CreditService(ledger, catalog)
        grant_service = GrantService(service.ledger, service.catalog, clock_ns=service.clock_ns)
        await service.open_ledger(ledger_id)
        bench = Bench(service, grant_service, ledger_id)
        hot = await bench.wallets(1, 10**12)
        many = await bench.wallets(args.wallets, 10**9)
        await bench.load("debits, one hot wallet", hot, args.ops, args.callers, False)
        await bench.load(f"debits, {args.wallets} wallets", many, args.ops, args.callers, False)
        await bench.load(
            "reserve-then-settle pairs, one hot wallet", hot, args.ops // 2, args.callers, True
        )
        await bench.load(
            f"reserve-then-settle pairs, {args.wallets} wallets",
            many,
            args.ops // 2,
            args.callers,
            True,
        )
        await ledger.close()
        if engine is not None:
            engine.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Credit service benchmark.")
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--wallets", type=int, default=1000)
    asyncio.run(main(parser.parse_args()))
