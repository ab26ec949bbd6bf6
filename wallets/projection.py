"""The projection feed: every transfer of the engine, in timestamp order, into Postgres as
typed entries (ledger/README.md, "The projection").

One feed writes at a time (the leader: it holds a Postgres advisory lock); any process may run
one, the others wait for the lock. A step:

1. reads the engine's next transfers after the watermark with `query_transfers` (all filter
   fields zero: every transfer, ascending by timestamp), at most a request's worth, and keeps
   whole linked chains;
2. gathers what `wallets.entries.project` needs: the accounts touched (cached: an account's
   kind and owner never change), the open pending legs the chains resolve, the spends refunded;
3. writes, in one transaction (`_write`), the watermark, the pending legs opened and resolved,
   the entries with what the catalog says of them (resource, customer, a block's currency and
   value), a timeout entry for every open leg whose expiry the new watermark passed, and the
   usage rollups.

A crash between two steps loses nothing and a step run twice writes nothing twice: the
watermark moves in the transaction of the rows it covers, and the rows are keyed by transfer.

Timeouts: TigerBeetle writes no transfer when a pending transfer times out. The leg was
released at `timestamp + timeout`, and no post or void of it can come after that instant, so
once the feed has read a transfer at or past it, the timeout is certain. When nothing happens
after a due expiry, the feed writes a tick (`PROJECTION_TICK`, 0 between the header accounts)
to see the engine's clock pass it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

import psycopg

from ledger.client import Ledger, LedgerUnavailable
from ledger.codes import AccountCode, TransferCode
from ledger.db import Connection, Pool
from ledger.ids import dimension_set_id, projection_tick_id, system_account_id
from ledger.limits import BATCH_EVENTS_MAX
from ledger.repositories import projection as repo
from ledger.repositories.dimensions import insert_dimension_sets
from ledger.types import (
    CreateTransferStatus,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
    TransferRecord,
)
from wallets import entries as rules

_logger = logging.getLogger(__name__)

# Accounts whose kind and owner the feed keeps (least recently used out first).
ACCOUNTS_KNOWN_MAX: Final = 500_000
# Catalog rows (wallets, budgets, blocks) the feed keeps, of each kind.
CATALOG_KNOWN_MAX: Final = 500_000
IDLE_S: Final = 0.1  # between polls that found nothing
TICK_EVERY_S: Final = 1.0  # at most one tick this often
RETRY_S_MAX: Final = 5.0
LEADER_LOCK: Final = 7_461_300_001  # pg advisory lock key of the projection's leader
NS_PER_S: Final = 1_000_000_000


class LeaderBusy(RuntimeError):
    """Another process holds the projection's leader lock."""


class ProjectionFeed:
    def __init__(
        self,
        ledger: Ledger,
        pool: Pool,
        *,
        batch_max: int = BATCH_EVENTS_MAX,
        idle_s: float = IDLE_S,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        assert 1 <= batch_max <= BATCH_EVENTS_MAX
        self.ledger = ledger
        self.pool = pool
        self.batch_max = batch_max
        self.idle_s = idle_s
        self.clock_ns = clock_ns
        self.leader = False
        self.watermark_ts: int | None = None  # None until read from Postgres
        # Wall time at the start of the last poll that found the engine had nothing more.
        self.caught_up_at_ns = 0
        self.entries_written = 0
        self.failures = 0
        self._accounts: collections.OrderedDict[int, rules.AccountInfo] = collections.OrderedDict()
        self._last_tick_s = -TICK_EVERY_S  # monotonic: a rate, not a business time
        self._caught_up_written_ns = 0
        self._wallets: dict[int, tuple[int, int]] = {}  # wallet -> (resource, customer)
        self._budgets: dict[int, tuple[int, int]] = {}  # budget -> (resource, customer)
        self._blocks: dict[int, repo.BlockTerms] = {}

    # -- what the probes and metrics read ------------------------------------------------------

    def lag_s(self) -> float | None:
        """How far behind the engine the projection may be: now, less the engine time up to
        which it is known complete (its watermark, or the start of the last poll that found
        nothing newer). None before the first step."""
        if self.watermark_ts is None:
            return None
        complete_ns = max(self.watermark_ts, self.caught_up_at_ns)
        return max(0.0, (self.clock_ns() - complete_ns) / 1e9)

    # -- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Leads the projection while this process holds the lock; waits for it otherwise."""
        delay_s = 0.1
        while True:
            try:
                async with self.leadership():
                    delay_s = 0.1
                    while True:
                        read = await self.step()
                        if read < self.batch_max:
                            await asyncio.sleep(self.idle_s)
            except (psycopg.Error, OSError, LedgerUnavailable, repo.LostLeadership) as error:
                self.failures += 1
                _logger.warning("projection feed: %s; retrying in %.1f s", error, delay_s)
            except Exception:  # a bug: said loudly, and the lag grows; the service goes on
                self.failures += 1
                _logger.exception("projection feed failed; retrying in %.1f s", delay_s)
            self.leader = False
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RETRY_S_MAX)

    @contextlib.asynccontextmanager
    async def leadership(self, *, wait: bool = True) -> AsyncIterator[None]:
        """Holds the leader's advisory lock on a connection of its own for as long as the
        feed leads; waits (polling) while another process holds it, or with `wait=False`
        raises LeaderBusy."""
        conn = await psycopg.AsyncConnection.connect(
            str(self.pool.conninfo), autocommit=True, **_kwargs(self.pool)
        )
        try:
            while True:
                cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,))
                row = await cursor.fetchone()
                if row is not None and row[0]:
                    break
                if not wait:
                    raise LeaderBusy("another process feeds the projection")
                await asyncio.sleep(1.0)
            self.leader = True
            self.watermark_ts = None  # another leader may have moved it
            yield
        finally:
            self.leader = False
            await conn.close()

    async def catch_up(self, *, progress: Callable[[int, int], None] | None = None) -> int:
        """Steps until the projection has everything the engine had when this was called;
        returns the transfers read. `progress(transfers read, entries written)` after each
        step. The caller leads (tests, `credit-ledger projection rebuild`)."""
        read_total = 0
        while True:
            read = await self.step()
            read_total += read
            if progress is not None:
                progress(read_total, self.entries_written)
            if read < self.batch_max:
                return read_total

    async def step(self) -> int:
        """Projects the next batch; returns how many transfers it read."""
        started_ns = self.clock_ns()
        if self.watermark_ts is None:
            async with self.pool.connection() as conn:
                self.watermark_ts = (await repo.read_state(conn)).watermark_ts
        watermark = self.watermark_ts
        transfers = await self.ledger.query_transfer_records(_after(watermark, self.batch_max))
        if not transfers:
            await self._tick_if_due(watermark, started_ns)
            await self._caught_up(started_ns)
            return 0
        chains = rules.split_chains(transfers)
        assert chains, "a request's worth of transfers holds a whole chain"
        if len(transfers) < self.batch_max:
            assert sum(map(len, chains)) == len(transfers), "the engine returned half a chain"
        projected = await self._project(chains)
        new_watermark = chains[-1][-1].timestamp
        self.entries_written += await self._write(watermark, new_watermark, projected)
        self.watermark_ts = new_watermark
        if len(transfers) < self.batch_max:
            await self._caught_up(started_ns)
        return len(transfers)

    async def _caught_up(self, at_ns: int) -> None:
        """Says (in Postgres, at most once a second) that the projection had everything the
        engine had at `at_ns`: how other processes tell its lag."""
        self.caught_up_at_ns = at_ns
        if at_ns - self._caught_up_written_ns >= NS_PER_S:
            self._caught_up_written_ns = at_ns
            async with self.pool.connection() as conn:
                await repo.mark_caught_up(conn, at_ns)

    async def _write(self, from_ts: int, to_ts: int, projected: rules.Projected) -> int:
        """Writes a batch in one transaction (ledger/repositories/projection.py, "the batch"):
        the watermark first, then the pending legs, the entries with the timeouts the new
        watermark brings, their rollups. Returns the entries written. Its commit need not wait
        for the disk: a commit lost in a crash takes its watermark with it, and the batch is
        projected again from the engine."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = off")
            await repo.claim_watermark(conn, from_ts, to_ts)
            await repo.resolve_pending(conn, projected.resolved)
            await repo.open_pending(conn, projected.opened)
            expired = await repo.expire_pending(conn, to_ts)
            entries = [*projected.entries, *map(rules.timeout_entry, expired)]
            await self._learn_catalog(conn, entries)
            rows = rules.enrich(entries, self._wallets, self._budgets, self._blocks)
            await repo.insert_entries(conn, rows)
            await repo.add_rollups(conn, rules.rollups(rows))
            await repo.count_entries(conn, len(rows))
        return len(rows)

    async def _learn_catalog(self, conn: Connection, entries: Sequence[repo.Entry]) -> None:
        """What the catalog says of these entries' wallets, budgets and blocks (it never
        changes once written: kept, up to a bound)."""
        wallets = {e.wallet_id for e in entries if e.wallet_id} - self._wallets.keys()
        budgets = {e.owner_id for e in entries if e.account_kind == "budget"} - self._budgets.keys()
        blocks = {e.account_id for e in entries if e.account_kind == "block"} - self._blocks.keys()
        for known in (self._wallets, self._budgets, self._blocks):
            if len(known) > CATALOG_KNOWN_MAX:
                known.clear()
        self._wallets.update(await repo.wallet_owners(conn, wallets))
        self._budgets.update(await repo.budget_owners(conn, budgets))
        self._blocks.update(await repo.block_terms(conn, blocks))

    async def _project(self, chains: Sequence[Sequence[TransferRecord]]) -> rules.Projected:
        accounts = await self._account_infos(rules.needed_accounts(chains))
        opened_here = {t.id for chain in chains for t in chain if t.flags & rules.PENDING}
        wanted = rules.needed_pending(chains) - opened_here
        debits = rules.refunded_debits(chains)
        spends = await self._spends(debits) if debits else {}
        async with self.pool.connection() as conn:
            pending = await repo.pending_legs(conn, wanted)
            legacy = rules.legacy_operations(chains, spends)
            legacy_sets = await self._legacy_sets(conn, legacy) if legacy else {}
        return rules.project(chains, accounts, pending, spends, legacy_sets)

    async def _account_infos(self, ids: set[int]) -> dict[int, rules.AccountInfo]:
        known = self._accounts
        missing = [i for i in ids if i not in known]
        for start in range(0, len(missing), BATCH_EVENTS_MAX):
            for account in await self.ledger.lookup_accounts(
                missing[start : start + BATCH_EVENTS_MAX]
            ):
                known[account.id] = rules.AccountInfo(account.code, account.user_data_128)
        while len(known) > ACCOUNTS_KNOWN_MAX:
            known.popitem(last=False)
        return {i: known[i] for i in ids if i in known}

    async def _spends(self, debits: set[int]) -> dict[int, rules.SpendOf]:
        ids = [leg for debit in debits for leg in rules.spend_legs(debit)]
        found = {t.id: t for t in await self.ledger.lookup_transfers(ids)}
        out = {}
        for debit in debits:
            setup, check = rules.spend_legs(debit)
            out[debit] = rules.spend_of(found.get(setup), found.get(check))
        return out

    @staticmethod
    async def _legacy_sets(conn: Connection, operations: set[int]) -> dict[int, int]:
        """Dimension sets for spends recorded before chains carried them (their rows are
        written to `dimension_sets` so that entries can name them)."""
        rows = await repo.legacy_dimensions(conn, operations)
        sets = {op: dimension_set_id(dims) for op, dims in rows.items() if dims}
        await insert_dimension_sets(conn, [(sets[op], rows[op]) for op in sets])
        return sets

    async def _tick_if_due(self, watermark: int, now_ns: int) -> None:
        """Writes a tick when an open leg's expiry has passed by the service's clock (the wall
        clock, or a sandbox's test clock, which the engine reads too) but the watermark has not
        reached it (nothing happened since)."""
        if time.monotonic() - self._last_tick_s < TICK_EVERY_S:
            return
        async with self.pool.connection() as conn:
            due = await repo.earliest_open_expiry(conn)
        if due is None or not watermark < due[0] <= now_ns:
            return
        self._last_tick_s = time.monotonic()
        ledger = due[1]
        tick = Transfer(
            id=projection_tick_id(watermark),
            debit_account_id=system_account_id(ledger, AccountCode.OPERATION_HEADER_DEBIT),
            credit_account_id=system_account_id(ledger, AccountCode.OPERATION_HEADER_CREDIT),
            amount=0,
            ledger=ledger,
            code=TransferCode.PROJECTION_TICK,
        )
        (result,) = await self.ledger.create_transfers([tick])
        if result.status not in (CreateTransferStatus.CREATED, CreateTransferStatus.EXISTS):
            _logger.error("the projection's tick was refused: %s", result.status.name)


def _after(watermark_ts: int, limit: int) -> QueryFilter:
    return QueryFilter(
        user_data_128=0,
        user_data_64=0,
        user_data_32=0,
        ledger=0,
        code=0,
        timestamp_min=watermark_ts + 1,
        timestamp_max=0,
        limit=limit,
        flags=QueryFilterFlags.NONE,
    )


def _kwargs(pool: Pool) -> dict[str, Any]:
    kwargs = pool.kwargs if isinstance(pool.kwargs, dict) else {}
    return {str(k): str(v) for k, v in kwargs.items() if k != "autocommit"}


def lag_of(state: repo.State, now_ns: int) -> float | None:
    """The projection's lag as any process can tell it from Postgres (see `lag_s`); None
    before a feed first ran."""
    complete_ns = max(state.watermark_ts, state.caught_up_ns)
    if complete_ns == 0:
        return None
    return max(0.0, (now_ns - complete_ns) / NS_PER_S)


class ProjectionStatus:
    """Where the projection stands, read from Postgres every `every_s` by a task of the
    process (its probes and metrics read this, never Postgres): whichever process feeds it."""

    def __init__(self, pool: Pool, *, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.pool = pool
        self.clock_ns = clock_ns
        self.state: repo.State | None = None
        self.read_at_ns = 0

    def lag_s(self) -> float | None:
        if self.state is None:
            return None
        return lag_of(self.state, self.read_at_ns)

    async def refresh(self) -> None:
        async with self.pool.connection() as conn:
            self.state = await repo.read_state(conn)
        self.read_at_ns = self.clock_ns()

    async def run(self, every_s: float = 1.0) -> None:
        while True:
            try:
                await self.refresh()
            except (psycopg.Error, OSError) as error:
                _logger.warning("reading the projection's state: %s", error)
            await asyncio.sleep(every_s)
