"""The composition of one running service: everything the handlers use, built from the
ledger and the Postgres pool that `create_app` is given."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from api.auth import KeyCache
from api.metrics import Metrics
from grants.service import GrantService
from ledger.db import Pool
from wallets.catalog import Catalog
from wallets.control import ControlPlane
from wallets.projection import MovementSink
from wallets.service import CreditService
from wallets.statements import Statements


@dataclass
class Services:
    pool: Pool
    catalog: Catalog
    service: CreditService
    grant_service: GrantService
    control: ControlPlane
    statements: Statements
    sink: MovementSink
    keys: KeyCache
    metrics: Metrics
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def liveness(self) -> list[str]:
        """What this process cannot recover from by itself, so that an outside supervisor
        (systemd, Kubernetes) should restart it: an engine process that its supervisor gave up
        on, or that has not come back after many attempts. Reads memory only: /healthz is
        probed often and must stay cheap."""
        health = self.service.ledger.health
        if health is None or health.recoverable:
            return []
        return [f"ledger: {health.detail}"]

    async def readiness(self) -> list[str]:
        """What is not answering: the engine, Postgres."""
        problems = []
        health = self.service.ledger.health
        if health is not None and health.state != "running":
            # Restarting, or given up on: a request would only be refused; say why instead.
            problems.append(f"ledger: {health.detail}")
        else:
            try:
                await asyncio.wait_for(self.service.ledger.lookup_accounts([1]), 2.0)
            except Exception as error:  # any failure means not ready
                problems.append(f"ledger: {error!r}")
        try:
            async with self.pool.connection(timeout=2.0) as conn:
                await conn.execute("SELECT 1")
        except Exception as error:
            problems.append(f"postgres: {error!r}")
        return problems
