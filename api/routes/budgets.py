"""Budgets and prices."""

from __future__ import annotations

import time
from typing import Any

from credit_ledger_client import schemas as w
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath

from api.auth import READ_SCOPES
from api.common import (
    code_of,
    ledger_of,
    own,
    parse_id,
    resource_customer,
    sid,
)
from api.openapi import operation
from api.routes.shared import (
    ADMIN_PROBLEMS,
    EXAMPLE_ID,
    READ_PROBLEMS,
    documented_body,
    key_of,
    principal_of,
    reply,
    services_of,
    strict_body,
)
from api.services import Services
from grants.errors import NotFound
from wallets.catalog import Budget, Period
from wallets.statements import budget_used

OPS = {
    "create_budget": operation(
        *ADMIN_PROBLEMS,
        example={
            "resource_id": EXAMPLE_ID,
            "credit_type": "credits",
            "period": "month",
            "cap": 50000,
        },
    ),
    "get_budget": operation(*READ_PROBLEMS, idempotent=False),
    "set_price": operation(
        *ADMIN_PROBLEMS,
        example={"feature": "chat-tokens", "credit_type": "credits", "credits_per_unit": 2},
    ),
}


# -- budgets and prices ---------------------------------------------------------------------------


@post(
    "/v1/budgets",
    operation_class=OPS["create_budget"],
    dependencies=documented_body(w.BudgetIn),
    opt={"scopes": {"admin"}},
    status_code=201,
    tags=["budgets"],
    description="A spending cap on a resource per period (day, week, month in UTC, or "
    "lifetime), enforced in the same engine request as every spend below it.",
)
async def create_budget(request: Request[Any, Any, Any], state: State) -> Response[w.BudgetOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.BudgetIn)
    services = services_of(state)
    resource_id = parse_id(data.resource_id, "resource_id")
    own(principal, resource_customer(services, resource_id), "resource")
    budget, replayed = await services.control.create_budget(
        resource_id=resource_id,
        ledger=ledger_of(services, data.credit_type),
        period=Period(data.period.value),
        cap=data.cap,
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
    )
    return reply(_budget_out(services, budget, None), replayed, 201)


def _budget_out(services: Services, budget: Budget, used: int | None) -> w.BudgetOut:
    return w.BudgetOut(
        id=sid(budget.id),
        resource_id=sid(budget.resource_id),
        credit_type=code_of(services, budget.ledger),
        period=budget.period.value,
        cap=budget.cap,
        used=used,
        headroom=None if used is None else budget.cap - used,
    )


@get(
    "/v1/budgets/{budget_id:str}",
    operation_class=OPS["get_budget"],
    opt={"scopes": READ_SCOPES},
    tags=["budgets"],
    description="A budget with its usage and headroom in the current period.",
)
async def get_budget(
    request: Request[Any, Any, Any], state: State, budget_id: FromPath[str]
) -> w.BudgetOut:
    principal = principal_of(request)
    services = services_of(state)
    budget = services.catalog.budgets.get(parse_id(budget_id, "budget_id"))
    if budget is None:
        raise NotFound("budget not found")
    own(principal, resource_customer(services, budget.resource_id), "budget")
    used = await budget_used(services.service.ledger, budget, time.time_ns())
    return _budget_out(services, budget, used)


@post(
    "/v1/prices",
    operation_class=OPS["set_price"],
    dependencies=documented_body(w.PriceIn),
    opt={"scopes": {"admin"}},
    status_code=201,
    tags=["budgets"],
    description="A feature's price in credits per unit, so request paths may send usage "
    "quantities and prices change without a deploy.",
)
async def set_price(request: Request[Any, Any, Any], state: State) -> Response[w.PriceOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.PriceIn)
    if principal.customer_id is not None:
        raise NotFound("prices are set by unbound admin keys only")
    services = services_of(state)
    _, replayed = await services.control.set_price(
        feature=data.feature,
        ledger=ledger_of(services, data.credit_type),
        credits_per_unit=data.credits_per_unit,
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
    )
    body = w.PriceOut(
        feature=data.feature, credit_type=data.credit_type, credits_per_unit=data.credits_per_unit
    )
    return reply(body, replayed, 201)


ROUTES = [
    create_budget,
    get_budget,
    set_price,
]
