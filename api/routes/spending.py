"""The litestar door of the spending routes: check, debits, reservations. The hot lane (`api.lane`)
answers these paths before litestar routes them; these handlers declare them for the OpenAPI
document and serve them when the lane is off. Both call `api.spending` and decode the body once,
strictly.
"""

from __future__ import annotations

from typing import Any

from credit_ledger_client import schemas as w
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath

from api import spending
from api.auth import READ_SCOPES
from api.common import (
    funding,
    own,
    parse_id,
    sid,
    wallet_customer,
)
from api.openapi import COMMON, WRITE, operation
from api.paging import decode_cursor, encode_cursor
from api.routes.shared import (
    EXAMPLE_SPEND,
    READ_PROBLEMS,
    RESERVATION_PROBLEMS,
    SPENDING_PROBLEMS,
    documented_body,
    json_body,
    key_of,
    principal_of,
    query_of,
    send,
    services_of,
    strict_body,
)
from grants.errors import NotFound
from ledger.codes import TransferCode
from ledger.limits import TIMESTAMP_MAX
from wallets import chains
from wallets.reservations import wallet_reservations
from wallets.service import Funding
from wallets.statements import ReservationView, reservation_status

OPS = {
    "check": operation(*SPENDING_PROBLEMS, idempotent=False, example=EXAMPLE_SPEND),
    "debit": operation(*SPENDING_PROBLEMS, example=EXAMPLE_SPEND),
    "debit_batch": operation(
        *SPENDING_PROBLEMS,
        idempotent=False,
        example={"debits": [{**EXAMPLE_SPEND, "idempotency_key": "usage-1"}]},
    ),
    "reserve": operation(*SPENDING_PROBLEMS, example={**EXAMPLE_SPEND, "timeout_s": 60}),
    "settle": operation(
        *SPENDING_PROBLEMS, *RESERVATION_PROBLEMS, example={"amount": 120, "overage": "cap"}
    ),
    "release": operation(*COMMON, *WRITE, "not_found", *RESERVATION_PROBLEMS),
    "get_reservation": operation(*READ_PROBLEMS, idempotent=False),
    "list_reservations": operation(*READ_PROBLEMS, idempotent=False, query=w.ReservationQuery),
}


@post(
    "/v1/check",
    operation_class=OPS["check"],
    dependencies=documented_body(w.SpendIn),
    opt={"scopes": spending.SCOPES["check"]},
    status_code=200,
    tags=["spending"],
    description="What a debit would do now: allowed or not with the reason, available, "
    "reserved, the overdraft headroom, every budget's headroom (and which blocks) "
    "and the grants that would fund it. Changes nothing.",
)
async def check(request: Request[Any, Any, Any], state: State) -> Response[w.CheckOut]:
    body = await strict_body(request, w.SpendIn)
    return send(await spending.check(services_of(state), principal_of(request), body))


@post(
    "/v1/debits",
    operation_class=OPS["debit"],
    dependencies=documented_body(w.DebitIn),
    opt={"scopes": spending.SCOPES["debit"]},
    status_code=201,
    tags=["spending"],
    description="Debit an amount (or a priced usage) in one step: the resource's spend path "
    "(own grants in burn order, the parent's when the wallet falls through, the "
    "overdraft) drained up to exactly the amount, with every budget on the path, "
    "or nothing. 402 insufficient_credits or budget_exceeded when it cannot. "
    "`occurred_at`, when given, is the debit's accounting date (its entries' effective time, "
    "and the instant its spend path and price are taken at).",
)
async def debit(request: Request[Any, Any, Any], state: State) -> Response[w.DebitOut]:
    principal = principal_of(request)
    body = await strict_body(request, w.DebitIn)
    return send(await spending.debit(services_of(state), principal, key_of(request), body))


@post(
    "/v1/debits/batch",
    operation_class=OPS["debit_batch"],
    dependencies=documented_body(w.BatchIn),
    opt={"scopes": spending.SCOPES["debit_batch"]},
    status_code=200,
    tags=["spending"],
    description="Many debits in one call (usage ingestion), each with its own idempotency "
    "key and its own result: one engine request for all of them. At most 1000. Each may "
    "carry its own `occurred_at`.",
)
async def debit_batch(request: Request[Any, Any, Any], state: State) -> Response[w.BatchOut]:
    body = await strict_body(request, w.BatchIn)
    return send(await spending.debit_batch(services_of(state), principal_of(request), body))


@post(
    "/v1/reservations",
    operation_class=OPS["reserve"],
    dependencies=documented_body(w.ReserveIn),
    opt={"scopes": spending.SCOPES["reserve"]},
    status_code=201,
    tags=["spending"],
    description="Reserve an amount before a billable call: the same chain as a debit, as "
    "pending transfers that TigerBeetle releases by itself after timeout_s "
    "(default 3600, at most 86400).",
)
async def reserve(request: Request[Any, Any, Any], state: State) -> Response[w.ReservationOut]:
    principal = principal_of(request)
    body = await strict_body(request, w.ReserveIn)
    return send(await spending.reserve(services_of(state), principal, key_of(request), body))


@post(
    "/v1/reservations/{reservation_id:str}/settle",
    operation_class=OPS["settle"],
    dependencies=documented_body(w.SettleIn),
    opt={"scopes": spending.SCOPES["settle"]},
    status_code=200,
    tags=["spending"],
    description="Settle with the measured cost: up to the reserved amount the legs are "
    "posted in burn order and the rest released; beyond it the overage is "
    "collected under `overage` (reject, cap (default), overdraft). After the "
    "timeout it falls back to a direct debit and says so. `occurred_at`, when given, is the "
    "settle's accounting date (the effective time of everything it writes).",
)
async def settle(
    request: Request[Any, Any, Any],
    state: State,
    reservation_id: FromPath[str],
) -> Response[w.SettleOut]:
    principal = principal_of(request)
    body = await strict_body(request, w.SettleIn)
    key = key_of(request)
    return send(await spending.settle(services_of(state), principal, key, reservation_id, body))


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
    principal = principal_of(request)
    await json_body(request)  # none is needed; one given must be JSON, as at the hot lane
    key = key_of(request)
    return send(await spending.release(services_of(state), principal, key, reservation_id))


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
    principal = principal_of(request)
    services = services_of(state)
    rid = parse_id(reservation_id, "reservation_id")
    await spending.reservation_legs(services, principal, rid)
    # The service's clock, the one its spends and the engine's timeouts are judged by.
    view = await reservation_status(services.service.ledger, rid, services.service.clock_ns())
    return _reservation_out(reservation_id, view)


def _reservation_out(reservation_id: str, view: ReservationView) -> w.ReservationOut:
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


@get(
    "/v1/reservations",
    operation_class=OPS["list_reservations"],
    opt={"scopes": READ_SCOPES},
    tags=["spending"],
    description="A wallet's reservations, oldest first, with their status (held, settled, "
    "released, expired), read from the ledger itself, so a reservation is listed as soon as "
    "it is made. `wallet_id` is required; `status` filters. A page examines a bounded number "
    "of reservations, so with a status filter it may hold fewer than `limit`: go on while "
    "next_cursor is not null.",
)
async def list_reservations(request: Request[Any, Any, Any], state: State) -> w.ReservationPage:
    principal = principal_of(request)
    query = query_of(request, w.ReservationQuery)
    services = services_of(state)
    wallet_id = parse_id(query.wallet_id, "wallet_id")
    wallet = services.catalog.wallets.get(wallet_id)
    if wallet is None:
        raise NotFound("wallet not found")
    own(principal, wallet_customer(services, wallet_id), "wallet")
    # A cursor is a set-up leg's timestamp: the next page starts one nanosecond later.
    after = decode_cursor(query.cursor, "reservations", 1, (TIMESTAMP_MAX - 1,))
    page = await wallet_reservations(
        services.service.ledger,
        wallet,
        after_ns=after[0] if after else 0,
        limit=query.limit,
        status=query.status.value if query.status else None,
        now_ns=services.service.clock_ns(),
    )
    return w.ReservationPage(
        items=[_reservation_out(sid(rid), view) for rid, view in page.items],
        next_cursor=(
            encode_cursor("reservations", page.next_after_ns) if page.next_after_ns else None
        ),
    )


ROUTES = [
    check,
    debit,
    debit_batch,
    reserve,
    settle,
    release,
    get_reservation,
    list_reservations,
]
