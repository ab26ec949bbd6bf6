"""What hostile connections cost `credit-ledger serve`: its protocol limits (api.server), measured
from outside. Not a test. Two scenarios, against a service started here on the embedded defaults
in a temporary directory (or an existing one: --url and --pid):

1. Four concurrent requests, each with a 64 MB header sent in 64 KB chunks: what the server took
   before it closed them, its RSS before, at most while they ran and after, and the latency of
   GET /readyz meanwhile (one request at a time).
2. 500 connections that send nothing and 500 that trickle a request line (a byte a second): how
   many the server has closed as time passes, until all are or `--idle-s` runs out.

    python -m bench.http_limits
    python -m bench.http_limits --url http://127.0.0.1:8080 --pid 1234
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.http import started_service

CHUNK = b"a" * (64 * 1024)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _big_header(port: int, header_bytes: int, deadline_s: float) -> tuple[int, str]:
    """Sends one request with a header of `header_bytes`; (bytes sent, how it ended)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nX-Big: ")
            while sent < header_bytes and time.monotonic() < deadline_s:
                sock.sendall(CHUNK)
                sent += len(CHUNK)
            sock.sendall(b"\r\n\r\n")
            answer = sock.recv(64)
        except OSError as error:
            return sent, f"closed by the server ({type(error).__name__})"
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    return sent, status or "closed by the server"


def headers_scenario(url: str, pid: int, header_mb: int, attackers: int, cap_s: float) -> None:
    port = int(url.rsplit(":", 1)[1])
    stop = threading.Event()
    peak = [_rss_mb(pid)]
    latencies: list[float] = []

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                peak[0] = max(peak[0], _rss_mb(pid))
            time.sleep(0.05)

    def probe() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                start = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    client.get(f"{url}/readyz")
                latencies.append(time.perf_counter() - start)
                time.sleep(0.01)

    before = _rss_mb(pid)
    threads = [threading.Thread(target=sample), threading.Thread(target=probe)]
    for thread in threads:
        thread.start()
    start = time.monotonic()
    deadline_s = start + cap_s
    with ThreadPoolExecutor(attackers) as pool:
        outcomes = list(
            pool.map(lambda _: _big_header(port, header_mb << 20, deadline_s), range(attackers))
        )
    took = time.monotonic() - start
    time.sleep(1)  # what the server kept, once it is done with them
    stop.set()
    for thread in threads:
        thread.join()
    after = _rss_mb(pid)
    print(f"{attackers} concurrent requests with a {header_mb} MB header, {took:.1f} s:")
    for sent, how in outcomes:
        print(f"  sent {sent / (1 << 20):7.1f} MB, then: {how}")
    print(f"  server RSS: {before:.0f} MB before, {peak[0]:.0f} MB at most, {after:.0f} MB after")
    if latencies:
        median_ms = statistics.median(latencies) * 1000
        print(
            f"  GET /readyz meanwhile: {len(latencies)} requests, median {median_ms:.1f} ms, "
            f"slowest {max(latencies) * 1000:.0f} ms"
        )


def _open(port: int, count: int, first: bytes) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if first:
            sock.sendall(first)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def _closed(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        while chunk := sock.recv(65536):
            del chunk  # an answer (408) before the close
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def idle_scenario(url: str, count: int, limit_s: float) -> None:
    port = int(url.rsplit(":", 1)[1])
    silent = _open(port, count, b"")
    trickling = _open(port, count, b"GET /v1/deb")
    start = time.monotonic()
    print(f"{count} silent and {count} trickling connections (a byte a second):")
    groups = {"silent": silent, "trickling": trickling}
    closed_at: dict[int, float] = {}
    next_report_s = 0.0
    while time.monotonic() - start < limit_s:
        elapsed = time.monotonic() - start
        for sock in trickling:
            if id(sock) not in closed_at:
                with contextlib.suppress(OSError):
                    sock.send(b"x")
        for sock in silent + trickling:
            if id(sock) not in closed_at and _closed(sock):
                closed_at[id(sock)] = elapsed
        if elapsed >= next_report_s or len(closed_at) == 2 * count:
            counts = ", ".join(
                f"{name} {sum(id(s) in closed_at for s in socks)} closed"
                for name, socks in groups.items()
            )
            print(f"  after {elapsed:5.1f} s: {counts}")
            next_report_s += 5
        if len(closed_at) == 2 * count:
            break
        time.sleep(1)
    ready = httpx.get(f"{url}/readyz", timeout=30).status_code
    print(f"  GET /readyz then: {ready}")
    for sock in silent + trickling:
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="What hostile connections cost the server.")
    parser.add_argument("--url", default=None, help="a running service (with --pid)")
    parser.add_argument("--pid", type=int, default=None, help="its process id (for its RSS)")
    parser.add_argument("--header-mb", type=int, default=64)
    parser.add_argument("--attackers", type=int, default=4)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--cap-s", type=float, default=120.0, help="longest a scenario runs")
    args = parser.parse_args()
    if (args.url is None) != (args.pid is None):
        parser.error("--url and --pid go together")
    with contextlib.ExitStack() as stack:
        if args.url is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-limits-"))
            url, pid = stack.enter_context(started_service(data_dir, []))
        else:
            url, pid = args.url, args.pid
        print(f"service {url} (pid {pid}), code from {os.environ.get('PYTHONPATH') or 'here'}")
        headers_scenario(url, pid, args.header_mb, args.attackers, args.cap_s)
        idle_scenario(url, args.connections, args.cap_s)


if __name__ == "__main__":
    main()
