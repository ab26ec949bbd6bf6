"""The chart of accounts as numbers: account codes (kinds), transfer codes (reasons), flags.

`ledger/README.md` explains every value here: who owns each account, how its id is derived, what
its balance means, and the linked chains that move credits between them. Keep the two in step.

Invariants (asserted at import and tested):
- Every code is a nonzero u16: TigerBeetle rejects `code == 0` on accounts and transfers.
- Account codes and transfer codes are each unique; values are never reused or renumbered, since
  they are stored in TigerBeetle forever. New kinds and reasons get new values.
- Every `AccountCode` has an entry in `ACCOUNT_FLAGS`, and no entry sets both balance limits
  (TigerBeetle rejects `debits_must_not_exceed_credits | credits_must_not_exceed_debits`) or a
  flag that only TigerBeetle or a single request may set (`linked`, `imported`, `closed`).
- Every `AccountCode` is either a system account (one per ledger, id from
  `ledger.ids.system_account_id`) or an owned account (one per grant, wallet or budget period),
  never both.

This module does not import `tigerbeetle`: flags are plain ints with TigerBeetle's bit values, so
the embedded engine, the adapter and the builders can share them.
"""

from __future__ import annotations

import enum
from typing import Final

# TigerBeetle `AccountFlags` bit values (reference/account.md#flags).
ACCOUNT_FLAG_LINKED: Final = 1 << 0
ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS: Final = 1 << 1
ACCOUNT_FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS: Final = 1 << 2
ACCOUNT_FLAG_HISTORY: Final = 1 << 3
ACCOUNT_FLAG_IMPORTED: Final = 1 << 4
ACCOUNT_FLAG_CLOSED: Final = 1 << 5

_DMNEC: Final = ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS
_CMNED: Final = ACCOUNT_FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS
_HISTORY: Final = ACCOUNT_FLAG_HISTORY

CODE_MIN: Final = 1
CODE_MAX: Final = (1 << 16) - 1


class AccountCode(enum.IntEnum):
    """The kind of a TigerBeetle account (`Account.code`).

    1..99 are system accounts, one of each per ledger (credit type). 100.. are owned accounts,
    one per grant, per soft-limited wallet or per budget period.
    """

    # Issuers: debit balances that grow as credits are issued.
    ISSUANCE_PAID = 1
    ISSUANCE_PROMOTIONAL = 2
    # Sinks: credit balances that say where issued credits went.
    CONSUMED = 3
    BREAKAGE = 4  # Expired credits.
    VOIDED = 5
    REFUNDED = 6
    # Issuers of the memo amounts that bound spending: overdraft limits and budget caps.
    OVERDRAFT_LINE = 7
    BUDGET_LINE = 8
    BUDGET_USAGE = 9
    # Control accounts of the balance-bounded drain chains (README: "Drain chains").
    CONTROL_DRAIN = 10  # Net debit = what the running chain still has to drain.
    CONTROL_CHECK = 11  # Zero forever: a nonzero leg out of it fails the chain.
    CONTROL_HOLD = 12  # Counterpart of the amounts held by reservations.
    # The two ends of the zero-amount operation header transfer. Zero forever.
    OPERATION_HEADER_DEBIT = 13
    OPERATION_HEADER_CREDIT = 14
    CONTROL_CAP = 15  # Zero between chains: carries a capped overage while it is collected.

    # Owned accounts.
    GRANT = 100  # One credit block: its balance is what is left to spend.
    OVERDRAFT = 101  # Soft limit N: credited with N, its balance is the unused headroom.
    OVERDRAFT_UNBOUNDED = 102  # Soft limit without bound: its debit balance is the deficit.
    BUDGET = 103  # One (resource, budget, period): credited with the cap, balance is headroom.


class TransferCode(enum.IntEnum):
    """The reason of a TigerBeetle transfer (`Transfer.code`).

    A post or void of a pending transfer keeps the pending transfer's code (TigerBeetle returns
    `pending_transfer_has_different_code` otherwise), so settling and releasing a reservation are
    told apart by the `post_pending_transfer` / `void_pending_transfer` flags, not by a code.
    """

    OPERATION_HEADER = 1  # Header debit -> header credit, amount 0, user_data_128 = fingerprint.
    GRANT_FUNDING = 2  # Issuance (paid | promotional) -> grant.
    DEBIT = 3  # Grant -> drain: one burn-order leg of a debit (balancing, posted).
    RESERVE = 4  # Grant -> drain: one burn-order leg of a reservation (balancing, pending).
    CONSUME = 5  # Drain -> consumed: the N of a debit (or the overage of a settle).
    SETTLE = 6  # Hold -> consumed: the settled amount of a reservation.
    EXPIRE = 7  # Grant -> breakage: balancing sweep of an expired grant.
    GRANT_VOID = 8  # Grant -> voided: an admin void of what is left of a grant.
    GRANT_REFUND = 9  # Grant -> refunded: unused paid credits refunded in money.
    USAGE_REFUND = 10  # Consumed -> grant: consumed credits given back, reverse burn order.
    CORRECTION = 11  # Reverses (part of) an earlier transfer: its accounts, swapped.
    OVERDRAFT_LIMIT = 12  # Overdraft line -> overdraft (raise) or back (lower).
    OVERDRAFT_DRAW = 13  # Overdraft -> drain: the overdraft leg of a debit or reservation.
    OVERDRAFT_REPAY = 14  # Grant -> overdraft: a new grant repays the deficit first.
    BUDGET_LIMIT = 15  # Budget line -> budget: the cap of one period (or back, to lower it).
    BUDGET_SPEND = 16  # Budget -> budget usage: the budget leg of a debit or reservation.
    CONTROL_HOLD = 17  # Drain -> hold: the N a reservation must drain.
    CONTROL_NORMALIZE = 18  # Hold -> drain, balancing: clears what released reservations left.
    CONTROL_CHECK = 19  # Check -> drain, balancing: moves zero, or the chain did not reach N.
    CONTROL_CAP = 20  # Drain -> cap (load the overage), cap -> drain (give back the shortfall).
    # Header debit -> header credit, 0, pending with the reservation's timeout: its post (a
    # settle) or void (a release), with an id derived from the reservation, says which befell it.
    RESERVATION_MARKER = 21
    # Header debit -> header credit, 0: written by the projection feed when a reservation's
    # timeout has passed by the wall clock but no transfer since has shown the engine's clock
    # past it (ledger/README.md, "The projection"). Bookkeeping: no entry.
    PROJECTION_TICK = 22
    # Source block -> rollover block, exact amount, posted: what rolls over at the source's
    # expiry (ledger/README.md "Rollover"). user_data_128 = the source block.
    ROLLOVER = 23


SYSTEM_ACCOUNT_CODES: Final[frozenset[AccountCode]] = frozenset(
    code for code in AccountCode if code < 100
)
OWNED_ACCOUNT_CODES: Final[frozenset[AccountCode]] = frozenset(
    code for code in AccountCode if code >= 100
)
CONTROL_ACCOUNT_CODES: Final[frozenset[AccountCode]] = frozenset(
    {
        AccountCode.CONTROL_DRAIN,
        AccountCode.CONTROL_CHECK,
        AccountCode.CONTROL_HOLD,
        AccountCode.CONTROL_CAP,
        AccountCode.OPERATION_HEADER_DEBIT,
        AccountCode.OPERATION_HEADER_CREDIT,
    }
)
ISSUANCE_ACCOUNT_CODES: Final[frozenset[AccountCode]] = frozenset(
    {AccountCode.ISSUANCE_PAID, AccountCode.ISSUANCE_PROMOTIONAL}
)
OVERDRAFT_ACCOUNT_CODES: Final[frozenset[AccountCode]] = frozenset(
    {AccountCode.OVERDRAFT, AccountCode.OVERDRAFT_UNBOUNDED}
)

# Flags each kind of account is created with. `history` only where a balance's past is read
# (statements, revenue recognition): it costs a stored balance per transfer, so the hot system
# accounts that every debit touches (consumed, the controls) go without.
ACCOUNT_FLAGS: Final[dict[AccountCode, int]] = {
    # Issuers may only be credited back (a correction) up to what they issued.
    AccountCode.ISSUANCE_PAID: _CMNED,
    AccountCode.ISSUANCE_PROMOTIONAL: _CMNED,
    # Sinks may only be debited back (a refund or correction) up to what they received.
    AccountCode.CONSUMED: _DMNEC,
    AccountCode.BREAKAGE: _DMNEC,
    AccountCode.VOIDED: _DMNEC,
    AccountCode.REFUNDED: _DMNEC,
    AccountCode.OVERDRAFT_LINE: _CMNED,
    AccountCode.BUDGET_LINE: _CMNED,
    AccountCode.BUDGET_USAGE: _DMNEC,
    # Every credit to the drain is balancing, so its credits never pass its debits.
    AccountCode.CONTROL_DRAIN: _CMNED,
    # Nothing credits the check account: any nonzero debit out of it fails.
    AccountCode.CONTROL_CHECK: _DMNEC,
    # The hold always covers what the drain's residue will take back from it.
    AccountCode.CONTROL_HOLD: _DMNEC,
    # Both ends of the header hold zero forever, enforced by TigerBeetle.
    AccountCode.OPERATION_HEADER_DEBIT: _DMNEC,
    AccountCode.OPERATION_HEADER_CREDIT: _CMNED,
    # The cap is credited the overage first and never pays out more than it holds.
    AccountCode.CONTROL_CAP: _DMNEC,
    AccountCode.GRANT: _DMNEC | _HISTORY,
    AccountCode.OVERDRAFT: _DMNEC | _HISTORY,
    AccountCode.OVERDRAFT_UNBOUNDED: _CMNED | _HISTORY,
    AccountCode.BUDGET: _DMNEC | _HISTORY,
}


def account_flags(code: AccountCode) -> int:
    """The flags an account of kind `code` is created with."""
    return ACCOUNT_FLAGS[code]


def _check_tables() -> None:
    for enum_type in (AccountCode, TransferCode):
        values = [member.value for member in enum_type]
        assert len(values) == len(set(values)), enum_type
        assert all(CODE_MIN <= value <= CODE_MAX for value in values), enum_type
    assert set(ACCOUNT_FLAGS) == set(AccountCode)
    assert not SYSTEM_ACCOUNT_CODES & OWNED_ACCOUNT_CODES
    assert set(AccountCode) == SYSTEM_ACCOUNT_CODES | OWNED_ACCOUNT_CODES
    assert CONTROL_ACCOUNT_CODES <= SYSTEM_ACCOUNT_CODES
    assert ISSUANCE_ACCOUNT_CODES <= SYSTEM_ACCOUNT_CODES
    assert OVERDRAFT_ACCOUNT_CODES <= OWNED_ACCOUNT_CODES
    forbidden = ACCOUNT_FLAG_LINKED | ACCOUNT_FLAG_IMPORTED | ACCOUNT_FLAG_CLOSED
    for flags in ACCOUNT_FLAGS.values():
        assert flags & forbidden == 0
        assert flags & (_DMNEC | _CMNED) != (_DMNEC | _CMNED)


_check_tables()
