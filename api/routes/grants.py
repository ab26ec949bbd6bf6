"""The credit-block routes: issue, read, void (all or part), change of expiry, refund in money;
and usage refunds of a debit."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from credit_ledger_client import schemas as w
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath

from api.auth import READ_SCOPES
from api.common import (
    code_of,
    decode_strict,
    own,
    parse_id,
    sid,
    wallet_customer,
)
from api.openapi import operation
from api.paging import customer_filter
from api.routes.shared import (
    ADMIN_PROBLEMS,
    EXAMPLE_ID,
    LIST_PROBLEMS,
    READ_PROBLEMS,
    documented_body,
    grant_balance_out,
    id_or_none,
    json_body,
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
from grants.model import Category, RolloverPolicy, Source
from ledger.clock import datetime_of_ns
from ledger.codes import AccountCode, TransferCode
from ledger.ids import leg_id
from ledger.repositories import grants
from wallets import chains
from wallets.control import GrantRequest, rate_text
from wallets.statements import BlockState, GrantBalance

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
    "list_grants": operation(*LIST_PROBLEMS, idempotent=False, query=w.GrantQuery),
    "void_grant": operation(
        *ADMIN_PROBLEMS,
        "void_exceeds_available",
        "grant_not_changeable",
        example={"amount": 300, "reason": "chargeback"},
    ),
    "change_grant_expiry": operation(
        *ADMIN_PROBLEMS,
        "grant_not_changeable",
        "expiry_in_past",
        "expiry_not_after_effective",
        "invalid_rollover_policy",
        example={"expires_at": "2027-06-30T00:00:00Z", "reason": "extended as a courtesy"},
    ),
    "refund": operation(*ADMIN_PROBLEMS, example={"amount": 40, "reason": "a wrong answer"}),
    "refund_grant": operation(
        *ADMIN_PROBLEMS,
        "grant_not_refundable",
        "refund_exceeds_available",
        example={"amount": 400, "refund_minor": 400, "reason": "cancelled the plan"},
    ),
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
    "currency, the cost basis, and optionally the exchange_rate of its receipt) or "
    "promotional, with priority, effective_at and expires_at (exclusive). A wallet in deficit "
    "is repaid first. exchange_rate: units of the service's functional currency "
    "(CREDIT_LEDGER_FUNCTIONAL_CURRENCY, USD by default) per unit of the block's currency, a "
    "decimal string > 0 with at most 12 significant digits and 10 decimal places, kept as "
    "given and never changed; a paid block in the functional currency has 1 (another rate is "
    "422), one in another currency without it has none (null: unknown); a promotional block "
    "takes none (422). rollover: at the block's expiry, carried = min(max_credits, "
    "max(min_credits, remaining)) credits go to new blocks (source rollover, source_grant_id "
    "naming this block) expiring at rollover.expires_at: up to what was left moves at the "
    "block's cost basis per credit, what min_credits adds beyond that is a promotional block; "
    "the rest expires as usual. A policy with max_credits below min_credits, a negative bound, "
    "an expires_at not after the block's, or on a block without expiry is 422 "
    "invalid_rollover_policy.",
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
        exchange_rate=data.exchange_rate,
        priority=data.priority,
        effective_at=data.effective_at,
        expires_at=data.expires_at,
        source=Source(data.source.value),
        reason=data.reason,
        external_ref=data.external_ref,
        rollover=None
        if data.rollover is None
        else RolloverPolicy(
            max_credits=data.rollover.max_credits,
            min_credits=data.rollover.min_credits,
            expires_at=data.rollover.expires_at,
        ),
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
    description="A credit block: what it was issued as (category, priority, effective_at, "
    "expires_at, the cost basis consideration_minor and currency, its exchange_rate at "
    "receipt, source, reason, "
    "external_ref, actor, created_at) and its figures now, as a spend would find them: its "
    "state (upcoming, active, expired, voided) and granted = available + upcoming + held + "
    "consumed + expired + voided + refunded + repaid + rolled_over. Past its expires_at, or "
    "once voided, what is left of it is expired or voided at once, whether or not a sweep has "
    "moved it yet; a rollover block names its source (source_grant_id), and a block with a "
    "rollover policy says where its rollover stands (rollover.state: due, pending, done, "
    "refused).",
)
async def get_grant(
    request: Request[Any, Any, Any], state: State, grant_id: FromPath[str]
) -> w.GrantDetailOut:
    principal = principal_of(request)
    services = services_of(state)
    gid = parse_id(grant_id, "grant_id")
    async with services.pool.connection() as conn:
        row = await grants.get_grant(conn, gid)
    if row is None:
        raise NotFound("grant not found")
    own(principal, wallet_customer(services, row.wallet_id), "grant")
    if row.state in (grants.GrantState.PENDING, grants.GrantState.ABANDONED):
        # Not on the ledger (yet, or ever): nothing moved, and it has no account to read.
        block = BlockState.UPCOMING if row.state is grants.GrantState.PENDING else BlockState.VOIDED
        balance = GrantBalance(gid, block.value, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    else:
        balance = await services.statements.grant(gid)
    # The ledger's figures, its state included, over the block as it was issued.
    now = datetime_of_ns(services.service.clock_ns())
    return w.GrantDetailOut(
        **{
            **msgspec.structs.asdict(_block_out(services, row, now)),
            **msgspec.structs.asdict(grant_balance_out(balance)),
        }
    )


def _block_out(services: Services, row: grants.Grant, now: dt.datetime) -> w.GrantBlockOut:
    return w.GrantBlockOut(
        id=sid(row.id),
        wallet_id=sid(row.wallet_id),
        credit_type=code_of(services, row.credit_type_id),
        amount=row.amount,
        category=w.Category(row.category.value),
        priority=row.priority,
        effective_at=row.effective_at,
        expires_at=row.expires_at,
        consideration_minor=row.consideration_minor,
        currency=row.currency,
        exchange_rate=rate_text(row.exchange_rate),
        source=w.GrantSource(row.source.value),
        reason=row.reason,
        external_ref=row.external_ref,
        state=w.GrantState(grants.block_state(row, now)),
        actor=row.actor,
        created_at=row.created_at,
        source_grant_id=None if row.source_grant_id is None else sid(row.source_grant_id),
        rollover=None
        if row.rollover is None
        else w.RolloverOut(
            max_credits=row.rollover.max_credits,
            min_credits=row.rollover.min_credits,
            expires_at=row.rollover.expires_at,
            state=w.RolloverState(row.rollover.state.value),
        ),
    )


@get(
    "/v1/grants",
    operation_class=OPS["list_grants"],
    opt={"scopes": READ_SCOPES},
    tags=["grants"],
    description="Credit blocks as issued, with their state as a spend sees it now (upcoming, "
    "active, expired, voided), oldest first, a page at a time, with every filter given: "
    "`wallet_id`, `state`, `category`, `expires_before` (an expiry strictly before that "
    "time). No balances (GET /v1/grants/{id} reads them from the ledger). A key bound to a "
    "customer lists only that customer's.",
)
async def list_grants(request: Request[Any, Any, Any], state: State) -> w.GrantPage:
    principal = principal_of(request)
    query = query_of(request, w.GrantQuery)
    services = services_of(state)
    now = datetime_of_ns(services.service.clock_ns())
    rows, cursor = await read_page(
        services,
        "grants",
        query,
        grants.list_grants,
        lambda: {
            "wallet_id": id_or_none(query.wallet_id, "wallet_id"),
            "customer_id": customer_filter(principal, None),
            "block": (query.state.value, now) if query.state else None,
            "category": grants.GrantCategory(query.category.value) if query.category else None,
            "expires_before": query.expires_before,
        },
    )
    items = [_block_out(services, row, now) for row in rows]
    return w.GrantPage(items=items, next_cursor=cursor)


@post(
    "/v1/grants/{grant_id:str}/void",
    operation_class=OPS["void_grant"],
    dependencies=documented_body(w.VoidIn),
    opt={"scopes": {"admin"}},
    status_code=200,
    tags=["grants"],
    description="Void what is left of a grant; credits held by reservations stay held and "
    "are voided when they come back; the grant is voided. The body may be left out. With an "
    "`amount`: void exactly that many of the credits the grant has available now (credits "
    "held by reservations are not), and the grant stays active with the rest: more than is "
    "available is 409 void_exceeds_available with the `available` credits, and nothing moves "
    "(a spend that takes the credits first makes the void refused, never the block "
    "overdrawn). An expired, voided or not yet issued grant is 409 grant_not_changeable. "
    "Finance books a void of a paid grant as breakage when it happens. Audited.",
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
        gid,
        tenant=principal.tenant,
        key=key_of(request),
        actor=principal.name,
        reason=data.reason,
        amount=data.amount,
    )
    return reply(w.VoidOut(grant_id=grant_id, voided=result.amount), replayed)


@post(
    "/v1/grants/{grant_id:str}/expiry",
    operation_class=OPS["change_grant_expiry"],
    dependencies=documented_body(w.GrantExpiryIn),
    opt={"scopes": {"admin"}},
    status_code=200,
    tags=["grants"],
    description="Change a grant's expiry: extend it, shorten it, or remove it (`expires_at` "
    "null: it never expires). The new expiry must be after now (the service's clock: a "
    "sandbox's test clock) and after the grant's effective_at (422 expiry_in_past, "
    "expiry_not_after_effective); a grant with a rollover keeps an expiry before its "
    "rollover's expires_at (422 invalid_rollover_policy, null too); an expired, voided or not "
    "yet issued grant is 409 grant_not_changeable. From then on spends, burn order, the "
    "expiry sweep and finance (its breakage date, the aging report) go by the new expiry. "
    "Audited with the old and the new expiry; the answer names both.",
)
async def change_grant_expiry(
    request: Request[Any, Any, Any], state: State, grant_id: FromPath[str]
) -> Response[w.GrantExpiryOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.GrantExpiryIn)
    services = services_of(state)
    gid = parse_id(grant_id, "grant_id")
    own(principal, await _grant_customer(services, gid), "grant")
    result, replayed = await services.control.change_grant_expiry(
        gid,
        expires_at=data.expires_at,
        tenant=principal.tenant,
        key=key_of(request),
        actor=principal.name,
        reason=data.reason,
    )
    body = w.GrantExpiryOut(
        grant_id=grant_id,
        expires_at=result.expires_at,
        previous_expires_at=result.previous_expires_at,
    )
    return reply(body, replayed)


@post(
    "/v1/grants/{grant_id:str}/refund",
    operation_class=OPS["refund_grant"],
    dependencies=documented_body(w.GrantRefundIn),
    opt={"scopes": {"admin"}},
    status_code=200,
    tags=["grants"],
    description="Refund unused credits of a paid grant in money: `amount` credits (all that "
    "is available now when left out) leave the block for good, and `refund_minor`, the "
    "money given back in minor units of the block's currency, is recorded with them (the "
    "liability released; finance reads it). Exactly `amount` or nothing: more than is "
    "available now (credits held by reservations are not) is 409 refund_exceeds_available, "
    "with the `refundable` credits; a promotional, voided or expired grant is 409 "
    "grant_not_refundable. The grant stays active with what is left (0 after a refund of "
    "all), and its read counts the credits as `refunded`.",
)
async def refund_grant(
    request: Request[Any, Any, Any], state: State, grant_id: FromPath[str]
) -> Response[w.GrantRefundOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.GrantRefundIn)
    services = services_of(state)
    gid = parse_id(grant_id, "grant_id")
    own(principal, await _grant_customer(services, gid), "grant")
    result, replayed = await services.control.refund_grant(
        gid,
        amount=data.amount,
        refund_minor=data.refund_minor,
        tenant=principal.tenant,
        key=key_of(request),
        actor=principal.name,
        reason=data.reason,
    )
    body = w.GrantRefundOut(
        id=sid(result.operation_id),
        grant_id=grant_id,
        refunded=result.credits,
        refund_minor=result.refund_minor,
        currency=result.currency,
    )
    return reply(body, replayed)


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
    list_grants,
    void_grant,
    change_grant_expiry,
    refund_grant,
    refund,
]
