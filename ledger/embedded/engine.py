"""The embedded engine: TigerBeetle's state machine in-process, durable, behind the client API.

`EmbeddedEngine` owns one `StateMachine` and, when it has a data directory, one `Journal` and
one `HistoryStore` (the transfers older than the last checkpoint, on disk).
`client_sync()` and `client_async()` hand out objects with exactly the methods, argument types
and return types of `tigerbeetle.ClientSync` / `tigerbeetle.ClientAsync`.

Invariants:
- Requests are applied one at a time under `_lock`, in the order they are journaled; replaying
  the journal after the store's checkpoint therefore rebuilds the same state.
- Every 32 MiB of journal (`snapshot_bytes`) the newest layer of transfers is frozen and written
  to the store by the journal's checkpoint thread; the segments before it go once it is durable.
  A data directory written before the store (snapshot files) is upgraded into one on open.
- A request is answered only once its record, and every record before it, is durable. A read is
  answered only once every record it might have observed is durable, so no caller ever sees
  state that a crash could take back.
- Pending transfers expire by themselves: before any request, the engine runs TigerBeetle's
  `pulse` for every timeout that the clock has passed, and journals it like a request.
- Malformed input (a field out of its integer range, too many events) raises the same exception
  as the real client, before anything is applied.
"""

from __future__ import annotations

import marshal
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

from ledger.clock import business_clock, wall_clock_ns
from ledger.embedded.journal import Journal
from ledger.embedded.state import AccountTuple, StateMachine, TransferTuple
from ledger.embedded.store import DIRECTORY as STORE_DIRECTORY
from ledger.embedded.store import Checkpoint, HistoryStore
from ledger.limits import (
    BATCH_EVENTS_MAX,
    ENGINE_CACHE_BYTES_DEFAULT,
    ID_FILTER_BITS_LOG2_DEFAULT,
    JOURNAL_SNAPSHOT_BYTES_DEFAULT,
)
from ledger.types import (
    Account,
    AccountBalance,
    AccountFilter,
    AccountFlags,
    ClientClosedError,
    CreateAccountResult,
    CreateTransferResult,
    IntegerOverflowError,
    QueryFilter,
    TooMuchDataError,
    Transfer,
    TransferFlags,
)

OP_PULSE = 128
OP_CREATE_ACCOUNTS = 146
OP_CREATE_TRANSFERS = 147

_TRANSFER_FIELDS = (
    ("id", 128),
    ("debit_account_id", 128),
    ("credit_account_id", 128),
    ("amount", 128),
    ("pending_id", 128),
    ("user_data_128", 128),
    ("user_data_64", 64),
    ("user_data_32", 32),
    ("timeout", 32),
    ("ledger", 32),
    ("code", 16),
    ("flags", 16),
    ("timestamp", 64),
)
_ACCOUNT_FIELDS = (
    ("id", 128),
    ("debits_pending", 128),
    ("debits_posted", 128),
    ("credits_pending", 128),
    ("credits_posted", 128),
    ("user_data_128", 128),
    ("user_data_64", 64),
    ("user_data_32", 32),
    ("ledger", 32),
    ("code", 16),
    ("flags", 16),
    ("timestamp", 64),
)
FILTER_FIELDS = (
    ("account_id", 128),
    ("user_data_128", 128),
    ("user_data_64", 64),
    ("user_data_32", 32),
    ("code", 16),
    ("timestamp_min", 64),
    ("timestamp_max", 64),
    ("limit", 32),
    ("flags", 32),
)
QUERY_FIELDS = (
    ("user_data_128", 128),
    ("user_data_64", 64),
    ("user_data_32", 32),
    ("ledger", 32),
    ("code", 16),
    ("timestamp_min", 64),
    ("timestamp_max", 64),
    ("limit", 32),
    ("flags", 32),
)


class EmbeddedEngine:
    """TigerBeetle's state machine in this process; durable when given a data directory."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        clock_ns: Callable[[], int] | None = None,
        fsync: bool = True,
        snapshot_bytes: int = JOURNAL_SNAPSHOT_BYTES_DEFAULT,
        cache_bytes: int = ENGINE_CACHE_BYTES_DEFAULT,
        id_filter_bits_log2: int = ID_FILTER_BITS_LOG2_DEFAULT,
    ) -> None:
        assert snapshot_bytes > 0
        # By default the clock the data directory runs on: its test clock if it has one (a
        # sandbox's, ledger.clock), else the wall clock, whoever opens it.
        if clock_ns is None:
            clock_ns = wall_clock_ns if data_dir is None else business_clock(Path(data_dir))
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._snapshot_bytes = snapshot_bytes
        self._closed = False
        self.journal: Journal | None = None
        self.store: HistoryStore | None = None
        self._checkpoint_due: Checkpoint | None = None  # one that failed, to write again
        self.torn_bytes = 0
        self.replayed_records = 0
        self.upgraded = False  # from a data directory of format 1 (snapshots, no store)
        if data_dir is None:
            self.state = StateMachine()
            return
        journal = Journal(data_dir, fsync=fsync)
        store: HistoryStore | None = None
        try:
            store_path = Path(data_dir) / STORE_DIRECTORY
            legacy = not store_path.exists()  # written by the engine before the store, or new
            store = HistoryStore(
                store_path,
                fsync=fsync,
                cache_bytes=cache_bytes,
                filter_bits_log2=id_filter_bits_log2,
            )
            state, record = StateMachine.from_store(store)
            if record is None:
                # No checkpoint yet: a new data directory, or one of format 1, whose newest
                # snapshot (if any) and journal are replayed into memory, then checkpointed.
                recovered = journal.recover()
                if recovered.snapshot is not None:
                    state = StateMachine.from_export(decode_snapshot(recovered.snapshot), store)
                self.upgraded = legacy and (
                    recovered.snapshot is not None or bool(recovered.records)
                )
            else:
                recovered = journal.recover(record)
            for payload in recovered.records:
                _apply_record(state, payload)
            journal.start()
        except BaseException:
            journal.close()
            if store is not None:
                store.close()
            raise
        self.state = state
        self.journal = journal
        self.store = store
        self.torn_bytes = recovered.torn_bytes
        self.replayed_records = len(recovered.records)
        if self.upgraded:
            self.snapshot()

    # -------------------------------------------------------------------------------------
    # Clients.

    def client_sync(self) -> EmbeddedClientSync:
        return EmbeddedClientSync(self)

    def client_async(self) -> EmbeddedClientAsync:
        return EmbeddedClientAsync(self)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.journal is not None:
            self.journal.close()
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> EmbeddedEngine:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------------
    # Requests. Each returns (result, journal position to wait for).

    def create_accounts(self, accounts: Sequence[Account]) -> tuple[list[Any], int]:
        results, position = self.apply(OP_CREATE_ACCOUNTS, account_tuples(accounts))
        return [CreateAccountResult(timestamp=ts, status=s) for s, ts in results], position

    def create_transfers(self, transfers: Sequence[Transfer]) -> tuple[list[Any], int]:
        results, position = self.apply(OP_CREATE_TRANSFERS, transfer_tuples(transfers))
        return [CreateTransferResult(ts, s) for s, ts in results], position

    def apply(self, operation: int, events: list[Any]) -> tuple[list[Any], int]:
        """Creates accounts or transfers from checked tuples: [(status, timestamp)] per event,
        and the journal position to wait for."""
        create = (
            self.state.create_transfers
            if operation == OP_CREATE_TRANSFERS
            else self.state.create_accounts
        )
        with self._lock:
            self._check_open()
            self.state.settle(len(events))
            self._pulse()
            timestamp = self.state.prepare(len(events), self._clock_ns())
            results = create(timestamp, events)
            position = self._journal(operation, timestamp, events)
        return results, position

    def read(self, operation: str, argument: Any) -> tuple[list[Any], int]:
        rows, position = self.read_rows(operation, read_argument(operation, argument))
        return to_python(operation, rows), position

    def read_rows(self, operation: str, argument: Any) -> tuple[list[Any], int]:
        """A read's rows as the state machine's tuples (`argument` from `read_argument`)."""
        with self._lock:
            self._check_open()
            self.state.settle()
            self._pulse()
            rows = getattr(self.state, operation)(argument)
            position = self.journal.appended if self.journal is not None else 0
            return rows, position

    def _pulse(self) -> None:
        """Expires every pending transfer whose timeout the clock has passed (TigerBeetle's
        `pulse` operation), journaled like a request."""
        state = self.state
        now = self._clock_ns()
        while state.pulse_needed(now):
            timestamp = state.prepare(BATCH_EVENTS_MAX, now)
            state.pulse(timestamp)
            self._journal(OP_PULSE, timestamp, ())

    def _journal(self, operation: int, timestamp: int, events: list[Any] | tuple[()]) -> int:
        journal = self.journal
        if journal is None:
            return 0
        position = journal.append(marshal.dumps((operation, timestamp, events)))
        if journal.segment_bytes >= self._snapshot_bytes:
            self._checkpoint(journal, position)
        return position

    def _checkpoint(self, journal: Journal, position: int) -> None:
        """Has the journal's thread write the newest layer of transfers, and the live state, to
        the store as of `position` records; the journal then drops what came before. Called
        under the lock, after the record at `position` - 1 was applied."""
        journal.wait_snapshot(raise_error=False)
        state = self.state
        state.settle()
        store = self.store
        assert store is not None
        checkpoint = self._checkpoint_due
        if checkpoint is None:
            checkpoint = state.freeze(position)
        elif state.frozen is None:  # the one that failed was written after all
            checkpoint = None
        if checkpoint is None:
            self._checkpoint_due = None
            checkpoint = state.freeze(position)

        def write(checkpoint: Checkpoint = checkpoint) -> None:
            try:
                store.write(checkpoint)
            except BaseException:
                self._checkpoint_due = checkpoint  # written again at the next rotation
                raise
            self._checkpoint_due = None
            state.written()

        journal.rotate(write, position, keep_from=checkpoint.record)

    def snapshot(self) -> None:
        """Checkpoints now, and waits for it (start-up then replays nothing before it)."""
        with self._lock:
            self._check_open()
            if self.journal is None:
                return
            self._checkpoint(self.journal, self.journal.appended)
        self.journal.wait_snapshot()
        with self._lock:
            self.state.settle()

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError()

    def wait(self, position: int) -> None:
        if self.journal is not None and position:
            self.journal.wait(position)

    async def wait_async(self, position: int) -> None:
        if self.journal is not None and position:
            await self.journal.wait_async(position)


def _apply_record(state: StateMachine, payload: bytes) -> None:
    operation, timestamp, events = marshal.loads(payload)
    state.prepare_timestamp = max(state.prepare_timestamp, timestamp)
    if operation == OP_CREATE_TRANSFERS:
        state.create_transfers(timestamp, events)
    elif operation == OP_CREATE_ACCOUNTS:
        state.create_accounts(timestamp, events)
    elif operation == OP_PULSE:
        state.pulse(timestamp)
    else:
        raise ValueError(f"unknown journal operation {operation}")


# -----------------------------------------------------------------------------------------
# Conversions between TigerBeetle's dataclasses and the state machine's tuples.


# A snapshot body of format 1 in pieces: the magic, then [u64 length][marshal] pieces: first the
# export's small parts and the counts, then the transfers and the history. Read to upgrade a data
# directory; no longer written.
_PIECES_MAGIC = b"PIECES02"


def decode_snapshot(body: bytes) -> tuple[Any, ...]:
    """The export a snapshot body holds (pieces, or one marshal as written before them)."""
    if not body.startswith(_PIECES_MAGIC):
        export: tuple[Any, ...] = marshal.loads(body)
        return export
    view = memoryview(body)
    offset = len(_PIECES_MAGIC)

    def piece() -> Any:
        nonlocal offset
        length = int.from_bytes(view[offset : offset + 8], "little")
        offset += 8 + length
        return marshal.loads(view[offset - length : offset])

    version, commit_ts, prepare_ts, accounts, pending, orphans = piece()
    counts = piece(), piece()
    parts: list[list[Any]] = [[], []]
    for part, count in zip(parts, counts, strict=True):
        while len(part) < count:
            part.extend(piece())
    assert offset == len(body), "snapshot pieces do not add up"
    return (version, commit_ts, prepare_ts, accounts, parts[0], pending, orphans, parts[1])


def read_argument(operation: str, argument: Any) -> Any:
    if operation in ("lookup_accounts", "lookup_transfers"):
        # The client does not range-check lookup ids: it packs them into 128 bits, so an id
        # out of range wraps around. The same here, so both engines answer alike.
        ids = [int(i) % (1 << 128) for i in argument]
        if len(ids) > BATCH_EVENTS_MAX:
            raise TooMuchDataError()
        return ids
    return argument


def transfer_tuples(transfers: Sequence[Transfer]) -> list[TransferTuple]:
    if len(transfers) > BATCH_EVENTS_MAX:
        raise TooMuchDataError()
    events = [
        (
            t.id,
            t.debit_account_id,
            t.credit_account_id,
            t.amount,
            t.pending_id,
            t.user_data_128,
            t.user_data_64,
            t.user_data_32,
            t.timeout,
            int(t.ledger),
            int(t.code),
            int(t.flags),
            t.timestamp,
        )
        for t in transfers
    ]
    for e in events:
        # A negative value ORed in makes the whole negative, and a negative shifted right stays
        # negative (truthy): these four shifts catch every field out of its unsigned range.
        if (
            (e[0] | e[1] | e[2] | e[3] | e[4] | e[5]) >> 128
            or (e[6] | e[12]) >> 64
            or (e[7] | e[8] | e[9]) >> 32
            or (e[10] | e[11]) >> 16
        ):
            _raise_overflow(e, _TRANSFER_FIELDS)
    return events


def account_tuples(accounts: Sequence[Account]) -> list[AccountTuple]:
    if len(accounts) > BATCH_EVENTS_MAX:
        raise TooMuchDataError()
    events = [
        (
            a.id,
            a.debits_pending,
            a.debits_posted,
            a.credits_pending,
            a.credits_posted,
            a.user_data_128,
            a.user_data_64,
            a.user_data_32,
            int(a.ledger),
            int(a.code),
            int(a.flags),
            a.timestamp,
        )
        for a in accounts
    ]
    for e in events:
        for (name, bits), value in zip(_ACCOUNT_FIELDS, e, strict=True):
            _check_uint(name, value, bits)
    return events


def filter_tuple(
    f: AccountFilter | QueryFilter, fields: tuple[tuple[str, int], ...]
) -> tuple[int, ...]:
    values = tuple(int(getattr(f, name)) for name, _ in fields)
    for (name, bits), value in zip(fields, values, strict=True):
        _check_uint(name, value, bits)
    # TigerBeetle refuses a query whose reply could exceed one message, as the real client does.
    if f.limit > BATCH_EVENTS_MAX:
        raise TooMuchDataError()
    return values


def _raise_overflow(values: tuple[int, ...], fields: tuple[tuple[str, int], ...]) -> None:
    for (name, bits), value in zip(fields, values, strict=True):
        _check_uint(name, value, bits)
    raise AssertionError("unreachable: a field was out of range")


def _check_uint(name: str, number: int, bits: int) -> None:
    # The same checks and messages as the tigerbeetle client's `validate_uint`.
    if number > 2**bits - 1:
        raise IntegerOverflowError(f"{name}=={number} is too large to fit in {bits} bits")
    if number < 0:
        raise IntegerOverflowError(f"{name}=={number} cannot be negative")


def _account(a: Sequence[int]) -> Account:
    return Account(
        id=a[0],
        debits_pending=a[1],
        debits_posted=a[2],
        credits_pending=a[3],
        credits_posted=a[4],
        user_data_128=a[5],
        user_data_64=a[6],
        user_data_32=a[7],
        ledger=a[8],
        code=a[9],
        flags=AccountFlags(a[10]),
        timestamp=a[11],
    )


# TransferFlags(v) is a Python-level enum call of about a microsecond; flags are a u16, and a
# read of many transfers meets the same few values over and over.
_TRANSFER_FLAGS: dict[int, TransferFlags] = {}


def _transfer_flags(value: int) -> TransferFlags:
    flags = _TRANSFER_FLAGS.get(value)
    if flags is None:
        flags = _TRANSFER_FLAGS[value] = TransferFlags(value)
    return flags


def _transfer(t: TransferTuple) -> Transfer:
    # Positional: a tuple's order is `Transfer`'s field order (a unit test pins it).
    return Transfer(
        t[0],
        t[1],
        t[2],
        t[3],
        t[4],
        t[5],
        t[6],
        t[7],
        t[8],
        t[9],
        t[10],
        _transfer_flags(t[11]),
        t[12],
    )


def _balance(b: tuple[int, int, int, int, int]) -> AccountBalance:
    return AccountBalance(
        debits_pending=b[0],
        debits_posted=b[1],
        credits_pending=b[2],
        credits_posted=b[3],
        timestamp=b[4],
    )


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "lookup_accounts": _account,
    "query_accounts": _account,
    "lookup_transfers": _transfer,
    "query_transfers": _transfer,
    "get_account_transfers": _transfer,
    "get_account_balances": _balance,
}


def to_python(operation: str, rows: list[Any]) -> list[Any]:
    convert = _CONVERT[operation]
    return [convert(r) for r in rows]


# -----------------------------------------------------------------------------------------
# The client faces.


class EmbeddedClientSync:
    """The methods of `tigerbeetle.ClientSync`, answered by an embedded engine."""

    def __init__(self, engine: EmbeddedEngine) -> None:
        self._engine = engine

    def create_accounts(self, accounts: list[Account]) -> list[CreateAccountResult]:
        results, position = self._engine.create_accounts(accounts)
        self._engine.wait(position)
        return results

    def create_transfers(self, transfers: list[Transfer]) -> list[CreateTransferResult]:
        results, position = self._engine.create_transfers(transfers)
        self._engine.wait(position)
        return results

    def _read(self, operation: str, argument: Any) -> list[Any]:
        rows, position = self._engine.read(operation, argument)
        self._engine.wait(position)
        return rows

    def lookup_accounts(self, accounts: list[int]) -> list[Account]:
        return self._read("lookup_accounts", accounts)

    def lookup_transfers(self, transfers: list[int]) -> list[Transfer]:
        return self._read("lookup_transfers", transfers)

    def get_account_transfers(self, filter: AccountFilter) -> list[Transfer]:
        return self._read("get_account_transfers", filter_tuple(filter, FILTER_FIELDS))

    def get_account_balances(self, filter: AccountFilter) -> list[AccountBalance]:
        return self._read("get_account_balances", filter_tuple(filter, FILTER_FIELDS))

    def query_accounts(self, query_filter: QueryFilter) -> list[Account]:
        return self._read("query_accounts", filter_tuple(query_filter, QUERY_FIELDS))

    def query_transfers(self, query_filter: QueryFilter) -> list[Transfer]:
        return self._read("query_transfers", filter_tuple(query_filter, QUERY_FIELDS))

    def close(self) -> None:
        """Closing a client leaves the engine open; the engine's owner closes it."""

    def __enter__(self) -> EmbeddedClientSync:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class ClientAsyncFace:
    """The reads of `tigerbeetle.ClientAsync`, and its context manager, over one `_read`: what
    the two async faces of the embedded engine (in this process, in its own) share."""

    async def _read(self, operation: str, argument: Any) -> list[Any]:
        """The converted rows of `operation` (a state-machine read) on `argument`."""
        raise NotImplementedError

    async def lookup_accounts(self, accounts: list[int]) -> list[Account]:
        return await self._read("lookup_accounts", accounts)

    async def lookup_transfers(self, transfers: list[int]) -> list[Transfer]:
        return await self._read("lookup_transfers", transfers)

    async def get_account_transfers(self, filter: AccountFilter) -> list[Transfer]:
        return await self._read("get_account_transfers", filter_tuple(filter, FILTER_FIELDS))

    async def get_account_balances(self, filter: AccountFilter) -> list[AccountBalance]:
        return await self._read("get_account_balances", filter_tuple(filter, FILTER_FIELDS))

    async def query_accounts(self, query_filter: QueryFilter) -> list[Account]:
        return await self._read("query_accounts", filter_tuple(query_filter, QUERY_FIELDS))

    async def query_transfers(self, query_filter: QueryFilter) -> list[Transfer]:
        return await self._read("query_transfers", filter_tuple(query_filter, QUERY_FIELDS))

    async def close(self) -> None:
        """Closing a client leaves the engine open; the engine's owner closes it."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


class EmbeddedClientAsync(ClientAsyncFace):
    """The methods of `tigerbeetle.ClientAsync`, answered by an embedded engine."""

    def __init__(self, engine: EmbeddedEngine) -> None:
        self._engine = engine

    async def create_accounts(self, accounts: list[Account]) -> list[CreateAccountResult]:
        results, position = self._engine.create_accounts(accounts)
        await self._engine.wait_async(position)
        return results

    async def create_transfers(self, transfers: list[Transfer]) -> list[CreateTransferResult]:
        results, position = self._engine.create_transfers(transfers)
        await self._engine.wait_async(position)
        return results

    async def _read(self, operation: str, argument: Any) -> list[Any]:
        rows, position = self._engine.read(operation, argument)
        await self._engine.wait_async(position)
        return rows
