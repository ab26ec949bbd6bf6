"""Requests over the batch limit are split between linked chains, never inside one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.client import ChainTooLong, split_on_chains
from ledger.types import Transfer, TransferFlags


def _events(chain_lengths: list[int]) -> list[Transfer]:
    events = []
    for chain, length in enumerate(chain_lengths):
        for i in range(length):
            last = i == length - 1
            events.append(
                Transfer(
                    id=chain * 1000 + i + 1,
                    flags=TransferFlags.NONE if last else TransferFlags.LINKED,
                )
            )
    return events


@given(st.lists(st.integers(1, 7), max_size=40), st.integers(7, 20))
def test_split_keeps_chains_whole_and_order(chains: list[int], events_max: int) -> None:
    events = _events(chains)
    requests = split_on_chains(events, events_max)
    assert [e for r in requests for e in r] == events
    for request in requests:
        assert 0 < len(request) <= events_max
        # Every request ends on a chain's last event.
        assert not request[-1].flags & TransferFlags.LINKED


def test_split_packs_requests_full() -> None:
    requests = split_on_chains(_events([3, 3, 3]), 6)
    assert [len(r) for r in requests] == [6, 3]


def test_chain_over_the_limit_is_refused() -> None:
    with pytest.raises(ChainTooLong, match="chain of 5 events"):
        split_on_chains(_events([2, 5]), 4)


def test_open_chain_at_the_end_is_passed_on() -> None:
    events = _events([2])
    events[-1].flags = TransferFlags.LINKED
    assert split_on_chains(events, 10) == [events]


def test_nothing_to_split() -> None:
    assert split_on_chains([], 10) == []
