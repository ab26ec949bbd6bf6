"""Webhook endpoints, deliveries and their attempts (migration 0013), and the outbox's reads
for the API and replays.

Invariants:
- A delivery is leased by moving its `next_attempt_at` past the lease (`lease_due`, in a
  transaction of its own, `FOR UPDATE SKIP LOCKED`): two senders never lease it at once, and a
  sender that crashed leaves it due again once the lease runs out.
- An outcome is recorded only by the sender that leased the delivery at its current attempt
  number (`record_attempt` is guarded by `attempts`): a stale sender records nothing, so each
  attempt is in the log once.
- A delivery's id derives from (event, endpoint, replay): fanning an event out twice inserts
  nothing the second time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import msgspec

from ledger.db import Connection
from ledger.ids import derive_id
from ledger.limits import WEBHOOK_ENDPOINTS_MAX
from ledger.repositories._rows import (
    ROWS_PER_PAGE_DEFAULT,
    Condition,
    Keyset,
    equal,
    fetch_page,
    from_uuid,
    from_uuid_or_none,
    to_uuid,
    to_uuid_or_none,
    uuids,
)
from ledger.repositories.events import Event
from ledger.repositories.events import _row as _event_row

_ENDPOINT: Final = (
    "id, url, description, event_types, customer_id, enabled, secret, previous_secret,"
    " previous_secret_until, created_at, updated_at"
)
_DELIVERY: Final = (
    "id, event_id, endpoint_id, replay, state, attempts, next_attempt_at, last_status,"
    " last_error, created_at, finished_at"
)
_ATTEMPT: Final = "delivery_id, attempt, at, status_code, duration_ms, error, response_excerpt"
_EVENT: Final = "id, seq, type, customer_id, wallet_id, occurred_at, created_at, data"


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    url: str
    description: str
    event_types: list[str]  # empty: every type
    customer_id: int | None  # only this customer's events when set
    enabled: bool
    secret: str
    previous_secret: str | None
    previous_secret_until: datetime | None
    created_at: datetime
    updated_at: datetime

    def wants(self, event: Event) -> bool:
        """Whether this endpoint is sent `event` (its type filter and customer binding)."""
        if self.event_types and event.type not in self.event_types:
            return False
        return self.customer_id is None or self.customer_id == event.customer_id

    def secrets(self, now: datetime) -> list[str]:
        """The secrets that sign at `now`: the current one, and the previous one in its grace."""
        signing = [self.secret]
        if self.previous_secret is not None and self.previous_secret_until is not None:
            if now < self.previous_secret_until:
                signing.append(self.previous_secret)
        return signing


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    event_id: int
    endpoint_id: int
    replay: int
    state: str  # pending | delivered | failed
    attempts: int
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    delivery_id: int
    attempt: int
    at: datetime
    status_code: int | None
    duration_ms: int
    error: str | None
    response_excerpt: str | None


class Leased(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery leased for sending: what the request needs."""

    delivery: Delivery
    event: Event
    endpoint: Endpoint


def _endpoint(row: Sequence[Any]) -> Endpoint:
    (id_, url, description, types, customer_id, enabled, secret, previous, until, created,
     updated) = row  # fmt: skip
    return Endpoint(
        id=from_uuid(id_),
        url=url,
        description=description,
        event_types=list(types),
        customer_id=from_uuid_or_none(customer_id),
        enabled=enabled,
        secret=secret,
        previous_secret=previous,
        previous_secret_until=until,
        created_at=created,
        updated_at=updated,
    )


def _delivery(row: Sequence[Any]) -> Delivery:
    (id_, event_id, endpoint_id, replay, state, attempts, next_at, status, error, created,
     finished) = row  # fmt: skip
    return Delivery(
        id=from_uuid(id_),
        event_id=from_uuid(event_id),
        endpoint_id=from_uuid(endpoint_id),
        replay=replay,
        state=state,
        attempts=attempts,
        next_attempt_at=next_at,
        last_status=status,
        last_error=error,
        created_at=created,
        finished_at=finished,
    )


def _attempt(row: Sequence[Any]) -> Attempt:
    delivery_id, attempt, at, status, duration_ms, error, excerpt = row
    return Attempt(
        delivery_id=from_uuid(delivery_id),
        attempt=attempt,
        at=at,
        status_code=status,
        duration_ms=duration_ms,
        error=error,
        response_excerpt=excerpt,
    )


def delivery_id(event_id: int, endpoint_id: int, replay: int) -> int:
    return derive_id("webhook_delivery", event_id, endpoint_id, replay)


# -- endpoints ------------------------------------------------------------------------------------


async def insert_endpoint(
    conn: Connection,
    *,
    id: int,
    url: str,
    description: str,
    event_types: list[str],
    customer_id: int | None,
    secret: str,
    at: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO webhook_endpoints (id, url, description, event_types, customer_id, secret,"
        " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (to_uuid(id), url, description, event_types, to_uuid_or_none(customer_id), secret, at,
         at),
    )  # fmt: skip


async def count_endpoints(conn: Connection) -> int:
    cursor = await conn.execute("SELECT count(*) FROM webhook_endpoints")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def get_endpoint(conn: Connection, id: int, *, lock: bool = False) -> Endpoint | None:
    """The endpoint; `lock`: FOR UPDATE until the caller's transaction ends."""
    suffix = " FOR UPDATE" if lock else ""
    cursor = await conn.execute(
        f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE id = %s{suffix}", (to_uuid(id),)
    )
    row = await cursor.fetchone()
    return None if row is None else _endpoint(row)


async def list_endpoints(
    conn: Connection,
    *,
    customer_id: int | None = None,
    enabled: bool | None = None,
    after: Keyset | None = None,
    limit: int = ROWS_PER_PAGE_DEFAULT,
) -> tuple[list[Endpoint], bool]:
    conditions = equal(customer_id=to_uuid_or_none(customer_id), enabled=enabled)
    select = f"SELECT {_ENDPOINT} FROM webhook_endpoints"
    return await fetch_page(conn, select, conditions, _endpoint, after=after, limit=limit)


async def enabled_endpoints(conn: Connection) -> list[Endpoint]:
    """Every enabled endpoint (at most WEBHOOK_ENDPOINTS_MAX exist)."""
    cursor = await conn.execute(
        f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE enabled ORDER BY id LIMIT %s",
        (WEBHOOK_ENDPOINTS_MAX,),
    )
    return [_endpoint(r) for r in await cursor.fetchall()]


async def set_enabled(conn: Connection, id: int, enabled: bool, at: datetime) -> Endpoint | None:
    cursor = await conn.execute(
        f"UPDATE webhook_endpoints SET enabled = %s, updated_at = %s WHERE id = %s"
        f" RETURNING {_ENDPOINT}",
        (enabled, at, to_uuid(id)),
    )
    row = await cursor.fetchone()
    return None if row is None else _endpoint(row)


async def rotate_secret(
    conn: Connection, id: int, *, secret: str, previous_until: datetime, at: datetime
) -> Endpoint | None:
    """The new secret signs from now; the current one becomes the previous, which signs too
    until `previous_until` (a previous one still in its grace is dropped)."""
    cursor = await conn.execute(
        "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_until = %s,"
        f" secret = %s, updated_at = %s WHERE id = %s RETURNING {_ENDPOINT}",
        (previous_until, secret, at, to_uuid(id)),
    )
    row = await cursor.fetchone()
    return None if row is None else _endpoint(row)


# -- deliveries -----------------------------------------------------------------------------------


async def insert_deliveries(
    conn: Connection, rows: Sequence[tuple[int, int, int]], at: datetime
) -> int:
    """Pending deliveries, due at `at`, of (event, endpoint, replay); an existing one is left
    as it is. The number inserted."""
    if not rows:
        return 0
    ids = [delivery_id(*r) for r in rows]
    cursor = await conn.execute(
        "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, replay, next_attempt_at,"
        " created_at) SELECT id, event_id, endpoint_id, replay, %s, %s"
        " FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[], %s::int[])"
        " AS t(id, event_id, endpoint_id, replay) ON CONFLICT DO NOTHING",
        (
            at,
            at,
            uuids(ids),
            uuids([r[0] for r in rows]),
            uuids([r[1] for r in rows]),
            [r[2] for r in rows],
        ),
    )
    return cursor.rowcount


async def next_replays(
    conn: Connection, endpoint_id: int, event_ids: Sequence[int]
) -> dict[int, int]:
    """The next replay number of each event to this endpoint (1 when never replayed)."""
    cursor = await conn.execute(
        "SELECT event_id, max(replay) + 1 FROM webhook_deliveries"
        " WHERE endpoint_id = %s AND event_id = ANY(%s) GROUP BY event_id",
        (to_uuid(endpoint_id), uuids(event_ids)),
    )
    found = {from_uuid(e): int(n) for e, n in await cursor.fetchall()}
    return {e: found.get(e, 1) for e in event_ids}


async def lease_due(
    conn: Connection,
    *,
    now: datetime,
    lease_until: datetime,
    per_endpoint: int,
    limit: int,
    busy: Sequence[int] = (),
) -> list[Leased]:
    """Leases due deliveries of enabled endpoints, at most `per_endpoint` of each endpoint
    (none of the `busy` ones) and `limit` in all: their `next_attempt_at` becomes
    `lease_until`. Call in a transaction of its own, committed before sending."""
    cursor = await conn.execute(
        "SELECT d.id FROM webhook_endpoints e CROSS JOIN LATERAL ("
        " SELECT id FROM webhook_deliveries d WHERE d.endpoint_id = e.id"
        " AND d.state = 'pending' AND d.next_attempt_at <= %s"
        " ORDER BY d.next_attempt_at, d.id LIMIT %s FOR UPDATE SKIP LOCKED) d"
        " WHERE e.enabled AND NOT e.id = ANY(%s) ORDER BY random() LIMIT %s",
        (now, per_endpoint, uuids(busy), limit),
    )
    ids = [r[0] for r in await cursor.fetchall()]
    if not ids:
        return []
    await conn.execute(
        "UPDATE webhook_deliveries SET next_attempt_at = %s WHERE id = ANY(%s)",
        (lease_until, ids),
    )
    columns = ", ".join(
        [f"d.{c.strip()}" for c in _DELIVERY.split(",")]
        + [f"v.{c.strip()}" for c in _EVENT.split(",")]
        + [f"e.{c.strip()}" for c in _ENDPOINT.split(",")]
    )
    cursor = await conn.execute(
        f"SELECT {columns} FROM webhook_deliveries d JOIN events v ON v.id = d.event_id"
        " JOIN webhook_endpoints e ON e.id = d.endpoint_id WHERE d.id = ANY(%s)"
        " ORDER BY d.endpoint_id, v.occurred_at, v.seq",
        (ids,),
    )
    leased = []
    for row in await cursor.fetchall():
        leased.append(
            Leased(
                delivery=_delivery(row[:11]),
                event=_event_row(tuple(row[11:19])),
                endpoint=_endpoint(row[19:]),
            )
        )
    return leased


async def record_attempt(
    conn: Connection,
    attempt: Attempt,
    *,
    state: str,
    next_attempt_at: datetime | None,
) -> bool:
    """The attempt's outcome: the delivery's new state (and when it is due again, if pending)
    and the attempt's row. Only when the delivery is still pending at the attempt before this
    one (the sender's lease); False when it was not (recorded by another sender)."""
    assert state in ("pending", "delivered", "failed"), state
    assert (state == "pending") == (next_attempt_at is not None)
    finished = None if state == "pending" else attempt.at
    cursor = await conn.execute(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, state = %s, next_attempt_at = %s,"
        " last_status = %s, last_error = %s, finished_at = %s"
        " WHERE id = %s AND state = 'pending' AND attempts = %s",
        (state, next_attempt_at, attempt.status_code, attempt.error, finished,
         to_uuid(attempt.delivery_id), attempt.attempt - 1),
    )  # fmt: skip
    if cursor.rowcount != 1:
        return False
    await conn.execute(
        f"INSERT INTO webhook_attempts ({_ATTEMPT}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (to_uuid(attempt.delivery_id), attempt.attempt, attempt.at, attempt.status_code,
         attempt.duration_ms, attempt.error, attempt.response_excerpt),
    )  # fmt: skip
    return True


async def get_delivery(conn: Connection, id: int) -> Delivery | None:
    cursor = await conn.execute(
        f"SELECT {_DELIVERY} FROM webhook_deliveries WHERE id = %s", (to_uuid(id),)
    )
    row = await cursor.fetchone()
    return None if row is None else _delivery(row)


async def list_deliveries(
    conn: Connection,
    *,
    endpoint_id: int,
    state: str | None = None,
    event_id: int | None = None,
    after: Keyset | None = None,
    limit: int = ROWS_PER_PAGE_DEFAULT,
) -> tuple[list[Delivery], bool]:
    conditions = equal(
        endpoint_id=to_uuid(endpoint_id), state=state, event_id=to_uuid_or_none(event_id)
    )
    select = f"SELECT {_DELIVERY} FROM webhook_deliveries"
    return await fetch_page(conn, select, conditions, _delivery, after=after, limit=limit)


async def attempts_of(conn: Connection, delivery_ids: Sequence[int]) -> dict[int, list[Attempt]]:
    """The attempts of each delivery, in order (at most WEBHOOK_ATTEMPTS_MAX each)."""
    cursor = await conn.execute(
        f"SELECT {_ATTEMPT} FROM webhook_attempts WHERE delivery_id = ANY(%s)"
        " ORDER BY delivery_id, attempt",
        (uuids(delivery_ids),),
    )
    found: dict[int, list[Attempt]] = {d: [] for d in delivery_ids}
    for row in await cursor.fetchall():
        attempt = _attempt(row)
        found[attempt.delivery_id].append(attempt)
    return found


# -- the outbox, read for the API and for replays --------------------------------------------------


def _event_conditions(
    *,
    type_: str | None,
    wallet_id: int | None,
    customer_id: int | None,
    occurred_from: datetime | None,
    occurred_to: datetime | None,
    types: Sequence[str] = (),
) -> list[Condition]:
    conditions = equal(
        type=type_, wallet_id=to_uuid_or_none(wallet_id), customer_id=to_uuid_or_none(customer_id)
    )
    if occurred_from is not None:
        conditions.append(("occurred_at >= %s", (occurred_from,)))
    if occurred_to is not None:
        conditions.append(("occurred_at < %s", (occurred_to,)))
    if types:
        conditions.append(("type = ANY(%s)", (list(types),)))
    return conditions


async def list_events(
    conn: Connection,
    *,
    type_: str | None = None,
    wallet_id: int | None = None,
    customer_id: int | None = None,
    occurred_from: datetime | None = None,
    occurred_to: datetime | None = None,
    after: Keyset | None = None,
    limit: int = ROWS_PER_PAGE_DEFAULT,
) -> tuple[list[Event], bool]:
    """A page of the outbox with every filter given, in (created_at, id) order."""
    conditions = _event_conditions(
        type_=type_,
        wallet_id=wallet_id,
        customer_id=customer_id,
        occurred_from=occurred_from,
        occurred_to=occurred_to,
    )
    select = f"SELECT {_EVENT} FROM events"
    return await fetch_page(conn, select, conditions, _event_row, after=after, limit=limit)


async def events_in_range(
    conn: Connection,
    *,
    occurred_from: datetime,
    occurred_to: datetime,
    types: Sequence[str],
    customer_id: int | None,
    limit: int,
) -> list[int]:
    """The ids of events that occurred in [from, to) of these types (any when empty) and this
    customer (any when None), in the order they occurred: at most `limit`."""
    conditions = _event_conditions(
        type_=None,
        wallet_id=None,
        customer_id=customer_id,
        occurred_from=occurred_from,
        occurred_to=occurred_to,
        types=types,
    )
    where = " AND ".join(sql for sql, _ in conditions)
    params = [p for _, values in conditions for p in values]
    cursor = await conn.execute(
        f"SELECT id FROM events WHERE {where} ORDER BY occurred_at, seq LIMIT %s",
        (*params, limit),
    )
    return [from_uuid(r[0]) for r in await cursor.fetchall()]
