"""End to end: `credit-ledger serve` as a subprocess on a free port (embedded engine, embedded
Postgres), driven over real HTTP by the Python client. 100 concurrent reservations against a
hard-limited wallet: exactly the affordable number succeed, and the wallet holds exactly that."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from credit_ledger_client import (
    AsyncCreditClient,
    CreditClient,
    InsufficientCreditsError,
    LedgerUnavailableError,
)
from credit_ledger_client.schemas import (
    Category,
    CreditTypeIn,
    CustomerIn,
    GrantIn,
    ReserveIn,
    ResourceIn,
    ResourceKind,
    WalletIn,
)

CLI = str(Path(sys.executable).parent / "credit-ledger")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, int]]:
    data_dir = tmp_path_factory.mktemp("serve")
    env = {**os.environ, "CREDIT_LEDGER_DATA_DIR": str(data_dir)}
    env.pop("TB_ADDRESSES", None)
    env.pop("DATABASE_URL", None)
    created = subprocess.run(
        [
            CLI,
            "keys",
            "create",
            "--name",
            "e2e",
            "--scope",
            "admin",
            "--scope",
            "runtime",
            "--scope",
            "finance",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("clk_") and "\n" not in key
    port = _free_port()
    server = subprocess.Popen(
        [CLI, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stdout.read() if server.stdout else ""
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        server.kill()
        pytest.fail("the service did not become ready in 60 s")
    engines = _children(server.pid, "ledger.embedded")
    yield url, key, server.pid
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0  # a clean stop on SIGTERM
    for pid in engines:  # and the engine process stopped with it
        deadline = time.monotonic() + 10
        while _children_of_any(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _children_of_any(pid), f"engine process {pid} outlived the server"


def _children(parent: int, marker: str) -> list[int]:
    """The processes whose parent is `parent` and whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and marker in command:
            found.append(int(entry.name))
    return found


def _children_of_any(pid: int) -> bool:
    """Whether `pid` still runs (a zombie has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_100_concurrent_reservations_on_a_hard_limit(service: tuple[str, str, int]) -> None:
    url, key, _ = service
    with CreditClient(url, key) as client:
        client.create_credit_type(CreditTypeIn(code="e2e", name="E2E credits"))
        customer = client.create_customer(CustomerIn(name="E2E"))
        agent = client.create_resource(ResourceIn(customer_id=customer.id, kind=ResourceKind.AGENT))
        wallet = client.create_wallet(WalletIn(resource_id=agent.id, credit_type="e2e"))
        client.create_grant(
            GrantIn(wallet_id=wallet.id, amount=1000, category=Category.PROMOTIONAL)
        )

    async def race() -> list[bool]:
        async with AsyncCreditClient(url, key) as client:

            async def one() -> bool:
                try:
                    await client.create_reservation(
                        ReserveIn(credit_type="e2e", resource_id=agent.id, amount=15, timeout_s=600)
                    )
                except InsufficientCreditsError:
                    return False
                return True

            return await asyncio.gather(*(one() for _ in range(100)))

    outcomes = asyncio.run(race())
    assert (sum(outcomes), len(outcomes) - sum(outcomes)) == (66, 34)
    with CreditClient(url, key) as client:
        balance = client.get_wallet(wallet.id)
        assert (balance.held, balance.available) == (990, 10)
        # The reserve context manager settles the measured cost on success.
        with client.reserve(credit_type="e2e", resource_id=agent.id, amount=10) as r:
            r.settle_amount = 4
        assert client.get_wallet(wallet.id).available == 6


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_the_engine_runs_beside_the_server_and_its_death_shows(
    service: tuple[str, str, int],
) -> None:
    """Last in this module: it kills the engine process."""
    url, key, pid = service
    engines = _children(pid, "ledger.embedded")
    assert len(engines) == 1, "serve runs the embedded engine in one child process"
    with CreditClient(url, key) as client:
        client.create_credit_type(CreditTypeIn(code="dies", name="Credits"))
        customer = client.create_customer(CustomerIn(name="Before"))
        agent = client.create_resource(ResourceIn(customer_id=customer.id, kind=ResourceKind.AGENT))
        wallet = client.create_wallet(WalletIn(resource_id=agent.id, credit_type="dies"))
        client.create_grant(GrantIn(wallet_id=wallet.id, amount=10, category=Category.PROMOTIONAL))
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    os.kill(engines[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ready = httpx.get(f"{url}/readyz", timeout=5)
        if ready.status_code == 503:
            break
        time.sleep(0.05)
    assert ready.status_code == 503
    assert "ledger" in ready.text and "engine process" in ready.text
    with CreditClient(url, key) as client, pytest.raises(LedgerUnavailableError):
        client.create_reservation(ReserveIn(credit_type="dies", resource_id=agent.id, amount=1))
