"""The engine's vocabulary: TigerBeetle's own dataclasses, flags, statuses and errors.

This is the one module of the project that imports the `tigerbeetle` package. Everything else,
the embedded engine included, takes these names from here, so that code above `ledger` speaks
exactly the client's types and cannot tell which engine answers.
"""

from __future__ import annotations

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
