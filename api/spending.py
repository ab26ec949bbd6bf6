"""The spending operations (check, debit, batch, reserve, settle, release), framework-free.

Each takes the services, the authenticated principal, the Idempotency-Key and the decoded body,
and returns a `Reply`; a refusal is a `CreditError`. The hot lane (`api.lane`) calls them on
every request; the litestar routes of the same paths call them too, so both doors behave alike.
None of them touches Postgres: their idempotency rides on TigerBeetle.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

from credit_ledger_client import schemas as w

from api.auth import Principal
from api.common import amount_of, funding, ledger_of, own, parse_id, sid, target, wallet_customer
from api.errors import STATUS
from api.services import Services
from grants.errors import CreditError, InvalidRequest
from ledger.clock import ns_of_datetime
from wallets import chains
from wallets.chains import Overage
from wallets.service import DebitRequest, DebitResult

R = TypeVar("R")

# The scopes each operation needs, read by both doors (the litestar routes and the hot lane).
_RUNTIME = frozenset({"runtime"})
SCOPES: dict[str, frozenset[str]] = {
    "check": frozenset({"runtime", "admin"}),
    "debit": _RUNTIME,
    "debit_batch": _RUNTIME,
    "reserve": _RUNTIME,
    "settle": _RUNTIME,
    "release": _RUNTIME,
}


class Reply(NamedTuple):
    body: Any  # a schemas struct
    status: int = 200
    replayed: bool = False


async def check(services: Services, principal: Principal, data: w.SpendIn) -> Reply:
    ledger = ledger_of(services, data.credit_type)
    resource_id, wallet_id = target(services, principal, data)
    amount = amount_of(services, ledger, data.amount, data.usage)
    result = await services.service.check(
        amount=amount, ledger=ledger, resource_id=resource_id, wallet_id=wallet_id
    )
    services.metrics.decision("check", "allowed" if result.allowed else str(result.reason))
    return Reply(
        w.CheckOut(
            allowed=result.allowed,
            reason=result.reason,
            amount=result.amount,
            available=result.available,
            reserved=result.reserved,
            overdraft_headroom=result.overdraft_headroom,
            budgets=[
                w.BudgetHeadroomOut(
                    budget_id=sid(b.budget_id),
                    resource_id=sid(b.resource_id),
                    cap=b.cap,
                    used=b.used,
                    headroom=b.headroom,
                    blocking=b.blocking,
                )
                for b in result.budgets
            ],
            would_fund=funding(result.would_fund),
        )
    )


def _debit_out(result: DebitResult) -> w.DebitOut:
    return w.DebitOut(
        id=sid(result.operation_id), amount=result.amount, funded_by=funding(result.funded_by)
    )


async def _enrich_refusal(
    services: Services,
    error: CreditError,
    ledger: int,
    resource_id: int | None,
    wallet_id: int | None,
) -> None:
    """A 402 says what was available: one read, only on the refusal path. Not on a replay: the
    refusal stored under the key was decided earlier, and what is available now (perhaps
    enough, after a top-up) would contradict it."""
    if error.code != "insufficient_credits" or error.replayed:
        return
    check = await services.service.check(
        amount=1, ledger=ledger, resource_id=resource_id, wallet_id=wallet_id
    )
    error.details["available"] = check.available


def occurred_ns(services: Services, occurred_at: dt.datetime | None) -> int | None:
    """A spend's occurred_at in ns, within the range the service accepts (checked before its
    price is looked up, so that a time out of range is said as such)."""
    if occurred_at is None:
        return None
    at_ns = ns_of_datetime(occurred_at)
    services.service.occurred(at_ns, services.service.clock_ns())
    return at_ns


async def _spend(
    services: Services,
    principal: Principal,
    data: w.SpendIn,
    operation: str,
    spend: Callable[[int, int | None, int | None, int], Awaitable[R]],
    at_ns: int | None = None,
) -> R:
    """Resolves a debit's or a reservation's target and amount, runs `spend(ledger,
    resource_id, wallet_id, amount)`, and counts the decision; a refusal for lack of credits
    says what was available."""
    ledger = ledger_of(services, data.credit_type)
    resource_id, wallet_id = target(services, principal, data)
    amount = amount_of(services, ledger, data.amount, data.usage, at_ns)
    try:
        result = await spend(ledger, resource_id, wallet_id, amount)
    except CreditError as error:
        services.metrics.decision(operation, error.code)
        await _enrich_refusal(services, error, ledger, resource_id, wallet_id)
        raise
    services.metrics.decision(operation, "ok")
    return result


async def debit(services: Services, principal: Principal, key: str, data: w.DebitIn) -> Reply:
    occurred_at_ns = occurred_ns(services, data.occurred_at)
    result = await _spend(
        services,
        principal,
        data,
        "debit",
        lambda ledger, resource_id, wallet_id, amount: services.service.debit(
            tenant=principal.tenant,
            key=key,
            amount=amount,
            ledger=ledger,
            resource_id=resource_id,
            wallet_id=wallet_id,
            dimensions=data.dimensions,
            occurred_at_ns=occurred_at_ns,
        ),
        occurred_at_ns,
    )
    return Reply(_debit_out(result), 201, result.replayed)


async def debit_batch(services: Services, principal: Principal, data: w.BatchIn) -> Reply:
    """Every debit with its own key and result; the valid ones in one engine request."""
    _check_shapes(data.debits)
    requests: list[DebitRequest | CreditError] = []
    # Where each (credit type, resource, wallet) spends, resolved once per batch: a batch
    # usually names a few, many times.
    resolved: dict[tuple[str, str | None, str | None], tuple[int, int | None, int | None]] = {}
    for item in data.debits:
        try:
            where = (item.credit_type, item.resource_id, item.wallet_id)
            found = resolved.get(where)
            if found is None:
                ledger = ledger_of(services, item.credit_type)
                found = resolved[where] = (ledger, *target(services, principal, item))
            ledger, resource_id, wallet_id = found
            occurred_at_ns = occurred_ns(services, item.occurred_at)
            amount = amount_of(services, ledger, item.amount, item.usage, occurred_at_ns)
            requests.append(
                DebitRequest(
                    principal.tenant,
                    item.idempotency_key,
                    amount,
                    ledger,
                    resource_id,
                    wallet_id,
                    None,
                    item.dimensions,
                    occurred_at_ns,
                )
            )
        except CreditError as error:
            requests.append(error)
    valid = [r for r in requests if isinstance(r, DebitRequest)]
    outcomes = iter(await services.service.debit_many(valid))
    results = []
    tally: dict[str, int] = {}
    for item, prepared in zip(data.debits, requests, strict=True):
        outcome = prepared if isinstance(prepared, CreditError) else next(outcomes)
        if isinstance(outcome, CreditError):
            tally[outcome.code] = tally.get(outcome.code, 0) + 1
            results.append(
                w.BatchResultOut(
                    idempotency_key=item.idempotency_key,
                    status=STATUS[outcome.code],
                    error=w.BatchErrorOut(code=outcome.code, detail=outcome.message),
                    replayed=outcome.replayed,
                )
            )
        else:
            tally["ok"] = tally.get("ok", 0) + 1
            results.append(
                w.BatchResultOut(
                    idempotency_key=item.idempotency_key,
                    status=201,
                    debit=_debit_out(outcome),
                    replayed=outcome.replayed,
                )
            )
    for outcome_code, count in tally.items():
        services.metrics.decision("debit", outcome_code, count)
    return Reply(w.BatchOut(results=results))


def _check_shapes(debits: list[w.BatchDebitIn]) -> None:
    """Each debit of a batch names exactly one target and one amount or usage, as the
    document's schema says: an item that does not is malformed, and refuses the whole batch
    like any other malformed item (what exists and what it costs are answered item by item)."""
    for i, item in enumerate(debits):
        if (item.resource_id is None) == (item.wallet_id is None):
            raise InvalidRequest(
                "name exactly one of resource_id and wallet_id", field=f"debits[{i}].resource_id"
            )
        if (item.amount is None) == (item.usage is None):
            raise InvalidRequest(
                "give exactly one of amount and usage", field=f"debits[{i}].amount"
            )


async def reserve(services: Services, principal: Principal, key: str, data: w.ReserveIn) -> Reply:
    result = await _spend(
        services,
        principal,
        data,
        "reserve",
        lambda ledger, resource_id, wallet_id, amount: services.service.reserve(
            tenant=principal.tenant,
            key=key,
            amount=amount,
            ledger=ledger,
            timeout_s=data.timeout_s,
            resource_id=resource_id,
            wallet_id=wallet_id,
            dimensions=data.dimensions,
        ),
    )
    body = w.ReservationOut(
        id=sid(result.reservation_id),
        amount=result.amount,
        timeout_s=result.timeout_s,
        funded_by=funding(result.funded_by),
    )
    return Reply(body, 201, result.replayed)


async def reservation_legs(
    services: Services, principal: Principal, reservation_id: int
) -> list[Any]:
    """The reservation's legs, after checking the customer boundary (404 across it)."""
    legs = await services.service.reservation(reservation_id)
    own(principal, wallet_customer(services, legs[chains.SETUP].user_data_128), "reservation")
    return legs


async def settle(
    services: Services, principal: Principal, key: str, reservation_id: str, data: w.SettleIn
) -> Reply:
    rid = parse_id(reservation_id, "reservation_id")
    legs = await reservation_legs(services, principal, rid)
    amount = data.amount
    occurred_at_ns = occurred_ns(services, data.occurred_at)
    if data.usage is not None:
        if data.amount is not None:
            raise InvalidRequest("give amount or usage, not both", field="amount")
        ledger = legs[chains.SETUP].ledger
        amount = amount_of(services, ledger, None, data.usage, occurred_at_ns)
    if amount is None:
        raise InvalidRequest("give amount or usage", field="amount")
    try:
        result = await services.service.settle(
            tenant=principal.tenant,
            key=key,
            reservation_id=rid,
            amount=amount,
            policy=Overage(data.overage.value),
            legs=legs,
            occurred_at_ns=occurred_at_ns,
        )
    except CreditError as error:  # an overage refused under `reject` says what was available
        services.metrics.decision("settle", error.code)
        wallet_id = legs[chains.SETUP].user_data_128
        await _enrich_refusal(services, error, legs[chains.SETUP].ledger, None, wallet_id)
        raise
    services.metrics.decision("settle", "fallback" if result.fallback_debit else "ok")
    body = w.SettleOut(
        reservation_id=reservation_id,
        id=sid(result.operation_id),
        requested=result.requested,
        collected=result.collected,
        released=result.released,
        overage=result.overage,
        overage_collected=result.overage_collected,
        overage_uncollected=result.overage_uncollected,
        policy=result.policy,
        fallback_debit=result.fallback_debit,
    )
    return Reply(body, 200, result.replayed)


async def release(services: Services, principal: Principal, key: str, reservation_id: str) -> Reply:
    rid = parse_id(reservation_id, "reservation_id")
    legs = await reservation_legs(services, principal, rid)
    result = await services.service.release(
        tenant=principal.tenant, key=key, reservation_id=rid, legs=legs
    )
    body = w.ReleaseOut(
        reservation_id=reservation_id, id=sid(result.operation_id), released=result.released
    )
    return Reply(body, 200, result.replayed)
