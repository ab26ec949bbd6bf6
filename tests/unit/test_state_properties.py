"""Property tests of the embedded state machine over random operation sequences.

After every request: per ledger, debits equal credits (posted and pending); every constrained
account respects its constraint; every balance equals what its transfers add up to.
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.clock import ManualClock
from ledger.embedded import EmbeddedEngine
from ledger.embedded.state import PENDING, StateMachine
from ledger.types import (
    AMOUNT_MAX,
    Account,
    AccountFlags,
    CreateTransferStatus,
    Transfer,
    TransferFlags,
)

ACCOUNTS = 6
LEDGERS = (1, 2)
ACCOUNT_FLAGS = [
    AccountFlags.NONE,
    AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.HISTORY,
    AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS,
]


def _accounts() -> list[Account]:
    return [
        Account(id=i + 1, ledger=LEDGERS[i % 2], code=1, flags=ACCOUNT_FLAGS[i % 3])
        for i in range(ACCOUNTS)
    ]


transfer_kind = st.sampled_from(["single", "pending", "post", "void", "balancing"])


# Ledger 1 holds accounts 1 (unconstrained), 3 (credits <= debits), 5 (debits <= credits);
# ledger 2 holds 2 (debits <= credits), 4 (unconstrained), 6 (credits <= debits).
FUNDING = [(1, 5), (3, 1), (4, 2), (6, 4)]


@st.composite
def transfer_events(draw: st.DrawFn, next_id: list[int], pendings: list[int]) -> list[Transfer]:
    n = draw(st.integers(1, 5))
    events = []
    for _ in range(n):
        kind = draw(transfer_kind)
        ledger = draw(st.sampled_from(LEDGERS))
        members = [i for i in range(1, ACCOUNTS + 1) if LEDGERS[(i - 1) % 2] == ledger]
        dr, cr = draw(st.permutations(members))[:2]
        if draw(st.integers(0, 9)) == 0:  # now and then, something invalid
            cr = draw(st.integers(1, ACCOUNTS))
        amount = draw(st.integers(0, 50))
        next_id[0] += 1
        tid = next_id[0]
        flags = TransferFlags.NONE
        pending_id = 0
        timeout = 0
        if kind == "pending":
            flags = TransferFlags.PENDING
            timeout = draw(st.sampled_from([0, 1, 3]))
            pendings.append(tid)
        elif kind in ("post", "void"):
            flags = (
                TransferFlags.POST_PENDING_TRANSFER
                if kind == "post"
                else TransferFlags.VOID_PENDING_TRANSFER
            )
            pending_id = draw(st.sampled_from(pendings)) if pendings else tid - 1
            amount = draw(st.sampled_from([0, amount, AMOUNT_MAX]))
        elif kind == "balancing":
            flags = draw(
                st.sampled_from([TransferFlags.BALANCING_DEBIT, TransferFlags.BALANCING_CREDIT])
            )
            amount = draw(st.sampled_from([amount, AMOUNT_MAX]))
        if draw(st.integers(0, 3)) == 0:
            flags |= TransferFlags.LINKED
        if kind in ("post", "void"):
            dr = cr = ledger = 0
        events.append(
            Transfer(
                id=tid,
                debit_account_id=dr,
                credit_account_id=cr,
                amount=amount,
                pending_id=pending_id,
                timeout=timeout,
                ledger=ledger,
                code=7,
                flags=flags,
            )
        )
    return events


def _check_invariants(state: StateMachine) -> None:
    sums: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    expected: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for t in state.all_transfers():
        tid, dr, cr, amount, *_ = t
        flags = t[11]
        if flags & TransferFlags.PENDING:
            if state.status_of(tid) == PENDING:
                expected[dr][0] += amount
                expected[cr][2] += amount
        else:
            expected[dr][1] += amount
            expected[cr][3] += amount
            if flags & TransferFlags.VOID_PENDING_TRANSFER:
                expected[dr][1] -= amount
                expected[cr][3] -= amount
    for a in state.accounts.values():
        dp, dpo, cp, cpo = a[1:5]
        assert [dp, dpo, cp, cpo] == expected[a[0]]
        s = sums[a[8]]
        s[0] += dp
        s[1] += dpo
        s[2] += cp
        s[3] += cpo
        if a[10] & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS:
            assert dp + dpo <= cpo
        if a[10] & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS:
            assert cp + cpo <= dpo
    for dp, dpo, cp, cpo in sums.values():
        assert dp == cp
        assert dpo == cpo


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_sequences_keep_the_books_balanced(tmp_path_factory, data: st.DataObject) -> None:
    clock = ManualClock()
    directory = tmp_path_factory.mktemp("journal")
    engine = EmbeddedEngine(
        directory, clock_ns=clock, fsync=False, snapshot_bytes=4096, id_filter_bits_log2=16
    )
    client = engine.client_sync()
    funding = [
        Transfer(
            id=10_000 + dr,
            debit_account_id=dr,
            credit_account_id=cr,
            amount=100,
            ledger=LEDGERS[(dr - 1) % 2],
            code=1,
        )
        for dr, cr in FUNDING
    ]
    client.create_accounts(_accounts())
    assert {r.status for r in client.create_transfers(funding)} == {CreateTransferStatus.CREATED}
    next_id = [0]
    pendings: list[int] = []
    for _ in range(data.draw(st.integers(1, 25))):
        client.create_transfers(data.draw(transfer_events(next_id, pendings)))
        if data.draw(st.booleans()):
            clock.advance(data.draw(st.sampled_from([0.5, 1, 2])))
            client.lookup_accounts([1])  # any request runs the expiry pulse
        _check_invariants(engine.state)
    image = engine.state.canonical_bytes()
    engine.close()
    # Replaying the journal (and snapshots) reproduces the same state, byte for byte.
    reopened = EmbeddedEngine(directory, clock_ns=clock, fsync=False, id_filter_bits_log2=16)
    try:
        assert reopened.state.canonical_bytes() == image
    finally:
        reopened.close()
