"""Two-phase transfers: pending, post, void, expiry.

Reference: `post_or_void_pending_transfer`, `post_or_void_pending_transfer_exists` and
`execute_expire_pending_transfers` in TigerBeetle's `src/state_machine.zig`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tigerbeetle import AccountFilterFlags, AccountFlags, CreateTransferStatus, TransferFlags

from ._helpers import (
    ADVANCE_S_PAST_SHORT,
    AMOUNT_MAX,
    TIMEOUT_S_SHORT,
    U128_MAX,
    account_filter,
    balances,
    create_transfers_ok,
    lookup_transfer,
    new_accounts,
    new_id,
    post,
    transfer,
    transfer_status,
    transfer_statuses,
    void,
)

S = CreateTransferStatus
PENDING = TransferFlags.PENDING
POST = TransferFlags.POST_PENDING_TRANSFER
VOID = TransferFlags.VOID_PENDING_TRANSFER


def _pending(tb: Any, ledger_id: int, amount: int = 100, **fields: Any) -> tuple[Any, int, int]:
    dr, cr = new_accounts(tb, ledger_id)
    p = transfer(dr, cr, amount, ledger_id, flags=PENDING, **fields)
    create_transfers_ok(tb, [p])
    return p, dr, cr


def test_pending_transfer_reserves_pending_balances(tb: Any, ledger_id: int) -> None:
    p, dr, cr = _pending(tb, ledger_id, 100, timeout=3600)
    assert balances(tb, dr) == (100, 0, 0, 0)
    assert balances(tb, cr) == (0, 0, 100, 0)
    stored = lookup_transfer(tb, p.id)
    assert (stored.flags, stored.timeout, stored.amount) == (PENDING, 3600, 100)


def test_post_amount_max_posts_the_full_pending_amount(tb: Any, ledger_id: int) -> None:
    p, dr, cr = _pending(tb, ledger_id, 100, user_data_128=11, user_data_64=12, user_data_32=13)
    posting = post(p, AMOUNT_MAX)
    (posted_at,) = create_transfers_ok(tb, [posting])
    assert balances(tb, dr) == (0, 100, 0, 0)
    assert balances(tb, cr) == (0, 0, 0, 100)
    stored = lookup_transfer(tb, posting.id)
    # Accounts, ledger, code and (zero) user data are inherited from the pending transfer.
    assert (stored.debit_account_id, stored.credit_account_id) == (dr, cr)
    assert (stored.amount, stored.ledger, stored.code, stored.pending_id) == (
        100,
        ledger_id,
        p.code,
        p.id,
    )
    assert (stored.user_data_128, stored.user_data_64, stored.user_data_32) == (11, 12, 13)
    assert (stored.flags, stored.timeout, stored.timestamp) == (POST, 0, posted_at)
    # The pending transfer itself is unchanged.
    assert lookup_transfer(tb, p.id).amount == 100


def test_partial_post_releases_the_whole_pending_amount(tb: Any, ledger_id: int) -> None:
    p, dr, cr = _pending(tb, ledger_id, 100)
    posting = post(p, 30)
    create_transfers_ok(tb, [posting])
    assert lookup_transfer(tb, posting.id).amount == 30
    assert balances(tb, dr) == (0, 30, 0, 0)
    assert balances(tb, cr) == (0, 0, 0, 30)
    # The rest cannot be posted later.
    assert transfer_status(tb, post(p, 70)) == S.PENDING_TRANSFER_ALREADY_POSTED


def test_post_exact_amount_and_zero_amount(tb: Any, ledger_id: int) -> None:
    p, dr, _ = _pending(tb, ledger_id, 100)
    create_transfers_ok(tb, [post(p, 100)])
    assert balances(tb, dr) == (0, 100, 0, 0)

    # For a post, zero means zero (only AMOUNT_MAX means "the pending amount").
    p2, dr2, cr2 = _pending(tb, ledger_id, 100)
    posting = post(p2, 0)
    create_transfers_ok(tb, [posting])
    assert lookup_transfer(tb, posting.id).amount == 0
    assert balances(tb, dr2) == (0, 0, 0, 0)
    assert balances(tb, cr2) == (0, 0, 0, 0)


def test_post_more_than_pending_exceeds(tb: Any, ledger_id: int) -> None:
    p, dr, _ = _pending(tb, ledger_id, 100)
    assert transfer_status(tb, post(p, 101)) == S.EXCEEDS_PENDING_TRANSFER_AMOUNT
    assert transfer_status(tb, post(p, AMOUNT_MAX - 1)) == S.EXCEEDS_PENDING_TRANSFER_AMOUNT
    assert balances(tb, dr) == (100, 0, 0, 0)


def test_void_amount_rules(tb: Any, ledger_id: int) -> None:
    p, dr, cr = _pending(tb, ledger_id, 100)
    assert transfer_status(tb, void(p, 99)) == S.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
    assert transfer_status(tb, void(p, 1)) == S.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
    assert transfer_status(tb, void(p, 101)) == S.EXCEEDS_PENDING_TRANSFER_AMOUNT
    # For a void, AMOUNT_MAX is a plain amount, larger than the pending one.
    assert transfer_status(tb, void(p, AMOUNT_MAX)) == S.EXCEEDS_PENDING_TRANSFER_AMOUNT
    voiding = void(p, 0)
    create_transfers_ok(tb, [voiding])
    # Zero means the full pending amount.
    assert lookup_transfer(tb, voiding.id).amount == 100
    assert balances(tb, dr) == (0, 0, 0, 0)
    assert balances(tb, cr) == (0, 0, 0, 0)

    p2, dr2, _ = _pending(tb, ledger_id, 100)
    voiding2 = void(p2, 100)
    create_transfers_ok(tb, [voiding2])
    assert lookup_transfer(tb, voiding2.id).amount == 100
    assert balances(tb, dr2) == (0, 0, 0, 0)


def test_already_posted_and_already_voided(tb: Any, ledger_id: int) -> None:
    p, _, _ = _pending(tb, ledger_id, 100)
    create_transfers_ok(tb, [post(p)])
    assert transfer_status(tb, post(p)) == S.PENDING_TRANSFER_ALREADY_POSTED
    assert transfer_status(tb, void(p)) == S.PENDING_TRANSFER_ALREADY_POSTED

    p2, _, _ = _pending(tb, ledger_id, 100)
    create_transfers_ok(tb, [void(p2)])
    assert transfer_status(tb, post(p2)) == S.PENDING_TRANSFER_ALREADY_VOIDED
    assert transfer_status(tb, void(p2)) == S.PENDING_TRANSFER_ALREADY_VOIDED
    # The amount checks come before the status check.
    assert transfer_status(tb, void(p2, 5)) == S.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
    assert transfer_status(tb, post(p2, 500)) == S.EXCEEDS_PENDING_TRANSFER_AMOUNT


def test_post_and_void_in_one_batch(tb: Any, ledger_id: int) -> None:
    p, dr, _ = _pending(tb, ledger_id, 100)
    assert transfer_statuses(tb, [post(p, 40), void(p), post(p)]) == [
        S.CREATED,
        S.PENDING_TRANSFER_ALREADY_POSTED,
        S.PENDING_TRANSFER_ALREADY_POSTED,
    ]
    assert balances(tb, dr) == (0, 40, 0, 0)


def test_pending_id_checks(tb: Any, ledger_id: int) -> None:
    p, dr, cr = _pending(tb, ledger_id, 100)
    assert transfer_status(tb, post(p, pending_id=0)) == S.PENDING_ID_MUST_NOT_BE_ZERO
    assert transfer_status(tb, post(p, pending_id=U128_MAX)) == S.PENDING_ID_MUST_NOT_BE_INT_MAX
    same = new_id()
    assert transfer_status(tb, post(p, id=same, pending_id=same)) == S.PENDING_ID_MUST_BE_DIFFERENT
    assert transfer_status(tb, post(p, timeout=1)) == S.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
    assert transfer_status(tb, void(p, timeout=1)) == S.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
    assert transfer_status(tb, post(p, pending_id=new_id())) == S.PENDING_TRANSFER_NOT_FOUND

    single_phase = transfer(dr, cr, 5, ledger_id)
    create_transfers_ok(tb, [single_phase])
    assert transfer_status(tb, post(single_phase)) == S.PENDING_TRANSFER_NOT_PENDING
    assert transfer_status(tb, void(single_phase)) == S.PENDING_TRANSFER_NOT_PENDING
    # A post of a post is not a post of a pending transfer either.
    posting = post(p, 10)
    create_transfers_ok(tb, [posting])
    assert transfer_status(tb, void(posting)) == S.PENDING_TRANSFER_NOT_PENDING


def test_flags_are_mutually_exclusive_for_post_and_void(tb: Any, ledger_id: int) -> None:
    p, _, _ = _pending(tb, ledger_id, 100)
    for extra in (
        VOID,
        PENDING,
        TransferFlags.BALANCING_DEBIT,
        TransferFlags.BALANCING_CREDIT,
        TransferFlags.CLOSING_DEBIT,
        TransferFlags.CLOSING_CREDIT,
    ):
        assert transfer_status(tb, post(p, flags=POST | extra)) == (
            S.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        ), extra
    for extra in (PENDING, TransferFlags.BALANCING_DEBIT, TransferFlags.CLOSING_CREDIT):
        assert transfer_status(tb, void(p, flags=VOID | extra)) == (
            S.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        ), extra


def test_flags_are_mutually_exclusive_before_pending_id_checks(tb: Any, ledger_id: int) -> None:
    p, _, _ = _pending(tb, ledger_id, 100)
    both = POST | VOID
    assert transfer_status(tb, post(p, pending_id=0, flags=both)) == S.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    assert transfer_status(tb, post(p, pending_id=0, flags=POST | PENDING, timeout=5)) == (
        S.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    )
    # A post does not check the account ids for zero: they are inherited.
    assert transfer_status(tb, post(p, pending_id=0, ledger=0, code=0)) == (
        S.PENDING_ID_MUST_NOT_BE_ZERO
    )


def test_post_must_match_the_pending_transfer(tb: Any, ledger_id: int) -> None:
    p, dr, cr = _pending(tb, ledger_id, 100)
    (other,) = new_accounts(tb, ledger_id, count=1)
    assert transfer_status(tb, post(p, debit_account_id=other)) == (
        S.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
    )
    assert transfer_status(tb, post(p, credit_account_id=other)) == (
        S.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
    )
    assert transfer_status(tb, post(p, ledger=ledger_id ^ 1)) == (
        S.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER
    )
    assert transfer_status(tb, post(p, code=p.code + 1)) == S.PENDING_TRANSFER_HAS_DIFFERENT_CODE
    assert transfer_status(tb, void(p, debit_account_id=cr, credit_account_id=dr)) == (
        S.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
    )
    # Differences are checked before the amount.
    assert transfer_status(tb, post(p, 1000, code=p.code + 1)) == (
        S.PENDING_TRANSFER_HAS_DIFFERENT_CODE
    )
    # Matching values, given explicitly, are fine.
    explicit = post(
        p, 100, debit_account_id=dr, credit_account_id=cr, ledger=ledger_id, code=p.code
    )
    create_transfers_ok(tb, [explicit])


def test_post_user_data_is_its_own_or_inherited_per_field(tb: Any, ledger_id: int) -> None:
    p, _, _ = _pending(tb, ledger_id, 100, user_data_128=1, user_data_64=2, user_data_32=3)
    posting = post(p, 50, user_data_128=0, user_data_64=20, user_data_32=0)
    create_transfers_ok(tb, [posting])
    stored = lookup_transfer(tb, posting.id)
    assert (stored.user_data_128, stored.user_data_64, stored.user_data_32) == (1, 20, 3)


def test_post_exists_rules(tb: Any, ledger_id: int) -> None:
    p, dr, cr = _pending(tb, ledger_id, 100, user_data_128=1, user_data_64=2, user_data_32=3)
    (other,) = new_accounts(tb, ledger_id, count=1)
    posting = post(p, AMOUNT_MAX)
    create_transfers_ok(tb, [posting])
    # AMOUNT_MAX again, or the actual amount: both are the same post.
    assert transfer_status(tb, posting) == S.EXISTS
    assert transfer_status(tb, post(p, 100, id=posting.id)) == S.EXISTS
    assert transfer_status(tb, post(p, 99, id=posting.id)) == S.EXISTS_WITH_DIFFERENT_AMOUNT
    # Zero fields mean "inherited", explicit equal values are the same post too.
    assert (
        transfer_status(
            tb,
            post(
                p,
                id=posting.id,
                debit_account_id=dr,
                credit_account_id=cr,
                ledger=ledger_id,
                code=p.code,
                user_data_128=1,
                user_data_64=2,
                user_data_32=3,
            ),
        )
        == S.EXISTS
    )
    assert transfer_status(tb, post(p, id=posting.id, debit_account_id=other)) == (
        S.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
    )
    assert transfer_status(tb, post(p, id=posting.id, credit_account_id=other)) == (
        S.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
    )
    assert transfer_status(tb, post(p, id=posting.id, user_data_128=7)) == (
        S.EXISTS_WITH_DIFFERENT_USER_DATA_128
    )
    assert transfer_status(tb, post(p, id=posting.id, user_data_64=7)) == (
        S.EXISTS_WITH_DIFFERENT_USER_DATA_64
    )
    assert transfer_status(tb, post(p, id=posting.id, user_data_32=7)) == (
        S.EXISTS_WITH_DIFFERENT_USER_DATA_32
    )
    assert transfer_status(tb, post(p, id=posting.id, ledger=ledger_id ^ 1)) == (
        S.EXISTS_WITH_DIFFERENT_LEDGER
    )
    assert transfer_status(tb, post(p, id=posting.id, code=p.code + 1)) == (
        S.EXISTS_WITH_DIFFERENT_CODE
    )
    assert transfer_status(tb, post(p, id=posting.id, flags=VOID)) == (
        S.EXISTS_WITH_DIFFERENT_FLAGS
    )
    assert transfer_status(tb, post(p, id=posting.id, pending_id=new_id())) == (
        S.EXISTS_WITH_DIFFERENT_PENDING_ID
    )
    assert transfer_status(tb, post(p, id=posting.id, timeout=5)) == (
        S.EXISTS_WITH_DIFFERENT_TIMEOUT
    )


def test_partial_post_exists_rules(tb: Any, ledger_id: int) -> None:
    p, _, _ = _pending(tb, ledger_id, 100)
    posting = post(p, 40, user_data_128=9)
    create_transfers_ok(tb, [posting])
    assert transfer_status(tb, posting) == S.EXISTS
    # AMOUNT_MAX means the pending amount (100), not the posted 40.
    assert transfer_status(tb, post(p, AMOUNT_MAX, id=posting.id, user_data_128=9)) == (
        S.EXISTS_WITH_DIFFERENT_AMOUNT
    )
    # The post had its own user_data_128: a zero now means the pending's, which differs.
    assert transfer_status(tb, post(p, 40, id=posting.id, user_data_128=0)) == (
        S.EXISTS_WITH_DIFFERENT_USER_DATA_128
    )


def test_void_exists_rules(tb: Any, ledger_id: int) -> None:
    p, _, _ = _pending(tb, ledger_id, 100)
    voiding = void(p, 0)
    create_transfers_ok(tb, [voiding])
    assert transfer_status(tb, voiding) == S.EXISTS
    assert transfer_status(tb, void(p, 100, id=voiding.id)) == S.EXISTS
    assert transfer_status(tb, void(p, 60, id=voiding.id)) == S.EXISTS_WITH_DIFFERENT_AMOUNT


def test_pending_timeout_expires(tb: Any, ledger_id: int, advance: Callable[[float], None]) -> None:
    p, dr, cr = _pending(tb, ledger_id, 100, timeout=TIMEOUT_S_SHORT)
    assert balances(tb, dr) == (100, 0, 0, 0)
    advance(ADVANCE_S_PAST_SHORT)
    # The pending amounts are released by the expiry, without any request.
    assert balances(tb, dr) == (0, 0, 0, 0)
    assert balances(tb, cr) == (0, 0, 0, 0)
    assert transfer_status(tb, post(p)) == S.PENDING_TRANSFER_EXPIRED
    assert transfer_status(tb, void(p)) == S.PENDING_TRANSFER_EXPIRED
    # The pending transfer is still there, unchanged.
    stored = lookup_transfer(tb, p.id)
    assert (stored.amount, stored.flags, stored.timeout) == (100, PENDING, TIMEOUT_S_SHORT)
    # The amount checks still come before the expiry check.
    assert transfer_status(tb, post(p, 101)) == S.EXCEEDS_PENDING_TRANSFER_AMOUNT
    assert transfer_status(tb, void(p, 1)) == S.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT


def test_expiry_frees_the_limit_and_keeps_history(
    tb: Any, ledger_id: int, advance: Callable[[float], None]
) -> None:
    (source,) = new_accounts(tb, ledger_id, count=1)
    (limited,) = new_accounts(
        tb,
        ledger_id,
        count=1,
        flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.HISTORY,
    )
    create_transfers_ok(tb, [transfer(source, limited, 100, ledger_id)])
    hold = transfer(limited, source, 80, ledger_id, flags=PENDING, timeout=TIMEOUT_S_SHORT)
    create_transfers_ok(tb, [hold])
    assert transfer_status(tb, transfer(limited, source, 30, ledger_id)) == S.EXCEEDS_CREDITS
    advance(ADVANCE_S_PAST_SHORT)
    create_transfers_ok(tb, [transfer(limited, source, 30, ledger_id)])
    assert balances(tb, limited) == (0, 30, 0, 100)
    # Historical balances have one entry per transfer; the expiry adds none.
    history = tb.get_account_balances(account_filter(limited))
    assert [(b.debits_pending, b.debits_posted, b.credits_posted) for b in history] == [
        (0, 0, 100),
        (80, 0, 100),
        (0, 30, 100),
    ]


def test_post_before_timeout_succeeds(
    tb: Any, ledger_id: int, advance: Callable[[float], None]
) -> None:
    p, dr, _ = _pending(tb, ledger_id, 100, timeout=3600)
    advance(0.2)
    create_transfers_ok(tb, [post(p, 60)])
    assert balances(tb, dr) == (0, 60, 0, 0)


def test_pending_transfer_not_found_is_transient(tb: Any, ledger_id: int) -> None:
    dr, cr = new_accounts(tb, ledger_id)
    p = transfer(dr, cr, 100, ledger_id, flags=PENDING)
    early_post = post(p)
    assert transfer_status(tb, early_post) == S.PENDING_TRANSFER_NOT_FOUND
    create_transfers_ok(tb, [p])
    assert transfer_status(tb, early_post) == S.ID_ALREADY_FAILED
    create_transfers_ok(tb, [post(p)])


def test_pending_with_zero_amount(tb: Any, ledger_id: int) -> None:
    p, dr, _ = _pending(tb, ledger_id, 0)
    assert transfer_status(tb, post(p, 1)) == S.EXCEEDS_PENDING_TRANSFER_AMOUNT
    posting = post(p, AMOUNT_MAX)
    create_transfers_ok(tb, [posting])
    assert lookup_transfer(tb, posting.id).amount == 0
    assert balances(tb, dr) == (0, 0, 0, 0)


def test_get_account_transfers_sees_pending_and_post(tb: Any, ledger_id: int) -> None:
    p, dr, _ = _pending(tb, ledger_id, 100)
    posting = post(p, 10)
    create_transfers_ok(tb, [posting])
    found = tb.get_account_transfers(account_filter(dr, flags=AccountFilterFlags.DEBITS))
    assert [t.id for t in found] == [p.id, posting.id]


def test_posted_or_voided_pending_transfers_do_not_expire(
    tb: Any, ledger_id: int, advance: Callable[[float], None]
) -> None:
    posted, dr, cr = _pending(tb, ledger_id, 100, timeout=TIMEOUT_S_SHORT)
    voided = transfer(dr, cr, 50, ledger_id, flags=PENDING, timeout=TIMEOUT_S_SHORT)
    create_transfers_ok(tb, [voided])
    create_transfers_ok(tb, [post(posted, 60), void(voided)])
    assert balances(tb, dr) == (0, 60, 0, 0)
    advance(ADVANCE_S_PAST_SHORT)
    # Nothing is released twice.
    assert balances(tb, dr) == (0, 60, 0, 0)
    assert balances(tb, cr) == (0, 0, 0, 60)
    assert transfer_status(tb, post(posted)) == S.PENDING_TRANSFER_ALREADY_POSTED
    assert transfer_status(tb, void(voided)) == S.PENDING_TRANSFER_ALREADY_VOIDED


def test_expiry_releases_only_the_expired_transfers(
    tb: Any, ledger_id: int, advance: Callable[[float], None]
) -> None:
    short, dr, cr = _pending(tb, ledger_id, 100, timeout=TIMEOUT_S_SHORT)
    long = transfer(dr, cr, 7, ledger_id, flags=PENDING, timeout=3600)
    forever = transfer(dr, cr, 3, ledger_id, flags=PENDING)
    create_transfers_ok(tb, [long, forever])
    assert balances(tb, dr) == (110, 0, 0, 0)
    advance(ADVANCE_S_PAST_SHORT)
    assert balances(tb, dr) == (10, 0, 0, 0)
    assert balances(tb, cr) == (0, 0, 10, 0)
    assert transfer_status(tb, post(short)) == S.PENDING_TRANSFER_EXPIRED
    create_transfers_ok(tb, [post(long), post(forever)])
    assert balances(tb, dr) == (0, 10, 0, 0)


def test_rolled_back_post_leaves_the_pending_transfer_pending(tb: Any, ledger_id: int) -> None:
    p, dr, cr = _pending(tb, ledger_id, 100)
    posting = post(p, 40, flags=POST | TransferFlags.LINKED)
    failing = transfer(dr, cr, 1, ledger_id, code=0)
    assert transfer_statuses(tb, [posting, failing]) == [
        S.LINKED_EVENT_FAILED,
        S.CODE_MUST_NOT_BE_ZERO,
    ]
    assert balances(tb, dr) == (100, 0, 0, 0)
    assert tb.lookup_transfers([posting.id]) == []
    create_transfers_ok(tb, [void(p)])
    assert balances(tb, dr) == (0, 0, 0, 0)


def test_rolled_back_pending_timeout_does_not_expire_a_later_transfer(
    tb: Any, ledger_id: int, advance: Callable[[float], None]
) -> None:
    dr, cr = new_accounts(tb, ledger_id)
    p = transfer(
        dr, cr, 100, ledger_id, flags=PENDING | TransferFlags.LINKED, timeout=TIMEOUT_S_SHORT
    )
    assert transfer_statuses(tb, [p, transfer(dr, cr, 1, 0)]) == [
        S.LINKED_EVENT_FAILED,
        S.LEDGER_MUST_NOT_BE_ZERO,
    ]
    # The same id, now without a short timeout: the rolled-back timeout must not apply.
    again = transfer(dr, cr, 100, ledger_id, id=p.id, flags=PENDING, timeout=3600)
    create_transfers_ok(tb, [again])
    advance(ADVANCE_S_PAST_SHORT)
    assert balances(tb, dr) == (100, 0, 0, 0)
    create_transfers_ok(tb, [post(again)])
    assert balances(tb, dr) == (0, 100, 0, 0)
