"""A small world for the credit service tests: one credit type, a subscription, a team under
it and an agent under the team. On the embedded engine with a manual clock, or (the `any_world`
fixture) also on a real cluster when TB_ADDRESSES is set, with fresh ids and the wall clock."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest

from grants.model import Category, Grant
from grants.service import GrantService
from ledger.client import open_ledger
from ledger.clock import ManualClock
from ledger.embedded import EmbeddedEngine
from ledger.ids import operation_id, request_fingerprint
from ledger.settings import LedgerSettings
from wallets.catalog import Budget, Catalog, CreditType, OverdraftMode, Period, Resource, Wallet
from wallets.service import CreditService
from wallets.statements import Statements

TENANT = 7
SUB, TEAM, AGENT = 11, 12, 13
S = 1_000_000_000


class World:
    def __init__(self, cluster: LedgerSettings | None = None) -> None:
        self.on_cluster = cluster is not None
        self.clock = ManualClock(start_ns=1_735_689_600 * S)  # 2025-01-01T00:00:00Z
        self.engine: EmbeddedEngine | None = None
        clock_ns: Any = time.time_ns if cluster else self.clock
        if cluster is None:
            self.engine = EmbeddedEngine(clock_ns=self.clock)
        self.ledger = open_ledger(cluster or LedgerSettings(), engine=self.engine)
        # On a cluster, whose state outlives the test, every id is fresh.
        rng = random.Random()
        self.ledger_id = rng.randrange(1000, 1 << 32) if cluster else 1
        self.id_base = rng.randrange(1 << 64) if cluster else 0
        self.run_id = f"{rng.randrange(1 << 64):x}" if cluster else "t"
        self.catalog = Catalog()
        self.service = CreditService(self.ledger, self.catalog, clock_ns=clock_ns)
        self.grant_service = GrantService(
            self.service.ledger, self.service.catalog, clock_ns=self.service.clock_ns
        )
        self.statements = Statements(self.ledger, self.catalog, clock_ns=clock_ns)
        self.keys = itertools.count(1)
        self.loop = asyncio.new_event_loop()
        self.catalog.put_credit_type(CreditType(self.ledger_id, "credits", "Credits", 0))
        for rid, parent in ((SUB, None), (TEAM, SUB), (AGENT, TEAM)):
            self.catalog.put_resource(Resource(rid, 1, TENANT, "x", parent))
        self.run(self.service.open_ledger(self.ledger_id))

    def now(self) -> int:
        return time.time_ns() if self.on_cluster else self.clock()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def key(self) -> str:
        return f"{self.run_id}-k{next(self.keys)}"

    def k(self, key: str) -> str:
        """A test's own key, made unique per run (a cluster remembers every key)."""
        return f"{self.run_id}-{key}"

    def wallet(self, resource_id: int, **kw: Any) -> Wallet:
        wallet = Wallet(
            id=self.id_base + 1000 + resource_id,
            resource_id=resource_id,
            ledger=self.ledger_id,
            **kw,
        )
        self.catalog.put_wallet(wallet)
        self.run(self.service.open_wallet(wallet, TENANT))
        return wallet

    def grant(self, wallet: Wallet, amount: int, **kw: Any) -> Grant:
        key = self.key()
        fields: dict[str, Any] = {
            "id": operation_id(TENANT, key),
            "wallet_id": wallet.id,
            "ledger": self.ledger_id,
            "amount": amount,
            "category": Category.PAID,
            "effective_at_ns": self.now() - S,
        }
        fields.update(kw)
        grant = Grant(**fields)
        fingerprint = request_fingerprint(key.encode())
        self.run(self.grant_service.issue(grant, tenant=TENANT, fingerprint=fingerprint))
        return grant

    def budget(self, resource_id: int, cap: int, period: Period = Period.DAY) -> Budget:
        budget = Budget(
            id=self.id_base + 5000 + resource_id * 10 + len(self.catalog.budgets),
            resource_id=resource_id,
            ledger=self.ledger_id,
            period=period,
            cap=cap,
        )
        self.catalog.put_budget(budget)
        return budget

    def debit(self, amount: int, key: str | None = None, **kw: Any) -> Any:
        return self.run(self.debit_async(amount, key, **kw))

    async def debit_async(self, amount: int, key: str | None = None, **kw: Any) -> Any:
        kw.setdefault("resource_id", AGENT)
        return await self.service.debit(
            tenant=TENANT,
            key=self.k(key) if key else self.key(),
            amount=amount,
            ledger=self.ledger_id,
            **kw,
        )

    def reserve(self, amount: int, key: str | None = None, timeout_s: int = 60, **kw: Any) -> Any:
        return self.run(self.reserve_async(amount, key, timeout_s, **kw))

    async def reserve_async(
        self, amount: int, key: str | None = None, timeout_s: int = 60, **kw: Any
    ) -> Any:
        kw.setdefault("resource_id", AGENT)
        return await self.service.reserve(
            tenant=TENANT,
            key=self.k(key) if key else self.key(),
            amount=amount,
            ledger=self.ledger_id,
            timeout_s=timeout_s,
            **kw,
        )

    def settle(self, reservation_id: int, amount: int, key: str | None = None, **kw: Any) -> Any:
        return self.run(
            self.service.settle(
                tenant=TENANT,
                key=self.k(key) if key else self.key(),
                reservation_id=reservation_id,
                amount=amount,
                **kw,
            )
        )

    def release(self, reservation_id: int, key: str | None = None) -> Any:
        return self.run(
            self.service.release(
                tenant=TENANT, key=self.k(key) if key else self.key(), reservation_id=reservation_id
            )
        )

    def check(self, amount: int, **kw: Any) -> Any:
        kw.setdefault("resource_id", AGENT)
        return self.run(self.service.check(amount=amount, ledger=self.ledger_id, **kw))

    def account(self, account_id: int) -> Any:
        (a,) = self.run(self.ledger.lookup_accounts([account_id]))
        return a

    def available(self, account_id: int) -> int:
        a = self.account(account_id)
        return int(a.credits_posted - a.debits_posted - a.debits_pending)

    def close(self) -> None:
        self.run(self.ledger.close())
        if self.engine is not None:
            self.engine.close()
        self.loop.close()


ENGINES = ["embedded"] + (["cluster"] if os.environ.get("TB_ADDRESSES") else [])


@pytest.fixture(params=ENGINES)
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    if request.param == "cluster" and request.node.get_closest_marker("manual_clock"):
        pytest.skip("moves the engine's clock, which only the embedded engine allows")
    w = World() if request.param == "embedded" else World(LedgerSettings.from_env())
    yield w
    w.close()


any_world = world


__all__ = ["AGENT", "SUB", "TEAM", "TENANT", "OverdraftMode", "Period", "World"]
