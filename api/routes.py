"""The litestar routes: thin. The app's guard authenticates from the in-process key cache and
checks the route's scopes; each handler checks the customer boundary, converts wire ids, calls
the service, and shapes the answer.

The spending routes (check, debits, reservations) are served by the hot lane (`api.lane`) in
front of litestar; their handlers here document them and call the same `api.spending`. They
never touch Postgres: their idempotency rides on TigerBeetle. Admin routes keep theirs in
Postgres through the control plane.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

from credit_ledger_client import schemas as w
from litestar import Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, FromQuery, JSONBody

from api import spending
from api.auth import READ_SCOPES, Principal, require_any_scope
from api.common import (
    code_of,
    decode_strict,
    funding,
    idempotency_key,
    ledger_of,
    own,
    parse_id,
    resource_customer,
    sid,
    wallet_customer,
)
from api.openapi import COMMON, WRITE, operation
from api.services import Services
from api.spending import Reply
from grants.errors import InvalidRequest, NotFound
from grants.model import Category, Source
from ledger.codes import AccountCode, TransferCode
from ledger.ids import leg_id
from ledger.repositories.resources import ResourceKind
from wallets import chains
from wallets.catalog import Budget, OverdraftMode, Period, Wallet
from wallets.control import GrantRequest
from wallets.service import Funding
from wallets.statements import budget_used, reservation_status

HIT = {"Idempotency-Hit": "true"}
T = TypeVar("T")
B = TypeVar("B")


# -- helpers --------------------------------------------------------------------------------------


def _services(state: State) -> Services:
    services: Services = state.services
    return services


def _principal(request: Request[Any, Any, Any]) -> Principal:
    """Who is asking: the app's guard (`authorize`) has authenticated the key and checked the
    route's scopes, declared once in the route's `opt`, before the body was read."""
    principal: Principal | None = request.scope.get("principal")  # type: ignore[assignment]
    assert principal is not None, "every /v1 route declares opt={'scopes': ...}"
    return principal


async def _strict(request: Request[Any, Any, Any], cls: type[T]) -> T:
    """The body decoded strictly: litestar coerces ("1" becomes 1); the contract does not."""
    return decode_strict(await request.body(), cls)


def _key(request: Request[Any, Any, Any]) -> str:
    return idempotency_key(request.headers.get("idempotency-key"))


def _reply(body: B, replayed: bool, status: int = 200) -> Response[B]:
    return Response(body, status_code=status, headers=HIT if replayed else None)


def _send(reply: Reply) -> Response[Any]:
    return _reply(reply.body, reply.replayed, reply.status)


# -- OpenAPI: each route's problems, Idempotency-Key, an example body ----------------------------

_ID = "0190c3a1-7f3e-7a41-9a6e-1d2c3b4a5f60"
_SPEND = {
    "resource_id": _ID,
    "credit_type": "credits",
    "amount": 300,
    "dimensions": {"feature": "chat", "model": "small"},
}
_READ = (*COMMON, "validation_error", "not_found", "ledger_unavailable")
_SPENDING = (*COMMON, *WRITE, "not_found", "insufficient_credits", "budget_exceeded")
_RESERVATION = (
    "reservation_expired",
    "reservation_already_settled",
    "reservation_already_released",
)
_ADMIN = (*COMMON, *WRITE, "conflict", "not_found")
OPS = {
    "check": operation(*_SPENDING, idempotent=False, example=_SPEND),
    "debit": operation(*_SPENDING, example=_SPEND),
    "debit_batch": operation(
        *_SPENDING, idempotent=False, example={"debits": [{**_SPEND, "idempotency_key": "usage-1"}]}
    ),
    "reserve": operation(*_SPENDING, example={**_SPEND, "timeout_s": 60}),
    "settle": operation(*_SPENDING, *_RESERVATION, example={"amount": 120, "overage": "cap"}),
    "release": operation(*COMMON, *WRITE, "not_found", *_RESERVATION),
    "get_reservation": operation(*_READ, idempotent=False),
    "create_credit_type": operation(
        *_ADMIN, example={"code": "credits", "name": "Credits", "asset_scale": 2}
    ),
    "get_credit_type": operation(*_READ, idempotent=False),
    "create_customer": operation(*_ADMIN, example={"name": "Acme AI", "external_ref": "crm-42"}),
    "get_customer": operation(*_READ, idempotent=False),
    "create_resource": operation(
        *_ADMIN, example={"customer_id": _ID, "kind": "agent", "parent_id": _ID}
    ),
    "get_resource": operation(*_READ, idempotent=False),
    "create_wallet": operation(
        *_ADMIN,
        example={
            "resource_id": _ID,
            "credit_type": "credits",
            "overdraft_mode": "soft",
            "overdraft_limit": 500,
            "fall_through": True,
        },
    ),
    "get_wallet": operation(*_READ, idempotent=False),
    "wallet_entries": operation(*_READ, idempotent=False),
    "create_grant": operation(
        *_ADMIN,
        example={
            "wallet_id": _ID,
            "amount": 1000,
            "category": "paid",
            "consideration_minor": 1000,
            "currency": "USD",
            "expires_at": "2027-01-01T00:00:00Z",
        },
    ),
    "get_grant": operation(*_READ, idempotent=False),
    "void_grant": operation(*_ADMIN, example={"reason": "chargeback"}),
    "refund": operation(*_ADMIN, example={"amount": 40, "reason": "a wrong answer"}),
    "create_budget": operation(
        *_ADMIN,
        example={"resource_id": _ID, "credit_type": "credits", "period": "month", "cap": 50000},
    ),
    "get_budget": operation(*_READ, idempotent=False),
    "set_price": operation(
        *_ADMIN, example={"feature": "chat-tokens", "credit_type": "credits", "credits_per_unit": 2}
    ),
    "healthz": operation("internal_error", idempotent=False),
    "readyz": operation("internal_error", idempotent=False),
}


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


# -- hot path: the litestar door of the spending routes (see api.lane for the fast one) -----------

# The hot lane (`api.lane`) answers these paths before litestar routes them; these handlers
# declare them for the OpenAPI document and serve them when the lane is off. Both call
# `api.spending` and decode the body once, strictly, with `decode_strict`: a handler with a
# `data` parameter would have litestar decode it first, leniently ("1" becomes 1), and answer
# some bad bodies in its own words.


def _documented_body(cls: type[Any]) -> dict[str, Provide]:
    """Documents `cls` as the route's request body without litestar decoding it: litestar's
    OpenAPI takes the body from a declared dependency's `data` parameter; no handler asks for
    this dependency, so it is never resolved."""

    def body(data: Any) -> None:
        raise AssertionError("documentation only")

    body.__annotations__ = {"data": cls, "return": None}
    return {"documented_body": Provide(body, sync_to_thread=False)}


@post(
    "/v1/check",
    operation_class=OPS["check"],
    dependencies=_documented_body(w.SpendIn),
    opt={"scopes": spending.SCOPES["check"]},
    status_code=200,
    tags=["spending"],
    description="What a debit would do now: allowed or not with the reason, available, "
    "reserved, the overdraft headroom, every budget's headroom (and which blocks) "
    "and the grants that would fund it. Changes nothing.",
)
async def check(request: Request[Any, Any, Any], state: State) -> Response[w.CheckOut]:
    body = await _strict(request, w.SpendIn)
    return _send(await spending.check(_services(state), _principal(request), body))


@post(
    "/v1/debits",
    operation_class=OPS["debit"],
    dependencies=_documented_body(w.SpendIn),
    opt={"scopes": spending.SCOPES["debit"]},
    status_code=201,
    tags=["spending"],
    description="Debit an amount (or a priced usage) in one step: the resource's spend path "
    "(own grants in burn order, the parent's when the wallet falls through, the "
    "overdraft) drained up to exactly the amount, with every budget on the path, "
    "or nothing. 402 insufficient_credits or budget_exceeded when it cannot.",
)
async def debit(request: Request[Any, Any, Any], state: State) -> Response[w.DebitOut]:
    principal = _principal(request)
    body = await _strict(request, w.SpendIn)
    return _send(await spending.debit(_services(state), principal, _key(request), body))


@post(
    "/v1/debits/batch",
    operation_class=OPS["debit_batch"],
    dependencies=_documented_body(w.BatchIn),
    opt={"scopes": spending.SCOPES["debit_batch"]},
    status_code=200,
    tags=["spending"],
    description="Many debits in one call (usage ingestion), each with its own idempotency "
    "key and its own result: one engine request for all of them. At most 1000.",
)
async def debit_batch(request: Request[Any, Any, Any], state: State) -> Response[w.BatchOut]:
    body = await _strict(request, w.BatchIn)
    return _send(await spending.debit_batch(_services(state), _principal(request), body))


@post(
    "/v1/reservations",
    operation_class=OPS["reserve"],
    dependencies=_documented_body(w.ReserveIn),
    opt={"scopes": spending.SCOPES["reserve"]},
    status_code=201,
    tags=["spending"],
    description="Reserve an amount before a billable call: the same chain as a debit, as "
    "pending transfers that TigerBeetle releases by itself after timeout_s "
    "(default 3600, at most 86400).",
)
async def reserve(request: Request[Any, Any, Any], state: State) -> Response[w.ReservationOut]:
    principal = _principal(request)
    body = await _strict(request, w.ReserveIn)
    return _send(await spending.reserve(_services(state), principal, _key(request), body))


@post(
    "/v1/reservations/{reservation_id:str}/settle",
    operation_class=OPS["settle"],
    dependencies=_documented_body(w.SettleIn),
    opt={"scopes": spending.SCOPES["settle"]},
    status_code=200,
    tags=["spending"],
    description="Settle with the measured cost: up to the reserved amount the legs are "
    "posted in burn order and the rest released; beyond it the overage is "
    "collected under `overage` (reject, cap (default), overdraft). After the "
    "timeout it falls back to a direct debit and says so.",
)
async def settle(
    request: Request[Any, Any, Any],
    state: State,
    reservation_id: FromPath[str],
) -> Response[w.SettleOut]:
    principal = _principal(request)
    body = await _strict(request, w.SettleIn)
    key = _key(request)
    return _send(await spending.settle(_services(state), principal, key, reservation_id, body))


@post(
    "/v1/reservations/{reservation_id:str}/release",
    operation_class=OPS["release"],
    opt={"scopes": spending.SCOPES["release"]},
    status_code=200,
    tags=["spending"],
    description="Release a reservation: every pending leg is voided.",
)
async def release(
    request: Request[Any, Any, Any], state: State, reservation_id: FromPath[str]
) -> Response[w.ReleaseOut]:
    principal = _principal(request)
    key = _key(request)
    return _send(await spending.release(_services(state), principal, key, reservation_id))


@get(
    "/v1/reservations/{reservation_id:str}",
    operation_class=OPS["get_reservation"],
    opt={"scopes": READ_SCOPES},
    tags=["spending"],
    description="A reservation and its status: held, settled, released or expired.",
)
async def get_reservation(
    request: Request[Any, Any, Any], state: State, reservation_id: FromPath[str]
) -> w.ReservationOut:
    principal = _principal(request)
    services = _services(state)
    rid = parse_id(reservation_id, "reservation_id")
    await spending.reservation_legs(services, principal, rid)
    view = await reservation_status(services.service.ledger, rid, time.time_ns())
    legs = view.legs
    hold = legs[chains.SETUP]
    funded = [
        Funding(
            t.debit_account_id,
            "grant" if t.code == TransferCode.RESERVE else "overdraft",
            t.amount,
        )
        for t in legs[chains.FIRST_VARIABLE :]
        if t.id
        and t.pending_id == 0
        and t.code in (TransferCode.RESERVE, TransferCode.OVERDRAFT_DRAW)
        and t.amount
    ]
    timeout_s = next((t.timeout for t in legs if t.timeout), 0)
    return w.ReservationOut(
        id=reservation_id,
        amount=hold.amount,
        timeout_s=timeout_s,
        funded_by=funding(funded),
        status=view.status,
    )


# -- catalog --------------------------------------------------------------------------------------


@post(
    "/v1/credit-types",
    operation_class=OPS["create_credit_type"],
    opt={"scopes": {"admin"}},
    status_code=201,
    tags=["catalog"],
    description="A credit type: a unit with an asset scale, on its own TigerBeetle ledger.",
)
async def create_credit_type(
    request: Request[Any, Any, Any], state: State, data: JSONBody[w.CreditTypeIn]
) -> Response[w.CreditTypeOut]:
    principal = _principal(request)
    data = await _strict(request, w.CreditTypeIn)
    if principal.customer_id is not None:
        raise NotFound("credit types are created by unbound admin keys only")
    services = _services(state)
    credit_type, replayed = await services.control.create_credit_type(
        code=data.code,
        name=data.name,
        asset_scale=data.asset_scale,
        actor=principal.name,
        tenant=principal.tenant,
        key=_key(request),
    )
    return _reply(_credit_type_out(credit_type), replayed, 201)


@get(
    "/v1/credit-types/{code:str}",
    operation_class=OPS["get_credit_type"],
    opt={"scopes": READ_SCOPES},
    tags=["catalog"],
    description="A credit type by code.",
)
async def get_credit_type(
    request: Request[Any, Any, Any], state: State, code: FromPath[str]
) -> w.CreditTypeOut:
    _principal(request)
    services = _services(state)
    return _credit_type_out(services.catalog.credit_types[ledger_of(services, code)])


def _credit_type_out(credit_type: Any) -> w.CreditTypeOut:
    return w.CreditTypeOut(
        id=credit_type.ledger,
        code=credit_type.code,
        name=credit_type.name,
        asset_scale=credit_type.asset_scale,
    )


@post(
    "/v1/customers",
    operation_class=OPS["create_customer"],
    opt={"scopes": {"admin"}},
    status_code=201,
    tags=["catalog"],
    description="A customer: the owner of a tree of resources, with its own tenant number.",
)
async def create_customer(
    request: Request[Any, Any, Any], state: State, data: JSONBody[w.CustomerIn]
) -> Response[w.CustomerOut]:
    principal = _principal(request)
    data = await _strict(request, w.CustomerIn)
    if principal.customer_id is not None:
        raise NotFound("customers are created by unbound admin keys only")
    services = _services(state)
    row, replayed = await services.control.create_customer(
        name=data.name,
        actor=principal.name,
        tenant=principal.tenant,
        key=_key(request),
        external_ref=data.external_ref,
    )
    body = w.CustomerOut(
        id=sid(row.id), tenant=row.tenant, name=row.name, external_ref=row.external_ref
    )
    return _reply(body, replayed, 201)


@get(
    "/v1/customers/{customer_id:str}",
    operation_class=OPS["get_customer"],
    opt={"scopes": READ_SCOPES},
    tags=["catalog"],
    description="A customer.",
)
async def get_customer(
    request: Request[Any, Any, Any], state: State, customer_id: FromPath[str]
) -> w.CustomerOut:
    principal = _principal(request)
    cid = parse_id(customer_id, "customer_id")
    own(principal, cid, "customer")
    row = await _services(state).control.customer(cid)
    return w.CustomerOut(
        id=customer_id, tenant=row.tenant, name=row.name, external_ref=row.external_ref
    )


def _resource_out(resource: Any) -> w.ResourceOut:
    return w.ResourceOut(
        id=sid(resource.id),
        customer_id=sid(resource.customer_id),
        kind=resource.kind,
        parent_id=sid(resource.parent_id) if resource.parent_id else None,
        external_ref=None,
    )


@post(
    "/v1/resources",
    operation_class=OPS["create_resource"],
    opt={"scopes": {"admin"}},
    status_code=201,
    tags=["catalog"],
    description="A resource on the customer's tree: subscription, team, agent, ... with a "
    "parent of the same customer.",
)
async def create_resource(
    request: Request[Any, Any, Any], state: State, data: JSONBody[w.ResourceIn]
) -> Response[w.ResourceOut]:
    principal = _principal(request)
    data = await _strict(request, w.ResourceIn)
    customer_id = parse_id(data.customer_id, "customer_id")
    own(principal, customer_id, "customer")
    resource, replayed = await _services(state).control.create_resource(
        customer_id=customer_id,
        kind=ResourceKind(data.kind.value),
        actor=principal.name,
        tenant=principal.tenant,
        key=_key(request),
        parent_id=parse_id(data.parent_id, "parent_id") if data.parent_id else None,
        external_ref=data.external_ref,
    )
    return _reply(_resource_out(resource), replayed, 201)


@get(
    "/v1/resources/{resource_id:str}",
    operation_class=OPS["get_resource"],
    opt={"scopes": READ_SCOPES},
    tags=["catalog"],
    description="A resource.",
)
async def get_resource(
    request: Request[Any, Any, Any], state: State, resource_id: FromPath[str]
) -> w.ResourceOut:
    principal = _principal(request)
    services = _services(state)
    resource = services.catalog.resources.get(parse_id(resource_id, "resource_id"))
    if resource is None:
        raise NotFound("resource not found")
    own(principal, resource.customer_id, "resource")
    return _resource_out(resource)


def _wallet_out(services: Services, wallet: Wallet) -> w.WalletOut:
    return w.WalletOut(
        id=sid(wallet.id),
        resource_id=sid(wallet.resource_id),
        credit_type=code_of(services, wallet.ledger),
        overdraft_mode=wallet.overdraft_mode.value,
        overdraft_limit=wallet.overdraft_limit,
        fall_through=wallet.fall_through,
    )


@post(
    "/v1/wallets",
    operation_class=OPS["create_wallet"],
    opt={"scopes": {"admin"}},
    status_code=201,
    tags=["catalog"],
    description="A wallet: one per (resource, credit type), with its overdraft policy (hard: "
    "never below zero; soft with a limit; unbounded) and whether spending falls "
    "through to the parent's wallet.",
)
async def create_wallet(
    request: Request[Any, Any, Any], state: State, data: JSONBody[w.WalletIn]
) -> Response[w.WalletOut]:
    principal = _principal(request)
    data = await _strict(request, w.WalletIn)
    services = _services(state)
    resource_id = parse_id(data.resource_id, "resource_id")
    own(principal, resource_customer(services, resource_id), "resource")
    wallet, replayed = await services.control.create_wallet(
        resource_id=resource_id,
        ledger=ledger_of(services, data.credit_type),
        actor=principal.name,
        tenant=principal.tenant,
        key=_key(request),
        overdraft_mode=OverdraftMode(data.overdraft_mode.value),
        overdraft_limit=data.overdraft_limit,
        fall_through=data.fall_through,
    )
    return _reply(_wallet_out(services, wallet), replayed, 201)


@get(
    "/v1/wallets/{wallet_id:str}",
    operation_class=OPS["get_wallet"],
    opt={"scopes": READ_SCOPES},
    tags=["catalog"],
    description="A wallet's balance summary with a per-grant breakdown.",
)
async def get_wallet(
    request: Request[Any, Any, Any], state: State, wallet_id: FromPath[str]
) -> w.WalletBalanceOut:
    principal = _principal(request)
    services = _services(state)
    wid = parse_id(wallet_id, "wallet_id")
    own(principal, wallet_customer(services, wid), "wallet")
    b = await services.statements.wallet(wid)
    return w.WalletBalanceOut(
        wallet=_wallet_out(services, services.catalog.wallet(wid)),
        available=b.available,
        held=b.held,
        consumed=b.consumed,
        expired=b.expired,
        voided=b.voided,
        overdraft_used=b.overdraft_used,
        overdraft_limit=b.overdraft_limit,
        grants=[_grant_balance(g) for g in b.grants],
    )


def _grant_balance(g: Any) -> w.GrantBalanceOut:
    return w.GrantBalanceOut(
        grant_id=sid(g.grant_id),
        granted=g.granted,
        available=g.available,
        held=g.held,
        consumed=g.consumed,
        expired=g.expired,
        voided=g.voided,
        refunded=g.refunded,
        repaid=g.repaid,
    )


@get(
    "/v1/wallets/{wallet_id:str}/entries",
    operation_class=OPS["wallet_entries"],
    opt={"scopes": READ_SCOPES},
    tags=["catalog"],
    description="A wallet's typed movements (grant, debit, reserve, settle, release, expire, "
    "void, refund, overdraft, repay) with the running balance, oldest first. "
    "Pass next_cursor back as cursor for the next page; limit 1..1000.",
)
async def wallet_entries(
    request: Request[Any, Any, Any],
    state: State,
    wallet_id: FromPath[str],
    cursor: FromQuery[str | None] = None,
    limit: FromQuery[int] = 100,
) -> w.EntriesOut:
    principal = _principal(request)
    services = _services(state)
    wid = parse_id(wallet_id, "wallet_id")
    own(principal, wallet_customer(services, wid), "wallet")
    try:
        after = int(cursor) if cursor else 0
    except ValueError:
        raise InvalidRequest("cursor is not one this API gave", field="cursor") from None
    page = await services.statements.entries(wid, after=after, limit=limit)
    return w.EntriesOut(
        entries=[
            w.EntryOut(
                timestamp=e.timestamp,
                type=e.type,
                account_id=sid(e.account_id),
                amount=e.amount,
                operation_id=sid(e.operation_id),
                available_after=e.available_after,
            )
            for e in page.entries
        ],
        next_cursor=str(page.next_cursor) if page.next_cursor else None,
    )


# -- grants ---------------------------------------------------------------------------------------


@post(
    "/v1/grants",
    operation_class=OPS["create_grant"],
    opt={"scopes": {"admin"}},
    status_code=201,
    tags=["grants"],
    description="Issue a credit block to a wallet: paid (with its consideration and "
    "currency, the cost basis) or promotional, with priority, effective_at and "
    "expires_at (exclusive). A wallet in deficit is repaid first.",
)
async def create_grant(
    request: Request[Any, Any, Any], state: State, data: JSONBody[w.GrantIn]
) -> Response[w.GrantOut]:
    principal = _principal(request)
    data = await _strict(request, w.GrantIn)
    services = _services(state)
    wallet_id = parse_id(data.wallet_id, "wallet_id")
    own(principal, wallet_customer(services, wallet_id), "wallet")
    grant_request = GrantRequest(
        wallet_id=wallet_id,
        amount=data.amount,
        category=Category(data.category.value),
        consideration_minor=data.consideration_minor,
        currency=data.currency,
        priority=data.priority,
        effective_at=data.effective_at,
        expires_at=data.expires_at,
        source=Source(data.source.value),
        reason=data.reason,
        external_ref=data.external_ref,
    )
    result, replayed = await services.control.issue_grant(
        grant_request, tenant=principal.tenant, key=_key(request), actor=principal.name
    )
    body = w.GrantOut(
        id=sid(result.grant_id),
        wallet_id=data.wallet_id,
        amount=result.amount,
        repaid_overdraft=result.repaid,
    )
    return _reply(body, replayed, 201)


async def _grant_customer(services: Services, grant_id: int) -> int | None:
    accounts = await services.service.ledger.lookup_accounts([grant_id])
    if not accounts or accounts[0].code != AccountCode.GRANT:
        raise NotFound("grant not found")
    return wallet_customer(services, accounts[0].user_data_128)


@get(
    "/v1/grants/{grant_id:str}",
    operation_class=OPS["get_grant"],
    opt={"scopes": READ_SCOPES},
    tags=["grants"],
    description="A grant's balances: granted, available, held, consumed, expired, voided.",
)
async def get_grant(
    request: Request[Any, Any, Any], state: State, grant_id: FromPath[str]
) -> w.GrantBalanceOut:
    principal = _principal(request)
    services = _services(state)
    gid = parse_id(grant_id, "grant_id")
    own(principal, await _grant_customer(services, gid), "grant")
    return _grant_balance(await services.statements.grant(gid))


@post(
    "/v1/grants/{grant_id:str}/void",
    operation_class=OPS["void_grant"],
    opt={"scopes": {"admin"}},
    status_code=200,
    tags=["grants"],
    description="Void what is left of a grant; credits held by reservations stay held and "
    "are voided when they come back.",
)
async def void_grant(
    request: Request[Any, Any, Any], state: State, grant_id: FromPath[str], data: JSONBody[w.VoidIn]
) -> Response[w.VoidOut]:
    principal = _principal(request)
    data = await _strict(request, w.VoidIn)
    services = _services(state)
    gid = parse_id(grant_id, "grant_id")
    own(principal, await _grant_customer(services, gid), "grant")
    result, replayed = await services.control.void_grant(
        gid, tenant=principal.tenant, key=_key(request), actor=principal.name, reason=data.reason
    )
    return _reply(w.VoidOut(grant_id=grant_id, voided=result.amount), replayed)


@post(
    "/v1/debits/{debit_id:str}/refund",
    operation_class=OPS["refund"],
    opt={"scopes": {"admin"}},
    status_code=200,
    tags=["grants"],
    description="Give back up to the amount of a debit's credits to the blocks it drew from, "
    "in reverse burn order; never more than the debit took.",
)
async def refund(
    request: Request[Any, Any, Any],
    state: State,
    debit_id: FromPath[str],
    data: JSONBody[w.RefundIn],
) -> Response[w.RefundOut]:
    principal = _principal(request)
    data = await _strict(request, w.RefundIn)
    services = _services(state)
    did = parse_id(debit_id, "debit_id")
    legs = await services.service.ledger.lookup_transfers([leg_id(did, chains.SETUP)])
    if not legs or legs[0].code != TransferCode.CONSUME:
        raise NotFound("debit not found")
    own(principal, wallet_customer(services, legs[0].user_data_128), "debit")
    result = await services.control.refund(
        did,
        data.amount,
        tenant=principal.tenant,
        key=_key(request),
        actor=principal.name,
        reason=data.reason,
    )
    body = w.RefundOut(
        id=sid(result.operation_id),
        debit_id=debit_id,
        amount=result.amount,
        restored=[
            w.FundingOut(account_id=sid(a), kind="grant", amount=n) for a, n in result.restored
        ],
    )
    return _reply(body, result.replayed)


# -- budgets and prices ---------------------------------------------------------------------------


@post(
    "/v1/budgets",
    operation_class=OPS["create_budget"],
    opt={"scopes": {"admin"}},
    status_code=201,
    tags=["budgets"],
    description="A spending cap on a resource per period (day, week, month in UTC, or "
    "lifetime), enforced in the same engine request as every spend below it.",
)
async def create_budget(
    request: Request[Any, Any, Any], state: State, data: JSONBody[w.BudgetIn]
) -> Response[w.BudgetOut]:
    principal = _principal(request)
    data = await _strict(request, w.BudgetIn)
    services = _services(state)
    resource_id = parse_id(data.resource_id, "resource_id")
    own(principal, resource_customer(services, resource_id), "resource")
    budget, replayed = await services.control.create_budget(
        resource_id=resource_id,
        ledger=ledger_of(services, data.credit_type),
        period=Period(data.period.value),
        cap=data.cap,
        actor=principal.name,
        tenant=principal.tenant,
        key=_key(request),
    )
    return _reply(_budget_out(services, budget, None), replayed, 201)


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
    principal = _principal(request)
    services = _services(state)
    budget = services.catalog.budgets.get(parse_id(budget_id, "budget_id"))
    if budget is None:
        raise NotFound("budget not found")
    own(principal, resource_customer(services, budget.resource_id), "budget")
    used = await budget_used(services.service.ledger, budget, time.time_ns())
    return _budget_out(services, budget, used)


@post(
    "/v1/prices",
    operation_class=OPS["set_price"],
    opt={"scopes": {"admin"}},
    status_code=201,
    tags=["budgets"],
    description="A feature's price in credits per unit, so request paths may send usage "
    "quantities and prices change without a deploy.",
)
async def set_price(
    request: Request[Any, Any, Any], state: State, data: JSONBody[w.PriceIn]
) -> Response[w.PriceOut]:
    principal = _principal(request)
    data = await _strict(request, w.PriceIn)
    if principal.customer_id is not None:
        raise NotFound("prices are set by unbound admin keys only")
    services = _services(state)
    _, replayed = await services.control.set_price(
        feature=data.feature,
        ledger=ledger_of(services, data.credit_type),
        credits_per_unit=data.credits_per_unit,
        actor=principal.name,
        tenant=principal.tenant,
        key=_key(request),
    )
    body = w.PriceOut(
        feature=data.feature, credit_type=data.credit_type, credits_per_unit=data.credits_per_unit
    )
    return _reply(body, replayed, 201)


# -- health ---------------------------------------------------------------------------------------


@get("/healthz", operation_class=OPS["healthz"], tags=["health"], description="The process is up.")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    operation_class=OPS["readyz"],
    tags=["health"],
    description="The engine and Postgres answer.",
)
async def readyz(state: State) -> Response[dict[str, Any]]:
    services = _services(state)
    problems = await services.readiness()
    if problems:
        return Response({"status": "unavailable", "problems": problems}, status_code=503)
    return Response({"status": "ready"})


ROUTES = [
    check,
    debit,
    debit_batch,
    reserve,
    settle,
    release,
    get_reservation,
    create_credit_type,
    get_credit_type,
    create_customer,
    get_customer,
    create_resource,
    get_resource,
    create_wallet,
    get_wallet,
    wallet_entries,
    create_grant,
    get_grant,
    void_grant,
    refund,
    create_budget,
    get_budget,
    set_price,
    healthz,
    readyz,
]
