"""The price catalog: a feature's price in credits per unit, with its history."""

from __future__ import annotations

from typing import Any

from credit_ledger_client import schemas as w
from litestar import Request, Response, get, post
from litestar.datastructures import State

from api.auth import READ_SCOPES
from api.common import code_of, ledger_of, sid
from api.openapi import operation
from api.routes.shared import (
    ADMIN_PROBLEMS,
    LIST_PROBLEMS,
    READ_PROBLEMS,
    documented_body,
    key_of,
    ledger_filter,
    principal_of,
    query_of,
    read_page,
    reply,
    services_of,
    strict_body,
)
from api.services import Services
from grants.errors import NotFound
from ledger.clock import datetime_of_ns
from ledger.repositories import prices
from ledger.repositories._rows import Keyset

OPS = {
    "set_price": operation(
        *ADMIN_PROBLEMS,
        example={
            "feature": "chat-tokens",
            "credit_type": "credits",
            "credits_per_unit": 2,
            "effective_at": "2027-01-01T00:00:00Z",
        },
    ),
    "list_prices": operation(*LIST_PROBLEMS, idempotent=False, query=w.PriceQuery),
    "current_price": operation(*READ_PROBLEMS, idempotent=False, query=w.PriceAtQuery),
}


@post(
    "/v1/prices",
    operation_class=OPS["set_price"],
    dependencies=documented_body(w.PriceIn),
    opt={"scopes": {"admin"}},
    status_code=201,
    tags=["prices"],
    description="A feature's price in credits per unit, so request paths may send usage "
    "quantities and prices change without a deploy. It takes effect at `effective_at` "
    "(default now; a time to come is allowed, a past one is 422); until then the price "
    "before it stays in force, and every price stays readable (GET /v1/prices). Two prices "
    "of a feature starting at the same instant are a 409 conflict.",
)
async def set_price(request: Request[Any, Any, Any], state: State) -> Response[w.PriceOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.PriceIn)
    if principal.customer_id is not None:
        raise NotFound("prices are set by unbound admin keys only")
    services = services_of(state)
    price, replayed = await services.control.set_price(
        feature=data.feature,
        ledger=ledger_of(services, data.credit_type),
        credits_per_unit=data.credits_per_unit,
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
        effective_at=data.effective_at,
    )
    return reply(_price_out(services, price), replayed, 201)


def _price_out(services: Services, price: prices.Price) -> w.PriceOut:
    return w.PriceOut(
        id=sid(price.id),
        feature=price.feature,
        credit_type=code_of(services, price.credit_type_id),
        credits_per_unit=price.credits_per_unit,
        effective_at=price.effective_at,
        created_at=price.created_at,
    )


@get(
    "/v1/prices",
    operation_class=OPS["list_prices"],
    opt={"scopes": READ_SCOPES},
    tags=["prices"],
    description="Prices in the order they take effect, a page at a time; with `feature` and "
    "`credit_type`, that price's history (past, current and scheduled). Prices are the "
    "product's, not a customer's: every key may read them.",
)
async def list_prices(request: Request[Any, Any, Any], state: State) -> w.PricePage:
    principal_of(request)
    query = query_of(request, w.PriceQuery)
    services = services_of(state)
    rows, cursor = await read_page(
        services,
        "prices",
        query,
        prices.list_prices,
        lambda: {
            "feature": query.feature,
            "credit_type_id": ledger_filter(services, query.credit_type),
        },
        _starts,
    )
    return w.PricePage(items=[_price_out(services, row) for row in rows], next_cursor=cursor)


def _starts(price: prices.Price) -> Keyset:
    return price.effective_at, price.id


@get(
    "/v1/prices/current",
    operation_class=OPS["current_price"],
    opt={"scopes": READ_SCOPES},
    tags=["prices"],
    description="The price of a feature in force now (or at `at`): what a usage is charged "
    "at that time. 404 when the feature has no price in force then.",
)
async def current_price(request: Request[Any, Any, Any], state: State) -> w.PriceOut:
    principal_of(request)
    query = query_of(request, w.PriceAtQuery)
    services = services_of(state)
    ledger = ledger_of(services, query.credit_type)
    at = query.at or datetime_of_ns(services.service.clock_ns())
    async with services.pool.connection() as conn:
        price = await prices.price_at(conn, query.feature, ledger, at)
    if price is None:
        raise NotFound(f"no price of {query.feature!r} in {query.credit_type!r} in force then")
    return _price_out(services, price)


ROUTES = [
    set_price,
    list_prices,
    current_price,
]
