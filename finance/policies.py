"""Breakage policies per product (credit type): the remote method (breakage at expiry) unless a
policy says `proportional` with a rate, for the blocks that take effect on or after its
`effective_from` (finance/posting.py reads them when it first sees a block; a block's method
never changes once the poster has seen it).

Invariant: a policy is never changed. Adding the same policy again (same product, date, method
and rate) answers it; another one at the same product and date is a conflict.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation

import psycopg

from grants.errors import Conflict, InvalidRequest
from ledger.clock import ns_of_datetime
from ledger.db import Pool
from ledger.limits import BUSINESS_TIME_NS_MAX, BUSINESS_TIME_NS_MIN
from ledger.repositories import finance as repo

METHODS = ("remote", "proportional")
RATE_CHARS_MAX = 32


def checked_effective_from(at: dt.datetime) -> dt.datetime:
    """A policy's start: an aware time the ledger can hold (as a grant's times)."""
    if at.tzinfo is None:
        raise InvalidRequest("effective_from needs a UTC offset", field="effective_from")
    at_ns = ns_of_datetime(at)
    if not BUSINESS_TIME_NS_MIN <= at_ns <= BUSINESS_TIME_NS_MAX:
        raise InvalidRequest(
            "effective_from is between 1970-01-01 and 2554-07-21 (UTC)", field="effective_from"
        )
    return at


def checked_rate(method: str, text: str) -> Decimal:
    """The rate of a policy: 0 for `remote`, in (0, 1) for `proportional`."""
    try:
        rate = Decimal(text) if len(text) <= RATE_CHARS_MAX else Decimal("NaN")
    except InvalidOperation:
        rate = Decimal("NaN")
    if not rate.is_finite():
        raise InvalidRequest(
            f"rate is a decimal of at most {RATE_CHARS_MAX} characters, such as '0.1'", field="rate"
        )
    if method not in METHODS:
        raise InvalidRequest(f"method {method!r} is not one of {METHODS}", field="method")
    if method == "remote" and rate != 0:
        raise InvalidRequest("the remote method has no rate (0)", field="rate")
    if method == "proportional" and not 0 < rate < 1:
        raise InvalidRequest("a proportional rate is between 0 and 1, exclusive", field="rate")
    return rate


async def add_breakage_policy(
    pool: Pool,
    *,
    credit_type_id: int,
    method: str,
    rate: Decimal,
    effective_from: dt.datetime,
    actor: str,
) -> tuple[repo.Policy, bool]:
    """(the policy, whether it is new)."""
    wanted = repo.Policy(credit_type_id, effective_from, method, rate)
    try:
        async with pool.connection() as conn, conn.transaction():
            await repo.add_policy(
                conn,
                credit_type_id=credit_type_id,
                effective_from=effective_from,
                method=method,
                rate=rate,
                actor=actor,
            )
        return wanted, True
    except psycopg.errors.UniqueViolation:
        pass
    async with pool.connection() as conn:
        existing = [
            p
            for p in await repo.policies(conn)
            if p.credit_type_id == credit_type_id and p.effective_from == effective_from
        ]
    if existing and existing[0].method == method and existing[0].rate == rate:
        return existing[0], False
    raise Conflict(
        "another breakage policy of this credit type takes effect at that time",
        field="effective_from",
    )
