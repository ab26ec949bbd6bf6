# ruff: noqa: F811 - the fixtures imported from clocked_fixtures stand again as parameters
"""The alerts ticks in the scheduler: only the leader derives and scans; two schedulers'
ticks at once write each event once."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from grants.model import Category
from jobs.scheduler import Jobs, JobSettings
from ledger.clock import ManualClock, datetime_of_ns
from ledger.repositories.resources import ResourceKind
from tests.integration.clocked_fixtures import clock, plane, pool  # noqa: F401
from wallets.alerts import Alerts, create_threshold
from wallets.control import ControlPlane, GrantRequest
from wallets.projection import ProjectionFeed

pytestmark = pytest.mark.anyio


async def _types(plane: ControlPlane) -> list[str]:
    async with plane.pool.connection() as conn:
        cursor = await conn.execute("SELECT type FROM events ORDER BY seq")
        return [row[0] for row in await cursor.fetchall()]


async def test_the_alerts_ticks_run_on_the_leader_once(
    plane: ControlPlane, clock: ManualClock
) -> None:
    await plane.create_credit_type(
        ledger=500, code="al", name="A", asset_scale=0, actor="t", tenant=0, key="ct"
    )
    customer, _ = await plane.create_customer(name="J", actor="t", tenant=0, key="cu")
    resource, _ = await plane.create_resource(
        customer_id=customer.id, kind=ResourceKind.AGENT, actor="t", tenant=0, key="re"
    )
    wallet, _ = await plane.create_wallet(
        resource_id=resource.id, ledger=500, actor="t", tenant=0, key="wa"
    )
    await create_threshold(plane, wallet_id=wallet.id, amount=50, actor="t", tenant=0, key="th")
    await plane.issue_grant(
        GrantRequest(
            wallet_id=wallet.id,
            amount=100,
            category=Category.PROMOTIONAL,
            expires_at=datetime_of_ns(clock()) + dt.timedelta(days=2),
        ),
        tenant=0,
        key="g",
        actor="t",
    )
    await plane.service.debit(tenant=0, key="d", amount=60, ledger=500, wallet_id=wallet.id)
    await ProjectionFeed(plane.service.ledger, plane.pool, clock_ns=clock).catch_up()
    one = Jobs(plane, JobSettings(), alerts=Alerts(plane))
    other = Jobs(plane, JobSettings(), alerts=Alerts(plane))
    await one.derive_alerts()
    await one.scan_expiring()
    assert await _types(plane) == []  # not the leader
    one.leader = other.leader = True  # two schedulers at once (the lock is not relied on)
    await asyncio.gather(one.derive_alerts(), other.derive_alerts())
    await asyncio.gather(one.scan_expiring(), other.scan_expiring())
    await one.derive_alerts()
    await one.scan_expiring()
    assert sorted(await _types(plane)) == ["balance.low", "grant.expiring"]
    assert (one.alert_ticks, one.expiring_scans) == (2, 2)
