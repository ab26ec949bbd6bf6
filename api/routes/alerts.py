"""Alerts: thresholds on wallets and budgets, a wallet's automatic top-up rule and its top-ups
(wallets/alerts.py derives the events from the projection; webhooks deliver them)."""

from __future__ import annotations

from typing import Any

from credit_ledger_client import schemas as w
from litestar import Request, Response, delete, get, post, put
from litestar.datastructures import State
from litestar.params import FromPath

from api.auth import Principal
from api.common import own, parse_id, resource_customer, sid, wallet_customer
from api.openapi import COMMON, operation
from api.routes.shared import (
    ADMIN_PROBLEMS,
    LIST_PROBLEMS,
    READ_PROBLEMS,
    documented_body,
    key_of,
    principal_of,
    query_of,
    read_page,
    reply,
    services_of,
    strict_body,
)
from api.services import Services
from grants.errors import InvalidRequest, NotFound
from ledger.repositories import alerts as alert_rows
from wallets import alerts

ADMIN = {"admin"}
THRESHOLD_PROBLEMS = (*ADMIN_PROBLEMS, "too_many_thresholds")
REMOVE_PROBLEMS = (*COMMON, "validation_error", "idempotency_conflict", "not_found")
OPS = {
    "create_wallet_threshold": operation(*THRESHOLD_PROBLEMS, example={"amount": 1000}),
    "list_wallet_thresholds": operation(*READ_PROBLEMS, idempotent=False),
    "remove_wallet_threshold": operation(*REMOVE_PROBLEMS),
    "create_budget_threshold": operation(*THRESHOLD_PROBLEMS, example={"percent": 80}),
    "list_budget_thresholds": operation(*READ_PROBLEMS, idempotent=False),
    "remove_budget_threshold": operation(*REMOVE_PROBLEMS),
    "set_top_up_rule": operation(
        *ADMIN_PROBLEMS,
        example={
            "threshold": 1000,
            "amount": 10000,
            "consideration_minor": 1000,
            "currency": "USD",
            "daily_max": 3,
        },
    ),
    "get_top_up_rule": operation(*READ_PROBLEMS, idempotent=False),
    "remove_top_up_rule": operation(*REMOVE_PROBLEMS),
    "list_top_ups": operation(*LIST_PROBLEMS, "not_found", idempotent=False, query=w.ListQuery),
}


def _wallet(services: Services, principal: Principal, wallet_id: str) -> int:
    wid = parse_id(wallet_id, "wallet_id")
    if wid not in services.catalog.wallets:
        raise NotFound("wallet not found")
    own(principal, wallet_customer(services, wid), "wallet")
    return wid


def _budget(services: Services, principal: Principal, budget_id: str) -> int:
    bid = parse_id(budget_id, "budget_id")
    budget = services.catalog.budgets.get(bid)
    if budget is None:
        raise NotFound("budget not found")
    own(principal, resource_customer(services, budget.resource_id), "budget")
    return bid


def _threshold_out(view: alerts.ThresholdView) -> w.ThresholdOut:
    return w.ThresholdOut(
        id=sid(view.id),
        wallet_id=None if view.wallet_id is None else sid(view.wallet_id),
        budget_id=None if view.budget_id is None else sid(view.budget_id),
        amount=view.amount,
        percent_of_allocation=view.percent if view.wallet_id is not None else None,
        percent=view.percent if view.budget_id is not None else None,
        created_at=view.created_at,
    )


# -- thresholds -----------------------------------------------------------------------------------


@post(
    "/v1/wallets/{wallet_id:str}/thresholds",
    operation_class=OPS["create_wallet_threshold"],
    dependencies=documented_body(w.WalletThresholdIn),
    opt={"scopes": ADMIN},
    status_code=201,
    tags=["alerts"],
    description="A threshold on a wallet's available credits: `balance.low` fires once each "
    "time they fall below it (not once per spend below it), and again after they came back "
    "to it or above. Give `amount` (credits) or `percent_of_allocation` (of the wallet's last "
    "plan allocation; inactive while it has none). At most 16 per wallet "
    "(409 `too_many_thresholds`). Audited.",
)
async def create_wallet_threshold(
    request: Request[Any, Any, Any], state: State, wallet_id: FromPath[str]
) -> Response[w.ThresholdOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.WalletThresholdIn)
    services = services_of(state)
    wid = _wallet(services, principal, wallet_id)
    if (data.amount is None) == (data.percent_of_allocation is None):
        raise InvalidRequest(
            "give either amount or percent_of_allocation", field="percent_of_allocation"
        )
    view, replayed = await alerts.create_threshold(
        services.control,
        wallet_id=wid,
        amount=data.amount,
        percent=data.percent_of_allocation,
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
    )
    return reply(_threshold_out(view), replayed, 201)


@get(
    "/v1/wallets/{wallet_id:str}/thresholds",
    operation_class=OPS["list_wallet_thresholds"],
    opt={"scopes": ADMIN},
    tags=["alerts"],
    description="The wallet's thresholds in force, oldest first.",
)
async def list_wallet_thresholds(
    request: Request[Any, Any, Any], state: State, wallet_id: FromPath[str]
) -> w.ThresholdList:
    services = services_of(state)
    wid = _wallet(services, principal_of(request), wallet_id)
    views = await alerts.list_thresholds(services.control, wallet_id=wid)
    return w.ThresholdList(items=[_threshold_out(v) for v in views])


@delete(
    "/v1/wallets/{wallet_id:str}/thresholds/{threshold_id:str}",
    operation_class=OPS["remove_wallet_threshold"],
    opt={"scopes": ADMIN},
    status_code=200,
    tags=["alerts"],
    description="Remove a wallet's threshold: it fires no more. Audited; needs an Idempotency-Key.",
)
async def remove_wallet_threshold(
    request: Request[Any, Any, Any],
    state: State,
    wallet_id: FromPath[str],
    threshold_id: FromPath[str],
) -> Response[w.ThresholdOut]:
    principal = principal_of(request)
    services = services_of(state)
    wid = _wallet(services, principal, wallet_id)
    view, replayed = await alerts.remove_threshold(
        services.control,
        parse_id(threshold_id, "threshold_id"),
        wallet_id=wid,
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
    )
    return reply(_threshold_out(view), replayed)


@post(
    "/v1/budgets/{budget_id:str}/thresholds",
    operation_class=OPS["create_budget_threshold"],
    dependencies=documented_body(w.BudgetThresholdIn),
    opt={"scopes": ADMIN},
    status_code=201,
    tags=["alerts"],
    description="A threshold on a budget: `budget.threshold_reached` fires once per period "
    "when its usage reaches `percent` of the cap (again only if usage went back below it, a "
    "released reservation say). `budget.exceeded` needs no threshold: it fires when a "
    "period's cap is used up. At most 16 per budget. Audited.",
)
async def create_budget_threshold(
    request: Request[Any, Any, Any], state: State, budget_id: FromPath[str]
) -> Response[w.ThresholdOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.BudgetThresholdIn)
    services = services_of(state)
    bid = _budget(services, principal, budget_id)
    view, replayed = await alerts.create_threshold(
        services.control,
        budget_id=bid,
        percent=data.percent,
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
    )
    return reply(_threshold_out(view), replayed, 201)


@get(
    "/v1/budgets/{budget_id:str}/thresholds",
    operation_class=OPS["list_budget_thresholds"],
    opt={"scopes": ADMIN},
    tags=["alerts"],
    description="The budget's thresholds in force, oldest first.",
)
async def list_budget_thresholds(
    request: Request[Any, Any, Any], state: State, budget_id: FromPath[str]
) -> w.ThresholdList:
    services = services_of(state)
    bid = _budget(services, principal_of(request), budget_id)
    views = await alerts.list_thresholds(services.control, budget_id=bid)
    return w.ThresholdList(items=[_threshold_out(v) for v in views])


@delete(
    "/v1/budgets/{budget_id:str}/thresholds/{threshold_id:str}",
    operation_class=OPS["remove_budget_threshold"],
    opt={"scopes": ADMIN},
    status_code=200,
    tags=["alerts"],
    description="Remove a budget's threshold. Audited; needs an Idempotency-Key.",
)
async def remove_budget_threshold(
    request: Request[Any, Any, Any],
    state: State,
    budget_id: FromPath[str],
    threshold_id: FromPath[str],
) -> Response[w.ThresholdOut]:
    principal = principal_of(request)
    services = services_of(state)
    bid = _budget(services, principal, budget_id)
    view, replayed = await alerts.remove_threshold(
        services.control,
        parse_id(threshold_id, "threshold_id"),
        budget_id=bid,
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
    )
    return reply(_threshold_out(view), replayed)


# -- automatic top-ups ----------------------------------------------------------------------------


def _rule_out(view: alerts.RuleView) -> w.TopUpRuleOut:
    return w.TopUpRuleOut(
        wallet_id=sid(view.wallet_id),
        threshold=view.threshold,
        amount=view.amount,
        consideration_minor=view.consideration_minor,
        currency=view.currency,
        priority=view.priority,
        expires_in_days=view.expires_in_days,
        daily_max=view.daily_max,
        enabled=view.enabled,
        updated_at=view.updated_at,
    )


@put(
    "/v1/wallets/{wallet_id:str}/top-up",
    operation_class=OPS["set_top_up_rule"],
    dependencies=documented_body(w.TopUpRuleIn),
    opt={"scopes": ADMIN},
    status_code=200,
    tags=["alerts"],
    description="Set the wallet's automatic top-up rule: when its available credits fall "
    "below `threshold`, a paid grant of `amount` credits for `consideration_minor` of "
    "`currency` is issued (source `purchase`, actor `top-up`) and `top_up.issued` is sent so "
    "that the application collects the payment. Once per crossing (a burst of spends across "
    "the line is one crossing), at most `daily_max` a UTC day (a crossing past it is recorded "
    "`capped`, without a grant). Replaces the previous rule. Audited.",
)
async def set_top_up_rule(
    request: Request[Any, Any, Any], state: State, wallet_id: FromPath[str]
) -> Response[w.TopUpRuleOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.TopUpRuleIn)
    services = services_of(state)
    wid = _wallet(services, principal, wallet_id)
    view, replayed = await alerts.set_top_up_rule(
        services.control,
        wid,
        threshold=data.threshold,
        amount=data.amount,
        consideration_minor=data.consideration_minor,
        currency=data.currency,
        priority=data.priority,
        expires_in_days=data.expires_in_days,
        daily_max=data.daily_max,
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
    )
    return reply(_rule_out(view), replayed)


@get(
    "/v1/wallets/{wallet_id:str}/top-up",
    operation_class=OPS["get_top_up_rule"],
    opt={"scopes": ADMIN},
    tags=["alerts"],
    description="The wallet's automatic top-up rule (404 when it has none).",
)
async def get_top_up_rule(
    request: Request[Any, Any, Any], state: State, wallet_id: FromPath[str]
) -> w.TopUpRuleOut:
    services = services_of(state)
    wid = _wallet(services, principal_of(request), wallet_id)
    return _rule_out(await alerts.get_top_up_rule(services.control, wid))


@delete(
    "/v1/wallets/{wallet_id:str}/top-up",
    operation_class=OPS["remove_top_up_rule"],
    opt={"scopes": ADMIN},
    status_code=200,
    tags=["alerts"],
    description="Remove the wallet's top-up rule (a top-up already pending is still issued). "
    "Audited; needs an Idempotency-Key.",
)
async def remove_top_up_rule(
    request: Request[Any, Any, Any], state: State, wallet_id: FromPath[str]
) -> Response[w.TopUpRuleOut]:
    principal = principal_of(request)
    services = services_of(state)
    wid = _wallet(services, principal, wallet_id)
    view, replayed = await alerts.remove_top_up_rule(
        services.control, wid, actor=principal.name, tenant=principal.tenant, key=key_of(request)
    )
    return reply(_rule_out(view), replayed)


def _top_up_out(row: alert_rows.TopUp) -> w.TopUpOut:
    return w.TopUpOut(
        id=sid(row.id),
        wallet_id=sid(row.wallet_id),
        crossing=row.crossing,
        state=row.state,
        threshold=row.threshold,
        amount=row.amount,
        consideration_minor=row.consideration_minor,
        currency=row.currency,
        grant_id=None if row.grant_id is None else sid(row.grant_id),
        crossed_at=row.crossed_at,
        expires_at=row.expires_at,
        issued_at=row.issued_at,
        refusal=row.refusal,
    )


@get(
    "/v1/wallets/{wallet_id:str}/top-ups",
    operation_class=OPS["list_top_ups"],
    opt={"scopes": ADMIN},
    tags=["alerts"],
    description="The wallet's automatic top-ups, oldest first, a page at a time: `pending` "
    "(its grant being issued), `issued` (with its grant), `capped` (past the day's maximum), "
    "`refused` (its grant was refused: `refusal` says why).",
)
async def list_top_ups(
    request: Request[Any, Any, Any], state: State, wallet_id: FromPath[str]
) -> w.TopUpPage:
    principal = principal_of(request)
    query = query_of(request, w.ListQuery)
    services = services_of(state)
    wid = _wallet(services, principal, wallet_id)
    rows, cursor = await read_page(
        services, "top_ups", query, alert_rows.list_top_ups, lambda: {"wallet_id": wid}
    )
    return w.TopUpPage(items=[_top_up_out(r) for r in rows], next_cursor=cursor)


ROUTES = [
    create_wallet_threshold,
    list_wallet_thresholds,
    remove_wallet_threshold,
    create_budget_threshold,
    list_budget_thresholds,
    remove_budget_threshold,
    set_top_up_rule,
    get_top_up_rule,
    remove_top_up_rule,
    list_top_ups,
]
