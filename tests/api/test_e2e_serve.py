"""End to end: `credit-ledger serve` as a subprocess on a free port (embedded engine, embedded
Postgres), driven over real HTTP by the Python client. 100 concurrent reservations against a
hard-limited wallet: exactly the affordable number succeed, and the wallet holds exactly that.
The engine process killed under a load of debits: the server replaces it and each debit,
retried with its key, applies once. SIGTERM stops the server and its children.
Also the server's protocol limits as `serve` configures them, a busy port, `demo` beside a
running service, /schema rendered offline in a browser, and a Ctrl-C (exit 130, no
traceback), which, as SIGTERM does, leaves no process behind (engine, movement writer,
embedded Postgres)."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from credit_ledger_client import AsyncCreditClient, CreditClient, InsufficientCreditsError
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

from bench import schema_page
from bench.projection_kill import children as _children
from tests.api import served
from tests.api.served import CLI


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def service(data_dir: Path) -> Iterator[tuple[str, str, int]]:
    with served.serve(data_dir, key_name="e2e") as service:
        yield service.url, service.key, service.pid
        # The engine process (a replacement, if one was killed) and the projection feed.
        children = _children(service.pid, "")
        assert _children(service.pid, "ledger.embedded"), "the server runs an engine process"
    # serve() stopped it with SIGTERM and saw it exit 0; its children and Postgres stop too.
    _assert_stopped(children, data_dir)


def _assert_stopped(pids: list[int], data_dir: Path) -> None:
    """Each of `pids` ends, and so does every process on `data_dir` (the embedded Postgres),
    within a bound that only keeps a failure from hanging the suite."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [pid for pid in pids if _children_of_any(pid)] + _on_data_dir(data_dir)
        if not left:
            return
        time.sleep(0.05)
    pytest.fail(f"processes outlived the server: {left}")


def _on_data_dir(data_dir: Path) -> list[int]:
    """The running processes whose command line names `data_dir`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"{data_dir}/" in command and _children_of_any(int(entry.name)):
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


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _send_header(port: int, header_bytes: int) -> int:
    """Sends a request with one header of `header_bytes`, in chunks, until the server closes
    the connection; the bytes sent by then."""
    chunk = b"a" * (64 * 1024)
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: e2e\r\nX-Big: ")
            while sent < header_bytes:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
    return sent


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_serve_refuses_large_headers_without_holding_them(
    service: tuple[str, str, int],
) -> None:
    url, _, pid = service
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: e2e\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 431 ")
    # Four at once, 16 MB each: each is refused early; the server holds none of them.
    header_bytes = 16 * 1024 * 1024
    before = _rss_bytes(pid)
    with ThreadPoolExecutor(4) as pool:
        sent = list(pool.map(lambda _: _send_header(port, header_bytes), range(4)))
    assert all(n < header_bytes // 2 for n in sent), sent
    assert _rss_bytes(pid) - before < header_bytes
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200


def test_a_busy_port_is_told_before_anything_starts(
    service: tuple[str, str, int], tmp_path: Path
) -> None:
    url, _, _ = service
    port = url.rsplit(":", 1)[1]
    busy = subprocess.run(
        [CLI, "serve", "--port", port],
        env=served.env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert busy.returncode == 1
    assert (
        f"port {port} is in use on 127.0.0.1: another credit-ledger serve? pick another with --port"
    ) in busy.stderr
    assert list(tmp_path.iterdir()) == []  # neither Postgres nor the engine was started


def test_a_data_directory_in_use_is_told_in_one_line(
    service: tuple[str, str, int], data_dir: Path
) -> None:
    """Another `serve` on the same data directory (on another port, as the busy port's advice
    leads to) is refused in one line that names the owner, not with a traceback."""
    refused = subprocess.run(
        [CLI, "serve", "--port", str(served.free_port())],
        env=served.env_for(data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr, refused.stderr
    assert "Error: data directory" in refused.stderr and "is in use" in refused.stderr
    assert "--data-dir" in refused.stderr


def test_demo_tours_the_running_service_with_a_key_of_its_own(
    service: tuple[str, str, int], data_dir: Path
) -> None:
    url, _, _ = service
    demo = subprocess.run(
        [CLI, "demo", "--url", url],
        env=served.env_for(data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stderr
    assert f"a service runs at {url}: touring it over HTTP" in demo.stderr
    assert f"in the Postgres of the data directory {data_dir}" in demo.stderr
    assert "402 insufficient_credits (available 50, needed 100)" in demo.stdout
    listed = subprocess.run(
        [CLI, "keys", "list"],
        env=served.env_for(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )
    demo_keys = [line for line in listed.stdout.splitlines() if " demo-" in line]
    assert len(demo_keys) == 1 and not demo_keys[0].endswith("-"), listed.stdout  # revoked
    # A data directory where no Postgres runs is not the service's: the demo says so.
    elsewhere = subprocess.run(
        [CLI, "demo", "--url", url, "--data-dir", str(data_dir / "elsewhere")],
        env=served.env_for(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert elsewhere.returncode == 1
    assert "the service keeps its data elsewhere. Pass its --data-dir" in elsewhere.stderr


@pytest.mark.skipif(
    schema_page.chromium() is None,
    reason="renders /schema in a browser: needs chromium (apt-get install chromium)",
)
def test_the_schema_page_lists_the_operations_offline_in_a_browser(
    service: tuple[str, str, int],
) -> None:
    url, _, _ = service
    rendering = schema_page.render_offline(url)
    assert "/v1/debits" in rendering.operations and "/v1/check" in rendering.operations
    assert len(rendering.operations) >= 26
    assert rendering.elsewhere == set()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_ctrl_c_stops_serve_cleanly(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Ctrl-C signals the terminal's foreground group: the server and its engine stop, and the
    server ends its projection feed (which, as the embedded Postgres, runs in a session of its
    own)."""
    data_dir = tmp_path_factory.mktemp("ctrl-c")
    env = served.env_for(data_dir)
    key = served.create_key(env, "ctrl-c", ("admin", "runtime"))
    port = served.free_port()
    server = served.start_serve(env, port)
    url = f"http://127.0.0.1:{port}"
    served.wait_ready(server, url)
    with CreditClient(url, key) as client:
        client.create_credit_type(CreditTypeIn(code="c", name="Credits"))
        customer = client.create_customer(CustomerIn(name="Ctrl-C"))
        agent = client.create_resource(ResourceIn(customer_id=customer.id, kind=ResourceKind.AGENT))
        wallet = client.create_wallet(WalletIn(resource_id=agent.id, credit_type="c"))
        client.create_grant(GrantIn(wallet_id=wallet.id, amount=10, category=Category.PROMOTIONAL))
        client.create_reservation(ReserveIn(credit_type="c", resource_id=agent.id, amount=1))
    children = _children(server.pid, "ledger.embedded") + _children(server.pid, "projection feed")
    assert len(children) == 2
    os.killpg(server.pid, signal.SIGINT)
    output, _ = server.communicate(timeout=30)
    assert server.returncode == 130, output
    assert "Traceback" not in output and "Aborted!" not in output, output
    assert "never awaited" not in output, output  # (a shutdown hook that did not run)
    assert "Finished server process" in output
    _assert_stopped(children, data_dir)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_killed_engine_is_replaced_and_each_debit_applies_once(
    service: tuple[str, str, int],
) -> None:
    """Last in this module: it kills the engine process. The server replaces it by itself, on
    the same journal: /healthz stays 200, spends succeed again, and the server is the same
    process. Every debit that got 503 is retried with its key and body; then each key has been
    applied once, and the wallet has consumed exactly the sum of the distinct debits."""
    url, key, pid = service
    engines = _children(pid, "ledger.embedded")
    assert len(engines) == 1, "serve runs the embedded engine in one child process"
    with CreditClient(url, key) as client:
        client.create_credit_type(CreditTypeIn(code="dies", name="Credits"))
        customer = client.create_customer(CustomerIn(name="Before"))
        agent = client.create_resource(ResourceIn(customer_id=customer.id, kind=ResourceKind.AGENT))
        wallet = client.create_wallet(WalletIn(resource_id=agent.id, credit_type="dies"))
        client.create_grant(
            GrantIn(wallet_id=wallet.id, amount=10**9, category=Category.PROMOTIONAL)
        )
    debits = Debits(url, key, agent.id)
    asyncio.run(debits.across_a_kill(engines[0]))
    assert debits.unavailable, "the kill cost some debits their answer"
    assert debits.healthz == {200}  # sampled all along the restart
    assert _children_of_any(pid), "the server runs on, the same process"
    (replacement,) = _children(pid, "ledger.embedded")
    assert replacement != engines[0]

    asyncio.run(debits.settle())
    with CreditClient(url, key) as client:
        assert client.get_wallet(wallet.id).consumed == sum(debits.amounts.values())
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    metrics = httpx.get(f"{url}/metrics", timeout=5).text
    assert "credit_engine_restarts_total 1.0" in metrics
    assert 'credit_engine_state{state="running"} 1.0' in metrics


class Debits:
    """Debits with distinct idempotency keys from several tasks, over plain HTTP (the Python
    client would retry a 503 by itself), and what became of each."""

    WORKERS = 8

    def __init__(self, url: str, key: str, agent: str) -> None:
        self.url, self.key, self.agent = url, key, agent
        self.amounts: dict[str, int] = {}
        self.acknowledged: list[str] = []
        self.unavailable: list[str] = []
        self.healthz: set[int] = set()

    def client(self) -> httpx.AsyncClient:
        auth = {"Authorization": f"Bearer {self.key}"}
        return httpx.AsyncClient(base_url=self.url, headers=auth, timeout=30)

    async def send(self, http: httpx.AsyncClient, idem: str) -> httpx.Response:
        body = {"resource_id": self.agent, "credit_type": "dies", "amount": self.amounts[idem]}
        return await http.post("/v1/debits", json=body, headers={"Idempotency-Key": idem})

    async def across_a_kill(self, engine: int) -> None:
        stop = asyncio.Event()
        async with self.client() as http:

            async def worker(w: int) -> None:
                for n in itertools.count():
                    if stop.is_set():
                        return
                    idem = f"kill-{w}-{n}"
                    self.amounts[idem] = n % 7 + 1
                    r = await self.send(http, idem)
                    if r.status_code == 503:
                        assert r.json()["code"] == "ledger_unavailable", r.text
                        self.unavailable.append(idem)
                        await asyncio.sleep(0.01)  # a client backs off
                    else:
                        assert r.status_code == 201, r.text
                        self.acknowledged.append(idem)

            workers = [asyncio.create_task(worker(w)) for w in range(self.WORKERS)]
            try:
                await self.until(http, lambda: len(self.acknowledged) >= 100, "debits")
                os.kill(engine, signal.SIGKILL)
                await self.until(http, lambda: bool(self.unavailable), "a debit to fail")
                back = len(self.acknowledged)
                await self.until(http, lambda: len(self.acknowledged) >= back + 100, "the engine")
            finally:
                stop.set()
                await asyncio.gather(*workers)

    async def until(
        self, http: httpx.AsyncClient, condition: Callable[[], bool], what: str
    ) -> None:
        """Polls `condition`, and /healthz meanwhile; a generous bound, never asserted on."""
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline, f"still waiting for {what}"
            self.healthz.add((await http.get("/healthz")).status_code)
            await asyncio.sleep(0.02)

    async def settle(self) -> None:
        """Retries each debit that got 503 with its key and body; then sends every debit again:
        each answers as a replay (`Idempotency-Hit: true`) of the same amount."""
        async with self.client() as http:
            for idem in self.unavailable:
                r = await self.send(http, idem)
                assert r.status_code == 201, r.text
            for idem, amount in self.amounts.items():
                r = await self.send(http, idem)
                assert (r.status_code, r.json()["amount"]) == (201, amount), r.text
                assert r.headers.get("idempotency-hit") == "true", idem


def test_serve_runs_its_own_code_whatever_directory_it_starts_in(tmp_path: Path) -> None:
    """Started in a directory that holds `ledger` and `cli` packages of its own (a user's
    project), the service's children (the engine, the projection feed) import the service's
    code, not those: it gets ready, the projection catches up with a grant, and neither decoy
    is ever imported. (They were: `-m` puts the working directory first on `sys.path`.)"""
    project, marker = tmp_path / "project", tmp_path / "decoy-imported"
    decoy = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\nraise SystemExit(3)\n"
    for name in ("ledger/__init__.py", "ledger/embedded/__init__.py", "cli/__init__.py"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(decoy)
    (project / "cli" / "__main__.py").write_text(decoy)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = served.env_for(data_dir)
    key = served.create_key(env, "elsewhere")
    port = served.free_port()
    url = f"http://127.0.0.1:{port}"
    log = data_dir / "serve.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [CLI, "serve", "--port", str(port)],
            env=env,
            cwd=project,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    try:
        served.wait_ready(server, url)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:

            def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
                r = client.post(path, json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
                assert r.status_code == 201, r.text
                return dict(r.json())

            post("/v1/credit-types", {"code": "tokens", "name": "Tokens"})
            customer = post("/v1/customers", {"name": "Elsewhere"})
            resource = post("/v1/resources", {"customer_id": customer["id"], "kind": "agent"})
            wallet = post("/v1/wallets", {"resource_id": resource["id"], "credit_type": "tokens"})
            post("/v1/grants", {"wallet_id": wallet["id"], "amount": 10, "category": "promotional"})
            lag = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                text = client.get("/metrics").text
                found = re.search(r"^credit_projection_lag_seconds ([-\d.e+]+)", text, re.M)
                lag = None if found is None else float(found.group(1))
                if lag is not None and 0 <= lag < 5:
                    break
                time.sleep(0.2)
        assert lag is not None and 0 <= lag < 5, log.read_text(errors="replace")
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    assert not marker.exists(), marker.read_text()
