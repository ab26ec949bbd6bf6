"""Webhook endpoints (create, list, read, rotate the secret, disable, enable), their delivery
log and replays; and the outbox of events they deliver. Admin scope throughout.

A key bound to a customer manages only endpoints bound to its customer (an endpoint it makes
is bound to it) and reads only its customer's events; others are not found.
"""

from __future__ import annotations

from typing import Any

from credit_ledger_client import schemas as w
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath

from api.auth import Principal
from api.common import own, parse_id, sid
from api.openapi import COMMON, WRITE, operation
from api.paging import customer_filter
from api.routes.shared import (
    EXAMPLE_ID,
    LIST_PROBLEMS,
    READ_PROBLEMS,
    documented_body,
    id_or_none,
    key_of,
    principal_of,
    query_of,
    read_page,
    reply,
    services_of,
    strict_body,
)
from api.services import Services
from grants.errors import NotFound
from ledger.repositories import events
from ledger.repositories import webhooks as repo
from wallets.webhooks import WebhookEndpoints, check_event_types

ADMIN = {"admin"}
ENDPOINT_PROBLEMS = (*COMMON, *WRITE, "conflict", "not_found")
OPS = {
    "create_webhook_endpoint": operation(
        *ENDPOINT_PROBLEMS,
        "webhook_url_invalid",
        "unknown_event_type",
        example={
            "url": "https://example.com/hooks/credits",
            "description": "billing",
            "event_types": ["balance.low", "top_up.issued"],
        },
    ),
    "list_webhook_endpoints": operation(
        *LIST_PROBLEMS, idempotent=False, query=w.WebhookEndpointQuery
    ),
    "get_webhook_endpoint": operation(*READ_PROBLEMS, idempotent=False),
    "rotate_webhook_secret": operation(*ENDPOINT_PROBLEMS),
    "disable_webhook_endpoint": operation(*ENDPOINT_PROBLEMS),
    "enable_webhook_endpoint": operation(*ENDPOINT_PROBLEMS),
    "list_webhook_deliveries": operation(
        *READ_PROBLEMS, idempotent=False, query=w.WebhookDeliveryQuery
    ),
    "replay_webhook": operation(
        *ENDPOINT_PROBLEMS,
        "webhook_endpoint_disabled",
        "replay_range_too_large",
        example={"event_id": EXAMPLE_ID},
    ),
    "list_events": operation(
        *LIST_PROBLEMS, "unknown_event_type", idempotent=False, query=w.EventQuery
    ),
    "get_event": operation(*READ_PROBLEMS, idempotent=False),
}
TAGS = ["webhooks"]


def endpoint_out(row: repo.Endpoint) -> w.WebhookEndpointOut:
    return w.WebhookEndpointOut(
        id=sid(row.id),
        url=row.url,
        description=row.description,
        event_types=row.event_types,
        customer_id=None if row.customer_id is None else sid(row.customer_id),
        enabled=row.enabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
        previous_secret_until=row.previous_secret_until,
    )


def _secret_out(row: repo.Endpoint, secret: str) -> w.WebhookEndpointSecretOut:
    shown = endpoint_out(row)
    fields = {f: getattr(shown, f) for f in shown.__struct_fields__}
    return w.WebhookEndpointSecretOut(**fields, secret=secret)


async def _endpoint(services: Services, principal: Principal, text: str) -> repo.Endpoint:
    """The endpoint, inside the key's boundary."""
    row = await WebhookEndpoints(services.control).get(parse_id(text, "endpoint_id"))
    own(principal, row.customer_id, "webhook endpoint")
    return row


@post(
    "/v1/webhook-endpoints",
    operation_class=OPS["create_webhook_endpoint"],
    dependencies=documented_body(w.WebhookEndpointIn),
    opt={"scopes": ADMIN},
    status_code=201,
    tags=TAGS,
    description="An endpoint that events are POSTed to, signed per Standard Webhooks "
    "(`webhook-id`, `webhook-timestamp`, `webhook-signature`). `event_types` empty: every "
    "type; `customer_id`: only that customer's events. The answer holds the signing `secret` "
    "(`whsec_...`), the one time it is shown. 422 `webhook_url_invalid` for a URL that is not "
    "absolute http(s), `unknown_event_type` for a type the service does not send. Audited.",
)
async def create_webhook_endpoint(
    request: Request[Any, Any, Any], state: State
) -> Response[w.WebhookEndpointSecretOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.WebhookEndpointIn)
    services = services_of(state)
    customer_id = id_or_none(data.customer_id, "customer_id")
    if principal.customer_id is not None:
        own(
            principal, customer_id if customer_id is not None else principal.customer_id, "customer"
        )
        customer_id = principal.customer_id
    made, replayed = await WebhookEndpoints(services.control).create(
        url=data.url,
        description=data.description,
        event_types=data.event_types,
        customer_id=customer_id,
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
    )
    return reply(_secret_out(made.endpoint, made.secret), replayed, 201)


@get(
    "/v1/webhook-endpoints",
    operation_class=OPS["list_webhook_endpoints"],
    opt={"scopes": ADMIN},
    tags=TAGS,
    description="Webhook endpoints, oldest first, a page at a time, filtered by `enabled` and "
    "`customer_id`. No secrets.",
)
async def list_webhook_endpoints(
    request: Request[Any, Any, Any], state: State
) -> w.WebhookEndpointPage:
    principal = principal_of(request)
    query = query_of(request, w.WebhookEndpointQuery)
    services = services_of(state)
    rows, cursor = await read_page(
        services,
        "webhook_endpoints",
        query,
        repo.list_endpoints,
        lambda: {
            "customer_id": customer_filter(principal, id_or_none(query.customer_id, "customer_id")),
            "enabled": query.enabled,
        },
    )
    return w.WebhookEndpointPage(items=[endpoint_out(r) for r in rows], next_cursor=cursor)


@get(
    "/v1/webhook-endpoints/{endpoint_id:str}",
    operation_class=OPS["get_webhook_endpoint"],
    opt={"scopes": ADMIN},
    tags=TAGS,
    description="A webhook endpoint (never its secret).",
)
async def get_webhook_endpoint(
    request: Request[Any, Any, Any], state: State, endpoint_id: FromPath[str]
) -> w.WebhookEndpointOut:
    row = await _endpoint(services_of(state), principal_of(request), endpoint_id)
    return endpoint_out(row)


@post(
    "/v1/webhook-endpoints/{endpoint_id:str}/rotate-secret",
    operation_class=OPS["rotate_webhook_secret"],
    opt={"scopes": ADMIN},
    status_code=200,
    tags=TAGS,
    description="A new signing secret, answered once. The one it replaces keeps signing, as a "
    "second signature in `webhook-signature`, until `previous_secret_until` (24 hours), so "
    "that receivers can switch without losing a delivery. Audited.",
)
async def rotate_webhook_secret(
    request: Request[Any, Any, Any], state: State, endpoint_id: FromPath[str]
) -> Response[w.WebhookEndpointSecretOut]:
    principal = principal_of(request)
    services = services_of(state)
    row = await _endpoint(services, principal, endpoint_id)
    rotated, replayed = await WebhookEndpoints(services.control).rotate_secret(
        row.id, actor=principal.name, tenant=principal.tenant, key=key_of(request)
    )
    return reply(_secret_out(rotated.endpoint, rotated.secret), replayed)


async def _set_enabled(
    request: Request[Any, Any, Any], state: State, endpoint_id: str, enabled: bool
) -> Response[w.WebhookEndpointOut]:
    principal = principal_of(request)
    services = services_of(state)
    row = await _endpoint(services, principal, endpoint_id)
    changed, replayed = await WebhookEndpoints(services.control).set_enabled(
        row.id, enabled, actor=principal.name, tenant=principal.tenant, key=key_of(request)
    )
    return reply(endpoint_out(changed), replayed)


@post(
    "/v1/webhook-endpoints/{endpoint_id:str}/disable",
    operation_class=OPS["disable_webhook_endpoint"],
    opt={"scopes": ADMIN},
    status_code=200,
    tags=TAGS,
    description="Stop sending to the endpoint: events that happen while it is disabled are "
    "not queued for it (replay them once it is enabled); pending deliveries wait. Audited.",
)
async def disable_webhook_endpoint(
    request: Request[Any, Any, Any], state: State, endpoint_id: FromPath[str]
) -> Response[w.WebhookEndpointOut]:
    return await _set_enabled(request, state, endpoint_id, False)


@post(
    "/v1/webhook-endpoints/{endpoint_id:str}/enable",
    operation_class=OPS["enable_webhook_endpoint"],
    opt={"scopes": ADMIN},
    status_code=200,
    tags=TAGS,
    description="Send to the endpoint again: its pending deliveries resume. Audited.",
)
async def enable_webhook_endpoint(
    request: Request[Any, Any, Any], state: State, endpoint_id: FromPath[str]
) -> Response[w.WebhookEndpointOut]:
    return await _set_enabled(request, state, endpoint_id, True)


@get(
    "/v1/webhook-endpoints/{endpoint_id:str}/deliveries",
    operation_class=OPS["list_webhook_deliveries"],
    opt={"scopes": ADMIN},
    tags=TAGS,
    description="The endpoint's delivery log, oldest first, a page at a time (filtered by "
    "`state` and `event_id`): each delivery with every attempt (time, status, duration, "
    "error, the first 1024 characters of the answer).",
)
async def list_webhook_deliveries(
    request: Request[Any, Any, Any], state: State, endpoint_id: FromPath[str]
) -> w.WebhookDeliveryPage:
    principal = principal_of(request)
    query = query_of(request, w.WebhookDeliveryQuery)
    services = services_of(state)
    row = await _endpoint(services, principal, endpoint_id)
    rows, cursor = await read_page(
        services,
        "webhook_deliveries",
        query,
        repo.list_deliveries,
        lambda: {
            "endpoint_id": row.id,
            "state": None if query.state is None else query.state.value,
            "event_id": id_or_none(query.event_id, "event_id"),
        },
    )
    async with services.pool.connection() as conn:
        logs = await repo.attempts_of(conn, [d.id for d in rows])
    items = [_delivery_out(d, logs[d.id]) for d in rows]
    return w.WebhookDeliveryPage(items=items, next_cursor=cursor)


def _delivery_out(d: repo.Delivery, log: list[repo.Attempt]) -> w.WebhookDeliveryOut:
    return w.WebhookDeliveryOut(
        id=sid(d.id),
        event_id=sid(d.event_id),
        endpoint_id=sid(d.endpoint_id),
        replay=d.replay,
        state=w.DeliveryState(d.state),
        attempts=d.attempts,
        next_attempt_at=d.next_attempt_at,
        last_status=d.last_status,
        last_error=d.last_error,
        created_at=d.created_at,
        finished_at=d.finished_at,
        attempt_log=[
            w.WebhookAttemptOut(
                attempt=a.attempt,
                at=a.at,
                status_code=a.status_code,
                duration_ms=a.duration_ms,
                error=a.error,
                response_excerpt=a.response_excerpt,
            )
            for a in log
        ],
    )


@post(
    "/v1/webhook-endpoints/{endpoint_id:str}/replay",
    operation_class=OPS["replay_webhook"],
    dependencies=documented_body(w.WebhookReplayIn),
    opt={"scopes": ADMIN},
    status_code=200,
    tags=TAGS,
    description="Deliver again, as new deliveries (the log keeps the earlier ones): one event "
    "(`event_id`), or every event the endpoint wants that occurred in [`from`, `to`). 409 "
    "`webhook_endpoint_disabled` when the endpoint is disabled; 422 `replay_range_too_large` "
    "past 31 days or 1000 events. The same `webhook-id` as before: receivers dedupe on it. "
    "Audited.",
)
async def replay_webhook(
    request: Request[Any, Any, Any], state: State, endpoint_id: FromPath[str]
) -> Response[w.WebhookReplayOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.WebhookReplayIn)
    services = services_of(state)
    row = await _endpoint(services, principal, endpoint_id)
    result, replayed = await WebhookEndpoints(services.control).replay(
        row.id,
        event_id=id_or_none(data.event_id, "event_id"),
        occurred_from=data.from_,
        occurred_to=data.to,
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
    )
    out = w.WebhookReplayOut(
        endpoint_id=sid(result.endpoint_id),
        deliveries=result.deliveries,
        event_ids=[sid(e) for e in result.event_ids],
    )
    return reply(out, replayed)


@get(
    "/v1/events",
    operation_class=OPS["list_events"],
    opt={"scopes": ADMIN},
    tags=TAGS,
    description="The outbox: every event, oldest first (by when it was written, then id), a "
    "page at a time, "
    "filtered by `type`, `wallet_id`, `customer_id` and when it occurred ([`from`, `to`)). "
    "Each item is the body its webhooks carry.",
)
async def list_events(request: Request[Any, Any, Any], state: State) -> w.EventPage:
    principal = principal_of(request)
    query = query_of(request, w.EventQuery)
    if query.type is not None:
        check_event_types([query.type], field="type")
    services = services_of(state)
    rows, cursor = await read_page(
        services,
        "events",
        query,
        repo.list_events,
        lambda: {
            "type_": query.type,
            "wallet_id": id_or_none(query.wallet_id, "wallet_id"),
            "customer_id": customer_filter(principal, id_or_none(query.customer_id, "customer_id")),
            "occurred_from": query.from_,
            "occurred_to": query.to,
        },
    )
    items = [_event_out(e) for e in rows]
    return w.EventPage(items=items, next_cursor=cursor)


@get(
    "/v1/events/{event_id:str}",
    operation_class=OPS["get_event"],
    opt={"scopes": ADMIN},
    tags=TAGS,
    description="One event of the outbox, as its webhooks carry it.",
)
async def get_event(
    request: Request[Any, Any, Any], state: State, event_id: FromPath[str]
) -> w.EventOut:
    principal = principal_of(request)
    services = services_of(state)
    async with services.pool.connection() as conn:
        event = await events.get_event(conn, parse_id(event_id, "event_id"))
    if event is None:
        raise NotFound("event not found")
    own(principal, event.customer_id, "event")
    return _event_out(event)


def _event_out(event: events.Event) -> w.EventOut:
    """The event as the API and its webhooks write it (wallets.webhooks.event_body)."""
    return w.EventOut(
        id=sid(event.id),
        type=event.type,
        created_at=event.created_at,
        occurred_at=event.occurred_at,
        customer_id=None if event.customer_id is None else sid(event.customer_id),
        wallet_id=None if event.wallet_id is None else sid(event.wallet_id),
        data=event.data,
    )


ROUTES = [
    create_webhook_endpoint,
    list_webhook_endpoints,
    get_webhook_endpoint,
    rotate_webhook_secret,
    disable_webhook_endpoint,
    enable_webhook_endpoint,
    list_webhook_deliveries,
    replay_webhook,
    list_events,
    get_event,
]
