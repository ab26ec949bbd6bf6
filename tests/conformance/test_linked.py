"""Linked chains (flags.linked): all or nothing, per-event statuses, independent chains.

Reference: the chain handling of `execute_create` in TigerBeetle's `src/state_machine.zig`: the
event that breaks a chain keeps its own status, the chain's other events get
`linked_event_failed`, and a batch ending inside a chain fails it with `linked_event_chain_open`.
"""

from __future__ import annotations

import itertools
from typing import Any

from tigerbeetle import AccountFlags, CreateAccountStatus, CreateTransferStatus, TransferFlags

from ._helpers import (
    account,
    account_statuses,
    balances,
    create_accounts_ok,
    create_transfers_ok,
    lookup_transfer,
    new_accounts,
    transfer,
    transfer_status,
    transfer_statuses,
)

A = CreateAccountStatus
T = CreateTransferStatus
LINKED_A = AccountFlags.LINKED
LINKED = TransferFlags.LINKED
DMNEC = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS


def test_account_chain_is_all_or_nothing(tb: Any, ledger_id: int) -> None:
    chain = [
        account(ledger_id, flags=LINKED_A),
        account(ledger_id, flags=LINKED_A, code=0),
        account(ledger_id),
    ]
    assert account_statuses(tb, chain) == [
        A.LINKED_EVENT_FAILED,
        A.CODE_MUST_NOT_BE_ZERO,
        A.LINKED_EVENT_FAILED,
    ]
    assert tb.lookup_accounts([a.id for a in chain]) == []


def test_account_chain_succeeds_as_a_unit(tb: Any, ledger_id: int) -> None:
    chain = [
        account(ledger_id, flags=LINKED_A),
        account(ledger_id, flags=LINKED_A),
        account(ledger_id),
    ]
    create_accounts_ok(tb, chain)
    found = tb.lookup_accounts([a.id for a in chain])
    assert [a.flags for a in found] == [LINKED_A, LINKED_A, AccountFlags.NONE]


def test_chain_open_at_the_end_of_the_batch(tb: Any, ledger_id: int) -> None:
    alone = account(ledger_id, flags=LINKED_A)
    assert account_statuses(tb, [alone]) == [A.LINKED_EVENT_CHAIN_OPEN]
    pair = [account(ledger_id, flags=LINKED_A), account(ledger_id, flags=LINKED_A)]
    assert account_statuses(tb, pair) == [A.LINKED_EVENT_FAILED, A.LINKED_EVENT_CHAIN_OPEN]
    assert tb.lookup_accounts([alone.id, pair[0].id, pair[1].id]) == []

    dr, cr = new_accounts(tb, ledger_id)
    open_chain = [
        transfer(dr, cr, 1, ledger_id),
        transfer(dr, cr, 2, ledger_id, flags=LINKED),
        transfer(dr, cr, 3, ledger_id, flags=LINKED),
    ]
    assert transfer_statuses(tb, open_chain) == [
        T.CREATED,
        T.LINKED_EVENT_FAILED,
        T.LINKED_EVENT_CHAIN_OPEN,
    ]
    assert balances(tb, dr) == (0, 1, 0, 0)
    # The open chain's last event fails even if it is itself invalid.
    assert transfer_statuses(tb, [transfer(dr, cr, 1, 0, code=0, flags=LINKED)]) == [
        T.LINKED_EVENT_CHAIN_OPEN
    ]


def test_transfer_chain_rollback_leaves_no_trace(tb: Any, ledger_id: int) -> None:
    (plain,) = new_accounts(tb, ledger_id, count=1)
    (dmnec,) = new_accounts(tb, ledger_id, count=1, flags=DMNEC)
    fund = transfer(plain, dmnec, 100, ledger_id, flags=LINKED)
    spend = transfer(dmnec, plain, 60, ledger_id, flags=LINKED)
    overspend = transfer(dmnec, plain, 50, ledger_id, flags=LINKED)
    tail = transfer(plain, dmnec, 1, ledger_id)
    assert transfer_statuses(tb, [fund, spend, overspend, tail]) == [
        T.LINKED_EVENT_FAILED,
        T.LINKED_EVENT_FAILED,
        T.EXCEEDS_CREDITS,
        T.LINKED_EVENT_FAILED,
    ]
    assert tb.lookup_transfers([fund.id, spend.id, overspend.id, tail.id]) == []
    assert balances(tb, plain) == (0, 0, 0, 0)
    assert balances(tb, dmnec) == (0, 0, 0, 0)
    # Events rolled back with linked_event_failed keep their ids free.
    spend.flags = TransferFlags.NONE
    create_transfers_ok(tb, [fund, spend])
    assert balances(tb, dmnec) == (0, 60, 0, 100)


def test_events_in_a_chain_see_each_other(tb: Any, ledger_id: int) -> None:
    (plain,) = new_accounts(tb, ledger_id, count=1)
    (dmnec,) = new_accounts(tb, ledger_id, count=1, flags=DMNEC)
    fund = transfer(plain, dmnec, 100, ledger_id, flags=LINKED)
    spend = transfer(dmnec, plain, 100, ledger_id)
    create_transfers_ok(tb, [fund, spend])
    assert balances(tb, dmnec) == (0, 100, 0, 100)


def test_a_failed_chain_is_invisible_to_later_events(tb: Any, ledger_id: int) -> None:
    (plain,) = new_accounts(tb, ledger_id, count=1)
    (dmnec,) = new_accounts(tb, ledger_id, count=1, flags=DMNEC)
    batch = [
        transfer(plain, dmnec, 100, ledger_id, flags=LINKED),
        transfer(plain, dmnec, 1, ledger_id, code=0),
        transfer(dmnec, plain, 50, ledger_id),
    ]
    assert transfer_statuses(tb, batch) == [
        T.LINKED_EVENT_FAILED,
        T.CODE_MUST_NOT_BE_ZERO,
        T.EXCEEDS_CREDITS,
    ]


def test_independent_chains_in_one_batch(tb: Any, ledger_id: int) -> None:
    dr, cr = new_accounts(tb, ledger_id)
    batch = [
        transfer(dr, cr, 1, ledger_id, flags=LINKED),
        transfer(dr, cr, 2, ledger_id),
        transfer(dr, cr, 4, ledger_id, flags=LINKED),
        transfer(dr, cr, 8, 0, flags=LINKED),
        transfer(dr, cr, 16, ledger_id),
        transfer(dr, cr, 32, ledger_id),
        transfer(dr, cr, 64, ledger_id, flags=LINKED),
        transfer(dr, cr, 128, ledger_id, flags=LINKED),
        transfer(dr, cr, 256, ledger_id),
    ]
    results = tb.create_transfers(batch)
    assert [r.status for r in results] == [
        T.CREATED,
        T.CREATED,
        T.LINKED_EVENT_FAILED,
        T.LEDGER_MUST_NOT_BE_ZERO,
        T.LINKED_EVENT_FAILED,
        T.CREATED,
        T.CREATED,
        T.CREATED,
        T.CREATED,
    ]
    assert balances(tb, dr) == (0, 1 + 2 + 32 + 64 + 128 + 256, 0, 0)
    # Result timestamps are strictly increasing over the batch, failed events included.
    timestamps = [r.timestamp for r in results]
    assert all(a < b for a, b in itertools.pairwise(timestamps))
    assert lookup_transfer(tb, batch[5].id).timestamp == timestamps[5]


def test_exists_breaks_a_chain(tb: Any, ledger_id: int) -> None:
    existing = account(ledger_id)
    (created_at,) = create_accounts_ok(tb, [existing])
    fresh = account(ledger_id, flags=LINKED_A)
    results = tb.create_accounts([fresh, existing])
    assert [r.status for r in results] == [A.LINKED_EVENT_FAILED, A.EXISTS]
    assert results[1].timestamp == created_at
    assert tb.lookup_accounts([fresh.id]) == []


def test_duplicate_id_inside_a_chain_fails_the_chain(tb: Any, ledger_id: int) -> None:
    a = account(ledger_id, flags=LINKED_A)
    same = account(ledger_id, id=a.id, flags=LINKED_A)
    last = account(ledger_id)
    assert account_statuses(tb, [a, same, last]) == [
        A.LINKED_EVENT_FAILED,
        A.EXISTS,
        A.LINKED_EVENT_FAILED,
    ]
    assert tb.lookup_accounts([a.id, last.id]) == []

    dr, cr = new_accounts(tb, ledger_id)
    t = transfer(dr, cr, 5, ledger_id, flags=LINKED)
    assert transfer_statuses(tb, [t, t]) == [T.LINKED_EVENT_FAILED, T.LINKED_EVENT_CHAIN_OPEN]
    t_end = transfer(dr, cr, 5, ledger_id, id=t.id)
    assert transfer_statuses(tb, [t, t_end]) == [
        T.LINKED_EVENT_FAILED,
        T.EXISTS_WITH_DIFFERENT_FLAGS,
    ]
    assert tb.lookup_transfers([t.id]) == []
    assert balances(tb, dr) == (0, 0, 0, 0)


def test_transient_failure_in_a_chain_burns_only_its_own_id(tb: Any, ledger_id: int) -> None:
    (plain,) = new_accounts(tb, ledger_id, count=1)
    (dmnec,) = new_accounts(tb, ledger_id, count=1, flags=DMNEC)
    first = transfer(plain, dmnec, 5, ledger_id, flags=LINKED)
    failing = transfer(dmnec, plain, 10, ledger_id)
    assert transfer_statuses(tb, [first, failing]) == [T.LINKED_EVENT_FAILED, T.EXCEEDS_CREDITS]
    assert transfer_status(tb, failing) == T.ID_ALREADY_FAILED
    first.flags = TransferFlags.NONE
    create_transfers_ok(tb, [first])


def test_chain_across_accounts_and_transfers_is_per_request(tb: Any, ledger_id: int) -> None:
    # A chain cannot span requests: the linked flag of the last event of a request leaves the
    # chain open, whatever the next request holds.
    dr, cr = new_accounts(tb, ledger_id)
    assert transfer_statuses(tb, [transfer(dr, cr, 1, ledger_id, flags=LINKED)]) == [
        T.LINKED_EVENT_CHAIN_OPEN
    ]
    create_transfers_ok(tb, [transfer(dr, cr, 1, ledger_id)])
    assert balances(tb, dr) == (0, 1, 0, 0)


def test_accounts_of_a_failed_chain_can_be_created_later(tb: Any, ledger_id: int) -> None:
    chain = [account(ledger_id, flags=LINKED_A), account(ledger_id, flags=LINKED_A), account(0)]
    assert account_statuses(tb, chain) == [
        A.LINKED_EVENT_FAILED,
        A.LINKED_EVENT_FAILED,
        A.LEDGER_MUST_NOT_BE_ZERO,
    ]
    chain[2] = account(ledger_id, id=chain[2].id)
    timestamps = create_accounts_ok(tb, chain)
    assert [a.timestamp for a in tb.lookup_accounts([a.id for a in chain])] == timestamps
