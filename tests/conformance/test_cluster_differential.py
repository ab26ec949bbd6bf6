"""A differential test of the embedded engine, with its history on disk, against a real cluster.

The random requests of tests/unit/test_store_differential.py (accounts, transfers single, pending,
posted, voided, balancing, closing, linked, resubmitted, posted twice in one batch; every read,
with random filters) go to the embedded engine with its history on disk (checkpointing every few
hundred bytes of journal, closed and reopened from its directory now and then), and to a real
TigerBeetle 0.17 cluster at `TB_ADDRESSES`. Every answer must be the same. Skipped when
`TB_ADDRESSES` is not set.

The generator speaks small logical values; `ClusterPair` translates each request for both sides,
and each answer back, so that the two engines are asked the same question:

- ids (of accounts and transfers) go through a bijection onto random 127-bit ids, new for every
  example: the cluster's database is shared and never empty, and keeps every earlier example;
- ledgers 1 and 2 become two random ledgers of the example. A query filter for any ledger (0)
  goes to the engine as it is, and to the cluster as one query per ledger of the example,
  merged: a bare query would see the rest of the cluster's database;
- timeouts are counted in days (a pending transfer with timeout 1 expires after 86,400 s),
  because the cluster's clock is the wall clock: no pending transfer expires while the test
  runs, on either side, and timeouts still take part in every check of the events;
- timestamps, the cluster's from its wall clock and the engine's from a ManualClock, become the
  number of the event that got them (counting the events of every create request of the
  example, from 1): TigerBeetle gives the events of a request consecutive timestamps that end at
  the request's, so this is exact, and the answers are compared timestamps and all. A timestamp
  bound of a filter is given to each side as the timestamp that side gave to that event.

Left out: imported events (their timestamps would have to be set from the cluster's clock) and
expiry of pending transfers (it happens in real time on the cluster). The manual clock of the
engine still moves forward now and then.

The seed is printed in the summary line of the run; `CLUSTER_DIFF_SEED=N` replays a run (with new
ids in the cluster), `CLUSTER_DIFF_EXAMPLES=N` changes the number of sequences.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from ledger.clock import ManualClock
from ledger.types import (
    Account,
    AccountBalance,
    AccountFilter,
    AccountFilterFlags,
    CreateAccountResult,
    CreateTransferResult,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
)
from tests.unit.test_store_differential import (
    LEDGERS,
    STEPS,
    World,
    _setup,
    note,
    open_disk_engine,
    run_steps,
)

from ._helpers import account_filter, query_filter
from .conftest import TB_ADDRESSES_ENV, ClusterSession, _cluster_addresses

pytestmark = pytest.mark.skipif(
    _cluster_addresses() is None,
    reason=f"{TB_ADDRESSES_ENV} is not set: this differential test needs a real TigerBeetle "
    "0.17.x cluster (set it to the cluster's addresses, e.g. 127.0.0.1:3000)",
)

SEED = int(os.environ.get("CLUSTER_DIFF_SEED") or random.randrange(1 << 32))
EXAMPLES = int(os.environ.get("CLUSTER_DIFF_EXAMPLES") or 250)
STEPS_PER_EXAMPLE = (15, 80)
EVENTS_PER_TRANSFER_STEP = 10
CLUSTER_STEPS = [s for s in STEPS if s != "imported"]

ID_SPACE = 1 << 127
TIMEOUT_UNIT_S = 86_400
# The largest answer of one request: 8189 objects of 128 bytes fill a 1 MiB message.
ANSWER_MAX = 8189

TALLY: Counter[str] = Counter()


class IdMap:
    """A bijection of the logical ids of the generator (small) onto random 127-bit ids."""

    def __init__(self, rng: random.Random) -> None:
        self.offset = rng.randrange(ID_SPACE)
        self.factor = rng.randrange(ID_SPACE) | 1  # odd: invertible modulo 2^127
        self.inverse = pow(self.factor, -1, ID_SPACE)

    def out(self, logical: int) -> int:
        if logical == 0:
            return 0
        physical = (self.offset + logical * self.factor) % ID_SPACE
        assert physical != 0
        return physical

    def back(self, physical: int) -> int:
        if physical == 0:
            return 0
        return ((physical - self.offset) * self.inverse) % ID_SPACE


class Stamps:
    """One side's timestamps as event numbers: for every create request, the timestamp its
    first event would have had minus one (`physical`), and the number of the events before it
    (`logical`)."""

    def __init__(self) -> None:
        self.physical: list[int] = []
        self.logical: list[int] = []
        self.sizes: list[int] = []

    def record(self, events_before: int, results: list[Any]) -> None:
        # A new event's timestamp is base + index + 1; an existing object's is older.
        base = max(result.timestamp - index - 1 for index, result in enumerate(results))
        if self.physical and base < self.physical[-1] + self.sizes[-1]:
            return  # Every event of the request answered with an older object's timestamp.
        self.physical.append(base)
        self.logical.append(events_before)
        self.sizes.append(len(results))

    def back(self, physical: int) -> int:
        """The number of the event that got this timestamp (-timestamp for none: a difference)."""
        if physical == 0:
            return 0
        i = bisect.bisect_left(self.physical, physical) - 1
        if i >= 0 and physical - self.physical[i] <= self.sizes[i]:
            return self.logical[i] + physical - self.physical[i]
        return -physical

    def out(self, logical: int) -> int:
        """The timestamp this side gave to event number `logical`."""
        if logical == 0:
            return 0
        i = bisect.bisect_left(self.logical, logical) - 1
        assert i >= 0 and logical - self.logical[i] <= self.sizes[i], f"no event {logical}"
        return self.physical[i] + logical - self.logical[i]


class ClusterPair:
    """The embedded engine with its history on disk (B) and the cluster (C), driven alike."""

    def __init__(self, directory: Path, cluster: Any, rng: random.Random) -> None:
        self.directory = directory
        self.clock_b = ManualClock()
        self.b = open_disk_engine(directory, self.clock_b)
        self.client_b = self.b.client_sync()
        self.client_c = cluster
        self.ids = IdMap(rng)
        self.ledger_base = rng.randrange(16, (1 << 32) - 16)
        self.stamps_b = Stamps()
        self.stamps_c = Stamps()
        self.events = 0  # of every create request so far: the number of the next event, less 1
        note(
            f"ids: offset {self.ids.offset}, factor {self.ids.factor}; ledger base "
            f"{self.ledger_base}"
        )

    # Requests, logical to physical.

    def _ledger_out(self, ledger: int) -> int:
        return self.ledger_base + ledger if ledger else 0

    def _account_out(self, a: Account) -> Account:
        return dataclasses.replace(a, id=self.ids.out(a.id), ledger=self._ledger_out(a.ledger))

    def _transfer_out(self, t: Transfer) -> Transfer:
        return dataclasses.replace(
            t,
            id=self.ids.out(t.id),
            debit_account_id=self.ids.out(t.debit_account_id),
            credit_account_id=self.ids.out(t.credit_account_id),
            pending_id=self.ids.out(t.pending_id),
            ledger=self._ledger_out(t.ledger),
            timeout=t.timeout * TIMEOUT_UNIT_S,
        )

    def _argument_out(self, method: str, argument: Any, stamps: Stamps) -> Any:
        if method == "create_accounts":
            return [self._account_out(a) for a in argument]
        if method == "create_transfers":
            return [self._transfer_out(t) for t in argument]
        if method in ("lookup_accounts", "lookup_transfers"):
            return [self.ids.out(i) for i in argument]
        if isinstance(argument, AccountFilter):
            return dataclasses.replace(
                argument,
                account_id=self.ids.out(argument.account_id),
                timestamp_min=stamps.out(argument.timestamp_min),
                timestamp_max=stamps.out(argument.timestamp_max),
            )
        assert isinstance(argument, QueryFilter), argument
        return dataclasses.replace(
            argument,
            ledger=self._ledger_out(argument.ledger),
            timestamp_min=stamps.out(argument.timestamp_min),
            timestamp_max=stamps.out(argument.timestamp_max),
        )

    # Answers, physical to logical.

    def _answer_back(self, row: Any, stamps: Stamps) -> Any:
        if isinstance(row, CreateAccountResult | CreateTransferResult | AccountBalance):
            return dataclasses.replace(row, timestamp=stamps.back(row.timestamp))
        if isinstance(row, Account):
            return dataclasses.replace(
                row,
                id=self.ids.back(row.id),
                ledger=row.ledger - self.ledger_base if row.ledger else 0,
                timestamp=stamps.back(row.timestamp),
            )
        assert isinstance(row, Transfer), row
        days, seconds = divmod(row.timeout, TIMEOUT_UNIT_S)
        return dataclasses.replace(
            row,
            id=self.ids.back(row.id),
            debit_account_id=self.ids.back(row.debit_account_id),
            credit_account_id=self.ids.back(row.credit_account_id),
            pending_id=self.ids.back(row.pending_id),
            ledger=row.ledger - self.ledger_base if row.ledger else 0,
            timeout=days if seconds == 0 else -row.timeout,
            timestamp=stamps.back(row.timestamp),
        )

    def _ask_cluster(self, method: str, argument: Any) -> list[Any]:
        call = getattr(self.client_c, method)
        if method.startswith("query_") and argument.ledger == 0:
            # Any ledger of this example: one query per ledger, merged in timestamp order.
            rows = [
                row
                for ledger in LEDGERS
                for row in call(dataclasses.replace(argument, ledger=self._ledger_out(ledger)))
            ]
            reversed_ = bool(argument.flags & QueryFilterFlags.REVERSED)
            rows.sort(key=lambda row: row.timestamp, reverse=reversed_)
            return rows[: argument.limit]
        return list(call(argument))

    def same(self, method: str, argument: Any) -> list[Any]:
        note(f"{method}({argument!r})")
        to_b = self._argument_out(method, argument, self.stamps_b)
        to_c = self._argument_out(method, argument, self.stamps_c)
        raw_b = list(getattr(self.client_b, method)(to_b))
        raw_c = self._ask_cluster(method, to_c)
        TALLY["requests"] += 1
        if method.startswith("create_"):
            TALLY["events"] += len(argument)
            assert len(raw_b) == len(raw_c) == len(argument)
            if argument:
                self.stamps_b.record(self.events, raw_b)
                self.stamps_c.record(self.events, raw_c)
            self.events += len(argument)
        else:
            TALLY["rows"] += len(raw_b)
        got_b = [self._answer_back(row, self.stamps_b) for row in raw_b]
        got_c = [self._answer_back(row, self.stamps_c) for row in raw_c]
        assert got_b == got_c, (
            f"{method} differs (seed {SEED})\n  request: {argument!r}\n  engine:  {got_b!r}\n"
            f"  cluster: {got_c!r}\n  engine, as sent: {to_b!r}\n    answered: {raw_b!r}\n"
            f"  cluster, as sent: {to_c!r}\n    answered: {raw_c!r}"
        )
        return got_b

    def advance(self, seconds: float) -> None:
        """Moves the engine's clock (the cluster's is the wall clock; no timeout is that short)."""
        note(f"advance({seconds})")
        self.clock_b.advance(seconds)

    def reopen(self) -> None:
        note("reopen B")
        image = self.b.state.canonical_bytes()
        self.b.close()
        self.b = open_disk_engine(self.directory, self.clock_b)
        self.client_b = self.b.client_sync()
        assert self.b.state.canonical_bytes() == image, "B's replay changed its state"
        TALLY["reopens"] += 1

    def checkpoint_now(self) -> None:
        note("checkpoint B now")
        self.b.snapshot()

    def close(self) -> None:
        self.b.close()


def _compare_everything(pair: ClusterPair, world: World) -> None:
    """Every object of the example, and every account's transfers and balances, read back."""
    if world.accounts:
        pair.same("lookup_accounts", list(world.accounts))
    ids = sorted({*world.created, *world.failed})
    for start in range(0, len(ids), ANSWER_MAX):
        pair.same("lookup_transfers", ids[start : start + ANSWER_MAX])
    for order in (QueryFilterFlags.NONE, QueryFilterFlags.REVERSED):
        for ledger in (0, *LEDGERS):
            query = query_filter(ledger=ledger, limit=ANSWER_MAX, flags=order)
            assert len(pair.same("query_transfers", query)) < ANSWER_MAX
            assert len(pair.same("query_accounts", query)) < ANSWER_MAX
    both = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS
    for account_id in world.accounts:
        for flags in (both, both | AccountFilterFlags.REVERSED):
            everything = account_filter(account_id, limit=ANSWER_MAX, flags=flags)
            assert len(pair.same("get_account_transfers", everything)) < ANSWER_MAX
            pair.same("get_account_balances", everything)


@pytest.fixture(scope="module")
def cluster(cluster_session: ClusterSession, request: pytest.FixtureRequest) -> Iterator[Any]:
    started = time.monotonic()
    TALLY.clear()
    yield cluster_session.client_sync()
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                f"\ncluster differential (seed {SEED}): {TALLY['examples']} sequences, "
                f"{TALLY['requests']} requests on each side ({TALLY['events']} events created, "
                f"{TALLY['rows']} rows read), {TALLY['reopens']} reopens, "
                f"{time.monotonic() - started:.0f} s"
            )


@seed(SEED)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_disk_engine_answers_as_the_cluster(
    cluster: Any, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    rng = random.Random(secrets.randbits(64))  # new ids each example, even when replayed
    pair = ClusterPair(tmp_path_factory.mktemp("cluster-differential") / "engine", cluster, rng)
    world = World()
    try:
        _setup(pair, world)
        run_steps(
            pair,
            data,
            world,
            steps=STEPS_PER_EXAMPLE,
            kinds=CLUSTER_STEPS,
            draws_per_batch=EVENTS_PER_TRANSFER_STEP,
        )
        pair.reopen()
        _compare_everything(pair, world)
        TALLY["examples"] += 1
    finally:
        pair.close()
