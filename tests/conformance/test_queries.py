"""get_account_transfers, get_account_balances, query_accounts and query_transfers.

Reference: `get_scan_from_account_filter`, `prefetch_get_account_balances_scan`,
`execute_get_account_balances` and `get_scan_from_query_filter` in TigerBeetle's
`src/state_machine.zig`; docs/reference/account-filter.md and query-filter.md. An invalid filter
is not an error: the result is empty.

A real cluster keeps every earlier test's objects, so each query here is narrowed to this test's
objects by an account id, a unique user_data_128, this test's ledger, or the timestamps of one
batch (a batch's timestamps are contiguous, nothing else can fall between them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from tigerbeetle import AccountFilterFlags, AccountFlags, QueryFilterFlags, TransferFlags

from ._helpers import (
    AMOUNT_MAX,
    U128_MAX,
    account,
    account_filter,
    create_accounts_ok,
    create_transfers_ok,
    new_accounts,
    new_id,
    post,
    query_filter,
    transfer,
)

DEBITS = AccountFilterFlags.DEBITS
CREDITS = AccountFilterFlags.CREDITS
REVERSED = AccountFilterFlags.REVERSED
BOTH = DEBITS | CREDITS
TIMESTAMP_INVALID = 1 << 63


@dataclass
class History:
    a: int  # The account the filters are about (flags.history).
    b: int
    c: int
    ids: list[int]  # t1..t5, t5 does not touch `a`.
    timestamps: list[int]
    tag: int  # The user_data_128 of t1 and t4.


@pytest.fixture
def history(tb: Any, ledger_id: int) -> History:
    (a,) = new_accounts(tb, ledger_id, count=1, flags=AccountFlags.HISTORY)
    b, c = new_accounts(tb, ledger_id, count=2)
    tag = new_id()
    transfers = [
        transfer(a, b, 1, ledger_id, code=1, user_data_128=tag, user_data_64=7, user_data_32=70),
        transfer(b, a, 2, ledger_id, code=2, user_data_64=7, user_data_32=71),
        transfer(a, c, 3, ledger_id, code=1, user_data_64=8, user_data_32=70),
        transfer(c, a, 4, ledger_id, code=3, user_data_128=tag, user_data_64=8, user_data_32=71),
        transfer(b, c, 5, ledger_id, code=1, user_data_128=tag),
    ]
    timestamps = create_transfers_ok(tb, transfers)
    return History(a, b, c, [t.id for t in transfers], timestamps, tag)


def _transfer_ids(tb: Any, account_id: int, **fields: Any) -> list[int]:
    return [t.id for t in tb.get_account_transfers(account_filter(account_id, **fields))]


def test_get_account_transfers_debits_credits_and_order(tb: Any, history: History) -> None:
    t1, t2, t3, t4, _ = history.ids
    assert _transfer_ids(tb, history.a) == [t1, t2, t3, t4]
    assert _transfer_ids(tb, history.a, flags=DEBITS) == [t1, t3]
    assert _transfer_ids(tb, history.a, flags=CREDITS) == [t2, t4]
    assert _transfer_ids(tb, history.a, flags=BOTH | REVERSED) == [t4, t3, t2, t1]
    assert _transfer_ids(tb, history.a, flags=CREDITS | REVERSED) == [t4, t2]
    found = tb.get_account_transfers(account_filter(history.a, flags=DEBITS))
    assert [t.amount for t in found] == [1, 3]
    assert [t.timestamp for t in found] == [history.timestamps[0], history.timestamps[2]]


def test_get_account_transfers_limit(tb: Any, history: History) -> None:
    t1, t2, t3, t4, _ = history.ids
    assert _transfer_ids(tb, history.a, limit=1) == [t1]
    assert _transfer_ids(tb, history.a, limit=3) == [t1, t2, t3]
    assert _transfer_ids(tb, history.a, limit=2, flags=BOTH | REVERSED) == [t4, t3]


def test_get_account_transfers_user_data_and_code(tb: Any, history: History) -> None:
    t1, t2, t3, t4, _ = history.ids
    assert _transfer_ids(tb, history.a, user_data_128=history.tag) == [t1, t4]
    assert _transfer_ids(tb, history.a, user_data_64=7) == [t1, t2]
    assert _transfer_ids(tb, history.a, user_data_32=70) == [t1, t3]
    assert _transfer_ids(tb, history.a, code=1) == [t1, t3]
    assert _transfer_ids(tb, history.a, code=1, flags=DEBITS | REVERSED) == [t3, t1]
    # Conditions combine with AND.
    assert _transfer_ids(tb, history.a, user_data_64=8, user_data_32=71) == [t4]
    assert _transfer_ids(tb, history.a, user_data_128=history.tag, code=1) == [t1]
    assert _transfer_ids(tb, history.a, user_data_128=history.tag, flags=DEBITS, code=3) == []
    assert _transfer_ids(tb, history.a, code=9) == []


def test_get_account_transfers_timestamp_range(tb: Any, history: History) -> None:
    t1, t2, t3, t4, _ = history.ids
    ts = history.timestamps
    assert _transfer_ids(tb, history.a, timestamp_min=ts[1], timestamp_max=ts[2]) == [t2, t3]
    assert _transfer_ids(tb, history.a, timestamp_min=ts[3]) == [t4]
    assert _transfer_ids(tb, history.a, timestamp_max=ts[0]) == [t1]
    assert _transfer_ids(tb, history.a, timestamp_min=ts[2], timestamp_max=ts[2]) == [t3]
    assert _transfer_ids(
        tb, history.a, timestamp_min=ts[0], timestamp_max=ts[3], flags=BOTH | REVERSED, limit=2
    ) == [t4, t3]
    assert _transfer_ids(tb, history.a, timestamp_min=ts[3] + 1) == []


def test_get_account_transfers_needs_no_history_flag(tb: Any, history: History) -> None:
    t1, t2, _, _, t5 = history.ids
    assert _transfer_ids(tb, history.b) == [t1, t2, t5]


@pytest.mark.parametrize(
    "fields",
    [
        {"account_id": 0},
        {"account_id": U128_MAX},
        {"limit": 0},
        {"flags": AccountFilterFlags.NONE},
        {"flags": REVERSED},
        {"flags": BOTH | AccountFilterFlags(1 << 3)},
        {"timestamp_min": 2, "timestamp_max": 1},
        {"timestamp_min": TIMESTAMP_INVALID},
        {"timestamp_max": TIMESTAMP_INVALID},
    ],
    ids=[
        "account_id_zero",
        "account_id_max",
        "limit_zero",
        "no_debits_no_credits",
        "reversed_only",
        "reserved_flag",
        "min_above_max",
        "min_out_of_range",
        "max_out_of_range",
    ],
)
def test_invalid_account_filter_returns_nothing(
    tb: Any, history: History, fields: dict[str, Any]
) -> None:
    # The same filter, valid, finds the history.
    assert len(tb.get_account_transfers(account_filter(history.a))) == 4
    assert len(tb.get_account_balances(account_filter(history.a))) == 4
    assert tb.get_account_transfers(account_filter(history.a, **fields)) == []
    assert tb.get_account_balances(account_filter(history.a, **fields)) == []


def test_account_filter_for_a_missing_account_returns_nothing(tb: Any) -> None:
    assert tb.get_account_transfers(account_filter(new_id())) == []
    assert tb.get_account_balances(account_filter(new_id())) == []


def test_get_account_balances_one_entry_per_transfer(tb: Any, history: History) -> None:
    found = tb.get_account_balances(account_filter(history.a))
    assert [
        (b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted) for b in found
    ] == [(0, 1, 0, 0), (0, 1, 0, 2), (0, 4, 0, 2), (0, 4, 0, 6)]
    assert [b.timestamp for b in found] == history.timestamps[:4]


def test_get_account_balances_filters(tb: Any, history: History) -> None:
    ts = history.timestamps

    def posted(**fields: Any) -> list[tuple[int, int]]:
        found = tb.get_account_balances(account_filter(history.a, **fields))
        return [(b.debits_posted, b.credits_posted) for b in found]

    assert posted(flags=DEBITS) == [(1, 0), (4, 2)]
    assert posted(flags=CREDITS | REVERSED) == [(4, 6), (1, 2)]
    assert posted(limit=1, flags=BOTH | REVERSED) == [(4, 6)]
    assert posted(code=1) == [(1, 0), (4, 2)]
    assert posted(user_data_128=history.tag) == [(1, 0), (4, 6)]
    assert posted(user_data_32=71) == [(1, 2), (4, 6)]
    assert posted(timestamp_min=ts[1], timestamp_max=ts[2]) == [(1, 2), (4, 2)]


def test_get_account_balances_is_empty_without_history(tb: Any, history: History) -> None:
    assert tb.get_account_transfers(account_filter(history.b)) != []
    assert tb.get_account_balances(account_filter(history.b)) == []
    assert tb.get_account_balances(account_filter(history.c)) == []


def test_get_account_balances_with_pending_and_post(tb: Any, ledger_id: int) -> None:
    (a,) = new_accounts(tb, ledger_id, count=1, flags=AccountFlags.HISTORY)
    (b,) = new_accounts(tb, ledger_id, count=1, flags=AccountFlags.HISTORY)
    p = transfer(a, b, 10, ledger_id, flags=TransferFlags.PENDING)
    create_transfers_ok(tb, [p])
    create_transfers_ok(tb, [post(p, 6)])
    create_transfers_ok(tb, [transfer(b, a, AMOUNT_MAX - 6, ledger_id)])
    debit_side = tb.get_account_balances(account_filter(a))
    assert [
        (x.debits_pending, x.debits_posted, x.credits_pending, x.credits_posted) for x in debit_side
    ] == [(10, 0, 0, 0), (0, 6, 0, 0), (0, 6, 0, AMOUNT_MAX - 6)]
    credit_side = tb.get_account_balances(account_filter(b))
    assert [
        (x.debits_pending, x.debits_posted, x.credits_pending, x.credits_posted)
        for x in credit_side
    ] == [(0, 0, 10, 0), (0, 0, 0, 6), (0, AMOUNT_MAX - 6, 0, 6)]


def test_failed_transfers_leave_no_history(tb: Any, ledger_id: int) -> None:
    (a,) = new_accounts(
        tb,
        ledger_id,
        count=1,
        flags=AccountFlags.HISTORY | AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
    )
    (b,) = new_accounts(tb, ledger_id, count=1)
    results = tb.create_transfers([transfer(a, b, 1, ledger_id), transfer(b, a, 3, ledger_id)])
    assert [r.status.name for r in results] == ["EXCEEDS_CREDITS", "CREATED"]
    found = tb.get_account_balances(account_filter(a))
    assert [(x.credits_posted, x.timestamp) for x in found] == [(3, results[1].timestamp)]
    assert len(tb.get_account_transfers(account_filter(a))) == 1


# query_accounts


@dataclass
class Population:
    ids: list[int]
    timestamps: list[int]
    tag: int  # user_data_128 shared by the whole population
    ledger: int


@pytest.fixture
def accounts_population(tb: Any, ledger_id: int) -> Population:
    tag = new_id()
    accounts = [
        account(ledger_id, user_data_128=tag, user_data_64=1, user_data_32=10, code=100),
        account(ledger_id, user_data_128=tag, user_data_64=2, user_data_32=10, code=200),
        account(ledger_id, user_data_128=tag, user_data_64=1, user_data_32=20, code=100),
        account(ledger_id, user_data_128=tag, user_data_64=2, user_data_32=20, code=200),
    ]
    timestamps = create_accounts_ok(tb, accounts)
    return Population([a.id for a in accounts], timestamps, tag, ledger_id)


def _account_ids(tb: Any, **fields: Any) -> list[int]:
    return [a.id for a in tb.query_accounts(query_filter(**fields))]


def test_query_accounts_by_fields(tb: Any, accounts_population: Population) -> None:
    p = accounts_population
    a1, a2, a3, a4 = p.ids
    assert _account_ids(tb, user_data_128=p.tag) == [a1, a2, a3, a4]
    assert _account_ids(tb, ledger=p.ledger) == [a1, a2, a3, a4]
    assert _account_ids(tb, ledger=p.ledger, user_data_64=1) == [a1, a3]
    assert _account_ids(tb, user_data_128=p.tag, user_data_32=20) == [a3, a4]
    assert _account_ids(tb, ledger=p.ledger, code=200) == [a2, a4]
    assert _account_ids(tb, user_data_128=p.tag, user_data_64=2, user_data_32=20, code=200) == [a4]
    assert _account_ids(tb, user_data_128=p.tag, code=300) == []
    assert _account_ids(tb, user_data_128=new_id()) == []
    found = tb.query_accounts(query_filter(user_data_128=p.tag, limit=1))
    assert [(a.id, a.timestamp, a.code) for a in found] == [(a1, p.timestamps[0], 100)]


def test_query_accounts_limit_order_and_timestamps(
    tb: Any, accounts_population: Population
) -> None:
    p = accounts_population
    a1, a2, a3, a4 = p.ids
    ts = p.timestamps
    reversed_ = QueryFilterFlags.REVERSED
    assert _account_ids(tb, ledger=p.ledger, flags=reversed_) == [a4, a3, a2, a1]
    assert _account_ids(tb, ledger=p.ledger, limit=2) == [a1, a2]
    assert _account_ids(tb, ledger=p.ledger, limit=2, flags=reversed_) == [a4, a3]
    assert _account_ids(tb, ledger=p.ledger, timestamp_min=ts[1], timestamp_max=ts[2]) == [a2, a3]
    assert _account_ids(tb, ledger=p.ledger, timestamp_min=ts[3]) == [a4]
    assert _account_ids(tb, ledger=p.ledger, timestamp_max=ts[0]) == [a1]
    # No field condition at all: a scan by timestamp alone.
    assert _account_ids(tb, timestamp_min=ts[0], timestamp_max=ts[3]) == [a1, a2, a3, a4]
    assert _account_ids(tb, timestamp_min=ts[0], timestamp_max=ts[3], flags=reversed_, limit=3) == [
        a4,
        a3,
        a2,
    ]


@pytest.mark.parametrize(
    "fields",
    [
        {"limit": 0},
        {"timestamp_min": 2, "timestamp_max": 1},
        {"timestamp_min": TIMESTAMP_INVALID},
        {"timestamp_max": TIMESTAMP_INVALID},
        {"flags": QueryFilterFlags(1 << 1)},
    ],
    ids=["limit_zero", "min_above_max", "min_out_of_range", "max_out_of_range", "reserved_flag"],
)
def test_invalid_query_filter_returns_nothing(
    tb: Any,
    accounts_population: Population,
    transfers_population: Population,
    fields: dict[str, Any],
) -> None:
    # The same filters, valid, find the populations.
    assert len(tb.query_accounts(query_filter(user_data_128=accounts_population.tag))) == 4
    assert len(tb.query_transfers(query_filter(user_data_128=transfers_population.tag))) == 4
    accounts = {"user_data_128": accounts_population.tag, **fields}
    assert tb.query_accounts(query_filter(**accounts)) == []
    transfers = {"user_data_128": transfers_population.tag, **fields}
    assert tb.query_transfers(query_filter(**transfers)) == []


# query_transfers


@pytest.fixture
def transfers_population(tb: Any, ledger_id: int) -> Population:
    a, b = new_accounts(tb, ledger_id)
    tag = new_id()
    transfers = [
        transfer(a, b, 1, ledger_id, user_data_128=tag, user_data_64=1, user_data_32=10, code=100),
        transfer(b, a, 2, ledger_id, user_data_128=tag, user_data_64=2, user_data_32=10, code=200),
        transfer(a, b, 3, ledger_id, user_data_128=tag, user_data_64=1, user_data_32=20, code=100),
        transfer(b, a, 4, ledger_id, user_data_128=tag, user_data_64=2, user_data_32=20, code=200),
    ]
    timestamps = create_transfers_ok(tb, transfers)
    return Population([t.id for t in transfers], timestamps, tag, ledger_id)


def _transfer_query_ids(tb: Any, **fields: Any) -> list[int]:
    return [t.id for t in tb.query_transfers(query_filter(**fields))]


def test_query_transfers_by_fields(tb: Any, transfers_population: Population) -> None:
    p = transfers_population
    t1, t2, t3, t4 = p.ids
    assert _transfer_query_ids(tb, user_data_128=p.tag) == [t1, t2, t3, t4]
    assert _transfer_query_ids(tb, ledger=p.ledger) == [t1, t2, t3, t4]
    assert _transfer_query_ids(tb, ledger=p.ledger, user_data_64=2) == [t2, t4]
    assert _transfer_query_ids(tb, user_data_128=p.tag, user_data_32=10) == [t1, t2]
    assert _transfer_query_ids(tb, ledger=p.ledger, code=100) == [t1, t3]
    assert _transfer_query_ids(tb, ledger=p.ledger, code=100, user_data_32=20) == [t3]
    assert _transfer_query_ids(tb, ledger=p.ledger, code=300) == []
    assert _transfer_query_ids(tb, ledger=p.ledger ^ 1, user_data_128=p.tag) == []
    found = tb.query_transfers(query_filter(user_data_128=p.tag, code=200))
    assert [(t.amount, t.timestamp) for t in found] == [(2, p.timestamps[1]), (4, p.timestamps[3])]


def test_query_transfers_limit_order_and_timestamps(
    tb: Any, transfers_population: Population
) -> None:
    p = transfers_population
    t1, t2, t3, t4 = p.ids
    ts = p.timestamps
    reversed_ = QueryFilterFlags.REVERSED
    assert _transfer_query_ids(tb, user_data_128=p.tag, flags=reversed_) == [t4, t3, t2, t1]
    assert _transfer_query_ids(tb, user_data_128=p.tag, limit=3) == [t1, t2, t3]
    assert _transfer_query_ids(tb, user_data_128=p.tag, limit=1, flags=reversed_) == [t4]
    assert _transfer_query_ids(
        tb, user_data_128=p.tag, timestamp_min=ts[1], timestamp_max=ts[2]
    ) == [t2, t3]
    assert _transfer_query_ids(tb, ledger=p.ledger, timestamp_min=ts[2], flags=reversed_) == [
        t4,
        t3,
    ]
    assert _transfer_query_ids(tb, timestamp_min=ts[0], timestamp_max=ts[3]) == [t1, t2, t3, t4]
    assert _transfer_query_ids(tb, timestamp_min=ts[1], timestamp_max=ts[1]) == [t2]
