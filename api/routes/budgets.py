"""Budgets: spending caps on a resource per period; their changes and removal."""

from __future__ import annotations

from typing import Any

from credit_ledger_client import schemas as w
from litestar import Request, Response, delete, get, patch, post
from litestar.datastructures import State
from litestar.params import FromPath

from api.auth import READ_SCOPES, Principal
from api.common import (
    code_of,
    ledger_of,
    own,
    parse_id,
    resource_customer,
    sid,
)
from api.openapi import COMMON, operation
from api.paging import customer_filter
from api.routes.shared import (
    ADMIN_PROBLEMS,
    EXAMPLE_ID,
    LIST_PROBLEMS,
    READ_PROBLEMS,
    documented_body,
    id_or_none,
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
from ledger.repositories import budgets
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
    "list_budgets": operation(*LIST_PROBLEMS, idempotent=False, query=w.BudgetQuery),
    "update_budget": operation(*ADMIN_PROBLEMS, example={"cap": 80000}),
    "remove_budget": operation(*COMMON, "validation_error", "idempotency_conflict", "not_found"),
}


# -- budgets --------------------------------------------------------------------------------------


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


def _budget_out(
    services: Services, budget: Budget, used: int | None, *, active: bool = True
) -> w.BudgetOut:
    return w.BudgetOut(
        id=sid(budget.id),
        resource_id=sid(budget.resource_id),
        credit_type=code_of(services, budget.ledger),
        period=budget.period.value,
        cap=budget.cap,
        used=used,
        headroom=None if used is None else budget.cap - used,
        active=active,
    )


def _cached(row: budgets.Budget) -> Budget:
    """A budget's row in the shape the cache (and `_budget_out`) knows."""
    return Budget(row.id, row.resource_id, row.credit_type_id, row.period, row.cap)


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
    used = await budget_used(services.service.ledger, budget, services.service.clock_ns())
    return _budget_out(services, budget, used)


@get(
    "/v1/budgets",
    operation_class=OPS["list_budgets"],
    opt={"scopes": READ_SCOPES},
    tags=["budgets"],
    description="Budgets, oldest first, a page at a time, with every filter given: "
    "`resource_id`, `credit_type`, `active` (true, the default: those in force; false: removed "
    "ones). No usage (GET /v1/budgets/{id} reads it from the ledger). A key bound to a "
    "customer lists only that customer's.",
)
async def list_budgets(request: Request[Any, Any, Any], state: State) -> w.BudgetPage:
    principal = principal_of(request)
    query = query_of(request, w.BudgetQuery)
    services = services_of(state)
    rows, cursor = await read_page(
        services,
        "budgets",
        query,
        budgets.list_budgets,
        lambda: {
            "resource_id": id_or_none(query.resource_id, "resource_id"),
            "customer_id": customer_filter(principal, None),
            "credit_type_id": ledger_filter(services, query.credit_type),
            "active": query.active,
        },
    )
    items = [_budget_out(services, _cached(row), None, active=row.active) for row in rows]
    return w.BudgetPage(items=items, next_cursor=cursor)


async def _budget_row(services: Services, principal: Principal, budget_id: str) -> budgets.Budget:
    """The budget as Postgres has it (removed ones too, so that a removal replays), inside the
    key's boundary."""
    bid = parse_id(budget_id, "budget_id")
    async with services.pool.connection() as conn:
        row = await budgets.get_budget(conn, bid)
    if row is None:
        raise NotFound("budget not found")
    own(principal, resource_customer(services, row.resource_id), "budget")
    return row


@patch(
    "/v1/budgets/{budget_id:str}",
    operation_class=OPS["update_budget"],
    dependencies=documented_body(w.BudgetPatchIn),
    opt={"scopes": {"admin"}},
    status_code=200,
    tags=["budgets"],
    description="Change a budget's cap. The current period's account on the ledger moves with "
    "it: a raise is credited at once; a cut is exact, or refused with 409 `conflict` (and its "
    "`used`) when the period has used more than the new cap, held reservations included: "
    "nothing changes then, and a cut to `used` stops further spending. Later periods open "
    "with the new cap. Audited; 404 once removed.",
)
async def update_budget(
    request: Request[Any, Any, Any], state: State, budget_id: FromPath[str]
) -> Response[w.BudgetOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.BudgetPatchIn)
    services = services_of(state)
    row = await _budget_row(services, principal, budget_id)
    budget, replayed = await services.control.update_budget(
        row.id, cap=data.cap, actor=principal.name, tenant=principal.tenant, key=key_of(request)
    )
    return reply(_budget_out(services, budget, None), replayed)


@delete(
    "/v1/budgets/{budget_id:str}",
    operation_class=OPS["remove_budget"],
    opt={"scopes": {"admin"}},
    status_code=200,
    tags=["budgets"],
    description="Remove a budget: it stops limiting new spends at once in this process, and "
    "in the others as soon as the change's notification reaches them (their caches drop it "
    "then). It stays listed with "
    "`active=false`; reservations made under it settle as they were made. Audited; needs an "
    "Idempotency-Key like every change (a replay answers the same, with Idempotency-Hit).",
)
async def remove_budget(
    request: Request[Any, Any, Any], state: State, budget_id: FromPath[str]
) -> Response[w.BudgetOut]:
    principal = principal_of(request)
    services = services_of(state)
    row = await _budget_row(services, principal, budget_id)
    budget, replayed = await services.control.remove_budget(
        row.id, actor=principal.name, tenant=principal.tenant, key=key_of(request)
    )
    return reply(_budget_out(services, budget, None, active=False), replayed)


ROUTES = [
    create_budget,
    get_budget,
    update_budget,
    remove_budget,
    list_budgets,
]
