"""What the projection costs the hot path, and how far behind the engine it runs. Not a test.

For each scenario, `credit-ledger serve` (embedded engine, a fresh data directory each time)
runs the same wrk load with the projection on and off, alternating, `--rounds` times each. With
it on, /metrics' `credit_projection_lag_seconds` is sampled every 0.2 s during the load, and
after it the time until the projection has caught up is measured. Spends carry dimensions
(`{"feature": "chat", "model": "small"}`), as an AI product's do.

    python -m bench.projection                      # batch ingestion and hot-wallet debits
    python -m bench.projection --only batch --seconds 20 --rounds 3

Prints, per run: debits/s, request p99, and (projection on) lag p50/p99/max during the load
and the catch-up time after it; then the throughput with the projection on as a share of off.
Needs `wrk` on PATH.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

from bench.http import LUA, LUA_COMMON, _setup, _wrk, started_service

SCENARIOS = {
    "batch": ("batch ingestion (500 per request)", 8, 500),
    "debit": ("single debits, hot wallet", 64, 1),
}
DIMENSIONS = '"dimensions":{"feature":"chat","model":"small"}'
CAUGHT_UP_S = 1.0  # lag under this after the load: caught up
CATCH_UP_WAIT_S_MAX = 600


def _lag(url: str) -> float | None:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    found = re.search(r"^credit_projection_lag_seconds ([-\d.e+]+)", text, re.M)
    if found is None or float(found.group(1)) < 0:
        return None
    return float(found.group(1))


class LagSampler(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                lag = _lag(self.url)
            except httpx.HTTPError:
                continue
            if lag is not None:
                self.samples.append(lag)


def _key(data_dir: str) -> str:
    cli = str(Path(sys.executable).parent / "credit-ledger")
    return subprocess.run(
        [cli, "keys", "create", "--name", "bench", "--scope", "admin", "--scope", "runtime"],
        env={"CREDIT_LEDGER_DATA_DIR": data_dir, "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _run(scenario: str, projection: bool, seconds: int) -> dict[str, float | str]:
    _, connections, per_request = SCENARIOS[scenario]
    flag = "--projection" if projection else "--no-projection"
    with tempfile.TemporaryDirectory(prefix="bench-projection-") as tmp:
        key = _key(tmp)
        with started_service(tmp, [flag]) as (url, _):
            code, resource = _setup(url, key)
            lua = (
                LUA_COMMON.format(
                    key=key, resource=resource, code=code, run=uuid.uuid4().hex[:8]
                ).replace(
                    '"credit_type":"{code}"'.replace("{code}", code),
                    f'"credit_type":"{code}",{DIMENSIONS}',
                )
                + LUA[scenario]
            )
            sampler = LagSampler(url)
            sampler.start()
            result = _wrk(url, lua, connections, seconds)
            sampler.stop.set()
            sampler.join()
            out: dict[str, float | str] = {
                "rate": float(result["rps"]) * per_request,
                "p99": result["p99"],
                "errors": result["errors"],
            }
            if projection:
                ended = time.monotonic()
                while time.monotonic() - ended < CATCH_UP_WAIT_S_MAX:
                    lag = _lag(url)
                    if lag is not None and lag < CAUGHT_UP_S:
                        break
                    time.sleep(0.1)
                out["catch_up_s"] = time.monotonic() - ended
                lags = sorted(sampler.samples) or [float("nan")]
                out["lag_p50"] = statistics.median(lags)
                out["lag_p99"] = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
                out["lag_max"] = lags[-1]
            return out


def main() -> None:
    parser = argparse.ArgumentParser(description="The projection's cost and lag under load.")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", action="append", choices=list(SCENARIOS))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench.projection needs wrk on PATH (Debian: apt-get install wrk)")
    print(f"wrk, 2 threads; {args.seconds} s per run; {args.rounds} rounds, on/off alternating")
    for scenario in args.only or list(SCENARIOS):
        rates: dict[bool, list[float]] = {True: [], False: []}
        for round_ in range(args.rounds):
            order = (True, False) if round_ % 2 == 0 else (False, True)
            for projection in order:
                r = _run(scenario, projection, args.seconds)
                rates[projection].append(float(r["rate"]))
                line = (
                    f"{SCENARIOS[scenario][0]:<36} projection {'on ' if projection else 'off'}"
                    f" {float(r['rate']):>9,.0f} debits/s  p99 {r['p99']:>8}"
                    f"  non-2xx {r['errors']}"
                )
                if projection:
                    line += (
                        f"  lag p50 {float(r['lag_p50']):.2f} s  p99 {float(r['lag_p99']):.2f} s"
                        f"  max {float(r['lag_max']):.2f} s"
                        f"  caught up {float(r['catch_up_s']):.1f} s after"
                    )
                print(line, flush=True)
        on, off = statistics.mean(rates[True]), statistics.mean(rates[False])
        print(
            f"{SCENARIOS[scenario][0]:<36} on/off: {on:,.0f} / {off:,.0f} debits/s"
            f" = {on / off:.1%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
