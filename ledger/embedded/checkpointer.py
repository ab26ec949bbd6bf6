"""A checkpoint's keys, built and written to SST files by a process of its own.

Indexing a checkpoint's transfers (their ids, accounts and user data as keys, sorted into
RocksDB) is CPU work of about 6 µs per transfer, and in the engine's process it holds the
interpreter lock that the requests need: a checkpoint of 250,000 transfers halved single
requests while it ran, and batch ingestion over HTTP ran 35 % slower. So a large checkpoint's
transfers are sent here as its pages (the T values, a `marshal` per page of 64, which is what
sending them costs the engine anyway) and this process, on the other core, reads them, makes
every other key, sorts them (the ids with numpy) and writes them as SST files, with a copy of
the id filter that has their ids. The engine then reads that filter, moves it in place and
ingests the files (one call, atomic). The keys are those `HistoryStore` writes in-process,
with values that decode the same.

Protocol, over the child's stdin and stdout: frames of [u64 little-endian length][marshal].
The parent sends ("begin", directory), then ("pages", [page, ...]) any number of times (the
layer's log in order, as T values: marshalled lists of PAGE transfers, but the last;
PAGES_PER_FRAME a frame), which the child writes to the pages' SST file as they come ("begin"
may be left out: the pages are then held to the end), then
("end", directory, filter path, filter bits log2, fsync, history items, finished values,
orphans, moved); the child answers ("ok", [SST paths], filter path), ("filter", text) when the
filter at the filter path is missing or damaged, or ("error", text), and is
ready for the next checkpoint. It indexes each frame as it comes, while the engine sends the
next. It writes only in `directory`: the filter it returns is a copy of the one at the
filter path with the ids added, which the engine moves in place. `moved` is the path of the
filter it answered last if the engine moved that one in place and nothing was saved there
since, else "": the child then adds to the copy it kept (`FilterCache`) instead of reading
the file. (A child whose engine was killed runs on until it next reads; it must not touch
the files of the engine that opened the data directory after it.) It exits when its stdin
closes (its engine closed, or died); it ignores SIGINT, as the engine does, so that a Ctrl-C
stops the server first.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import marshal
import os
import signal
import struct
import subprocess
import sys
import threading
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from ledger.children import child_env, python_command

if TYPE_CHECKING:
    from ledger.embedded.store import IdFilter

_FRAME = struct.Struct("<Q")
PAGE = 64  # transfers per T value (a page)
PAGES_PER_FRAME = 32  # 2,048 transfers: a frame's marshals hold the lock for about 1 ms


def _send(out: IO[bytes], message: Any) -> None:
    body = marshal.dumps(message)
    out.write(_FRAME.pack(len(body)))
    out.write(body)  # (not joined to its head: that copied every frame once more)


def _receive(stream: IO[bytes]) -> Any:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(head)
    body = stream.read(size)
    if len(body) < size:
        return None
    return marshal.loads(body)


class CheckpointerFailed(RuntimeError):
    """The checkpointer process failed or went away; the checkpoint is written again later."""


class FilterUnreadable(CheckpointerFailed):
    """The id filter at the filter path is missing or damaged (nothing of ours writes it so):
    the checkpointer will not start one from empty, which would lack every id the store
    holds and let an old id be taken as new. The engine saves its own there, and the
    checkpoint is written again later."""


class Checkpointer:
    """The engine's side: one child process, started at the first checkpoint that needs it,
    used by one checkpoint at a time (the journal's checkpoint thread)."""

    def __init__(self) -> None:
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def build(
        self,
        log: list[Any],
        *,
        directory: Path,
        filter_path: Path,
        filter_bits_log2: int,
        fsync: bool,
        history: list[tuple[int, Any]],
        finished: list[tuple[int, int]],
        orphans: list[int],
        moved: str = "",
    ) -> tuple[list[str], str]:
        """The SST files holding every key `HistoryStore._key_slices` makes of the pages of
        `log` (a layer's transfers in timestamp order) and the rest, and a file with the filter
        saved at `filter_path` and their ids, all written in `directory`. `moved`: the filter
        this child answered last, if it was moved to `filter_path` and nothing was saved there
        since (the child then adds to the copy it kept), else ""."""
        with self._lock:
            child: subprocess.Popen[bytes] | None = None
            try:
                child = self._start()
                stdin, stdout = cast(IO[bytes], child.stdin), cast(IO[bytes], child.stdout)
                _send(stdin, ("begin", str(directory)))
                for frame in _frames(log):
                    _send(stdin, ("pages", frame))
                end = ("end", str(directory), str(filter_path), filter_bits_log2, fsync)
                _send(stdin, (*end, history, finished, orphans, moved))
                stdin.flush()
                answer = _receive(stdout)
            except (OSError, ValueError, EOFError) as error:
                self._stop_leaving_nothing(child, directory)
                raise CheckpointerFailed(f"the checkpointer process failed: {error}") from error
            except BaseException:
                # (It holds part of the layer, which the next try sends again.)
                self._stop_leaving_nothing(child, directory)
                raise
            if answer is None:
                self._stop_leaving_nothing(child, directory)
                raise CheckpointerFailed("the checkpointer process exited")
            if answer[0] == "filter":
                raise FilterUnreadable(answer[1])
            if answer[0] != "ok":
                raise CheckpointerFailed(f"the checkpointer failed: {answer[1]}")
            paths: list[str] = answer[1]
            filter_out: str = answer[2]
            return paths, filter_out

    def _stop_leaving_nothing(self, child: subprocess.Popen[bytes] | None, directory: Path) -> None:
        """Stops the child, then removes what it wrote in `directory` for the checkpoint it
        did not finish (its pages' file, from "begin" on: its files carry its pid)."""
        self._stop()
        if child is not None:
            remove_files(str(path) for path in directory.glob(f"{child.pid}-*"))

    def _start(self) -> subprocess.Popen[bytes]:
        child = self._child
        if child is not None and child.poll() is None:
            return child
        self._child = child = subprocess.Popen(
            # Not `-m`: the package imports this module before runpy would run it.
            python_command("-c", "from ledger.embedded.checkpointer import main; main()"),
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux: a frame (about 300 KB) in one write
            try:
                fcntl.fcntl(cast(IO[bytes], child.stdin).fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
            except OSError:  # above /proc/sys/fs/pipe-max-size: the default, 64 KiB
                pass
        return child

    def _stop(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if child.stdin is not None:
            try:
                child.stdin.close()
            except OSError:
                pass
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    def close(self) -> None:
        with self._lock:
            self._stop()


# -----------------------------------------------------------------------------------------
# The child.


def _build(
    keys: _Keys,
    directory: str,
    filter_path: str,
    filter_bits_log2: int,
    fsync: bool,
    history: list[tuple[int, Any]],
    finished: list[tuple[int, int]],
    orphans: list[int],
    serial: int,
    cache: FilterCache | None = None,
    moved: str = "",
) -> tuple[list[str], str]:
    from rocksdict import SstFileWriter

    from ledger.embedded.store import IdFilter, sst_options

    ids = cache.take(moved, filter_bits_log2) if cache is not None else None
    if ids is None:
        ids = IdFilter.load(Path(filter_path), filter_bits_log2)
        if ids is None:
            raise FilterUnreadable(f"the id filter {filter_path} is missing or damaged")
    parts = keys.finish(history, finished, orphans, ids)
    streamed = keys.stream
    # A file per family of keys. None overlaps the M keys that the last checkpoint left in
    # the memtable (after a checkpoint written in batches, RocksDB flushes first); and the
    # pages (T) and history balances (H) come after every key of theirs already stored, so
    # RocksDB puts their files in its last level at once, where no compaction rewrites them
    # (in two files, below and above the M keys, the pages, most of the bytes, went to level
    # 0 with the rest and were compacted again and again). The A, I and U files, and S when it
    # finishes an older pending transfer, overlap what is stored and are compacted.
    stem = os.path.join(directory, f"{os.getpid()}-{serial}")
    paths: list[str] = []
    filter_out = f"{stem}-ids.bloom"
    try:
        for family, (keys_of, values) in zip(_FAMILIES, parts, strict=True):
            if family == "T" and streamed is not None:  # written as the frames came
                if streamed.finish():
                    paths.append(streamed.path)
                continue
            if not keys_of:
                continue
            path = f"{stem}-{family}.sst"
            paths.append(path)
            writer = SstFileWriter(sst_options())
            writer.open(path)
            for key, value in zip(keys_of, values, strict=True):
                writer[key] = value
            writer.finish()  # synced
        ids.save(Path(filter_out), fsync=fsync)
        if cache is not None:
            cache.keep(filter_out, ids)
    except BaseException:
        remove_files([*paths, filter_out])  # (a full disk should not fill up further)
        raise
    return paths, filter_out


def remove_files(paths: Iterable[str]) -> None:
    """Removes the files of a checkpoint that failed (those that exist)."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# A family's keys, in order, and their values.
Part = tuple[list[bytes], list[bytes]]
_FAMILIES = "AHISTU"  # in the order of their keys (M, the live state, is between I and S)
_ID_KEY = 1 + 16  # an I key: b"I" and an id
_ID_VALUE = 8 + 1  # an I value: its page's first timestamp and its index in the page


class FilterCache:
    """The filter the child saved last, kept for the next checkpoint: the engine moves that
    file in place, and says so in its next "end" (the path the child saved it at), so that
    the child need not read it again (reading and checking 32 MiB, and zeroing as much first,
    took about 35 ms of each checkpoint's CPU). The engine says nothing ("") when anything
    else may have been saved there since (its own checkpoint in batches, a new store)."""

    def __init__(self) -> None:
        self._kept: tuple[str, IdFilter] | None = None

    def take(self, moved: str, bits_log2: int) -> IdFilter | None:
        """The filter kept, if it is the one saved at `moved` (which the engine says it moved
        in place); it is no longer kept either way: the checkpoint adds to it, and what a
        checkpoint that fails added is in no file."""
        kept, self._kept = self._kept, None
        if kept is None or not moved or kept[0] != moved or kept[1].bits_log2 != bits_log2:
            return None
        return kept[1]

    def keep(self, path: str, ids: IdFilter) -> None:
        """`ids`, just saved at `path`."""
        self._kept = (path, ids)


class _Keys:
    """A checkpoint's keys, made a frame of its pages at a time (`add`), then sorted (`finish`).

    The ids are packed, 16 bytes each, and sorted by numpy with their I values (0.4 µs a
    transfer, where making and sorting them one bytes object at a time took 1.4), which come
    out as a list of keys and a list of values; the filter takes them packed too. The other
    keys that are not made in order (A, U) are made in the order of their lists, then sorted
    as (key, value) pairs (`_sorted_lists`)."""

    def __init__(self, stream: _PageFile | None = None) -> None:
        self.stream = stream  # the pages go there as they come, not to `page_keys`
        self.packed_ids: list[bytes] = []  # the log's ids, 16 bytes each, a frame at a time
        self.firsts: list[int] = []  # the first timestamp of each page
        self.sizes: list[int] = []  # the transfers of each page
        self.page_keys: list[bytes] = []  # T keys
        self.page_values: list[bytes] = []  # T values
        self.by_account: defaultdict[int, list[int]] = defaultdict(list)
        self.by_user_data: defaultdict[int, list[int]] = defaultdict(list)

    def add(self, values: list[bytes]) -> None:
        """The next pages of the layer's log, as T values."""
        loads = marshal.loads
        firsts, sizes = self.firsts, self.sizes
        by_account, by_user_data = self.by_account, self.by_user_data
        log: list[Any] = []
        stream = self.stream
        for value in values:
            page = loads(value)
            first = page[0][12]
            if stream is None:
                self.page_keys.append(b"T" + first.to_bytes(8, "big"))
                self.page_values.append(value)
            else:
                stream.put(b"T" + first.to_bytes(8, "big"), value)
            firsts.append(first)
            sizes.append(len(page))
            log += page
        self.packed_ids.append(b"".join([t[0].to_bytes(16, "big") for t in log]))
        for t in log:
            ts = t[12]
            by_account[t[1]].append(ts)
            by_account[t[2]].append(ts)
            if t[5]:
                by_user_data[t[5]].append(ts)

    def finish(
        self,
        history: Iterable[tuple[int, Any]],
        finished: Iterable[tuple[int, int]],
        orphans: list[int],
        ids: IdFilter,
    ) -> list[Part]:
        """Every key, in order, a family at a time (`_FAMILIES`); the ids go into `ids`."""
        dumps = marshal.dumps
        packed = b"".join(self.packed_ids)
        self.packed_ids = []
        ids.add_packed(packed)
        ids.add(orphans)
        i_part = _id_keys(packed, self.firsts, self.sizes)
        if orphans:  # (the value b""; two sorted runs: one merge)
            merged = sorted(
                chain(
                    zip(*i_part, strict=True),
                    ((b"I" + tid.to_bytes(16, "big"), b"") for tid in orphans),
                )
            )
            i_part = [k for k, _ in merged], [v for _, v in merged]
        h_stamps = sorted(ts for ts, _ in history)  # in order already: one pass
        balances = dict(history)
        s_pairs = sorted((b"S" + ts.to_bytes(8, "big"), bytes((st,))) for st, ts in finished)
        return [
            _sorted_lists(b"A", self.by_account),
            (
                [b"H" + ts.to_bytes(8, "big") for ts in h_stamps],
                [dumps(balances[ts]) for ts in h_stamps],
            ),
            i_part,
            ([k for k, _ in s_pairs], [v for _, v in s_pairs]),
            (self.page_keys, self.page_values),
            _sorted_lists(b"U", self.by_user_data),
        ]


class _PageFile:
    """The SST file of a checkpoint's pages (T), written as its frames come: the pages are in
    order already, and most of a checkpoint's bytes (38 MB for 360,000 of the service's
    transfers). Held to the end, they added to the checkpointer's peak (246 MiB against 222 in
    `bench.checkpoint`); written at once, each frame's memory is used again for the next."""

    def __init__(self, path: str) -> None:
        from rocksdict import SstFileWriter

        from ledger.embedded.store import sst_options

        self.path = path
        self.count = 0
        self._writer = SstFileWriter(sst_options())
        self._writer.open(path)

    def put(self, key: bytes, value: bytes) -> None:
        self._writer[key] = value
        self.count += 1

    def finish(self) -> bool:
        """Finishes (and syncs) the file; False, and no file, if no page came."""
        if self.count == 0:
            remove_files([self.path])
            return False
        self._writer.finish()
        return True


def _id_keys(packed: bytes, firsts: list[int], sizes: list[int]) -> Part:
    """The I keys and their values, in order, of the ids packed in `packed` (the log's, 16
    bytes each, big-endian) in pages that start at `firsts` and hold `sizes` transfers: b"I"
    and the id; the page's first timestamp and the index in the page."""
    import numpy as np

    n = len(packed) // 16
    if n == 0:
        return [], []
    words = np.frombuffer(packed, ">u8").reshape(n, 2)
    high = words[:, 0].astype(np.uint64)
    order = np.argsort(high)
    ordered = high[order]
    if bool((ordered[1:] == ordered[:-1]).any()):  # ids that share their high half
        order = np.lexsort((words[:, 1].astype(np.uint64), high))
    keys = np.empty((n, _ID_KEY), np.uint8)
    keys[:, 0] = ord("I")
    keys[:, 1:] = np.frombuffer(packed, np.uint8).reshape(n, 16)
    values = np.empty((n, _ID_VALUE), np.uint8)
    counts = np.array(sizes, np.intp)
    starts = np.repeat(np.array(firsts, ">u8"), counts)
    values[:, :8] = starts.view(np.uint8).reshape(n, 8)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)  # where each one's page begins
    values[:, 8] = np.arange(n) - offsets
    flat_keys = keys[order].tobytes()
    flat_values = values[order].tobytes()
    return (
        [flat_keys[at : at + _ID_KEY] for at in range(0, len(flat_keys), _ID_KEY)],
        [flat_values[at : at + _ID_VALUE] for at in range(0, len(flat_values), _ID_VALUE)],
    )


def families(
    log: list[Any],
    history: Iterable[tuple[int, Any]],
    finished: Iterable[tuple[int, int]],
    orphans: list[int],
    ids: IdFilter,
) -> list[Part]:
    """Every key `HistoryStore._key_slices` makes of the pages of `log` and the rest, in
    order, a family at a time (`_FAMILIES`), as the checkpointer makes them in frames of
    PAGES_PER_FRAME pages; the ids go into `ids`."""
    keys = _Keys()
    for frame in _frames(log):
        keys.add(frame)
    return keys.finish(history, finished, orphans, ids)


def _frames(log: list[Any]) -> Iterator[list[bytes]]:
    """The T values of `log`'s pages (`store._pages`), PAGES_PER_FRAME at a time."""
    from ledger.embedded.store import _pages

    frame: list[bytes] = []
    for _, value, _ in _pages(log):
        frame.append(value)
        if len(frame) == PAGES_PER_FRAME:
            yield frame
            frame = []
    if frame:
        yield frame


def _sorted_lists(prefix: bytes, lists: dict[int, list[int]]) -> Part:
    """The A or U keys of `lists` (timestamps by account or user data) and their values
    (`store._listed`), in order. (Made in the lists' order, then sorted: made in the order of
    their keys, reading the lists out of order, they took half as long again.)"""
    from ledger.embedded.store import _listed

    pairs = _listed(prefix, lists)
    pairs.sort()  # (the keys are distinct: no value is compared)
    return [k for k, _ in pairs], [v for _, v in pairs]


def pairs_of(parts: list[Part]) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) pairs of `families`' runs, in order (what the SST files get)."""
    for keys, values in parts:
        yield from zip(keys, values, strict=True)


def _memory_trimmer() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, which returns the memory of the checkpoint just built to the
    system (glibc keeps freed memory for the process otherwise: 167 of a 241 MiB peak, between
    checkpoints, when it was kept); None without glibc. Looked up once: a `ctypes.CDLL` made
    and dropped leaves a reference cycle."""
    try:
        return cast("Callable[[int], int]", ctypes.CDLL("libc.so.6").malloc_trim)
    except (OSError, AttributeError):  # not glibc
        return None


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    broken: str | None = None  # every checkpoint fails with this, said to the engine
    try:
        import numpy  # noqa: F401  (now, not in the first checkpoint: 0.1 s)
    except ImportError:
        broken = traceback.format_exc()
    trim = _memory_trimmer()
    # No automatic collections: a checkpoint makes no reference cycles, and the transfers it
    # reads (tuples, which the collector tracks) and its lists by user data (72,000 at batch
    # rates) made the collector walk them again and again, about a tenth of the CPU a
    # checkpoint takes. What was alive at start is frozen; one collection after each
    # checkpoint walks what is left of it, which is little, and takes any cycle a failure
    # might make.
    gc.disable()
    gc.collect()
    gc.freeze()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    keys = _Keys()
    cache = FilterCache()
    serial = 0  # of the checkpoint before this one
    failed = broken  # a frame that could not be indexed: the checkpoint fails
    while True:
        message = _receive(stdin)
        if message is None or message[0] == "begin":
            if keys.stream is not None:  # a checkpoint cut short: its pages' file goes
                remove_files([keys.stream.path])
                keys = _Keys()
            if message is None:
                return
            if failed is None:
                try:
                    path = os.path.join(message[1], f"{os.getpid()}-{serial + 1}-T.sst")
                    keys = _Keys(_PageFile(path))
                except Exception:
                    failed = traceback.format_exc()
            continue
        if message[0] == "pages":
            if failed is None:
                try:
                    keys.add(message[1])
                except Exception:
                    failed = traceback.format_exc()
            continue
        _, directory, filter_path, bits_log2, fsync, history, finished, orphans, moved = message
        serial += 1
        try:
            if failed is not None:
                raise RuntimeError(failed)
            paths, filter_out = _build(
                keys,
                directory,
                filter_path,
                bits_log2,
                fsync,
                history,
                finished,
                orphans,
                serial,
                cache,
                moved,
            )
            answer: Any = ("ok", paths, filter_out)
        except FilterUnreadable as error:
            answer = ("filter", str(error))
        except Exception:
            answer = ("error", traceback.format_exc())
            if keys.stream is not None:
                remove_files([keys.stream.path])  # (a full disk should not fill up further)
        keys, failed = _Keys(), broken
        _send(stdout, answer)
        stdout.flush()
        gc.collect()
        if trim is not None:
            trim(0)


if __name__ == "__main__":
    main()
