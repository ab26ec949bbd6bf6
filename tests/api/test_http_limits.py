"""The HTTP server's protocol limits (api.server), over real sockets against a real uvicorn
server on the test's loop, with short timeouts: a head over its byte budget or with too many
header lines is 431 without being buffered, and so are trailers past the body's wire budget
(closed); a connection that stalls or trickles its head or its body is closed; an idle
keep-alive connection is closed; past the connection cap a new connection is refused while the
established ones go on. Requests that keep within the limits (pipelined, chunked, or with a body
larger than the head budget) are answered as before.

Closes are polled for (a read that ends, or a reset), never timed."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from api.server import HttpLimits, Server, configure, listen

pytestmark = pytest.mark.anyio

LIMITS = HttpLimits(
    header_bytes_max=16 * 1024,
    headers_max=20,
    body_wire_bytes_max=256 * 1024,
    header_timeout_s=0.5,
    body_timeout_s=0.5,
    keep_alive_timeout_s=1,
    connections_max=8,
    backlog_connections_max=64,
    shutdown_timeout_s=1,
)
# A bound on waiting for the server to close a connection, so that a failure does not hang the
# suite: many times the longest timeout above, and no statement about how long it takes.
CLOSE_WAIT_S = 30.0


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers `<body bytes> <header lines>`; takes part in the lifespan."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = f"{size} {len(scope['headers'])}".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    sock = listen("127.0.0.1", 0)
    server = Server(
        configure(_echo, sock, limits=LIMITS, access_log=False, log_level="error"),
        handle_signals=False,
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), task
        await asyncio.sleep(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    await task


class Client:
    """A raw, non-blocking socket driven from the loop: reads return what the server sent
    before it closed, then the close itself."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.pending = b""  # read, not yet returned

    @classmethod
    async def connect(cls, port: int) -> Client:
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(sock)

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def read_until_closed(self) -> bytes:
        """Everything the server sends until it closes the connection (EOF or reset)."""
        received, self.pending = self.pending, b""
        async with asyncio.timeout(CLOSE_WAIT_S):
            while True:
                try:
                    chunk = await self.loop.sock_recv(self.sock, 65536)
                except ConnectionResetError:
                    return received
                if not chunk:
                    return received
                received += chunk

    async def read_response(self) -> bytes:
        """One response with a content-length, leaving the connection open."""
        received, self.pending = self.pending, b""
        async with asyncio.timeout(CLOSE_WAIT_S):
            while b"\r\n\r\n" not in received or len(received) < _length(received):
                chunk = await self.loop.sock_recv(self.sock, 65536)
                assert chunk, f"closed after {received!r}"
                received += chunk
        end = _length(received)
        self.pending = received[end:]
        return received[:end]

    def close(self) -> None:
        self.sock.close()


def _length(response: bytes) -> int:
    head, _, _ = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    raise AssertionError(f"no content-length in {response!r}")


def _get(headers: bytes = b"", close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return b"GET / HTTP/1.1\r\nHost: test\r\n" + connection + headers + b"\r\n"


def _post(body: bytes) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % len(body) + body


async def test_requests_within_the_limits_are_answered(port: int) -> None:
    client = await Client.connect(port)
    # Two pipelined requests in one write, then a body four times the head budget in one write.
    await client.send(_get() + _post(b"x" * 100))
    assert (await client.read_response()).endswith(b"\r\n\r\n0 1")
    assert (await client.read_response()).endswith(b"\r\n\r\n100 2")
    await client.send(_post(b"y" * (4 * LIMITS.header_bytes_max)))
    assert (await client.read_response()).endswith(b"\r\n\r\n%d 2" % (4 * LIMITS.header_bytes_max))
    # A head just within the budget, and exactly as many header lines as allowed.
    filler = b"X-Fill: " + b"f" * (LIMITS.header_bytes_max - 200) + b"\r\n"
    await client.send(_get(filler))
    assert b" 200 OK" in await client.read_response()
    lines = b"".join(b"X-%d: 1\r\n" % i for i in range(LIMITS.headers_max - 2))
    await client.send(_get(lines, close=True))
    answer = await client.read_until_closed()
    assert b" 200 OK" in answer and answer.endswith(b" %d" % LIMITS.headers_max)
    client.close()


async def test_a_head_over_the_byte_budget_is_431_and_closed(port: int) -> None:
    client = await Client.connect(port)
    await client.send(_get(b"X-Big: " + b"a" * (64 * 1024) + b"\r\n"))
    answer = await client.read_until_closed()
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer
    client.close()


def _rss_bytes() -> int:
    fields = Path("/proc/self/statm").read_text().split()
    return int(fields[1]) * 4096


def _chunked(*chunks: bytes, trailer: bytes = b"") -> bytes:
    head = b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return head + framed + b"0\r\n" + trailer + b"\r\n"


async def test_chunked_bodies_within_the_budget_are_answered(port: int) -> None:
    client = await Client.connect(port)
    await client.send(_chunked(b"a" * 10, b"b" * 100_000, trailer=b"X-Sum: 1\r\n"))
    # uvicorn adds the trailer to the request's headers: three.
    assert (await client.read_response()).endswith(b"\r\n\r\n100010 3")
    client.close()


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize(
    "opening",
    [b"GET / HTTP/1.1\r\nHost: test\r\nX-Big: ", _chunked(b"body")[:-2] + b"X-Trailer: "],
    ids=["header", "trailer"],
)
async def test_16_mb_of_a_header_or_trailer_is_cut_off_early_and_never_buffered(
    port: int, opening: bytes
) -> None:
    total_bytes = 16 * 1024 * 1024
    before = _rss_bytes()
    client = await Client.connect(port)
    chunk = b"a" * (64 * 1024)
    sent = 0
    with pytest.raises((BrokenPipeError, ConnectionResetError)):  # the server has closed
        await client.send(opening)
        while sent < total_bytes:
            await client.send(chunk)
            sent += len(chunk)
    client.close()
    # The kernel's socket buffers took what was sent before the close was seen: a few MB.
    assert sent < total_bytes // 2
    assert _rss_bytes() - before < total_bytes // 4


async def test_a_body_over_the_wire_budget_is_closed(port: int) -> None:
    client = await Client.connect(port)
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        await client.send(_post(b"x" * (64 * LIMITS.body_wire_bytes_max)))
    assert await client.read_until_closed() == b""
    client.close()


async def test_more_header_lines_than_allowed_is_431(port: int) -> None:
    client = await Client.connect(port)
    lines = b"".join(b"X-%d: 1\r\n" % i for i in range(LIMITS.headers_max))
    await client.send(_get(lines))
    answer = await client.read_until_closed()
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer
    assert answer.endswith(b"too many request headers")
    client.close()


async def test_a_half_sent_request_line_is_408_and_closed(port: int) -> None:
    client = await Client.connect(port)
    await client.send(b"GET /v1/deb")
    answer = await client.read_until_closed()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    client.close()


async def test_a_connection_that_sends_nothing_is_closed(port: int) -> None:
    client = await Client.connect(port)
    assert await client.read_until_closed() == b""
    client.close()


async def _trickle(client: Client, data: bytes) -> None:
    """Sends one byte at a time, each within the timeouts, until the server closes."""
    for byte in data:
        await client.send(bytes([byte]))
        await asyncio.sleep(LIMITS.header_timeout_s / 10)


async def _closed_while(client: Client, sending: Callable[[], Awaitable[None]]) -> bytes:
    writer = asyncio.create_task(sending())
    try:
        return await client.read_until_closed()
    finally:
        writer.cancel()
        with pytest.raises((asyncio.CancelledError, OSError)):
            await writer


async def test_a_trickled_head_is_closed(port: int) -> None:
    client = await Client.connect(port)
    await client.send(b"GET / HTTP/1.1\r\nX-Slow: ")
    answer = await _closed_while(client, lambda: _trickle(client, b"s" * 10_000))
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n") or answer == b"", answer
    client.close()


async def test_a_trickled_body_is_closed(port: int) -> None:
    client = await Client.connect(port)
    await client.send(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 10000\r\n\r\n")
    assert await _closed_while(client, lambda: _trickle(client, b"b" * 10_000)) == b""
    client.close()


async def test_an_idle_keep_alive_connection_is_closed(port: int) -> None:
    client = await Client.connect(port)
    await client.send(_get())
    assert (await client.read_response()).endswith(b"0 1")
    assert await client.read_until_closed() == b""
    client.close()


async def test_past_the_cap_a_connection_is_refused_and_the_others_go_on(port: int) -> None:
    established = [await Client.connect(port) for _ in range(LIMITS.connections_max)]
    for client in established:  # each has been accepted: it answers
        await client.send(_get())
        assert (await client.read_response()).endswith(b"0 1")
    refused = await Client.connect(port)
    answer = await refused.read_until_closed()
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
    refused.close()
    for client in established:
        await client.send(_get())
        assert (await client.read_response()).endswith(b"0 1")
    established.pop().close()
    # With one closed, a new connection is served again (once the server has seen the close).
    async with asyncio.timeout(CLOSE_WAIT_S):
        while True:
            client = await Client.connect(port)
            await client.send(_get(close=True))
            answer = await client.read_until_closed()
            client.close()
            if b" 200 OK" in answer:
                break
            assert b" 503 " in answer
            await asyncio.sleep(0.01)
    for client in established:
        client.close()
