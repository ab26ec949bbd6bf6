"""The webhook API: endpoints (the secret shown once), rotation, disable and enable, the
delivery log, replays, the outbox of events, and their refusals with stable codes."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import Any

import httpx
import pytest
from credit_ledger_client import AsyncCreditClient, verify_webhook
from credit_ledger_client.schemas import (
    EventQuery,
    WebhookEndpointIn,
    WebhookEndpointQuery,
    WebhookReplayIn,
)

from ledger import db
from ledger.repositories import audit, events
from tests.api.conftest import Api
from tests.api.support import assert_problem, created, make_world
from tests.jobs.webhook_support import dead_endpoint, receiver
from wallets.webhook_delivery import Deliverer

pytestmark = pytest.mark.anyio

AT = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)


async def _emit(pool: db.Pool, tag: str, count: int, type_: str = "balance.low") -> list[str]:
    wallet_id = uuid.uuid4().int
    ids = []
    async with pool.connection() as conn:
        for n in range(count):
            await events.emit(
                conn,
                type_=type_,
                key=(tag, n),
                occurred_at=AT + dt.timedelta(minutes=n),
                data={"available": str(n)},
                wallet_id=wallet_id,
            )
            ids.append(str(uuid.UUID(int=events.event_id(type_, tag, n))))
    return ids


async def test_an_endpoint_shows_its_secret_once(api: Api, pool: db.Pool) -> None:
    body = {"url": "https://127.0.0.1:9/hooks", "event_types": ["balance.low"]}
    r = await api.post("/v1/webhook-endpoints", body, idem=api.k("ep"))
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["secret"].startswith("whsec_") and made["enabled"] is True
    again = await api.post("/v1/webhook-endpoints", body, idem=api.k("ep"))
    assert again.headers["Idempotency-Hit"] == "true" and again.json() == made
    one = (await api.get(f"/v1/webhook-endpoints/{made['id']}")).json()
    assert "secret" not in one and one["url"] == body["url"]
    listed = (await api.get("/v1/webhook-endpoints?enabled=true&limit=1000")).json()
    assert made["id"] in [e["id"] for e in listed["items"]]
    assert all("secret" not in e for e in listed["items"])
    async with pool.connection() as conn:
        log = await audit.list_for_object(conn, "webhook_endpoint", uuid.UUID(made["id"]).int)
    assert [e.action for e in log] == ["webhook_endpoint.create"]


async def test_rotation_disable_and_enable(api: Api) -> None:
    made = await created(api, "/v1/webhook-endpoints", {"url": "http://127.0.0.1:9/x"})
    base = f"/v1/webhook-endpoints/{made['id']}"
    r = await api.post(f"{base}/rotate-secret", None)
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["secret"] != made["secret"] and rotated["previous_secret_until"] is not None
    r = await api.post(f"{base}/disable", None)
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert_problem(
        await api.post(f"{base}/replay", {"event_id": str(uuid.uuid4())}),
        "webhook_endpoint_disabled",
    )
    r = await api.post(f"{base}/enable", None)
    assert r.status_code == 200 and r.json()["enabled"] is True
    assert_problem(await api.post(f"{base}/replay", {"event_id": str(uuid.uuid4())}), "not_found")


async def test_refusals_have_stable_codes(api: Api) -> None:
    for url in ("ftp://example.com", "not a url", "https://"):
        r = await api.post("/v1/webhook-endpoints", {"url": url})
        assert_problem(r, "webhook_url_invalid", field="url")
    r = await api.post(
        "/v1/webhook-endpoints", {"url": "https://127.0.0.1:9", "event_types": ["balance.lower"]}
    )
    assert_problem(r, "unknown_event_type", field="event_types")
    assert_problem(await api.get("/v1/events?type=balance.lower"), "unknown_event_type")
    made = await created(api, "/v1/webhook-endpoints", {"url": "https://127.0.0.1:9/r"})
    base = f"/v1/webhook-endpoints/{made['id']}"
    too_long = {"from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}
    assert_problem(await api.post(f"{base}/replay", too_long), "replay_range_too_large")
    both = {"event_id": str(uuid.uuid4()), **too_long}
    assert_problem(await api.post(f"{base}/replay", both), "validation_error")
    assert_problem(await api.get(f"/v1/webhook-endpoints/{uuid.uuid4()}"), "not_found")
    r = await api.post("/v1/webhook-endpoints", {"url": "https://127.0.0.1:9"}, idem=None)
    assert r.status_code == 422


async def test_events_list_and_read(api: Api, pool: db.Pool) -> None:
    ids = await _emit(pool, "list", 3)
    await _emit(pool, "other", 1, type_="balance.depleted")
    one = (await api.get(f"/v1/events/{ids[0]}")).json()
    assert one["type"] == "balance.low" and one["data"] == {"available": "0"}
    assert one["occurred_at"] == "2026-02-01T00:00:00Z"
    page = (await api.get(f"/v1/events?wallet_id={one['wallet_id']}&limit=2")).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = await api.get(f"/v1/events?wallet_id={one['wallet_id']}&cursor={page['next_cursor']}")
    # One transaction wrote them: the same created_at, then the id's order.
    assert sorted(e["id"] for e in page["items"] + rest.json()["items"]) == sorted(ids)
    ranged = await api.get(
        f"/v1/events?type=balance.low&wallet_id={one['wallet_id']}"
        "&from=2026-02-01T00:01:00Z&to=2026-02-01T00:02:00Z"
    )
    assert [e["id"] for e in ranged.json()["items"]] == ids[1:2]
    assert_problem(await api.get(f"/v1/events/{uuid.uuid4()}"), "not_found")


async def test_the_delivery_log_and_a_replay(api: Api, pool: db.Pool) -> None:
    with receiver([500]) as hook:
        made = await created(
            api,
            "/v1/webhook-endpoints",
            {"url": hook.url, "event_types": ["grant.expired"], "description": "log"},
        )
        ids = await _emit(pool, "log", 2, type_="grant.expired")
        deliverer = Deliverer(pool)
        await deliverer.dispatch(dt.datetime.now(dt.UTC))
        await deliverer.deliver_due(dt.datetime.now(dt.UTC))
        base = f"/v1/webhook-endpoints/{made['id']}"
        r = await api.post(f"{base}/replay", {"event_id": ids[1]})
        assert r.status_code == 200, r.text
        assert r.json() == {"endpoint_id": made["id"], "deliveries": 1, "event_ids": [ids[1]]}
        r = await api.post(
            f"{base}/replay", {"from": "2026-02-01T00:00:00Z", "to": "2026-02-02T00:00:00Z"}
        )
        assert r.json()["event_ids"] == ids
        await deliverer.deliver_due(dt.datetime.now(dt.UTC))
        await deliverer.aclose()
    log: list[dict[str, Any]] = (await api.get(f"{base}/deliveries?limit=1000")).json()["items"]
    assert len(log) == 5
    first = [d for d in log if d["replay"] == 0]
    assert sorted(len(d["attempt_log"]) for d in first) == [1, 1]
    failed = [a for d in log for a in d["attempt_log"] if a["status_code"] == 500]
    assert len(failed) == 1 and failed[0]["error"] == "HTTP 500"
    assert failed[0]["response_excerpt"] == "try again later"
    pending = (await api.get(f"{base}/deliveries?state=pending")).json()["items"]
    assert len(pending) == 1 and pending[0]["attempts"] == 1
    for got in hook.got:
        assert verify_webhook(made["secret"], got.headers, got.body)["type"] == "grant.expired"
    assert len(hook.got) == 5


async def test_the_client_manages_endpoints_and_reads_events(api: Api, pool: db.Pool) -> None:
    ids = await _emit(pool, "client", 2, type_="top_up.issued")
    transport = httpx.ASGITransport(app=api.app)
    async with AsyncCreditClient("http://testserver", api.keys["admin"], transport=transport) as c:
        made = await c.create_webhook_endpoint(
            WebhookEndpointIn(url="https://127.0.0.1:9/c", event_types=["top_up.issued"])
        )
        assert made.secret.startswith("whsec_")
        shown = await c.get_webhook_endpoint(made.id)
        assert shown.url == made.url and not hasattr(shown, "secret")
        rotated = await c.rotate_webhook_secret(made.id)
        assert rotated.secret != made.secret
        assert not (await c.disable_webhook_endpoint(made.id)).enabled
        assert (await c.enable_webhook_endpoint(made.id)).enabled
        listed = await c.list_webhook_endpoints(WebhookEndpointQuery(enabled=True, limit=1000))
        assert made.id in [e.id for e in listed.items]
        replay = await c.replay_webhook(made.id, WebhookReplayIn(event_id=ids[0]))
        assert replay.event_ids == [ids[0]]
        log = await c.list_webhook_deliveries(made.id)
        assert [d.event_id for d in log.items] == [ids[0]] and log.items[0].replay == 1
        seen = [e.id async for e in c.iter_events(EventQuery(type="top_up.issued", limit=1))]
        assert sorted(seen) == sorted(ids)
        assert (await c.get_event(ids[1])).type == "top_up.issued"


async def test_debits_through_the_api_go_on_while_an_endpoint_hangs(
    api: Api, pool: db.Pool
) -> None:
    world = await make_world(api, granted=10_000)
    with dead_endpoint() as url:
        await created(api, "/v1/webhook-endpoints", {"url": url, "event_types": ["grant.expiring"]})
        await _emit(pool, "hang", 3, type_="grant.expiring")
        deliverer = Deliverer(pool, timeout_s=5)
        await deliverer.dispatch(dt.datetime.now(dt.UTC))
        assert await deliverer.start(dt.datetime.now(dt.UTC)) >= 3  # and earlier tests'
        started = time.monotonic()
        answers = await asyncio.gather(
            *(api.post("/v1/debits", world.spend(amount=1), key="runtime") for _ in range(200))
        )
        elapsed = time.monotonic() - started
        in_flight = [t for t in deliverer._in_flight.values() if not t.done()]
        await deliverer.aclose()
    assert all(r.is_success for r in answers), [r.text for r in answers if not r.is_success]
    # All 200 were answered while the dead endpoint's requests still hung.
    assert in_flight and elapsed < 5
