"""Webhooks: endpoints (their admin operations), the signature, the body, and the retry schedule.

Signature (Standard Webhooks, https://www.standardwebhooks.com): a request carries
`webhook-id` (the event's id: the receiver's dedupe key, the same on every attempt and replay),
`webhook-timestamp` (Unix seconds of the attempt) and `webhook-signature`: `v1,` and the base64
of HMAC-SHA256 over `{id}.{timestamp}.{body}` with the endpoint's key (its secret is `whsec_`
and the key's base64). After a rotation the previous secret signs too, for a grace period, as a
second space-separated signature, so a receiver that still has the old secret keeps verifying.

Invariants:
- The body of an event is the same bytes on every attempt (the event never changes).
- An endpoint's secret is returned when it is made or rotated, never read back otherwise.
- Admin operations are idempotent (an Idempotency-Key, ControlPlane._once) and audited in the
  transaction of the change.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import random
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import msgspec

from grants.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    ReplayRangeTooLarge,
    UnknownEventType,
    WebhookEndpointDisabled,
    WebhookUrlInvalid,
)
from ledger.clock import datetime_of_ns
from ledger.db import Connection
from ledger.ids import derive_id, id_text
from ledger.limits import (
    WEBHOOK_DESCRIPTION_CHARS_MAX,
    WEBHOOK_ENDPOINTS_MAX,
    WEBHOOK_REPLAY_EVENTS_MAX,
    WEBHOOK_REPLAY_RANGE_DAYS_MAX,
    WEBHOOK_RETRY_BASE_S,
    WEBHOOK_RETRY_CAP_S,
    WEBHOOK_RETRY_FACTOR,
    WEBHOOK_SECRET_BYTES,
    WEBHOOK_SECRET_GRACE_S,
    WEBHOOK_URL_CHARS_MAX,
)
from ledger.repositories import audit, customers, events
from ledger.repositories import webhooks as repo
from ledger.repositories.events import Event
from wallets.control import ControlPlane

SECRET_PREFIX = "whsec_"


# -- the signature and the body -------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(WEBHOOK_SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    assert secret.startswith(SECRET_PREFIX), "a webhook secret starts with whsec_"
    return base64.b64decode(secret[len(SECRET_PREFIX) :])


def signature(secret: str, message_id: str, timestamp_s: int, body: bytes) -> str:
    """`v1,<base64 of HMAC-SHA256 over "{id}.{timestamp}.{body}">` (Standard Webhooks)."""
    signed = f"{message_id}.{timestamp_s}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    secrets_: Sequence[str], message_id: str, timestamp_s: int, body: bytes
) -> dict[str, str]:
    """The headers of a request: one signature per secret that signs now, space-separated."""
    assert secrets_
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": " ".join(
            signature(s, message_id, timestamp_s, body) for s in secrets_
        ),
    }


def _rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def event_body(event: Event) -> bytes:
    """The JSON an event is delivered as: ids as UUID text, times as RFC 3339 UTC."""
    return msgspec.json.encode(event_out(event))


def event_out(event: Event) -> dict[str, Any]:
    return {
        "id": id_text(event.id),
        "type": event.type,
        "created_at": _rfc3339(event.created_at),
        "occurred_at": _rfc3339(event.occurred_at),
        "customer_id": None if event.customer_id is None else id_text(event.customer_id),
        "wallet_id": None if event.wallet_id is None else id_text(event.wallet_id),
        "data": event.data,
    }


# -- retries --------------------------------------------------------------------------------------


def retry_delay_s(attempts: int, rng: random.Random) -> float:
    """The wait after the `attempts`-th failed attempt: full jitter, a uniform draw in
    0 .. min(cap, base * factor^(attempts-1))."""
    assert attempts >= 1
    ceiling = min(
        WEBHOOK_RETRY_CAP_S, WEBHOOK_RETRY_BASE_S * WEBHOOK_RETRY_FACTOR ** (attempts - 1)
    )
    return rng.uniform(0.0, ceiling)


# -- validation -----------------------------------------------------------------------------------


def check_url(url: str) -> str:
    """An absolute http(s) URL with a host, without spaces or control characters."""
    refused = WebhookUrlInvalid(
        "url must be an absolute http:// or https:// URL with a host", field="url"
    )
    if not url or len(url) > WEBHOOK_URL_CHARS_MAX or any(c.isspace() or ord(c) < 32 for c in url):
        raise refused
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # a port that is not a number raises
    except ValueError:
        raise refused from None
    if parts.scheme not in ("http", "https") or not host:
        raise refused
    return url


def check_event_types(types: Sequence[str], field: str = "event_types") -> list[str]:
    unknown = sorted(set(types) - set(events.EVENT_TYPES))
    if unknown:
        raise UnknownEventType(
            f"unknown event types {unknown}; known: {sorted(events.EVENT_TYPES)}", field=field
        )
    return sorted(set(types))


# -- endpoints: admin operations ------------------------------------------------------------------


class EndpointCreated(msgspec.Struct, frozen=True, kw_only=True):
    endpoint: repo.Endpoint
    secret: str


class ReplayResult(msgspec.Struct, frozen=True, kw_only=True):
    endpoint_id: int
    event_ids: list[int]
    deliveries: int


class WebhookEndpoints:
    """The admin operations on endpoints, each idempotent and audited (ControlPlane._once)."""

    def __init__(self, control: ControlPlane) -> None:
        self.control = control
        self.pool = control.pool

    def _now(self) -> dt.datetime:
        return datetime_of_ns(self.control.service.clock_ns())

    async def create(
        self,
        *,
        url: str,
        description: str = "",
        event_types: Sequence[str] = (),
        customer_id: int | None = None,
        actor: str,
        tenant: int,
        key: str,
    ) -> tuple[EndpointCreated, bool]:
        check_url(url)
        types = check_event_types(event_types)
        if len(description) > WEBHOOK_DESCRIPTION_CHARS_MAX:
            raise InvalidRequest("description is too long", field="description")
        endpoint_id = derive_id("webhook_endpoint", tenant, key)
        secret = new_secret()

        async def first(conn: Connection) -> None:
            await conn.execute("LOCK TABLE webhook_endpoints IN SHARE ROW EXCLUSIVE MODE")
            if await repo.count_endpoints(conn) >= WEBHOOK_ENDPOINTS_MAX:
                raise Conflict(f"at most {WEBHOOK_ENDPOINTS_MAX} webhook endpoints")
            if customer_id is not None and await customers.get_customer(conn, customer_id) is None:
                raise NotFound(f"customer {id_text(customer_id)} not found")
            await repo.insert_endpoint(
                conn,
                id=endpoint_id,
                url=url,
                description=description,
                event_types=types,
                customer_id=customer_id,
                secret=secret,
                at=self._now(),
            )
            await audit.append(
                conn,
                actor=actor,
                action="webhook_endpoint.create",
                object_type="webhook_endpoint",
                object_id=endpoint_id,
                details={"url": url, "event_types": types},
            )

        async def then() -> EndpointCreated:
            async with self.pool.connection() as conn:
                row = await repo.get_endpoint(conn, endpoint_id)
            assert row is not None
            # The secret made in the transaction that claimed the key (a racing first attempt
            # may have made another one that lost).
            return EndpointCreated(endpoint=row, secret=row.secret)

        return await self.control._once(
            tenant=tenant,
            key=key,
            operation="webhook_endpoint.create",
            request=(url, description, types, customer_id),
            first=first,
            then=then,
            result_type=EndpointCreated,
        )

    async def get(self, endpoint_id: int) -> repo.Endpoint:
        async with self.pool.connection() as conn:
            row = await repo.get_endpoint(conn, endpoint_id)
        if row is None:
            raise NotFound("webhook endpoint not found")
        return row

    async def set_enabled(
        self, endpoint_id: int, enabled: bool, *, actor: str, tenant: int, key: str
    ) -> tuple[repo.Endpoint, bool]:
        action = "webhook_endpoint.enable" if enabled else "webhook_endpoint.disable"

        async def first(conn: Connection) -> None:
            if await repo.set_enabled(conn, endpoint_id, enabled, self._now()) is None:
                raise NotFound("webhook endpoint not found")
            await audit.append(
                conn,
                actor=actor,
                action=action,
                object_type="webhook_endpoint",
                object_id=endpoint_id,
            )

        async def then() -> repo.Endpoint:
            return await self.get(endpoint_id)

        return await self.control._once(
            tenant=tenant,
            key=key,
            operation=action,
            request=(id_text(endpoint_id),),
            first=first,
            then=then,
            result_type=repo.Endpoint,
        )

    async def rotate_secret(
        self, endpoint_id: int, *, actor: str, tenant: int, key: str
    ) -> tuple[EndpointCreated, bool]:
        """A new secret; the one it replaces keeps signing (a second signature) for
        WEBHOOK_SECRET_GRACE_S."""
        secret = new_secret()

        async def first(conn: Connection) -> None:
            now = self._now()
            until = now + dt.timedelta(seconds=WEBHOOK_SECRET_GRACE_S)
            row = await repo.rotate_secret(
                conn, endpoint_id, secret=secret, previous_until=until, at=now
            )
            if row is None:
                raise NotFound("webhook endpoint not found")
            await audit.append(
                conn,
                actor=actor,
                action="webhook_endpoint.rotate_secret",
                object_type="webhook_endpoint",
                object_id=endpoint_id,
                details={"previous_secret_until": _rfc3339(until)},
            )

        async def then() -> EndpointCreated:
            row = await self.get(endpoint_id)
            return EndpointCreated(endpoint=row, secret=row.secret)

        return await self.control._once(
            tenant=tenant,
            key=key,
            operation="webhook_endpoint.rotate_secret",
            request=(id_text(endpoint_id),),
            first=first,
            then=then,
            result_type=EndpointCreated,
        )

    async def replay(
        self,
        endpoint_id: int,
        *,
        event_id: int | None = None,
        occurred_from: dt.datetime | None = None,
        occurred_to: dt.datetime | None = None,
        actor: str,
        tenant: int,
        key: str,
    ) -> tuple[ReplayResult, bool]:
        """New deliveries (the next replay number) to an enabled endpoint: of one event, or of
        every event it wants that occurred in [from, to) (bounded)."""
        if (event_id is None) == (occurred_from is None or occurred_to is None):
            raise InvalidRequest("give either event_id or both from and to", field="event_id")
        if occurred_from is not None and occurred_to is not None:
            if occurred_to <= occurred_from:
                raise InvalidRequest("to must be after from", field="to")
            if occurred_to - occurred_from > dt.timedelta(days=WEBHOOK_REPLAY_RANGE_DAYS_MAX):
                raise ReplayRangeTooLarge(
                    f"a replay covers at most {WEBHOOK_REPLAY_RANGE_DAYS_MAX} days", field="to"
                )
        replayed: list[int] = []

        async def first(conn: Connection) -> None:
            endpoint = await repo.get_endpoint(conn, endpoint_id, lock=True)
            if endpoint is None:
                raise NotFound("webhook endpoint not found")
            if not endpoint.enabled:
                raise WebhookEndpointDisabled("the endpoint is disabled: enable it first")
            ids = await self._replayed_events(conn, endpoint, event_id, occurred_from, occurred_to)
            numbers = await repo.next_replays(conn, endpoint_id, ids)
            await repo.insert_deliveries(
                conn, [(e, endpoint_id, numbers[e]) for e in ids], self._now()
            )
            await audit.append(
                conn,
                actor=actor,
                action="webhook_endpoint.replay",
                object_type="webhook_endpoint",
                object_id=endpoint_id,
                details={"events": len(ids)},
            )
            replayed.extend(ids)

        async def then() -> ReplayResult:
            return ReplayResult(
                endpoint_id=endpoint_id, event_ids=replayed, deliveries=len(replayed)
            )

        return await self.control._once(
            tenant=tenant,
            key=key,
            operation="webhook_endpoint.replay",
            request=(
                id_text(endpoint_id),
                event_id and id_text(event_id),
                occurred_from,
                occurred_to,
            ),
            first=first,
            then=then,
            result_type=ReplayResult,
        )

    async def _replayed_events(
        self,
        conn: Connection,
        endpoint: repo.Endpoint,
        event_id: int | None,
        occurred_from: dt.datetime | None,
        occurred_to: dt.datetime | None,
    ) -> list[int]:
        if event_id is not None:
            event = await events.get_event(conn, event_id)
            if event is None or (
                endpoint.customer_id is not None and event.customer_id != endpoint.customer_id
            ):
                raise NotFound("event not found")
            if not endpoint.wants(event):
                raise InvalidRequest(
                    f"the endpoint does not subscribe to {event.type!r} events", field="event_id"
                )
            return [event.id]
        assert occurred_from is not None and occurred_to is not None
        ids = await repo.events_in_range(
            conn,
            occurred_from=occurred_from,
            occurred_to=occurred_to,
            types=endpoint.event_types,
            customer_id=endpoint.customer_id,
            limit=WEBHOOK_REPLAY_EVENTS_MAX + 1,
        )
        if len(ids) > WEBHOOK_REPLAY_EVENTS_MAX:
            raise ReplayRangeTooLarge(
                f"the range holds more than {WEBHOOK_REPLAY_EVENTS_MAX} events: replay a "
                "shorter one",
                field="from",
            )
        return ids
