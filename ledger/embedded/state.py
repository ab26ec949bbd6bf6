"""TigerBeetle's state machine, in memory, deterministic, with no I/O.

This module mirrors `src/state_machine.zig` of TigerBeetle 0.17 for every operation the project
uses. Invariants:

- The state changes only through `create_accounts`, `create_transfers` and `pulse`, each given
  its cluster timestamp by the caller. Given the same sequence of (operation, timestamp, events),
  two state machines reach byte-identical states (`canonical_bytes`): that is what makes the
  journal's replay exact.
- Validation follows TigerBeetle's order of precedence, so the same bad event gets the same
  status from the embedded engine and from a real cluster.
- A linked chain is all or nothing: the effects of its events are recorded in an undo log and
  rolled back, in reverse, when an event of the chain fails.
- Per ledger, the sum of debits equals the sum of credits, posted and pending, after every event.

Events travel as tuples, not dataclasses, because this loop is the embedded engine's hot path:
- account tuple  (id, debits_pending, debits_posted, credits_pending, credits_posted,
                  user_data_128, user_data_64, user_data_32, ledger, code, flags, timestamp)
- transfer tuple (id, debit_account_id, credit_account_id, amount, pending_id, user_data_128,
                  user_data_64, user_data_32, timeout, ledger, code, flags, timestamp)
A stored account is a list with the account tuple's layout (its balances change in place); a
stored transfer is a tuple (it never changes once created).
"""

from __future__ import annotations

import heapq
import itertools
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ledger.embedded.store import Checkpoint, HistoryStore, Layer
from ledger.limits import (
    BATCH_EVENTS_MAX,
    CACHE_TRANSFERS_MAX,
    TIMESTAMP_MAX,
    TIMESTAMP_MIN,
    U128_MAX,
)
from ledger.types import CreateAccountStatus as A
from ledger.types import CreateTransferStatus as T

# Transfers of a layer the store has that each request frees (about half a millisecond).
FREE_SLICE = 1024

AccountTuple = tuple[int, int, int, int, int, int, int, int, int, int, int, int]
TransferTuple = tuple[int, int, int, int, int, int, int, int, int, int, int, int, int]

# Account flag bits.
AF_LINKED = 1
AF_DEBITS_MUST_NOT_EXCEED_CREDITS = 2
AF_CREDITS_MUST_NOT_EXCEED_DEBITS = 4
AF_HISTORY = 8
AF_IMPORTED = 16
AF_CLOSED = 32
AF_PADDING = 0xFFFF & ~0x3F

# Transfer flag bits.
TF_LINKED = 1
TF_PENDING = 2
TF_POST = 4
TF_VOID = 8
TF_BALANCING_DEBIT = 16
TF_BALANCING_CREDIT = 32
TF_CLOSING_DEBIT = 64
TF_CLOSING_CREDIT = 128
TF_IMPORTED = 256
TF_PADDING = 0xFFFF & ~0x1FF

# Status of a pending transfer (TigerBeetle's TransferPendingStatus).
PENDING = 1
POSTED = 2
VOIDED = 3
EXPIRED = 4

NS_PER_S = 1_000_000_000

# Account list indexes.
_ID, _DP, _DPO, _CP, _CPO, _U128, _U64, _U32, _LEDGER, _CODE, _FLAGS, _TS = range(12)

# Transfer statuses that leave the transfer id unusable: a transient failure must be retried
# with a new id (TigerBeetle's `CreateTransferStatus.transient()`).
TRANSIENT = frozenset(
    {
        T.DEBIT_ACCOUNT_NOT_FOUND,
        T.CREDIT_ACCOUNT_NOT_FOUND,
        T.PENDING_TRANSFER_NOT_FOUND,
        T.EXCEEDS_CREDITS,
        T.EXCEEDS_DEBITS,
        T.DEBIT_ACCOUNT_ALREADY_CLOSED,
        T.CREDIT_ACCOUNT_ALREADY_CLOSED,
    }
)

_T_CREATED = T.CREATED
_A_CREATED = A.CREATED


class StateMachine:
    """The ledger's state and TigerBeetle's rules for changing it."""

    def __init__(self, store: HistoryStore | None = None) -> None:
        self.accounts: dict[int, list[int]] = {}
        # Accounts in timestamp order, for query_accounts.
        self.account_log: list[list[int]] = []
        self.account_log_ts: list[int] = []
        # How many of `account_log` the store has (a checkpoint writes those after them, and
        # those its layer changed, not all of them).
        self.accounts_stored = 0
        # Transfers live in layers, oldest first: the store (on disk, when there is one), the
        # layer a checkpoint is writing to it (`frozen`), and the newest layer (`mem`), whose
        # parts the attributes below name.
        self.store = store
        # Whether some transfers may be outside the newest layer: with a store, always (a
        # frozen layer needs a store too), so that the hot path tests one attribute.
        self.cold = store is not None
        self.frozen: Layer | None = None
        self._frozen_written = False
        self._dying: list[Layer] = []  # layers the store has, freed a slice per request
        self._bind(Layer())
        # Pending transfers whose status is still pending, by id: live state, always whole.
        self.live: dict[int, TransferTuple] = {}
        # What was read from the store for the requests at hand (transfers by id, final
        # statuses by id, ids that failed): emptied when it grows past CACHE_TRANSFERS_MAX.
        self.cache: dict[int, TransferTuple] = {}
        self.status_cache: dict[int, int] = {}
        self.orphan_cache: set[int] = set()
        # (expires_at, timestamp, id) of pending transfers with a timeout. Entries of posted,
        # voided or rolled-back transfers stay until they reach the top and are skipped.
        self.expiry_heap: list[tuple[int, int, int]] = []
        self.account_timestamps: set[int] = set()
        self.last_transfer_ts = 0  # of the newest transfer in any layer
        self._last_ts_before_mem = 0
        self.commit_timestamp = 0
        self.prepare_timestamp = 0
        self._undo: list[tuple[Any, ...]] | None = None

    def _bind(self, layer: Layer) -> None:
        """Makes `layer` the newest: the hot path reaches its parts as attributes."""
        self.mem = layer
        self.transfers = layer.transfers
        self.transfer_log = layer.log
        self.transfer_log_ts = layer.log_ts
        # Transfers of each account, in timestamp order, for get_account_transfers.
        self.account_transfers = layer.by_account
        # Balances after each transfer touching a history account, by transfer timestamp:
        # (dr_id, dr dp, dpo, cp, cpo, cr_id, cr dp, dpo, cp, cpo).
        self.history = layer.history
        # Pending transfers posted, voided or expired in this layer: id -> (status, timestamp).
        self.finished = layer.finished
        # Ids of transfers that failed with a transient status (`id_already_failed`).
        self.orphans = layer.orphans
        # Accounts an expiry changed (the others a layer changed are its `by_account` keys).
        self.touched = layer.touched

    # ---------------------------------------------------------------------------------------
    # Timestamps.

    def prepare(self, events_count: int, realtime_ns: int) -> int:
        """Assigns the cluster timestamp of a request, as TigerBeetle's primary does."""
        timestamp = max(max(self.prepare_timestamp, self.commit_timestamp) + 1, realtime_ns)
        timestamp += events_count
        assert TIMESTAMP_MIN <= timestamp <= TIMESTAMP_MAX
        self.prepare_timestamp = timestamp
        return timestamp

    def pulse_needed(self, timestamp: int) -> bool:
        heap = self.expiry_heap
        live = self.live
        while heap:
            _, ts, tid = heap[0]
            t = live.get(tid)
            if t is not None and t[12] == ts:
                return heap[0][0] <= timestamp
            heapq.heappop(heap)
        return False

    # ---------------------------------------------------------------------------------------
    # create_accounts / create_transfers: the batch driver with linked chains.

    def create_accounts(self, timestamp: int, events: Sequence[AccountTuple]) -> list[Any]:
        return self._execute(timestamp, events, self._create_account, A, False)

    def create_transfers(self, timestamp: int, events: Sequence[TransferTuple]) -> list[Any]:
        if self.cold:
            self._prefetch(events)
        return self._execute(timestamp, events, self._create_transfer, T, True)

    # ---------------------------------------------------------------------------------------
    # Layers: what is older than the newest layer, read ahead of a request (TigerBeetle's
    # prefetch), so that the request itself runs in memory.

    def _get(self, tid: int) -> TransferTuple | None:
        """The transfer `tid`, from memory: every layer, the live pending transfers (however
        old), and what was read ahead."""
        t = self.transfers.get(tid)
        if t is None:
            frozen = self.frozen
            if frozen is not None:
                t = frozen.transfers.get(tid)
            if t is None:
                t = self.live.get(tid)
                if t is None:
                    t = self.cache.get(tid)
        return t

    def _is_orphan(self, tid: int) -> bool:
        if tid in self.orphans or tid in self.orphan_cache:
            return True
        frozen = self.frozen
        return frozen is not None and tid in frozen.orphans

    def _final_status(self, tid: int) -> int:
        """The status of pending transfer `tid`, which is not pending any more."""
        done = self.finished.get(tid)
        if done is None and self.frozen is not None:
            done = self.frozen.finished.get(tid)
        if done is not None:
            return done[0]
        return self.status_cache[tid]

    def _prefetch(self, events: Sequence[TransferTuple]) -> None:
        """Reads what `events` may need from the store: the transfers of their ids and
        pending ids, whether their ids failed before, and the statuses of their pending
        transfers. What the store, the frozen layer and the live pending transfers hold of
        their ids goes into `cache` (and `orphan_cache`), which `_create_transfer` reads after
        the newest layer."""
        store = self.store
        if len(self.cache) > CACHE_TRANSFERS_MAX:
            self.cache.clear()
            self.status_cache.clear()
            self.orphan_cache.clear()
        if store is None:
            return
        live = self.live
        cache = self.cache
        # (In comprehensions, not a loop over each event's two ids: 0.28 against 0.45 ms for a
        # request of 2,500 transfers.)
        naming = [e for e in events if e[4]]  # the events that name a pending transfer
        ids = [e[0] for e in events]
        ids += [e[4] for e in naming]
        held = [tid for tid in ids if tid in live] if live else None
        if held:
            for tid in held:
                # An earlier event of this request may post or void it (it then leaves
                # `live`): it stays at hand for the events after it.
                cache[tid] = live[tid]
            live_ids = set(held)
            named = [tid for tid in ids if tid and tid not in live_ids]
        else:
            named = [tid for tid in ids if tid]
        frozen = self.frozen
        if frozen is not None:
            # The layer a checkpoint is writing: the store's filter does not know its ids yet.
            in_frozen = frozen.transfers
            for tid in [tid for tid in named if tid in in_frozen]:
                cache[tid] = in_frozen[tid]
            if frozen.orphans:
                self.orphan_cache |= frozen.orphans.intersection(named)
        want = {
            tid
            for tid in store.ids.maybe(named)
            if self._get(tid) is None and not self._is_orphan(tid)
        }
        if want:
            found, orphans = store.find(list(want))
            self.cache.update(found)
            self.orphan_cache |= orphans
        stamps: dict[int, int] = {}
        for e in naming:
            pid = e[4]
            if pid in live or pid in self.status_cache or not e[11] & (TF_POST | TF_VOID):
                continue
            if pid in self.finished or (self.frozen is not None and pid in self.frozen.finished):
                continue
            p = self._get(pid)
            if p is not None and p[11] & TF_PENDING:
                stamps[p[12]] = pid
        if stamps:
            for ts, status in store.statuses(list(stamps)).items():
                self.status_cache[stamps[ts]] = status

    def freeze(self, record: int) -> Checkpoint:
        """Starts a new newest layer; the one before is what a checkpoint at `record` (the
        number of journal records applied) writes to the store, with the live state."""
        assert self.store is not None and self.frozen is None and self._undo is None
        layer = self.mem
        self.frozen = layer
        self._frozen_written = False
        self._bind(Layer())
        self._last_ts_before_mem = self.last_transfer_ts
        return Checkpoint(
            layer=layer,
            record=record,
            commit_timestamp=self.commit_timestamp,
            prepare_timestamp=self.prepare_timestamp,
            last_transfer_ts=self.last_transfer_ts,
            accounts=self._changed_accounts(layer),
            pending=list(self.live.values()),
        )

    def _changed_accounts(self, layer: Layer) -> list[list[int]]:
        """Copies of the accounts created since the last checkpoint, and of those `layer`
        changed: a checkpoint writes only these (all of them, at 1 million accounts, held the
        lock for 215 ms and then the GIL for 299 ms, at every checkpoint: `bench.checkpoint
        --accounts`). Every change of a balance or flag is a transfer of the layer
        (`_insert_transfer` lists it under both accounts, and an undone one leaves the key) or
        an expiry (`touched`)."""
        log, accounts = self.account_log, self.accounts
        created = log[self.accounts_stored :]
        self.accounts_stored = len(log)  # (a checkpoint that fails is written again, whole)
        changed = [list(a) for a in created]
        before = created[0][_TS] if created else TIMESTAMP_MAX + 1
        for aid in layer.by_account.keys() | layer.touched:
            a = accounts.get(aid)
            if a is not None and a[_TS] < before:
                changed.append(list(a))
        return changed

    def written(self) -> None:
        """The frozen layer is in the store (called from the checkpoint's thread)."""
        self._frozen_written = True

    def settle(self, events: int = 0) -> None:
        """Lets go of the frozen layer once the store has it (called before each request, of
        `events` events), and frees a slice of the layers let go of: at least twice as many
        transfers as the request can make, so that a layer is gone before the next one comes
        (a fixed slice fell behind batches, and memory grew with the history)."""
        frozen = self.frozen
        if frozen is not None and self._frozen_written:
            assert self.store is not None
            if frozen.log_ts:
                self.store.visible_ts = frozen.log_ts[-1]
            self.frozen = None
            self._dying.append(frozen)
        if self._dying:
            self._free_some(max(FREE_SLICE, 2 * events))

    def _free_some(self, budget: int) -> None:
        """Frees about `budget` transfers of the layers let go of. Freeing a whole layer at
        once held the GIL, and every request, for 127 ms (254,000 transfers: 1.5 million
        objects); in slices, a single request pays about half a millisecond, a batch a few
        percent of its own time. Dropping the other references first (the lists by account,
        the index by id) frees nothing, so it is cheap; the transfers go with the log."""
        while budget > 0 and self._dying:
            layer = self._dying[0]
            layer.by_account.clear()
            layer.transfers.clear()
            layer.finished.clear()
            layer.orphans.clear()
            layer.touched.clear()
            if layer.log:
                n = min(budget, len(layer.log))
                del layer.log[-n:]
                budget -= n
            elif layer.log_ts:
                n = min(8 * budget, len(layer.log_ts))
                del layer.log_ts[-n:]
                budget -= n // 8 + 1
            elif layer.history:
                n = min(budget, len(layer.history))
                for _ in range(n):
                    layer.history.popitem()
                budget -= n
            else:
                self._dying.pop(0)

    def _execute(
        self, timestamp: int, events: Sequence[Any], create: Any, statuses: Any, transfers: bool
    ) -> list[Any]:
        """Returns [(status, timestamp)] per event: TigerBeetle's `execute_create`."""
        n = len(events)
        assert n <= BATCH_EVENTS_MAX
        results: list[Any] = []
        chain: int | None = None
        chain_broken = False
        flags_index = 11 if transfers else 10
        imported_bit = TF_IMPORTED if transfers else AF_IMPORTED
        batch_imported = n > 0 and bool(events[0][flags_index] & imported_bit)
        created = statuses.CREATED
        base = timestamp - n
        for index, event in enumerate(events):
            ts_event = base + index + 1
            linked = event[flags_index] & 1
            status: Any = None
            ts_actual = ts_event
            if linked:
                if chain is None:
                    chain = index
                    self._undo = []
                if index == n - 1:
                    status = statuses.LINKED_EVENT_CHAIN_OPEN
            if status is None:
                if chain_broken:
                    status = statuses.LINKED_EVENT_FAILED
                else:
                    status = self._check_timestamp(
                        event, imported_bit, batch_imported, timestamp, statuses
                    )
                    if status is None:
                        status, ts_actual = create(ts_event, event)
            if status is not created:
                if chain is not None and not chain_broken:
                    chain_broken = True
                    self._rollback()
                    failed = statuses.LINKED_EVENT_FAILED
                    for i in range(chain, index):
                        results[i] = (failed, results[i][1])
                if transfers and status in TRANSIENT:
                    self.orphans.add(event[0])
            results.append((status, ts_actual))
            if chain is not None and (not linked or index == n - 1):
                chain = None
                chain_broken = False
                self._undo = None
        return results

    @staticmethod
    def _check_timestamp(
        event: Any, imported_bit: int, batch_imported: bool, timestamp: int, statuses: Any
    ) -> Any:
        """The batch-level checks of `execute_create`, before the event's own validation."""
        imported = bool(event[-2] & imported_bit)
        if batch_imported != imported:
            return (
                statuses.IMPORTED_EVENT_NOT_EXPECTED
                if imported
                else statuses.IMPORTED_EVENT_EXPECTED
            )
        ts = event[-1]
        if imported:
            if not TIMESTAMP_MIN <= ts <= TIMESTAMP_MAX:
                return statuses.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE
            if ts >= timestamp:
                return statuses.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE
        elif ts != 0:
            return statuses.TIMESTAMP_MUST_BE_ZERO
        return None

    def _rollback(self) -> None:
        undo = self._undo
        assert undo is not None
        for entry in reversed(undo):
            if entry[0] == 0:
                self._undo_account(entry)
            else:
                self._undo_transfer(entry)
        undo.clear()

    # ---------------------------------------------------------------------------------------
    # create_account.

    def _create_account(self, ts_event: int, a: AccountTuple) -> tuple[Any, int]:
        flags = a[10]
        if flags & AF_PADDING:
            return A.RESERVED_FLAG, ts_event
        aid = a[0]
        if aid == 0:
            return A.ID_MUST_NOT_BE_ZERO, ts_event
        if aid == U128_MAX:
            return A.ID_MUST_NOT_BE_INT_MAX, ts_event
        e = self.accounts.get(aid)
        if e is not None:
            return self._account_exists(a, e, ts_event)
        both = AF_DEBITS_MUST_NOT_EXCEED_CREDITS | AF_CREDITS_MUST_NOT_EXCEED_DEBITS
        if flags & both == both:
            return A.FLAGS_ARE_MUTUALLY_EXCLUSIVE, ts_event
        if a[1] != 0:
            return A.DEBITS_PENDING_MUST_BE_ZERO, ts_event
        if a[2] != 0:
            return A.DEBITS_POSTED_MUST_BE_ZERO, ts_event
        if a[3] != 0:
            return A.CREDITS_PENDING_MUST_BE_ZERO, ts_event
        if a[4] != 0:
            return A.CREDITS_POSTED_MUST_BE_ZERO, ts_event
        if a[8] == 0:
            return A.LEDGER_MUST_NOT_BE_ZERO, ts_event
        if a[9] == 0:
            return A.CODE_MUST_NOT_BE_ZERO, ts_event
        ts = ts_event
        if flags & AF_IMPORTED:
            ts = a[11]
            if (self.account_log_ts and ts <= self.account_log_ts[-1]) or self._transfer_at(ts):
                return A.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS, ts_event
        account = [aid, 0, 0, 0, 0, a[5], a[6], a[7], a[8], a[9], flags, ts]
        self.accounts[aid] = account
        self.account_log.append(account)
        self.account_log_ts.append(ts)
        self.account_timestamps.add(ts)
        if self._undo is not None:
            self._undo.append((0, aid, ts, self.commit_timestamp))
        self.commit_timestamp = ts
        return _A_CREATED, ts

    def _undo_account(self, entry: tuple[Any, ...]) -> None:
        _, aid, ts, commit_timestamp = entry
        del self.accounts[aid]
        self.account_log.pop()
        self.account_log_ts.pop()
        self.account_timestamps.discard(ts)
        self.account_transfers.pop(aid, None)
        self.commit_timestamp = commit_timestamp

    @staticmethod
    def _account_exists(a: AccountTuple, e: list[int], ts_event: int) -> tuple[Any, int]:
        if a[10] != e[_FLAGS]:
            return A.EXISTS_WITH_DIFFERENT_FLAGS, ts_event
        if a[5] != e[_U128]:
            return A.EXISTS_WITH_DIFFERENT_USER_DATA_128, ts_event
        if a[6] != e[_U64]:
            return A.EXISTS_WITH_DIFFERENT_USER_DATA_64, ts_event
        if a[7] != e[_U32]:
            return A.EXISTS_WITH_DIFFERENT_USER_DATA_32, ts_event
        if a[8] != e[_LEDGER]:
            return A.EXISTS_WITH_DIFFERENT_LEDGER, ts_event
        if a[9] != e[_CODE]:
            return A.EXISTS_WITH_DIFFERENT_CODE, ts_event
        return A.EXISTS, e[_TS]

    def _transfer_at(self, timestamp: int) -> bool:
        layers = [self.transfer_log_ts]
        if self.frozen is not None:
            layers.append(self.frozen.log_ts)
        for log_ts in layers:
            i = bisect_left(log_ts, timestamp)
            if i < len(log_ts) and log_ts[i] == timestamp:
                return True
        return self.store is not None and self.store.has_transfer_at(timestamp)

    # ---------------------------------------------------------------------------------------
    # create_transfer.

    def _create_transfer(self, ts_event: int, t: TransferTuple) -> tuple[Any, int]:
        (tid, dr_id, cr_id, amount, pending_id, _, _, _, timeout, ledger, code, flags, _) = t
        if flags & TF_PADDING:
            return T.RESERVED_FLAG, ts_event
        if tid == 0:
            return T.ID_MUST_NOT_BE_ZERO, ts_event
        if tid == U128_MAX:
            return T.ID_MUST_NOT_BE_INT_MAX, ts_event
        e = self.transfers.get(tid)
        if e is None and self.cold:
            # `_prefetch` put what the other layers, the store and the live pending transfers
            # hold of this request's ids in the cache (one lookup here instead of four).
            e = self.cache.get(tid)
        if e is not None:
            return self._transfer_exists(t, e, ts_event)
        if tid in self.orphans or (self.cold and tid in self.orphan_cache):
            return T.ID_ALREADY_FAILED, ts_event
        if flags & (TF_POST | TF_VOID):
            return self._post_or_void(ts_event, t)
        if dr_id == 0:
            return T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO, ts_event
        if dr_id == U128_MAX:
            return T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX, ts_event
        if cr_id == 0:
            return T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO, ts_event
        if cr_id == U128_MAX:
            return T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX, ts_event
        if cr_id == dr_id:
            return T.ACCOUNTS_MUST_BE_DIFFERENT, ts_event
        if pending_id != 0:
            return T.PENDING_ID_MUST_BE_ZERO, ts_event
        pending = flags & TF_PENDING
        if not pending:
            if timeout != 0:
                return T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER, ts_event
            if flags & (TF_CLOSING_DEBIT | TF_CLOSING_CREDIT):
                return T.CLOSING_TRANSFER_MUST_BE_PENDING, ts_event
        if ledger == 0:
            return T.LEDGER_MUST_NOT_BE_ZERO, ts_event
        if code == 0:
            return T.CODE_MUST_NOT_BE_ZERO, ts_event
        accounts = self.accounts
        dr = accounts.get(dr_id)
        if dr is None:
            return T.DEBIT_ACCOUNT_NOT_FOUND, ts_event
        cr = accounts.get(cr_id)
        if cr is None:
            return T.CREDIT_ACCOUNT_NOT_FOUND, ts_event
        if dr[_LEDGER] != cr[_LEDGER]:
            return T.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER, ts_event
        if ledger != dr[_LEDGER]:
            return T.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS, ts_event
        ts = ts_event
        if flags & TF_IMPORTED:
            status = self._check_imported_transfer(t, dr, cr)
            if status is not None:
                return status, ts_event
            ts = t[12]
        if dr[_FLAGS] & AF_CLOSED:
            return T.DEBIT_ACCOUNT_ALREADY_CLOSED, ts_event
        if cr[_FLAGS] & AF_CLOSED:
            return T.CREDIT_ACCOUNT_ALREADY_CLOSED, ts_event

        if flags & TF_BALANCING_DEBIT:
            headroom = dr[_CPO] - dr[_DPO] - dr[_DP]
            amount = min(amount, headroom if headroom > 0 else 0)
        if flags & TF_BALANCING_CREDIT:
            headroom = cr[_DPO] - cr[_CPO] - cr[_CP]
            amount = min(amount, headroom if headroom > 0 else 0)

        # Three terms under 2^126 cannot pass 2^128 - 1: the usual case skips the six checks.
        if (amount | dr[_DP] | dr[_DPO] | cr[_CP] | cr[_CPO]) >> 126:
            if pending:
                if amount + dr[_DP] > U128_MAX:
                    return T.OVERFLOWS_DEBITS_PENDING, ts_event
                if amount + cr[_CP] > U128_MAX:
                    return T.OVERFLOWS_CREDITS_PENDING, ts_event
            if amount + dr[_DPO] > U128_MAX:
                return T.OVERFLOWS_DEBITS_POSTED, ts_event
            if amount + cr[_CPO] > U128_MAX:
                return T.OVERFLOWS_CREDITS_POSTED, ts_event
            if amount + dr[_DP] + dr[_DPO] > U128_MAX:
                return T.OVERFLOWS_DEBITS, ts_event
            if amount + cr[_CP] + cr[_CPO] > U128_MAX:
                return T.OVERFLOWS_CREDITS, ts_event
        if ts + timeout * NS_PER_S > TIMESTAMP_MAX:
            return T.OVERFLOWS_TIMEOUT, ts_event
        if dr[_FLAGS] & AF_DEBITS_MUST_NOT_EXCEED_CREDITS and (
            dr[_DP] + dr[_DPO] + amount > dr[_CPO]
        ):
            return T.EXCEEDS_CREDITS, ts_event
        if cr[_FLAGS] & AF_CREDITS_MUST_NOT_EXCEED_DEBITS and (
            cr[_CP] + cr[_CPO] + amount > cr[_DPO]
        ):
            return T.EXCEEDS_DEBITS, ts_event

        # From here on the transfer succeeds.
        stored = (tid, dr_id, cr_id, amount, 0, t[5], t[6], t[7], timeout, ledger, code, flags, ts)
        if self._undo is not None:
            self._remember(stored, dr, cr, None)
        if pending:
            dr[_DP] += amount
            cr[_CP] += amount
            self.live[tid] = stored
            if timeout:
                heapq.heappush(self.expiry_heap, (ts + timeout * NS_PER_S, ts, tid))
        else:
            dr[_DPO] += amount
            cr[_CPO] += amount
        if flags & TF_CLOSING_DEBIT:
            dr[_FLAGS] |= AF_CLOSED
        if flags & TF_CLOSING_CREDIT:
            cr[_FLAGS] |= AF_CLOSED
        self._insert_transfer(stored, dr, cr)
        return _T_CREATED, ts

    def _insert_transfer(self, stored: TransferTuple, dr: list[int], cr: list[int]) -> None:
        ts = stored[12]
        self.transfers[stored[0]] = stored
        self.transfer_log.append(stored)
        self.transfer_log_ts.append(ts)
        self.last_transfer_ts = ts
        account_transfers = self.account_transfers
        xs = account_transfers.get(dr[_ID])
        if xs is None:
            account_transfers[dr[_ID]] = [stored]
        else:
            xs.append(stored)
        xs = account_transfers.get(cr[_ID])
        if xs is None:
            account_transfers[cr[_ID]] = [stored]
        else:
            xs.append(stored)
        if (dr[_FLAGS] | cr[_FLAGS]) & AF_HISTORY:
            self.history[ts] = (
                dr[_ID],
                dr[_DP],
                dr[_DPO],
                dr[_CP],
                dr[_CPO],
                cr[_ID],
                cr[_DP],
                cr[_DPO],
                cr[_CP],
                cr[_CPO],
            )
        self.commit_timestamp = ts

    def _remember(self, stored: TransferTuple, dr: list[int], cr: list[int], pending: Any) -> None:
        """Records what a transfer of an open chain is about to change, to undo it."""
        assert self._undo is not None
        self._undo.append(
            (
                1,
                stored,
                dr,
                dr[1:5],
                dr[_FLAGS],
                cr,
                cr[1:5],
                cr[_FLAGS],
                pending,
                self.commit_timestamp,
            )
        )

    def _undo_transfer(self, entry: tuple[Any, ...]) -> None:
        _, stored, dr, dr_balances, dr_flags, cr, cr_balances, cr_flags, pending, commit_ts = entry
        tid = stored[0]
        del self.transfers[tid]
        self.transfer_log.pop()
        self.transfer_log_ts.pop()
        log_ts = self.transfer_log_ts
        self.last_transfer_ts = log_ts[-1] if log_ts else self._last_ts_before_mem
        self.account_transfers[dr[_ID]].pop()
        self.account_transfers[cr[_ID]].pop()
        self.history.pop(stored[12], None)
        dr[1:5] = dr_balances
        dr[_FLAGS] = dr_flags
        cr[1:5] = cr_balances
        cr[_FLAGS] = cr_flags
        if stored[11] & TF_PENDING:
            del self.live[tid]
        if pending:
            del self.finished[pending[0]]
            self.live[pending[0]] = pending
        self.commit_timestamp = commit_ts

    def _check_imported_transfer(self, t: TransferTuple, dr: list[int], cr: list[int]) -> Any:
        ts = t[12]
        if ts <= self.last_transfer_ts or ts in self.account_timestamps:
            return T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS
        if ts <= dr[_TS]:
            return T.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_DEBIT_ACCOUNT
        if ts <= cr[_TS]:
            return T.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_CREDIT_ACCOUNT
        if t[8] != 0:
            return T.IMPORTED_EVENT_TIMEOUT_MUST_BE_ZERO
        return None

    def _transfer_exists(
        self, t: TransferTuple, e: TransferTuple, ts_event: int
    ) -> tuple[Any, int]:
        flags = t[11]
        if flags != e[11]:
            return T.EXISTS_WITH_DIFFERENT_FLAGS, ts_event
        if t[4] != e[4]:
            return T.EXISTS_WITH_DIFFERENT_PENDING_ID, ts_event
        if t[8] != e[8]:
            return T.EXISTS_WITH_DIFFERENT_TIMEOUT, ts_event
        if flags & (TF_POST | TF_VOID):
            p = self._get(t[4])
            assert p is not None
            return self._post_or_void_exists(t, e, p, ts_event)
        if t[1] != e[1]:
            return T.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID, ts_event
        if t[2] != e[2]:
            return T.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID, ts_event
        if flags & (TF_BALANCING_DEBIT | TF_BALANCING_CREDIT):
            if t[3] < e[3]:
                return T.EXISTS_WITH_DIFFERENT_AMOUNT, ts_event
        elif t[3] != e[3]:
            return T.EXISTS_WITH_DIFFERENT_AMOUNT, ts_event
        if t[5] != e[5]:
            return T.EXISTS_WITH_DIFFERENT_USER_DATA_128, ts_event
        if t[6] != e[6]:
            return T.EXISTS_WITH_DIFFERENT_USER_DATA_64, ts_event
        if t[7] != e[7]:
            return T.EXISTS_WITH_DIFFERENT_USER_DATA_32, ts_event
        if t[9] != e[9]:
            return T.EXISTS_WITH_DIFFERENT_LEDGER, ts_event
        if t[10] != e[10]:
            return T.EXISTS_WITH_DIFFERENT_CODE, ts_event
        return T.EXISTS, e[12]

    @staticmethod
    def _post_or_void_exists(
        t: TransferTuple, e: TransferTuple, p: TransferTuple, ts_event: int
    ) -> tuple[Any, int]:
        if t[1] != 0 and t[1] != e[1]:
            return T.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID, ts_event
        if t[2] != 0 and t[2] != e[2]:
            return T.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID, ts_event
        amount = t[3]
        if t[11] & TF_VOID:
            if (e[3] != p[3]) if amount == 0 else (amount != e[3]):
                return T.EXISTS_WITH_DIFFERENT_AMOUNT, ts_event
        if t[11] & TF_POST:
            if (e[3] != p[3]) if amount == U128_MAX else (amount != e[3]):
                return T.EXISTS_WITH_DIFFERENT_AMOUNT, ts_event
        for i, status in (
            (5, T.EXISTS_WITH_DIFFERENT_USER_DATA_128),
            (6, T.EXISTS_WITH_DIFFERENT_USER_DATA_64),
            (7, T.EXISTS_WITH_DIFFERENT_USER_DATA_32),
        ):
            if (e[i] != p[i]) if t[i] == 0 else (t[i] != e[i]):
                return status, ts_event
        if t[9] != 0 and t[9] != e[9]:
            return T.EXISTS_WITH_DIFFERENT_LEDGER, ts_event
        if t[10] != 0 and t[10] != e[10]:
            return T.EXISTS_WITH_DIFFERENT_CODE, ts_event
        return T.EXISTS, e[12]

    def _post_or_void(self, ts_event: int, t: TransferTuple) -> tuple[Any, int]:
        (tid, dr_id, cr_id, amount, pending_id, u128, u64, u32, timeout, ledger, code, flags, _) = t
        post = flags & TF_POST
        void = flags & TF_VOID
        if post and void:
            return T.FLAGS_ARE_MUTUALLY_EXCLUSIVE, ts_event
        if flags & (
            TF_PENDING
            | TF_BALANCING_DEBIT
            | TF_BALANCING_CREDIT
            | TF_CLOSING_DEBIT
            | TF_CLOSING_CREDIT
        ):
            return T.FLAGS_ARE_MUTUALLY_EXCLUSIVE, ts_event
        if pending_id == 0:
            return T.PENDING_ID_MUST_NOT_BE_ZERO, ts_event
        if pending_id == U128_MAX:
            return T.PENDING_ID_MUST_NOT_BE_INT_MAX, ts_event
        if pending_id == tid:
            return T.PENDING_ID_MUST_BE_DIFFERENT, ts_event
        if timeout != 0:
            return T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER, ts_event
        p = self.live.get(pending_id)
        if p is None:
            p = self._get(pending_id)
        if p is None:
            return T.PENDING_TRANSFER_NOT_FOUND, ts_event
        if not p[11] & TF_PENDING:
            return T.PENDING_TRANSFER_NOT_PENDING, ts_event
        dr = self.accounts[p[1]]
        cr = self.accounts[p[2]]
        if dr_id and dr_id != p[1]:
            return T.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID, ts_event
        if cr_id and cr_id != p[2]:
            return T.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID, ts_event
        if ledger and ledger != p[9]:
            return T.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER, ts_event
        if code and code != p[10]:
            return T.PENDING_TRANSFER_HAS_DIFFERENT_CODE, ts_event
        p_amount = p[3]
        if void:
            amount = p_amount if amount == 0 else amount
        else:
            amount = p_amount if amount == U128_MAX else amount
        if amount > p_amount:
            return T.EXCEEDS_PENDING_TRANSFER_AMOUNT, ts_event
        if void and amount < p_amount:
            return T.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT, ts_event
        status = PENDING if pending_id in self.live else self._final_status(pending_id)
        if status == POSTED:
            return T.PENDING_TRANSFER_ALREADY_POSTED, ts_event
        if status == VOIDED:
            return T.PENDING_TRANSFER_ALREADY_VOIDED, ts_event
        if status == EXPIRED:
            return T.PENDING_TRANSFER_EXPIRED, ts_event
        if p[8] and p[12] + p[8] * NS_PER_S <= ts_event:
            return T.PENDING_TRANSFER_EXPIRED, ts_event
        ts = ts_event
        if flags & TF_IMPORTED:
            if t[12] <= self.last_transfer_ts or t[12] in self.account_timestamps:
                return T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS, ts_event
            ts = t[12]
        if not void:
            if dr[_FLAGS] & AF_CLOSED:
                return T.DEBIT_ACCOUNT_ALREADY_CLOSED, ts_event
            if cr[_FLAGS] & AF_CLOSED:
                return T.CREDIT_ACCOUNT_ALREADY_CLOSED, ts_event

        # From here on the transfer succeeds.
        stored = (
            tid,
            p[1],
            p[2],
            amount,
            pending_id,
            u128 or p[5],
            u64 or p[6],
            u32 or p[7],
            0,
            p[9],
            p[10],
            flags,
            ts,
        )
        if self._undo is not None:
            self._remember(stored, dr, cr, p)
        del self.live[pending_id]
        self.finished[pending_id] = (POSTED if post else VOIDED, p[12])
        dr[_DP] -= p_amount
        cr[_CP] -= p_amount
        if post:
            dr[_DPO] += amount
            cr[_CPO] += amount
        else:
            if p[11] & TF_CLOSING_DEBIT:
                dr[_FLAGS] &= ~AF_CLOSED
            if p[11] & TF_CLOSING_CREDIT:
                cr[_FLAGS] &= ~AF_CLOSED
        self._insert_transfer(stored, dr, cr)
        return _T_CREATED, ts

    # ---------------------------------------------------------------------------------------
    # Expiry of pending transfers.

    def pulse(self, timestamp: int) -> int:
        """Expires up to a batch of pending transfers whose timeout has passed by `timestamp`.

        TigerBeetle's `execute_expire_pending_transfers`: each expiry takes its own timestamp
        from the range the pulse reserved, in (expires_at, timestamp) order. Returns how many
        expired.
        """
        due: list[TransferTuple] = []
        heap = self.expiry_heap
        live = self.live
        while heap and len(due) < BATCH_EVENTS_MAX:
            expires_at, ts, tid = heap[0]
            t = live.get(tid)
            if t is None or t[12] != ts:
                heapq.heappop(heap)
                continue
            if expires_at > timestamp:
                break
            heapq.heappop(heap)
            due.append(t)
        base = timestamp - len(due)
        for index, p in enumerate(due):
            assert base + index + 1 > self.commit_timestamp
            dr = self.accounts[p[1]]
            cr = self.accounts[p[2]]
            dr[_DP] -= p[3]
            cr[_CP] -= p[3]
            self.touched.add(p[1])
            self.touched.add(p[2])
            if p[11] & TF_CLOSING_DEBIT:
                dr[_FLAGS] &= ~AF_CLOSED
            if p[11] & TF_CLOSING_CREDIT:
                cr[_FLAGS] &= ~AF_CLOSED
            del live[p[0]]
            self.finished[p[0]] = (EXPIRED, p[12])
            self.commit_timestamp = base + index + 1
        return len(due)

    # ---------------------------------------------------------------------------------------
    # Reads. They return tuples; the client layer turns them into TigerBeetle's dataclasses.

    def lookup_accounts(self, ids: Iterable[int]) -> list[list[int]]:
        accounts = self.accounts
        return [accounts[i] for i in ids if i in accounts]

    def lookup_transfers(self, ids: Iterable[int]) -> list[TransferTuple]:
        ids = list(ids)
        if not self.cold:
            transfers = self.transfers
            return [transfers[i] for i in ids if i in transfers]
        found: dict[int, TransferTuple] = {}
        missing: list[int] = []
        for i in ids:
            t = self._get(i)
            if t is None:
                missing.append(i)
            else:
                found[i] = t
        if missing and self.store is not None:
            found.update(self.store.find(missing)[0])
        return [found[i] for i in ids if i in found]

    def _layers(self) -> list[Layer]:
        """The layers in memory, oldest first."""
        return [self.mem] if self.frozen is None else [self.frozen, self.mem]

    def get_account_transfers(self, f: tuple[int, ...]) -> list[TransferTuple]:
        """`f` is an AccountFilter as a tuple: (account_id, user_data_128, user_data_64,
        user_data_32, code, timestamp_min, timestamp_max, limit, flags)."""
        account_id, u128, u64, u32, code, ts_min, ts_max, limit, flags = f
        if not _account_filter_valid(f):
            return []
        debits, credits, reversed_ = flags & 1, flags & 2, flags & 4
        out: list[TransferTuple] = []
        limit = min(limit, BATCH_EVENTS_MAX)
        for t in self._account_candidates(account_id, ts_min, ts_max, bool(reversed_)):
            if not ((debits and t[1] == account_id) or (credits and t[2] == account_id)):
                continue
            if (u128 and t[5] != u128) or (u64 and t[6] != u64) or (u32 and t[7] != u32):
                continue
            if code and t[10] != code:
                continue
            out.append(t)
            if len(out) >= limit:
                break
        return out

    def _account_candidates(
        self, account_id: int, ts_min: int, ts_max: int, reverse: bool
    ) -> Iterator[TransferTuple]:
        """The transfers of an account in [ts_min, ts_max] (0: open), in timestamp order,
        from the store and then each layer (or the other way round)."""
        parts: list[Iterator[TransferTuple]] = []
        for layer in self._layers():
            xs = layer.by_account.get(account_id, [])
            lo, hi = _timestamp_slice(xs, ts_min, ts_max)
            parts.append(_slice(xs, lo, hi, reverse))
        if self.store is not None:
            parts.insert(
                0,
                self.store.transfers_listed(b"A", account_id, ts_min, ts_max or _TS_OPEN, reverse),
            )
        if reverse:
            parts.reverse()
        return itertools.chain.from_iterable(parts)

    def get_account_balances(self, f: tuple[int, ...]) -> list[tuple[int, int, int, int, int]]:
        """Balances of a history account after each transfer that matches the filter:
        (debits_pending, debits_posted, credits_pending, credits_posted, timestamp)."""
        account = self.accounts.get(f[0])
        if account is None or not account[_FLAGS] & AF_HISTORY:
            return []
        transfers = self.get_account_transfers(f)
        history: dict[int, tuple[int, ...]] = {}
        missing: list[int] = []
        for t in transfers:
            for layer in self._layers():
                h = layer.history.get(t[12])
                if h is not None:
                    history[t[12]] = h
                    break
            else:
                missing.append(t[12])
        if missing and self.store is not None:
            history.update(self.store.history(missing))
        out = []
        for t in transfers:
            h = history[t[12]]
            side = h[1:5] if h[0] == f[0] else h[6:10]
            out.append((side[0], side[1], side[2], side[3], t[12]))
        return out

    def query_accounts(self, f: tuple[int, ...]) -> list[list[int]]:
        """`f` is a QueryFilter as a tuple: (user_data_128, user_data_64, user_data_32, ledger,
        code, timestamp_min, timestamp_max, limit, flags)."""
        if not _query_filter_valid(f):
            return []
        return _query(_log_candidates(self.account_log, self.account_log_ts, f), f, (5, 6, 7, 8, 9))

    def query_transfers(self, f: tuple[int, ...]) -> list[TransferTuple]:
        if not _query_filter_valid(f):
            return []
        u128, ts_min, ts_max, reverse = f[0], f[5], f[6], bool(f[8] & 1)
        parts = [_log_candidates(layer.log, layer.log_ts, f) for layer in self._layers()]
        store = self.store
        if store is not None:
            parts.insert(
                0,
                store.transfers_listed(b"U", u128, ts_min, ts_max or _TS_OPEN, reverse)
                if u128
                else store.scan(ts_min, ts_max or _TS_OPEN, reverse),
            )
        if reverse:
            parts.reverse()
        return _query(itertools.chain.from_iterable(parts), f, (5, 6, 7, 9, 10))

    # ---------------------------------------------------------------------------------------
    # The whole history (for tests, tools and the upgrade from snapshots).

    def all_transfers(self) -> Iterator[TransferTuple]:
        """Every transfer, in timestamp order."""
        if self.store is not None:
            yield from self.store.scan(0, _TS_OPEN, False)
        for layer in self._layers():
            yield from layer.log

    def status_of(self, tid: int) -> int:
        """The status of pending transfer `tid` (which must exist)."""
        if tid in self.live:
            return PENDING
        for layer in reversed(self._layers()):
            if tid in layer.finished:
                return layer.finished[tid][0]
        if tid not in self.status_cache:
            p = self._get(tid) or self.lookup_transfers([tid])[0]
            assert self.store is not None
            self.status_cache[tid] = self.store.statuses([p[12]])[p[12]]
        return self.status_cache[tid]

    @classmethod
    def from_export(cls, data: tuple[Any, ...], store: HistoryStore | None = None) -> StateMachine:
        """The state a snapshot of format 1 (the engine before the store) holds, all of its
        transfers in the newest layer (the upgrade then checkpoints it into `store`)."""
        version, commit_ts, prepare_ts, accounts, transfers, pending, orphans, history = data
        assert version == 1
        sm = cls(store)
        sm.commit_timestamp = commit_ts
        sm.prepare_timestamp = prepare_ts
        for a in accounts:
            sm.accounts[a[0]] = a
            sm.account_log.append(a)
            sm.account_log_ts.append(a[_TS])
            sm.account_timestamps.add(a[_TS])
        statuses = dict(pending)
        for t in transfers:
            t = tuple(t)
            sm.transfers[t[0]] = t
            sm.transfer_log.append(t)
            sm.transfer_log_ts.append(t[12])
            sm.account_transfers.setdefault(t[1], []).append(t)
            sm.account_transfers.setdefault(t[2], []).append(t)
            if t[11] & TF_PENDING:
                status = statuses[t[0]]
                if status == PENDING:
                    sm.live[t[0]] = t
                    if t[8]:
                        sm.expiry_heap.append((t[12] + t[8] * NS_PER_S, t[12], t[0]))
                else:
                    sm.finished[t[0]] = (status, t[12])
        heapq.heapify(sm.expiry_heap)
        sm.last_transfer_ts = sm.transfer_log_ts[-1] if sm.transfer_log_ts else 0
        sm.orphans.update(orphans)
        sm.history.update((ts, tuple(h)) for ts, h in history)
        return sm

    @classmethod
    def from_store(cls, store: HistoryStore) -> tuple[StateMachine, int | None]:
        """The state of the store's newest checkpoint, and the number of journal records it
        holds (None for a store never written)."""
        sm = cls(store)
        loaded = store.load()
        if loaded is None:
            return sm, None
        sm.commit_timestamp = loaded.commit_timestamp
        sm.prepare_timestamp = loaded.prepare_timestamp
        sm.last_transfer_ts = sm._last_ts_before_mem = loaded.last_transfer_ts
        for a in loaded.accounts:
            sm.accounts[a[0]] = a
            sm.account_log.append(a)
            sm.account_log_ts.append(a[_TS])
            sm.account_timestamps.add(a[_TS])
        if loaded.format >= 3:  # (else the next checkpoint writes them all, as keys)
            sm.accounts_stored = len(sm.account_log)
        for t in loaded.pending:
            sm.live[t[0]] = t
            if t[8]:
                sm.expiry_heap.append((t[12] + t[8] * NS_PER_S, t[12], t[0]))
        heapq.heapify(sm.expiry_heap)
        return sm, loaded.record

    def canonical_bytes(self) -> bytes:
        """A byte-exact, order-independent image of the state: equal states, equal bytes,
        however the transfers are spread over the store and the layers."""
        out = bytearray()
        pack = struct.Struct("<QQ").pack
        out += pack(self.commit_timestamp, self.prepare_timestamp)
        for a in sorted(self.accounts.values(), key=lambda a: a[_TS]):
            out += _ints(a)
        statuses: list[tuple[int, int]] = []
        for t in self.all_transfers():
            out += _ints(t)
            if t[11] & TF_PENDING:
                statuses.append((t[0], self.status_of(t[0])))
        for tid, status in sorted(statuses):
            out += _ints((tid, status))
        orphans = set(self.orphan_cache if self.store is None else self.store.orphan_ids())
        for layer in self._layers():
            orphans |= layer.orphans
        for tid in sorted(orphans):
            out += _ints((tid,))
        history = dict(self.store.all_history()) if self.store is not None else {}
        for layer in self._layers():
            history.update(layer.history)
        for ts, h in sorted(history.items()):
            out += _ints((ts, *h))
        return bytes(out)


def _ints(values: Iterable[int]) -> bytes:
    return b"".join(v.to_bytes(16, "little") for v in values)


def _timestamp_slice(xs: list[TransferTuple], ts_min: int, ts_max: int) -> tuple[int, int]:
    lo = bisect_left(xs, ts_min, key=_ts) if ts_min else 0
    hi = bisect_right(xs, ts_max, key=_ts) if ts_max else len(xs)
    return lo, hi


def _ts(t: TransferTuple) -> int:
    return t[12]


def _timestamps_valid(ts_min: int, ts_max: int) -> bool:
    return (
        (ts_min == 0 or TIMESTAMP_MIN <= ts_min <= TIMESTAMP_MAX)
        and (ts_max == 0 or TIMESTAMP_MIN <= ts_max <= TIMESTAMP_MAX)
        and (ts_max == 0 or ts_min <= ts_max)
    )


def _account_filter_valid(f: tuple[int, ...]) -> bool:
    account_id, _, _, _, _, ts_min, ts_max, limit, flags = f
    return (
        account_id != 0
        and account_id != U128_MAX
        and _timestamps_valid(ts_min, ts_max)
        and limit != 0
        and bool(flags & 3)
        and not flags & ~7
    )


def _query_filter_valid(f: tuple[int, ...]) -> bool:
    _, _, _, _, _, ts_min, ts_max, limit, flags = f
    return _timestamps_valid(ts_min, ts_max) and limit != 0 and not flags & ~1


_TS_OPEN = (1 << 64) - 1  # a timestamp_max of 0: no bound


def _log_candidates(log: list[Any], log_ts: list[int], f: tuple[int, ...]) -> Iterator[Any]:
    ts_min, ts_max, reverse = f[5], f[6], f[8] & 1
    lo = bisect_left(log_ts, ts_min) if ts_min else 0
    hi = bisect_right(log_ts, ts_max) if ts_max else len(log_ts)
    return _slice(log, lo, hi, bool(reverse))


def _slice(xs: list[Any], lo: int, hi: int, reverse: bool) -> Iterator[Any]:
    """xs[lo:hi], lazily, backwards if `reverse` (a function, so that each call has its own
    `xs`: a generator expression in a loop would read the loop's last one)."""
    for i in range(hi - 1, lo - 1, -1) if reverse else range(lo, hi):
        yield xs[i]


def _query(candidates: Iterable[Any], f: tuple[int, ...], fields: tuple[int, ...]) -> list[Any]:
    """The first `limit` of `candidates` (in the filter's order) that match the filter."""
    u128, u64, u32, ledger, code, _, _, limit, _ = f
    wanted = [(i, v) for i, v in zip(fields, (u128, u64, u32, ledger, code), strict=True) if v]
    limit = min(limit, BATCH_EVENTS_MAX)
    out: list[Any] = []
    for x in candidates:
        for field, value in wanted:
            if x[field] != value:
                break
        else:
            out.append(x)
            if len(out) >= limit:
                break
    return out
