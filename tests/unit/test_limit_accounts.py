"""The transfer that moves a limit account to a new limit (wallets.limit_accounts), pure: which
way, how much, with which id and flags."""

from __future__ import annotations

from ledger.codes import TransferCode
from ledger.ids import derive_id
from ledger.types import TransferFlags
from wallets.limit_accounts import (
    Credited,
    budget_period_account,
    limit_transfer,
    overdraft_account,
)

WALLET, BUDGET, RESOURCE, LEDGER, TENANT, OPERATION = 11, 12, 13, 7, 3, 99


def test_a_raise_credits_the_difference_from_the_line() -> None:
    account = overdraft_account(WALLET, LEDGER, TENANT)
    transfer = limit_transfer(account, Credited(100, 1, 40), 150, OPERATION)
    assert transfer is not None
    assert (transfer.debit_account_id, transfer.credit_account_id) == (account.line_id, account.id)
    assert (transfer.amount, transfer.code, transfer.flags) == (
        50,
        TransferCode.OVERDRAFT_LIMIT,
        TransferFlags.NONE,
    )
    # Numbered after the one transfer of its code the account has, within this operation.
    assert transfer.id == derive_id("limit/change", account.id, 1, OPERATION)
    assert (transfer.user_data_128, transfer.user_data_32, transfer.ledger) == (
        WALLET,
        TENANT,
        LEDGER,
    )


def test_an_overdraft_cut_is_exact_so_the_ledger_can_refuse_it() -> None:
    account = overdraft_account(WALLET, LEDGER, TENANT)
    transfer = limit_transfer(account, Credited(100, 2, 0), 0, OPERATION)
    assert transfer is not None
    assert (transfer.debit_account_id, transfer.credit_account_id) == (account.id, account.line_id)
    assert (transfer.amount, transfer.flags) == (100, TransferFlags.NONE)


def test_a_cap_cut_takes_back_headroom_only() -> None:
    account = budget_period_account(BUDGET, RESOURCE, LEDGER, TENANT, 0)
    cut = limit_transfer(account, Credited(500, 1, 30), 300, OPERATION)
    assert cut is not None
    assert (cut.amount, cut.flags) == (200, TransferFlags.BALANCING_DEBIT)
    # Nothing left to take back: no transfer at all, rather than one that moves 0.
    assert limit_transfer(account, Credited(500, 1, 0), 300, OPERATION) is None


def test_nothing_moves_at_the_limit_and_the_first_funding_keeps_its_id() -> None:
    account = budget_period_account(BUDGET, RESOURCE, LEDGER, TENANT, 0)
    assert limit_transfer(account, Credited(300, 1, 10), 300, OPERATION) is None
    first = limit_transfer(account, Credited(0, 0, 0), 300, OPERATION)
    assert first is not None
    # The id the hot path funds a period with: the two never both fund it.
    assert first.id == derive_id("budget/cap", account.id) == account.first_id
    assert (first.amount, first.code) == (300, TransferCode.BUDGET_LIMIT)
