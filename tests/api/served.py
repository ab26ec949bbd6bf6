"""`credit-ledger serve` as a subprocess on a free port, on its own data directory (embedded
engine, embedded Postgres), with an API key of every scope: the service as a user runs it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

CLI = str(Path(sys.executable).parent / "credit-ledger")


@dataclass(frozen=True)
class Served:
    url: str
    key: str  # admin, runtime and finance
    pid: int
    data_dir: Path
    log: Path  # what the service printed (a pipe nobody reads would stop it once full)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_key(env: dict[str, str], name: str) -> str:
    scopes = ["--scope", "admin", "--scope", "runtime", "--scope", "finance"]
    created = subprocess.run(
        [CLI, "keys", "create", "--name", name, *scopes],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("clk_") and "\n" not in key
    return key


@contextlib.contextmanager
def serve(data_dir: Path, *args: str, ready_s: float = 60.0) -> Iterator[Served]:
    """The service, ready; stopped with SIGTERM (and checked to stop cleanly) on the way out."""
    env = {**os.environ, "CREDIT_LEDGER_DATA_DIR": str(data_dir)}
    env.pop("TB_ADDRESSES", None)
    env.pop("DATABASE_URL", None)
    key = create_key(env, "served")
    port = free_port()
    log = data_dir / "serve.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [CLI, "serve", "--port", str(port), *args],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text(errors="replace")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        server.kill()
        raise AssertionError(f"the service did not become ready in {ready_s} s")
    try:
        yield Served(url, key, server.pid, data_dir, log)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
        assert code == 0, f"serve stopped with {code}"
