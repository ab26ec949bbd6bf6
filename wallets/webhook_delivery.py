"""Webhook delivery: the fan-out of the outbox into deliveries, and the sending of due ones.

Invariants:
- Fan-out takes at most WEBHOOK_DISPATCH_EVENTS_MAX undispatched events (SKIP LOCKED), inserts
  one delivery per enabled endpoint that wants each, and marks them dispatched, in one
  transaction. A delivery's id derives from (event, endpoint, replay), so nothing is doubled.
- Sending leases due deliveries first (a transaction of its own: `next_attempt_at` moves past
  the lease), then sends, then records each outcome guarded by the leased attempt number.
  Two senders never lease one delivery at once; a crash between the lease and the record
  leaves it due again after the lease: delivery is at least once, and each attempt is logged
  once. Receivers dedupe on `webhook-id`, the event's id.
- One request lasts at most WEBHOOK_REQUEST_TIMEOUT_S, all of it. At most
  WEBHOOK_REQUESTS_PER_ENDPOINT_MAX requests to one endpoint are in flight in this process, and
  an endpoint with requests in flight gets no new lease until they end, so a slow or dead
  endpoint holds back only its own deliveries. The ticks start the sending and return (`start`);
  `drain` waits for what is in flight (tests, shutdown).
- Nothing here runs on the spend path: events are written by their causes, and read here.
- Order: none across retries. An event carries `occurred_at`; receivers order by it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Callable

import httpx
import msgspec
from msgspec.structs import astuple

from ledger.db import Pool
from ledger.ids import id_text
from ledger.limits import (
    WEBHOOK_ATTEMPTS_MAX,
    WEBHOOK_DELIVERIES_PER_TICK_MAX,
    WEBHOOK_DISPATCH_EVENTS_MAX,
    WEBHOOK_ENDPOINTS_MAX,
    WEBHOOK_ERROR_CHARS_MAX,
    WEBHOOK_LEASE_S,
    WEBHOOK_REQUEST_TIMEOUT_S,
    WEBHOOK_REQUESTS_PER_ENDPOINT_MAX,
    WEBHOOK_RESPONSE_EXCERPT_CHARS_MAX,
)
from ledger.repositories import events
from ledger.repositories import webhooks as repo
from wallets.webhooks import event_body, retry_delay_s, signed_headers

_logger = logging.getLogger(__name__)


class Response(msgspec.Struct, frozen=True, kw_only=True):
    """What one request came to: a status (None when there was no answer) or an error."""

    status_code: int | None
    error: str | None
    excerpt: str | None
    duration_ms: int


# Sends one request: (url, headers, body) -> its outcome. Tests wrap it to inject a crash.
Send = Callable[[str, dict[str, str], bytes], Awaitable[Response]]


class DispatchReport(msgspec.Struct, frozen=True):
    events: int
    deliveries: int


class DeliveryReport(msgspec.Struct, frozen=True):
    leased: int
    delivered: int
    retried: int
    failed: int


class Deliverer:
    """Fans the outbox out and sends due deliveries. One per process (its in-flight bounds are
    per process; the jobs run it in the leader)."""

    def __init__(
        self,
        pool: Pool,
        *,
        client: httpx.AsyncClient | None = None,
        rng: random.Random | None = None,
        timeout_s: float = WEBHOOK_REQUEST_TIMEOUT_S,
        send: Send | None = None,
        wall_clock_s: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        # Made at the first request (inside the running loop), closed by `aclose`.
        self._client = client
        self._own_client = client is None
        self.rng = rng or random.Random()
        self.send: Send = send or self._post
        # `webhook-timestamp` is the wall clock's, whatever clock schedules the attempts (a
        # sandbox's test clock): receivers check it against their own clock.
        self.wall_clock_s = wall_clock_s
        self._in_flight: dict[int, asyncio.Task[DeliveryReport]] = {}

    async def aclose(self) -> None:
        """Stops: requests in flight are cancelled (their leases run out, and the next leader
        sends them again)."""
        for task in self._in_flight.values():
            task.cancel()
        await self.drain()
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s),
                follow_redirects=False,
                # Room for every endpoint's requests in flight at once: dead endpoints holding
                # their connections never leave a live one waiting for the pool.
                limits=httpx.Limits(
                    max_connections=WEBHOOK_ENDPOINTS_MAX * WEBHOOK_REQUESTS_PER_ENDPOINT_MAX
                ),
            )
        return self._client

    # -- fan-out ----------------------------------------------------------------------------------

    async def dispatch(self, now: dt.datetime) -> DispatchReport:
        """One bounded fan-out, in one transaction."""
        async with self.pool.connection() as conn, conn.transaction():
            due = await events.undispatched(conn, WEBHOOK_DISPATCH_EVENTS_MAX)
            if not due:
                return DispatchReport(0, 0)
            endpoints = await repo.enabled_endpoints(conn)
            rows = [(e.id, p.id, 0) for e in due for p in endpoints if p.wants(e)]
            inserted = await repo.insert_deliveries(conn, rows, now)
            await events.mark_dispatched(conn, [e.id for e in due])
        return DispatchReport(len(due), inserted)

    # -- sending ----------------------------------------------------------------------------------

    async def start(self, now: dt.datetime) -> int:
        """Leases due deliveries (none of an endpoint with requests in flight here) and starts
        sending them, one task per endpoint; returns how many were leased."""
        for endpoint_id, task in list(self._in_flight.items()):
            if task.done():  # its outcome is in Postgres; a failure is logged
                del self._in_flight[endpoint_id]
                if not task.cancelled() and task.exception() is not None:
                    _logger.error("webhook delivery task failed", exc_info=task.exception())
        busy = list(self._in_flight)
        async with self.pool.connection() as conn, conn.transaction():
            leased = await repo.lease_due(
                conn,
                now=now,
                lease_until=now + dt.timedelta(seconds=WEBHOOK_LEASE_S),
                per_endpoint=WEBHOOK_REQUESTS_PER_ENDPOINT_MAX,
                limit=WEBHOOK_DELIVERIES_PER_TICK_MAX,
                busy=busy,
            )
        by_endpoint: dict[int, list[repo.Leased]] = {}
        for item in leased:
            by_endpoint.setdefault(item.endpoint.id, []).append(item)
        for endpoint_id, items in by_endpoint.items():
            self._in_flight[endpoint_id] = asyncio.create_task(
                self._send_all(items, now), name=f"webhooks {id_text(endpoint_id)}"
            )
        return len(leased)

    async def drain(self) -> DeliveryReport:
        """Waits for every send in flight; what they came to."""
        tasks = list(self._in_flight.values())
        self._in_flight.clear()
        reports = await asyncio.gather(*tasks, return_exceptions=True)
        total = DeliveryReport(0, 0, 0, 0)
        for report in reports:
            if isinstance(report, asyncio.CancelledError):
                continue
            if isinstance(report, BaseException):
                _logger.error("webhook delivery task failed", exc_info=report)
                continue
            total = DeliveryReport(
                *(a + b for a, b in zip(astuple(total), astuple(report), strict=True))
            )
        return total

    async def deliver_due(self, now: dt.datetime) -> DeliveryReport:
        """Leases, sends and records the due deliveries (`start`, then `drain`)."""
        await self.start(now)
        return await self.drain()

    async def _send_all(self, items: list[repo.Leased], now: dt.datetime) -> DeliveryReport:
        outcomes = await asyncio.gather(*(self._deliver(item, now) for item in items))
        return DeliveryReport(
            len(items),
            outcomes.count("delivered"),
            outcomes.count("pending"),
            outcomes.count("failed"),
        )

    async def _deliver(self, item: repo.Leased, now: dt.datetime) -> str:
        event_id = id_text(item.event.id)
        body = event_body(item.event)
        timestamp_s = int(self.wall_clock_s())
        headers = signed_headers(item.endpoint.secrets(now), event_id, timestamp_s, body)
        response = await self.send(item.endpoint.url, headers, body)
        attempt = item.delivery.attempts + 1
        ok = response.status_code is not None and 200 <= response.status_code < 300
        if ok:
            state, next_at = "delivered", None
        elif attempt >= WEBHOOK_ATTEMPTS_MAX:
            state, next_at = "failed", None
        else:
            state = "pending"
            next_at = now + dt.timedelta(seconds=retry_delay_s(attempt, self.rng))
        record = repo.Attempt(
            delivery_id=item.delivery.id,
            attempt=attempt,
            at=now,
            status_code=response.status_code,
            duration_ms=response.duration_ms,
            error=response.error,
            response_excerpt=response.excerpt,
        )
        async with self.pool.connection() as conn, conn.transaction():
            recorded = await repo.record_attempt(conn, record, state=state, next_attempt_at=next_at)
        if not recorded:
            _logger.info("webhook delivery %s was recorded by another sender", event_id)
        return state

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> Response:
        """One POST, bounded by the timeout as a whole (httpx's timeouts are per phase)."""
        started = time.monotonic()
        status: int | None = None
        excerpt: str | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                request = self.client.build_request("POST", url, content=body, headers=headers)
                response = await self.client.send(request, stream=True)
                try:
                    status = response.status_code
                    excerpt = await _excerpt(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            error = f"no answer within {self.timeout_s:g} s"
        except Exception as failure:
            # Whatever stopped the request (a refused connection, a TLS failure, a URL httpx
            # cannot send to) is this attempt's outcome: recorded, retried, finally 'failed'.
            # Left to escape, it would leave the delivery leased again and again, never failed.
            error = f"{type(failure).__name__}: {failure}"[:WEBHOOK_ERROR_CHARS_MAX]
        duration_ms = int((time.monotonic() - started) * 1000)
        if status is not None and not 200 <= status < 300:
            error = f"HTTP {status}"
        return Response(status_code=status, error=error, excerpt=excerpt, duration_ms=duration_ms)


async def _excerpt(response: httpx.Response) -> str:
    """The first characters of the answer, reading no more of it than they need."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= WEBHOOK_RESPONSE_EXCERPT_CHARS_MAX:
            break
    text = b"".join(chunks).decode("utf-8", errors="replace")
    return text[:WEBHOOK_RESPONSE_EXCERPT_CHARS_MAX]
