"""Fixtures of the engine conformance suite.

Every test runs once per engine:

- `embedded`, always: the in-process engine of `ledger.embedded`, fresh and in memory for each
  test, on a `ManualClock` so that timeouts expire without sleeping.
- `embedded-disk`, always: the same engine with a data directory that checkpoints after every
  few hundred bytes of journal, so that almost all of a test's history is read back from the
  history store (and from a layer being checkpointed), not from memory.
- `cluster`, only when `TB_ADDRESSES` is set (cluster id from `TB_CLUSTER_ID`, default 0): a real
  TigerBeetle cluster. Its state outlives the test, so tests use fresh ids (`tigerbeetle.id()`), a
  random ledger each (`ledger_id`), and never assume an empty database.

`advance(seconds)` moves the embedded engine's clock, and sleeps against a real cluster, so that
timeouts in tests are 1-2 seconds.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import tigerbeetle as tb

TB_ADDRESSES_ENV = "TB_ADDRESSES"
TB_CLUSTER_ID_ENV = "TB_CLUSTER_ID"


def _cluster_addresses() -> str | None:
    addresses = os.environ.get(TB_ADDRESSES_ENV, "").strip()
    return addresses or None


def _cluster_id() -> int:
    return int(os.environ.get(TB_CLUSTER_ID_ENV, "0"))


ENGINE_NAMES: list[str] = ["embedded", "embedded-disk"] + (
    ["cluster"] if _cluster_addresses() else []
)


def _embedded_import_problem() -> str | None:
    """Why `ledger.embedded.EmbeddedEngine` cannot be imported, or None when it can."""
    try:
        module = importlib.import_module("ledger.embedded")
    except ImportError as error:
        return f"ledger.embedded is not importable ({error})"
    if not hasattr(module, "EmbeddedEngine"):
        return "ledger.embedded does not export EmbeddedEngine"
    return None


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    problem = _embedded_import_problem()
    if problem is None:
        lines.append("conformance engines: embedded (always: in memory, on a ManualClock)")
    else:
        lines.append(f"conformance engines: embedded (always; its tests will ERROR: {problem})")
    addresses = _cluster_addresses()
    if addresses:
        lines.append(
            f"conformance engines: cluster ({TB_ADDRESSES_ENV}={addresses}, "
            f"cluster id {_cluster_id()}; the batch-limit tests expect the production request "
            "limit of 1 MiB: `tigerbeetle start --development` alone lowers it to 32 KiB)"
        )
    else:
        lines.append(
            f"conformance engines: cluster NOT run ({TB_ADDRESSES_ENV} is not set; set it to the "
            "addresses of a real TigerBeetle 0.17.x cluster to check the suite against it)"
        )
    return lines


class Engine:
    """One engine under test: its clients and its notion of time."""

    name: str

    def client_sync(self) -> Any:
        """The test's main synchronous client."""
        raise NotImplementedError

    def clients_sync(self, count: int) -> list[Any]:
        """`count` synchronous clients, for concurrency tests."""
        raise NotImplementedError

    def client_async(self) -> Any:
        raise NotImplementedError

    def advance(self, seconds: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class EmbeddedEngineUnderTest(Engine):
    name = "embedded"

    def __init__(self, start_ns: int | None = None, data_dir: str | None = None) -> None:
        from ledger.clock import ManualClock
        from ledger.embedded import EmbeddedEngine

        self.clock = ManualClock() if start_ns is None else ManualClock(start_ns=start_ns)
        self.engine = (
            EmbeddedEngine(data_dir=None, clock_ns=self.clock)
            if data_dir is None
            else EmbeddedEngine(
                data_dir,
                clock_ns=self.clock,
                fsync=False,
                snapshot_bytes=DISK_CHECKPOINT_BYTES,
                id_filter_bits_log2=16,  # small: it is saved at every checkpoint
            )
        )
        self._client_sync: Any = None
        self._clients_sync: list[Any] = []
        self._clients_async: list[Any] = []

    def client_sync(self) -> Any:
        if self._client_sync is None:
            self._client_sync = self.engine.client_sync()
        return self._client_sync

    def clients_sync(self, count: int) -> list[Any]:
        while len(self._clients_sync) < count:
            self._clients_sync.append(self.engine.client_sync())
        return self._clients_sync[:count]

    def client_async(self) -> Any:
        client = self.engine.client_async()
        self._clients_async.append(client)
        return client

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def close(self) -> None:
        clients = [*self._clients_sync]
        if self._client_sync is not None:
            clients.append(self._client_sync)
        for client in clients:
            client.close()
        for client in self._clients_async:
            asyncio.run(client.close())
        self.engine.close()


class ClusterSession:
    """Clients of the real cluster, shared by the whole session: sessions are a cluster resource
    (clients_max), and registering one per test would only slow the suite down."""

    def __init__(self, cluster_id: int, addresses: str) -> None:
        self.cluster_id = cluster_id
        self.addresses = addresses
        self._client_sync: tb.ClientSync | None = None
        self._clients_sync: list[tb.ClientSync] = []
        self._client_async: tb.ClientAsync | None = None

    def client_sync(self) -> tb.ClientSync:
        if self._client_sync is None:
            self._client_sync = tb.ClientSync(
                cluster_id=self.cluster_id, replica_addresses=self.addresses
            )
        return self._client_sync

    def clients_sync(self, count: int) -> list[tb.ClientSync]:
        while len(self._clients_sync) < count:
            self._clients_sync.append(
                tb.ClientSync(cluster_id=self.cluster_id, replica_addresses=self.addresses)
            )
        return self._clients_sync[:count]

    def client_async(self) -> tb.ClientAsync:
        if self._client_async is None:
            self._client_async = tb.ClientAsync(
                cluster_id=self.cluster_id, replica_addresses=self.addresses
            )
        return self._client_async

    def close(self) -> None:
        for client in self._clients_sync:
            client.close()
        if self._client_sync is not None:
            self._client_sync.close()
        if self._client_async is not None:
            asyncio.run(self._client_async.close())


class ClusterEngineUnderTest(Engine):
    name = "cluster"

    def __init__(self, session: ClusterSession) -> None:
        self.session = session

    def client_sync(self) -> Any:
        return self.session.client_sync()

    def clients_sync(self, count: int) -> list[Any]:
        return list(self.session.clients_sync(count))

    def client_async(self) -> Any:
        return self.session.client_async()

    def advance(self, seconds: float) -> None:
        # The cluster's clock is the wall clock: the only way to move it is to wait.
        time.sleep(seconds)

    def close(self) -> None:
        # The session's clients are closed at the end of the session.
        pass


# The embedded-disk engine checkpoints once its journal segment passes this many bytes: about
# every other request.
DISK_CHECKPOINT_BYTES = 600

# TigerBeetle clients retry forever; an unreachable cluster would hang the suite instead of
# failing it.
CLUSTER_REACHABLE_DEADLINE_S = 15.0


def _wait_reachable(session: ClusterSession, deadline_s: float) -> bool:
    outcome: dict[str, object] = {}

    def first_request() -> None:
        try:
            outcome["found"] = session.client_sync().lookup_accounts([1])
        except Exception as error:  # Reported by the caller, never swallowed.
            outcome["error"] = error

    thread = threading.Thread(target=first_request, daemon=True)
    thread.start()
    thread.join(deadline_s)
    if "error" in outcome:
        raise AssertionError(f"first request to the cluster failed: {outcome['error']!r}")
    return "found" in outcome


@pytest.fixture(scope="session")
def cluster_session() -> Iterator[ClusterSession]:
    addresses = _cluster_addresses()
    assert addresses is not None, "the cluster engine runs only when TB_ADDRESSES is set"
    session = ClusterSession(_cluster_id(), addresses)
    if not _wait_reachable(session, CLUSTER_REACHABLE_DEADLINE_S):
        session.close()
        pytest.fail(
            f"no reply from the cluster at {addresses} (cluster id {session.cluster_id}) within "
            f"{CLUSTER_REACHABLE_DEADLINE_S} s",
            pytrace=False,
        )
    yield session
    session.close()


@pytest.fixture(params=ENGINE_NAMES)
def engine_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def engine(engine_name: str, request: pytest.FixtureRequest) -> Iterator[Engine]:
    under_test: Engine
    if engine_name == "embedded":
        under_test = EmbeddedEngineUnderTest()
    elif engine_name == "embedded-disk":
        directory = request.getfixturevalue("tmp_path") / "engine"
        under_test = EmbeddedEngineUnderTest(data_dir=str(directory))
        under_test.name = "embedded-disk"
    else:
        assert engine_name == "cluster"
        under_test = ClusterEngineUnderTest(request.getfixturevalue("cluster_session"))
    yield under_test
    under_test.close()


@pytest.fixture
def embedded_engine_at() -> Iterator[Callable[[int], EmbeddedEngineUnderTest]]:
    """Makes extra embedded engines whose ManualClock starts at a given time (for states a real
    cluster cannot reach today, such as a clock near the end of the u63 timestamp range)."""
    made: list[EmbeddedEngineUnderTest] = []

    def make(start_ns: int) -> EmbeddedEngineUnderTest:
        under_test = EmbeddedEngineUnderTest(start_ns=start_ns)
        made.append(under_test)
        return under_test

    yield make
    for under_test in made:
        under_test.close()


# Named through `name=` because this module imports the `tigerbeetle` package as `tb`.
@pytest.fixture(name="tb")
def tb_fixture(engine: Engine) -> Any:
    """A synchronous client (same API as `tigerbeetle.ClientSync`) of the engine under test."""
    return engine.client_sync()


@pytest.fixture
def atb(engine: Engine) -> Any:
    """An asynchronous client (same API as `tigerbeetle.ClientAsync`) of the engine under test.

    Tests drive it with `asyncio.run(...)`.
    """
    return engine.client_async()


@pytest.fixture
def advance(engine: Engine) -> Callable[[float], None]:
    """Moves the engine's time forward by `seconds` (a ManualClock step, or a real sleep)."""
    return engine.advance


@pytest.fixture
def ledger_id() -> int:
    """A random ledger per test, so that queries by ledger see only this test's objects."""
    # Never 1, so that `ledger_id ^ 1`, a handy other ledger, is never zero.
    return random.randint(2, (1 << 32) - 1)
