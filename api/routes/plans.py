"""Plans (recurring allocations) and subscriptions of resources to them: create and read plans;
subscribe, change plan, pause, resume, cancel. The allocations themselves are issued by the
jobs' `plan-allocations` tick (and, on a sandbox, by each advance of the test clock)."""

from __future__ import annotations

from typing import Any

from credit_ledger_client import schemas as w
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath

from api.auth import READ_SCOPES, Principal
from api.common import code_of, own, parse_id, resource_customer, sid
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
    principal_of,
    query_of,
    read_page,
    reply,
    services_of,
    strict_body,
)
from api.services import Services
from grants.errors import NotFound
from grants.model import Category
from ledger.repositories.plans import Allocation, PlanRule
from wallets.plan_periods import PeriodUnit
from wallets.plans import (
    PlanView,
    RolloverSpec,
    RuleSpec,
    SubscriptionView,
    list_plan_views,
    list_subscription_views,
)

_CHANGE_PROBLEMS = (*ADMIN_PROBLEMS, "subscription_cancelled", "already_subscribed")
_NO_BODY_PROBLEMS = (*COMMON, "validation_error", "idempotency_conflict", "conflict", "not_found",
                     "subscription_cancelled", "ledger_unavailable")  # fmt: skip
OPS = {
    "create_plan": operation(
        *ADMIN_PROBLEMS,
        example={
            "code": "pro",
            "name": "Pro",
            "prorate": True,
            "allocations": [
                {
                    "credit_type": "credits",
                    "amount": 100000,
                    "period": "month",
                    "category": "paid",
                    "consideration_minor": 2000,
                    "currency": "USD",
                    "rollover": {"max_credits": 50000},
                }
            ],
        },
    ),
    "get_plan": operation(*READ_PROBLEMS, idempotent=False),
    "list_plans": operation(*LIST_PROBLEMS, idempotent=False, query=w.PlanQuery),
    "subscribe": operation(
        *ADMIN_PROBLEMS,
        "already_subscribed",
        example={
            "resource_id": EXAMPLE_ID,
            "plan_id": EXAMPLE_ID,
            "start": "2025-01-31T00:00:00Z",
        },
    ),
    "get_subscription": operation(*READ_PROBLEMS, idempotent=False),
    "list_subscriptions": operation(*LIST_PROBLEMS, idempotent=False, query=w.SubscriptionQuery),
    "change_plan": operation(*_CHANGE_PROBLEMS, example={"plan_id": EXAMPLE_ID}),
    "pause_subscription": operation(*_NO_BODY_PROBLEMS),
    "resume_subscription": operation(*_NO_BODY_PROBLEMS),
    "cancel_subscription": operation(*_NO_BODY_PROBLEMS),
}


# -- plans ----------------------------------------------------------------------------------------


def _rule_spec(services: Services, i: int, a: w.PlanAllocationIn) -> RuleSpec:
    ledger = services.catalog.ledger_of_code(a.credit_type)
    if ledger is None:
        raise NotFound(
            f"credit type {a.credit_type!r} not found", field=f"allocations[{i}].credit_type"
        )
    rollover = a.rollover
    return RuleSpec(
        ledger=ledger,
        amount=a.amount,
        period_unit=PeriodUnit(a.period.value),
        period_count=a.period_count,
        category=Category(a.category.value),
        consideration_minor=a.consideration_minor,
        currency=a.currency,
        priority=a.priority,
        expiry_periods=a.expiry_periods,
        rollover=None
        if rollover is None
        else RolloverSpec(min_credits=rollover.min_credits, max_credits=rollover.max_credits),
    )


def _rule_out(services: Services, r: PlanRule) -> w.PlanAllocationOut:
    rollover = None
    if r.rollover_max is not None:
        rollover = w.PlanRolloverOut(min_credits=r.rollover_min or 0, max_credits=r.rollover_max)
    return w.PlanAllocationOut(
        id=sid(r.id),
        credit_type=code_of(services, r.credit_type_id),
        amount=r.amount,
        period=w.PlanPeriod(r.period_unit),
        period_count=r.period_count,
        category=w.Category(r.category.value),
        consideration_minor=r.consideration_minor,
        currency=r.currency,
        priority=r.priority,
        expiry_periods=r.expiry_periods,
        rollover=rollover,
    )


def _plan_out(services: Services, view: PlanView) -> w.PlanOut:
    p = view.plan
    return w.PlanOut(
        id=sid(p.id),
        code=p.code,
        name=p.name,
        prorate=p.prorate,
        allocations=[_rule_out(services, r) for r in view.rules],
        created_at=p.created_at,
    )


@post(
    "/v1/plans",
    operation_class=OPS["create_plan"],
    dependencies=documented_body(w.PlanIn),
    opt={"scopes": {"admin"}},
    status_code=201,
    tags=["plans"],
    description="A plan: per credit type, `amount` credits every `period_count` `period`s "
    "(day, week, month, year), anchored on each subscription's start (a start on the 31st "
    "renews on the last day of shorter months), paid (with `currency` and the cost of one "
    "allocation, `consideration_minor`) or promotional, with a priority, an expiry of "
    "`expiry_periods` periods (1: the end of its period) and a rollover policy "
    "(carried = min(max_credits, max(min_credits, remaining))). `prorate` decides how a change "
    "of plan to this one in the middle of a period counts. Plans never change once created. "
    "422 for a paid allocation without currency, two allocations of one credit type, an "
    "unknown period; 404 for an unknown credit type; 409 for a code in use. Audited.",
)
async def create_plan(request: Request[Any, Any, Any], state: State) -> Response[w.PlanOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.PlanIn)
    services = services_of(state)
    rules = [_rule_spec(services, i, a) for i, a in enumerate(data.allocations)]
    view, replayed = await services.plans.create_plan(
        code=data.code,
        name=data.name,
        prorate=data.prorate,
        rules=rules,
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
    )
    return reply(_plan_out(services, view), replayed, 201)


@get(
    "/v1/plans/{plan_id:str}",
    operation_class=OPS["get_plan"],
    opt={"scopes": READ_SCOPES},
    tags=["plans"],
    description="A plan and its allocation rules.",
)
async def get_plan(state: State, plan_id: FromPath[str]) -> w.PlanOut:
    services = services_of(state)
    return _plan_out(services, await services.plans.get_plan(parse_id(plan_id, "plan_id")))


@get(
    "/v1/plans",
    operation_class=OPS["list_plans"],
    opt={"scopes": READ_SCOPES},
    tags=["plans"],
    description="Plans, oldest first, a page at a time.",
)
async def list_plans(request: Request[Any, Any, Any], state: State) -> w.PlanPage:
    query = query_of(request, w.PlanQuery)
    services = services_of(state)
    views, cursor = await read_page(
        services,
        "plans",
        query,
        list_plan_views,
        dict,
        lambda v: (v.plan.created_at, v.plan.id),
    )
    return w.PlanPage(items=[_plan_out(services, v) for v in views], next_cursor=cursor)


# -- subscriptions --------------------------------------------------------------------------------


def _allocation_out(services: Services, a: Allocation) -> w.AllocationOut:
    return w.AllocationOut(
        id=sid(a.id),
        credit_type=code_of(services, a.credit_type_id),
        plan_allocation_id=sid(a.rule_id),
        kind=a.kind,
        period_index=a.period_index,
        seq=a.seq,
        period_start=a.period_start,
        period_end=a.period_end,
        effective_at=a.effective_at,
        expires_at=a.expires_at,
        amount=a.amount,
        grant_id=None if a.grant_id is None else sid(a.grant_id),
        voided=a.voided,
        void_grant_id=None if a.void_grant_id is None else sid(a.void_grant_id),
        state=a.state,
    )


def _subscription_out(services: Services, view: SubscriptionView) -> w.SubscriptionOut:
    s = view.subscription
    return w.SubscriptionOut(
        id=sid(s.id),
        resource_id=sid(s.resource_id),
        plan_id=sid(s.plan_id),
        state=w.SubscriptionState(s.state),
        start=s.anchor_at,
        created_at=s.created_at,
        paused_at=s.paused_at,
        cancelled_at=s.cancelled_at,
        next_allocation_at=s.next_due_at if s.state == "active" else None,
        allocations=[_allocation_out(services, a) for a in view.allocations],
    )


async def _own_subscription(services: Services, principal: Principal, text: str) -> int:
    """The subscription's id, inside the key's boundary (404 outside it)."""
    view = await services.plans.get_subscription(parse_id(text, "subscription_id"))
    own(principal, resource_customer(services, view.subscription.resource_id), "subscription")
    return view.subscription.id


@post(
    "/v1/subscriptions",
    operation_class=OPS["subscribe"],
    dependencies=documented_body(w.SubscriptionIn),
    opt={"scopes": {"admin"}},
    status_code=201,
    tags=["plans"],
    description="Subscribe a resource to a plan from `start` (default now; it anchors every "
    "period). The resource gets a wallet (hard limit) for each credit type of the plan it has "
    "none for. The periods already started are allocated before the answer, at most 1000 of "
    "them (a start in the past allocates each of them, with its own dates; further behind, "
    "the jobs' tick issues the rest, `next_allocation_at` says where it stands); later ones "
    "by the jobs' tick, within 30 s of their start. A resource has at most one live (active "
    "or paused) subscription of a plan: a second is 409 already_subscribed with the live "
    "one's `subscription_id` (cancel it first, or change its plan). Audited.",
)
async def subscribe(request: Request[Any, Any, Any], state: State) -> Response[w.SubscriptionOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.SubscriptionIn)
    services = services_of(state)
    resource_id = parse_id(data.resource_id, "resource_id")
    own(principal, resource_customer(services, resource_id), "resource")
    view, replayed = await services.plans.subscribe(
        resource_id=resource_id,
        plan_id=parse_id(data.plan_id, "plan_id"),
        start=data.start,
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
    )
    return reply(_subscription_out(services, view), replayed, 201)


@get(
    "/v1/subscriptions/{subscription_id:str}",
    operation_class=OPS["get_subscription"],
    opt={"scopes": READ_SCOPES},
    tags=["plans"],
    description="A subscription with its latest allocations (at most 100): each period's "
    "own, and the adjustments of changes of plan.",
)
async def get_subscription(
    request: Request[Any, Any, Any], state: State, subscription_id: FromPath[str]
) -> w.SubscriptionOut:
    principal = principal_of(request)
    services = services_of(state)
    sub_id = await _own_subscription(services, principal, subscription_id)
    return _subscription_out(services, await services.plans.get_subscription(sub_id))


@get(
    "/v1/subscriptions",
    operation_class=OPS["list_subscriptions"],
    opt={"scopes": READ_SCOPES},
    tags=["plans"],
    description="Subscriptions, oldest first, a page at a time, with every filter given: "
    "`resource_id`, `plan_id`, `state` (active, paused, cancelled). Without their allocations "
    "(`allocations` is empty: GET /v1/subscriptions/{id} reads them). A key bound to a "
    "customer lists only that customer's.",
)
async def list_subscriptions(request: Request[Any, Any, Any], state: State) -> w.SubscriptionPage:
    principal = principal_of(request)
    query = query_of(request, w.SubscriptionQuery)
    services = services_of(state)
    views, cursor = await read_page(
        services,
        "subscriptions",
        query,
        list_subscription_views,
        lambda: {
            "resource_id": id_or_none(query.resource_id, "resource_id"),
            "plan_id": id_or_none(query.plan_id, "plan_id"),
            "state": query.state.value if query.state else None,
            "customer_id": customer_filter(principal, None),
        },
        lambda v: (v.subscription.created_at, v.subscription.id),
    )
    items = [_subscription_out(services, v) for v in views]
    return w.SubscriptionPage(items=items, next_cursor=cursor)


@post(
    "/v1/subscriptions/{subscription_id:str}/change-plan",
    operation_class=OPS["change_plan"],
    dependencies=documented_body(w.ChangePlanIn),
    opt={"scopes": {"admin"}},
    status_code=200,
    tags=["plans"],
    description="Move the subscription to another plan now. The new plan's periods start "
    "after the change; for the current period, the difference is granted (a block effective "
    "now, with the period's expiry) or voided from the period's newest block (at most what it "
    "has left), per credit type: the whole difference, or, when the NEW plan has `prorate`, "
    "the difference times the fraction of the period left. 409 conflict for the plan it is on, "
    "409 subscription_cancelled once cancelled, 409 already_subscribed (with its "
    "`subscription_id`) when the resource has another live subscription of the new plan. "
    "Audited.",
)
async def change_plan(
    request: Request[Any, Any, Any], state: State, subscription_id: FromPath[str]
) -> Response[w.SubscriptionOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.ChangePlanIn)
    services = services_of(state)
    sub_id = await _own_subscription(services, principal, subscription_id)
    view, replayed = await services.plans.change_plan(
        sub_id,
        plan_id=parse_id(data.plan_id, "plan_id"),
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
    )
    return reply(_subscription_out(services, view), replayed)


async def _state_change(
    request: Request[Any, Any, Any], state: State, subscription_id: str, what: str
) -> Response[w.SubscriptionOut]:
    principal = principal_of(request)
    services = services_of(state)
    sub_id = await _own_subscription(services, principal, subscription_id)
    change = getattr(services.plans, what)
    view, replayed = await change(
        sub_id, actor=principal.name, tenant=principal.tenant, key=key_of(request)
    )
    return reply(_subscription_out(services, view), replayed)


@post(
    "/v1/subscriptions/{subscription_id:str}/pause",
    operation_class=OPS["pause_subscription"],
    opt={"scopes": {"admin"}},
    status_code=200,
    tags=["plans"],
    description="Pause: no allocation for the periods that start while paused (those due "
    "before are issued first); what was allocated stays. 409 conflict when paused already. "
    "Audited.",
)
async def pause_subscription(
    request: Request[Any, Any, Any], state: State, subscription_id: FromPath[str]
) -> Response[w.SubscriptionOut]:
    return await _state_change(request, state, subscription_id, "pause")


@post(
    "/v1/subscriptions/{subscription_id:str}/resume",
    operation_class=OPS["resume_subscription"],
    opt={"scopes": {"admin"}},
    status_code=200,
    tags=["plans"],
    description="Resume a paused subscription: allocations go on from the first period that "
    "starts from now (the ones that started while paused are skipped). 409 conflict when not "
    "paused. Audited.",
)
async def resume_subscription(
    request: Request[Any, Any, Any], state: State, subscription_id: FromPath[str]
) -> Response[w.SubscriptionOut]:
    return await _state_change(request, state, subscription_id, "resume")


@post(
    "/v1/subscriptions/{subscription_id:str}/cancel",
    operation_class=OPS["cancel_subscription"],
    opt={"scopes": {"admin"}},
    status_code=200,
    tags=["plans"],
    description="Cancel: no further allocation (those due are issued first); the credits "
    "allocated stay until they expire. 409 subscription_cancelled once cancelled (with "
    "another key). Audited.",
)
async def cancel_subscription(
    request: Request[Any, Any, Any], state: State, subscription_id: FromPath[str]
) -> Response[w.SubscriptionOut]:
    return await _state_change(request, state, subscription_id, "cancel")


ROUTES = [
    create_plan,
    list_plans,
    get_plan,
    subscribe,
    list_subscriptions,
    get_subscription,
    change_plan,
    pause_subscription,
    resume_subscription,
    cancel_subscription,
]
