"""A checkpoint's keys, built and written to SST files by a process of its own.

Indexing a checkpoint's transfers (their ids, accounts and user data as keys, sorted into
RocksDB) is CPU work of about 6 µs per transfer, and in the engine's process it holds the
interpreter lock that the requests need: a checkpoint of 250,000 transfers halved single
requests while it ran, and batch ingestion over HTTP ran 35 % slower. So a large checkpoint's
pages are sent here (one `marshal` per page, which the page needs anyway) and this process, on
the other core, builds every key, sorts them and writes them as SST files, with a copy of the
id filter that has their ids. The engine then reads that filter, moves it in place and ingests
the files (one call, atomic). The keys are exactly those `HistoryStore` writes in-process.

Protocol, over the child's stdin and stdout: frames of [u64 little-endian length][marshal].
The parent sends ("pages", [(first_ts 8 bytes, page value), ...]) any number of times, then
("end", directory, filter path, filter bits log2, fsync, history items, finished values,
orphans); the child answers ("ok", [SST paths], filter path) or ("error", text), and is ready
for the next checkpoint. It writes only in `directory`: the filter it returns is a copy of the
one at the filter path with the ids added, which the engine moves in place. (A child whose
engine was killed runs on until it next reads; it must not touch the files of the engine that
opened the data directory after it.) It exits when its stdin closes (its engine closed, or
died); it ignores SIGINT, as the engine does, so that a Ctrl-C stops the server first.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import signal
import struct
import subprocess
import sys
import threading
import traceback
from collections import defaultdict
from collections.abc import Iterable, Iterator
from operator import itemgetter
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from ledger.embedded.store import IdFilter

_FRAME = struct.Struct("<Q")
PAGES_PER_FRAME = 32  # 2,048 transfers: a frame's marshal holds the lock for about 1 ms


def _send(out: IO[bytes], message: Any) -> None:
    body = marshal.dumps(message)
    out.write(_FRAME.pack(len(body)) + body)


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


class Checkpointer:
    """The engine's side: one child process, started at the first checkpoint that needs it,
    used by one checkpoint at a time (the journal's checkpoint thread)."""

    def __init__(self) -> None:
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def build(
        self,
        pages: list[tuple[bytes, bytes]],
        *,
        directory: Path,
        filter_path: Path,
        filter_bits_log2: int,
        fsync: bool,
        history: list[tuple[int, Any]],
        finished: list[tuple[int, int]],
        orphans: list[int],
    ) -> tuple[list[str], str]:
        """The SST files holding every key `HistoryStore._key_slices` makes of these pages and
        the rest, and a file with the filter saved at `filter_path` and their ids, all written
        in `directory`."""
        with self._lock:
            try:
                child = self._start()
                stdin, stdout = cast(IO[bytes], child.stdin), cast(IO[bytes], child.stdout)
                for start in range(0, len(pages), PAGES_PER_FRAME):
                    _send(stdin, ("pages", pages[start : start + PAGES_PER_FRAME]))
                end = ("end", str(directory), str(filter_path), filter_bits_log2, fsync)
                _send(stdin, (*end, history, finished, orphans))
                stdin.flush()
                answer = _receive(stdout)
            except (OSError, ValueError, EOFError) as error:
                self._stop()
                raise CheckpointerFailed(f"the checkpointer process failed: {error}") from error
            if answer is None:
                self._stop()
                raise CheckpointerFailed("the checkpointer process exited")
            if answer[0] != "ok":
                raise CheckpointerFailed(f"the checkpointer failed: {answer[1]}")
            paths: list[str] = answer[1]
            filter_out: str = answer[2]
            return paths, filter_out

    def _start(self) -> subprocess.Popen[bytes]:
        child = self._child
        if child is not None and child.poll() is None:
            return child
        self._child = child = subprocess.Popen(
            # Not `-m`: the package imports this module before runpy would run it.
            [sys.executable, "-c", "from ledger.embedded.checkpointer import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
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
    pages: list[tuple[bytes, bytes]],
    directory: str,
    filter_path: str,
    filter_bits_log2: int,
    fsync: bool,
    history: list[tuple[int, Any]],
    finished: list[tuple[int, int]],
    orphans: list[int],
    serial: int,
) -> tuple[list[str], str]:
    from rocksdict import SstFileWriter

    from ledger.embedded.store import IdFilter, sst_options

    ids = IdFilter.load(Path(filter_path), filter_bits_log2) or IdFilter(filter_bits_log2)
    below, above = families(pages, history, finished, orphans, ids)
    pages.clear()  # the values are in `above` now
    # Two files, below and above the M keys: neither overlaps the M keys that the last
    # checkpoint left in the memtable, so ingesting them needs no flush.
    stem = os.path.join(directory, f"{os.getpid()}-{serial}")
    paths = []
    for part, parts in enumerate((below, above)):
        if not any(items for _, items in parts):
            continue
        path = f"{stem}-{part}.sst"
        writer = SstFileWriter(sst_options())
        writer.open(path)
        for joined, items in parts:
            if joined:  # I keys, each joined to its value
                for item in items:
                    writer[item[:_I_KEY]] = item[_I_KEY:]
            else:
                for key, value in items:
                    writer[key] = value
        writer.finish()  # synced
        paths.append(path)
    filter_out = f"{stem}-ids.bloom"
    ids.save(Path(filter_out), fsync=fsync)
    return paths, filter_out


_I_KEY = 1 + 16  # b"I" and an id
# A run of keys in order: (False, [(key, value), ...]) or (True, [I key + value, ...]).
Part = tuple[bool, list[Any]]


def families(
    pages: Iterable[tuple[bytes, bytes]],
    history: Iterable[tuple[int, Any]],
    finished: Iterable[tuple[int, int]],
    orphans: list[int],
    ids: IdFilter,
) -> tuple[list[Part], list[Part]]:
    """Every key `HistoryStore._key_slices` makes of these pages and the rest, in order, in
    two lists of runs: the keys below the M keys (A, H, I) and those above (S, T, U); the
    ids go into `ids` on the way.

    Only the I keys need sorting (the other families come in order, or nearly), and they are
    sorted joined to their values, one bytes object each: the sort then compares bytes with
    no key function and no tuples (1.4 µs a transfer, where sorting every pair by key took 2.2).
    The pages are read one at a time (all of them at once took 150 MiB more)."""
    from ledger.embedded.store import _INDEX, _listed, _ts8

    loads, dumps = marshal.loads, marshal.dumps
    index = _INDEX
    joined: list[bytes] = []
    t_pairs: list[tuple[bytes, bytes]] = []
    by_account: defaultdict[int, list[int]] = defaultdict(list)
    by_user_data: defaultdict[int, list[int]] = defaultdict(list)
    for first, value in pages:
        page = loads(value)
        ids.add([t[0] for t in page])
        t_pairs.append((b"T" + first, value))
        joined += [b"I" + t[0].to_bytes(16, "big") + first + index[i] for i, t in enumerate(page)]
        for t in page:
            ts = t[12]
            by_account[t[1]].append(ts)
            by_account[t[2]].append(ts)
            if t[5]:
                by_user_data[t[5]].append(ts)
    ids.add(orphans)
    joined += [b"I" + tid.to_bytes(16, "big") for tid in orphans]  # the value b""
    joined.sort()
    by_key = itemgetter(0)
    a_pairs = sorted(_listed(b"A", by_account), key=by_key)
    h_pairs = sorted(((b"H" + _ts8(ts), dumps(b)) for ts, b in history), key=by_key)
    s_pairs = sorted(((b"S" + _ts8(ts), bytes((st,))) for st, ts in finished), key=by_key)
    u_pairs = sorted(_listed(b"U", by_user_data), key=by_key)
    below: list[Part] = [(False, a_pairs), (False, h_pairs), (True, joined)]
    above: list[Part] = [(False, s_pairs), (False, t_pairs), (False, u_pairs)]
    return below, above


def pairs_of(parts: list[Part]) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) pairs of `families`' runs, in order (what the SST file gets)."""
    for joined, items in parts:
        if joined:
            for item in items:
                yield item[:_I_KEY], item[_I_KEY:]
        else:
            yield from items


def _give_back_memory() -> None:
    """Returns the memory of the checkpoint just built to the system (glibc keeps freed memory
    for the process otherwise: 167 of a 241 MiB peak, between checkpoints)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.malloc_trim(0)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    pages: list[tuple[bytes, bytes]] = []
    serial = 0
    while True:
        message = _receive(stdin)
        if message is None:
            return
        if message[0] == "pages":
            pages += message[1]
            continue
        _, directory, filter_path, bits_log2, fsync, history, finished, orphans = message
        serial += 1
        try:
            paths, filter_out = _build(
                pages, directory, filter_path, bits_log2, fsync, history, finished, orphans, serial
            )
            answer: Any = ("ok", paths, filter_out)
        except Exception:
            answer = ("error", traceback.format_exc())
        pages = []
        _send(stdout, answer)
        stdout.flush()
        _give_back_memory()


if __name__ == "__main__":
    main()
