"""The credit-block routes: issue, read, void; and usage refunds of a debit."""

from __future__ import annotations

from typing import Any

from credit_ledger_client import schemas as w
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath

from api.auth import READ_SCOPES
from api.common import (
    decode_strict,
    own,
    parse_id,
    sid,
    wallet_customer,
)
from api.openapi import operation
from api.routes.shared import (
    ADMIN_PROBLEMS,
    EXAMPLE_ID,
    READ_PROBLEMS,
    documented_body,
    grant_balance_out,
    json_body,
    key_of,
    principal_of,
    reply,
    services_of,
    strict_body,
)
from api.services import Services
from grants.errors import NotFound
from grants.model import Category, Source
from ledger.codes import AccountCode, TransferCode
from ledger.ids import leg_id
from wallets import chains
from wallets.control import GrantRequest

OPS = {
    "create_grant": operation(
        *ADMIN_PROBLEMS,
        example={
            "wallet_id": EXAMPLE_ID,
            "amount": 1000,
            "category": "paid",
            "consideration_minor": 1000,
            "currency": "USD",
            "expires_at": "2027-01-01T00:00:00Z",
        },
    ),
    "get_grant": operation(*READ_PROBLEMS, idempotent=False),
    "void_grant": operation(*ADMIN_PROBLEMS, example={"reason": "chargeback"}),
    "refund": operation(*ADMIN_PROBLEMS, example={"amount": 40, "reason": "a wrong answer"}),
}


# -- grants ---------------------------------------------------------------------------------------


@post(
    "/v1/grants",
    operation_class=OPS["create_grant"],
    dependencies=documented_body(w.GrantIn),
    opt={"scopes": {"admin"}},
    status_code=201,
    tags=["grants"],
    description="Issue a credit block to a wallet: paid (with its consideration and "
    "currency, the cost basis) or promotional, with priority, effective_at and "
    "expires_at (exclusive). A wallet in deficit is repaid first.",
)
async def create_grant(request: Request[Any, Any, Any], state: State) -> Response[w.GrantOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.GrantIn)
    services = services_of(state)
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
        grant_request, tenant=principal.tenant, key=key_of(request), actor=principal.name
    )
    body = w.GrantOut(
        id=sid(result.grant_id),
        wallet_id=data.wallet_id,
        amount=result.amount,
        repaid_overdraft=result.repaid,
    )
    return reply(body, replayed, 201)


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
    description="A grant's figures now, as a spend would find them: its state (upcoming, "
    "active, expired, voided) and granted = available + upcoming + held + consumed + expired "
    "+ voided + refunded + repaid. Past its expires_at, or once voided, what is left of it "
    "is expired or voided at once, whether or not a sweep has moved it yet.",
)
async def get_grant(
    request: Request[Any, Any, Any], state: State, grant_id: FromPath[str]
) -> w.GrantBalanceOut:
    principal = principal_of(request)
    services = services_of(state)
    gid = parse_id(grant_id, "grant_id")
    own(principal, await _grant_customer(services, gid), "grant")
    return grant_balance_out(await services.statements.grant(gid))


@post(
    "/v1/grants/{grant_id:str}/void",
    operation_class=OPS["void_grant"],
    dependencies=documented_body(w.VoidIn),
    opt={"scopes": {"admin"}},
    status_code=200,
    tags=["grants"],
    description="Void what is left of a grant; credits held by reservations stay held and "
    "are voided when they come back. The body (a reason) may be left out.",
)
async def void_grant(
    request: Request[Any, Any, Any], state: State, grant_id: FromPath[str]
) -> Response[w.VoidOut]:
    principal = principal_of(request)
    raw = await json_body(request)
    data = decode_strict(raw, w.VoidIn) if raw else w.VoidIn()  # every field is optional
    services = services_of(state)
    gid = parse_id(grant_id, "grant_id")
    own(principal, await _grant_customer(services, gid), "grant")
    result, replayed = await services.control.void_grant(
        gid, tenant=principal.tenant, key=key_of(request), actor=principal.name, reason=data.reason
    )
    return reply(w.VoidOut(grant_id=grant_id, voided=result.amount), replayed)


@post(
    "/v1/debits/{debit_id:str}/refund",
    operation_class=OPS["refund"],
    dependencies=documented_body(w.RefundIn),
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
) -> Response[w.RefundOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.RefundIn)
    services = services_of(state)
    did = parse_id(debit_id, "debit_id")
    legs = await services.service.ledger.lookup_transfers([leg_id(did, chains.SETUP)])
    if not legs or legs[0].code != TransferCode.CONSUME:
        raise NotFound("debit not found")
    own(principal, wallet_customer(services, legs[0].user_data_128), "debit")
    result = await services.control.refund(
        did,
        data.amount,
        tenant=principal.tenant,
        key=key_of(request),
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
    return reply(body, result.replayed)


ROUTES = [
    create_grant,
    get_grant,
    void_grant,
    refund,
]
