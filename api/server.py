"""The HTTP server: uvicorn with httptools, plus the protocol limits that uvicorn lacks.

uvicorn's httptools protocol reads a request head of any size (httptools joins the pieces of a
header as they arrive: a 64 MB header was held whole, and copied on the way) and keeps a
connection that never finishes its request open for ever. `LimitedHttpToolsProtocol` adds, per
connection:

- A head budget. The request line and headers may take `header_bytes_max` bytes: a read is fed
  to the parser only as far as the budget of the head in progress allows, and a head still
  incomplete when its budget is spent is answered 431 and the connection closed. The part of a
  read that follows the end of a body is charged to no head, and is fed in pieces of at most the
  budget, so no head is ever buffered beyond twice the budget. More than `headers_max` header
  lines is 431 as well. What follows the headers (the body as sent: a chunked body's framing
  and its trailers, which are headers too) may take `body_wire_bytes_max` bytes; past that the
  connection is closed.
- Read deadlines. From a connection's start, or a request's first byte, until its headers are
  complete (`header_timeout_s`: 408 if a request had begun, then close); from there until its
  body is complete (`body_timeout_s`: close). More bytes do not extend a deadline, so trickling
  does not keep a connection. Between requests, uvicorn's keep-alive timeout applies.
- A connection cap. Past `connections_max` open connections, a new one is answered 503 and
  closed before anything is read from it; the established ones are untouched. (uvicorn's own
  `limit_concurrency` would instead answer 503 to requests on established connections.)

A request whose head and body arrive in one read, as a client's requests do, arms no timer and
is fed to the parser in one piece: the hot path pays for a few attribute updates.

The subclass leans on uvicorn's protocol internals (`parser`, `cycle`, `headers`, `app`,
`connections`, the callbacks' names); the tests drive every limit over real sockets, so an
upgrade of uvicorn that changes them fails there.

`listen(host, port)` binds the server's socket before anything else starts, so a busy port is
known at once; `Server` is uvicorn's, except that the signal that stopped it is recorded
instead of being raised again once the server has stopped, so that the caller's own cleanup
(the engine, the pool, the embedded Postgres) runs to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ledger.limits import (
    HTTP_BACKLOG_CONNECTIONS_MAX,
    HTTP_BODY_TIMEOUT_S,
    HTTP_BODY_WIRE_BYTES_MAX,
    HTTP_CONNECTIONS_MAX,
    HTTP_HEADER_BYTES_MAX,
    HTTP_HEADER_TIMEOUT_S,
    HTTP_HEADERS_MAX,
    HTTP_KEEP_ALIVE_TIMEOUT_S,
    HTTP_SHUTDOWN_TIMEOUT_S,
)

_logger = logging.getLogger(__name__)

# File descriptors the server needs beside its connections: the engine's socket, the pool's
# connections, the movement writer's pipes, logs, modules being imported.
_DESCRIPTORS_BESIDE_CONNECTIONS = 256


@dataclass(frozen=True)
class HttpLimits:
    header_bytes_max: int
    headers_max: int
    body_wire_bytes_max: int
    header_timeout_s: float
    body_timeout_s: float
    keep_alive_timeout_s: int
    connections_max: int
    backlog_connections_max: int
    shutdown_timeout_s: int

    def __post_init__(self) -> None:
        assert self.header_bytes_max > 0 and self.headers_max > 0
        assert self.body_wire_bytes_max >= self.header_bytes_max
        assert self.header_timeout_s > 0 and self.body_timeout_s > 0
        assert self.keep_alive_timeout_s > 0
        assert self.connections_max > 0 and self.backlog_connections_max > 0
        assert self.shutdown_timeout_s >= 0


# The service's limits, as api.app names them.
HTTP_LIMITS = HttpLimits(
    header_bytes_max=HTTP_HEADER_BYTES_MAX,
    headers_max=HTTP_HEADERS_MAX,
    body_wire_bytes_max=HTTP_BODY_WIRE_BYTES_MAX,
    header_timeout_s=HTTP_HEADER_TIMEOUT_S,
    body_timeout_s=HTTP_BODY_TIMEOUT_S,
    keep_alive_timeout_s=HTTP_KEEP_ALIVE_TIMEOUT_S,
    connections_max=HTTP_CONNECTIONS_MAX,
    backlog_connections_max=HTTP_BACKLOG_CONNECTIONS_MAX,
    shutdown_timeout_s=HTTP_SHUTDOWN_TIMEOUT_S,
)


def _answer(status: int, reason: str, text: str) -> bytes:
    """A whole response that closes the connection, written before (or instead of) a request
    cycle: the app never sees these requests."""
    body = text.encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


_HEADERS_TOO_LARGE = _answer(431, "Request Header Fields Too Large", "request headers too large")
_HEADERS_TOO_MANY = b"too many request headers"
_HEADER_TIMEOUT = _answer(408, "Request Timeout", "request headers not received in time")
_TOO_MANY_CONNECTIONS = _answer(503, "Service Unavailable", "too many connections")


async def _too_many_headers(scope: Any, receive: Any, send: Any) -> None:
    """The app that answers a request with too many header lines, in place of the service."""
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(_HEADERS_TOO_MANY)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 431, "headers": headers})
    await send({"type": "http.response.body", "body": _HEADERS_TOO_MANY})


# Where a connection is in its current message: between messages, in a head, in a body.
_IDLE, _HEAD, _BODY = 0, 1, 2


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of `limits` (see the module docstring).
    `protocol_class(limits)` makes the subclass that a server is configured with."""

    limits: ClassVar[HttpLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _IDLE
        self._head_bytes_left = self.limits.header_bytes_max
        self._body_bytes_left = self.limits.body_wire_bytes_max
        self._read_timer: asyncio.TimerHandle | None = None
        self._read_timer_phase = _IDLE
        self._over_cap = False

    # -- connection ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.connections_max:
            self._over_cap = True
            self.logger.warning("refused a connection: %d are open", len(self.connections))
            transport.write(_TOO_MANY_CONNECTIONS)
            transport.close()
            return
        super().connection_made(transport)
        self._watch_reads()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._over_cap:
            return  # never counted, never read
        self._set_read_timer(_IDLE)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if len(data) <= self._head_bytes_left and self._phase != _BODY:
            self._head_bytes_left -= len(data)
            HttpToolsProtocol.data_received(self, data)
        else:
            self._receive_in_pieces(memoryview(data))
        self._watch_reads()

    def _receive_in_pieces(self, data: memoryview) -> None:
        """A read that is part of a body, or larger than what the head in progress may still
        take. Each piece is charged to its budget before the parser sees it (the end of the
        message resets both budgets): a head's piece is what the head's budget has left, a
        body's is at most one head budget."""
        while data and not self.transport.is_closing():
            if self._phase == _BODY:
                size = min(self.limits.header_bytes_max, len(data))
                if size > self._body_bytes_left:
                    self._refuse_body()
                    return
                self._body_bytes_left -= size
            else:
                size = min(self._head_bytes_left, len(data))
                if size == 0:
                    self._refuse_head()
                    return
                self._head_bytes_left -= size
            super().data_received(bytes(data[:size]))
            data = data[size:]

    def _refuse_head(self) -> None:
        bytes_max = self.limits.header_bytes_max
        self.logger.warning("refused a request: headers over %d bytes", bytes_max)
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_HEADERS_TOO_LARGE)
        self.transport.close()  # what was not read is never read

    def _refuse_body(self) -> None:
        # Closed without an answer: the app may be writing one.
        bytes_max = self.limits.body_wire_bytes_max
        self.logger.warning("closed a request: over %d bytes after its headers", bytes_max)
        self.transport.close()

    # -- parser callbacks --------------------------------------------------------------------------

    # These, and data_received, run for every request: they call the base class by name, which
    # costs less than super() does.

    def on_message_begin(self) -> None:
        self._phase = _HEAD
        HttpToolsProtocol.on_message_begin(self)

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        if len(self.headers) <= self.limits.headers_max:
            HttpToolsProtocol.on_headers_complete(self)
            return
        # Answered through uvicorn's own request cycle, as it answers its concurrency limit: the
        # request goes to an app that says 431 and closes the connection.
        self.logger.warning("refused a request: over %d headers", self.limits.headers_max)
        app, self.app = self.app, _too_many_headers
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        self._head_bytes_left = self.limits.header_bytes_max
        self._body_bytes_left = self.limits.body_wire_bytes_max
        HttpToolsProtocol.on_message_complete(self)

    # -- read deadlines ----------------------------------------------------------------------------

    def _watch_reads(self) -> None:
        """Arms the deadline that the connection's state calls for, unless it is armed already
        (so that more bytes do not extend it). Between messages, no deadline while the app
        answers or while uvicorn's keep-alive timer runs; otherwise the connection waits for a
        head, from now (its start, or bytes that began no request)."""
        phase = self._phase
        if phase == _IDLE:
            answering = self.cycle is not None and not self.cycle.response_complete
            if not answering and self.timeout_keep_alive_task is None:
                phase = _HEAD
        if phase != self._read_timer_phase:
            self._set_read_timer(phase)

    def _set_read_timer(self, phase: int) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        self._read_timer_phase = phase
        if phase == _HEAD:
            self._read_timer = self.loop.call_later(self.limits.header_timeout_s, self._timed_out)
        elif phase == _BODY:
            self._read_timer = self.loop.call_later(self.limits.body_timeout_s, self._timed_out)

    def _timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        answering = self.cycle is not None and not self.cycle.response_complete
        if self._read_timer_phase == _HEAD and self._phase == _HEAD and not answering:
            self.transport.write(_HEADER_TIMEOUT)
        # A body's deadline closes without an answer: the app may be writing one.
        self.transport.close()


def protocol_class(limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
    """The protocol class of a server with these limits (uvicorn makes one instance per
    connection, with its own arguments)."""
    return type("HttpProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})


class PortInUse(Exception):
    pass


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound (as uvicorn binds it: SO_REUSEADDR, IPv6 for a host
    with a colon). Port 0 picks a free port; `getsockname()` tells which."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"port {port} is in use on {host}: another credit-ledger serve? "
                "pick another with --port"
            ) from None
        raise
    return sock


def configure(
    app: Any,
    sock: socket.socket,
    *,
    limits: HttpLimits,
    access_log: bool,
    log_level: str,
) -> uvicorn.Config:
    """uvicorn's configuration for `app` on `sock` (from `listen`), every option that matters
    spelled out."""
    _ensure_descriptors(limits.connections_max + _DESCRIPTORS_BESIDE_CONNECTIONS)
    host, port = sock.getsockname()[:2]
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(limits),
        # The API has no websocket route: an Upgrade request stays a plain HTTP request.
        ws="none",
        # The caller chooses the event loop (uvloop when installed) before it starts.
        loop="none",
        lifespan="on",
        access_log=access_log,
        log_level=log_level,
        timeout_keep_alive=limits.keep_alive_timeout_s,
        backlog=limits.backlog_connections_max,
        # The protocol caps connections itself; uvicorn's cap would refuse requests on
        # established connections too.
        limit_concurrency=None,
        timeout_graceful_shutdown=limits.shutdown_timeout_s,
    )


def _ensure_descriptors(needed: int) -> None:
    """Raises the soft limit on open files to `needed` if the hard limit allows (macOS starts
    processes at 256): past it, accepting a connection would fail instead of being refused."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        _logger.warning("open files are limited to %d, under the %d the server wants", hard, needed)


class Server(uvicorn.Server):
    """uvicorn's server on the socket it is given. The signal that stopped it (SIGINT, SIGTERM)
    is kept in `stopped_by` instead of being raised again once the server has stopped: raised,
    Ctrl-C reached asyncio's handler, which cancelled the caller's cleanup half-way, and click
    then printed "Aborted!". Without `handle_signals`, signals are left to the caller (a server
    inside another command)."""

    def __init__(self, config: uvicorn.Config, *, handle_signals: bool = True) -> None:
        super().__init__(config)
        self.handle_signals = handle_signals
        self.stopped_by: int | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if not self.handle_signals:
            yield
            return
        with super().capture_signals():
            yield

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.stopped_by is None:
            self.stopped_by = sig
        # As uvicorn does: a second Ctrl-C stops without waiting for connections to finish.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True
