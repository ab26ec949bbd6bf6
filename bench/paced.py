"""An open-loop load generator: requests at a fixed rate, latency measured from when each
request was due, so a stall of the server shows in the percentiles instead of slowing the load
(wrk's closed loop would wait, and report a lower rate). Used by `bench.http` for "p99 at 500
requests/s"; at that rate its own CPU is a few percent of a core.

Raw HTTP/1.1 over keep-alive connections, one request in flight per connection, as many
connections as the rate needs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

MakeRequest = Callable[[int], bytes]


@dataclass(frozen=True)
class PacedResult:
    sent: int
    ok: int
    rate: float  # completed requests/s
    p50_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[int, int]


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: bench"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> int:
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def run_paced(
    host: str, port: int, make: MakeRequest, rate: float, seconds: float, connections: int = 32
) -> PacedResult:
    """Sends `make(i)` at `rate` requests/s for `seconds`; each request goes out on a free
    connection at its due time (or as soon as one is free, which then counts as latency)."""
    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    opened = [await asyncio.open_connection(host, port) for _ in range(connections)]
    for pair in opened:
        free.put_nowait(pair)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    total = int(rate * seconds)
    start = time.perf_counter() + 0.05

    async def one(i: int, due: float) -> None:
        pair = await free.get()
        try:
            status = await _exchange(*pair, make(i))
        except (OSError, asyncio.IncompleteReadError):
            status = 0
        latencies.append(time.perf_counter() - due)
        statuses[status] = statuses.get(status, 0) + 1
        free.put_nowait(pair)

    tasks = []
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for _, writer in opened:
        writer.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return PacedResult(
        total, ok, len(latencies) / elapsed, pct(0.50), pct(0.99), latencies[-1] * 1000, statuses
    )
