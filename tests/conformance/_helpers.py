"""Builders and small assertions shared by the conformance tests.

Every object gets a fresh `tigerbeetle.id()`, because a real cluster keeps its state across tests.
"""

from __future__ import annotations

from typing import Any

import tigerbeetle
from tigerbeetle import (
    Account,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    CreateAccountResult,
    CreateAccountStatus,
    CreateTransferResult,
    CreateTransferStatus,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
    TransferFlags,
)

AMOUNT_MAX = tigerbeetle.AMOUNT_MAX
U128_MAX = (1 << 128) - 1
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
U16_MAX = (1 << 16) - 1
BATCH_EVENTS_MAX = 8189
CODE_DEFAULT = 10
# Timeouts for pending transfers, in seconds: short, so that the cluster engine sleeps briefly.
TIMEOUT_S_SHORT = 1
ADVANCE_S_PAST_SHORT = 1.5

ACCOUNT_CREATED = CreateAccountStatus.CREATED
TRANSFER_CREATED = CreateTransferStatus.CREATED


def new_id() -> int:
    return tigerbeetle.id()


def account(ledger: int, /, **fields: Any) -> Account:
    """An Account with a fresh id and code CODE_DEFAULT, unless `fields` say otherwise (`fields`
    may override any argument, `ledger` included)."""
    values: dict[str, Any] = {"id": new_id(), "ledger": ledger, "code": CODE_DEFAULT}
    values.update(fields)
    return Account(**values)


def transfer(
    debit_account_id: int, credit_account_id: int, amount: int, ledger: int, /, **fields: Any
) -> Transfer:
    """A Transfer with a fresh id and code CODE_DEFAULT, unless `fields` say otherwise (`fields`
    may override any argument)."""
    values: dict[str, Any] = {
        "id": new_id(),
        "debit_account_id": debit_account_id,
        "credit_account_id": credit_account_id,
        "amount": amount,
        "ledger": ledger,
        "code": CODE_DEFAULT,
    }
    values.update(fields)
    return Transfer(**values)


def post(pending: Transfer, amount: int = AMOUNT_MAX, /, **fields: Any) -> Transfer:
    """A transfer that posts `pending`; debit/credit account, ledger and code are left zero so
    that they are inherited from the pending transfer."""
    values: dict[str, Any] = {
        "id": new_id(),
        "pending_id": pending.id,
        "amount": amount,
        "flags": TransferFlags.POST_PENDING_TRANSFER,
    }
    values.update(fields)
    return Transfer(**values)


def void(pending: Transfer, amount: int = 0, /, **fields: Any) -> Transfer:
    """A transfer that voids `pending`, with fields inherited as for `post`."""
    values: dict[str, Any] = {
        "id": new_id(),
        "pending_id": pending.id,
        "amount": amount,
        "flags": TransferFlags.VOID_PENDING_TRANSFER,
    }
    values.update(fields)
    return Transfer(**values)


def create_accounts_ok(client: Any, accounts: list[Account]) -> list[int]:
    """Creates `accounts`, asserts each was created, and returns their timestamps."""
    results = client.create_accounts(accounts)
    statuses = [r.status for r in results]
    assert statuses == [ACCOUNT_CREATED] * len(accounts), statuses
    return [r.timestamp for r in results]


def new_accounts(client: Any, ledger: int, count: int = 2, **fields: Any) -> list[int]:
    """Creates `count` accounts on `ledger` (with `fields`) and returns their ids."""
    accounts = [account(ledger, **fields) for _ in range(count)]
    create_accounts_ok(client, accounts)
    return [a.id for a in accounts]


def create_transfers_ok(client: Any, transfers: list[Transfer]) -> list[int]:
    """Creates `transfers`, asserts each was created, and returns their timestamps."""
    results = client.create_transfers(transfers)
    statuses = [r.status for r in results]
    assert statuses == [TRANSFER_CREATED] * len(transfers), statuses
    return [r.timestamp for r in results]


def transfer_statuses(client: Any, transfers: list[Transfer]) -> list[CreateTransferStatus]:
    return [r.status for r in client.create_transfers(transfers)]


def transfer_status(client: Any, one: Transfer) -> CreateTransferStatus:
    results: list[CreateTransferResult] = client.create_transfers([one])
    assert len(results) == 1
    return results[0].status


def account_statuses(client: Any, accounts: list[Account]) -> list[CreateAccountStatus]:
    return [r.status for r in client.create_accounts(accounts)]


def account_status(client: Any, one: Account) -> CreateAccountStatus:
    results: list[CreateAccountResult] = client.create_accounts([one])
    assert len(results) == 1
    return results[0].status


def lookup_account(client: Any, account_id: int) -> Account:
    found: list[Account] = client.lookup_accounts([account_id])
    assert len(found) == 1, f"account {account_id} not found"
    return found[0]


def lookup_transfer(client: Any, transfer_id: int) -> Transfer:
    found: list[Transfer] = client.lookup_transfers([transfer_id])
    assert len(found) == 1, f"transfer {transfer_id} not found"
    return found[0]


def balances(client: Any, account_id: int) -> tuple[int, int, int, int]:
    """(debits_pending, debits_posted, credits_pending, credits_posted) of an account."""
    a = lookup_account(client, account_id)
    return (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)


def account_filter(account_id: int, /, **fields: Any) -> AccountFilter:
    """An AccountFilter over both debits and credits, limit BATCH_EVENTS_MAX, unless told."""
    values: dict[str, Any] = {
        "account_id": account_id,
        "user_data_128": 0,
        "user_data_64": 0,
        "user_data_32": 0,
        "code": 0,
        "timestamp_min": 0,
        "timestamp_max": 0,
        "limit": BATCH_EVENTS_MAX,
        "flags": AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS,
    }
    values.update(fields)
    return AccountFilter(**values)


def query_filter(**fields: Any) -> QueryFilter:
    """A QueryFilter with no condition, limit BATCH_EVENTS_MAX, unless told."""
    values: dict[str, Any] = {
        "user_data_128": 0,
        "user_data_64": 0,
        "user_data_32": 0,
        "ledger": 0,
        "code": 0,
        "timestamp_min": 0,
        "timestamp_max": 0,
        "limit": BATCH_EVENTS_MAX,
        "flags": QueryFilterFlags.NONE,
    }
    values.update(fields)
    return QueryFilter(**values)


__all__ = [
    "ACCOUNT_CREATED",
    "ADVANCE_S_PAST_SHORT",
    "AMOUNT_MAX",
    "BATCH_EVENTS_MAX",
    "CODE_DEFAULT",
    "TIMEOUT_S_SHORT",
    "TRANSFER_CREATED",
    "U16_MAX",
    "U32_MAX",
    "U64_MAX",
    "U128_MAX",
    "AccountFlags",
    "TransferFlags",
    "account",
    "account_filter",
    "account_status",
    "account_statuses",
    "balances",
    "create_accounts_ok",
    "create_transfers_ok",
    "lookup_account",
    "lookup_transfer",
    "new_accounts",
    "new_id",
    "post",
    "query_filter",
    "transfer",
    "transfer_status",
    "transfer_statuses",
    "void",
]
