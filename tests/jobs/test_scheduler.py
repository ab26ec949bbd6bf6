"""The background jobs: the sweep and reconciliation ticks, their scheduling options, and one
leader among several processes (a Postgres advisory lock)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import types
from collections.abc import AsyncIterator
from typing import Any
from unittest import mock

import anyio
import pytest
from apscheduler.schedulers.base import STATE_STOPPED

from grants.model import Category
from jobs.scheduler import Jobs, JobSettings
from ledger import db
from ledger.client import open_ledger
from ledger.embedded import EmbeddedEngine
from ledger.repositories.resources import ResourceKind
from ledger.settings import LedgerSettings
from wallets.catalog import Catalog
from wallets.control import ControlPlane, GrantRequest
from wallets.service import CreditService

pytestmark = pytest.mark.anyio


@pytest.fixture
async def plane(pool: db.Pool) -> AsyncIterator[ControlPlane]:
    engine = EmbeddedEngine()
    ledger = open_ledger(LedgerSettings(), engine=engine)
    service = CreditService(ledger, Catalog())
    yield ControlPlane(pool, service)
    await ledger.close()
    engine.close()


async def test_the_sweep_tick_expires_blocks_only_when_leader(plane: ControlPlane) -> None:
    credit_type, _ = await plane.create_credit_type(
        code="jobs", name="J", asset_scale=0, actor="t", tenant=0, key="j-ct"
    )
    customer, _ = await plane.create_customer(name="J", actor="t", tenant=0, key="j-cu")
    resource, _ = await plane.create_resource(
        customer_id=customer.id, kind=ResourceKind.AGENT, actor="t", tenant=0, key="j-re"
    )
    wallet, _ = await plane.create_wallet(
        resource_id=resource.id, ledger=credit_type.ledger, actor="t", tenant=0, key="j-wa"
    )
    now = dt.datetime.now(dt.UTC)
    grant, _ = await plane.issue_grant(
        GrantRequest(
            wallet_id=wallet.id,
            amount=70,
            category=Category.PROMOTIONAL,
            effective_at=now - dt.timedelta(hours=2),
            expires_at=now - dt.timedelta(seconds=1),
        ),
        tenant=0,
        key="j-gr",
        actor="t",
    )
    jobs = Jobs(plane, JobSettings())
    await jobs.sweep()
    assert jobs.sweeps == 0  # not the leader: nothing ran
    jobs.leader = True
    await jobs.sweep()
    (account,) = await plane.service.ledger.lookup_accounts([grant.grant_id])
    assert account.debits_posted == 70  # swept to breakage
    await jobs.reconcile()
    assert (jobs.sweeps, jobs.reconciles) == (1, 1)


async def test_ticks_never_overlap_and_coalesce(plane: ControlPlane) -> None:
    scheduler = Jobs(plane, JobSettings(sweep_interval_s=5)).scheduler()
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {
        "expiry-sweep",
        "reconcile",
        "projection-check",
        "finance-post",
        "alerts",
        "grant-expiring",
        "webhook-dispatch",
        "webhook-deliver",
        "plan-allocations",
    }
    for job in jobs.values():
        assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (True, 1, 30)


async def test_one_leader_among_processes(plane: ControlPlane, migrated_db_url: str) -> None:
    with anyio.fail_after(30):
        await _one_leader(plane, migrated_db_url)


async def _one_leader(plane: ControlPlane, migrated_db_url: str) -> None:
    settings = JobSettings(leader_retry_s=0.05)
    first, second = Jobs(plane, settings), Jobs(plane, settings)
    a = asyncio.create_task(first._lead(migrated_db_url))
    b = asyncio.create_task(second._lead(migrated_db_url))
    for _ in range(100):
        if first.leader or second.leader:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    assert first.leader != second.leader
    leader, follower = (first, second) if first.leader else (second, first)
    leader.stop()  # the leader goes away: its connection closes, the lock is free
    await (a if leader is first else b)
    for _ in range(200):
        if follower.leader:
            break
        await asyncio.sleep(0.02)
    assert follower.leader
    follower.stop()
    await (b if leader is first else a)
    assert not follower.leader


async def test_the_projection_check_runs_on_the_leader_and_the_others_read_it(
    plane: ControlPlane,
) -> None:
    leader, other = Jobs(plane, JobSettings()), Jobs(plane, JobSettings())
    leader.leader = True
    await leader.check_projection()
    assert leader.projection_checks == 1
    assert leader.projection_check.last_counts is not None
    await other.check_projection()  # not the leader: it reads the leader's run
    assert other.projection_checks == 0
    assert other.projection_check.last_counts == leader.projection_check.last_counts
    assert other.projection_check.last_ran_at_s == leader.projection_check.last_ran_at_s


def _alerts_only(*, stop_wait_s: float) -> JobSettings:
    """The alerts tick every 0.05 s, a quick leadership; the other frequent ticks far apart."""
    return JobSettings(
        alerts_interval_s=0.05,
        leader_retry_s=0.05,
        webhook_dispatch_interval_s=600,
        webhook_deliver_interval_s=600,
        finance_post_interval_s=600,
        stop_wait_s=stop_wait_s,
    )


@pytest.mark.parametrize("tick_s", [0.6, None])
async def test_a_shutdown_waits_for_a_running_tick_then_cuts_it_short(
    plane: ControlPlane,
    migrated_db_url: str,
    caplog: pytest.LogCaptureFixture,
    tick_s: float | None,
) -> None:
    """A tick still running when the service stops gets `stop_wait_s` to finish (0.6 s of
    work, 0.3 s of it after the stop), then is cancelled (one that would never end), with a
    line at INFO: not left to APScheduler's shutdown, which cancelled it and logged an error
    with its traceback. The ticks skipped meanwhile (`max_instances=1`) are not logged
    either."""
    started = asyncio.Event()
    ended: list[str] = []

    class Slow(Jobs):
        async def derive_alerts(self) -> None:
            if not self.leader or ended:
                return
            started.set()
            try:
                if tick_s is None:
                    await asyncio.Event().wait()
                else:
                    await asyncio.sleep(tick_s)
                ended.append("finished")
            except asyncio.CancelledError:
                ended.append("cancelled")
                raise

    jobs = Slow(plane, _alerts_only(stop_wait_s=1.0))
    with caplog.at_level(logging.INFO), anyio.fail_after(30):
        run = asyncio.create_task(jobs.run(migrated_db_url))
        await started.wait()
        await asyncio.sleep(0.3)  # the next ticks come, and are skipped, not logged
        jobs.stop()
        await run
    assert ended == (["finished"] if tick_s else ["cancelled"])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    cut = [r for r in caplog.records if r.getMessage().startswith("alerts: cut short")]
    assert len(cut) == (0 if tick_s else 1)


async def test_a_cancelled_run_cuts_its_running_tick_short_quietly(
    plane: ControlPlane, migrated_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`credit-ledger jobs` stops by cancellation (Ctrl-C), not `stop()`: the same quiet end."""
    started = asyncio.Event()
    ended: list[str] = []

    class Stuck(Jobs):
        async def derive_alerts(self) -> None:
            if not self.leader:
                return
            started.set()
            try:
                await asyncio.Event().wait()
            finally:
                ended.append("ended")

    jobs = Stuck(plane, _alerts_only(stop_wait_s=0.1))
    with caplog.at_level(logging.INFO), anyio.fail_after(30):
        run = asyncio.create_task(jobs.run(migrated_db_url))
        await started.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    assert ended == ["ended"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_serve_stopping_jobs_whose_leadership_hangs_still_ends_every_tick() -> None:
    """`serve`'s shutdown (`cli._stop_jobs`) when the jobs' own connection hangs (a Postgres
    that stopped answering), and so does a tick, which loses its first cancellation: the run
    is cancelled again while its clean-up waits for the tick; the clean-up still cancels the
    tick, stops the scheduler and closes the webhooks' client, before the pool closes under
    them."""
    from cli import _start, _stop_jobs

    began = asyncio.Event()

    class Hanging(Jobs):
        async def _lead(self, database: object) -> None:
            self.leader = True
            await asyncio.sleep(3600)

        async def derive_alerts(self) -> None:
            if self.leader and not began.is_set():
                began.set()
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    pass  # a cancellation lost (Python 3.11's race, ledger/tasks.py)
                await asyncio.sleep(3600)

    webhooks = mock.Mock()
    webhooks.aclose = mock.AsyncMock()
    jobs = Hanging(
        mock.MagicMock(),
        _alerts_only(stop_wait_s=0.2),
        projection_check=mock.AsyncMock(),
        poster=mock.Mock(),
        alerts=mock.Mock(),
        webhooks=webhooks,
        plans=mock.Mock(),
    )
    schedulers: list[Any] = []
    make = jobs.scheduler
    jobs.scheduler = lambda: schedulers.append(make()) or schedulers[-1]  # type: ignore[method-assign]
    state = types.SimpleNamespace()
    with anyio.fail_after(30):
        _start(jobs.run("unused"), state)
        await began.wait()
        await _stop_jobs(jobs, state)
        await asyncio.sleep(0)  # (APScheduler's shutdown ends in the next turn of the loop)
    assert state.jobs_task.done()
    assert not jobs._running
    assert schedulers[0].state == STATE_STOPPED
    assert webhooks.aclose.await_count == 1
