"""The embedded engine's history on disk: RocksDB (through `rocksdict`), one per data directory.

The state machine keeps its live state in memory (accounts, pending transfers, the transfers of
the last checkpoint interval); everything older lives here, written one checkpoint at a time and
read through RocksDB's bounded block cache. Invariants:

- The store holds the state after journal records 0..`record`-1: a checkpoint's keys go in
  first (ingested SST files built by the checkpointer process for a large layer, WriteBatches
  for a small one), then its `M` keys in one synced batch, which alone makes it; the keys of a
  checkpoint cut short before that are removed at open (`_cut_partial`). Only once the `M`
  batch is written does the journal drop the segments before `record`.
- Keys are big-endian, so the byte order of keys is the numeric order of what they hold:
    T first_ts               -> marshal([transfer, ...])  a page: up to PAGE transfers in
                                timestamp order, all of one checkpoint, keyed by the first
    I id                     -> the page's first_ts (8 bytes) and the index in it (1 byte),
                                or b"" for an id that failed transiently
    A account_id last_ts     -> marshal([ts, ...])  the account's transfers of one checkpoint,
                                at most CHUNK of them, keyed by the last one's timestamp
    U user_data_128 last_ts  -> marshal([ts, ...])  the same per user_data_128 (non-zero)
    H ts                     -> marshal(balances)   history accounts' balances after ts
    S ts                     -> status (1 byte)     a pending transfer's final status
    M state / pending                               the checkpoint's live state
    Mc account_ts            -> marshal(account)    an account (balances, flags) as of the
                                checkpoint that last changed it (between the other M keys:
                                no file a checkpoint ingests overlaps them)
- A store only grows; a checkpoint never rewrites what an earlier one wrote (but the M keys,
  in its last batch).
- Reads never see past `visible_ts`: the engine moves it once the layer a checkpoint wrote has
  left its memory, so a transfer is never read twice (from memory and from here).
"""

from __future__ import annotations

import marshal
import os
import struct
import time
import zlib
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from rocksdict import (
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    IngestExternalFileOptions,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from ledger.embedded.checkpointer import PAGE, Checkpointer, FilterUnreadable, remove_files
from ledger.limits import ID_FILTER_BITS_LOG2_DEFAULT

# The store's format. 1 was the snapshot files of the engine before this store (still read, to
# upgrade a data directory); 2 had every account in one M value, rewritten at each checkpoint
# (still read: the next checkpoint writes them as Mc keys); 3 is this layout.
FORMAT = 3
FORMATS_READ = (2, 3)
DIRECTORY = "history"
CHUNK = 1024  # timestamps per A / U value
WRITE_SLICE = 2048  # items a checkpoint handles between two pauses for the requests
BATCH_KEYS = 512  # keys in each of a checkpoint's writes (one holds the GIL for about 1 ms)
MAYBE_PACKED_MIN = 256  # ids that `IdFilter.maybe` tests with numpy, at least
# Checkpoints of this many transfers or more are built by the checkpointer process (smaller
# ones, in tests and at a quiet time, cost less than the round trip).
INGEST_MIN_TRANSFERS = 4096
# A larger layer (only the upgrade of a format-1 directory makes one: its whole history) goes
# in batches, as the checkpointer holds all of a layer's keys in memory to sort them.
INGEST_MAX_TRANSFERS = 1_000_000
_STATE, _ACCOUNTS, _PENDING = b"Mstate", b"Maccounts", b"Mpending"  # (_ACCOUNTS: format 2)
_ACCOUNT = b"Mc"  # and the account's timestamp
_U64 = 8
_U128 = 16
_TS_MAX = (1 << 64) - 1
_INDEX = [bytes((i,)) for i in range(256)]


def sst_options(cache: Cache | None = None) -> Options:
    """The options of the store's files: the database's, and the checkpointer's SST writer's
    (so that the files it writes have the same compression and filters)."""
    options = Options(raw_mode=True)
    options.set_compression_type(DBCompressionType.lz4())
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)
    if cache is not None:
        # Filters and indexes live in the cache too, so memory stays bounded by its size
        # however many files the history takes.
        table.set_block_cache(cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    options.set_block_based_table_factory(table)
    return options


class StoreFormatError(RuntimeError):
    """The history store was written by a format this code does not read."""


def _ts8(ts: int) -> bytes:
    return ts.to_bytes(_U64, "big")


def _id16(value: int) -> bytes:
    return value.to_bytes(_U128, "big")


@dataclass
class Layer:
    """Transfers (and what they changed) since a checkpoint, in memory: the state machine's
    newest layer, and, while a checkpoint writes it, the layer before it."""

    transfers: dict[int, Any] = field(default_factory=dict)  # by id
    log: list[Any] = field(default_factory=list)  # in timestamp order
    log_ts: list[int] = field(default_factory=list)
    by_account: dict[int, list[Any]] = field(default_factory=dict)  # in timestamp order
    history: dict[int, tuple[int, ...]] = field(default_factory=dict)  # by timestamp
    finished: dict[int, tuple[int, int]] = field(default_factory=dict)  # id -> (status, ts)
    orphans: set[int] = field(default_factory=set)
    # Accounts whose balances changed with no transfer of the layer naming them (the expiry of
    # a pending transfer): with the keys of `by_account` and the accounts created since, what
    # a checkpoint writes of the accounts.
    touched: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint writes: a frozen layer, and the live state after `record` records."""

    layer: Layer
    record: int
    commit_timestamp: int
    prepare_timestamp: int
    last_transfer_ts: int
    accounts: list[list[int]]  # those changed or created since the last checkpoint (copies)
    pending: list[Any]


@dataclass(frozen=True)
class Loaded:
    record: int
    commit_timestamp: int
    prepare_timestamp: int
    last_transfer_ts: int
    accounts: list[list[int]]  # all of them, in timestamp order
    pending: list[Any]
    format: int  # 2: the accounts in one value, which the next checkpoint writes as keys


class IdFilter:
    """A Bloom filter of every id the store holds (transfers', and those that failed), of a
    fixed size: "no" is certain, so a new id (nearly every id a request names) is known to be
    new without a read of the store. Two probes from one multiply-shift hash; with 2^28 bits
    (32 MiB), 20 million ids answer "maybe" for about 2 % of new ids, 50 million for 10 %: past
    that the store answers more often, never wrongly.

    Its file is written, with the ids of a checkpoint added, before that checkpoint's batch: a
    filter that knows more ids than the store only errs on the side of "maybe"."""

    MAGIC = b"CLIDS001"
    HEADER = struct.Struct("<8sII")  # magic, log2 of the bits, crc32 of the bits

    def __init__(self, bits_log2: int) -> None:
        assert 16 <= bits_log2 <= 36
        self.bits_log2 = bits_log2
        self.bits = bytearray(1 << (bits_log2 - 3))
        self.shift1 = 128 - bits_log2
        self.shift2 = 128 - 2 * bits_log2
        self.mask = (1 << bits_log2) - 1

    def add(self, ids: Iterable[int]) -> None:
        bits, mask, s1, s2 = self.bits, self.mask, self.shift1, self.shift2
        for tid in ids:
            h = (tid * _MIX) & _M128
            b = h >> s1
            bits[b >> 3] |= 1 << (b & 7)
            b = (h >> s2) & mask
            bits[b >> 3] |= 1 << (b & 7)

    def add_packed(self, raw: bytes) -> None:
        """`add` for the ids packed in `raw`, 16 bytes each, big-endian: the same bits, set by
        numpy (0.2 µs an id, where `add` takes 0.6; the checkpointer adds a checkpoint's ids
        this way, as it has them packed for the I keys)."""
        import numpy as np

        bits = np.frombuffer(self.bits, np.uint8)
        for byte, shift in _cells(raw, self.bits_log2):
            np.bitwise_or.at(bits, byte, np.left_shift(np.uint8(1), shift))

    def may_contain(self, tid: int) -> bool:
        return bool(self.maybe((tid,)))

    def maybe(self, ids: Iterable[int]) -> list[int]:
        """Those of `ids` the filter may contain (`may_contain`, in one call for a request).
        Many ids are tested by numpy (0.16 µs an id at 5,000, where the loop takes 0.35 to
        0.4; below about 250 ids the loop is faster)."""
        if isinstance(ids, list) and len(ids) >= MAYBE_PACKED_MIN:
            try:
                import numpy  # noqa: F401  (imported when the store opens: a lookup here)
            except ImportError:
                pass
            else:
                return self._maybe_packed(ids)
        bits, mask, s1, s2 = self.bits, self.mask, self.shift1, self.shift2
        found = []
        for tid in ids:
            h = (tid * _MIX) & _M128
            b = h >> s1
            if bits[b >> 3] >> (b & 7) & 1:
                b = (h >> s2) & mask
                if bits[b >> 3] >> (b & 7) & 1:
                    found.append(tid)
        return found

    def _maybe_packed(self, ids: list[int]) -> list[int]:
        """`maybe`, by numpy: the positions of `add_packed`, each bit read at once."""
        import numpy as np

        bits = np.frombuffer(self.bits, np.uint8)
        # (Mod 2**128, as the loop's hash is: an id out of range gets the loop's answer.)
        raw = b"".join([(tid & _M128).to_bytes(16, "big") for tid in ids])
        hit: Any = None
        for byte, shift in _cells(raw, self.bits_log2):
            bit = (bits[byte] >> shift) & np.uint8(1)
            hit = bit if hit is None else hit & bit
        return [ids[i] for i in np.flatnonzero(hit).tolist()]

    def save(self, path: Path, *, fsync: bool) -> None:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(self.HEADER.pack(self.MAGIC, self.bits_log2, zlib.crc32(self.bits)))
            f.write(self.bits)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, bits_log2: int) -> IdFilter | None:
        """The filter saved at `path`, or None if there is none of this size, whole."""
        made = cls(bits_log2)
        return made if made.read(path) else None

    def read(self, path: Path) -> bool:
        """Replaces the bits with those saved at `path`; False (the bits then undefined) if
        there are none of this size, whole. The read and the CRC let go of the GIL, and the
        bits are read in place: the engine reads the checkpointer's filter while it serves
        requests (a new 32 MiB array, zeroed, held the GIL for 25 ms)."""
        try:
            with open(path, "rb") as f:
                head = f.read(self.HEADER.size)
                if len(head) < self.HEADER.size:
                    return False
                magic, log2, crc = self.HEADER.unpack(head)
                if magic != self.MAGIC or log2 != self.bits_log2:
                    return False
                if f.readinto(self.bits) != len(self.bits) or f.read(1):
                    return False
        except FileNotFoundError:
            return False
        return bool(zlib.crc32(self.bits) == crc)


# An odd 128-bit constant (the golden ratio's): multiply-shift hashing takes the top bits.
_MIX = 0x9E3779B97F4A7C15F39CC0605CEDC835
_M128 = (1 << 128) - 1
_M64 = (1 << 64) - 1


def _cells(raw: bytes, bits_log2: int) -> Iterator[tuple[Any, Any]]:
    """For each of the two bits of the ids packed in `raw` (`_positions`): the index of its
    byte in the filter, and its place in that byte, as numpy arrays."""
    import numpy as np

    for position in _positions(raw, bits_log2):
        yield (position >> np.uint64(3)).astype(np.intp), (position & np.uint64(7)).astype(np.uint8)


def _positions(raw: bytes, bits_log2: int) -> tuple[Any, Any]:
    """The two bits `IdFilter.add` sets for each id packed in `raw` (16 bytes, big-endian),
    as numpy arrays: the top 2 * bits_log2 bits of (id * _MIX) mod 2**128, computed in 64-bit
    halves (numpy has no 128-bit integers), the high half of a 64 x 64 bit product from its
    32-bit parts."""
    import numpy as np

    u64 = np.uint64
    words = np.frombuffer(raw, ">u8").reshape(-1, 2)
    hi, lo = words[:, 0].astype(u64), words[:, 1].astype(u64)
    m_lo = _MIX & _M64
    low32, s32 = u64(0xFFFFFFFF), u64(32)
    x0, x1 = lo & low32, lo >> s32
    y0, y1 = u64(m_lo & 0xFFFFFFFF), u64(m_lo >> 32)
    p00, p01, p10 = x0 * y0, x0 * y1, x1 * y0
    middle = (p00 >> s32) + (p01 & low32) + (p10 & low32)
    carry = x1 * y1 + (p01 >> s32) + (p10 >> s32) + (middle >> s32)  # (lo * m_lo) >> 64
    top = carry + hi * u64(m_lo) + lo * u64(_MIX >> 64)  # the product's top 64 bits
    mask = u64((1 << bits_log2) - 1)
    first = top >> u64(64 - bits_log2)
    if 2 * bits_log2 <= 64:
        second = (top >> u64(64 - 2 * bits_log2)) & mask
    else:  # the second position takes bits of the low half too
        bottom = lo * u64(m_lo)
        second = (top << u64(2 * bits_log2 - 64) | bottom >> u64(128 - 2 * bits_log2)) & mask
    return first, second


class HistoryStore:
    """The RocksDB database of one data directory, and the filter of its ids."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = True,
        cache_bytes: int,
        filter_bits_log2: int = ID_FILTER_BITS_LOG2_DEFAULT,
        ingest_min: int = INGEST_MIN_TRANSFERS,
    ) -> None:
        self.path = Path(path)
        self._fsync = fsync
        options = sst_options(Cache(cache_bytes))
        options.create_if_missing(True)
        options.set_write_buffer_size(min(64 << 20, max(4 << 20, cache_bytes // 2)))
        options.set_max_open_files(256)
        options.set_max_write_buffer_number(4)
        options.increase_parallelism(2)
        # A large checkpoint adds up to four files to level 0 (its A, I, U and S keys, which
        # overlap what is stored), and a compaction of level 0 rewrites every stored I key in
        # the range of the level below (ids are random): started at 4 files, as by default,
        # that ran after each checkpoint and cost 1.3 µs a transfer by 6 million transfers;
        # at 16 files, 0.6. A new id reads nothing (the id filter) and other ids pass each
        # level-0 file's bloom filter; a seek (an account's or user data's history) looks into
        # each level-0 file, up to 16. Writes stall only far above it.
        options.set_level_zero_file_num_compaction_trigger(16)
        options.set_level_zero_slowdown_writes_trigger(48)
        options.set_level_zero_stop_writes_trigger(96)
        self._db = Rdict(str(self.path), options)
        # Checkpoints of at least `ingest_min` transfers are built by the checkpointer process
        # into SST files here, which RocksDB then takes in (moves into its own directory).
        self.ingest_min = ingest_min
        self._ingest_dir = self.path.with_name(self.path.name + "-ingest")
        if self._ingest_dir.exists():
            for leftover in self._ingest_dir.iterdir():  # of a checkpoint a crash cut short
                leftover.unlink()
        else:
            self._ingest_dir.mkdir()
        self._ingest_options = IngestExternalFileOptions()
        self._ingest_options.set_move_files(True)
        self._checkpointer = Checkpointer()
        # The checkpointer's filter that was moved to `_filter_path`, while nothing else was
        # saved there since: the child kept a copy, which it adds to rather than read the file.
        self._moved_filter = ""
        # What the checkpointer's filter is read into (allocated now, as zeroing 32 MiB holds
        # the GIL).
        self._spare_ids = IdFilter(filter_bits_log2)
        self.filter_bits_log2 = filter_bits_log2
        self._write_options = WriteOptions()
        self._write_options.sync = fsync
        self._unsynced = WriteOptions()  # a checkpoint's batches before its last
        self.visible_ts = 0  # reads see transfers up to here (the engine moves it)
        self._accounts_value = False  # format 2's M value of every account is still there
        self._filter_path = self.path.with_name(self.path.name + "-ids.bloom")
        ids = IdFilter.load(self._filter_path, filter_bits_log2)
        if ids is None:  # none yet, another size, or damaged: made again from the store
            ids = IdFilter(filter_bits_log2)
            ids.add(int.from_bytes(k[1:], "big") for k, _ in self._prefixed(b"I"))
            ids.save(self._filter_path, fsync=fsync)
        self.ids = ids
        try:  # now, not in the first large request that `IdFilter.maybe` answers (0.1 s)
            import numpy  # noqa: F401
        except ImportError:  # that request's ids are then tested one at a time
            pass

    def close(self) -> None:
        self._checkpointer.close()
        self._db.close()

    def _many(self, keys: list[bytes]) -> list[bytes | None]:
        """One multi-get (RocksDB's MultiGet: one call, the GIL released while it reads)."""
        found = cast(list[bytes | None], self._db.get(cast(list[Any], keys)))
        return found

    def _one(self, key: bytes) -> bytes:
        value = self._db.get(key)
        if value is None:
            raise StoreFormatError(f"{self.path} lacks {key!r}: not a whole checkpoint")
        found: bytes = value
        return found

    # -------------------------------------------------------------------------------------
    # Checkpoints.

    def load(self) -> Loaded | None:
        """The live state of the newest checkpoint, or None for a store never written."""
        raw = self._db.get(_STATE)
        if raw is None:
            self._cut_partial(0)
            return None
        state = marshal.loads(raw)
        if state[0] not in FORMATS_READ:
            raise StoreFormatError(
                f"{self.path} holds history format {state[0]}; this version reads"
                f" {', '.join(map(str, FORMATS_READ))}"
            )
        format_, record, commit_ts, prepare_ts, last_ts = state
        if format_ == 2:
            accounts = marshal.loads(self._one(_ACCOUNTS))
            self._accounts_value = True
        else:
            accounts = self._accounts()
        pending = [tuple(t) for t in marshal.loads(self._one(_PENDING))]
        self._cut_partial(last_ts)
        self.visible_ts = last_ts
        return Loaded(record, commit_ts, prepare_ts, last_ts, accounts, pending, format_)

    def _accounts(self) -> list[list[int]]:
        """The accounts of the Mc keys, in timestamp order (start-up with 1 million accounts
        took 1.39 s, against 1.17 s when they were one value)."""
        bound = ReadOptions()
        bound.set_iterate_upper_bound(b"Md")
        loads = marshal.loads
        return [loads(value) for value in self._db.values(from_key=_ACCOUNT, read_opt=bound)]

    def write(self, checkpoint: Checkpoint) -> None:
        """Writes a checkpoint, atomically and durably (its ids into the filter first).

        It runs beside the engine's requests, so it never holds the GIL for long: the Python
        half of the work goes in slices with a pause between them, and the keys go to RocksDB
        in batches of BATCH_KEYS (a write holds the GIL while RocksDB inserts: 0.75 s for one
        batch of 254k transfers' keys). Only the last batch, the M keys, is synced, and only it
        makes the checkpoint. It holds an Mc key per account changed since the last one, which
        RocksDB inserts holding the GIL: 51 ms for 254k of them (every account, at the first
        checkpoint after a format-2 store opens or an upgrade). Before it, the batches are in
        RocksDB's log, in order, and a crash keeps a prefix of them. The keys of a checkpoint
        cut short are removed when the store is opened (`_cut_partial`); written again whole
        (a failed write is retried with the same layer), they are the same keys, with values
        that decode the same."""
        layer = checkpoint.layer
        if self.ingest_min <= len(layer.log) <= INGEST_MAX_TRANSFERS:
            self._ingest(layer)
        else:
            self._write_batches(layer)
        state = (
            FORMAT,
            checkpoint.record,
            checkpoint.commit_timestamp,
            checkpoint.prepare_timestamp,
            checkpoint.last_transfer_ts,
        )
        last = WriteBatch(raw_mode=True)
        put, dumps = last.put, marshal.dumps
        accounts = checkpoint.accounts
        for start in range(0, len(accounts), WRITE_SLICE):
            for a in accounts[start : start + WRITE_SLICE]:
                put(_ACCOUNT + _ts8(a[11]), dumps(a))
            time.sleep(0)
        if self._accounts_value:  # format 2's: every account is an Mc key now
            last.delete(_ACCOUNTS)
        put(_PENDING, dumps(checkpoint.pending))
        put(_STATE, dumps(state))
        self._db.write(last, self._write_options)
        self._accounts_value = False

    def _write_batches(self, layer: Layer) -> None:
        log = layer.log
        for start in range(0, len(log), WRITE_SLICE):
            self.ids.add(t[0] for t in log[start : start + WRITE_SLICE])
            time.sleep(0)
        self.ids.add(layer.orphans)
        self.ids.save(self._filter_path, fsync=self._fsync)
        self._moved_filter = ""
        by_account = {a: [t[12] for t in ts] for a, ts in layer.by_account.items()}
        pages = _pages(layer.log)
        for pairs in _key_slices(pages, by_account, layer.history.items(), *_rest(layer)):
            batch = WriteBatch(raw_mode=True)
            put = batch.put
            for key, value in pairs:
                put(key, value)
            self._db.write(batch, self._unsynced)
            time.sleep(0)

    def _ingest(self, layer: Layer) -> None:
        """The checkpointer process makes the keys of the layer's pages into SST files (and
        adds the ids to the saved filter); RocksDB takes the files in at once. Here, the log
        is only sent, as its pages (a marshal of 64 transfers each), 32 pages at a time."""
        finished, orphans = _rest(layer)
        moved, self._moved_filter = self._moved_filter, ""
        try:
            paths, filter_out = self._checkpointer.build(
                layer.log,
                directory=self._ingest_dir,
                filter_path=self._filter_path,
                filter_bits_log2=self.filter_bits_log2,
                fsync=self._fsync,
                history=list(layer.history.items()),
                finished=finished,
                orphans=orphans,
                moved=moved,
            )
        except FilterUnreadable:
            # Something outside damaged or removed it: the engine's own, which holds every id
            # the store does, goes there, and the checkpoint is written again at the next one.
            self.ids.save(self._filter_path, fsync=self._fsync)
            raise
        try:
            # Into the filter before the current one: requests may be reading the current
            # one. (Should one still read the spare when the next checkpoint reads into it, it
            # reads a newer filter, which holds every id the older one did.)
            ids = self._spare_ids
            if not ids.read(Path(filter_out)):
                raise StoreFormatError(f"{filter_out}: the checkpointer's filter is not whole")
            # The filter, saved, holds the ids before the store does, as in `_write_batches`.
            os.replace(filter_out, self._filter_path)
            self._moved_filter = filter_out  # (the child kept a copy of it)
            if self._fsync:
                _fsync_directory(self._filter_path.parent)
            self._spare_ids, self.ids = self.ids, ids
            if paths:
                self._db.ingest_external_file(paths, self._ingest_options)
        except BaseException:
            # The checkpoint is written again, from new files (a full disk should not fill
            # up further with these).
            remove_files([*paths, filter_out])
            raise

    def _cut_partial(self, visible: int) -> None:
        """Removes what a checkpoint cut short by a crash wrote past `visible` (the newest
        whole checkpoint's last timestamp): its pages, their ids, the chunks it listed under
        their accounts and user data, and its history balances. Its pages were written before
        the rest, so they name every account and user data it can have touched. (Its final
        statuses and failed ids stay: they are the same as the journal's replay makes them.)"""
        it = self._db.iter()
        it.seek(b"T" + _ts8(visible + 1))
        heads: set[bytes] = set()
        batch = WriteBatch(raw_mode=True)
        while it.valid() and it.key()[:1] == b"T":
            for t in marshal.loads(it.value()):
                batch.delete(b"I" + _id16(t[0]))
                heads.add(b"A" + _id16(t[1]))
                heads.add(b"A" + _id16(t[2]))
                if t[5]:
                    heads.add(b"U" + _id16(t[5]))
            batch.delete(it.key())
            it.next()
        if not heads:
            return
        for head in heads:
            it.seek(head + _ts8(visible + 1))
            while it.valid() and it.key()[: len(head)] == head:
                batch.delete(it.key())
                it.next()
        it.seek(b"H" + _ts8(visible + 1))
        while it.valid() and it.key()[:1] == b"H":
            batch.delete(it.key())
            it.next()
        self._db.write(batch, self._write_options)

    # -------------------------------------------------------------------------------------
    # Point reads.

    def find(self, ids: list[int]) -> tuple[dict[int, Any], set[int]]:
        """The stored transfers of `ids` (by id), and which of `ids` failed transiently."""
        ids = self.ids.maybe(ids)
        if not ids:
            return {}, set()
        found = self._many([b"I" + _id16(i) for i in ids])
        places: list[tuple[int, bytes, int]] = []
        orphans: set[int] = set()
        visible = self.visible_ts
        for tid, value in zip(ids, found, strict=True):
            if value is None:
                continue
            if value == b"":
                orphans.add(tid)
            elif int.from_bytes(value[:8], "big") <= visible:
                places.append((tid, b"T" + value[:8], value[8]))
        transfers: dict[int, Any] = {}
        if places:
            keys = list({key for _, key, _ in places})
            pages = {
                key: marshal.loads(cast(bytes, raw))
                for key, raw in zip(keys, self._many(keys), strict=True)
            }
            for tid, key, index in places:
                transfers[tid] = pages[key][index]
        return transfers, orphans

    def at(self, stamps: list[int]) -> list[Any]:
        """The transfers at these timestamps (each must exist), in the same order."""
        pages = _PageCursor(self._db)
        return [pages.transfer_at(ts) for ts in stamps]

    def has_transfer_at(self, ts: int) -> bool:
        if ts > self.visible_ts:
            return False
        return _PageCursor(self._db).find(ts) is not None

    def statuses(self, stamps: list[int]) -> dict[int, int]:
        """The final statuses of pending transfers (by their timestamp) that have one."""
        if not stamps:
            return {}
        found = self._many([b"S" + _ts8(ts) for ts in stamps])
        return {ts: raw[0] for ts, raw in zip(stamps, found, strict=True) if raw is not None}

    def history(self, stamps: list[int]) -> dict[int, tuple[int, ...]]:
        if not stamps:
            return {}
        found = self._many([b"H" + _ts8(ts) for ts in stamps])
        return {
            ts: tuple(marshal.loads(raw))
            for ts, raw in zip(stamps, found, strict=True)
            if raw is not None
        }

    # -------------------------------------------------------------------------------------
    # Scans, in timestamp order, never past `visible_ts`.

    def scan(self, ts_min: int, ts_max: int, reverse: bool) -> Iterator[Any]:
        """Every transfer with ts_min <= timestamp <= ts_max, by timestamp, a page at a time."""
        ts_max = min(ts_max, self.visible_ts)
        if ts_min > ts_max:
            return
        it = self._db.iter()
        loads = marshal.loads
        if reverse:
            it.seek_for_prev(b"T" + _ts8(ts_max))
            while it.valid() and it.key()[:1] == b"T":
                page = loads(it.value())
                if page[-1][12] < ts_min:
                    return
                for t in reversed(page):
                    if ts_min <= t[12] <= ts_max:
                        yield t
                it.prev()
        else:
            it.seek_for_prev(b"T" + _ts8(ts_min))  # the page that may hold ts_min
            if not it.valid() or it.key()[:1] != b"T":
                it.seek(b"T")
            while it.valid() and it.key()[:1] == b"T":
                page = loads(it.value())
                if page[0][12] > ts_max:
                    return
                for t in page:
                    if ts_min <= t[12] <= ts_max:
                        yield t
                it.next()

    def stamps(
        self, prefix: bytes, key: int, ts_min: int, ts_max: int, reverse: bool
    ) -> Iterator[int]:
        """The timestamps listed under A or U `key`, within [ts_min, ts_max], in order, read
        a chunk at a time as the caller goes on."""
        ts_max = min(ts_max, self.visible_ts)
        if ts_min > ts_max:
            return
        head = prefix + _id16(key)
        size = len(head) + _U64
        it = self._db.iter()
        loads = marshal.loads

        def mine() -> bool:
            if not it.valid():
                return False
            k = it.key()
            return len(k) == size and k.startswith(head)

        # Chunks are keyed by their last timestamp and never overlap: the first chunk at or
        # past a timestamp is the only one that can hold it.
        if reverse:
            it.seek(head + _ts8(ts_max))
            if not mine():
                it.seek_for_prev(head + b"\xff" * _U64)
            while mine():
                chunk = loads(it.value())
                if chunk[-1] < ts_min:
                    return
                for ts in reversed(chunk):
                    if ts_min <= ts <= ts_max:
                        yield ts
                it.prev()
        else:
            it.seek(head + _ts8(ts_min))
            while mine():
                chunk = loads(it.value())
                if chunk[0] > ts_max:
                    return
                for ts in chunk:
                    if ts_min <= ts <= ts_max:
                        yield ts
                it.next()

    def transfers_listed(
        self, prefix: bytes, key: int, ts_min: int, ts_max: int, reverse: bool
    ) -> Iterator[Any]:
        """The transfers whose timestamps `stamps` lists, read 256 at a time."""
        pending: list[int] = []
        for ts in self.stamps(prefix, key, ts_min, ts_max, reverse):
            pending.append(ts)
            if len(pending) >= 256:
                yield from self.at(pending)
                pending = []
        yield from self.at(pending)

    def count(self) -> int:
        """Transfers in the store (a scan: for tests and tools)."""
        return sum(1 for _ in self.scan(0, _TS_MAX, False))

    def _prefixed(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                return
            yield key, it.value()
            it.next()

    def orphan_ids(self) -> set[int]:
        return {int.from_bytes(k[1:], "big") for k, v in self._prefixed(b"I") if v == b""}

    def all_history(self) -> Iterator[tuple[int, tuple[int, ...]]]:
        for key, value in self._prefixed(b"H"):
            ts = int.from_bytes(key[1:], "big")
            if ts <= self.visible_ts:
                yield ts, tuple(marshal.loads(value))


class _PageCursor:
    """Finds transfers by timestamp, keeping the last page read (lists of timestamps mostly
    come in order, many to a page)."""

    def __init__(self, db: Rdict) -> None:
        self._it = db.iter()
        self._page: list[Any] = []

    def find(self, ts: int) -> Any | None:
        page = self._page
        if not page or not page[0][12] <= ts <= page[-1][12]:
            it = self._it
            it.seek_for_prev(b"T" + _ts8(ts))
            if not it.valid() or it.key()[:1] != b"T":
                return None
            page = self._page = marshal.loads(it.value())
        i = bisect_left(page, ts, key=_stamp)
        return page[i] if i < len(page) and page[i][12] == ts else None

    def transfer_at(self, ts: int) -> Any:
        t = self.find(ts)
        assert t is not None, f"no transfer at {ts} in the store"
        return t


def _stamp(t: Any) -> int:
    return int(t[12])


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pages(log: list[Any]) -> Iterator[tuple[bytes, bytes, list[Any]]]:
    """The T pages of `log` (which starts a page): first timestamp, value, transfers."""
    dumps = marshal.dumps
    for start in range(0, len(log), PAGE):
        page = log[start : start + PAGE]
        yield _ts8(page[0][12]), dumps(page), page


def _rest(layer: Layer) -> tuple[list[tuple[int, int]], list[int]]:
    """A layer's final statuses (status, ts) and the ids that failed transiently."""
    return list(layer.finished.values()), list(layer.orphans)


def _key_slices(
    pages: Iterable[tuple[bytes, bytes, list[Any]]],
    by_account: dict[int, list[int]],
    history: Iterable[tuple[int, Any]],
    finished: Iterable[tuple[int, int]],
    orphans: Iterable[int],
) -> Iterator[list[tuple[bytes, bytes]]]:
    """The keys and values a checkpoint writes (all but the M keys), about BATCH_KEYS at a
    time: pages and their ids first, then the rest. `by_account`: the timestamps of each
    account's transfers, in order."""
    dumps = marshal.dumps
    index = _INDEX
    pairs: list[tuple[bytes, bytes]] = []
    by_user_data: dict[int, list[int]] = {}
    for first, value, page in pages:
        pairs.append((b"T" + first, value))
        pairs += [
            (b"I" + t[0].to_bytes(_U128, "big"), first + index[i]) for i, t in enumerate(page)
        ]
        for t in page:
            if t[5]:
                by_user_data.setdefault(t[5], []).append(t[12])
        if len(pairs) >= BATCH_KEYS:
            yield pairs
            pairs = []
    yield pairs
    rest = _listed(b"A", by_account)
    rest += _listed(b"U", by_user_data)
    rest += [(b"H" + _ts8(ts), dumps(balances)) for ts, balances in history]
    rest += [(b"S" + _ts8(ts), bytes((status,))) for status, ts in finished]
    rest += [(b"I" + _id16(tid), b"") for tid in orphans]
    for start in range(0, len(rest), BATCH_KEYS):
        yield rest[start : start + BATCH_KEYS]


def stamps_value(stamps: list[int]) -> bytes:
    """An A or U value: a list of timestamps, marshalled without references (version 2). Its
    timestamps are distinct, so the value is as long as version 4's; but version 4 looks up
    every int shared with another list (a transfer's timestamp is listed under both its
    accounts) in a table, which made the lists of a hot account three times slower."""
    return marshal.dumps(stamps, 2)


def _listed(prefix: bytes, lists: dict[int, list[int]]) -> list[tuple[bytes, bytes]]:
    """The A or U keys and values of `lists` (timestamps by account or user data)."""
    dumps = stamps_value
    pairs = [
        (prefix + key.to_bytes(_U128, "big") + stamps[-1].to_bytes(_U64, "big"), dumps(stamps))
        for key, stamps in lists.items()
        if 0 < len(stamps) <= CHUNK  # (a chain rolled back may leave an empty list)
    ]
    for key, stamps in lists.items():
        if len(stamps) > CHUNK:
            pairs += _chunks(prefix + _id16(key), stamps)
    return pairs


def _chunks(head: bytes, stamps: list[int]) -> Iterator[tuple[bytes, bytes]]:
    for start in range(0, len(stamps), CHUNK):
        chunk = stamps[start : start + CHUNK]
        yield head + _ts8(chunk[-1]), stamps_value(chunk)
