"""The embedded engine in a process of its own, as a TigerBeetle replica is.

`EngineProcess(data_dir)` starts `python -m ledger.embedded`, which opens an `EmbeddedEngine`
on `data_dir` and answers requests over a socket pair. Its `client_async()` has the methods of
`tigerbeetle.ClientAsync`, like `EmbeddedEngine.client_async()`, so `open_ledger(settings,
engine=EngineProcess(...))` works as with the engine in-process. The server uses it: the
state machine, the journal's encoding and the engine's garbage then take the other core,
beside the request thread instead of under its interpreter lock.

What stays in this process: the conversion of `Transfer`s and `Account`s to tuples, with the
same range checks and exceptions as the real client (so bad input never reaches the engine),
and the conversion of the answers back. What crosses the socket: frames of
[u32 little-endian length][marshal payload]; a request is (operation, argument), an answer is
(True, rows) or (False, (exception name, message)); a create_transfers answer is compact
(`_compact`). Answers come in the order of the
requests, each once its journal record is durable, as in-process.

If the engine process dies, every request in flight and every later one raises
`LedgerUnavailable` (the outcome of one in flight is unknown: it may be journaled). An
`EngineProcess` is one child and is never started again; `ledger.embedded.supervisor` owns one
at a time and replaces a dead one (the server runs it so), told of the death by `on_lost`. The
engine process ends when its socket closes: when this process closes the engine, or exits,
however it exits. It ignores SIGINT, so that a Ctrl-C stops the server first and the engine
after it.

Two ways to start one, with the same checks and exceptions: the constructor blocks until the
engine has replayed its journal (at start-up, before any event loop serves requests);
`await EngineProcess.start(...)` waits without blocking the event loop, is connected to it when
it returns, and kills the child if it is cancelled (a restart while the server runs).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import marshal
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from ledger.children import child_env, python_command
from ledger.client import LedgerUnavailable
from ledger.embedded.engine import (
    OP_CREATE_ACCOUNTS,
    OP_CREATE_TRANSFERS,
    QUERY_FIELDS,
    ClientAsyncFace,
    EmbeddedEngine,
    account_tuples,
    filter_tuple,
    read_argument,
    to_python,
    transfer_tuples,
)
from ledger.embedded.journal import DataDirectoryLocked, JournalClosed, JournalCorrupt
from ledger.heap import freeze_survivors
from ledger.limits import ENGINE_START_TIMEOUT_S, JOURNAL_SNAPSHOT_BYTES_DEFAULT
from ledger.types import (
    Account,
    ClientClosedError,
    CreateAccountResult,
    CreateAccountStatus,
    CreateTransferResult,
    CreateTransferStatus,
    QueryFilter,
    Transfer,
    TransferRecord,
)

_FRAME = struct.Struct("<I")
# Where the engine process listens for the service's other processes (the projection feed), in
# its data directory; `EngineSocketCaller` connects to it.
CLIENTS_SOCKET = "clients.sock"
# A Unix socket's path has a small limit (108 bytes on Linux, with its terminating NUL).
CLIENTS_SOCKET_PATH_BYTES_MAX = 100
_SOCKET_BUFFER_BYTES = 4 << 20
_READS = frozenset(
    {
        "lookup_accounts",
        "lookup_transfers",
        "get_account_transfers",
        "get_account_balances",
        "query_accounts",
        "query_transfers",
    }
)
_TRANSFER_STATUS = {int(s): s for s in CreateTransferStatus}
_ACCOUNT_STATUS = {int(s): s for s in CreateAccountStatus}
# Exceptions the engine raises for a caller's reason, raised again here by name.
_KNOWN_ERRORS: dict[str, type[Exception]] = {
    e.__name__: e for e in (ClientClosedError, DataDirectoryLocked, JournalClosed, JournalCorrupt)
}


class EngineProcessError(RuntimeError):
    """The engine process failed on a request for a reason of its own (a bug)."""


def _error(name: str, message: str) -> Exception:
    known = _KNOWN_ERRORS.get(name)
    if known is ClientClosedError:
        return ClientClosedError()
    if known is not None:
        return known(message)
    return EngineProcessError(f"{name}: {message}")


def _frame(payload: Any) -> bytes:
    data = marshal.dumps(payload)
    return _FRAME.pack(len(data)) + data


def _read_frame(sock: socket.socket) -> Any:
    """One frame, blocking (the hello at start-up); None at the end of the stream."""
    header = _recv_exactly(sock, _FRAME.size)
    if header is None:
        return None
    body = _recv_exactly(sock, _FRAME.unpack(header)[0])
    return None if body is None else marshal.loads(body)


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    parts = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


async def _read_frame_async(sock: socket.socket) -> Any:
    """`_read_frame` on a non-blocking socket, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    header = await _recv_exactly_async(loop, sock, _FRAME.size)
    if header is None:
        return None
    body = await _recv_exactly_async(loop, sock, _FRAME.unpack(header)[0])
    return None if body is None else marshal.loads(body)


async def _recv_exactly_async(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int
) -> bytes | None:
    parts = []
    while n:
        chunk = await loop.sock_recv(sock, min(n, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


class _Frames(asyncio.Protocol):
    """Splits the byte stream into frames and hands each decoded payload to `on_frame`."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        size = len(buffer)
        while size - offset >= 4:
            end = offset + 4 + _FRAME.unpack_from(buffer, offset)[0]
            if end > size:
                break
            self.on_frame(marshal.loads(buffer[offset + 4 : end]))
            offset = end
        if offset:
            del buffer[:offset]

    def on_frame(self, payload: Any) -> None:
        raise NotImplementedError


# -----------------------------------------------------------------------------------------
# This side.


class _Answers(_Frames):
    def __init__(self, owner: EngineProcess) -> None:
        super().__init__()
        self._owner = owner

    def on_frame(self, payload: Any) -> None:
        ok, value = payload
        future = self._owner._waiting.popleft()
        if future.done():  # its caller was cancelled; the request was still applied
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(_error(*value))

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._lost()


class EngineProcess:
    """An `EmbeddedEngine` on `data_dir` in a child process; see the module docstring."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        fsync: bool = True,
        snapshot_bytes: int = JOURNAL_SNAPSHOT_BYTES_DEFAULT,
        start_timeout_s: float = ENGINE_START_TIMEOUT_S,
    ) -> None:
        self._spawn(data_dir, fsync=fsync, snapshot_bytes=snapshot_bytes)
        # Start-up: the child recovers the journal, then says hello (or why it could not).
        self._sock.settimeout(start_timeout_s)
        with self._abandoned_on_failure():
            hello = _read_frame(self._sock)
        self._started(hello)

    @classmethod
    async def start(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        fsync: bool = True,
        snapshot_bytes: int = JOURNAL_SNAPSHOT_BYTES_DEFAULT,
        start_timeout_s: float = ENGINE_START_TIMEOUT_S,
    ) -> EngineProcess:
        """The constructor's start-up without blocking the event loop, which the process is
        then connected to (so that its death is noticed even before a request is sent).
        Cancelled or out of time, it kills the child before it raises."""
        process = cls.__new__(cls)
        process._spawn(data_dir, fsync=fsync, snapshot_bytes=snapshot_bytes)
        process._sock.setblocking(False)
        with process._abandoned_on_failure():
            async with asyncio.timeout(start_timeout_s):
                hello = await _read_frame_async(process._sock)
            process._started(hello)
            await process._connect(asyncio.get_running_loop())
        return process

    def _spawn(self, data_dir: str | os.PathLike[str], *, fsync: bool, snapshot_bytes: int) -> None:
        ours, theirs = socket.socketpair()
        for end in (ours, theirs):
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                # Room for a whole request, so that it leaves in one write (the system may cap
                # it lower, or refuse: then frames simply take more than one write).
                with contextlib.suppress(OSError):
                    end.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER_BYTES)
        command = [
            *python_command("-m", "ledger.embedded"),
            "--fd",
            str(theirs.fileno()),
            "--data-dir",
            str(Path(data_dir)),
            "--snapshot-bytes",
            str(snapshot_bytes),
        ]
        if not fsync:
            command.append("--no-fsync")
        try:
            self._child = subprocess.Popen(
                command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=child_env()
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._closed = False
        self._dead = False
        # Called once the connection is lost (the process died, or was closed): the
        # supervisor's notice of a death.
        self.on_lost: Callable[[EngineProcess], None] | None = None

    def _started(self, hello: Any) -> None:
        """Takes the child's hello: its recovery's numbers, or the exception it could not
        start with, raised here (the child is then gone)."""
        if hello is None or not hello[0]:
            code = self._abandon()
            if hello is None:
                raise EngineProcessError(f"the engine process exited at start-up (code {code})")
            raise _error(*hello[1])
        _, (self.torn_bytes, self.replayed_records) = hello
        self._sock.settimeout(None)
        self._sock.setblocking(False)

    @contextlib.contextmanager
    def _abandoned_on_failure(self) -> Iterator[None]:
        """A start-up that raises, or is cancelled, leaves no child behind."""
        try:
            yield
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> int:
        """Kills a child that did not start, and closes its socket (again: harmless); its exit
        code."""
        code = self._kill()
        self._sock.close()
        return code

    @property
    def pid(self) -> int:
        return self._child.pid

    def client_async(self) -> EngineProcessClientAsync:
        return EngineProcessClientAsync(self)

    async def call(self, operation: str, argument: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._transport is None or self._loop is not loop:
            await self._connect(loop)
        if self._closed:
            raise ClientClosedError()
        if self._dead:
            raise self._unavailable()
        assert self._transport is not None
        data = marshal.dumps((operation, argument))
        future = loop.create_future()
        self._waiting.append(future)
        self._transport.writelines((_FRAME.pack(len(data)), data))
        return await future

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None and self._loop is not loop:
            raise RuntimeError("an engine process serves the one event loop that first used it")
        if self._connecting is None:
            self._loop = loop
            self._connecting = loop.create_future()
            try:
                transport, _ = await loop.create_unix_connection(
                    lambda: _Answers(self), sock=self._sock
                )
            except BaseException as exc:
                self._connecting.set_exception(exc)
                raise
            self._transport = transport  # uvloop: not a subclass of it, same methods
            self._connecting.set_result(None)
        else:
            await asyncio.shield(self._connecting)

    def _lost(self) -> None:
        self._dead = True
        waiting, self._waiting = self._waiting, collections.deque()
        for future in waiting:
            if not future.done():
                future.set_exception(self._unavailable())
        if self.on_lost is not None:
            self.on_lost(self)

    def _unavailable(self) -> LedgerUnavailable:
        code = self._child.poll()
        how = "closed its connection" if code is None else f"exited (code {code})"
        return LedgerUnavailable(
            f"the engine process {how}; the outcome of a request in flight is unknown, "
            "retry with the same ids once the service is back"
        )

    async def aclose(self, timeout_s: float = 60.0) -> None:
        """Lets the engine answer what it was sent, close its journal and exit."""
        if self._closed:
            return
        self._closed = True
        if self._transport is not None:
            if not self._transport.is_closing():
                self._transport.write_eof()
        else:
            with contextlib.suppress(OSError):  # the engine process may be gone already
                self._sock.shutdown(socket.SHUT_WR)
        try:
            await asyncio.to_thread(self._child.wait, timeout_s)
        except subprocess.TimeoutExpired:
            self._kill()
        if self._transport is not None:
            self._transport.close()
        self._sock.close()

    def close(self, timeout_s: float = 60.0) -> None:
        """`aclose` for a caller without an event loop (one that never used the engine)."""
        if self._closed:
            return
        self._closed = True
        if self._transport is None:
            with contextlib.suppress(OSError):  # the engine process may be gone already
                self._sock.shutdown(socket.SHUT_WR)
        try:
            self._child.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._kill()
        self._sock.close()

    def _kill(self) -> int:
        if self._child.poll() is None:
            self._child.kill()
        return self._child.wait()

    def reap(self, grace_s: float) -> int:
        """Waits (blocking) for a process whose connection was lost to exit, killing it if it
        has not within `grace_s`; its exit code (negative: the signal that ended it). Its
        journal lock is free once this returns."""
        try:
            return self._child.wait(grace_s)
        except subprocess.TimeoutExpired:
            return self._kill()


class EngineSocketCaller:
    """Calls an engine process through its clients socket (`CLIENTS_SOCKET`), from another
    process of the service: one request at a time. A connection that fails, or an engine that
    is not there (it restarts), raises LedgerUnavailable; the next call connects again."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def call(self, operation: str, argument: Any) -> Any:
        async with self._lock:
            try:
                if self._writer is None:
                    self._reader, self._writer = await asyncio.open_unix_connection(
                        str(self.path), limit=_SOCKET_BUFFER_BYTES
                    )
                assert self._reader is not None
                data = marshal.dumps((operation, argument))
                self._writer.write(_FRAME.pack(len(data)) + data)
                header = await self._reader.readexactly(_FRAME.size)
                body = await self._reader.readexactly(_FRAME.unpack(header)[0])
            except (OSError, asyncio.IncompleteReadError) as error:
                await self.aclose()
                raise LedgerUnavailable(
                    f"the engine is not answering on {self.path} ({type(error).__name__}); "
                    "the outcome of a request in flight is unknown"
                ) from None
        ok, value = marshal.loads(body)
        if not ok:
            raise _error(*value)
        return value

    def client_async(self) -> EngineProcessClientAsync:
        return EngineProcessClientAsync(self)

    async def aclose(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class Caller(Protocol):
    """What sends a request to an engine process: the process itself, or its supervisor."""

    def call(self, operation: str, argument: Any) -> Awaitable[Any]: ...


class EngineProcessClientAsync(ClientAsyncFace):
    """The methods of `tigerbeetle.ClientAsync`, answered by an engine process."""

    def __init__(self, engine: Caller) -> None:
        self._engine = engine

    async def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        rows = await self._engine.call("create_accounts", account_tuples(accounts))
        status = _ACCOUNT_STATUS
        return [CreateAccountResult(timestamp=ts, status=status[s]) for s, ts in rows]

    async def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        answer = await self._engine.call("create_transfers", transfer_tuples(transfers))
        return _expand(*answer)

    async def _read(self, operation: str, argument: Any) -> list[Any]:
        rows = await self._engine.call(operation, read_argument(operation, argument))
        return to_python(operation, rows)

    async def query_transfer_records(self, query_filter: QueryFilter) -> list[TransferRecord]:
        """`query_transfers` as plain records: the engine's rows, as they came."""
        argument = read_argument("query_transfers", filter_tuple(query_filter, QUERY_FIELDS))
        rows = await self._engine.call("query_transfers", argument)
        return list(map(TransferRecord._make, rows))


# -----------------------------------------------------------------------------------------
# The engine's side: `python -m ledger.embedded`.


class _Requests(_Frames):
    def __init__(self, engine: EmbeddedEngine, answers: asyncio.Queue[Any]) -> None:
        super().__init__()
        self._engine = engine
        self._answers = answers

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        freeze_survivors()  # what these requests left is the engine's state (ledger/heap.py)

    def on_frame(self, payload: Any) -> None:
        operation, argument = payload
        engine = self._engine
        try:
            if operation == "create_transfers":
                results, position = engine.apply(OP_CREATE_TRANSFERS, argument)
                answer: Any = _compact(results)
            elif operation == "create_accounts":
                results, position = engine.apply(OP_CREATE_ACCOUNTS, argument)
                answer = [(int(s), ts) for s, ts in results]
            elif operation in _READS:
                answer, position = engine.read_rows(operation, argument)
            else:
                raise ValueError(f"unknown operation {operation!r}")
        except Exception as exc:  # every failure is answered, in order
            self._answers.put_nowait((0, _frame((False, (type(exc).__name__, str(exc))))))
            return
        self._answers.put_nowait((position, _frame((True, answer))))

    def eof_received(self) -> bool:
        self._answers.put_nowait(None)
        return True  # keep writing the answers still owed

    def connection_lost(self, exc: Exception | None) -> None:
        self._answers.put_nowait(None)


_CREATED = CreateTransferStatus.CREATED


def _compact(results: list[tuple[Any, int]]) -> tuple[int, int, list[tuple[int, int, int]]]:
    """A create_transfers answer as (first timestamp, count, the others): event i was created
    at first + i unless it is among the others, as (i, status, timestamp). Events of a batch
    get consecutive timestamps, so a batch that succeeded is three numbers, not a tuple per
    event for both sides to make and take apart."""
    if not results:
        return 0, 0, []
    first = results[0][1] if results[0][0] is _CREATED else results[-1][1] - len(results) + 1
    others = [
        (i, int(s), ts) for i, (s, ts) in enumerate(results) if s is not _CREATED or ts != first + i
    ]
    return first, len(results), others


def _expand(
    first: int, count: int, others: list[tuple[int, int, int]]
) -> list[CreateTransferResult]:
    """The results a `_compact` answer stands for."""
    created = _CREATED
    results = [CreateTransferResult(ts, created) for ts in range(first, first + count)]
    for index, status, ts in others:
        results[index] = CreateTransferResult(ts, _TRANSFER_STATUS[status])
    return results


async def _write_answers(
    engine: EmbeddedEngine, answers: asyncio.Queue[Any], transport: asyncio.BaseTransport
) -> None:
    """Sends each answer, in order, once its journal record is durable; until the end."""
    while (item := await answers.get()) is not None:
        position, frame = item
        try:
            await engine.wait_async(position)
        except Exception as exc:  # the journal failed: say so, in order
            frame = _frame((False, (type(exc).__name__, str(exc))))
        cast(asyncio.WriteTransport, transport).write(frame)


class _Client(_Requests):
    """A connection to `clients.sock` (see `CLIENTS_SOCKET`): requests and answers as on the
    parent's socket, with a queue of its own. Its end does not end the engine."""

    def __init__(self, engine: EmbeddedEngine) -> None:
        super().__init__(engine, asyncio.Queue())
        self._writer: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        writing = _write_answers(self._engine, self._answers, transport)
        self._writer = asyncio.get_running_loop().create_task(writing)
        self._writer.add_done_callback(lambda _: transport.close())


async def _serve(engine: EmbeddedEngine, sock: socket.socket, clients: Path | None) -> None:
    from ledger.heap import HeapPolicy, manage_heap

    loop = asyncio.get_running_loop()
    answers: asyncio.Queue[Any] = asyncio.Queue()
    transport, _ = await loop.create_unix_connection(lambda: _Requests(engine, answers), sock=sock)
    heap = asyncio.create_task(manage_heap(HeapPolicy()))
    server = await _serve_clients(engine, clients) if clients is not None else None
    try:
        await _write_answers(engine, answers, transport)
    finally:
        heap.cancel()
        if server is not None:
            server.close()
        engine.close()
        transport.close()


async def _serve_clients(engine: EmbeddedEngine, path: Path) -> asyncio.AbstractServer | None:
    """Listens on `path` for other processes of the service (the projection feed). The data
    directory's lock is this process's, so a socket file there is a dead engine's: replaced.
    Only the owner of the data directory may connect (the socket is 0600)."""
    if len(str(path).encode()) > CLIENTS_SOCKET_PATH_BYTES_MAX:
        print(f"engine: {path} is too long for a socket; no other clients", file=sys.stderr)
        return None
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    umask = os.umask(0o177)
    try:
        return await asyncio.get_running_loop().create_unix_server(
            lambda: _Client(engine), path=str(path)
        )
    finally:
        os.umask(umask)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ledger.embedded")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--snapshot-bytes", type=int, default=JOURNAL_SNAPSHOT_BYTES_DEFAULT)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--no-clients", action="store_true", help="listen on no client socket")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    try:
        engine = EmbeddedEngine(
            args.data_dir, fsync=not args.no_fsync, snapshot_bytes=args.snapshot_bytes
        )
    except Exception as exc:  # said to the parent, which raises it
        sock.sendall(_frame((False, (type(exc).__name__, str(exc)))))
        return 1
    sock.sendall(_frame((True, (engine.torn_bytes, engine.replayed_records))))
    sock.setblocking(False)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    clients = None if args.no_clients else args.data_dir / CLIENTS_SOCKET
    asyncio.run(_serve(engine, sock, clients))
    return 0
