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
from typing import IO

import httpx

CLI = str(Path(sys.executable).parent / "credit-ledger")
SCOPES_ALL = ("admin", "runtime", "finance")


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


def env_for(data_dir: Path) -> dict[str, str]:
    """The environment of a service on `data_dir` alone (no cluster, no outside Postgres)."""
    env = {**os.environ, "CREDIT_LEDGER_DATA_DIR": str(data_dir)}
    env.pop("TB_ADDRESSES", None)
    env.pop("DATABASE_URL", None)
    return env


def create_key(env: dict[str, str], name: str, scopes: tuple[str, ...] = SCOPES_ALL) -> str:
    scope_args = [arg for scope in scopes for arg in ("--scope", scope)]
    created = subprocess.run(
        [CLI, "keys", "create", "--name", name, *scope_args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("clk_") and "\n" not in key
    return key


def start_serve(
    env: dict[str, str], port: int, *args: str, output: IO[str] | None = None
) -> subprocess.Popen[str]:
    """`serve` in a process group of its own, as a terminal's foreground job (Ctrl-C signals
    the whole group); what it prints goes to `output`, or to a pipe for `communicate()`."""
    return subprocess.Popen(
        [CLI, "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE if output is None else output,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_ready(server: subprocess.Popen[str], url: str, ready_s: float = 60.0) -> None:
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            output = server.stdout.read() if server.stdout else ""
            raise AssertionError(f"serve exited with {server.returncode}: {output}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    raise AssertionError(f"the service did not become ready in {ready_s} s")


@contextlib.contextmanager
def serve(data_dir: Path, *args: str, key_name: str = "served") -> Iterator[Served]:
    """The service, ready; stopped with SIGTERM (and checked to stop cleanly) on the way out."""
    env = env_for(data_dir)
    key = create_key(env, key_name)
    port = free_port()
    log = data_dir / "serve.log"
    with log.open("w") as output:
        server = start_serve(env, port, *args, output=output)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(server, url)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{log.read_text(errors='replace')}") from None
    try:
        yield Served(url, key, server.pid, data_dir, log)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
        assert code == 0, f"serve stopped with {code}"
