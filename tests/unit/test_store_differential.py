"""A differential test of the embedded engine's history store: it must change no semantics.

Two engines get the same random requests at the same clock times: A keeps everything in memory
(no data directory), B checkpoints every few hundred bytes of journal, so that most of its
history is read back from the store (or from a layer being checkpointed), and is closed and
reopened from its directory now and then (a replay). Every result must be identical: the
statuses and timestamps of every create, every read (lookups of old, new, failed and unknown
ids; account filters; queries), and, at the end, the canonical image of both state machines.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol

from hypothesis import HealthCheck, given, settings
from hypothesis import note as hypothesis_note
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from ledger.clock import ManualClock
from ledger.embedded import EmbeddedEngine
from ledger.types import (
    AMOUNT_MAX,
    Account,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    CreateAccountStatus,
    CreateTransferStatus,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
    TransferFlags,
)

CHECKPOINT_BYTES = 300
LEDGERS = (1, 2)
UNKNOWN_ACCOUNT = 999
USER_DATA_128 = (0, 0, 11, 12)
USER_DATA_64 = (0, 0, 21)
USER_DATA_32 = (0, 0, 31)
CODES = (1, 2, 7)
ACCOUNT_FLAGS = (
    AccountFlags.NONE,
    AccountFlags.HISTORY,
    AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.HISTORY,
    AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS,
    AccountFlags.NONE,
)
TIMEOUTS = (0, 0, 0, 1, 2, 5, 60)
ADVANCES = (0.5, 1, 1.5, 2, 3, 10)
STEPS = (
    ["transfers"] * 8
    + ["advance"] * 2
    + ["accounts", "imported", "reopen", "checkpoint_now", "idle"]
)
KINDS = (
    ["single"] * 3
    + ["pending"] * 3
    + ["post"] * 3
    + ["void"] * 2
    + ["balancing", "resubmit", "resubmit", "reuse_failed", "bad_account", "closing", "twice"]
)


@dataclasses.dataclass
class World:
    """What the test knows of the ledger, from engine A's answers."""

    next_id: int = 1
    next_account: int = 1
    accounts: dict[int, Account] = dataclasses.field(default_factory=dict)  # created
    submitted_accounts: list[Account] = dataclasses.field(default_factory=list)
    submitted: list[Transfer] = dataclasses.field(default_factory=list)
    created: dict[int, Transfer] = dataclasses.field(default_factory=dict)  # as submitted
    failed: list[int] = dataclasses.field(default_factory=list)
    pendings: list[int] = dataclasses.field(default_factory=list)  # oldest first
    stamps: list[int] = dataclasses.field(default_factory=list)  # of created transfers
    last_ts: int = 0  # of the newest object created

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def members(self, ledger: int) -> list[int]:
        return [a.id for a in self.accounts.values() if a.ledger == ledger]


def note(text: str) -> None:
    """A line of the failing example's story (outside a hypothesis test: nothing)."""
    if currently_in_test_context():
        hypothesis_note(text)


def open_disk_engine(
    directory: Path, clock: ManualClock, *, ingest: bool = False
) -> EmbeddedEngine:
    """The engine with its history on disk, checkpointing every few hundred bytes of journal;
    with `ingest`, each checkpoint goes through the checkpointer process and SST files (the
    way large ones go), whatever its size."""
    engine = EmbeddedEngine(
        directory,
        clock_ns=clock,
        fsync=False,
        snapshot_bytes=CHECKPOINT_BYTES,
        id_filter_bits_log2=16,
    )
    if ingest:
        assert engine.store is not None
        engine.store.ingest_min = 0
    return engine


class Requests(Protocol):
    """What the generator below drives: a pair of engines (tests/conformance/
    test_cluster_differential.py drives this engine and a real cluster with it too)."""

    def same(self, method: str, argument: Any) -> list[Any]:
        """Sends the request to both engines, asserts that the answers are the same, returns
        the answer."""
        ...

    def advance(self, seconds: float) -> None:
        """Moves the engines' clocks on."""
        ...

    def reopen(self) -> None:
        """Closes the engine with its history on disk and opens it again from its directory."""
        ...

    def checkpoint_now(self) -> None:
        """Has the engine with its history on disk checkpoint now."""
        ...


class Pair:
    """Engine A (in memory) and engine B (on disk), driven alike."""

    def __init__(self, directory: Path, *, ingest: bool = False) -> None:
        self.directory = directory
        self.ingest = ingest
        self.clock_a = ManualClock()
        self.clock_b = ManualClock()
        self.a = EmbeddedEngine(None, clock_ns=self.clock_a)
        self.b = self._open_b()
        self.client_a = self.a.client_sync()
        self.client_b = self.b.client_sync()

    def _open_b(self) -> EmbeddedEngine:
        return open_disk_engine(self.directory, self.clock_b, ingest=self.ingest)

    def same(self, method: str, argument: Any) -> list[Any]:
        note(f"{method}({argument!r})")
        got_a = getattr(self.client_a, method)(argument)
        got_b = getattr(self.client_b, method)(argument)
        assert got_a == got_b, f"{method} differs\n  memory: {got_a!r}\n  store:  {got_b!r}"
        return list(got_a)

    def advance(self, seconds: float) -> None:
        note(f"advance({seconds})")
        self.clock_a.advance(seconds)
        self.clock_b.advance(seconds)

    def reopen(self) -> None:
        note("reopen B")
        image = self.b.state.canonical_bytes()
        self.b.close()
        self.b = self._open_b()
        self.client_b = self.b.client_sync()
        assert self.b.state.canonical_bytes() == image, "B's replay changed its state"

    def checkpoint_now(self) -> None:
        note("checkpoint B now")
        self.b.snapshot()

    def close(self) -> None:
        self.a.close()
        self.b.close()


def _draw_account(data: st.DataObject, world: World) -> Account:
    choice = data.draw(st.sampled_from(["new", "new", "resubmit", "invalid"]))
    if choice == "resubmit" and world.submitted_accounts:
        old = data.draw(st.sampled_from(world.submitted_accounts))
        field = data.draw(
            st.sampled_from(["", "flags", "user_data_128", "user_data_64", "ledger", "code"])
        )
        if field == "flags":
            return dataclasses.replace(old, flags=old.flags ^ AccountFlags.HISTORY)
        if field == "ledger":
            return dataclasses.replace(old, ledger=3 - old.ledger)
        if field:
            return dataclasses.replace(old, **{field: getattr(old, field) + 1})
        return old
    world.next_account += 1
    return Account(
        id=world.next_account,
        user_data_128=data.draw(st.sampled_from(USER_DATA_128)),
        user_data_64=data.draw(st.sampled_from(USER_DATA_64)),
        user_data_32=data.draw(st.sampled_from(USER_DATA_32)),
        ledger=data.draw(st.sampled_from(LEDGERS)),
        code=0 if choice == "invalid" else data.draw(st.sampled_from(CODES)),
        flags=data.draw(st.sampled_from(ACCOUNT_FLAGS))
        | (AccountFlags.LINKED if data.draw(st.integers(0, 3)) == 0 else AccountFlags.NONE),
    )


def _imported_accounts(data: st.DataObject, world: World) -> list[Account]:
    """Imported accounts, at timestamps past the newest object or of an existing transfer."""
    accounts = []
    for _ in range(data.draw(st.integers(1, 2))):
        stamp = (
            world.last_ts + data.draw(st.integers(1, 3))
            if data.draw(st.booleans())
            else _timestamp(data, world)
        )
        account = _draw_account(data, world)
        accounts.append(
            dataclasses.replace(
                account, flags=account.flags | AccountFlags.IMPORTED, timestamp=stamp
            )
        )
    return accounts


def _pick_pending(data: st.DataObject, world: World) -> int:
    """A pending transfer's id, old ones (likely in the store by now) as often as new ones;
    now and then an id that is no pending transfer at all."""
    roll = data.draw(st.integers(0, 9))
    if roll == 0 or not world.pendings:
        return data.draw(st.sampled_from([world.next_id + 500, *world.created, 1]))
    if roll <= 4:
        return data.draw(st.sampled_from(world.pendings[:4]))
    return data.draw(st.sampled_from(world.pendings))


def _draw_transfers(data: st.DataObject, world: World) -> list[Transfer]:
    """One event, or for `twice` two that post or void the same pending transfer (with one id
    or two) in one batch."""
    kind = data.draw(st.sampled_from(KINDS))
    if kind != "twice":
        return [_draw_transfer(data, world, kind)]
    first = _draw_transfer(data, world, data.draw(st.sampled_from(["post", "void"])))
    flags = first.flags
    if data.draw(st.booleans()):
        flags ^= TransferFlags.POST_PENDING_TRANSFER | TransferFlags.VOID_PENDING_TRANSFER
    second = dataclasses.replace(
        first, id=first.id if data.draw(st.booleans()) else world.new_id(), flags=flags
    )
    return [first, second]


def _draw_transfer(data: st.DataObject, world: World, kind: str) -> Transfer:
    if kind == "resubmit" and world.submitted:
        # Often a pending transfer (it may still be pending, and older than a checkpoint).
        pendings = [world.created[i] for i in world.pendings]
        use_pendings = bool(pendings) and data.draw(st.booleans())
        old = data.draw(st.sampled_from(pendings if use_pendings else world.submitted))
        field = data.draw(
            st.sampled_from(
                [
                    "",
                    "",
                    "amount",
                    "user_data_128",
                    "user_data_64",
                    "user_data_32",
                    "code",
                    "timeout",
                    "pending_id",
                    "debit_account_id",
                    "flags",
                ]
            )
        )
        if field == "flags":
            return dataclasses.replace(old, flags=old.flags ^ TransferFlags.LINKED)
        if field == "amount" and old.amount == AMOUNT_MAX:
            return dataclasses.replace(old, amount=1)
        if field:
            return dataclasses.replace(old, **{field: getattr(old, field) + 1})
        return old
    if kind == "reuse_failed" and world.failed:
        tid = data.draw(st.sampled_from(world.failed))
    else:
        tid = world.new_id()
    ledger = data.draw(st.sampled_from(LEDGERS))
    members = world.members(ledger)
    if len(members) < 2:
        members = [UNKNOWN_ACCOUNT, UNKNOWN_ACCOUNT + 1]
    dr, cr = data.draw(st.permutations(members))[:2]
    if kind == "bad_account":
        if data.draw(st.booleans()):
            dr = UNKNOWN_ACCOUNT
        else:
            cr = UNKNOWN_ACCOUNT
    amount = data.draw(st.integers(0, 60))
    flags = TransferFlags.NONE
    pending_id = 0
    timeout = 0
    if kind == "pending":
        flags = TransferFlags.PENDING
        timeout = data.draw(st.sampled_from(TIMEOUTS))
    elif kind == "closing":
        flags = TransferFlags.PENDING | data.draw(
            st.sampled_from([TransferFlags.CLOSING_DEBIT, TransferFlags.CLOSING_CREDIT])
        )
        timeout = data.draw(st.sampled_from((1, 2)))
    elif kind in ("post", "void"):
        flags = (
            TransferFlags.POST_PENDING_TRANSFER
            if kind == "post"
            else TransferFlags.VOID_PENDING_TRANSFER
        )
        pending_id = _pick_pending(data, world)
        amount = data.draw(st.sampled_from([0, amount, AMOUNT_MAX]))
        p = world.created.get(pending_id)
        if p is not None and data.draw(st.integers(0, 2)) == 0:
            # The pending transfer's own fields, or one of them wrong.
            dr, cr, ledger = p.debit_account_id, p.credit_account_id, p.ledger
            if data.draw(st.booleans()):
                dr, cr = cr, dr
        else:
            dr = cr = ledger = 0
    elif kind == "balancing":
        flags = data.draw(
            st.sampled_from(
                [
                    TransferFlags.BALANCING_DEBIT,
                    TransferFlags.BALANCING_CREDIT,
                    TransferFlags.BALANCING_DEBIT | TransferFlags.BALANCING_CREDIT,
                    TransferFlags.BALANCING_DEBIT | TransferFlags.PENDING,
                ]
            )
        )
        amount = data.draw(st.sampled_from([amount, AMOUNT_MAX]))
    if data.draw(st.integers(0, 3)) == 0:
        flags |= TransferFlags.LINKED
    return Transfer(
        id=tid,
        debit_account_id=dr,
        credit_account_id=cr,
        amount=amount,
        pending_id=pending_id,
        user_data_128=data.draw(st.sampled_from(USER_DATA_128)),
        user_data_64=data.draw(st.sampled_from(USER_DATA_64)),
        user_data_32=data.draw(st.sampled_from(USER_DATA_32)),
        timeout=timeout,
        ledger=ledger,
        code=data.draw(st.sampled_from(CODES)),
        flags=flags,
    )


def _create_accounts(pair: Requests, world: World, accounts: list[Account]) -> None:
    results = pair.same("create_accounts", accounts)
    for account, result in zip(accounts, results, strict=True):
        account = dataclasses.replace(
            account, timestamp=0, flags=account.flags & ~AccountFlags.IMPORTED
        )
        world.submitted_accounts.append(account)
        if result.status == CreateAccountStatus.CREATED:
            world.last_ts = max(world.last_ts, result.timestamp)
            world.accounts[account.id] = account


def _imported_transfers(data: st.DataObject, world: World) -> list[Transfer]:
    """A batch of imported events: timestamps just past the newest object (valid when the
    clock has moved on since), or of an existing transfer (a regression)."""
    events = []
    ts = world.last_ts
    for _ in range(data.draw(st.integers(1, 3))):
        ts += data.draw(st.integers(1, 3))
        stamp = ts if data.draw(st.integers(0, 3)) else _timestamp(data, world)
        event = dataclasses.replace(
            _draw_transfer(data, world, data.draw(st.sampled_from(KINDS[:-1]))),
            timeout=0,
            timestamp=stamp,
        )
        events.append(dataclasses.replace(event, flags=event.flags | TransferFlags.IMPORTED))
    return events


def _create_transfers(pair: Requests, world: World, transfers: list[Transfer]) -> None:
    results = pair.same("create_transfers", transfers)
    for transfer, result in zip(transfers, results, strict=True):
        transfer = dataclasses.replace(
            transfer, timestamp=0, flags=transfer.flags & ~TransferFlags.IMPORTED
        )
        world.submitted.append(transfer)
        if result.status == CreateTransferStatus.CREATED:
            world.last_ts = max(world.last_ts, result.timestamp)
            world.created[transfer.id] = transfer
            world.stamps.append(result.timestamp)
            if transfer.flags & TransferFlags.PENDING:
                world.pendings.append(transfer.id)
        elif transfer.id not in world.created:
            world.failed.append(transfer.id)


def _timestamp(data: st.DataObject, world: World) -> int:
    stamps = world.stamps or [0]
    return data.draw(st.sampled_from([0, 0, *stamps[:3], *stamps]))


def _range(data: st.DataObject, world: World) -> tuple[int, int]:
    low, high = _timestamp(data, world), _timestamp(data, world)
    if high and low > high and data.draw(st.integers(0, 4)):
        low, high = high, low  # mostly valid; now and then min > max (an empty answer)
    return low, high


def _read(pair: Requests, data: st.DataObject, world: World) -> None:
    kind = data.draw(
        st.sampled_from(
            [
                "lookup_transfers",
                "lookup_transfers",
                "lookup_accounts",
                "get_account_transfers",
                "get_account_transfers",
                "get_account_balances",
                "query_transfers",
                "query_transfers",
                "query_accounts",
            ]
        )
    )
    account_ids = [*world.accounts, UNKNOWN_ACCOUNT]
    if kind == "lookup_transfers":
        pool = [
            *list(world.created)[:5],
            *world.created,
            *world.failed,
            *world.pendings,
            world.next_id + 1000,
        ]
        ids = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=10))
        pair.same(kind, ids)
    elif kind == "lookup_accounts":
        pair.same(kind, data.draw(st.lists(st.sampled_from(account_ids), max_size=6)))
    elif kind in ("get_account_transfers", "get_account_balances"):
        low, high = _range(data, world)
        flags = data.draw(
            st.sampled_from(
                [
                    AccountFilterFlags.DEBITS,
                    AccountFilterFlags.CREDITS,
                    AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS,
                ]
            )
        )
        if data.draw(st.booleans()):
            flags |= AccountFilterFlags.REVERSED
        account_filter = AccountFilter(
            account_id=data.draw(st.sampled_from(account_ids)),
            user_data_128=data.draw(st.sampled_from(USER_DATA_128)),
            user_data_64=data.draw(st.sampled_from(USER_DATA_64)),
            user_data_32=data.draw(st.sampled_from(USER_DATA_32)),
            code=data.draw(st.sampled_from((0, 0, *CODES))),
            timestamp_min=low,
            timestamp_max=high,
            limit=data.draw(st.integers(1, 20)),
            flags=flags,
        )
        pair.same(kind, account_filter)
    else:
        low, high = _range(data, world)
        query_filter = QueryFilter(
            user_data_128=data.draw(st.sampled_from(USER_DATA_128)),
            user_data_64=data.draw(st.sampled_from(USER_DATA_64)),
            user_data_32=data.draw(st.sampled_from(USER_DATA_32)),
            ledger=data.draw(st.sampled_from((0, 0, *LEDGERS))),
            code=data.draw(st.sampled_from((0, 0, *CODES))),
            timestamp_min=low,
            timestamp_max=high,
            limit=data.draw(st.integers(1, 20)),
            flags=QueryFilterFlags.REVERSED if data.draw(st.booleans()) else QueryFilterFlags.NONE,
        )
        pair.same(kind, query_filter)


def run_steps(
    pair: Requests,
    data: st.DataObject,
    world: World,
    *,
    steps: tuple[int, int],
    kinds: list[str],
    draws_per_batch: int,
) -> None:
    """A random sequence of steps of `kinds` (transfers, imported, accounts, advance, reopen,
    checkpoint_now), each followed by one to three random reads."""
    for _ in range(data.draw(st.integers(*steps), label="steps")):
        step = data.draw(st.sampled_from(kinds))
        if step == "transfers":
            n = data.draw(st.integers(1, draws_per_batch))
            events = [e for _ in range(n) for e in _draw_transfers(data, world)]
            _create_transfers(pair, world, events)
        elif step == "imported":
            if data.draw(st.booleans()):
                _create_transfers(pair, world, _imported_transfers(data, world))
            else:
                _create_accounts(pair, world, _imported_accounts(data, world))
        elif step == "accounts":
            n = data.draw(st.integers(1, 3))
            _create_accounts(pair, world, [_draw_account(data, world) for _ in range(n)])
        elif step == "advance":
            pair.advance(data.draw(st.sampled_from(ADVANCES)))
        elif step == "reopen":
            pair.reopen()
        elif step == "checkpoint_now":
            pair.checkpoint_now()
        for _ in range(data.draw(st.integers(1, 3))):
            _read(pair, data, world)


def _setup(pair: Requests, world: World) -> None:
    accounts = [
        Account(
            id=i,
            user_data_128=USER_DATA_128[i % 4],
            user_data_64=USER_DATA_64[i % 3],
            user_data_32=USER_DATA_32[i % 3],
            ledger=LEDGERS[i % 2],
            code=CODES[i % 3],
            flags=ACCOUNT_FLAGS[i % len(ACCOUNT_FLAGS)],
        )
        for i in range(1, 9)
    ]
    world.next_account = len(accounts)
    _create_accounts(pair, world, accounts)
    # Credit the debit-constrained accounts, debit the credit-constrained ones.
    funding = []
    for account in accounts:
        other = next(a.id for a in accounts if a.ledger == account.ledger and a.id != account.id)
        for dr, cr in ((other, account.id), (account.id, other)):
            funding.append(
                Transfer(
                    id=world.new_id(),
                    debit_account_id=dr,
                    credit_account_id=cr,
                    amount=100,
                    ledger=account.ledger,
                    code=1,
                )
            )
    _create_transfers(pair, world, funding)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_store_changes_no_semantics(tmp_path_factory: Any, data: st.DataObject) -> None:
    ingest = data.draw(st.booleans(), label="checkpoints through the checkpointer")
    pair = Pair(tmp_path_factory.mktemp("differential") / "engine", ingest=ingest)
    world = World()
    try:
        _setup(pair, world)
        run_steps(pair, data, world, steps=(3, 30), kinds=STEPS, draws_per_batch=5)
        # Any request runs the expiry pulse: let every timeout pass, then compare the states.
        pair.advance(120)
        pair.same("lookup_accounts", list(world.accounts))
        assert pair.a.state.canonical_bytes() == pair.b.state.canonical_bytes()
    finally:
        pair.close()


def _pending_1_to_2(tid: int, timeout: int = 0) -> Transfer:
    """A pending transfer of 5 from account 1 to account 2 (ledger 1)."""
    return Transfer(
        id=tid,
        debit_account_id=1,
        credit_account_id=2,
        amount=5,
        ledger=1,
        code=1,
        flags=TransferFlags.PENDING,
        timeout=timeout,
    )


def test_a_pending_transfer_older_than_a_checkpoint_posted_twice_in_one_batch(
    tmp_path: Path,
) -> None:
    """The smallest case the property test found: a pending transfer still pending at a
    checkpoint, posted (or posted, then voided) by two events of one request."""
    pair = Pair(tmp_path / "engine", ingest=True)
    try:
        pair.same("create_accounts", [Account(id=i, ledger=1, code=1) for i in (1, 2)])
        pair.same("create_transfers", [_pending_1_to_2(10)])
        pair.checkpoint_now()
        post = Transfer(id=11, pending_id=10, amount=5, flags=TransferFlags.POST_PENDING_TRANSFER)
        void = Transfer(id=12, pending_id=10, flags=TransferFlags.VOID_PENDING_TRANSFER)
        pair.same("create_transfers", [post, post, void])
        assert pair.a.state.canonical_bytes() == pair.b.state.canonical_bytes()
    finally:
        pair.close()


def test_a_checkpoint_writes_the_accounts_its_interval_changed_an_expiry_too(
    tmp_path: Path,
) -> None:
    """A checkpoint writes only the accounts created or changed since the one before (not all
    of them), and among the changed, those of a pending transfer that expired with no transfer
    of the interval naming them: reopened, the engine has their balances as they were."""
    pair = Pair(tmp_path / "engine")
    written: list[list[int]] = []
    store = pair.b.store
    assert store is not None
    write = store.write

    def recording(checkpoint: Any) -> None:
        written.append(sorted(a[0] for a in checkpoint.accounts))
        write(checkpoint)

    store.write = recording  # type: ignore[method-assign]
    try:
        pair.same("create_accounts", [Account(id=i, ledger=1, code=1) for i in (1, 2, 3, 4)])
        pair.same("create_transfers", [_pending_1_to_2(10, timeout=1)])
        pair.checkpoint_now()
        pair.same(
            "create_transfers",
            [Transfer(id=11, debit_account_id=3, credit_account_id=2, amount=1, ledger=1, code=1)],
        )
        pair.checkpoint_now()
        pair.advance(2)
        (one, _, _, _) = pair.same("lookup_accounts", [1, 2, 3, 4])  # the expiry's request
        assert one.debits_pending == 0
        pair.checkpoint_now()
        assert written == [[1, 2, 3, 4], [2, 3], [1, 2]]
        pair.reopen()  # (asserts that the state is the same as before)
        pair.same("lookup_accounts", [1, 2, 3, 4])
        assert pair.a.state.canonical_bytes() == pair.b.state.canonical_bytes()
    finally:
        pair.close()


def test_the_filter_holds_every_id_whichever_way_each_checkpoint_went(tmp_path: Path) -> None:
    """Checkpoints through the checkpointer, in batches in the engine, then through the
    checkpointer again: the filter saved at the end holds every id of the three. (The child
    adds to the filter it kept only when the engine says it moved that one in place; the
    batches saved a filter of the engine's own in between, which the child must read.)"""
    from ledger.embedded.store import IdFilter

    clock = ManualClock(10**18)
    with open_disk_engine(tmp_path / "disk", clock, ingest=True) as engine:
        store = engine.store
        assert store is not None
        client = engine.client_sync()
        client.create_accounts([Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1)])
        ids: list[int] = []
        for way, start in (("ingest", 1000), ("batches", 2000), ("ingest", 3000)):
            store.ingest_min = 0 if way == "ingest" else 1 << 62
            batch = [
                Transfer(
                    id=start + i,
                    debit_account_id=1,
                    credit_account_id=2,
                    amount=1,
                    ledger=1,
                    code=1,
                )
                for i in range(10)
            ]
            assert all(
                r.status is CreateTransferStatus.CREATED for r in client.create_transfers(batch)
            )
            ids += [t.id for t in batch]
            engine.snapshot()
        saved = IdFilter.load(store._filter_path, 16)
        assert saved is not None
        assert [i for i in ids if not saved.may_contain(i)] == []
