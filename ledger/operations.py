"""Operations on the ledger: the header-first chains every mutation of the service is made of.

An operation is one call of a caller (a debit, a reservation, a grant, a refund), named by an
id derived from the caller's tenant and idempotency key. Its events are numbered: event `i` has
the id `leg_id(operation id, i)`, so a retry derives the same ids and TigerBeetle answers
`exists` for what an earlier attempt applied (ledger/README.md, "The operation header and
idempotency"). The spending chains (`wallets.chains`) and the credit-block operations
(`grants.service`) are both built from the pieces here.

Invariants:
- Event 0 is the header: amount 0 between the two header accounts of the ledger, with the
  request's fingerprint in `user_data_128` and every other field a function of the key alone,
  so another body under the same key comes back `exists_with_different_*`.
- Every other event carries the operation id in `user_data_128`, the business effective time
  in `user_data_64` and the tenant in `user_data_32`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import msgspec

from ledger.client import Ledger
from ledger.codes import AccountCode, TransferCode
from ledger.ids import leg_id, leg_ids, request_fingerprint, system_account_id
from ledger.types import Transfer, TransferFlags

# The fixed layout of a drain chain's first events (ledger/README.md, "Drain chains").
HEADER = 0
NORMALIZE = 1
SETUP = 2
CHECK = 3
FIRST_VARIABLE = 4

LINKED = TransferFlags.LINKED


class Operation(msgspec.Struct, frozen=True):
    """Who asks and under which key: the fields every leg of a chain carries."""

    id: int  # derived from the tenant and the idempotency key
    fingerprint: int  # of the request body
    ledger: int
    tenant: int
    effective_at_ns: int


def fingerprint_of(*parts: int | str) -> int:
    """The fingerprint of a request: its kind and every field that changes its effect."""
    return request_fingerprint("\x1f".join([f"{type(p).__name__}:{p}" for p in parts]).encode())


@functools.lru_cache(maxsize=4096)
def system_account(ledger: int, code: AccountCode) -> int:
    """`system_account_id`, cached: chains name the same few accounts on every request."""
    return system_account_id(ledger, code)


def make_leg(
    op: Operation,
    index: int,
    debit: int,
    credit: int,
    amount: int,
    code: TransferCode,
    flags: TransferFlags,
    timeout_s: int = 0,
    ids: Sequence[int] | None = None,
) -> Transfer:
    """Event `index` of `op`'s chain; `ids`, when given, are the chain's leg ids by index."""
    # Positional, in `Transfer`'s field order (a unit test pins it): a third of the cost of
    # keywords, for every event of every chain.
    return Transfer(
        leg_id(op.id, index) if ids is None else ids[index],
        debit,
        credit,
        amount,
        0,  # pending_id
        op.id,  # user_data_128
        op.effective_at_ns,  # user_data_64
        op.tenant,  # user_data_32
        timeout_s,
        op.ledger,
        code,
        flags,
    )


def header(op: Operation, ids: Sequence[int] | None = None) -> Transfer:
    """Event 0. Every field but `user_data_128` depends only on the key, so that a replay is
    `exists` and another body under the same key is `exists_with_different_user_data_128`."""
    return Transfer(  # positional, in `Transfer`'s field order, as in `make_leg`
        leg_id(op.id, HEADER) if ids is None else ids[HEADER],
        system_account(op.ledger, AccountCode.OPERATION_HEADER_DEBIT),
        system_account(op.ledger, AccountCode.OPERATION_HEADER_CREDIT),
        0,  # amount
        0,  # pending_id
        op.fingerprint,  # user_data_128
        0,  # user_data_64
        op.tenant,  # user_data_32
        0,  # timeout
        op.ledger,
        TransferCode.OPERATION_HEADER,
        LINKED,
    )


def close_chain(chain: list[Transfer]) -> list[Transfer]:
    """Ends a linked chain: its last event is not linked."""
    chain[-1].flags &= ~LINKED
    return chain


BLANK = Transfer()


async def read_legs(
    ledger: Ledger,
    op_id: int,
    count: int,
    *,
    used: int | None = None,
    also: Sequence[int] = (),
) -> list[Transfer]:
    """An operation's events 0..count-1 by index, `BLANK` (id 0) where there is none. `used`:
    the chain is known to have only its first that many events, and those in `also` (fixed
    indexes past them), so only those are looked up."""
    if used is None:
        indexes: Sequence[int] = range(count)
    else:
        indexes = [*range(min(used, count)), *(i for i in also if used <= i < count)]
    ids = leg_ids(op_id, indexes)
    found = {t.id: t for t in await ledger.lookup_transfers(ids)}
    legs = [BLANK] * count
    for index, transfer_id in zip(indexes, ids, strict=True):
        transfer = found.get(transfer_id)
        if transfer is not None:
            legs[index] = transfer
    return legs
