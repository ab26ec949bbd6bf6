"""The ledger as code above `ledger` sees it: one interface over either engine.

`open_ledger(settings)` returns a `Ledger` whose methods are those of `tigerbeetle.ClientAsync`
(`open_ledger_sync` likewise for `ClientSync`). It adds what both engines need from a
well-behaved caller:

- Requests over TigerBeetle's batch limit are split, but only between linked chains, so a
  chain is never cut in two; a single chain over the limit is refused (`ChainTooLong`).
- Against a real cluster every call has a deadline. A call that misses it raises
  `LedgerUnavailable`: its outcome is unknown, and the caller retries with the same ids
  (TigerBeetle's ids make that retry safe).
- One client per process and cluster: TigerBeetle's clients are meant to be shared.
- The embedded engine in a process of its own is supervised (`ledger.embedded.supervisor`): a
  dead one is replaced on the same journal, calls meanwhile raise `LedgerUnavailable`, and
  `Ledger.health` says how it is doing (None for the other engines).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ledger.limits import BATCH_EVENTS_MAX
from ledger.settings import LedgerSettings
from ledger.types import (
    Account,
    AccountBalance,
    AccountFilter,
    ClientAsync,
    ClientSync,
    CreateAccountResult,
    CreateTransferResult,
    QueryFilter,
    Transfer,
    TransferRecord,
    transfer_record,
)

E = TypeVar("E")
R = TypeVar("R")

_LINKED = 1


class LedgerUnavailable(RuntimeError):
    """The engine did not answer in time: the outcome is unknown; retry with the same ids."""


@dataclass(frozen=True)
class EngineHealth:
    """How a supervised engine (`ledger.embedded.supervisor`) is doing, for the probes and the
    metrics; read from memory, so cheap enough for every probe."""

    state: str  # one of ENGINE_STATES
    attempt: int  # restart attempts since the engine last ran well (0: never restarted)
    restarts: int  # dead engines replaced by a new one since this process started
    detail: str  # what is wrong, for a probe's body; "" while running
    recoverable: bool  # False: the service cannot recover by itself; restart it from outside


ENGINE_STATES = ("running", "restarting", "failed", "closed")


class ChainTooLong(ValueError):
    """One linked chain has more events than fit in a single request."""


def split_on_chains(events: Sequence[E], events_max: int = BATCH_EVENTS_MAX) -> list[list[E]]:
    """Cuts `events` into requests of at most `events_max`, only after a chain's last event."""
    assert events_max > 0
    if len(events) <= events_max:
        return [list(events)] if events else []  # one request: no chain to cut
    requests: list[list[E]] = []
    current: list[E] = []
    chain: list[E] = []
    for event in events:
        chain.append(event)
        if int(event.flags) & _LINKED:  # type: ignore[attr-defined]
            continue
        current = _add_chain(requests, current, chain, events_max)
        chain = []
    if chain:  # a chain left open: the engine answers it with `linked_event_chain_open`
        current = _add_chain(requests, current, chain, events_max)
    if current:
        requests.append(current)
    return requests


def _add_chain(
    requests: list[list[E]], current: list[E], chain: list[E], events_max: int
) -> list[E]:
    if len(chain) > events_max:
        raise ChainTooLong(f"a linked chain of {len(chain)} events is over the {events_max} limit")
    if len(current) + len(chain) > events_max:
        requests.append(current)
        current = []
    current.extend(chain)
    return current


def _chunks(items: Sequence[E], size: int = BATCH_EVENTS_MAX) -> list[list[E]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)] or [[]]


class Ledger:
    """`tigerbeetle.ClientAsync`'s methods over either engine, with splitting and deadlines."""

    def __init__(
        self,
        client: Any,
        *,
        deadline_s: float | None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        engine_name: str,
        health: Callable[[], EngineHealth] | None = None,
    ) -> None:
        self._client = client
        self._deadline_s = deadline_s
        self._on_close = on_close
        self.engine_name = engine_name
        self._health = health
        # Called with (method, seconds) after every engine request: the metrics hook.
        self.observe: Callable[[str, float], None] | None = None

    @property
    def health(self) -> EngineHealth | None:
        """A supervised engine's state, for the probes and the metrics (read from memory, so
        cheap); None for the other engines."""
        return None if self._health is None else self._health()

    async def _call(self, method: str, argument: Any) -> Any:
        if self.observe is None:
            return await self._call_engine(method, argument)
        start = time.perf_counter()
        try:
            return await self._call_engine(method, argument)
        finally:
            self.observe(method, time.perf_counter() - start)

    async def _call_engine(self, method: str, argument: Any) -> Any:
        call = getattr(self._client, method)(argument)
        if self._deadline_s is None:
            return await call
        # Shielded: a late answer still completes inside the client, which must see every
        # request it sent come back; only our caller stops waiting.
        task = asyncio.ensure_future(call)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self._deadline_s)
        except TimeoutError:
            raise LedgerUnavailable(
                f"{method} got no answer within {self._deadline_s} s; its outcome is unknown, "
                "retry with the same ids"
            ) from None

    async def _create(self, method: str, events: Sequence[Any]) -> list[Any]:
        results: list[Any] = []
        for request in split_on_chains(events):
            results.extend(await self._call(method, request))
        return results

    async def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        return await self._create("create_accounts", accounts)

    async def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        return await self._create("create_transfers", transfers)

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        return [a for chunk in _chunks(ids) for a in await self._call("lookup_accounts", chunk)]

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        return [t for chunk in _chunks(ids) for t in await self._call("lookup_transfers", chunk)]

    async def get_account_transfers(self, account_filter: AccountFilter) -> list[Transfer]:
        result: list[Transfer] = await self._call("get_account_transfers", account_filter)
        return result

    async def get_account_balances(self, account_filter: AccountFilter) -> list[AccountBalance]:
        result: list[AccountBalance] = await self._call("get_account_balances", account_filter)
        return result

    async def query_accounts(self, query_filter: QueryFilter) -> list[Account]:
        result: list[Account] = await self._call("query_accounts", query_filter)
        return result

    async def query_transfers(self, query_filter: QueryFilter) -> list[Transfer]:
        result: list[Transfer] = await self._call("query_transfers", query_filter)
        return result

    async def query_transfer_records(self, query_filter: QueryFilter) -> list[TransferRecord]:
        """`query_transfers` as plain records (`TransferRecord`): straight from an engine
        process's rows, else converted."""
        if hasattr(self._client, "query_transfer_records"):
            records: list[TransferRecord] = await self._call("query_transfer_records", query_filter)
            return records
        return [transfer_record(t) for t in await self.query_transfers(query_filter)]

    async def close(self) -> None:
        if self._on_close is not None:
            await self._on_close()


class LedgerSync:
    """`tigerbeetle.ClientSync`'s methods over either engine, with splitting and deadlines."""

    def __init__(
        self,
        client: Any,
        *,
        deadline_s: float | None,
        on_close: Callable[[], None] | None = None,
        engine_name: str,
    ) -> None:
        self._client = client
        self._deadline_s = deadline_s
        self._on_close = on_close
        self.engine_name = engine_name
        self._pool = (
            None
            if deadline_s is None
            else concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="ledger-call")
        )

    def _call(self, method: str, argument: Any) -> Any:
        if self._pool is None:
            return getattr(self._client, method)(argument)
        future = self._pool.submit(getattr(self._client, method), argument)
        try:
            return future.result(timeout=self._deadline_s)
        except concurrent.futures.TimeoutError:
            raise LedgerUnavailable(
                f"{method} got no answer within {self._deadline_s} s; its outcome is unknown, "
                "retry with the same ids"
            ) from None

    def _create(self, method: str, events: Sequence[Any]) -> list[Any]:
        results: list[Any] = []
        for request in split_on_chains(events):
            results.extend(self._call(method, request))
        return results

    def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        return self._create("create_accounts", accounts)

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        return self._create("create_transfers", transfers)

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        return [a for chunk in _chunks(ids) for a in self._call("lookup_accounts", chunk)]

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        return [t for chunk in _chunks(ids) for t in self._call("lookup_transfers", chunk)]

    def get_account_transfers(self, account_filter: AccountFilter) -> list[Transfer]:
        result: list[Transfer] = self._call("get_account_transfers", account_filter)
        return result

    def get_account_balances(self, account_filter: AccountFilter) -> list[AccountBalance]:
        result: list[AccountBalance] = self._call("get_account_balances", account_filter)
        return result

    def query_accounts(self, query_filter: QueryFilter) -> list[Account]:
        result: list[Account] = self._call("query_accounts", query_filter)
        return result

    def query_transfers(self, query_filter: QueryFilter) -> list[Transfer]:
        result: list[Transfer] = self._call("query_transfers", query_filter)
        return result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._on_close is not None:
            self._on_close()


# One TigerBeetle client per process and cluster: creating clients is expensive and each holds
# sessions on the cluster.
_cluster_clients: dict[tuple[int, str, str], Any] = {}
_cluster_lock = threading.Lock()


def _shared_cluster_client(settings: LedgerSettings, kind: str) -> Any:
    assert settings.tb_addresses is not None
    key = (settings.tb_cluster_id, settings.tb_addresses, kind)
    with _cluster_lock:
        client = _cluster_clients.get(key)
        if client is None:
            factory = ClientAsync if kind == "async" else ClientSync
            client = factory(
                cluster_id=settings.tb_cluster_id, replica_addresses=settings.tb_addresses
            )
            _cluster_clients[key] = client
        return client


def open_ledger(settings: LedgerSettings, *, engine: Any = None) -> Ledger:
    """The async ledger: a real cluster when `settings.tb_addresses` is set, else the embedded
    engine (the one given, or a new one on `settings.data_dir`, closed with the ledger; in a
    process of its own when `settings.engine_process`, supervised: replaced if it dies)."""
    if settings.tb_addresses:
        client = _shared_cluster_client(settings, "async")
        return Ledger(client, deadline_s=settings.request_deadline_s, engine_name="cluster")
    from ledger.embedded import EmbeddedEngine
    from ledger.embedded.process import EngineProcess
    from ledger.embedded.supervisor import EngineSupervisor

    owned = engine is None
    if owned:
        engine = (
            EngineSupervisor(settings.data_dir)
            if settings.engine_process
            else EmbeddedEngine(settings.data_dir)
        )
    in_process = not isinstance(engine, EngineProcess | EngineSupervisor)

    async def close() -> None:
        if not owned:
            return
        if in_process:
            engine.close()
        else:
            await engine.aclose()

    name = "embedded" if in_process else f"embedded (process {engine.pid})"
    health = engine.health if isinstance(engine, EngineSupervisor) else None
    return Ledger(
        engine.client_async(), deadline_s=None, on_close=close, engine_name=name, health=health
    )


def open_ledger_beside(settings: LedgerSettings) -> Ledger:
    """The ledger for another process of a running service (its projection feed): the cluster
    when `settings.tb_addresses` is set, else the embedded engine of the server that runs on
    `settings.data_dir`, through its clients socket (`ledger.embedded.process.CLIENTS_SOCKET`).
    While that engine is not there (the server restarts it), calls raise LedgerUnavailable."""
    if settings.tb_addresses:
        return open_ledger(settings)
    from ledger.embedded.process import CLIENTS_SOCKET, EngineSocketCaller

    caller = EngineSocketCaller(settings.data_dir / CLIENTS_SOCKET)
    return Ledger(
        caller.client_async(),
        deadline_s=None,
        on_close=caller.aclose,
        engine_name=f"embedded (through {caller.path})",
    )


def open_ledger_sync(settings: LedgerSettings, *, engine: Any = None) -> LedgerSync:
    """The sync twin of `open_ledger` (the engine in-process only)."""
    if settings.engine_process and not settings.tb_addresses:
        raise ValueError("the engine process has an async client only; use open_ledger")
    if settings.tb_addresses:
        client = _shared_cluster_client(settings, "sync")
        return LedgerSync(client, deadline_s=settings.request_deadline_s, engine_name="cluster")
    from ledger.embedded import EmbeddedEngine

    owned = engine is None
    if owned:
        engine = EmbeddedEngine(settings.data_dir)
    return LedgerSync(
        engine.client_sync(),
        deadline_s=None,
        on_close=engine.close if owned else None,
        engine_name="embedded",
    )
