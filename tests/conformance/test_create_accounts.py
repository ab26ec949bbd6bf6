"""create_accounts and lookup_accounts: one result per event, validation order, idempotency.

Reference: `create_account` and `create_account_exists` in TigerBeetle's `src/state_machine.zig`,
and the batch loop `execute_create` (linked chains, imported events, `timestamp_must_be_zero`).
"""

from __future__ import annotations

import itertools
from typing import Any

from tigerbeetle import AccountFlags, CreateAccountStatus, CreateTransferStatus

from ._helpers import (
    ACCOUNT_CREATED,
    U32_MAX,
    U64_MAX,
    U128_MAX,
    account,
    account_status,
    account_statuses,
    create_accounts_ok,
    lookup_account,
    new_id,
    query_filter,
    transfer,
    transfer_status,
)

S = CreateAccountStatus


def test_created_account_is_stored_with_zero_balances(tb: Any, ledger_id: int) -> None:
    a = account(
        ledger_id,
        user_data_128=U128_MAX,
        user_data_64=U64_MAX,
        user_data_32=U32_MAX,
        code=65535,
        flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.HISTORY,
    )
    results = tb.create_accounts([a])
    assert len(results) == 1
    assert results[0].status == ACCOUNT_CREATED
    assert results[0].timestamp > 0

    stored = lookup_account(tb, a.id)
    assert stored.id == a.id
    assert (stored.user_data_128, stored.user_data_64, stored.user_data_32) == (
        U128_MAX,
        U64_MAX,
        U32_MAX,
    )
    assert (stored.ledger, stored.code) == (ledger_id, 65535)
    assert stored.flags == AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.HISTORY
    assert (
        stored.debits_pending,
        stored.debits_posted,
        stored.credits_pending,
        stored.credits_posted,
    ) == (0, 0, 0, 0)
    assert stored.timestamp == results[0].timestamp


def test_one_result_per_event_with_consecutive_timestamps(tb: Any, ledger_id: int) -> None:
    # Every event of a batch gets its own timestamp, the batch's events consecutive ones, failed
    # events included.
    accounts = [
        account(ledger_id),
        account(ledger_id, code=0),
        account(ledger_id),
        account(0),
        account(ledger_id),
    ]
    results = tb.create_accounts(accounts)
    assert [r.status for r in results] == [
        S.CREATED,
        S.CODE_MUST_NOT_BE_ZERO,
        S.CREATED,
        S.LEDGER_MUST_NOT_BE_ZERO,
        S.CREATED,
    ]
    timestamps = [r.timestamp for r in results]
    assert all(t > 0 for t in timestamps)
    assert timestamps == list(range(timestamps[0], timestamps[0] + len(accounts)))
    assert lookup_account(tb, accounts[2].id).timestamp == timestamps[2]


def test_timestamps_increase_across_requests(tb: Any, ledger_id: int) -> None:
    # Timestamps are unique across accounts and transfers, and later requests get later ones.
    first = create_accounts_ok(tb, [account(ledger_id) for _ in range(5)])
    second = create_accounts_ok(tb, [account(ledger_id) for _ in range(5)])
    ids = [a.id for a in tb.query_accounts(query_filter(ledger=ledger_id))]
    assert len(ids) == 10
    dr, cr = ids[0], ids[1]
    results = tb.create_transfers([transfer(dr, cr, 1, ledger_id) for _ in range(5)])
    third = [r.timestamp for r in results]
    fourth = create_accounts_ok(tb, [account(ledger_id) for _ in range(3)])
    timestamps = first + second + third + fourth
    assert all(a < b for a, b in itertools.pairwise(timestamps))


def test_empty_batch_returns_no_results(tb: Any) -> None:
    assert tb.create_accounts([]) == []


def test_id_must_not_be_zero(tb: Any, ledger_id: int) -> None:
    assert account_status(tb, account(ledger_id, id=0)) == S.ID_MUST_NOT_BE_ZERO


def test_id_must_not_be_int_max(tb: Any, ledger_id: int) -> None:
    assert account_status(tb, account(ledger_id, id=U128_MAX)) == S.ID_MUST_NOT_BE_INT_MAX
    assert tb.lookup_accounts([U128_MAX]) == []


def test_id_zero_takes_precedence_over_ledger_and_code_zero(tb: Any) -> None:
    assert account_status(tb, account(0, id=0, code=0)) == S.ID_MUST_NOT_BE_ZERO


def test_reserved_flag(tb: Any, ledger_id: int) -> None:
    flags = AccountFlags(1 << 6)
    assert account_status(tb, account(ledger_id, flags=flags)) == S.RESERVED_FLAG
    # Checked before the id.
    assert account_status(tb, account(ledger_id, id=0, flags=AccountFlags(1 << 15))) == (
        S.RESERVED_FLAG
    )


def test_timestamp_must_be_zero(tb: Any, ledger_id: int) -> None:
    a = account(ledger_id, timestamp=1)
    assert account_status(tb, a) == S.TIMESTAMP_MUST_BE_ZERO
    assert tb.lookup_accounts([a.id]) == []
    # The batch-level timestamp check runs before any check of the account itself.
    assert account_status(tb, account(0, id=0, timestamp=12345)) == S.TIMESTAMP_MUST_BE_ZERO


def test_flags_are_mutually_exclusive(tb: Any, ledger_id: int) -> None:
    flags = (
        AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
    )
    assert account_status(tb, account(ledger_id, flags=flags)) == S.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    # Checked before the balances, the ledger and the code.
    assert (
        account_status(tb, account(0, code=0, debits_posted=1, flags=flags))
        == S.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    )


def test_balances_must_be_zero_in_field_order(tb: Any, ledger_id: int) -> None:
    assert account_status(tb, account(ledger_id, debits_pending=1)) == (
        S.DEBITS_PENDING_MUST_BE_ZERO
    )
    assert account_status(tb, account(ledger_id, debits_posted=1)) == S.DEBITS_POSTED_MUST_BE_ZERO
    assert account_status(tb, account(ledger_id, credits_pending=1)) == (
        S.CREDITS_PENDING_MUST_BE_ZERO
    )
    assert account_status(tb, account(ledger_id, credits_posted=1)) == (
        S.CREDITS_POSTED_MUST_BE_ZERO
    )
    every_balance = account(
        0, code=0, debits_pending=1, debits_posted=1, credits_pending=1, credits_posted=1
    )
    assert account_status(tb, every_balance) == S.DEBITS_PENDING_MUST_BE_ZERO
    assert account_status(tb, account(0, code=0, credits_posted=U128_MAX)) == (
        S.CREDITS_POSTED_MUST_BE_ZERO
    )


def test_ledger_and_code_must_not_be_zero(tb: Any, ledger_id: int) -> None:
    assert account_status(tb, account(0)) == S.LEDGER_MUST_NOT_BE_ZERO
    assert account_status(tb, account(ledger_id, code=0)) == S.CODE_MUST_NOT_BE_ZERO
    assert account_status(tb, account(0, code=0)) == S.LEDGER_MUST_NOT_BE_ZERO


def test_exists_returns_the_original_timestamp(tb: Any, ledger_id: int) -> None:
    a = account(ledger_id, user_data_128=7, user_data_64=8, user_data_32=9)
    (created_at,) = create_accounts_ok(tb, [a])
    results = tb.create_accounts([a])
    assert [r.status for r in results] == [S.EXISTS]
    assert results[0].timestamp == created_at


def test_exists_within_the_same_batch(tb: Any, ledger_id: int) -> None:
    a = account(ledger_id)
    results = tb.create_accounts([a, a])
    assert [r.status for r in results] == [S.CREATED, S.EXISTS]
    assert results[1].timestamp == results[0].timestamp
    assert lookup_account(tb, a.id).timestamp == results[0].timestamp


def test_exists_with_different_fields_in_check_order(tb: Any, ledger_id: int) -> None:
    a = account(
        ledger_id,
        user_data_128=1,
        user_data_64=2,
        user_data_32=3,
        flags=AccountFlags.HISTORY,
    )
    create_accounts_ok(tb, [a])

    def again(**fields: Any) -> CreateAccountStatus:
        values = {
            "id": a.id,
            "user_data_128": a.user_data_128,
            "user_data_64": a.user_data_64,
            "user_data_32": a.user_data_32,
            "ledger": a.ledger,
            "code": a.code,
            "flags": a.flags,
        }
        values.update(fields)
        return account_status(tb, account(values.pop("ledger"), **values))

    assert again(flags=AccountFlags.NONE) == S.EXISTS_WITH_DIFFERENT_FLAGS
    assert again(user_data_128=100) == S.EXISTS_WITH_DIFFERENT_USER_DATA_128
    assert again(user_data_64=100) == S.EXISTS_WITH_DIFFERENT_USER_DATA_64
    assert again(user_data_32=100) == S.EXISTS_WITH_DIFFERENT_USER_DATA_32
    assert again(ledger=ledger_id ^ 1) == S.EXISTS_WITH_DIFFERENT_LEDGER
    assert again(code=a.code + 1) == S.EXISTS_WITH_DIFFERENT_CODE
    # Everything differs: the flags are compared first, then user data, ledger, code.
    assert (
        again(
            flags=AccountFlags.NONE,
            user_data_128=5,
            user_data_64=5,
            user_data_32=5,
            ledger=5,
            code=5,
        )
        == S.EXISTS_WITH_DIFFERENT_FLAGS
    )
    assert again(user_data_64=5, user_data_32=5, ledger=5, code=5) == (
        S.EXISTS_WITH_DIFFERENT_USER_DATA_64
    )
    assert again(ledger=ledger_id ^ 1, code=a.code + 1) == S.EXISTS_WITH_DIFFERENT_LEDGER
    assert again() == S.EXISTS
    # The stored account never changed.
    assert lookup_account(tb, a.id).user_data_128 == 1


def test_exists_checks_run_before_validation(tb: Any, ledger_id: int) -> None:
    a = account(ledger_id)
    create_accounts_ok(tb, [a])
    # Balances are not compared by the idempotency check, nor validated for an existing id.
    assert account_status(tb, account(ledger_id, id=a.id, debits_posted=5)) == S.EXISTS
    # A zero code or ledger on an existing id is a difference, not a validation error.
    assert account_status(tb, account(ledger_id, id=a.id, code=0)) == (S.EXISTS_WITH_DIFFERENT_CODE)
    assert account_status(tb, account(0, id=a.id)) == S.EXISTS_WITH_DIFFERENT_LEDGER
    both = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
    assert account_status(tb, account(ledger_id, id=a.id, flags=both)) == (
        S.EXISTS_WITH_DIFFERENT_FLAGS
    )
    # The reserved flag and the id checks still come first.
    assert account_status(tb, account(ledger_id, id=a.id, flags=AccountFlags(1 << 6))) == (
        S.RESERVED_FLAG
    )
    # So does the batch-level timestamp check.
    assert account_status(tb, account(ledger_id, id=a.id, timestamp=1)) == (
        S.TIMESTAMP_MUST_BE_ZERO
    )


def test_account_created_closed_rejects_transfers(tb: Any, ledger_id: int) -> None:
    closed = account(ledger_id, flags=AccountFlags.CLOSED)
    other = account(ledger_id)
    create_accounts_ok(tb, [closed, other])
    assert lookup_account(tb, closed.id).flags == AccountFlags.CLOSED
    assert transfer_status(tb, transfer(closed.id, other.id, 1, ledger_id)) == (
        CreateTransferStatus.DEBIT_ACCOUNT_ALREADY_CLOSED
    )
    assert transfer_status(tb, transfer(other.id, closed.id, 1, ledger_id)) == (
        CreateTransferStatus.CREDIT_ACCOUNT_ALREADY_CLOSED
    )


def test_lookup_accounts_skips_missing_ids_and_keeps_order(tb: Any, ledger_id: int) -> None:
    a, b = account(ledger_id), account(ledger_id)
    create_accounts_ok(tb, [a, b])
    missing = new_id()
    found = tb.lookup_accounts([b.id, missing, 0, a.id, U128_MAX, b.id])
    assert [x.id for x in found] == [b.id, a.id, b.id]
    assert tb.lookup_accounts([missing]) == []
    assert tb.lookup_accounts([]) == []


def test_failed_events_do_not_create_accounts(tb: Any, ledger_id: int) -> None:
    bad = [account(ledger_id, code=0), account(0), account(ledger_id, debits_posted=1)]
    assert account_statuses(tb, bad) == [
        S.CODE_MUST_NOT_BE_ZERO,
        S.LEDGER_MUST_NOT_BE_ZERO,
        S.DEBITS_POSTED_MUST_BE_ZERO,
    ]
    assert tb.lookup_accounts([a.id for a in bad]) == []
    # The ids are free: account creation failures are never transient.
    good = [account(ledger_id, id=a.id) for a in bad]
    assert account_statuses(tb, good) == [S.CREATED] * 3
