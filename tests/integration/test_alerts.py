# ruff: noqa: F811 - the fixtures imported from clocked_fixtures stand again as parameters
"""Alerts derived from the projection, and automatic top-ups (wallets/alerts.py): each event
once per crossing, a burst of crossing debits issues one top-up, ticks bounded, repeatable,
crash-safe and safe to run twice at once. The projection feed runs in the test."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from grants.errors import InvalidRequest
from grants.model import Category
from ledger.clock import ManualClock, datetime_of_ns
from ledger.ids import id_text
from ledger.repositories import alerts as repo
from ledger.repositories.grants import GrantSource
from ledger.repositories.resources import ResourceKind
from tests.integration.clocked_fixtures import clock, plane, pool  # noqa: F401
from wallets.alerts import (
    FAULT_AFTER_GRANT,
    FAULT_BEFORE_COMMIT,
    FAULT_BEFORE_GRANT,
    Alerts,
    create_threshold,
    set_top_up_rule,
)
from wallets.catalog import OverdraftMode, Period, Wallet
from wallets.control import ControlPlane, GrantRequest
from wallets.projection import ProjectionFeed

pytestmark = pytest.mark.anyio
TENANT = 7
LEDGER = 400


class World:
    def __init__(self, plane: ControlPlane, clock: ManualClock) -> None:
        self.plane = plane
        self.clock = clock
        self.feed = ProjectionFeed(plane.service.ledger, plane.pool, clock_ns=clock)
        self.alerts = Alerts(plane)
        self.keys = 0
        self.resource = 0
        self.wallet: Wallet

    async def setup(self, **wallet: Any) -> World:
        plane = self.plane
        await plane.create_credit_type(
            ledger=LEDGER, code="cr", name="Credits", asset_scale=0, actor="a", tenant=0, key="ct"
        )
        customer, _ = await plane.create_customer(name="Acme", actor="a", tenant=TENANT, key="c")
        resource, _ = await plane.create_resource(
            customer_id=customer.id, kind=ResourceKind.AGENT, actor="a", tenant=TENANT, key="r"
        )
        self.resource = resource.id
        self.wallet, _ = await plane.create_wallet(
            resource_id=resource.id, ledger=LEDGER, actor="a", tenant=TENANT, key="w", **wallet
        )
        return self

    def key(self, prefix: str) -> str:
        self.keys += 1
        return f"{prefix}-{self.keys}"

    async def grant(self, amount: int, **kw: Any) -> int:
        result, _ = await self.plane.issue_grant(
            GrantRequest(
                wallet_id=self.wallet.id,
                amount=amount,
                category=kw.pop("category", Category.PROMOTIONAL),
                **kw,
            ),
            tenant=TENANT,
            key=self.key("g"),
            actor="a",
        )
        return result.grant_id

    async def debit(self, amount: int) -> None:
        await self.plane.service.debit(
            tenant=TENANT, key=self.key("d"), amount=amount, ledger=LEDGER, wallet_id=self.wallet.id
        )

    async def derive(self) -> None:
        await self.feed.catch_up()
        await self.alerts.tick(batches_max=100)

    async def events(self, type_: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        async with self.plane.pool.connection() as conn:
            cursor = await conn.execute("SELECT type, data FROM events ORDER BY seq")
            rows = await cursor.fetchall()
        return [(t, d) for t, d in rows if type_ is None or t == type_]

    async def top_ups(self) -> list[repo.TopUp]:
        async with self.plane.pool.connection() as conn:
            rows, _ = await repo.list_top_ups(conn, wallet_id=self.wallet.id, limit=100)
        return rows


@pytest.fixture
async def world(plane: ControlPlane, clock: ManualClock) -> World:
    return await World(plane, clock).setup()


async def _threshold(world: World, **kw: Any) -> int:
    made, _ = await create_threshold(
        world.plane, actor="a", tenant=TENANT, key=world.key("t"), **kw
    )
    return made.id


async def test_balance_low_fires_once_per_crossing(world: World) -> None:
    await _threshold(world, wallet_id=world.wallet.id, amount=100)
    await world.grant(500)
    await world.derive()
    assert await world.events("balance.low") == []
    for _ in range(5):  # below the line five times: one event
        await world.debit(90)
        await world.derive()
    low = await world.events("balance.low")
    assert len(low) == 1 and low[0][1]["available"] == "50"
    await world.grant(200)  # back above: armed again
    await world.derive()
    await world.debit(200)  # crosses again
    await world.derive()
    low = await world.events("balance.low")
    assert [d["crossing"] for _, d in low] == [1, 2]


async def test_depleted_and_expired_and_expiring(world: World) -> None:
    now = datetime_of_ns(world.clock())
    await world.grant(100)
    soon = await world.grant(30, expires_at=now + dt.timedelta(days=3))
    await world.derive()
    assert await world.alerts.scan_expiring(world.clock()) == 1
    assert await world.alerts.scan_expiring(world.clock()) == 0  # once per expiry
    expiring = await world.events("grant.expiring")
    assert [d["grant_id"] for _, d in expiring] == [_uuid(soon)]
    assert expiring[0][1]["credits"] == "30"
    world.clock.advance(4 * 86_400)
    await world.plane.sweep(world.clock())
    await world.derive()
    expired = await world.events("grant.expired")
    assert len(expired) == 1 and expired[0][1]["credits"] == "30"
    await world.debit(100)
    await world.derive()
    assert len(await world.events("balance.depleted")) == 1
    await world.derive()
    assert len(await world.events("balance.depleted")) == 1


def _uuid(value: int) -> str:
    return id_text(value)


async def test_overdraft_opened_and_repaid(plane: ControlPlane, clock: ManualClock) -> None:
    world = await World(plane, clock).setup(overdraft_mode=OverdraftMode.SOFT, overdraft_limit=100)
    await world.grant(50)
    await world.debit(80)  # 30 into the overdraft
    await world.derive()
    assert [d["deficit"] for _, d in await world.events("overdraft.opened")] == ["30"]
    await world.grant(100)  # repays the 30
    await world.derive()
    repaid = await world.events("overdraft.repaid")
    assert [d["repaid"] for _, d in repaid] == ["30"]
    assert len(await world.events("overdraft.opened")) == 1


async def test_budget_threshold_and_exceeded(world: World) -> None:
    budget, _ = await world.plane.create_budget(
        resource_id=world.resource,
        ledger=LEDGER,
        period=Period.LIFETIME,
        cap=100,
        actor="a",
        tenant=TENANT,
        key="b",
    )
    await _threshold(world, budget_id=budget.id, percent=80)
    await world.grant(1000)
    await world.debit(50)
    await world.derive()
    assert await world.events("budget.threshold_reached") == []
    await world.debit(35)
    await world.debit(5)
    await world.derive()
    reached = await world.events("budget.threshold_reached")
    assert len(reached) == 1 and reached[0][1]["used"] == "85"
    await world.debit(10)  # the cap is used up
    await world.derive()
    exceeded = await world.events("budget.exceeded")
    assert len(exceeded) == 1 and exceeded[0][1]["used"] == "100"
    assert len(await world.events("budget.threshold_reached")) == 1


async def test_reservation_timed_out(world: World) -> None:
    await world.grant(100)
    held = await world.plane.service.reserve(
        tenant=TENANT, key="r1", amount=40, ledger=LEDGER, wallet_id=world.wallet.id, timeout_s=5
    )
    world.clock.advance(6)
    await world.grant(1)  # something after the expiry: the feed sees the timeout
    await world.derive()
    timed_out = await world.events("reservation.timed_out")
    assert [(d["reservation_id"], d["credits"]) for _, d in timed_out] == [
        (_uuid(held.reservation_id), "40")
    ]


async def _rule(world: World, **kw: Any) -> None:
    terms: dict[str, Any] = {
        "threshold": 100,
        "amount": 500,
        "consideration_minor": 5000,
        "currency": "USD",
        "daily_max": 3,
    }
    terms.update(kw)
    await set_top_up_rule(
        world.plane, world.wallet.id, actor="a", tenant=TENANT, key=world.key("rule"), **terms
    )


async def test_one_top_up_for_a_burst_of_crossing_debits(world: World) -> None:
    await _rule(world)
    await world.grant(300)
    await world.derive()
    await asyncio.gather(*(world.debit(10) for _ in range(20)))  # 300 -> 100 -> ... -> 100
    await world.debit(5)  # below 100 now (95)
    await world.derive()
    top_ups = await world.top_ups()
    assert [(t.state, t.crossing) for t in top_ups] == [("issued", 1)]
    issued = await world.events("top_up.issued")
    assert len(issued) == 1
    assert issued[0][1]["amount"] == "500" and issued[0][1]["consideration_minor"] == "5000"
    assert issued[0][1]["grant_id"] == _uuid(top_ups[0].grant_id or 0)
    await world.derive()  # the top-up's grant re-arms the rule: nothing more
    assert len(await world.top_ups()) == 1
    async with world.plane.pool.connection() as conn:
        (figures,) = (await repo.wallet_figures(conn, [world.wallet.id])).values()
    assert figures.available == 595


async def test_twenty_concurrent_debits_crossing_issue_one_top_up(world: World) -> None:
    await _rule(world)
    await world.grant(210)
    await world.derive()
    await asyncio.gather(*(world.debit(10) for _ in range(20)))  # 210 -> 10, all at once
    await world.derive()
    assert [t.state for t in await world.top_ups()] == ["issued"]
    assert len(await world.events("top_up.issued")) == 1
    await world.derive()
    async with world.plane.pool.connection() as conn:
        (figures,) = (await repo.wallet_figures(conn, [world.wallet.id])).values()
    assert figures.available == 10 + 500  # every debit went through, then the top-up


async def test_the_daily_cap(world: World) -> None:
    await _rule(world, daily_max=2, amount=50)
    await world.grant(150)
    for _ in range(3):  # 150 -> 90 (top-up: 140) -> 80 ...
        await world.debit(60)
        await world.derive()
    states = [t.state for t in await world.top_ups()]
    assert states == ["issued", "issued", "capped"]
    assert len(await world.events("top_up.issued")) == 2


async def test_a_tick_is_bounded_and_a_second_does_nothing(world: World) -> None:
    await _threshold(world, wallet_id=world.wallet.id, amount=50)
    await world.grant(1000)
    for _ in range(20):
        await world.debit(10)
    await world.feed.catch_up()
    small = Alerts(world.plane, entries_max=16)
    first = await small.tick(batches_max=1)
    assert 0 < first.entries <= 16
    report = await small.tick(batches_max=100)
    assert report.entries > 0
    assert (await small.tick(batches_max=100)).entries == 0
    async with world.plane.pool.connection() as conn:
        (figures,) = (await repo.wallet_figures(conn, [world.wallet.id])).values()
    assert figures.available == 800


def _raise_at(point: str) -> Callable[[str], None]:
    def fault(at: str) -> None:
        if at == point:
            raise RuntimeError(f"crash at {at}")

    return fault


async def test_a_crash_before_the_deriver_commits(world: World) -> None:
    await _threshold(world, wallet_id=world.wallet.id, amount=100)
    await _rule(world)
    await world.grant(150)
    await world.debit(100)
    await world.feed.catch_up()
    world.alerts.fault = _raise_at(FAULT_BEFORE_COMMIT)
    with pytest.raises(RuntimeError):
        await world.alerts.tick(batches_max=10)
    assert await world.events() == [] and await world.top_ups() == []
    world.alerts.fault = None
    await world.derive()
    assert len(await world.events("balance.low")) == 1
    assert [t.state for t in await world.top_ups()] == ["issued"]


@pytest.mark.parametrize("point", [FAULT_BEFORE_GRANT, FAULT_AFTER_GRANT])
async def test_a_crash_between_the_top_up_and_its_grant(world: World, point: str) -> None:
    await _rule(world)
    await world.grant(150)
    await world.debit(100)
    await world.feed.catch_up()
    world.alerts.fault = _raise_at(point)
    with pytest.raises(RuntimeError):
        await world.alerts.tick(batches_max=10)
    assert [t.state for t in await world.top_ups()] == ["pending"]
    world.alerts.fault = None
    await world.derive()
    (top_up,) = await world.top_ups()
    assert top_up.state == "issued"
    assert len(await world.events("top_up.issued")) == 1
    async with world.plane.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM grants WHERE wallet_id = %s AND source = 'purchase'",
            (_uuid(world.wallet.id),),
        )
        assert await cursor.fetchone() == (1,)


async def test_a_top_up_issued_late_lives_its_days_from_its_issue(world: World) -> None:
    await _rule(world, expires_in_days=1)
    await world.grant(150)
    await world.debit(100)
    await world.feed.catch_up()
    world.alerts.fault = _raise_at(FAULT_BEFORE_GRANT)
    with pytest.raises(RuntimeError):
        await world.alerts.tick(batches_max=10)
    world.alerts.fault = None
    world.clock.advance(3 * 86_400)  # the service was down past the crossing's expiry
    await world.derive()
    (top_up,) = await world.top_ups()
    assert top_up.state == "issued" and top_up.grant_id is not None
    async with world.plane.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT expires_at FROM grants WHERE id = %s", (_uuid(top_up.grant_id),)
        )
        row = await cursor.fetchone()
    assert row is not None
    assert row[0] == datetime_of_ns(world.clock()) + dt.timedelta(days=1)


async def test_a_refused_top_up_is_recorded_and_not_tried_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _rule(world)
    await world.grant(150)
    await world.debit(100)
    calls = 0

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        raise InvalidRequest("the wallet's credit type changed", field="wallet_id")

    monkeypatch.setattr(world.plane, "issue_grant", refuse)
    await world.derive()
    await world.derive()
    (top_up,) = await world.top_ups()
    assert top_up.state == "refused" and calls == 1
    assert top_up.refusal == "validation_error: the wallet's credit type changed"
    assert await world.events("top_up.issued") == []


async def test_two_ticks_at_once_double_nothing(world: World) -> None:
    await _threshold(world, wallet_id=world.wallet.id, amount=100)
    await _rule(world)
    await world.grant(150)
    await world.debit(100)
    await world.feed.catch_up()
    other = Alerts(world.plane)
    await asyncio.gather(world.alerts.tick(batches_max=10), other.tick(batches_max=10))
    await asyncio.gather(world.alerts.issue_pending(), other.issue_pending())
    assert len(await world.events("balance.low")) == 1
    assert [t.state for t in await world.top_ups()] == ["issued"]
    assert len(await world.events("top_up.issued")) == 1


async def test_a_deriver_started_on_history_begins_from_the_true_figures(world: World) -> None:
    """The migration starts the deriver at the projection's watermark: what came before is not
    announced, and a wallet's figures are summed from it when the deriver first meets it."""
    await world.grant(500)
    await world.debit(100)
    await world.feed.catch_up()
    async with world.plane.pool.connection() as conn:
        await conn.execute(
            "UPDATE alerts_state SET watermark_ts ="
            " (SELECT watermark_ts FROM projection_state WHERE name = 'ledger')"
        )
    await _threshold(world, wallet_id=world.wallet.id, amount=300)
    await world.debit(150)
    await world.derive()
    low = await world.events("balance.low")
    assert [d["available"] for _, d in low] == ["250"]


async def test_a_threshold_as_a_percent_of_the_last_allocation(world: World) -> None:
    await _threshold(world, wallet_id=world.wallet.id, percent=20)
    await world.grant(1000)  # an admin grant: no allocation yet, the threshold is inactive
    await world.debit(900)
    await world.derive()
    assert await world.events("balance.low") == []
    await world.grant(500, source=GrantSource.PLAN_ALLOCATION)  # 600: 20% of 500 is 100
    await world.debit(450)
    await world.derive()
    assert await world.events("balance.low") == []  # 150: above 100
    await world.debit(60)  # 90: below 100
    await world.derive()
    low = await world.events("balance.low")
    assert [(d["threshold"], d["available"]) for _, d in low] == [("100", "90")]


async def test_a_changed_expiry_is_announced_again(world: World) -> None:
    now = datetime_of_ns(world.clock())
    block = await world.grant(40, expires_at=now + dt.timedelta(days=5))
    await world.derive()
    assert await world.alerts.scan_expiring(world.clock()) == 1
    async with world.plane.pool.connection() as conn:  # as a change of its expiry would
        await conn.execute(
            "UPDATE grants SET expires_at = %s WHERE id = %s",
            (now + dt.timedelta(days=6), _uuid(block)),
        )
    assert await world.alerts.scan_expiring(world.clock()) == 1
    assert await world.alerts.scan_expiring(world.clock()) == 0
    expiring = await world.events("grant.expiring")
    assert len(expiring) == 2 and expiring[0][1]["expires_at"] != expiring[1][1]["expires_at"]
    await world.grant(40, expires_at=now + dt.timedelta(days=30))
    assert await world.alerts.scan_expiring(world.clock()) == 0  # outside the window


async def test_a_budget_threshold_fires_once_per_period(world: World) -> None:
    budget, _ = await world.plane.create_budget(
        resource_id=world.resource,
        ledger=LEDGER,
        period=Period.DAY,
        cap=100,
        actor="a",
        tenant=TENANT,
        key="bd",
    )
    await _threshold(world, budget_id=budget.id, percent=50)
    await world.grant(1000)
    await world.debit(60)
    await world.debit(10)
    await world.derive()
    world.clock.advance(86_400)  # the next day's period
    await world.debit(60)
    await world.derive()
    reached = await world.events("budget.threshold_reached")
    assert [(d["used"], d["period_start"][:10]) for _, d in reached] == [
        ("60", "2025-01-10"),
        ("60", "2025-01-11"),
    ]


async def test_the_daily_cap_starts_again_the_next_day(world: World) -> None:
    await _rule(world, daily_max=1, amount=50)
    await world.grant(150)
    for _ in range(2):  # 150 -> 90 (top-up: 140) -> 80: capped
        await world.debit(60)
        await world.derive()
    assert [t.state for t in await world.top_ups()] == ["issued", "capped"]
    await world.grant(100)  # 180: armed again
    world.clock.advance(86_400)
    await world.debit(100)  # 80: the next day's first
    await world.derive()
    assert [t.state for t in await world.top_ups()] == ["issued", "capped", "issued"]


async def test_times_in_event_data_are_spelled_as_the_api_spells_them(world: World) -> None:
    """RFC 3339 in UTC with `Z`, as every time the API writes (`2025-01-10T00:00:00Z`), so that a
    receiver can compare an event's `expires_at` with the grant's: never `+00:00`."""
    budget, _ = await world.plane.create_budget(
        resource_id=world.resource,
        ledger=LEDGER,
        period=Period.DAY,
        cap=400,
        actor="a",
        tenant=TENANT,
        key="bd-z",
    )
    await _threshold(world, budget_id=budget.id, percent=50)
    await _rule(world)
    now = datetime_of_ns(world.clock())
    await world.grant(300, expires_at=now + dt.timedelta(days=5))
    await world.derive()
    await world.debit(250)  # below the rule's 100, and past half of the cap
    await world.derive()
    assert await world.alerts.scan_expiring(world.clock()) >= 1
    times = [
        d[name]
        for type_, name in (
            ("grant.expiring", "expires_at"),
            ("top_up.issued", "crossed_at"),
            ("budget.threshold_reached", "period_start"),
        )
        for _, d in await world.events(type_)
    ]
    assert len(times) >= 3
    for text in times:
        assert text.endswith("Z") and "+00:00" not in text, times
        assert dt.datetime.fromisoformat(text).utcoffset() == dt.timedelta(0), times
