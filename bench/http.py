"""HTTP load benchmark on loopback with wrk (a C load generator, so Python is not measured on
both sides). Not a test. Prints requests/s and latency percentiles per scenario.

    python -m bench.http                 # starts `credit-ledger serve` (embedded) in a temp dir
    python -m bench.http --url http://127.0.0.1:8080 --key clk_...   # an existing service
    python -m bench.http --only batch --serve-arg=--engine-in-process  # one scenario, a flag

Scenarios: single debits on one hot wallet (64 connections); reserve-then-settle pairs on one
hot wallet (64 connections, each alternating reserve and settle); batch ingestion
(POST /v1/debits/batch of 500 debits each, 8 connections); and check, then reserve, at exactly
500 requests/s from an open-loop generator (`bench.paced`: latency counted from when each
request was due, so a stall cannot hide by slowing the load). `--dead-endpoints N` registers N
webhook endpoints that never answer first: every event (each unsettled reservation of the
paced scenario times out: `reservation.timed_out`) is then sent to each and waits out its
timeout, while the scenarios run.

Needs `wrk` on PATH (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.paced import PacedResult, request_bytes, run_paced

ROOT = Path(__file__).resolve().parents[1]

LUA_COMMON = """
local key = "{key}"
local resource = "{resource}"
local run = "{run}"
local counter = 0
-- setup runs in wrk's main Lua state; it gives each thread its own global `tid`, so that every
-- request of the run has a key of its own (a shared key would be a replay, not a new debit).
threads_seen = 0
setup = function(thread) threads_seen = threads_seen + 1; thread:set("tid", threads_seen) end
local function headers()
  counter = counter + 1
  return {{["Authorization"] = "Bearer " .. key,
          ["Idempotency-Key"] = run .. "-" .. tid .. "-" .. counter,
          ["Content-Type"] = "application/json"}}
end
local spend = '"resource_id":"' .. resource .. '","credit_type":"{code}"'
"""

LUA = {
    "debit": """
request = function()
  return wrk.format("POST", "/v1/debits", headers(), "{" .. spend .. ',"amount":1}')
end
""",
    "pairs": """
local pending = {}
request = function()
  local id = table.remove(pending)
  if id then
    return wrk.format("POST", "/v1/reservations/" .. id .. "/settle", headers(),
                      '{"amount":2}')
  end
  return wrk.format("POST", "/v1/reservations", headers(),
                    "{" .. spend .. ',"amount":3,"timeout_s":60}')
end
response = function(status, hdrs, body)
  if status == 201 then
    local id = body:match('"id":"([%w%-]+)"')
    if id then table.insert(pending, id) end
  end
end
""",
    "batch": """
request = function()
  local items = {}
  for i = 1, 500 do
    counter = counter + 1
    items[i] = '{"idempotency_key":"' .. run .. "-b" .. tid .. "-" .. counter .. '",' ..
               spend .. ',"amount":1}'
  end
  local h = headers()
  return wrk.format("POST", "/v1/debits/batch", h,
                    '{"debits":[' .. table.concat(items, ",") .. "]}")
end
""",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def started_service(data_dir: str, serve_args: list[str]) -> Iterator[tuple[str, int]]:
    """`credit-ledger serve` on a free port over `data_dir`, once ready: its URL and pid. It is
    stopped (SIGTERM) on the way out."""
    cli = str(Path(sys.executable).parent / "credit-ledger")
    env = {**os.environ, "CREDIT_LEDGER_DATA_DIR": data_dir}
    port = _free_port()
    server = subprocess.Popen(
        [cli, "serve", "--port", str(port), *serve_args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield url, server.pid
    finally:
        server.terminate()
        server.wait(timeout=60)


@contextlib.contextmanager
def _local_service(serve_args: list[str]) -> Iterator[tuple[str, str]]:
    cli = str(Path(sys.executable).parent / "credit-ledger")
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        env = {**os.environ, "CREDIT_LEDGER_DATA_DIR": tmp}
        key = subprocess.run(
            [cli, "keys", "create", "--name", "bench", "--scope", "admin", "--scope", "runtime"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        with started_service(tmp, serve_args) as (url, _):
            yield url, key


def _setup(url: str, key: str) -> tuple[str, str]:
    code = f"bench_{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:

        def post(path: str, body: dict[str, object]) -> dict[str, str]:
            r = client.post(path, json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
            r.raise_for_status()
            return dict(r.json())

        post("/v1/credit-types", {"code": code, "name": "Bench"})
        customer = post("/v1/customers", {"name": "Bench"})
        resource = post("/v1/resources", {"customer_id": customer["id"], "kind": "agent"})
        wallet = post("/v1/wallets", {"resource_id": resource["id"], "credit_type": code})
        post("/v1/grants", {"wallet_id": wallet["id"], "amount": 10**15, "category": "promotional"})
    return code, resource["id"]


def _dead_endpoints(stack: contextlib.ExitStack, url: str, key: str, count: int) -> None:
    """`count` webhook endpoints, every event type, at an address that accepts connections (the
    kernel's backlog) and never answers: each delivery waits out its timeout, then its retries."""
    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}/dead"
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
        for _ in range(count):
            r = client.post(
                "/v1/webhook-endpoints",
                json={"url": dead, "description": "bench: never answers"},
                headers={"Idempotency-Key": str(uuid.uuid4())},
            )
            r.raise_for_status()


def _wrk(url: str, lua: str, connections: int, seconds: int) -> dict[str, str]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", f.name, url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    os.unlink(f.name)
    found = {
        "rps": re.search(r"Requests/sec:\s+([\d.]+)", out),
        "p50": re.search(r"50%\s+([\d.]+\w+)", out),
        "p99": re.search(r"99%\s+([\d.]+\w+)", out),
        "errors": re.search(r"Non-2xx or 3xx responses: (\d+)", out),
    }
    return {k: (m.group(1) if m else "0") for k, m in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description="HTTP load benchmark with wrk.")
    parser.add_argument("--url")
    parser.add_argument("--key")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable); default: all",
    )
    parser.add_argument(
        "--dead-endpoints",
        type=int,
        default=0,
        help="register this many webhook endpoints that never answer (every event type) "
        "before the scenarios: the hot path must not notice them",
    )
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="an extra argument for the `credit-ledger serve` it starts (repeatable)",
    )
    args = parser.parse_args()
    only = set(args.only or SCENARIOS)
    if shutil.which("wrk") is None:
        sys.exit("bench.http needs wrk on PATH (Debian: apt-get install wrk)")
    with contextlib.ExitStack() as stack:
        url, key = (
            (args.url, args.key)
            if args.url
            else stack.enter_context(_local_service(args.serve_arg))
        )
        code, resource = _setup(url, key)
        if args.dead_endpoints:
            _dead_endpoints(stack, url, key, args.dead_endpoints)
        print(
            f"service {url}; wrk, 2 threads; {args.seconds} s per scenario"
            + (f"; {args.dead_endpoints} dead webhook endpoints" if args.dead_endpoints else ""),
            flush=True,
        )
        for script, (name, connections, per_request) in SATURATING.items():
            if script not in only:
                continue
            lua = (
                LUA_COMMON.format(key=key, resource=resource, code=code, run=uuid.uuid4().hex[:8])
                + LUA[script]
            )
            r = _wrk(url, lua, connections, args.seconds)
            rate = float(r["rps"]) * per_request
            unit = "pairs/s" if script == "pairs" else "debits/s" if per_request > 1 else "req/s"
            if script == "pairs":
                rate /= 2
            print(
                f"{name:<36} {rate:>10,.0f} {unit:<9} p50 {r['p50']:>8}  p99 {r['p99']:>8}"
                f"  non-2xx {r['errors']}",
                flush=True,
            )
        if only & set(PACED):
            _settle(url)
        for script, (name, path, extra) in PACED.items():
            if script not in only:
                continue
            paced = _paced(url, key, path, code, resource, extra, args.seconds)
            others = {s: n for s, n in paced.statuses.items() if not 200 <= s < 300}
            print(
                f"{name:<36} {paced.rate:>10,.0f} {'req/s':<9} p50 {paced.p50_ms:>6.2f}ms"
                f"  p99 {paced.p99_ms:>6.2f}ms  max {paced.max_ms:.1f}ms  non-2xx {others or 0}",
                flush=True,
            )


# Scenario: (title, wrk connections, debits per request) for wrk; (title, path, extra body
# fields) for the paced generator.
SATURATING = {
    "debit": ("single debits, hot wallet", 64, 1),
    "pairs": ("reserve-then-settle, hot wallet", 64, 1),
    "batch": ("batch ingestion (500 per request)", 8, 500),
}
PACED = {
    "check": ("check at 500 req/s", "/v1/check", ""),
    "reserve": ("reserve at 500 req/s", "/v1/reservations", ',"timeout_s":5'),
}
SCENARIOS = [*SATURATING, *PACED]


def _settle(url: str) -> None:
    """Between the saturating scenarios and the paced ones: waits until the projection has
    caught up with the load before (its lag in /metrics is under a second), and two seconds
    more, so the paced scenarios measure 500 req/s, not the recovery from the batch scenario."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = httpx.get(f"{url}/metrics", timeout=5).text
        found = re.search(r"^credit_projection_lag_seconds ([-\d.e+]+)", text, re.M)
        if found is None or 0 <= float(found.group(1)) < 1:
            break
        time.sleep(0.2)
    time.sleep(2)


def _paced(
    url: str, key: str, path: str, code: str, resource: str, extra: str, seconds: int
) -> PacedResult:
    parsed = urllib.parse.urlsplit(url)
    run = uuid.uuid4().hex[:8]
    body = f'{{"resource_id":"{resource}","credit_type":"{code}","amount":1{extra}}}'.encode()

    def make(i: int) -> bytes:
        headers = {
            "Authorization": f"Bearer {key}",
            "Idempotency-Key": f"{run}-{i}",
            "Content-Type": "application/json",
        }
        return request_bytes("POST", path, headers, body)

    return asyncio.run(
        run_paced(parsed.hostname or "127.0.0.1", parsed.port or 80, make, 500.0, seconds)
    )


if __name__ == "__main__":
    main()
