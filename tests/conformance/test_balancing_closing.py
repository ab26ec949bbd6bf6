"""Balancing transfers (flags.balancing_debit / balancing_credit) and closing transfers
(flags.closing_debit / closing_credit).

Reference: the `amount_actual` block and the closing block of `create_transfer`, the balancing
special case of `create_transfer_exists`, and the closed-account checks of
`post_or_void_pending_transfer` in TigerBeetle's `src/state_machine.zig`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tigerbeetle import AccountFlags, CreateTransferStatus, TransferFlags

from ._helpers import (
    ADVANCE_S_PAST_SHORT,
    AMOUNT_MAX,
    TIMEOUT_S_SHORT,
    balances,
    create_transfers_ok,
    lookup_account,
    lookup_transfer,
    new_accounts,
    post,
    transfer,
    transfer_status,
    transfer_statuses,
    void,
)

S = CreateTransferStatus
DMNEC = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
CMNED = AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
BAL_DR = TransferFlags.BALANCING_DEBIT
BAL_CR = TransferFlags.BALANCING_CREDIT
PENDING = TransferFlags.PENDING
CLOSE_DR = TransferFlags.CLOSING_DEBIT
CLOSE_CR = TransferFlags.CLOSING_CREDIT


def _funded_debit_account(
    tb: Any, ledger_id: int, credits: int, flags: AccountFlags = DMNEC
) -> tuple[int, int]:
    """An account with `credits` posted credits (and `flags`), and the account that funded it."""
    (source,) = new_accounts(tb, ledger_id, count=1)
    (funded,) = new_accounts(tb, ledger_id, count=1, flags=flags)
    if credits:
        create_transfers_ok(tb, [transfer(source, funded, credits, ledger_id)])
    return funded, source


def _funded_credit_account(tb: Any, ledger_id: int, debits: int) -> tuple[int, int]:
    """A credits_must_not_exceed_debits account with `debits` posted debits, and its sink."""
    (sink,) = new_accounts(tb, ledger_id, count=1)
    (funded,) = new_accounts(tb, ledger_id, count=1, flags=CMNED)
    if debits:
        create_transfers_ok(tb, [transfer(funded, sink, debits, ledger_id)])
    return funded, sink


def _balancing(tb: Any, t: Any) -> int:
    """Creates `t` and returns the amount that was recorded."""
    create_transfers_ok(tb, [t])
    return int(lookup_transfer(tb, t.id).amount)


def test_balancing_debit_takes_what_is_available(tb: Any, ledger_id: int) -> None:
    a, _ = _funded_debit_account(tb, ledger_id, 100)
    (sink,) = new_accounts(tb, ledger_id, count=1)
    assert _balancing(tb, transfer(a, sink, 30, ledger_id, flags=BAL_DR)) == 30
    assert _balancing(tb, transfer(a, sink, AMOUNT_MAX, ledger_id, flags=BAL_DR)) == 70
    assert balances(tb, a) == (0, 100, 0, 100)
    # Nothing left: a balancing transfer of zero is recorded, not refused.
    assert _balancing(tb, transfer(a, sink, AMOUNT_MAX, ledger_id, flags=BAL_DR)) == 0
    assert balances(tb, a) == (0, 100, 0, 100)


def test_balancing_debit_without_limit_flag_uses_the_credit_balance(
    tb: Any, ledger_id: int
) -> None:
    a, _ = _funded_debit_account(tb, ledger_id, 50, flags=AccountFlags.NONE)
    (sink,) = new_accounts(tb, ledger_id, count=1)
    assert _balancing(tb, transfer(a, sink, 80, ledger_id, flags=BAL_DR)) == 50
    assert _balancing(tb, transfer(a, sink, 80, ledger_id, flags=BAL_DR)) == 0
    # A plain transfer can still overdraw it.
    create_transfers_ok(tb, [transfer(a, sink, 80, ledger_id)])
    assert _balancing(tb, transfer(a, sink, 80, ledger_id, flags=BAL_DR)) == 0


def test_balancing_amount_zero_moves_nothing(tb: Any, ledger_id: int) -> None:
    a, _ = _funded_debit_account(tb, ledger_id, 100)
    (sink,) = new_accounts(tb, ledger_id, count=1)
    assert _balancing(tb, transfer(a, sink, 0, ledger_id, flags=BAL_DR)) == 0
    assert balances(tb, a) == (0, 0, 0, 100)


def test_balancing_credit_takes_what_is_available(tb: Any, ledger_id: int) -> None:
    b, _ = _funded_credit_account(tb, ledger_id, 100)
    (source,) = new_accounts(tb, ledger_id, count=1)
    assert _balancing(tb, transfer(source, b, 25, ledger_id, flags=BAL_CR)) == 25
    assert _balancing(tb, transfer(source, b, AMOUNT_MAX, ledger_id, flags=BAL_CR)) == 75
    assert _balancing(tb, transfer(source, b, AMOUNT_MAX, ledger_id, flags=BAL_CR)) == 0
    assert balances(tb, b) == (0, 100, 0, 100)


def test_balancing_debit_and_credit_together_take_the_smaller(tb: Any, ledger_id: int) -> None:
    a, _ = _funded_debit_account(tb, ledger_id, 70)
    b, _ = _funded_credit_account(tb, ledger_id, 40)
    both = BAL_DR | BAL_CR
    assert _balancing(tb, transfer(a, b, AMOUNT_MAX, ledger_id, flags=both)) == 40
    assert balances(tb, a) == (0, 40, 0, 70)
    assert balances(tb, b) == (0, 40, 0, 40)
    assert _balancing(tb, transfer(a, b, AMOUNT_MAX, ledger_id, flags=both)) == 0

    a2, _ = _funded_debit_account(tb, ledger_id, 10)
    b2, _ = _funded_credit_account(tb, ledger_id, 40)
    assert _balancing(tb, transfer(a2, b2, 35, ledger_id, flags=both)) == 10


def test_balancing_debit_alone_still_checks_the_credit_account(tb: Any, ledger_id: int) -> None:
    a, _ = _funded_debit_account(tb, ledger_id, 100)
    b, _ = _funded_credit_account(tb, ledger_id, 0)
    assert transfer_status(tb, transfer(a, b, AMOUNT_MAX, ledger_id, flags=BAL_DR)) == (
        S.EXCEEDS_DEBITS
    )


def test_balancing_counts_and_creates_pending_amounts(tb: Any, ledger_id: int) -> None:
    a, _ = _funded_debit_account(tb, ledger_id, 100)
    (sink,) = new_accounts(tb, ledger_id, count=1)
    create_transfers_ok(tb, [transfer(a, sink, 30, ledger_id, flags=PENDING)])
    # 100 credits - 30 pending debits.
    hold = transfer(a, sink, AMOUNT_MAX, ledger_id, flags=BAL_DR | PENDING)
    assert _balancing(tb, hold) == 70
    assert balances(tb, a) == (100, 0, 0, 100)
    assert _balancing(tb, transfer(a, sink, AMOUNT_MAX, ledger_id, flags=BAL_DR)) == 0
    create_transfers_ok(tb, [void(hold)])
    assert _balancing(tb, transfer(a, sink, AMOUNT_MAX, ledger_id, flags=BAL_DR)) == 70
    assert balances(tb, a) == (30, 70, 0, 100)


def test_balancing_credit_counts_pending_credits(tb: Any, ledger_id: int) -> None:
    b, _ = _funded_credit_account(tb, ledger_id, 100)
    (source,) = new_accounts(tb, ledger_id, count=1)
    create_transfers_ok(tb, [transfer(source, b, 30, ledger_id, flags=PENDING)])
    # 100 debits - 30 pending credits.
    assert _balancing(tb, transfer(source, b, AMOUNT_MAX, ledger_id, flags=BAL_CR)) == 70
    assert balances(tb, b) == (0, 100, 30, 70)
    assert _balancing(tb, transfer(source, b, AMOUNT_MAX, ledger_id, flags=BAL_CR | PENDING)) == 0


def test_balancing_resubmission_exists_when_amount_covers_the_recorded_amount(
    tb: Any, ledger_id: int
) -> None:
    a, _ = _funded_debit_account(tb, ledger_id, 100)
    (sink,) = new_accounts(tb, ledger_id, count=1)
    t = transfer(a, sink, AMOUNT_MAX, ledger_id, flags=BAL_DR)
    (created_at,) = create_transfers_ok(tb, [t])
    assert lookup_transfer(tb, t.id).amount == 100

    def again(amount: int) -> Any:
        (result,) = tb.create_transfers(
            [transfer(a, sink, amount, ledger_id, id=t.id, flags=BAL_DR)]
        )
        return result

    assert again(AMOUNT_MAX).status == S.EXISTS
    assert again(AMOUNT_MAX).timestamp == created_at
    assert again(150).status == S.EXISTS
    assert again(100).status == S.EXISTS
    assert again(99).status == S.EXISTS_WITH_DIFFERENT_AMOUNT
    assert again(0).status == S.EXISTS_WITH_DIFFERENT_AMOUNT
    # Without the balancing flag it is another transfer shape altogether.
    assert transfer_status(tb, transfer(a, sink, 100, ledger_id, id=t.id)) == (
        S.EXISTS_WITH_DIFFERENT_FLAGS
    )
    assert balances(tb, a) == (0, 100, 0, 100)


def test_closing_transfer_must_be_pending(tb: Any, ledger_id: int) -> None:
    a, b = new_accounts(tb, ledger_id)
    assert (
        transfer_statuses(
            tb,
            [
                transfer(a, b, 0, ledger_id, flags=CLOSE_DR),
                transfer(a, b, 0, ledger_id, flags=CLOSE_CR),
                transfer(a, b, 0, ledger_id, flags=CLOSE_DR | CLOSE_CR),
            ],
        )
        == [S.CLOSING_TRANSFER_MUST_BE_PENDING] * 3
    )
    assert lookup_account(tb, a).flags == AccountFlags.NONE


def test_closing_debit_closes_and_void_reopens(tb: Any, ledger_id: int) -> None:
    a, b, c = new_accounts(tb, ledger_id, count=3)
    create_transfers_ok(tb, [transfer(b, a, 10, ledger_id)])
    closing = transfer(a, b, 0, ledger_id, flags=CLOSE_DR | PENDING)
    create_transfers_ok(tb, [closing])
    assert lookup_account(tb, a).flags == AccountFlags.CLOSED
    assert lookup_account(tb, b).flags == AccountFlags.NONE
    assert balances(tb, a) == (0, 0, 0, 10)

    assert transfer_status(tb, transfer(a, c, 1, ledger_id)) == S.DEBIT_ACCOUNT_ALREADY_CLOSED
    assert transfer_status(tb, transfer(c, a, 1, ledger_id)) == S.CREDIT_ACCOUNT_ALREADY_CLOSED
    assert transfer_status(tb, transfer(a, c, 0, ledger_id, flags=CLOSE_DR | PENDING)) == (
        S.DEBIT_ACCOUNT_ALREADY_CLOSED
    )
    # Closing is reverted by voiding, not by posting.
    assert transfer_status(tb, post(closing)) == S.DEBIT_ACCOUNT_ALREADY_CLOSED
    create_transfers_ok(tb, [void(closing)])
    assert lookup_account(tb, a).flags == AccountFlags.NONE
    create_transfers_ok(tb, [transfer(a, c, 1, ledger_id), transfer(c, a, 1, ledger_id)])


def test_closing_credit_closes_the_credit_account(tb: Any, ledger_id: int) -> None:
    a, b, c = new_accounts(tb, ledger_id, count=3)
    closing = transfer(a, b, 5, ledger_id, flags=CLOSE_CR | PENDING)
    create_transfers_ok(tb, [closing])
    assert lookup_account(tb, a).flags == AccountFlags.NONE
    assert lookup_account(tb, b).flags == AccountFlags.CLOSED
    assert balances(tb, b) == (0, 0, 5, 0)
    assert transfer_status(tb, transfer(b, c, 1, ledger_id)) == S.DEBIT_ACCOUNT_ALREADY_CLOSED
    assert transfer_status(tb, transfer(c, b, 1, ledger_id)) == S.CREDIT_ACCOUNT_ALREADY_CLOSED
    # The debit side stays open.
    create_transfers_ok(tb, [transfer(a, c, 1, ledger_id)])
    create_transfers_ok(tb, [void(closing)])
    assert lookup_account(tb, b).flags == AccountFlags.NONE
    assert balances(tb, b) == (0, 0, 0, 0)


def test_closing_both_accounts_at_once(tb: Any, ledger_id: int) -> None:
    a, b, c = new_accounts(tb, ledger_id, count=3)
    closing = transfer(a, b, 0, ledger_id, flags=CLOSE_DR | CLOSE_CR | PENDING)
    create_transfers_ok(tb, [closing])
    assert lookup_account(tb, a).flags == AccountFlags.CLOSED
    assert lookup_account(tb, b).flags == AccountFlags.CLOSED
    # Debit account closed is reported first.
    assert transfer_status(tb, transfer(a, b, 1, ledger_id)) == S.DEBIT_ACCOUNT_ALREADY_CLOSED
    assert transfer_status(tb, transfer(c, b, 1, ledger_id)) == S.CREDIT_ACCOUNT_ALREADY_CLOSED
    create_transfers_ok(tb, [void(closing)])
    assert lookup_account(tb, a).flags == AccountFlags.NONE
    assert lookup_account(tb, b).flags == AccountFlags.NONE


def test_pending_transfers_on_a_closed_account_can_be_voided_not_posted(
    tb: Any, ledger_id: int
) -> None:
    a, b = new_accounts(tb, ledger_id)
    p1 = transfer(a, b, 10, ledger_id, flags=PENDING)
    p2 = transfer(a, b, 20, ledger_id, flags=PENDING)
    closing = transfer(a, b, 0, ledger_id, flags=CLOSE_DR | PENDING)
    create_transfers_ok(tb, [p1, p2, closing])
    assert transfer_status(tb, post(p1)) == S.DEBIT_ACCOUNT_ALREADY_CLOSED
    create_transfers_ok(tb, [void(p2)])
    assert balances(tb, a) == (10, 0, 0, 0)
    assert lookup_account(tb, a).flags == AccountFlags.CLOSED
    # A transient failure: the id of the refused post is burnt.
    refused = post(p1)
    assert transfer_status(tb, refused) == S.DEBIT_ACCOUNT_ALREADY_CLOSED
    create_transfers_ok(tb, [void(closing)])
    assert transfer_status(tb, refused) == S.ID_ALREADY_FAILED
    create_transfers_ok(tb, [post(p1)])
    assert balances(tb, a) == (0, 10, 0, 0)


def test_expired_closing_transfer_reopens_the_account(
    tb: Any, ledger_id: int, advance: Callable[[float], None]
) -> None:
    a, b = new_accounts(tb, ledger_id)
    closing = transfer(a, b, 0, ledger_id, flags=CLOSE_DR | PENDING, timeout=TIMEOUT_S_SHORT)
    create_transfers_ok(tb, [closing])
    assert lookup_account(tb, a).flags == AccountFlags.CLOSED
    advance(ADVANCE_S_PAST_SHORT)
    assert lookup_account(tb, a).flags == AccountFlags.NONE
    assert transfer_status(tb, void(closing)) == S.PENDING_TRANSFER_EXPIRED
    create_transfers_ok(tb, [transfer(a, b, 1, ledger_id)])


def test_rolled_back_closing_transfer_leaves_the_account_open(tb: Any, ledger_id: int) -> None:
    a, b = new_accounts(tb, ledger_id)
    closing = transfer(
        a, b, 0, ledger_id, flags=CLOSE_DR | CLOSE_CR | PENDING | TransferFlags.LINKED
    )
    assert transfer_statuses(tb, [closing, transfer(a, b, 1, ledger_id, code=0)]) == [
        S.LINKED_EVENT_FAILED,
        S.CODE_MUST_NOT_BE_ZERO,
    ]
    assert lookup_account(tb, a).flags == AccountFlags.NONE
    assert lookup_account(tb, b).flags == AccountFlags.NONE
    create_transfers_ok(tb, [transfer(a, b, 1, ledger_id)])


def test_pending_transfer_expires_in_a_closed_account(
    tb: Any, ledger_id: int, advance: Callable[[float], None]
) -> None:
    a, b = new_accounts(tb, ledger_id)
    hold = transfer(a, b, 10, ledger_id, flags=PENDING, timeout=TIMEOUT_S_SHORT)
    closing = transfer(a, b, 0, ledger_id, flags=CLOSE_DR | PENDING)
    create_transfers_ok(tb, [hold, closing])
    advance(ADVANCE_S_PAST_SHORT)
    assert balances(tb, a) == (0, 0, 0, 0)
    assert lookup_account(tb, a).flags == AccountFlags.CLOSED
    assert transfer_status(tb, void(hold)) == S.PENDING_TRANSFER_EXPIRED
