"""The checkpointer process builds the same keys and values as the in-process writer.

`families` (what the checkpointer's SST files get) is checked against `_key_slices` (what
`HistoryStore._write_batches` writes) on drawn layers: ids, accounts and user data of any
size, accounts with more than one chunk of timestamps, history balances, final statuses and
ids that failed. Values are compared decoded: `marshal` may encode equal lists differently."""

from __future__ import annotations

import gc
import marshal
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.embedded import checkpointer
from ledger.embedded.checkpointer import families, pairs_of
from ledger.embedded.store import (
    _MIX,
    CHUNK,
    MAYBE_PACKED_MIN,
    PAGE,
    IdFilter,
    _key_slices,
    _pages,
    _positions,
)

_U128 = (1 << 128) - 1


def _decoded(pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, Any]]:
    out: list[tuple[bytes, Any]] = []
    for key, value in pairs:
        if key[:1] in b"AUHT":
            out.append((key, marshal.loads(value)))
        else:
            out.append((key, value))
    return out


@st.composite
def layers(draw: st.DrawFn) -> tuple[list[Any], list[Any], list[Any], list[int]]:
    count = draw(st.integers(0, 3 * PAGE + 5))  # (slices of 32 pages in `families`)
    # Ids of any size, and ids that share their high half (sorted by both halves then).
    shared = st.builds(
        lambda high, low: high << 64 | low,
        st.sampled_from([0, 1, (1 << 64) - 1]),
        st.sampled_from([0, 1, (1 << 64) - 1]) | st.integers(0, (1 << 64) - 1),
    ).filter(bool)
    ids = draw(
        st.lists(st.integers(1, _U128) | shared, min_size=count, max_size=count, unique=True)
    )
    accounts = draw(st.lists(st.integers(1, _U128), min_size=2, max_size=6, unique=True))
    user_data = draw(st.lists(st.integers(0, _U128), min_size=1, max_size=4))
    log = []
    ts = draw(st.integers(1, 1 << 62))
    for i, tid in enumerate(ids):
        ts += draw(st.integers(1, 3))
        dr = accounts[i % len(accounts)]
        cr = accounts[(i + 1) % len(accounts)]
        log.append((tid, dr, cr, i, 0, user_data[i % len(user_data)], 0, 0, 0, 1, 1, 0, ts, 0))
    history = [(t[12], (t[1], 1, 2, 3, 4, t[2], 5, 6, 7, 8)) for t in log if t[3] % 3 == 0]
    finished = [(draw(st.sampled_from((1, 2, 3))), t[12]) for t in log if t[3] % 4 == 1]
    orphans = draw(
        st.lists(st.integers(1, _U128).filter(lambda x: x not in set(ids)), max_size=4, unique=True)
    )
    return log, history, finished, orphans


@settings(max_examples=60, deadline=None)
@given(layers(), st.sampled_from([1, 2, checkpointer.PAGES_PER_FRAME]))
def test_the_checkpointer_writes_the_keys_of_the_in_process_writer(
    layer: Any, pages_per_frame: int
) -> None:
    """(The log reaches the checkpointer in slices of `pages_per_frame` pages.)"""
    log, history, finished, orphans = layer
    pages = list(_pages(log))
    by_account: defaultdict[int, list[int]] = defaultdict(list)
    for t in log:
        by_account[t[1]].append(t[12])
        by_account[t[2]].append(t[12])
    expected = list(chain.from_iterable(_key_slices(pages, by_account, history, finished, orphans)))
    expected.sort(key=itemgetter(0))
    ids = IdFilter(16)
    default, checkpointer.PAGES_PER_FRAME = checkpointer.PAGES_PER_FRAME, pages_per_frame
    try:
        parts = families(log, history, finished, orphans, ids)
    finally:
        checkpointer.PAGES_PER_FRAME = default
    for family, part in zip("AHISTU", parts, strict=True):  # a file each
        assert {k[:1] for k, _ in pairs_of([part])} <= {family.encode()}
    got = list(pairs_of(parts))
    assert [k for k, _ in got] == sorted(k for k, _ in got)  # strictly in order, as SSTs need
    assert len({k for k, _ in got}) == len(got)
    assert _decoded(got) == _decoded(expected)
    expected_ids = IdFilter(16)
    expected_ids.add(chain((t[0] for t in log), orphans))
    assert ids.bits == expected_ids.bits


def test_an_account_with_more_than_a_chunk_gets_a_key_per_chunk() -> None:
    log = [(i + 1, 7, 8, 0, 0, 9, 0, 0, 0, 1, 1, 0, 100 + i, 0) for i in range(2 * CHUNK + 3)]
    pairs = list(pairs_of(families(log, [], [], [], IdFilter(16))))
    a_keys = [k for k, _ in pairs if k[:1] == b"A"]
    u_keys = [k for k, _ in pairs if k[:1] == b"U"]
    assert len(a_keys) == 2 * 3 and len(u_keys) == 3
    assert [int.from_bytes(k[17:], "big") for k in u_keys] == [
        100 + CHUNK - 1,
        100 + 2 * CHUNK - 1,
        100 + 2 * CHUNK + 2,
    ]


_EDGES = [0, 1, _U128, 1 << 64, (1 << 64) - 1, 1 << 127]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, _U128), max_size=50), st.integers(16, 36))
def test_numpy_finds_the_bits_the_filter_sets_in_python(ids: list[int], bits_log2: int) -> None:
    """`_positions` (numpy, 64-bit halves) against the 128-bit multiply-shift of `add`, at
    every filter size (from 33 bits up the second position takes bits of the low half)."""
    ids += _EDGES
    first, second = _positions(b"".join(i.to_bytes(16, "big") for i in ids), bits_log2)
    expected_first, expected_second = [], []
    for tid in ids:
        h = (tid * _MIX) & _U128
        expected_first.append(h >> (128 - bits_log2))
        expected_second.append((h >> (128 - 2 * bits_log2)) & ((1 << bits_log2) - 1))
    assert first.tolist() == expected_first
    assert second.tolist() == expected_second


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, _U128), max_size=400), st.sampled_from([16, 17, 20]))
def test_a_filter_given_packed_ids_has_the_bits_of_one_given_them_one_by_one(
    ids: list[int], bits_log2: int
) -> None:
    ids += ids[:3] + _EDGES  # (an id twice sets its bits once)
    packed, one_by_one = IdFilter(bits_log2), IdFilter(bits_log2)
    packed.add_packed(b"".join(i.to_bytes(16, "big") for i in ids))
    one_by_one.add(ids)
    assert packed.bits == one_by_one.bits
    assert packed.maybe(ids) == ids


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(0, _U128), min_size=1, max_size=300),
    st.lists(st.integers(0, _U128), min_size=1, max_size=300),
    st.sampled_from([16, 20, 24]),
)
def test_many_ids_are_tested_by_numpy_with_the_answers_of_the_loop(
    added: list[int], asked: list[int], bits_log2: int
) -> None:
    """`maybe` of MAYBE_PACKED_MIN ids or more (numpy) answers as one id at a time does (the
    loop): the ids added, and the others the filter may contain, in their order. (Positions
    at every filter size are checked above.)"""
    ids = IdFilter(bits_log2)
    ids.add(added)
    many = (asked * (MAYBE_PACKED_MIN // len(asked) + 1) + added + _EDGES + [-1, 1 << 128])[::-1]
    expected = [tid for tid in many if ids.may_contain(tid)]
    assert set(added) <= set(expected)
    assert ids.maybe(many) == expected
    assert ids._maybe_packed(many) == expected  # (the path `maybe` took: not the loop twice)


def test_a_checkpointer_without_numpy_fails_each_checkpoint_with_the_reason(
    tmp_path: Path,
) -> None:
    """It answers every checkpoint with the import error (which the engine logs, and tries
    the checkpoint again), instead of dying before it reads, which the engine saw only as
    'the checkpointer process exited'."""
    code = (
        "import sys; sys.modules['numpy'] = None\n"
        "from ledger.embedded.checkpointer import main; main()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    stdin, stdout = cast(IO[bytes], child.stdin), cast(IO[bytes], child.stdout)
    log = [(1, 1, 2, 1, 0, 0, 0, 0, 0, 1, 1, 0, 10, 0)]
    try:
        for _ in range(2):
            for frame in checkpointer._frames(log):
                checkpointer._send(stdin, ("pages", frame))
            end = ("end", str(tmp_path), str(tmp_path / "ids.bloom"), 16, False, [], [], [], "")
            checkpointer._send(stdin, end)
            stdin.flush()
            answer = checkpointer._receive(stdout)
            assert answer[0] == "error" and "import of numpy" in answer[1], answer
    finally:
        stdin.close()
        assert child.wait(timeout=30) == 0
        stdout.close()
    assert not list(tmp_path.iterdir())


def test_a_checkpoint_in_the_checkpointer_makes_no_cyclic_garbage(tmp_path: Path) -> None:
    """The checkpointer runs with the cyclic collector off (its `main`) and collects once
    after each checkpoint: building one, and one that fails, leave nothing for the collector,
    so the collections it no longer runs would have found nothing."""
    log = [
        (i + 1, 7 + i % 3, 8, i, 0, (i // 2) * 11, 0, 0, 0, 1, 1, 0, (1 << 60) + i, 0)
        for i in range(3 * PAGE + 5)
    ]
    history = [(t[12], (t[1], 1, 2, 3, 4, t[2], 5, 6, 7, 8)) for t in log[::4]]
    filter_path = tmp_path / "ids.bloom"
    IdFilter(16).save(filter_path, fsync=False)
    import numpy  # noqa: F401  (imported, as the checkpointer's `main` does, before it freezes:
    from rocksdict import SstFileWriter  # noqa: F401  the first import leaves a few cycles)

    trim = checkpointer._memory_trimmer()  # what `main` calls after each collection
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for serial in (1, 2):
            keys = checkpointer._Keys()
            for frame in checkpointer._frames(log):
                keys.add(frame)
            paths, out = checkpointer._build(
                keys, str(tmp_path), str(filter_path), 16, False, history, [(1, 5)], [10**9], serial
            )
            assert len(paths) == 6 and Path(out).exists()  # (S: one final status)
            del keys
            if trim is not None:
                trim(0)
            assert gc.collect() == 0
        failing = checkpointer._Keys()
        for frame in checkpointer._frames(log):
            failing.add(frame)
        with pytest.raises(Exception, match="No such file"):  # the directory is gone
            checkpointer._build(
                failing, str(tmp_path / "gone"), str(filter_path), 16, False, [], [], [], 3
            )
        del failing
        if trim is not None:
            trim(0)
        assert gc.collect() == 0
    finally:
        if enabled:
            gc.enable()


def _checkpointer_child() -> tuple[subprocess.Popen[bytes], IO[bytes], IO[bytes]]:
    child = subprocess.Popen(
        [sys.executable, "-c", "from ledger.embedded.checkpointer import main; main()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    return child, cast(IO[bytes], child.stdin), cast(IO[bytes], child.stdout)


def test_the_checkpointer_process_writes_the_pages_as_they_come_and_every_key(
    tmp_path: Path,
) -> None:
    """Over its pipe, as the engine drives it: the pages' file is open once "begin" comes,
    before the last frame; the files it answers hold the keys `families` makes, and its
    filter the ids. A checkpoint that fails (its directory does not exist; its filter cannot
    be saved, after its pages' file was finished), one with no pages and one cut short leave
    no file behind, and the next one succeeds."""
    from rocksdict import Rdict

    from ledger.embedded.store import sst_options

    log = [
        (i + 1, 7 + i % 5, 8, i, 0, (i // 3) * 13, 0, 0, 0, 1, 1, 0, (1 << 60) + 2 * i, 0)
        for i in range(2 * checkpointer.PAGES_PER_FRAME * PAGE + 7)  # three frames
    ]
    history = [(t[12], (t[1], 1, 2, 3, 4, t[2], 5, 6, 7, 8)) for t in log[::5]]
    finished = [(2, log[1][12])]
    orphans = [10**9]
    filter_path = tmp_path / "ids.bloom"
    IdFilter(16).save(filter_path, fsync=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    child, stdin, stdout = _checkpointer_child()
    try:
        # A checkpoint that fails: its directory is gone.
        checkpointer._send(stdin, ("begin", str(tmp_path / "gone")))
        for frame in checkpointer._frames(log):
            checkpointer._send(stdin, ("pages", frame))
        end = ("end", str(tmp_path / "gone"), str(filter_path), 16, False, [], [], [], "")
        checkpointer._send(stdin, end)
        stdin.flush()
        answer = checkpointer._receive(stdout)
        assert answer[0] == "error" and "gone" in answer[1], answer
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.bloom", "out"]
        # One that fails at its very end, its pages' file finished: the filter cannot be saved.
        blocked = out_dir / f"{child.pid}-2-ids.tmp"
        blocked.mkdir()
        checkpointer._send(stdin, ("begin", str(out_dir)))
        for frame in checkpointer._frames(log):
            checkpointer._send(stdin, ("pages", frame))
        checkpointer._send(
            stdin, ("end", str(out_dir), str(filter_path), 16, False, [], [], [], "")
        )
        stdin.flush()
        answer = checkpointer._receive(stdout)
        assert answer[0] == "error" and "IsADirectoryError" in answer[1], answer
        assert list(out_dir.iterdir()) == [blocked]
        blocked.rmdir()
        # One with no pages (a layer of history balances, say): no pages' file.
        checkpointer._send(stdin, ("begin", str(out_dir)))
        checkpointer._send(
            stdin, ("end", str(out_dir), str(filter_path), 16, False, [], [], [7], "")
        )
        stdin.flush()
        answer = checkpointer._receive(stdout)
        assert answer[0] == "ok" and [Path(p).name[-6:] for p in answer[1]] == ["-I.sst"]
        for leftover in out_dir.iterdir():
            leftover.unlink()

        frames = list(checkpointer._frames(log))
        checkpointer._send(stdin, ("begin", str(out_dir)))
        for frame in frames[:-1]:
            checkpointer._send(stdin, ("pages", frame))
        stdin.flush()
        deadline = time.monotonic() + 30
        while not list(out_dir.glob("*-T.sst")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [p.name[-6:] for p in out_dir.iterdir()] == ["-T.sst"]  # before the last frame
        checkpointer._send(stdin, ("pages", frames[-1]))
        end = ("end", str(out_dir), str(filter_path), 16, False, history, finished, orphans, "")
        checkpointer._send(stdin, end)
        stdin.flush()
        answer = checkpointer._receive(stdout)
        # One cut short (its engine stopped it): the child takes its pages' file with it.
        checkpointer._send(stdin, ("begin", str(out_dir)))
        checkpointer._send(stdin, ("pages", frames[0]))
    finally:
        stdin.close()
        assert child.wait(timeout=30) == 0
        stdout.close()
    assert answer[0] == "ok", answer
    paths, filter_out = answer[1], answer[2]
    assert sorted(str(p) for p in out_dir.iterdir()) == sorted([*paths, filter_out])
    assert sorted(Path(p).name[-5:-4] for p in paths) == list("AHISTU")
    db = Rdict(str(tmp_path / "db"), sst_options())
    try:
        db.ingest_external_file(paths)
        got = [(k, v) for k, v in db.items()]
    finally:
        db.close()
    expected_ids = IdFilter(16)
    expected = list(pairs_of(families(log, history, finished, orphans, expected_ids)))
    assert _decoded(got) == _decoded(expected)
    written = IdFilter.load(Path(filter_out), 16)
    assert written is not None and written.bits == expected_ids.bits


def test_the_pages_go_to_their_file_as_each_frame_comes(tmp_path: Path) -> None:
    """`_Keys` given a pages' file keeps no page: each frame's go to the file at once."""
    log = [(i + 1, 7, 8, i, 0, 0, 0, 0, 0, 1, 1, 0, (1 << 60) + i, 0) for i in range(3 * PAGE)]
    (frame,) = checkpointer._frames(log)
    stream = checkpointer._PageFile(str(tmp_path / "T.sst"))
    keys = checkpointer._Keys(stream)
    keys.add(frame)
    assert keys.page_keys == keys.page_values == [] and stream.count == len(frame) == 3
    assert keys.firsts == [t[12] for t in log[::PAGE]]
    assert stream.finish() and (tmp_path / "T.sst").stat().st_size > 0


def test_a_checkpoint_cut_short_by_its_engine_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's side stops the child when sending fails part way (here, after the first
    frame, the child killed), and removes what the child had written for it: its pages'
    file. The next checkpoint starts a new child."""
    log = [
        (i + 1, 7, 8, i, 0, 0, 0, 0, 0, 1, 1, 0, (1 << 60) + i, 0)
        for i in range(3 * checkpointer.PAGES_PER_FRAME * PAGE)
    ]
    frames = checkpointer._frames

    def failing(log: list[Any]) -> Any:
        for n, frame in enumerate(frames(log)):
            if n == 1:
                deadline = time.monotonic() + 30  # (the child has opened its file)
                while not list(tmp_path.glob("*-T.sst")) and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert built.pid is not None
                os.kill(built.pid, signal.SIGKILL)  # (it cannot remove its file itself)
                raise BrokenPipeError("cut short")
            yield frame

    monkeypatch.setattr(checkpointer, "_frames", failing)
    IdFilter(16).save(tmp_path / "ids.bloom", fsync=False)
    built = checkpointer.Checkpointer()

    def build() -> tuple[list[str], str]:
        return _build_plain(built, log, tmp_path, tmp_path / "ids.bloom")

    try:
        with pytest.raises(checkpointer.CheckpointerFailed, match="cut short"):
            build()
        assert [p.name for p in tmp_path.iterdir()] == ["ids.bloom"]
        monkeypatch.setattr(checkpointer, "_frames", frames)
        paths, _ = build()
        assert sorted(Path(p).name[-5:-4] for p in paths) == list("AIT")
    finally:
        built.close()


def test_the_checkpointer_adds_to_the_filter_it_kept_only_when_the_engine_moved_it(
    tmp_path: Path,
) -> None:
    """After a checkpoint, the engine moves the child's filter in place and says so in its next
    "end": the child then adds to the copy it kept, without reading the file (here the file is
    replaced behind the engine's back, and its ids are not in the answer). When the engine says
    nothing (it saved a filter of its own there since), the child reads the file: that file's
    ids are in the answer, and the kept copy's are not."""

    def page(first: int) -> list[Any]:
        return [(first + i, 7, 8, 1, 0, 0, 0, 0, 0, 1, 1, 0, first + i, 0) for i in range(5)]

    def checkpoint(log: list[Any], moved: str) -> str:
        checkpointer._send(stdin, ("begin", str(out_dir)))
        for frame in checkpointer._frames(log):
            checkpointer._send(stdin, ("pages", frame))
        end = ("end", str(out_dir), str(filter_path), 16, False, [], [], [], moved)
        checkpointer._send(stdin, end)
        stdin.flush()
        answer = checkpointer._receive(stdout)
        assert answer[0] == "ok", answer
        for path in answer[1]:
            os.unlink(path)
        return str(answer[2])

    def holds(path: Path | str, ids: list[int]) -> list[bool]:
        saved = IdFilter.load(Path(path), 16)
        assert saved is not None
        return [saved.may_contain(i) for i in ids]

    first, second, third, engines = [100, 101], [200, 201], [300, 301], [900, 901]
    filter_path = tmp_path / "ids.bloom"
    IdFilter(16).save(filter_path, fsync=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    child, stdin, stdout = _checkpointer_child()
    try:
        out = checkpoint(page(100)[:2], "")
        os.replace(out, filter_path)
        # The file is replaced behind the engine's back: the child, told its own was moved
        # there, adds to the copy it kept.
        other = IdFilter(16)
        other.add(engines)
        other.save(filter_path, fsync=False)
        out = checkpoint(page(200)[:2], out)
        assert holds(out, first + second) == [True] * 4
        assert holds(out, engines) == [False, False]
        # The engine saved a filter of its own there (told ""): the child reads it.
        other.save(filter_path, fsync=False)
        out = checkpoint(page(300)[:2], "")
        assert holds(out, engines + third) == [True] * 4
        assert holds(out, first + second) == [False] * 4
    finally:
        stdin.close()
        assert child.wait(timeout=30) == 0
        stdout.close()


def test_the_checkpointer_runs_the_engines_code_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started from a directory that holds a `ledger` package of its own, the checkpointer
    process imports the engine's code, not that one (`-c` put the working directory first on
    `sys.path`), and writes the checkpoint."""
    project, marker = tmp_path / "project", tmp_path / "decoy-imported"
    for name in ("ledger/__init__.py", "ledger/embedded/__init__.py"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(f"open({str(marker)!r}, 'a').write('x')\nraise SystemExit(3)\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    log = [(i + 1, 7, 8, 1, 0, 0, 0, 0, 0, 1, 1, 0, (1 << 60) + i, 0) for i in range(3)]
    IdFilter(16).save(tmp_path / "ids.bloom", fsync=False)
    monkeypatch.chdir(project)
    ck = checkpointer.Checkpointer()
    try:
        paths, filter_out = _build_plain(ck, log, out_dir, tmp_path / "ids.bloom")
    finally:
        ck.close()
    assert sorted(Path(p).name[-5:-4] for p in paths) == list("AIT")
    assert Path(filter_out).exists() and not marker.exists()


def _build_plain(
    ck: checkpointer.Checkpointer, log: list[Any], directory: Path, filter_path: Path
) -> tuple[list[str], str]:
    """A checkpoint of `log` alone (no history balances, statuses or failed ids), filter of
    2^16 bits, no fsync."""
    return ck.build(
        log,
        directory=directory,
        filter_path=filter_path,
        filter_bits_log2=16,
        fsync=False,
        history=[],
        finished=[],
        orphans=[],
    )
