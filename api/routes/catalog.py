"""The catalog routes: credit types, customers, resources, wallets, their balances and entries."""

from __future__ import annotations

from typing import Annotated, Any

from credit_ledger_client import schemas as w
from litestar import Request, Response, get, patch, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, Parameter

from api.auth import READ_SCOPES
from api.common import (
    code_of,
    ledger_of,
    own,
    parse_id,
    resource_customer,
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
from grants.errors import InvalidRequest, NotFound
from ledger.clock import rfc3339_of_ns
from ledger.limits import LIST_PAGE_ROWS_MAX
from ledger.repositories import customers, resources, wallets
from ledger.repositories.resources import ResourceKind
from wallets.catalog import OverdraftMode, Wallet
from wallets.dimensions import dimensions_of_spends

OPS = {
    "create_credit_type": operation(
        *ADMIN_PROBLEMS, example={"code": "credits", "name": "Credits", "asset_scale": 2}
    ),
    "get_credit_type": operation(*READ_PROBLEMS, idempotent=False),
    "create_customer": operation(
        *ADMIN_PROBLEMS, example={"name": "Acme AI", "external_ref": "crm-42"}
    ),
    "get_customer": operation(*READ_PROBLEMS, idempotent=False),
    "list_customers": operation(*LIST_PROBLEMS, idempotent=False, query=w.CustomerQuery),
    "create_resource": operation(
        *ADMIN_PROBLEMS,
        example={"customer_id": EXAMPLE_ID, "kind": "agent", "parent_id": EXAMPLE_ID},
    ),
    "get_resource": operation(*READ_PROBLEMS, idempotent=False),
    "list_resources": operation(*LIST_PROBLEMS, idempotent=False, query=w.ResourceQuery),
    "create_wallet": operation(
        *ADMIN_PROBLEMS,
        example={
            "resource_id": EXAMPLE_ID,
            "credit_type": "credits",
            "overdraft_mode": "soft",
            "overdraft_limit": 500,
            "fall_through": True,
        },
    ),
    "get_wallet": operation(*READ_PROBLEMS, idempotent=False),
    "list_wallets": operation(*LIST_PROBLEMS, idempotent=False, query=w.WalletQuery),
    "update_wallet": operation(
        *ADMIN_PROBLEMS, example={"overdraft_mode": "soft", "overdraft_limit": 800}
    ),
    "wallet_entries": operation(*READ_PROBLEMS, idempotent=False),
}


# -- catalog --------------------------------------------------------------------------------------


@post(
    "/v1/credit-types",
    operation_class=OPS["create_credit_type"],
    dependencies=documented_body(w.CreditTypeIn),
    opt={"scopes": {"admin"}},
    status_code=201,
    tags=["catalog"],
    description="A credit type: a unit with an asset scale, on its own TigerBeetle ledger.",
)
async def create_credit_type(
    request: Request[Any, Any, Any], state: State
) -> Response[w.CreditTypeOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.CreditTypeIn)
    if principal.customer_id is not None:
        raise NotFound("credit types are created by unbound admin keys only")
    services = services_of(state)
    credit_type, replayed = await services.control.create_credit_type(
        code=data.code,
        name=data.name,
        asset_scale=data.asset_scale,
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
    )
    return reply(_credit_type_out(credit_type), replayed, 201)


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
    principal_of(request)
    services = services_of(state)
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
    dependencies=documented_body(w.CustomerIn),
    opt={"scopes": {"admin"}},
    status_code=201,
    tags=["catalog"],
    description="A customer: the owner of a tree of resources, with its own tenant number.",
)
async def create_customer(request: Request[Any, Any, Any], state: State) -> Response[w.CustomerOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.CustomerIn)
    if principal.customer_id is not None:
        raise NotFound("customers are created by unbound admin keys only")
    services = services_of(state)
    row, replayed = await services.control.create_customer(
        name=data.name,
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
        external_ref=data.external_ref,
    )
    return reply(_customer_out(row), replayed, 201)


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
    principal = principal_of(request)
    cid = parse_id(customer_id, "customer_id")
    own(principal, cid, "customer")
    return _customer_out(await services_of(state).control.customer(cid))


@get(
    "/v1/customers",
    operation_class=OPS["list_customers"],
    opt={"scopes": READ_SCOPES},
    tags=["catalog"],
    description="Customers, oldest first, a page at a time (pass next_cursor back as cursor). "
    "`external_ref` finds the customer your own system knows by that reference. A key bound "
    "to a customer lists only that one.",
)
async def list_customers(request: Request[Any, Any, Any], state: State) -> w.CustomerPage:
    principal = principal_of(request)
    query = query_of(request, w.CustomerQuery)
    rows, cursor = await read_page(
        services_of(state),
        "customers",
        query,
        customers.list_customers,
        lambda: {
            "external_ref": query.external_ref,
            "customer_id": customer_filter(principal, None),
        },
    )
    return w.CustomerPage(items=[_customer_out(row) for row in rows], next_cursor=cursor)


def _customer_out(row: customers.Customer) -> w.CustomerOut:
    return w.CustomerOut(
        id=sid(row.id), tenant=row.tenant, name=row.name, external_ref=row.external_ref
    )


def _resource_out(resource: Any) -> w.ResourceOut:
    return w.ResourceOut(
        id=sid(resource.id),
        customer_id=sid(resource.customer_id),
        kind=resource.kind,
        parent_id=sid(resource.parent_id) if resource.parent_id else None,
        external_ref=resource.external_ref,
    )


@post(
    "/v1/resources",
    operation_class=OPS["create_resource"],
    dependencies=documented_body(w.ResourceIn),
    opt={"scopes": {"admin"}},
    status_code=201,
    tags=["catalog"],
    description="A resource on the customer's tree: subscription, team, agent, ... with a "
    "parent of the same customer.",
)
async def create_resource(request: Request[Any, Any, Any], state: State) -> Response[w.ResourceOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.ResourceIn)
    customer_id = parse_id(data.customer_id, "customer_id")
    own(principal, customer_id, "customer")
    resource, replayed = await services_of(state).control.create_resource(
        customer_id=customer_id,
        kind=ResourceKind(data.kind.value),
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
        parent_id=parse_id(data.parent_id, "parent_id") if data.parent_id else None,
        external_ref=data.external_ref,
    )
    return reply(_resource_out(resource), replayed, 201)


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
    principal = principal_of(request)
    services = services_of(state)
    resource = services.catalog.resources.get(parse_id(resource_id, "resource_id"))
    if resource is None:
        raise NotFound("resource not found")
    own(principal, resource.customer_id, "resource")
    return _resource_out(resource)


@get(
    "/v1/resources",
    operation_class=OPS["list_resources"],
    opt={"scopes": READ_SCOPES},
    tags=["catalog"],
    description="Resources, oldest first, a page at a time, with every filter given: "
    "`customer_id`, `parent_id` (its children), `kind`, and `external_ref` (your own "
    "system's reference, unique per customer and kind). A key bound to a customer lists "
    "only that customer's.",
)
async def list_resources(request: Request[Any, Any, Any], state: State) -> w.ResourcePage:
    principal = principal_of(request)
    query = query_of(request, w.ResourceQuery)
    rows, cursor = await read_page(
        services_of(state),
        "resources",
        query,
        resources.list_resources,
        lambda: {
            "customer_id": customer_filter(principal, id_or_none(query.customer_id, "customer_id")),
            "parent_id": id_or_none(query.parent_id, "parent_id"),
            "kind": ResourceKind(query.kind.value) if query.kind is not None else None,
            "external_ref": query.external_ref,
        },
    )
    return w.ResourcePage(items=[_resource_out(row) for row in rows], next_cursor=cursor)


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
    dependencies=documented_body(w.WalletIn),
    opt={"scopes": {"admin"}},
    status_code=201,
    tags=["catalog"],
    description="A wallet: one per (resource, credit type), with its overdraft policy (hard: "
    "never below zero; soft with a limit; unbounded) and whether spending falls "
    "through to the parent's wallet.",
)
async def create_wallet(request: Request[Any, Any, Any], state: State) -> Response[w.WalletOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.WalletIn)
    services = services_of(state)
    resource_id = parse_id(data.resource_id, "resource_id")
    own(principal, resource_customer(services, resource_id), "resource")
    wallet, replayed = await services.control.create_wallet(
        resource_id=resource_id,
        ledger=ledger_of(services, data.credit_type),
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
        overdraft_mode=OverdraftMode(data.overdraft_mode.value),
        overdraft_limit=data.overdraft_limit,
        fall_through=data.fall_through,
    )
    return reply(_wallet_out(services, wallet), replayed, 201)


@get(
    "/v1/wallets/{wallet_id:str}",
    operation_class=OPS["get_wallet"],
    opt={"scopes": READ_SCOPES},
    tags=["catalog"],
    description="A wallet's figures now, with a per-grant breakdown: what a spend would find "
    "at this instant. `available` counts only blocks a spend may draw on now: a block before "
    "its effective_at is `upcoming`; from its expires_at on, or once voided, what is left of "
    "it is `expired` or `voided` at once, whether or not a sweep has moved it yet. `consumed` "
    "includes what the overdraft paid for. POST /v1/check's `available` is this wallet's "
    "`available`, plus its parent's when it falls through, plus `overdraft_headroom`.",
)
async def get_wallet(
    request: Request[Any, Any, Any], state: State, wallet_id: FromPath[str]
) -> w.WalletBalanceOut:
    principal = principal_of(request)
    services = services_of(state)
    wid = parse_id(wallet_id, "wallet_id")
    own(principal, wallet_customer(services, wid), "wallet")
    b = await services.statements.wallet(wid)
    return w.WalletBalanceOut(
        wallet=_wallet_out(services, services.catalog.wallet(wid)),
        available=b.available,
        held=b.held,
        upcoming=b.upcoming,
        consumed=b.consumed,
        expired=b.expired,
        voided=b.voided,
        overdraft_used=b.overdraft_used,
        overdraft_held=b.overdraft_held,
        overdraft_limit=b.overdraft_limit,
        overdraft_headroom=b.overdraft_headroom,
        grants=[grant_balance_out(g) for g in b.grants],
    )


@patch(
    "/v1/wallets/{wallet_id:str}",
    operation_class=OPS["update_wallet"],
    dependencies=documented_body(w.WalletPatchIn),
    opt={"scopes": {"admin"}},
    status_code=200,
    tags=["catalog"],
    description="Change a wallet's overdraft mode or limit, or its fall-through: the fields "
    "given change, the rest stay. The ledger moves with it: a soft wallet's overdraft account "
    "is credited the raise, or debited the cut. Every switch of mode is allowed; a lower limit "
    "(leaving 'soft' lowers it to 0) is refused with 409 `conflict` while more than it is "
    "drawn, held draws included, and then nothing changes. A debt of an unbounded wallet stays "
    "owed when it leaves 'unbounded' (its next grants repay it). Audited; one change of a "
    "wallet at a time (409 while another is being applied).",
)
async def update_wallet(
    request: Request[Any, Any, Any], state: State, wallet_id: FromPath[str]
) -> Response[w.WalletOut]:
    principal = principal_of(request)
    data = await strict_body(request, w.WalletPatchIn)
    services = services_of(state)
    wid = parse_id(wallet_id, "wallet_id")
    own(principal, wallet_customer(services, wid), "wallet")
    wallet, replayed = await services.control.update_wallet(
        wid,
        actor=principal.name,
        tenant=principal.tenant,
        key=key_of(request),
        overdraft_mode=(
            OverdraftMode(data.overdraft_mode.value) if data.overdraft_mode is not None else None
        ),
        overdraft_limit=data.overdraft_limit,
        fall_through=data.fall_through,
    )
    return reply(_wallet_out(services, wallet), replayed)


@get(
    "/v1/wallets",
    operation_class=OPS["list_wallets"],
    opt={"scopes": READ_SCOPES},
    tags=["catalog"],
    description="Wallets and their policies (no balances: GET /v1/wallets/{id} reads those "
    "from the ledger), oldest first, a page at a time, with every filter given: "
    "`resource_id`, `customer_id`, `credit_type`. A key bound to a customer lists only that "
    "customer's.",
)
async def list_wallets(request: Request[Any, Any, Any], state: State) -> w.WalletPage:
    principal = principal_of(request)
    query = query_of(request, w.WalletQuery)
    services = services_of(state)
    rows, cursor = await read_page(
        services,
        "wallets",
        query,
        wallets.list_wallets,
        lambda: {
            "resource_id": id_or_none(query.resource_id, "resource_id"),
            "customer_id": customer_filter(principal, id_or_none(query.customer_id, "customer_id")),
            "credit_type_id": ledger_filter(services, query.credit_type),
        },
    )
    items = [_wallet_out(services, _cached(row)) for row in rows]
    return w.WalletPage(items=items, next_cursor=cursor)


def _cached(row: wallets.Wallet) -> Wallet:
    """A wallet's row in the shape the cache (and `_wallet_out`) knows."""
    return Wallet(
        row.id,
        row.resource_id,
        row.credit_type_id,
        row.overdraft_mode,
        row.overdraft_limit,
        row.fall_through,
    )


@get(
    "/v1/wallets/{wallet_id:str}/entries",
    operation_class=OPS["wallet_entries"],
    opt={"scopes": READ_SCOPES},
    tags=["catalog"],
    description="A wallet's entries, oldest first, each with the wallet's figures just after "
    "it (`available_after`, `held_after`, `overdraft_used_after`, as GET /v1/wallets/{id} "
    "reports them: after the last entry, they are the wallet's figures now). Besides the "
    "transfers on its blocks and overdraft (grant, debit, reserve, settle, release, void, "
    "refund, refund_out, overdraft_draw, overdraft_repay, overdraft_limit), the entries say "
    "what time did: `effective` when a block's effective_at came, `expire` when its "
    "expires_at came (what was left of it stopped being available; the later sweep moves "
    "nothing a read had not counted out and is no entry), `reservation_expired` when a "
    "reservation's timeout came (the engine released it; no transfer records that). "
    "`type` (repeatable) keeps the entries of those types; the running figures stay the "
    "wallet's. Each entry of a spend carries the spend's `dimensions` (a settle, release or "
    "reservation_expired: its reservation's; a refund: its debit's). Read from the engine, "
    "not the projection: no lag. Pass next_cursor back as `cursor` for the next page; limit "
    "1..1000. Unknown query parameters are refused (422). A page replays the wallet's whole "
    "history.",
)
async def wallet_entries(
    request: Request[Any, Any, Any],
    state: State,
    wallet_id: FromPath[str],
    cursor: FromQuery[str | None] = None,
    limit: Annotated[int, Parameter(ge=1, le=LIST_PAGE_ROWS_MAX)] = 100,
    # Named as the query parameter is, so that a bad value's 422 names the field the caller
    # sent (the builtin is not needed here).
    type: FromQuery[list[w.EntryType] | None] = None,
) -> w.EntriesOut:
    principal = principal_of(request)
    unknown = sorted(set(request.query_params) - _ENTRIES_QUERY)
    if unknown:
        raise InvalidRequest(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    services = services_of(state)
    wid = parse_id(wallet_id, "wallet_id")
    own(principal, wallet_customer(services, wid), "wallet")
    types = {t.value for t in type} if type else None
    page = await services.statements.entries(wid, after=cursor, limit=limit, types=types)
    spends = {e.spend_id for e in page.entries if e.spend_id}
    dimensions = await dimensions_of_spends(services.service.ledger, services.pool, spends)
    return w.EntriesOut(
        entries=[
            w.EntryOut(
                at=rfc3339_of_ns(e.at_ns),
                type=w.EntryType(e.type),
                account_id=sid(e.account_id),
                account_kind=w.AccountKind(e.account_kind),
                amount=e.amount,
                operation_id=sid(e.operation_id),
                available_after=e.available_after,
                held_after=e.held_after,
                overdraft_used_after=e.overdraft_used_after,
                dimensions=dimensions.get(e.spend_id, {}),
            )
            for e in page.entries
        ],
        next_cursor=page.next_cursor,
    )


# The query parameters of the entries route: litestar ignores others, this route refuses them.
_ENTRIES_QUERY = frozenset({"cursor", "limit", "type"})


ROUTES = [
    create_credit_type,
    get_credit_type,
    create_customer,
    get_customer,
    list_customers,
    create_resource,
    get_resource,
    list_resources,
    create_wallet,
    get_wallet,
    update_wallet,
    list_wallets,
    wallet_entries,
]
