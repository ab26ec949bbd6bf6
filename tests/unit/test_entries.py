"""The projection's pure half: chains cut whole, what a transfer becomes, values rounded half
away from zero, consumption summed per hour and day."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ledger.codes import AccountCode, TransferCode
from ledger.repositories.projection import BlockTerms, Entry, EntryRow
from ledger.types import TransferFlags, TransferRecord
from wallets import entries as rules

LINKED = int(TransferFlags.LINKED)
PENDING = int(TransferFlags.PENDING)
POST = int(TransferFlags.POST_PENDING_TRANSFER)
BLOCK, WALLET, SYSTEM, RESERVATION = 100, 200, 300, 400
ACCOUNTS = {
    BLOCK: rules.AccountInfo(AccountCode.GRANT, WALLET),
    SYSTEM: rules.AccountInfo(AccountCode.CONTROL_DRAIN, 0),
}


def record(id_: int, code: int, amount: int, flags: int = 0, **fields: int) -> TransferRecord:
    values = {
        "debit_account_id": BLOCK,
        "credit_account_id": SYSTEM,
        "pending_id": 0,
        "user_data_128": 7,
        "user_data_64": 1_000,
        "user_data_32": 1,
        "timeout": 0,
        "ledger": 9,
        "timestamp": 10_000 + id_,
        **fields,
    }
    return TransferRecord(
        id=id_,
        amount=amount,
        code=code,
        flags=flags,
        debit_account_id=values["debit_account_id"],
        credit_account_id=values["credit_account_id"],
        pending_id=values["pending_id"],
        user_data_128=values["user_data_128"],
        user_data_64=values["user_data_64"],
        user_data_32=values["user_data_32"],
        timeout=values["timeout"],
        ledger=values["ledger"],
        timestamp=values["timestamp"],
    )


def test_chains_are_cut_whole_and_a_chain_cut_short_is_left_for_later() -> None:
    a = [record(1, 1, 0, LINKED), record(2, 3, 5)]
    b = [record(3, 1, 0, LINKED), record(4, 3, 5, LINKED)]
    assert rules.split_chains([*a, *b]) == [a]


def test_a_partial_post_is_a_settle_and_a_release_and_a_timeout_gives_back_the_hold() -> None:
    reserve = record(1, TransferCode.RESERVE, 30, PENDING, timeout=2)
    projected = rules.project([[reserve]], ACCOUNTS, {}, {}, {})
    (opened,) = projected.opened
    assert opened.expires_at_ns == reserve.timestamp + 2 * rules.NS_PER_S
    post = record(2, TransferCode.RESERVE, 12, POST, pending_id=1, user_data_128=8)
    settled = rules.project([[post]], ACCOUNTS, {1: opened}, {}, {})
    assert [(e.kind, e.amount, e.pending) for e in settled.entries] == [
        ("settle", -12, -12),
        ("release", 0, -18),
    ]
    assert settled.resolved == [1]
    timeout = rules.timeout_entry(opened)
    assert (timeout.kind, timeout.pending, timeout.engine_ts) == (
        "timeout",
        -30,
        opened.expires_at_ns,
    )


def test_bookkeeping_and_legs_that_moved_nothing_make_no_entry() -> None:
    chain = [
        record(1, TransferCode.OPERATION_HEADER, 0, LINKED),
        record(2, TransferCode.DEBIT, 0, LINKED),  # a balancing leg that took nothing
        record(3, TransferCode.CONTROL_CHECK, 0, 0, debit_account_id=SYSTEM),
    ]
    assert rules.project([chain], ACCOUNTS, {}, {}, {}).entries == []


@given(
    consideration=st.integers(1, 10**9),
    credits=st.integers(1, 10**12),
    amount=st.integers(-(10**12), 10**12),
)
def test_values_round_half_away_from_zero_and_are_odd(
    consideration: int, credits: int, amount: int
) -> None:
    terms = BlockTerms("USD", consideration, credits)
    value = rules.value_nano(amount, terms)
    exact = amount * consideration * rules.NS_PER_S
    assert abs(value * credits - exact) * 2 <= credits  # within half a unit
    assert rules.value_nano(-amount, terms) == -value  # away from zero, both ways


def test_rollups_sum_consumption_per_hour_and_day_and_skip_budgets() -> None:
    def row(kind: str, amount: int, at_ns: int, account_kind: str = "block") -> EntryRow:
        entry = Entry(
            transfer_id=at_ns,
            kind=kind,
            effective_at_ns=at_ns,
            engine_ts=at_ns,
            code=3,
            credit_type_id=9,
            account_id=BLOCK,
            account_kind=account_kind,
            owner_id=WALLET,
            wallet_id=WALLET,
            operation_id=1,
            reservation_id=0,
            amount=amount,
            pending=0,
            dimension_set_id=5,
        )
        return EntryRow(entry, 11, 12, "USD", amount * 10)

    hour = rules.NS_PER_HOUR
    rows = [
        row("debit", -30, 5),
        row("settle", -20, hour + 5),
        row("refund", 10, hour + 6),
        row("budget_usage", -30, 7, "budget"),
        row("grant", 100, 8),
    ]
    rolled = {
        (r.grain, r.bucket_start_ns): (r.credits, r.value_nano, r.entries)
        for r in rules.rollups(rows)
    }
    assert rolled == {
        ("hour", 0): (30, 300, 1),
        ("hour", hour): (10, 100, 2),
        ("day", 0): (40, 400, 3),
    }
