"""Webhooks end to end against a real receiver on 127.0.0.1: fan-out, signed delivery verified
with the `standardwebhooks` library, retries with backoff, a dead endpoint, rotation, replay,
and the ticks' guarantees (bounded, idempotent, crash-safe, two workers)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import standardwebhooks

from grants.errors import (
    ReplayRangeTooLarge,
    UnknownEventType,
    WebhookEndpointDisabled,
    WebhookUrlInvalid,
)
from grants.model import Category
from jobs.scheduler import Jobs, JobSettings
from ledger import db
from ledger.client import open_ledger
from ledger.embedded import EmbeddedEngine
from ledger.ids import id_text
from ledger.limits import (
    WEBHOOK_ATTEMPTS_MAX,
    WEBHOOK_DISPATCH_EVENTS_MAX,
    WEBHOOK_LEASE_S,
    WEBHOOK_RETRY_BASE_S,
    WEBHOOK_RETRY_CAP_S,
    WEBHOOK_SECRET_GRACE_S,
)
from ledger.repositories import events
from ledger.repositories import webhooks as repo
from ledger.repositories.resources import ResourceKind
from ledger.settings import LedgerSettings
from tests.jobs.webhook_support import dead_endpoint, receiver
from wallets.catalog import Catalog
from wallets.control import ControlPlane, GrantRequest
from wallets.service import CreditService
from wallets.webhook_delivery import Deliverer, Response
from wallets.webhooks import WebhookEndpoints, retry_delay_s

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.offset_ns = 0

    def __call__(self) -> int:
        return time.time_ns() + self.offset_ns


class Lowest(random.Random):
    """Full jitter's lowest draw: a retry is due at once (the tests move no clock)."""

    def uniform(self, a: float, b: float) -> float:
        return a


class Highest(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def migrated_db_url(fresh_db_url: Callable[..., str], template_db: str) -> str:
    """A database of its own per test: every test reads the whole outbox."""
    return fresh_db_url(template_db)


@pytest.fixture
async def plane(pool: db.Pool) -> AsyncIterator[ControlPlane]:
    engine = EmbeddedEngine()
    ledger = open_ledger(LedgerSettings(), engine=engine)
    service = CreditService(ledger, Catalog(), clock_ns=Clock())
    yield ControlPlane(pool, service)
    await ledger.close()
    engine.close()


@pytest.fixture
def hooks(plane: ControlPlane) -> WebhookEndpoints:
    return WebhookEndpoints(plane)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def emit(
    pool: db.Pool,
    count: int,
    *,
    type_: str = "balance.low",
    customer_id: int | None = None,
    occurred_at: dt.datetime | None = None,
    tag: str = "e",
) -> list[int]:
    ids = []
    async with pool.connection() as conn:
        for n in range(count):
            key = (tag, n)
            await events.emit(
                conn,
                type_=type_,
                key=key,
                occurred_at=occurred_at or now(),
                data={"n": str(n)},
                customer_id=customer_id,
            )
            ids.append(events.event_id(type_, *key))
    return ids


async def endpoint(hooks: WebhookEndpoints, url: str, key: str, **kw: Any) -> tuple[int, str]:
    made, _ = await hooks.create(url=url, actor="t", tenant=0, key=key, **kw)
    return made.endpoint.id, made.secret


async def deliveries(pool: db.Pool, endpoint_id: int) -> list[repo.Delivery]:
    async with pool.connection() as conn:
        rows, _ = await repo.list_deliveries(conn, endpoint_id=endpoint_id, limit=1000)
    return rows


async def attempts(pool: db.Pool, delivery_id: int) -> list[repo.Attempt]:
    async with pool.connection() as conn:
        return (await repo.attempts_of(conn, [delivery_id]))[delivery_id]


def verify(secret: str, got: Any) -> Any:
    return standardwebhooks.Webhook(secret).verify(got.body, got.headers)


# -- retries and signatures ------------------------------------------------------------------------


async def test_retries_with_backoff_until_the_receiver_answers(
    pool: db.Pool, hooks: WebhookEndpoints
) -> None:
    with receiver([500, 503]) as hook:
        endpoint_id, secret = await endpoint(hooks, hook.url, "ep")
        (event_id,) = await emit(pool, 1)
        deliverer = Deliverer(pool, rng=Lowest())
        assert (await deliverer.dispatch(now())).deliveries == 1
        first = await deliverer.deliver_due(now())
        assert (first.leased, first.retried) == (1, 1)
        (delivery,) = await deliveries(pool, endpoint_id)
        assert (delivery.state, delivery.attempts, delivery.last_status) == ("pending", 1, 500)
        await deliverer.deliver_due(now())
        last = await deliverer.deliver_due(now())
        assert (last.leased, last.delivered) == (1, 1)
        await deliverer.aclose()
    (delivery,) = await deliveries(pool, endpoint_id)
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 3, 200)
    log = await attempts(pool, delivery.id)
    assert [(a.attempt, a.status_code) for a in log] == [(1, 500), (2, 503), (3, 200)]
    assert log[0].error == "HTTP 500" and log[0].response_excerpt == "try again later"
    # Every attempt is signed and carries the event's id: the receiver's dedupe key.
    assert len(hook.got) == 3
    for got in hook.got:
        body = verify(secret, got)
        assert body["id"] == got.headers["webhook-id"] == id_text(event_id)
        assert body["type"] == "balance.low" and body["data"] == {"n": "0"}
        assert set(body) == {
            "id", "type", "created_at", "occurred_at", "customer_id", "wallet_id", "data"
        }  # fmt: skip
    assert len({got.body for got in hook.got}) == 1  # the same bytes every time
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        verify("whsec_" + "QUFB" * 8, hook.got[0])


async def test_a_delivery_fails_after_its_last_attempt(
    pool: db.Pool, hooks: WebhookEndpoints
) -> None:
    with receiver([500] * 100) as hook:
        endpoint_id, _ = await endpoint(hooks, hook.url, "ep")
        await emit(pool, 1)
        deliverer = Deliverer(pool, rng=Lowest())
        await deliverer.dispatch(now())
        for _ in range(WEBHOOK_ATTEMPTS_MAX):
            assert (await deliverer.deliver_due(now())).leased == 1
        assert (await deliverer.deliver_due(now())).leased == 0
        await deliverer.aclose()
    (delivery,) = await deliveries(pool, endpoint_id)
    assert (delivery.state, delivery.attempts) == ("failed", WEBHOOK_ATTEMPTS_MAX)
    assert delivery.next_attempt_at is None and delivery.finished_at is not None
    assert len(hook.got) == WEBHOOK_ATTEMPTS_MAX


def test_the_backoff_grows_to_its_cap_with_full_jitter() -> None:
    ceilings = [retry_delay_s(n, Highest()) for n in range(1, WEBHOOK_ATTEMPTS_MAX)]
    assert ceilings[0] == WEBHOOK_RETRY_BASE_S
    assert ceilings == sorted(ceilings) and ceilings[-1] == WEBHOOK_RETRY_CAP_S
    assert 20 * 3600 <= sum(ceilings) <= 30 * 3600  # about a day at most
    assert all(retry_delay_s(n, Lowest()) == 0 for n in range(1, WEBHOOK_ATTEMPTS_MAX))
    rng = random.Random(7)
    draws = [retry_delay_s(3, rng) for _ in range(50)]
    assert all(0 <= d <= WEBHOOK_RETRY_BASE_S * 16 for d in draws) and len(set(draws)) == 50


async def test_a_retry_waits_for_its_backoff(pool: db.Pool, hooks: WebhookEndpoints) -> None:
    with receiver([500]) as hook:
        endpoint_id, _ = await endpoint(hooks, hook.url, "ep")
        await emit(pool, 1)
        deliverer = Deliverer(pool, rng=Highest())
        start = now()
        await deliverer.dispatch(start)
        await deliverer.deliver_due(start)
        (delivery,) = await deliveries(pool, endpoint_id)
        assert delivery.next_attempt_at == start + dt.timedelta(seconds=WEBHOOK_RETRY_BASE_S)
        assert (await deliverer.deliver_due(start + dt.timedelta(seconds=60))).leased == 0
        later = start + dt.timedelta(seconds=WEBHOOK_RETRY_BASE_S)
        assert (await deliverer.deliver_due(later)).delivered == 1
        await deliverer.aclose()
    assert len(hook.got) == 2


# -- fan-out ------------------------------------------------------------------------------------


async def test_fan_out_is_bounded_filtered_and_done_once(
    pool: db.Pool, plane: ControlPlane, hooks: WebhookEndpoints
) -> None:
    customer, _ = await plane.create_customer(name="C", actor="t", tenant=0, key="cu")
    everything, _ = await endpoint(hooks, "https://example.com/all", "all")
    depleted, _ = await endpoint(
        hooks, "https://example.com/depleted", "dep", event_types=["balance.depleted"]
    )
    theirs, _ = await endpoint(hooks, "https://example.com/c", "c", customer_id=customer.id)
    off, _ = await endpoint(hooks, "https://example.com/off", "off")
    await hooks.set_enabled(off, False, actor="t", tenant=0, key="off-1")
    await emit(pool, WEBHOOK_DISPATCH_EVENTS_MAX + 3)
    await emit(pool, 2, type_="balance.depleted", customer_id=customer.id, tag="d")
    deliverer = Deliverer(pool)
    first = await deliverer.dispatch(now())
    assert first.events == WEBHOOK_DISPATCH_EVENTS_MAX
    second = await deliverer.dispatch(now())
    assert second.events == 5
    assert (await deliverer.dispatch(now())).events == 0  # a third tick does nothing
    assert len(await deliveries(pool, everything)) == WEBHOOK_DISPATCH_EVENTS_MAX + 5
    assert len(await deliveries(pool, depleted)) == 2
    assert len(await deliveries(pool, theirs)) == 2
    assert await deliveries(pool, off) == []


async def test_two_fan_outs_at_once_share_the_work(pool: db.Pool, hooks: WebhookEndpoints) -> None:
    endpoint_id, _ = await endpoint(hooks, "https://example.com/all", "all")
    await emit(pool, 2 * WEBHOOK_DISPATCH_EVENTS_MAX)
    one, two = Deliverer(pool), Deliverer(pool)
    reports = await asyncio.gather(one.dispatch(now()), two.dispatch(now()))
    reports += await asyncio.gather(one.dispatch(now()), two.dispatch(now()))
    assert sum(r.events for r in reports) == 2 * WEBHOOK_DISPATCH_EVENTS_MAX
    assert len(await deliveries(pool, endpoint_id)) == 2 * WEBHOOK_DISPATCH_EVENTS_MAX


# -- the delivery tick's guarantees ---------------------------------------------------------------


async def test_a_delivery_tick_is_bounded_and_a_second_does_nothing(
    pool: db.Pool, hooks: WebhookEndpoints
) -> None:
    with receiver() as hook:
        endpoint_id, _ = await endpoint(hooks, hook.url, "ep")
        await emit(pool, 10)
        deliverer = Deliverer(pool)
        await deliverer.dispatch(now())
        leased = []
        while (report := await deliverer.deliver_due(now())).leased:
            assert report.leased <= 4  # WEBHOOK_REQUESTS_PER_ENDPOINT_MAX
            leased.append(report.delivered)
        assert sum(leased) == 10
        assert (await deliverer.deliver_due(now())).leased == 0
        await deliverer.aclose()
    assert sorted(hook.ids()) == sorted({*hook.ids()}) and len(hook.got) == 10
    assert {d.state for d in await deliveries(pool, endpoint_id)} == {"delivered"}


async def test_a_crash_between_lease_and_record_delivers_again_and_records_once(
    pool: db.Pool, hooks: WebhookEndpoints
) -> None:
    with receiver() as hook:
        endpoint_id, secret = await endpoint(hooks, hook.url, "ep")
        await emit(pool, 1)
        crashing = Deliverer(pool)

        async def send_then_crash(url: str, headers: dict[str, str], body: bytes) -> Response:
            await crashing._post(url, headers, body)
            raise RuntimeError("the process died before recording")

        crashing.send = send_then_crash
        start = now()
        await crashing.dispatch(start)
        assert (await crashing.deliver_due(start)).delivered == 0  # the task died
        await crashing.aclose()
        (delivery,) = await deliveries(pool, endpoint_id)
        assert (delivery.state, delivery.attempts) == ("pending", 0)
        # Leased: not due again until the lease runs out.
        deliverer = Deliverer(pool)
        assert (await deliverer.deliver_due(start)).leased == 0
        after = start + dt.timedelta(seconds=WEBHOOK_LEASE_S)
        assert (await deliverer.deliver_due(after)).delivered == 1
        assert (await deliverer.deliver_due(after)).leased == 0
        await deliverer.aclose()
    # At least once: the receiver got it twice, with one id; the log holds one attempt.
    assert len(hook.got) == 2 and len(set(hook.ids())) == 1
    (delivery,) = await deliveries(pool, endpoint_id)
    assert (delivery.state, delivery.attempts) == ("delivered", 1)
    assert len(await attempts(pool, delivery.id)) == 1
    verify(secret, hook.got[1])


async def test_two_workers_never_send_one_delivery_twice(
    pool: db.Pool, hooks: WebhookEndpoints
) -> None:
    with receiver() as one_hook, receiver() as two_hook:
        await endpoint(hooks, one_hook.url, "one")
        await endpoint(hooks, two_hook.url, "two")
        await emit(pool, 30)
        one, two = Deliverer(pool), Deliverer(pool)
        await one.dispatch(now())
        while True:
            reports = await asyncio.gather(one.deliver_due(now()), two.deliver_due(now()))
            if not any(r.leased for r in reports):
                break
        await one.aclose()
        await two.aclose()
    for hook in (one_hook, two_hook):
        assert len(hook.got) == 30 and len(set(hook.ids())) == 30


async def test_the_jobs_tick_only_in_the_leader(
    pool: db.Pool, plane: ControlPlane, hooks: WebhookEndpoints
) -> None:
    with receiver() as hook:
        endpoint_id, _ = await endpoint(hooks, hook.url, "ep")
        await emit(pool, 3)
        jobs = Jobs(plane, JobSettings())
        await jobs.dispatch_webhooks()
        await jobs.deliver_webhooks()
        assert await deliveries(pool, endpoint_id) == []  # not the leader
        jobs.leader = True
        await jobs.dispatch_webhooks()
        await jobs.deliver_webhooks()  # starts the requests and returns
        assert (await jobs.webhooks.drain()).delivered == 3
        await jobs.webhooks.aclose()
    assert len(hook.got) == 3
    assert (jobs.webhook_dispatches, jobs.webhook_deliveries) == (1, 1)


# -- a dead endpoint ------------------------------------------------------------------------------


async def _wallet(plane: ControlPlane) -> tuple[int, int]:
    credit_type, _ = await plane.create_credit_type(
        code="wh", name="W", asset_scale=0, actor="t", tenant=0, key="w-ct"
    )
    customer, _ = await plane.create_customer(name="W", actor="t", tenant=0, key="w-cu")
    resource, _ = await plane.create_resource(
        customer_id=customer.id, kind=ResourceKind.AGENT, actor="t", tenant=0, key="w-re"
    )
    wallet, _ = await plane.create_wallet(
        resource_id=resource.id, ledger=credit_type.ledger, actor="t", tenant=0, key="w-wa"
    )
    await plane.issue_grant(
        GrantRequest(wallet_id=wallet.id, amount=100_000, category=Category.PROMOTIONAL),
        tenant=0,
        key="w-gr",
        actor="t",
    )
    return wallet.id, credit_type.ledger


async def test_a_dead_endpoint_holds_back_neither_others_nor_the_hot_path(
    pool: db.Pool, plane: ControlPlane, hooks: WebhookEndpoints
) -> None:
    wallet_id, ledger = await _wallet(plane)
    timeout_s = 5.0
    with dead_endpoint() as dead_url, receiver() as hook:
        dead, _ = await endpoint(hooks, dead_url, "dead")
        live, _ = await endpoint(hooks, hook.url, "live")
        await emit(pool, 3)
        deliverer = Deliverer(pool, timeout_s=timeout_s)
        await deliverer.dispatch(now())
        started = time.monotonic()
        assert await deliverer.start(now()) == 6  # the tick returns at once
        assert time.monotonic() - started < 1.0
        # The hot path while the dead endpoint hangs: a few hundred concurrent debits.
        results = await asyncio.gather(
            *(
                plane.service.debit(
                    tenant=0, key=f"d{n}", amount=1, ledger=ledger, wallet_id=wallet_id
                )
                for n in range(300)
            )
        )
        assert len(results) == 300
        # The live endpoint is served while the dead one still hangs.
        for _ in range(100):
            if {d.state for d in await deliveries(pool, live)} == {"delivered"}:
                break
            await asyncio.sleep(0.05)
        assert {d.state for d in await deliveries(pool, live)} == {"delivered"}
        # ... and the dead endpoint's requests are still in flight, unrecorded.
        assert {d.attempts for d in await deliveries(pool, dead)} == {0}
        # More due deliveries of the live endpoint go while the dead one is in flight; the dead
        # one gets no new lease.
        await emit(pool, 2, tag="more")
        await deliverer.dispatch(now())
        assert await deliverer.start(now()) == 2
        report = await deliverer.drain()
        await deliverer.aclose()
    assert time.monotonic() - started < timeout_s + 5
    assert report.retried == 3 and report.delivered == 2
    assert len(hook.got) == 5
    log = await attempts(pool, (await deliveries(pool, dead))[0].id)
    assert log[0].status_code is None and log[0].error == f"no answer within {timeout_s:g} s"


# -- rotation -------------------------------------------------------------------------------------


async def test_a_rotation_signs_with_both_secrets_until_its_grace_ends(
    pool: db.Pool, plane: ControlPlane, hooks: WebhookEndpoints
) -> None:
    with receiver() as hook:
        endpoint_id, old = await endpoint(hooks, hook.url, "ep")
        rotated, replayed = await hooks.rotate_secret(endpoint_id, actor="t", tenant=0, key="r1")
        again, replayed_again = await hooks.rotate_secret(
            endpoint_id, actor="t", tenant=0, key="r1"
        )
        assert (replayed, replayed_again, again.secret) == (False, True, rotated.secret)
        new = rotated.secret
        assert new != old and new.startswith("whsec_")
        await emit(pool, 1)
        deliverer = Deliverer(pool)
        await deliverer.dispatch(now())
        await deliverer.deliver_due(now())
        during = hook.got[-1]
        assert len(during.headers["webhook-signature"].split(" ")) == 2
        verify(old, during)
        verify(new, during)
        # After the grace period only the new secret signs.
        assert isinstance(plane.service.clock_ns, Clock)
        plane.service.clock_ns.offset_ns = -(WEBHOOK_SECRET_GRACE_S + 60) * 10**9
        second, _ = await hooks.rotate_secret(endpoint_id, actor="t", tenant=0, key="r2")
        await hooks.replay(endpoint_id, event_id=(await emit(pool, 1, tag="x"))[0],
                           actor="t", tenant=0, key="rp")  # fmt: skip
        await deliverer.deliver_due(now())
        await deliverer.aclose()
    after = hook.got[-1]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    verify(second.secret, after)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        verify(new, after)


# -- replay ---------------------------------------------------------------------------------------


async def test_replay_of_one_event_and_of_a_range(pool: db.Pool, hooks: WebhookEndpoints) -> None:
    day = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    with receiver() as hook:
        endpoint_id, _ = await endpoint(hooks, hook.url, "ep")
        inside = await emit(pool, 3, occurred_at=day + dt.timedelta(hours=1), tag="in")
        await emit(pool, 2, occurred_at=day + dt.timedelta(days=2), tag="out")
        deliverer = Deliverer(pool)
        await deliverer.dispatch(now())
        assert (await deliverer.deliver_due(now())).delivered == 4
        assert (await deliverer.deliver_due(now())).delivered == 1
        one, _ = await hooks.replay(endpoint_id, event_id=inside[0], actor="t", tenant=0, key="a")
        assert one.deliveries == 1
        assert (await deliverer.deliver_due(now())).delivered == 1
        assert hook.ids()[-1] == id_text(inside[0])
        ranged, _ = await hooks.replay(
            endpoint_id,
            occurred_from=day,
            occurred_to=day + dt.timedelta(days=1),
            actor="t",
            tenant=0,
            key="b",
        )
        same, replayed = await hooks.replay(
            endpoint_id,
            occurred_from=day,
            occurred_to=day + dt.timedelta(days=1),
            actor="t",
            tenant=0,
            key="b",
        )
        assert ranged.event_ids == inside and replayed and same.deliveries == 3
        assert (await deliverer.deliver_due(now())).delivered == 3
        await deliverer.aclose()
    assert len(hook.got) == 5 + 1 + 3
    rows = await deliveries(pool, endpoint_id)
    assert sorted(d.replay for d in rows if d.event_id == inside[0]) == [0, 1, 2]
    with pytest.raises(ReplayRangeTooLarge):
        await hooks.replay(
            endpoint_id,
            occurred_from=day,
            occurred_to=day + dt.timedelta(days=40),
            actor="t",
            tenant=0,
            key="c",
        )
    await hooks.set_enabled(endpoint_id, False, actor="t", tenant=0, key="d")
    with pytest.raises(WebhookEndpointDisabled):
        await hooks.replay(endpoint_id, event_id=inside[0], actor="t", tenant=0, key="e")


async def test_an_endpoint_refuses_a_bad_url_and_an_unknown_event_type(
    hooks: WebhookEndpoints,
) -> None:
    for url in ("ftp://example.com/x", "example.com", "http://", "http://a b", "http://x:port/"):
        with pytest.raises(WebhookUrlInvalid):
            await hooks.create(url=url, actor="t", tenant=0, key="k")
    with pytest.raises(UnknownEventType):
        await hooks.create(
            url="https://example.com", event_types=["balance.lower"], actor="t", tenant=0, key="k"
        )


async def test_a_stop_cancels_requests_in_flight_and_the_next_sender_resends(
    pool: db.Pool, hooks: WebhookEndpoints
) -> None:
    with dead_endpoint() as dead_url:
        endpoint_id, _ = await endpoint(hooks, dead_url, "dead")
        await emit(pool, 1)
        deliverer = Deliverer(pool, timeout_s=30)
        start = now()
        await deliverer.dispatch(start)
        assert await deliverer.start(start) == 1
        await asyncio.sleep(0.2)
        stopped = time.monotonic()
        await deliverer.aclose()
        assert time.monotonic() - stopped < 1.0
    (delivery,) = await deliveries(pool, endpoint_id)
    assert (delivery.state, delivery.attempts) == ("pending", 0)
    assert delivery.next_attempt_at == start + dt.timedelta(seconds=WEBHOOK_LEASE_S)


async def test_a_refused_connection_is_an_attempt_that_failed(
    pool: db.Pool, hooks: WebhookEndpoints
) -> None:
    with dead_endpoint() as url:
        pass  # closed: nothing listens on that port any more
    endpoint_id, _ = await endpoint(hooks, url, "gone")
    await emit(pool, 1)
    deliverer = Deliverer(pool, rng=Lowest())
    await deliverer.dispatch(now())
    assert (await deliverer.deliver_due(now())).retried == 1
    await deliverer.aclose()
    (delivery,) = await deliveries(pool, endpoint_id)
    (attempt,) = await attempts(pool, delivery.id)
    assert attempt.status_code is None and attempt.error is not None
    assert attempt.error.startswith("ConnectError")
    assert (delivery.state, delivery.attempts, delivery.last_error) == (
        "pending",
        1,
        attempt.error,
    )
