"""Limits that are an account's credit, and how they change on the ledger.

Two kinds of account hold a limit as their credit (ledger/README.md, "Overdraft" and "Budget"):
- a soft wallet's bounded overdraft account, credited its limit by `OVERDRAFT_LIMIT` from the
  overdraft line: its balance is the headroom left;
- a budget's account of one period, credited the cap by `BUDGET_LIMIT` from the budget line:
  its balance is what the period may still spend.
Changing the limit moves the difference with the same code: line -> account to raise it,
account -> line to lower it.

Invariants:
- What an account holds of its limit is read from the ledger, never assumed: the credits of
  its limit code minus the debits of that code (the `credited` amount), and how many such
  transfers it has. The transfer toward a new limit is numbered by that count: its id is
  `derive_id("limit/change", account, count, operation)`, so a retry after an unknown outcome
  finds `exists`, and a later change, numbered after it, is a transfer of its own.
- The first transfer of an account may have an id of its own (`first_id`): a budget period's
  funding has the id the hot path uses when it opens the period
  (`derive_id("budget/cap", account)`), so the two never both fund it.
- Callers run the changes of one account one at a time (they hold a Postgres row lock on its
  wallet or budget): the count they read is then the count they extend.
- Lowering an overdraft limit, or a cap an admin cuts, moves exactly the difference (`EXACT`),
  so TigerBeetle refuses it (`exceeds_credits`) when more than the new limit is drawn or the
  period has used more than the new cap, held amounts included: nothing moves and the caller
  says so. A budget period's account is otherwise lowered by what headroom it has
  (`HEADROOM`, `balancing_debit`): reconciliation bringing it back to the cap Postgres kept.
"""

from __future__ import annotations

import enum

import msgspec

from ledger.client import Ledger
from ledger.codes import AccountCode, TransferCode, account_flags
from ledger.ids import budget_account_id, derive_id, overdraft_account_id, system_account_id
from ledger.limits import BATCH_EVENTS_MAX
from ledger.types import (
    Account,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    CreateAccountStatus,
    CreateTransferStatus,
    Transfer,
    TransferFlags,
)

S = CreateTransferStatus
# A limit's transfer that meets another one numbered the same (a concurrent first funding of a
# budget period by the hot path) is rebuilt from a fresh read, at most this many times.
LIMIT_MOVE_ATTEMPTS_MAX = 4


class Lowering(enum.Enum):
    EXACT = "exact"  # all of the difference, or nothing (refused)
    HEADROOM = "headroom"  # what the account has left, up to the difference


class LimitAccount(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    ledger: int
    code: TransferCode  # OVERDRAFT_LIMIT or BUDGET_LIMIT
    line_id: int  # the system account the limit comes from
    owner: int  # user_data_128 of its transfers: the wallet or the budget
    tenant: int
    lowering: Lowering
    first_id: int | None = None


class Credited(msgspec.Struct, frozen=True):
    amount: int  # what the account holds of its limit: credits minus debits of its code
    transfers: int  # how many transfers of its code it has
    balance: int  # its available balance: credits - debits - pending debits


class LimitMove(msgspec.Struct, frozen=True):
    before: int  # the credited limit before
    after: int  # the credited limit after (== target unless refused or short)
    refused: bool = False  # lowering EXACT that the ledger refused: nothing moved
    balance: int = 0  # the account's balance (headroom) when it was read last


def overdraft_account(wallet_id: int, ledger: int, tenant: int) -> LimitAccount:
    return LimitAccount(
        id=overdraft_account_id(wallet_id, AccountCode.OVERDRAFT),
        ledger=ledger,
        code=TransferCode.OVERDRAFT_LIMIT,
        line_id=system_account_id(ledger, AccountCode.OVERDRAFT_LINE),
        owner=wallet_id,
        tenant=tenant,
        lowering=Lowering.EXACT,
    )


def budget_period_account(
    budget_id: int, resource_id: int, ledger: int, tenant: int, period_start_ns: int
) -> LimitAccount:
    account_id = budget_account_id(resource_id, budget_id, period_start_ns)
    return LimitAccount(
        id=account_id,
        ledger=ledger,
        code=TransferCode.BUDGET_LIMIT,
        line_id=system_account_id(ledger, AccountCode.BUDGET_LINE),
        owner=budget_id,
        tenant=tenant,
        lowering=Lowering.HEADROOM,
        first_id=derive_id("budget/cap", account_id),
    )


async def open_limit_account(ledger: Ledger, account: LimitAccount, kind: AccountCode) -> None:
    """Creates the account if it is not there (idempotent)."""
    (result,) = await ledger.create_accounts(
        [
            Account(
                id=account.id,
                ledger=account.ledger,
                code=kind,
                user_data_128=account.owner,
                user_data_32=account.tenant,
                flags=AccountFlags(account_flags(kind)),
            )
        ]
    )
    assert result.status in (CreateAccountStatus.CREATED, CreateAccountStatus.EXISTS), result


async def credited(ledger: Ledger, account: LimitAccount) -> Credited:
    """What the account holds of its limit, read from the ledger (zero if it does not exist)."""
    amount = transfers = 0
    after = 0
    while True:
        page = await ledger.get_account_transfers(
            AccountFilter(
                account_id=account.id,
                user_data_128=0,
                user_data_64=0,
                user_data_32=0,
                code=account.code,
                timestamp_min=after + 1 if after else 0,
                timestamp_max=0,
                limit=BATCH_EVENTS_MAX,
                flags=AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS,
            )
        )
        for t in page:
            amount += t.amount if t.credit_account_id == account.id else -t.amount
        transfers += len(page)
        if len(page) < BATCH_EVENTS_MAX:
            break
        after = page[-1].timestamp
    found = await ledger.lookup_accounts([account.id])
    balance = (
        found[0].credits_posted - found[0].debits_posted - found[0].debits_pending if found else 0
    )
    return Credited(amount, transfers, balance)


def limit_transfer(
    account: LimitAccount, now: Credited, target: int, operation: int
) -> Transfer | None:
    """The transfer that brings the account's limit from `now` to `target` (pure), or None
    when there is nothing to move."""
    assert target >= 0
    change = target - now.amount
    if change == 0 or (change < 0 and account.lowering is Lowering.HEADROOM and now.balance <= 0):
        return None
    if now.transfers == 0 and account.first_id is not None:
        transfer_id = account.first_id
    else:
        transfer_id = derive_id("limit/change", account.id, now.transfers, operation)
    raise_it = change > 0
    return Transfer(
        id=transfer_id,
        debit_account_id=account.line_id if raise_it else account.id,
        credit_account_id=account.id if raise_it else account.line_id,
        amount=abs(change),
        user_data_128=account.owner,
        user_data_32=account.tenant,
        ledger=account.ledger,
        code=account.code,
        flags=(
            TransferFlags.BALANCING_DEBIT
            if not raise_it and account.lowering is Lowering.HEADROOM
            else TransferFlags.NONE
        ),
    )


async def move_limit(
    ledger: Ledger, account: LimitAccount, target: int, *, operation: int
) -> LimitMove:
    """Brings the account's limit to `target` (see the module's invariants)."""
    for _ in range(LIMIT_MOVE_ATTEMPTS_MAX):
        now = await credited(ledger, account)
        transfer = limit_transfer(account, now, target, operation)
        if transfer is None:
            return LimitMove(now.amount, now.amount, balance=now.balance)
        (result,) = await ledger.create_transfers([transfer])
        if result.status in (S.CREATED, S.EXISTS):
            after = await credited(ledger, account)
            return LimitMove(now.amount, after.amount, balance=after.balance)
        if result.status in (S.EXCEEDS_CREDITS, S.ID_ALREADY_FAILED):
            assert account.lowering is Lowering.EXACT, result
            return LimitMove(now.amount, now.amount, refused=True, balance=now.balance)
        # exists_with_different_*: another writer numbered a transfer the same (the hot path
        # funding a new budget period): read again and go on from what it did.
        assert result.status.name.startswith("EXISTS_WITH_DIFFERENT"), result
    raise AssertionError(f"the limit of account {account.id} kept moving under this change")
