"""Balances and movements of wallets and grants, read from TigerBeetle (never stored elsewhere).

A grant account's transfers say everything about the block: what funded it, what was spent
(debits, and posts of reservation legs), what is held (its pending debits), what expired, was
voided or was given back. A wallet is the sum of its blocks plus its overdraft accounts.
"""

from __future__ import annotations

import heapq

import msgspec

from grants.errors import InvalidRequest, NotFound
from ledger.client import Ledger
from ledger.codes import AccountCode, TransferCode
from ledger.ids import budget_account_id, id_text, leg_id, leg_ids
from ledger.limits import BATCH_EVENTS_MAX, CHAIN_LEGS_MAX
from ledger.types import (
    Account,
    AccountFilter,
    AccountFilterFlags,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
    TransferFlags,
)
from wallets import chains
from wallets.catalog import Budget, Catalog, OverdraftMode, Wallet, period_start_ns

# A wallet's movements are read a page at a time; a page is at most this many entries.
ENTRIES_PAGE_MAX = 1000

POST = TransferFlags.POST_PENDING_TRANSFER
VOID = TransferFlags.VOID_PENDING_TRANSFER
PENDING = TransferFlags.PENDING


class GrantBalance(msgspec.Struct, frozen=True):
    grant_id: int
    granted: int
    available: int
    held: int  # by open reservations
    consumed: int  # spent, net of usage refunds
    expired: int
    voided: int
    refunded: int  # unused credits refunded in money
    repaid: int  # went to the wallet's overdraft deficit


class WalletBalance(msgspec.Struct, frozen=True):
    wallet_id: int
    ledger: int
    available: int
    held: int
    consumed: int
    expired: int
    voided: int
    overdraft_used: int
    overdraft_limit: int | None  # None: unbounded
    grants: list[GrantBalance]


class Entry(msgspec.Struct, frozen=True):
    """One typed movement of a wallet."""

    timestamp: int  # TigerBeetle's, ns: also the pagination cursor
    type: str
    account_id: int  # the grant (or overdraft account) that moved
    amount: int  # signed: + into the wallet's blocks, - out of them
    operation_id: int
    available_after: int  # the wallet's available credits in its blocks after this entry


class EntriesPage(msgspec.Struct, frozen=True):
    entries: list[Entry]
    next_cursor: int | None


def _filter(account_id: int, *, after: int = 0, limit: int = BATCH_EVENTS_MAX) -> AccountFilter:
    return AccountFilter(
        account_id=account_id,
        user_data_128=0,
        user_data_64=0,
        user_data_32=0,
        code=0,
        timestamp_min=after + 1 if after else 0,
        timestamp_max=0,
        limit=limit,
        flags=AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS,
    )


async def _all_transfers(ledger: Ledger, account_id: int) -> list[Transfer]:
    out: list[Transfer] = []
    after = 0
    while True:
        page = await ledger.get_account_transfers(_filter(account_id, after=after))
        out += page
        if len(page) < BATCH_EVENTS_MAX:
            return out
        after = page[-1].timestamp


def entry_type(t: Transfer, account_id: int) -> str:
    code = t.code
    if t.flags & POST:
        return "settle"
    if t.flags & VOID:
        return "release"
    names: dict[int, str] = {
        TransferCode.GRANT_FUNDING: "grant",
        TransferCode.DEBIT: "debit",
        TransferCode.RESERVE: "reserve",
        TransferCode.EXPIRE: "expire",
        TransferCode.GRANT_VOID: "void",
        TransferCode.USAGE_REFUND: "refund",
        TransferCode.GRANT_REFUND: "refund_out",
        TransferCode.OVERDRAFT_DRAW: "overdraft",
        TransferCode.OVERDRAFT_REPAY: "repay",
        TransferCode.OVERDRAFT_LIMIT: "overdraft_limit",
    }
    return names.get(int(code), "other")


def grant_balance(account: Account, transfers: list[Transfer]) -> GrantBalance:
    sums = {"granted": 0, "consumed": 0, "expired": 0, "voided": 0, "refunded": 0, "repaid": 0}
    for t in transfers:
        kind = entry_type(t, account.id)
        credit = t.credit_account_id == account.id
        if kind == "grant":
            sums["granted"] += t.amount
        elif kind in ("debit", "settle") and not credit:
            sums["consumed"] += t.amount
        elif kind == "refund":
            sums["consumed"] -= t.amount
        elif kind == "expire":
            sums["expired"] += t.amount
        elif kind == "void":
            sums["voided"] += t.amount
        elif kind == "refund_out":
            sums["refunded"] += t.amount
        elif kind == "repay":
            sums["repaid"] += t.amount
    return GrantBalance(
        grant_id=account.id,
        available=account.credits_posted - account.debits_posted - account.debits_pending,
        held=account.debits_pending,
        **sums,
    )


class Statements:
    def __init__(self, ledger: Ledger, catalog: Catalog) -> None:
        self.ledger = ledger
        self.catalog = catalog

    async def grant_accounts(self, wallet: Wallet) -> list[Account]:
        """Every block the wallet ever had, expired and voided included, from the ledger."""
        query = QueryFilter(
            user_data_128=wallet.id,
            user_data_64=0,
            user_data_32=0,
            ledger=wallet.ledger,
            code=AccountCode.GRANT,
            timestamp_min=0,
            timestamp_max=0,
            limit=BATCH_EVENTS_MAX,
            flags=QueryFilterFlags.NONE,
        )
        return await self.ledger.query_accounts(query)

    async def grant(self, grant_id: int) -> GrantBalance:
        accounts = await self.ledger.lookup_accounts([grant_id])
        if not accounts or accounts[0].code != AccountCode.GRANT:
            raise NotFound(f"grant {id_text(grant_id)} not found")
        return grant_balance(accounts[0], await _all_transfers(self.ledger, grant_id))

    async def wallet(self, wallet_id: int) -> WalletBalance:
        wallet = self.catalog.wallets.get(wallet_id)
        if wallet is None:
            raise NotFound(f"wallet {id_text(wallet_id)} not found")
        grants = [
            grant_balance(a, await _all_transfers(self.ledger, a.id))
            for a in await self.grant_accounts(wallet)
        ]
        used, limit = await self._overdraft(wallet)
        return WalletBalance(
            wallet_id=wallet.id,
            ledger=wallet.ledger,
            available=sum(g.available for g in grants),
            held=sum(g.held for g in grants),
            consumed=sum(g.consumed for g in grants),
            expired=sum(g.expired for g in grants),
            voided=sum(g.voided for g in grants),
            overdraft_used=used,
            overdraft_limit=limit,
            grants=grants,
        )

    async def _overdraft(self, wallet: Wallet) -> tuple[int, int | None]:
        ids = [wallet.debt_account_id]
        if wallet.overdraft_mode is OverdraftMode.SOFT and wallet.overdraft_account_id:
            ids.append(wallet.overdraft_account_id)
        used = 0
        for a in await self.ledger.lookup_accounts(ids):
            if a.code == AccountCode.OVERDRAFT:
                used += a.debits_posted + a.debits_pending + wallet.overdraft_limit
                used -= a.credits_posted
            else:
                used += max(0, a.debits_posted + a.debits_pending - a.credits_posted)
        if wallet.overdraft_mode is OverdraftMode.UNBOUNDED:
            return used, None
        limit = wallet.overdraft_limit if wallet.overdraft_mode is OverdraftMode.SOFT else 0
        return used, limit

    async def entries(self, wallet_id: int, *, after: int = 0, limit: int = 100) -> EntriesPage:
        """The wallet's movements in time order, `limit` at a time after the cursor `after`."""
        if not 1 <= limit <= ENTRIES_PAGE_MAX:
            raise InvalidRequest(f"limit must be in 1..{ENTRIES_PAGE_MAX}", field="limit")
        wallet = self.catalog.wallets.get(wallet_id)
        if wallet is None:
            raise NotFound(f"wallet {id_text(wallet_id)} not found")
        grants = await self.grant_accounts(wallet)
        balances = {a.id: await self._balance_at(a.id, after) for a in grants}
        entries: list[Entry] = []
        cursor, more = after, True
        while more and len(entries) < limit:
            # Balancing legs that moved nothing are not movements: they are skipped, and the
            # page is filled from further on.
            candidates, more = await self._after(grants, cursor, limit)
            for timestamp, _, account_id, t in candidates:
                cursor = timestamp
                if t.amount == 0:
                    continue
                entries.append(await self._entry(t, account_id, balances))
                if len(entries) == limit:
                    break
        next_cursor = cursor if len(entries) == limit else None
        return EntriesPage(entries, next_cursor)

    async def _after(
        self, grants: list[Account], cursor: int, limit: int
    ) -> tuple[list[tuple[int, int, int, Transfer]], bool]:
        pages = [
            await self.ledger.get_account_transfers(_filter(a.id, after=cursor, limit=limit))
            for a in grants
        ]
        rows = [
            [(t.timestamp, t.id, a.id, t) for t in page]
            for a, page in zip(grants, pages, strict=True)
        ]
        more = any(len(page) == limit for page in pages)
        return list(heapq.merge(*rows))[:limit], more

    async def _entry(self, t: Transfer, account_id: int, balances: dict[int, int]) -> Entry:
        sign = 1 if t.credit_account_id == account_id else -1
        kind = entry_type(t, account_id)
        moved = t.amount
        if kind in ("settle", "release"):
            pending = (await self.ledger.lookup_transfers([t.pending_id]))[0]
            balances[account_id] += pending.amount - (moved if kind == "settle" else 0)
            sign, moved = (-1, t.amount) if kind == "settle" else (1, pending.amount)
        else:
            balances[account_id] += sign * moved
        return Entry(
            t.timestamp, kind, account_id, sign * moved, t.user_data_128, sum(balances.values())
        )

    async def _balance_at(self, account_id: int, timestamp: int) -> int:
        """A block's available balance just after `timestamp` (0: before anything)."""
        if timestamp == 0:
            return 0
        query = AccountFilter(
            account_id=account_id,
            user_data_128=0,
            user_data_64=0,
            user_data_32=0,
            code=0,
            timestamp_min=0,
            timestamp_max=timestamp,
            limit=1,
            flags=AccountFilterFlags.DEBITS
            | AccountFilterFlags.CREDITS
            | AccountFilterFlags.REVERSED,
        )
        history = await self.ledger.get_account_balances(query)
        if not history:
            return 0
        b = history[0]
        return b.credits_posted - b.debits_posted - b.debits_pending


class ReservationView(msgspec.Struct, frozen=True):
    status: str  # held | settled | released | expired
    legs: list[Transfer]


async def reservation_status(ledger: Ledger, reservation_id: int, now_ns: int) -> ReservationView:
    """Where a reservation stands. TigerBeetle does not expose a pending transfer's state, so
    the account of a source leg that held something is searched for a post or void of that leg
    (they carry the leg's code). A leg that held nothing tells nothing: a settle voids it like a
    release does (its block was exhausted when the reservation was made). The post or void
    carries the operation that resolved it: a settle has its `SETTLE` leg, even for 0, a release
    has none. With neither post nor void, the timeout decides between held and expired."""
    ids = leg_ids(reservation_id, range(CHAIN_LEGS_MAX))
    found = {t.id: t for t in await ledger.lookup_transfers(ids)}
    legs = [found.get(i, Transfer()) for i in ids]
    sources = [
        t for t in legs[chains.FIRST_VARIABLE :] if t.id and t.flags & PENDING and t.amount > 0
    ]
    if not sources:
        return ReservationView("held", legs)
    leg = sources[0]
    query = AccountFilter(
        account_id=leg.debit_account_id,
        user_data_128=0,
        user_data_64=0,
        user_data_32=0,
        code=leg.code,
        timestamp_min=leg.timestamp + 1,
        timestamp_max=0,
        limit=BATCH_EVENTS_MAX,
        flags=AccountFilterFlags.DEBITS,
    )
    for t in await ledger.get_account_transfers(query):
        if t.pending_id == leg.id:
            resolver = await ledger.lookup_transfers([leg_id(t.user_data_128, chains.SETUP)])
            settled = bool(resolver) and resolver[0].code == TransferCode.SETTLE
            return ReservationView("settled" if settled else "released", legs)
    expired = leg.timeout and now_ns >= leg.timestamp + leg.timeout * 1_000_000_000
    return ReservationView("expired" if expired else "held", legs)


async def budget_used(ledger: Ledger, budget: Budget, now_ns: int) -> int:
    """What the budget's current period has used (held reservations included)."""
    account_id = budget_account_id(
        budget.resource_id, budget.id, period_start_ns(budget.period, now_ns)
    )
    accounts = await ledger.lookup_accounts([account_id])
    if not accounts:
        return 0
    a = accounts[0]
    return budget.cap - (a.credits_posted - a.debits_posted - a.debits_pending)
