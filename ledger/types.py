"""The engine's vocabulary: TigerBeetle's own dataclasses, flags, statuses and errors.

This is the one module of the project that imports the `tigerbeetle` package. Everything else,
the embedded engine included, takes these names from here, so that code above `ledger` speaks
exactly the client's types and cannot tell which engine answers.
"""

from __future__ import annotations

from typing import NamedTuple

from tigerbeetle import (
    AMOUNT_MAX,
    Account,
    AccountBalance,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    ClientAsync,
    ClientClosedError,
    ClientSync,
    CreateAccountResult,
    CreateAccountStatus,
    CreateTransferResult,
    CreateTransferStatus,
    IntegerOverflowError,
    QueryFilter,
    QueryFilterFlags,
    TooMuchDataError,
    Transfer,
    TransferFlags,
)
from tigerbeetle import id as new_id

__all__ = [
    "AMOUNT_MAX",
    "Account",
    "AccountBalance",
    "AccountFilter",
    "AccountFilterFlags",
    "AccountFlags",
    "ClientAsync",
    "ClientClosedError",
    "ClientSync",
    "CreateAccountResult",
    "CreateAccountStatus",
    "CreateTransferResult",
    "CreateTransferStatus",
    "IntegerOverflowError",
    "QueryFilter",
    "QueryFilterFlags",
    "TooMuchDataError",
    "Transfer",
    "TransferFlags",
    "new_id",
]


class TransferRecord(NamedTuple):
    """A transfer as a plain tuple, with `Transfer`'s field names (flags as an int): what the
    projection feed reads by the hundred thousand, where building `Transfer`s and their flag
    enums would cost more than the rest of the feed's work (`Ledger.query_transfer_records`)."""

    id: int
    debit_account_id: int
    credit_account_id: int
    amount: int
    pending_id: int
    user_data_128: int
    user_data_64: int
    user_data_32: int
    timeout: int
    ledger: int
    code: int
    flags: int
    timestamp: int


def transfer_record(t: Transfer) -> TransferRecord:
    return TransferRecord(
        t.id,
        t.debit_account_id,
        t.credit_account_id,
        t.amount,
        t.pending_id,
        t.user_data_128,
        t.user_data_64,
        t.user_data_32,
        t.timeout,
        t.ledger,
        t.code,
        int(t.flags),
        t.timestamp,
    )
