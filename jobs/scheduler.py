"""Background jobs on APScheduler 3: the expiry sweep, reconciliation of the dual writes,
reconciliation of the projection against the engine, the finance poster, the alerts deriver
(with the automatic top-ups), the scan for blocks about to expire, the webhooks' fan-out and
delivery (wallets/webhook_delivery.py), and the plans' allocations.

Invariants:
- Every tick is bounded and idempotent: a sweep first carries out the rollovers that are due
  (at most ROLLOVER_BATCH_MAX; ledger/README.md "Rollover"), then moves what is available in
  expired blocks
  (ids derived from the block's balances, so a repeated tick moves nothing twice);
  reconciliation finishes interrupted dual writes, which is idempotent by construction; a check
  of the projection only reads (it appends its run to `projection_checks`) and reads at most
  PROJECTION_CHECK_TRANSFERS_MAX transfers of its range, besides every owned account once.
- One leader: ticks run only in the process that holds a Postgres advisory lock, on a
  connection of its own; when that connection drops, another process takes over.
- `coalesce`, `max_instances=1` and `misfire_grace_time` are explicit: a slow tick is never run
  twice at once, and missed ticks collapse into one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from psycopg.conninfo import make_conninfo

from finance.posting import Poster
from ledger.client import LedgerUnavailable
from ledger.clock import datetime_of_ns
from ledger.db import DatabaseSettings, connection_kwargs, resolve_conninfo
from ledger.ids import derive_id
from ledger.limits import (
    ALERTS_BATCHES_PER_TICK,
    FINANCE_POST_BATCHES_PER_TICK,
    PLAN_ALLOCATIONS_PER_TICK,
)
from ledger.tasks import stop_tasks
from wallets.alerts import Alerts
from wallets.control import ControlPlane
from wallets.plans import PlanService
from wallets.reconcile_projection import ProjectionCheck
from wallets.webhook_delivery import Deliverer

_logger = logging.getLogger(__name__)

# The advisory lock whose holder runs the jobs (a signed 64-bit key).
LEADER_LOCK_KEY = derive_id("lock/jobs-leader") % (1 << 63)


def _skipped_while_running(record: logging.LogRecord) -> bool:
    """False for APScheduler's line about a tick skipped because the one before still runs."""
    return "maximum number of running instances reached" not in record.getMessage()


@dataclass(frozen=True)
class JobSettings:
    sweep_interval_s: float = 60.0
    reconcile_interval_s: float = 300.0
    # Pending dual writes younger than this are left to the request that is finishing them; a
    # wallet younger than this may not have its accounts yet (the projection's check).
    reconcile_older_than_s: float = 60.0
    # Reconciliation of the projection: it reads every owned account once (a few seconds per
    # 100,000 accounts with the embedded engine), so less often than the dual writes'.
    projection_check_interval_s: float = 600.0
    # The finance poster (finance/posting.py): journals from the projection. Finance reads
    # them by the month; a few seconds behind the projection is plenty.
    finance_post_interval_s: float = 5.0
    # The alerts deriver (wallets/alerts.py): an event's latency is the projection's lag plus
    # this. The scan for blocks about to expire (grant.expiring) needs no such hurry.
    alerts_interval_s: float = 1.0
    expiring_scan_interval_s: float = 60.0
    # Webhooks: the fan-out of the outbox and the sending of due deliveries. Each tick is short
    # (the sending runs on in tasks bounded per endpoint), so both run often.
    webhook_dispatch_interval_s: float = 1.0
    webhook_deliver_interval_s: float = 1.0
    # The plans' allocations (wallets/plans.py): a period's credits arrive within this of its
    # start, each tick issuing at most PLAN_ALLOCATIONS_PER_TICK.
    plan_allocation_interval_s: float = 30.0
    misfire_grace_time_s: int = 30
    leader_retry_s: float = 10.0
    # At shutdown, ticks still running get this long to finish; the rest are cancelled (each
    # tick is a transaction, or idempotent steps: the next leader takes it up).
    stop_wait_s: float = 1.0

    def __post_init__(self) -> None:
        assert self.sweep_interval_s > 0 and self.reconcile_interval_s > 0
        assert self.projection_check_interval_s > 0 and self.finance_post_interval_s > 0
        assert self.plan_allocation_interval_s > 0
        assert self.reconcile_older_than_s >= 0 and self.leader_retry_s > 0
        assert self.alerts_interval_s > 0 and self.expiring_scan_interval_s > 0
        assert self.webhook_dispatch_interval_s > 0 and self.webhook_deliver_interval_s > 0
        assert self.stop_wait_s >= 0


class Jobs:
    def __init__(
        self,
        control: ControlPlane,
        settings: JobSettings,
        *,
        projection_check: ProjectionCheck | None = None,
        poster: Poster | None = None,
        alerts: Alerts | None = None,
        webhooks: Deliverer | None = None,
        plans: PlanService | None = None,
    ) -> None:
        self.control = control
        self.settings = settings
        # The service passes its own, whose last run its metrics show.
        self.projection_check = projection_check or ProjectionCheck(
            control.service.ledger,
            control.pool,
            catalog_grace_s=settings.reconcile_older_than_s,
        )
        self.poster = poster or Poster(
            control.pool, functional_currency=control.functional_currency
        )
        self.alerts = alerts or Alerts(control)
        self.leader = False
        self.alert_ticks = 0
        self.expiring_scans = 0
        self.webhooks = webhooks or Deliverer(control.pool)
        self.webhook_dispatches = 0
        self.webhook_deliveries = 0
        self.plans = plans or PlanService(control)
        self.plan_allocations = 0
        self.finance_posts = 0
        self.sweeps = 0
        self.reconciles = 0
        self.projection_checks = 0
        self._stopping = asyncio.Event()
        self._running: set[asyncio.Task[Any]] = set()  # ticks running now (`_tracked`)

    def stop(self) -> None:
        """Ends `run` (and gives up the leadership) at its next check."""
        self._stopping.set()

    async def _pause(self) -> bool:
        """Waits one retry period; True when asked to stop meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.settings.leader_retry_s)
        return self._stopping.is_set()

    async def sweep(self) -> None:
        if not self.leader:
            return
        # The service's clock: a sandbox's test clock moves expiries as it moves.
        report = await self.control.sweep(self.control.service.clock_ns())
        self.sweeps += 1
        if report.rolled_over:
            _logger.info(
                "rollover: %d blocks, %d credits carried",
                len(report.rolled_over),
                sum(r.taken + r.floor for r in report.rolled_over),
            )
        if report.swept:
            _logger.info(
                "expiry sweep: %d blocks, %d credits",
                len(report.swept),
                sum(s.amount for s in report.swept),
            )

    async def reconcile(self) -> None:
        if not self.leader:
            return
        report = await self.control.reconcile(older_than_s=self.settings.reconcile_older_than_s)
        self.reconciles += 1
        if report.grants_finished:
            _logger.warning("reconciliation finished %d grants", len(report.grants_finished))

    async def check_projection(self) -> None:
        """The leader compares the projection with the engine (its differences are logged,
        recorded and in the metrics); another process reads the leader's last run, so that its
        metrics say the same."""
        if not self.leader:
            await self.projection_check.refresh()
            return
        try:
            await self.projection_check.run()
        except LedgerUnavailable as error:
            _logger.warning("reconciliation of the projection stopped: %s", error)
            return
        self.projection_checks += 1

    async def post_finance(self) -> None:
        """The leader posts the journals of what the projection has added (bounded batches,
        each its own transaction, until caught up)."""
        if not self.leader:
            return
        entries = await self.poster.catch_up(batches_max=FINANCE_POST_BATCHES_PER_TICK)
        self.finance_posts += 1
        if entries:
            _logger.debug("finance: posted %d entries", entries)

    async def derive_alerts(self) -> None:
        """The leader derives events from what the projection added (bounded batches), then
        issues the automatic top-ups those crossings (or a crash) left pending."""
        if not self.leader:
            return
        try:
            report = await self.alerts.tick(batches_max=ALERTS_BATCHES_PER_TICK)
        except LedgerUnavailable as error:  # a budget period's account is read from the engine
            _logger.warning("alerts stopped: %s", error)
            return
        self.alert_ticks += 1
        if report.events or report.top_ups:
            _logger.debug("alerts: %d events, %d top-ups", report.events, report.top_ups)

    async def scan_expiring(self) -> None:
        """The leader announces blocks with credits left that expire within the notice window
        (the service's clock: a sandbox's test clock moves it)."""
        if not self.leader:
            return
        await self.alerts.scan_expiring(self.control.service.clock_ns())
        self.expiring_scans += 1

    async def dispatch_webhooks(self) -> None:
        """The leader fans undispatched events out into deliveries (one bounded transaction)."""
        if not self.leader:
            return
        report = await self.webhooks.dispatch(datetime_of_ns(self.control.service.clock_ns()))
        self.webhook_dispatches += 1
        if report.events:
            _logger.debug("webhooks: %d events, %d deliveries", report.events, report.deliveries)

    async def deliver_webhooks(self) -> None:
        """The leader starts sending due deliveries; the requests run on in tasks of their own
        (bounded per endpoint), so a dead endpoint never holds this tick."""
        if not self.leader:
            return
        await self.webhooks.start(datetime_of_ns(self.control.service.clock_ns()))
        self.webhook_deliveries += 1

    async def allocate_plans(self) -> None:
        """The leader issues the plans' allocations due by the service's clock (a bounded
        batch; the next tick goes on). Safe beside another scheduler: rows are claimed with
        SKIP LOCKED and keyed by (subscription, rule, period)."""
        if not self.leader:
            return
        report = await self.plans.allocate_due(
            self.control.service.clock_ns(), PLAN_ALLOCATIONS_PER_TICK
        )
        self.plan_allocations += 1
        if report.finished:
            _logger.info("plans: %d allocations finished", report.finished)
        if report.failed:
            _logger.warning("plans: %d allocations not finished", len(report.failed))

    def scheduler(self) -> AsyncIOScheduler:
        # APScheduler says "Running job ..." and "... executed successfully" at INFO for every
        # tick: a line a minute that tells nothing. Its warnings and errors still show.
        logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
        # Nor that a tick was skipped because the one before still runs: `max_instances=1`
        # and `coalesce` are the design (a line a second under load, at WARNING).
        apscheduler_log = logging.getLogger("apscheduler.scheduler")
        if _skipped_while_running not in apscheduler_log.filters:
            apscheduler_log.addFilter(_skipped_while_running)
        scheduler = AsyncIOScheduler(timezone="UTC")
        options = {
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": self.settings.misfire_grace_time_s,
        }
        ticks = [
            ("expiry-sweep", self.sweep, self.settings.sweep_interval_s),
            ("reconcile", self.reconcile, self.settings.reconcile_interval_s),
            ("projection-check", self.check_projection, self.settings.projection_check_interval_s),
            ("finance-post", self.post_finance, self.settings.finance_post_interval_s),
            ("alerts", self.derive_alerts, self.settings.alerts_interval_s),
            ("grant-expiring", self.scan_expiring, self.settings.expiring_scan_interval_s),
            ("webhook-dispatch", self.dispatch_webhooks, self.settings.webhook_dispatch_interval_s),
            ("webhook-deliver", self.deliver_webhooks, self.settings.webhook_deliver_interval_s),
            ("plan-allocations", self.allocate_plans, self.settings.plan_allocation_interval_s),
        ]
        for id_, tick, interval_s in ticks:
            scheduler.add_job(
                self._tracked(id_, tick),
                "interval",
                seconds=interval_s,
                id=id_,
                name=id_,
                **options,
            )
        return scheduler

    def _tracked(
        self, name: str, tick: Callable[[], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        """`tick`, known to `run` while it runs, so that a shutdown waits for it (or cancels
        it) rather than leave it to APScheduler's shutdown, which cancelled it and logged an
        error with its traceback, for every tick busy at a Ctrl-C."""

        async def run() -> None:
            task = asyncio.current_task()
            assert task is not None
            self._running.add(task)
            try:
                await tick()
            except asyncio.CancelledError:
                if not self._stopping.is_set():
                    raise
                _logger.info("%s: cut short by the shutdown; the next leader takes it up", name)
            finally:
                self._running.discard(task)

        return run

    async def _finish_running(self) -> None:
        """Waits up to `stop_wait_s` for the ticks still running, then cancels the others (and
        again, as `stop_tasks` does, should one lose its cancellation)."""
        if not self._running:
            return
        _, late = await asyncio.wait(set(self._running), timeout=self.settings.stop_wait_s)
        if late:
            await stop_tasks(late, grace_s=self.settings.stop_wait_s + 1.0)

    async def run(self, database: DatabaseSettings | str) -> None:
        """Runs the jobs until cancelled, as leader whenever this process holds the lock."""
        scheduler = self.scheduler()
        scheduler.start()
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(psycopg.OperationalError):
                    await self._lead(database)
                self.leader = False
                await self._pause()
        finally:
            self._stopping.set()  # (also when cancelled: `credit-ledger jobs` at a Ctrl-C)
            self.leader = False
            # (APScheduler's shutdown cancels the ticks still running, which it then logs as
            # errors: they get their time first, and are cancelled here if they need more.)
            scheduler.pause()
            try:
                await self._finish_running()
            finally:  # (also when this cleanup is itself cancelled: `stop_tasks` cancels again)
                for task in self._running:
                    task.cancel()
                scheduler.shutdown(wait=False)
                await self.webhooks.aclose()

    async def _lead(self, database: DatabaseSettings | str) -> None:
        if isinstance(database, DatabaseSettings):
            base = await resolve_conninfo(database)
            conninfo = make_conninfo(base, **connection_kwargs(database, base))
        else:
            conninfo = database
        async with await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, connect_timeout=10
        ) as conn:
            while not self._stopping.is_set():
                cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,))
                row = await cursor.fetchone()
                self.leader = bool(row and row[0])
                if self.leader:
                    _logger.info("this process runs the background jobs")
                    # Hold the lock for as long as the connection lives; check it now and then.
                    while not await self._pause():
                        await conn.execute("SELECT 1")
                    self.leader = False
                    return  # closing the connection frees the lock for another process
                await self._pause()
