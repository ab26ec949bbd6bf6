"""Reconciliation of the projection: the engine against the entries the feed wrote from it
(ledger/README.md, "Reconciliation of the projection", says what is compared and how to read
the differences). A run, with `w` the projection's watermark when it starts:

1. **The range**: the engine's transfers of engine time `from_ts..through_ts` (`from_ts` just
   after the range of the last run whose range was clean, `through_ts` = `w`, or earlier when
   the run has read PROJECTION_CHECK_TRANSFERS_MAX transfers), each that moved credits on an
   owned account added up per (credit type, code, form), against the same sums of the entries
   of that engine time. Forms: `posted` (a plain transfer), `pending`, `post`, `void` (a post
   of nothing counts as a void: it only releases), `timeout`. A movement is one transfer on one
   owned account; the sums are what left and entered owned accounts posted, and what pending
   they took on and gave back. Timeouts have no transfer: a pending leg created in the range
   timed out in it when no post or void of it came before its expiry and that expiry is at or
   before `through_ts`; a timeout entry of a leg created earlier is checked leg by leg (the
   pending transfer is looked up: its expiry, amount, code and account; that its reservation
   was never resolved is a lookup of the reservation's marker resolution, or, for reservations
   made before markers, a search of the leg's account over the leg's lifetime).
2. **The state**: every owned account on the engine (GRANT, OVERDRAFT, OVERDRAFT_UNBOUNDED,
   BUDGET; `query_accounts` by code), its balance at its last transfer at or before `w`
   (`get_account_balances`: owned accounts keep history) against the sums of its entries up to
   that transfer. The entries' pending may exceed the engine's by what timeouts of the window
   just before that transfer released, latest first: the engine releases expired legs before a
   request, not between the events of one.
3. **The catalog**: engine owned accounts that the catalog does not know (a grant, wallet or
   budget with that id and credit type), issued grants and wallets whose accounts the engine
   does not have, and accounts with entries that the engine does not have.

Each run is recorded in `projection_checks`, logged (one line per kind of difference) and kept
for the metrics. The engine is only read; nothing here writes the projection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import msgspec

from ledger.client import Ledger
from ledger.clock import datetime_of_ns
from ledger.codes import OWNED_ACCOUNT_CODES, AccountCode, TransferCode
from ledger.db import Pool
from ledger.ids import id_text, leg_id, overdraft_account_id, reservation_resolution_id
from ledger.limits import (
    BATCH_EVENTS_MAX,
    PROJECTION_CHECK_EXAMPLES_MAX,
    PROJECTION_CHECK_EXPIRY_WINDOW_NS,
    PROJECTION_CHECK_READS_IN_FLIGHT_MAX,
    PROJECTION_CHECK_TRANSFERS_MAX,
)
from ledger.repositories import projection
from ledger.repositories import projection_checks as repo
from ledger.repositories.projection_checks import AccountSums, CatalogOwner, TimeoutEntry, Totals
from ledger.types import (
    Account,
    AccountBalance,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
    TransferFlags,
)
from wallets.chains import MARKER

_logger = logging.getLogger(__name__)

NS_PER_S: Final = 1_000_000_000
FORMS: Final = ("posted", "pending", "post", "void", "timeout")
# The kinds of difference, in the order they are told. The first two are of the range.
RANGE_KINDS: Final = ("totals", "timeout")
KINDS: Final = (
    *RANGE_KINDS,
    "balance",
    "account_unknown",
    "grant_without_account",
    "wallet_without_account",
    "entries_without_account",
)
# Accounts whose kind the run keeps between runs (an account's code never changes).
ACCOUNT_CODES_KNOWN_MAX: Final = 500_000

# Flags as plain ints: an enum's `&` costs a microsecond, and a run tests a million of them.
_PENDING: Final = int(TransferFlags.PENDING)
_POST: Final = int(TransferFlags.POST_PENDING_TRANSFER)
_VOID: Final = int(TransferFlags.VOID_PENDING_TRANSFER)
_RESOLVES: Final = _POST | _VOID

Bucket = tuple[int, int, str]  # (credit type, transfer code, form)


class Difference(msgspec.Struct, frozen=True):
    kind: str  # one of KINDS
    detail: dict[str, Any]  # JSON: ids as UUID text, amounts and timestamps as integers


class CheckResult(msgspec.Struct, frozen=True):
    from_ts: int
    through_ts: int  # the range's end (from_ts - 1: an empty range)
    watermark_ts: int  # the projection's watermark when the run started
    complete: bool  # the range reached the watermark
    transfers: int  # engine transfers read in the range
    accounts: int  # owned accounts whose balance was compared
    counts: dict[str, int]  # differences per kind (the kinds that had some)
    examples: list[Difference]  # at most PROJECTION_CHECK_EXAMPLES_MAX of each kind
    elapsed_s: float

    @property
    def clean(self) -> bool:
        return not self.counts

    @property
    def range_clean(self) -> bool:
        return not any(self.counts.get(kind) for kind in RANGE_KINDS)


# -- the pure part ----------------------------------------------------------------------------


def expiry_ns(leg: Transfer) -> int | None:
    """When the engine releases a pending transfer that nothing resolves (None: never)."""
    return leg.timestamp + leg.timeout * NS_PER_S if leg.timeout else None


def tally(
    totals: dict[Bucket, Totals],
    t: Transfer,
    owned: Callable[[int], bool],
    pending: Transfer | None,
) -> None:
    """Adds what `t` moved on owned accounts to `totals` (`pending`: the transfer that a post
    or void resolves). A transfer that moved nothing is no movement."""
    sides = [
        (account, debit)
        for account, debit in ((t.debit_account_id, True), (t.credit_account_id, False))
        if owned(account)
    ]
    if not sides:
        return
    flags = int(t.flags)
    if flags & _RESOLVES:
        assert pending is not None, f"the engine holds a post or void of nothing: {t}"
        if pending.amount == 0:
            return
        posted = t.amount if flags & _POST else 0
        for _, debit in sides:
            add = totals.setdefault((t.ledger, t.code, "post" if posted else "void"), Totals())
            add.movements += 1
            if debit:
                add.debited += posted
                add.released += pending.amount
            else:
                add.credited += posted
        return
    if t.amount == 0:
        return
    held = bool(flags & _PENDING)
    for _, debit in sides:
        add = totals.setdefault((t.ledger, t.code, "pending" if held else "posted"), Totals())
        add.movements += 1
        if held:
            # The entries hold debits pending only: a pending credit to an owned account has
            # no entry, and shows as a movement the projection does not have.
            add.held += t.amount if debit else 0
        elif debit:
            add.debited += t.amount
        else:
            add.credited += t.amount


def tally_timeout(totals: dict[Bucket, Totals], leg: Transfer) -> None:
    add = totals.setdefault((leg.ledger, leg.code, "timeout"), Totals())
    add.movements += 1
    add.released += leg.amount


def _totals_json(totals: Totals | None) -> dict[str, int]:
    row = (totals or Totals()).row()
    return dict(zip(("movements", "debited", "credited", "held", "released"), row, strict=True))


def code_name(code: int) -> str:
    try:
        return TransferCode(code).name
    except ValueError:
        return str(code)


def compare_totals(
    engine: Mapping[Bucket, Totals], entries: Mapping[Bucket, Totals]
) -> list[Difference]:
    out = []
    for bucket in sorted(set(engine) | set(entries)):
        mine, theirs = engine.get(bucket), entries.get(bucket)
        if (mine or Totals()).row() == (theirs or Totals()).row():
            continue
        credit_type, code, form = bucket
        detail = {
            "credit_type": credit_type,
            "code": code_name(code),
            "form": form,
            "engine": _totals_json(mine),
            "entries": _totals_json(theirs),
        }
        out.append(Difference("totals", detail))
    return out


def timeout_mismatch(leg: Transfer, entry: TimeoutEntry) -> dict[str, Any] | None:
    """What a timeout entry says differently from the pending leg the engine released."""
    engine = {
        "engine_ts": expiry_ns(leg),
        "account": id_text(leg.debit_account_id),
        "released": leg.amount,
        "code": code_name(leg.code),
        "credit_type": leg.ledger,
    }
    entries = {
        "engine_ts": entry.engine_ts,
        "account": id_text(entry.account_id),
        "released": entry.released,
        "code": code_name(entry.code),
        "credit_type": entry.credit_type_id,
    }
    if engine == entries:
        return None
    return {"leg": id_text(leg.id), "engine": engine, "entries": entries}


def pending_gap_explained(gap: int, recent_timeouts: Sequence[int]) -> bool:
    """Whether the engine's debits pending exceeding the entries' by `gap` are legs that timed
    out just before the compared transfer, which the engine had not released yet: the latest
    of the timeouts (they are released in order of expiry)."""
    if gap == 0:
        return True
    total = 0
    for released in recent_timeouts:
        total += released
        if total == gap:
            return True
    return False


def balance_difference(
    account: Account, at: AccountBalance | None, at_ts: int, sums: AccountSums
) -> Difference | None:
    """An owned account's balance at `at_ts` (None: nothing on it by then) against its
    entries."""
    posted = at.credits_posted - at.debits_posted if at is not None else 0
    held = at.debits_pending if at is not None else 0
    credits_pending = at.credits_pending if at is not None else 0
    if (
        posted == sums.amount
        and pending_gap_explained(held - sums.pending, sums.recent_timeouts)
        and credits_pending == 0
        and sums.late == 0
    ):
        return None
    detail = {
        "account": id_text(account.id),
        "account_code": _account_code_name(account.code),
        "credit_type": account.ledger,
        "at_ts": at_ts,
        "engine": {"balance": posted, "pending": held, "credits_pending": credits_pending},
        "entries": {"balance": sums.amount, "pending": sums.pending},
    }
    if sums.late:
        detail["entries_after_last_transfer"] = sums.late
    return Difference("balance", detail)


def _account_code_name(code: int) -> str:
    try:
        return AccountCode(code).name
    except ValueError:
        return str(code)


def catalog_difference(account: Account, owner: CatalogOwner | None) -> Difference | None:
    """An engine owned account against the catalog row that should own it: a grant with its id
    (in its wallet), or the wallet or budget named by its `user_data_128`."""
    code = account.code
    if code == AccountCode.GRANT:
        known = (
            owner is not None and owner.id == account.id and owner.owner_id == account.user_data_128
        )
    elif code in (AccountCode.OVERDRAFT, AccountCode.OVERDRAFT_UNBOUNDED):
        known = owner is not None and account.id == overdraft_account_id(
            owner.id, AccountCode(code)
        )
    else:
        known = owner is not None
    if known and owner is not None and owner.credit_type_id == account.ledger:
        return None
    return Difference(
        "account_unknown",
        {
            "account": id_text(account.id),
            "account_code": _account_code_name(code),
            "credit_type": account.ledger,
            "owner": id_text(account.user_data_128),
        },
    )


def summarize(differences: Iterable[Difference]) -> tuple[dict[str, int], list[Difference]]:
    """Counts per kind, and at most PROJECTION_CHECK_EXAMPLES_MAX examples of each."""
    counts: dict[str, int] = {}
    examples: list[Difference] = []
    for difference in differences:
        seen = counts.get(difference.kind, 0)
        counts[difference.kind] = seen + 1
        if seen < PROJECTION_CHECK_EXAMPLES_MAX:
            examples.append(difference)
    examples.sort(key=lambda d: KINDS.index(d.kind))
    return counts, examples


def recorded(counts: Mapping[str, int], examples: Sequence[Difference]) -> list[dict[str, Any]]:
    """The differences as `projection_checks.differences` keeps them: one object per kind."""
    return [
        {
            "kind": kind,
            "count": counts[kind],
            "examples": [d.detail for d in examples if d.kind == kind],
        }
        for kind in KINDS
        if counts.get(kind)
    ]


# -- the run ----------------------------------------------------------------------------------


class _Scan(msgspec.Struct):
    totals: dict[Bucket, Totals]
    # Pending legs on owned accounts created in the range and not resolved in it.
    open_legs: dict[int, Transfer]
    transfers: int = 0


class ProjectionCheck:
    """Runs reconciliations of the projection; keeps the last one's counts for the metrics."""

    def __init__(
        self,
        ledger: Ledger,
        pool: Pool,
        *,
        transfers_max: int = PROJECTION_CHECK_TRANSFERS_MAX,
        catalog_grace_s: float = 60.0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        assert transfers_max >= 1 and catalog_grace_s >= 0
        self.ledger = ledger
        self.pool = pool
        self.transfers_max = transfers_max
        self.catalog_grace_s = catalog_grace_s
        self.clock_ns = clock_ns
        self._codes: dict[int, int] = {}
        # What the metrics show: the differences per kind of the last run this process ran or
        # read (None: none yet), and when it ran.
        self.last_counts: dict[str, int] | None = None
        self.last_ran_at_s = 0.0

    async def refresh(self) -> None:
        """Reads the last recorded run (another process's, maybe) for the metrics."""
        async with self.pool.connection() as conn:
            check = await repo.last_check(conn)
        if check is not None:
            self.last_counts = {d["kind"]: int(d["count"]) for d in check.differences}
            self.last_ran_at_s = check.ran_at.timestamp()

    async def run(self) -> CheckResult:
        """One run: the range after the last clean one, the state, the catalog; recorded."""
        started = time.perf_counter()
        now_ns = self.clock_ns()
        async with self.pool.connection() as conn:
            watermark = (await projection.read_state(conn)).watermark_ts
            from_ts = await repo.range_start(conn)
        differences: list[Difference] = []
        scan, through_ts = await self._range(from_ts, watermark, differences)
        accounts = await self._state(watermark, differences)
        await self._catalog(now_ns, differences)
        counts, examples = summarize(differences)
        result = CheckResult(
            from_ts=from_ts,
            through_ts=through_ts,
            watermark_ts=watermark,
            complete=through_ts >= watermark,
            transfers=scan.transfers,
            accounts=accounts,
            counts=counts,
            examples=examples,
            elapsed_s=time.perf_counter() - started,
        )
        async with self.pool.connection() as conn:
            check = await repo.record_check(
                conn,
                from_ts=from_ts,
                through_ts=through_ts,
                clean=result.clean,
                range_clean=result.range_clean,
                differences=recorded(counts, examples),
            )
        self.last_counts = counts
        self.last_ran_at_s = check.ran_at.timestamp()
        _log(result)
        return result

    async def run_to_watermark(self) -> CheckResult:
        """Runs until a run's range reaches the watermark, or is not clean (a long history
        takes several runs); the last run's result."""
        while True:
            result = await self.run()
            if result.complete or not result.range_clean:
                return result

    # -- 1. the range -------------------------------------------------------------------------

    async def _range(
        self, from_ts: int, watermark: int, differences: list[Difference]
    ) -> tuple[_Scan, int]:
        scan = _Scan({}, {})
        through_ts = watermark
        cursor = from_ts
        while cursor <= through_ts:
            limit = min(BATCH_EVENTS_MAX, self.transfers_max - scan.transfers)
            page = await self.ledger.query_transfers(
                _query(timestamp_min=cursor, timestamp_max=through_ts, limit=limit)
            )
            if not page:
                break
            await self._tally_page(page, scan)
            scan.transfers += len(page)
            cursor = page[-1].timestamp + 1
            if len(page) < limit:
                break
            if scan.transfers >= self.transfers_max:
                through_ts = page[-1].timestamp
                break
            await asyncio.sleep(0)  # an in-process engine answers without yielding
        through_ts = max(through_ts, from_ts - 1)
        await self._timeouts(from_ts, through_ts, scan, differences)
        async with self.pool.connection() as conn:
            entries = await repo.entry_totals(conn, from_ts, through_ts)
        differences += compare_totals(scan.totals, entries)
        return scan, through_ts

    async def _tally_page(self, page: Sequence[Transfer], scan: _Scan) -> None:
        codes = await self._account_codes(
            {a for t in page for a in (t.debit_account_id, t.credit_account_id)}
        )

        def owned(account: int) -> bool:
            return codes.get(account) in OWNED_ACCOUNT_CODES

        moving = [t for t in page if owned(t.debit_account_id) or owned(t.credit_account_id)]
        wanted = [
            t.pending_id
            for t in moving
            if int(t.flags) & _RESOLVES and t.pending_id not in scan.open_legs
        ]
        earlier = {p.id: p for p in await self.ledger.lookup_transfers(wanted)} if wanted else {}
        for t in moving:
            flags = int(t.flags)
            leg = None
            if flags & _RESOLVES:
                leg = scan.open_legs.pop(t.pending_id, None) or earlier.get(t.pending_id)
            elif flags & _PENDING and t.amount and owned(t.debit_account_id):
                scan.open_legs[t.id] = t
            tally(scan.totals, t, owned, leg)

    async def _account_codes(self, ids: set[int]) -> dict[int, int]:
        known = self._codes
        missing = [i for i in ids if i not in known]
        if len(known) + len(missing) > ACCOUNT_CODES_KNOWN_MAX:
            known.clear()
            missing = list(ids)
        for start in range(0, len(missing), BATCH_EVENTS_MAX):
            for account in await self.ledger.lookup_accounts(
                missing[start : start + BATCH_EVENTS_MAX]
            ):
                known[account.id] = account.code
        return {i: known[i] for i in ids if i in known}

    async def _timeouts(
        self, from_ts: int, through_ts: int, scan: _Scan, differences: list[Difference]
    ) -> None:
        """The engine's timeouts of the range, tallied, and each timeout entry checked."""
        expected = {
            leg.id: leg
            for leg in scan.open_legs.values()
            if (expiry := expiry_ns(leg)) is not None and expiry <= through_ts
        }
        async with self.pool.connection() as conn:
            entries = await repo.timeouts_between(conn, from_ts, through_ts)
        by_leg = {e.transfer_id: e for e in entries}
        for leg in expected.values():
            tally_timeout(scan.totals, leg)
            entry = by_leg.get(leg.id)
            if entry is None:
                detail = {"leg": id_text(leg.id), "engine_ts": expiry_ns(leg), "entries": None}
                differences.append(Difference("timeout", detail))
            elif (mismatch := timeout_mismatch(leg, entry)) is not None:
                differences.append(Difference("timeout", mismatch))
        others = [e for e in entries if e.transfer_id not in expected]
        for start in range(0, len(others), BATCH_EVENTS_MAX):
            batch = others[start : start + BATCH_EVENTS_MAX]
            await self._earlier_timeouts(batch, from_ts, through_ts, scan, differences)

    async def _earlier_timeouts(
        self,
        entries: Sequence[TimeoutEntry],
        from_ts: int,
        through_ts: int,
        scan: _Scan,
        differences: list[Difference],
    ) -> None:
        """Timeout entries that are not of a leg the range saw time out: the leg must have
        been created before the range, be pending with a timeout in the range, and its
        reservation never resolved."""
        found = await self.ledger.lookup_transfers([e.transfer_id for e in entries])
        legs = {t.id: t for t in found}
        unresolved = await self._unresolved(
            [t for t in found if t.timestamp < from_ts and t.flags & _PENDING and t.timeout]
        )
        for entry in entries:
            leg = legs.get(entry.transfer_id)
            expiry = expiry_ns(leg) if leg is not None and leg.flags & _PENDING else None
            why = None
            if leg is None or expiry is None:
                why = "no pending transfer with a timeout has this id"
            elif leg.timestamp >= from_ts:
                why = "the engine did not release this leg in the range (posted, voided or later)"
            elif not from_ts <= expiry <= through_ts:
                why = "the leg expires outside the range"
            elif leg.id not in unresolved:
                why = "the leg's reservation was settled or released before it expired"
            if why is not None:
                detail = {"leg": id_text(entry.transfer_id), "entry_ts": entry.engine_ts}
                differences.append(Difference("timeout", {**detail, "why": why}))
                continue
            assert leg is not None
            tally_timeout(scan.totals, leg)
            if (mismatch := timeout_mismatch(leg, entry)) is not None:
                differences.append(Difference("timeout", mismatch))

    async def _unresolved(self, legs: Sequence[Transfer]) -> set[int]:
        """The legs (pending, with a timeout) that no post or void resolved: their reservation
        has a marker and no resolution, or (made before markers) their account holds no post
        or void of them over their lifetime."""
        operations = {leg.user_data_128 for leg in legs if leg.user_data_128}
        ids = [i for op in operations for i in (leg_id(op, MARKER), reservation_resolution_id(op))]
        found = {t.id for t in await self.ledger.lookup_transfers(ids)} if ids else set()
        out = set()
        for leg in legs:
            op = leg.user_data_128
            if op and leg_id(op, MARKER) in found:
                if reservation_resolution_id(op) not in found:
                    out.add(leg.id)
            elif not await self._resolved_on_account(leg):
                out.add(leg.id)
        return out

    async def _resolved_on_account(self, leg: Transfer) -> bool:
        expiry = expiry_ns(leg)
        assert expiry is not None
        cursor = leg.timestamp + 1
        while cursor < expiry:
            page = await self.ledger.get_account_transfers(
                AccountFilter(
                    account_id=leg.debit_account_id,
                    user_data_128=0,
                    user_data_64=0,
                    user_data_32=0,
                    code=leg.code,
                    timestamp_min=cursor,
                    timestamp_max=expiry - 1,
                    limit=BATCH_EVENTS_MAX,
                    flags=AccountFilterFlags.DEBITS,
                )
            )
            if any(t.pending_id == leg.id and t.flags & _RESOLVES for t in page):
                return True
            if len(page) < BATCH_EVENTS_MAX:
                return False
            cursor = page[-1].timestamp + 1
        return False

    # -- 2. the state -------------------------------------------------------------------------

    async def _state(self, watermark: int, differences: list[Difference]) -> int:
        """Every owned account's balance at the watermark against its entries; and whether the
        catalog knows it. Returns how many accounts were compared."""
        checked = 0
        for code in sorted(OWNED_ACCOUNT_CODES):
            cursor = 1
            while True:
                page = await self.ledger.query_accounts(
                    _query(timestamp_min=cursor, limit=BATCH_EVENTS_MAX, code=code)
                )
                if not page:
                    break
                differences += await self._balances(page, watermark)
                differences += await self._owners(page, AccountCode(code))
                checked += len(page)
                cursor = page[-1].timestamp + 1
                if len(page) < BATCH_EVENTS_MAX:
                    break
        return checked

    async def _balances(self, accounts: Sequence[Account], watermark: int) -> list[Difference]:
        at: list[tuple[AccountBalance | None, int]] = []
        for start in range(0, len(accounts), PROJECTION_CHECK_READS_IN_FLIGHT_MAX):
            batch = accounts[start : start + PROJECTION_CHECK_READS_IN_FLIGHT_MAX]
            at += await asyncio.gather(*(self._balance_at(a, watermark) for a in batch))
            await asyncio.sleep(0)  # an in-process engine answers without yielding
        points = [(a.id, at_ts) for a, (_, at_ts) in zip(accounts, at, strict=True)]
        async with self.pool.connection() as conn:
            sums = await repo.account_sums(
                conn, points, watermark, PROJECTION_CHECK_EXPIRY_WINDOW_NS
            )
        out = []
        for account, (balance, at_ts) in zip(accounts, at, strict=True):
            difference = balance_difference(account, balance, at_ts, sums[account.id])
            if difference is not None:
                out.append(difference)
        return out

    async def _balance_at(
        self, account: Account, watermark: int
    ) -> tuple[AccountBalance | None, int]:
        """The account's balances after its last transfer at or before the watermark, and
        that transfer's timestamp (None and the watermark: nothing by then). An account without
        history (no owned account the service creates lacks it) is compared as it is now, at
        the watermark: right once the projection has caught up with it."""
        if not account.flags & AccountFlags.HISTORY:
            return _balance_now(account), watermark
        if watermark == 0:
            return None, watermark
        found = await self.ledger.get_account_balances(
            AccountFilter(
                account_id=account.id,
                user_data_128=0,
                user_data_64=0,
                user_data_32=0,
                code=0,
                timestamp_min=0,
                timestamp_max=watermark,
                limit=1,
                flags=AccountFilterFlags.DEBITS
                | AccountFilterFlags.CREDITS
                | AccountFilterFlags.REVERSED,
            )
        )
        return (found[0], found[0].timestamp) if found else (None, watermark)

    async def _owners(self, accounts: Sequence[Account], code: AccountCode) -> list[Difference]:
        async with self.pool.connection() as conn:
            if code == AccountCode.GRANT:
                owners = await repo.grants_of(conn, [a.id for a in accounts])
                of = {a.id: owners.get(a.id) for a in accounts}
            else:
                read = repo.budgets_of if code == AccountCode.BUDGET else repo.wallets_of
                owners = await read(conn, {a.user_data_128 for a in accounts})
                of = {a.id: owners.get(a.user_data_128) for a in accounts}
        return [d for a in accounts if (d := catalog_difference(a, of[a.id])) is not None]

    # -- 3. the catalog -------------------------------------------------------------------------

    async def _catalog(self, now_ns: int, differences: list[Difference]) -> None:
        """Issued grants, wallets and projected accounts that the engine does not have."""
        after = 0
        while True:
            async with self.pool.connection() as conn:
                ids = await repo.issued_grants(conn, after, BATCH_EVENTS_MAX)
            differences += [
                Difference("grant_without_account", {"grant": id_text(i)})
                for i in await self._missing(ids)
            ]
            if len(ids) < BATCH_EVENTS_MAX:
                break
            after = ids[-1]
        grace_ns = int(self.catalog_grace_s * NS_PER_S)
        await self._wallets(datetime_of_ns(now_ns - grace_ns), differences)
        after = 0
        while True:
            async with self.pool.connection() as conn:
                ids = await repo.entry_accounts(conn, after, BATCH_EVENTS_MAX)
            differences += [
                Difference("entries_without_account", {"account": id_text(i)})
                for i in await self._missing(ids)
            ]
            if len(ids) < BATCH_EVENTS_MAX:
                break
            after = ids[-1]

    async def _wallets(self, created_before: datetime, differences: list[Difference]) -> None:
        """Every wallet has its debt account (OVERDRAFT_UNBOUNDED), a soft one its bounded
        overdraft account too. Wallets younger than the grace are being created."""
        after = 0
        page_max = BATCH_EVENTS_MAX // 2
        while True:
            async with self.pool.connection() as conn:
                rows = await repo.wallets_created_before(conn, created_before, after, page_max)
            expected = {}
            for wallet, soft in rows:
                codes = [AccountCode.OVERDRAFT_UNBOUNDED, AccountCode.OVERDRAFT]
                for code in codes[: 2 if soft else 1]:
                    expected[overdraft_account_id(wallet, code)] = (wallet, code)
            for account in await self._missing(list(expected)):
                wallet, code = expected[account]
                detail = {
                    "wallet": id_text(wallet),
                    "account": id_text(account),
                    "account_code": code.name,
                }
                differences.append(Difference("wallet_without_account", detail))
            if len(rows) < page_max:
                break
            after = rows[-1][0]

    async def _missing(self, ids: Sequence[int]) -> list[int]:
        if not ids:
            return []
        found = {a.id for a in await self.ledger.lookup_accounts(ids)}
        return [i for i in ids if i not in found]


def _query(*, timestamp_min: int, limit: int, timestamp_max: int = 0, code: int = 0) -> QueryFilter:
    return QueryFilter(
        user_data_128=0,
        user_data_64=0,
        user_data_32=0,
        ledger=0,
        code=code,
        timestamp_min=timestamp_min,
        timestamp_max=timestamp_max,
        limit=limit,
        flags=QueryFilterFlags.NONE,
    )


def _balance_now(account: Account) -> AccountBalance:
    return AccountBalance(
        debits_pending=account.debits_pending,
        debits_posted=account.debits_posted,
        credits_pending=account.credits_pending,
        credits_posted=account.credits_posted,
        timestamp=account.timestamp,
    )


def _log(result: CheckResult) -> None:
    span = f"engine time {result.from_ts}..{result.through_ts}"
    if result.clean:
        _logger.debug(
            "projection check clean: %s, %d transfers, %d accounts, %.1f s",
            span,
            result.transfers,
            result.accounts,
            result.elapsed_s,
        )
        return
    for kind in KINDS:
        count = result.counts.get(kind, 0)
        if not count:
            continue
        example = next(d for d in result.examples if d.kind == kind)
        _logger.error(
            "projection check: %d %s difference(s) (%s; see `credit-ledger reconcile`), e.g. %s",
            count,
            kind,
            span,
            msgspec.json.encode(example.detail).decode(),
        )
