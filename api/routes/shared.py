"""What every route module shares: the services and principal of a request, the strict body, the
Idempotency-Key, replies, the guard, and the problems each kind of route documents.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from credit_ledger_client import schemas as w
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler

from api.auth import Principal, require_any_scope
from api.common import decode_strict, idempotency_key, parse_id, require_json, sid
from api.errors import IDEMPOTENCY_HIT
from api.openapi import COMMON, WRITE
from api.paging import NothingVisible, decode_query, keyset_after, next_cursor
from api.services import Services
from api.spending import Reply
from ledger.repositories._rows import Keyset

HIT = IDEMPOTENCY_HIT
T = TypeVar("T")
B = TypeVar("B")
R = TypeVar("R")


# -- helpers --------------------------------------------------------------------------------------


def services_of(state: State) -> Services:
    services: Services = state.services
    return services


def principal_of(request: Request[Any, Any, Any]) -> Principal:
    """Who is asking: the app's guard (`authorize`) has authenticated the key and checked the
    route's scopes, declared once in the route's `opt`, before the body was read."""
    principal: Principal | None = request.scope.get("principal")  # type: ignore[assignment]
    assert principal is not None, "every /v1 route declares opt={'scopes': ...}"
    return principal


async def strict_body(request: Request[Any, Any, Any], cls: type[T]) -> T:
    """The body decoded strictly: litestar coerces ("1" becomes 1); the contract does not."""
    return decode_strict(await json_body(request), cls)


async def json_body(request: Request[Any, Any, Any]) -> bytes:
    """The raw body, which must say it is JSON when there is one (415 otherwise)."""
    body = await request.body()
    require_json(request.headers.get("content-type"), body)
    return body


def key_of(request: Request[Any, Any, Any]) -> str:
    return idempotency_key(request.headers.get("idempotency-key"))


def query_of(request: Request[Any, Any, Any], cls: type[T]) -> T:
    """The query string decoded strictly as `cls` (api.paging.decode_query)."""
    return decode_query(request.query_params.multi_items(), cls)


async def read_page(
    services: Services,
    kind: str,
    query: w.ListQuery,
    fetch: Callable[..., Awaitable[tuple[list[R], bool]]],
    filters: Callable[[], dict[str, Any]],
    position: Callable[[R], Keyset] | None = None,
) -> tuple[list[R], str | None]:
    """One page of a Postgres list: `fetch(conn, **filters(), after=..., limit=...)`, a
    repository's list, reads the rows after the cursor's position; the answer is the rows and
    the next cursor (None after the last page). `position` is where a row stands in the order,
    (created_at, id) unless given. A filter outside the key's boundary (`NothingVisible`)
    finds nothing."""
    after = keyset_after(query.cursor, kind)
    try:
        named = filters()
    except NothingVisible:
        return [], None
    async with services.pool.connection() as conn:
        rows, more = await fetch(conn, **named, after=after, limit=query.limit)
    where = position or created
    return rows, next_cursor(kind, where(rows[-1]) if rows else None, more)


def id_or_none(text: str | None, field: str) -> int | None:
    """An optional wire id (a filter) as its u128."""
    return None if text is None else parse_id(text, field)


def ledger_filter(services: Services, code: str | None) -> int | None:
    """A list's `credit_type` filter as its ledger; a code no credit type has finds nothing."""
    if code is None:
        return None
    ledger = services.catalog.ledger_of_code(code)
    if ledger is None:
        raise NothingVisible
    return ledger


def created(row: Any) -> Keyset:
    """The position of a catalog row in its list: (created_at, id)."""
    return row.created_at, row.id


def reply(body: B, replayed: bool, status: int = 200) -> Response[B]:
    return Response(body, status_code=status, headers=HIT if replayed else None)


def send(answer: Reply) -> Response[Any]:
    return reply(answer.body, answer.replayed, answer.status)


# -- OpenAPI: each route's problems, Idempotency-Key, an example body ----------------------------

EXAMPLE_ID = "0190c3a1-7f3e-7a41-9a6e-1d2c3b4a5f60"
EXAMPLE_SPEND = {
    "resource_id": EXAMPLE_ID,
    "credit_type": "credits",
    "amount": 300,
    "dimensions": {"feature": "chat", "model": "small"},
}
READ_PROBLEMS = (*COMMON, "validation_error", "not_found", "ledger_unavailable")
SPENDING_PROBLEMS = (*COMMON, *WRITE, "not_found", "insufficient_credits", "budget_exceeded")
RESERVATION_PROBLEMS = (
    "reservation_expired",
    "reservation_already_settled",
    "reservation_already_released",
)
ADMIN_PROBLEMS = (*COMMON, *WRITE, "conflict", "not_found")
# A list from Postgres: a bad parameter or cursor is 422; a filter matching nothing is an empty
# page, never a 404.
LIST_PROBLEMS = (*COMMON, "validation_error")


async def authorize(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """The app's guard: authenticates and checks the route's scopes (its `opt["scopes"]`)
    before the body is read, so a caller without a valid key gets 401/403, not 422. Async on
    purpose: litestar runs a sync guard in a worker thread."""
    scopes = handler.opt.get("scopes")
    if scopes is None:
        return  # health, metrics and the schema are open
    services: Services = connection.app.state.services
    principal = services.keys.authenticate(connection.headers.get("authorization"))
    require_any_scope(principal, scopes)
    connection.scope["principal"] = principal  # type: ignore[typeddict-unknown-key]


# A handler decodes its body once, strictly, with `decode_strict`: a handler with a `data`
# parameter would have litestar decode it first, leniently ("1" becomes 1), and answer some bad
# bodies in its own words. `documented_body` keeps the body in the OpenAPI document.


def documented_body(cls: type[Any]) -> dict[str, Provide]:
    """Documents `cls` as the route's request body without litestar decoding it: litestar's
    OpenAPI takes the body from a declared dependency's `data` parameter; no handler asks for
    this dependency, so it is never resolved."""

    def body(data: Any) -> None:
        raise AssertionError("documentation only")

    body.__annotations__ = {"data": cls, "return": None}
    return {"documented_body": Provide(body, sync_to_thread=False)}


def grant_balance_out(g: Any) -> w.GrantBalanceOut:
    return w.GrantBalanceOut(
        grant_id=sid(g.grant_id),
        state=w.GrantState(g.state),
        granted=g.granted,
        available=g.available,
        upcoming=g.upcoming,
        held=g.held,
        consumed=g.consumed,
        expired=g.expired,
        voided=g.voided,
        refunded=g.refunded,
        repaid=g.repaid,
        rolled_over=g.rolled_over,
    )
