"""The composition of one running service: everything the handlers use, built from the
ledger and the Postgres pool that `create_app` is given."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from api.auth import KeyCache
from api.metrics import Metrics
from grants.service import GrantService
from ledger.clock import TestClock
from ledger.db import Pool
from wallets.catalog import Catalog
from wallets.control import ControlPlane
from wallets.plans import PlanService
from wallets.projection import ProjectionFeed, ProjectionStatus
from wallets.reconcile_projection import ProjectionCheck
from wallets.service import CreditService
from wallets.statements import Statements

_logger = logging.getLogger(__name__)


@dataclass
class Services:
    pool: Pool
    catalog: Catalog
    service: CreditService
    grant_service: GrantService
    control: ControlPlane
    statements: Statements
    projection: ProjectionFeed  # run in this process when ApiSettings.projection
    projection_status: ProjectionStatus
    # Reconciliation of the projection against the engine: the jobs run it, the metrics show
    # its last run.
    projection_check: ProjectionCheck
    keys: KeyCache
    metrics: Metrics
    plans: PlanService  # plans, subscriptions, and their allocations (the jobs issue them)
    # A sandbox's test clock (`serve --test-clock`), which every clock of the service reads;
    # None: the wall clock.
    test_clock: TestClock | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Background tasks that ended while the service ran (each runs until the service stops).
    tasks_ended: list[str] = field(default_factory=list)

    def start(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        """Runs a background task for as long as the service runs; should it end before, the
        service cannot do its work (a stale cache, a projection that stopped): it is logged, and
        /healthz fails so that an outside supervisor restarts the service."""
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(self._task_done)
        self.tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return  # the service is stopping
        error = task.exception()
        _logger.error("background task %r ended", task.get_name(), exc_info=error)
        self.tasks_ended.append(f"background task {task.get_name()!r} ended: {error!r}")

    def liveness(self) -> list[str]:
        """What this process cannot recover from by itself, so that an outside supervisor
        (systemd, Kubernetes) should restart it: an engine process that its supervisor gave up
        on, or that has not come back after many attempts; a background task that ended. Reads
        memory only: /healthz is probed often and must stay cheap."""
        problems = list(self.tasks_ended)
        health = self.service.ledger.health
        if health is not None and not health.recoverable:
            problems.append(f"ledger: {health.detail}")
        return problems

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
