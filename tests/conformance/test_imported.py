"""Imported events (flags.imported): user-given timestamps in the past, for migrations.

Reference: the imported branch of `execute_create` (batch-level checks) and the timestamp blocks
of `create_account`, `create_transfer` in TigerBeetle's `src/state_machine.zig`. An imported
timestamp must be valid, in the past, later than every object of its kind, unused by any object,
and (for a transfer) later than both accounts.

The tests pick timestamps just after objects they have just created, after `advance` so that
the engine's clock (the cluster's wall clock, or the embedded ManualClock) is well past them.
On a cluster shared with other writers, an account or transfer created by someone else within
those few milliseconds would turn an expected `created` into `must_not_regress`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tigerbeetle import AccountFlags, CreateAccountStatus, CreateTransferStatus, TransferFlags

from ._helpers import (
    account,
    account_status,
    account_statuses,
    balances,
    create_accounts_ok,
    lookup_account,
    lookup_transfer,
    transfer,
    transfer_status,
    transfer_statuses,
)

A = CreateAccountStatus
T = CreateTransferStatus
IMPORTED_A = AccountFlags.IMPORTED
IMPORTED = TransferFlags.IMPORTED
STEP_S = 0.01
TIMESTAMP_MAX = (1 << 63) - 1


def _fresh_account(tb: Any, ledger_id: int, advance: Callable[[float], None]) -> tuple[int, int]:
    """Creates an account after a clock step; returns (id, timestamp)."""
    advance(STEP_S)
    a = account(ledger_id)
    (timestamp,) = create_accounts_ok(tb, [a])
    return a.id, timestamp


def test_imported_accounts_keep_their_timestamps(
    tb: Any, ledger_id: int, advance: Callable[[float], None]
) -> None:
    _, t_ref = _fresh_account(tb, ledger_id, advance)
    advance(STEP_S)
    first = account(ledger_id, flags=IMPORTED_A, timestamp=t_ref + 1)
    second = account(ledger_id, flags=IMPORTED_A, timestamp=t_ref + 5)
    results = tb.create_accounts([first, second])
    assert [(r.status, r.timestamp) for r in results] == [
        (A.CREATED, t_ref + 1),
        (A.CREATED, t_ref + 5),
    ]
    stored = lookup_account(tb, first.id)
    assert (stored.timestamp, stored.flags) == (t_ref + 1, IMPORTED_A)
    # Idempotency comes before the timestamp checks: any timestamp is fine for `exists`.
    (again,) = tb.create_accounts(
        [account(ledger_id, id=first.id, flags=IMPORTED_A, timestamp=t_ref + 3)]
    )
    assert (again.status, again.timestamp) == (A.EXISTS, t_ref + 1)


def test_imported_account_timestamp_must_not_regress(
    tb: Any, ledger_id: int, advance: Callable[[float], None]
) -> None:
    _, t_ref = _fresh_account(tb, ledger_id, advance)
    advance(STEP_S)
    assert account_status(tb, account(ledger_id, flags=IMPORTED_A, timestamp=t_ref)) == (
        A.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS
    )
    assert account_status(tb, account(ledger_id, flags=IMPORTED_A, timestamp=t_ref - 1)) == (
        A.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS
    )
    batch = [
        account(ledger_id, flags=IMPORTED_A, timestamp=t_ref + 10),
        account(ledger_id, flags=IMPORTED_A, timestamp=t_ref + 10),
        account(ledger_id, flags=IMPORTED_A, timestamp=t_ref + 9),
        account(ledger_id, flags=IMPORTED_A, timestamp=t_ref + 11),
    ]
    assert account_statuses(tb, batch) == [
        A.CREATED,
        A.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS,
        A.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS,
        A.CREATED,
    ]
    # Validation errors come before the regress check.
    assert account_status(tb, account(ledger_id, flags=IMPORTED_A, timestamp=t_ref, code=0)) == (
        A.CODE_MUST_NOT_BE_ZERO
    )


def test_imported_flag_must_match_the_first_event(tb: Any, ledger_id: int) -> None:
    assert account_statuses(
        tb, [account(ledger_id), account(ledger_id, flags=IMPORTED_A, timestamp=1)]
    ) == [A.CREATED, A.IMPORTED_EVENT_NOT_EXPECTED]
    assert account_statuses(
        tb, [account(ledger_id, flags=IMPORTED_A, timestamp=0), account(ledger_id)]
    ) == [A.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE, A.IMPORTED_EVENT_EXPECTED]


def test_imported_timestamp_range(tb: Any, ledger_id: int) -> None:
    assert account_status(tb, account(ledger_id, flags=IMPORTED_A, timestamp=0)) == (
        A.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE
    )
    assert account_status(tb, account(ledger_id, flags=IMPORTED_A, timestamp=1 << 63)) == (
        A.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE
    )
    assert account_status(tb, account(ledger_id, flags=IMPORTED_A, timestamp=TIMESTAMP_MAX)) == (
        A.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE
    )
    # Checked before the account itself.
    assert account_status(tb, account(0, id=0, flags=IMPORTED_A, timestamp=TIMESTAMP_MAX)) == (
        A.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE
    )


def test_imported_transfers(tb: Any, ledger_id: int, advance: Callable[[float], None]) -> None:
    early, t_early = _fresh_account(tb, ledger_id, advance)
    late, t_late = _fresh_account(tb, ledger_id, advance)
    advance(STEP_S)

    # Must postdate both accounts.
    assert (
        transfer_status(
            tb, transfer(early, late, 1, ledger_id, flags=IMPORTED, timestamp=t_early + 1)
        )
        == T.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_CREDIT_ACCOUNT
    )
    assert (
        transfer_status(
            tb, transfer(late, early, 1, ledger_id, flags=IMPORTED, timestamp=t_early + 1)
        )
        == T.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_DEBIT_ACCOUNT
    )
    # Must not reuse an account's timestamp (a regress, checked before the accounts' dates).
    assert (
        transfer_status(tb, transfer(late, early, 1, ledger_id, flags=IMPORTED, timestamp=t_late))
        == T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS
    )
    # Imported pending transfers cannot time out.
    assert (
        transfer_status(
            tb,
            transfer(
                early,
                late,
                1,
                ledger_id,
                flags=IMPORTED | TransferFlags.PENDING,
                timeout=10,
                timestamp=t_late + 1,
            ),
        )
        == T.IMPORTED_EVENT_TIMEOUT_MUST_BE_ZERO
    )

    imported = transfer(early, late, 7, ledger_id, flags=IMPORTED, timestamp=t_late + 1)
    results = tb.create_transfers([imported])
    assert [(r.status, r.timestamp) for r in results] == [(T.CREATED, t_late + 1)]
    assert lookup_transfer(tb, imported.id).timestamp == t_late + 1
    assert balances(tb, early) == (0, 7, 0, 0)
    assert transfer_status(tb, imported) == T.EXISTS

    assert transfer_statuses(
        tb,
        [
            transfer(early, late, 1, ledger_id, flags=IMPORTED, timestamp=t_late + 1),
            transfer(early, late, 1, ledger_id, flags=IMPORTED, timestamp=t_late + 2),
        ],
    ) == [T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS, T.CREATED]
    # An imported account must not take a transfer's timestamp either.
    assert account_status(tb, account(ledger_id, flags=IMPORTED_A, timestamp=t_late + 2)) == (
        A.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS
    )


def test_imported_transfer_batch_checks(tb: Any, ledger_id: int) -> None:
    dr = account(ledger_id)
    cr = account(ledger_id)
    create_accounts_ok(tb, [dr, cr])
    assert transfer_statuses(
        tb,
        [
            transfer(dr.id, cr.id, 1, ledger_id),
            transfer(dr.id, cr.id, 1, ledger_id, flags=IMPORTED, timestamp=1),
        ],
    ) == [T.CREATED, T.IMPORTED_EVENT_NOT_EXPECTED]
    assert transfer_statuses(
        tb,
        [
            transfer(dr.id, cr.id, 1, ledger_id, flags=IMPORTED, timestamp=1 << 63),
            transfer(dr.id, cr.id, 1, ledger_id),
            transfer(dr.id, cr.id, 1, ledger_id, flags=IMPORTED, timestamp=TIMESTAMP_MAX),
        ],
    ) == [
        T.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE,
        T.IMPORTED_EVENT_EXPECTED,
        T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE,
    ]
    # A non-imported transfer must carry a zero timestamp.
    assert transfer_status(tb, transfer(dr.id, cr.id, 1, ledger_id, timestamp=5)) == (
        T.TIMESTAMP_MUST_BE_ZERO
    )
    assert balances(tb, dr.id) == (0, 1, 0, 0)
