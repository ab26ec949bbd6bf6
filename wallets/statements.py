"""Balances and movements of wallets and grants, read from TigerBeetle (never stored elsewhere).

A grant account's transfers say everything about the block: what funded it, what was spent
(debits, and posts of reservation legs), what is held (its pending debits), what expired, was
voided or was given back. A wallet is the sum of its blocks plus its overdraft accounts.

Reads tell what a spend would do at the same instant (`CreditService.check`, `debit`):
- A block's credits are `available` only while the spend path may draw on them: the block is in
  the spend path's catalog, effective, not expired and not voided. Before its `effective_at`
  they are `upcoming`; from its `expires_at` on, or once voided, they count as `expired` or
  `voided` at once, swept or not (a sweep moves nothing a read has not already counted out).
- A reservation that timed out is released at `timestamp + timeout` of its legs: TigerBeetle
  writes no transfer for that, so the entries derive it once the clock has passed that instant.
- The entries' running figures (`available_after`, `held_after`, `overdraft_used_after`) are the
  wallet's figures just after each entry, as `Statements.wallet` reports them: after the last
  entry they are the wallet's figures now.
"""

from __future__ import annotations

import base64
import binascii
import enum
import time
from collections.abc import Callable, Collection, Iterable, Mapping

import msgspec

from grants.errors import InvalidRequest, NotFound
from ledger.client import Ledger
from ledger.codes import AccountCode, TransferCode
from ledger.ids import (
    budget_account_id,
    id_text,
    leg_id,
    leg_ids,
    overdraft_account_id,
    reservation_resolution_id,
)
from ledger.limits import BATCH_EVENTS_MAX, LIST_PAGE_ROWS_MAX
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

NS_PER_S = 1_000_000_000

POST = TransferFlags.POST_PENDING_TRANSFER
VOID = TransferFlags.VOID_PENDING_TRANSFER
PENDING = TransferFlags.PENDING


class BlockState(enum.StrEnum):
    UPCOMING = "upcoming"  # not effective yet, or not yet in the spend path's catalog
    ACTIVE = "active"
    EXPIRED = "expired"
    VOIDED = "voided"


class EntryType(enum.StrEnum):
    """What an entry of a wallet is (the wire contract repeats these values)."""

    GRANT = "grant"  # a block was funded (available at once when already effective)
    EFFECTIVE = "effective"  # a block's effective_at came: its credits became available
    DEBIT = "debit"
    RESERVE = "reserve"  # held by a reservation
    SETTLE = "settle"  # a reservation's leg posted: its amount; the rest of the leg came back
    RELEASE = "release"
    RESERVATION_EXPIRED = "reservation_expired"  # a reservation's leg released at its timeout
    EXPIRE = "expire"  # a block's expires_at came: what was left of it expired
    VOID = "void"  # a block was voided: what was left of it
    REFUND = "refund"  # usage given back (to a block or to the overdraft)
    REFUND_OUT = "refund_out"  # unused paid credits refunded in money
    OVERDRAFT_DRAW = "overdraft_draw"  # drawn from the overdraft (held, in a reservation)
    OVERDRAFT_REPAY = "overdraft_repay"  # a new block paid back what the overdraft lent
    OVERDRAFT_LIMIT = "overdraft_limit"  # the overdraft's limit was set (or changed)
    CORRECTION = "correction"
    # Credits rolled over from an expired block into its rollover block (shown on the new
    # block, +: the source's were already out of `available` from its expiry).
    ROLLOVER = "rollover"


class GrantBalance(msgspec.Struct, frozen=True):
    grant_id: int
    state: str  # a BlockState
    granted: int
    available: int  # what a spend may draw on now
    upcoming: int  # what becomes available at effective_at
    held: int  # by open reservations
    consumed: int  # spent, net of usage refunds
    expired: int  # swept to breakage, or left in the block past its expiry
    voided: int  # swept by a void, or come back to the block since it was voided
    refunded: int  # unused credits refunded in money
    repaid: int  # went to the wallet's overdraft deficit
    rolled_over: int = 0  # moved into its rollover block at its expiry


class WalletBalance(msgspec.Struct, frozen=True):
    wallet_id: int
    ledger: int
    available: int
    held: int
    upcoming: int
    consumed: int  # what the blocks and the overdraft paid for, net of usage refunds
    expired: int
    voided: int
    # Drawn and not repaid, held draws included. Past the limit only by a settle's overage
    # collected under the `overdraft` policy, which is owed whatever the limit.
    overdraft_used: int
    overdraft_held: int  # the part of overdraft_used open reservations hold
    overdraft_limit: int | None  # None: unbounded
    overdraft_headroom: int | None  # what a spend may still draw on it (check's); None: unbounded
    grants: list[GrantBalance]


# The codes of the legs a spend draws with (a settle's overage too): their entries carry the
# spend's dimensions, as do a usage refund's.
_SPEND_CODES = (
    TransferCode.DEBIT,
    TransferCode.RESERVE,
    TransferCode.OVERDRAFT_DRAW,
    TransferCode.USAGE_REFUND,
)


class Entry(msgspec.Struct, frozen=True):
    """One typed movement of a wallet, with the wallet's figures just after it."""

    at_ns: int  # when it happened (TigerBeetle's timestamp, or the instant it came to pass)
    type: str  # an EntryType
    account_id: int  # the block, or the overdraft account, that moved
    account_kind: str  # "grant" | "overdraft"
    amount: int  # signed: + into the wallet (or back to it), - out of it
    operation_id: int  # the operation; the block for effective and expire
    spend_id: int  # the debit or reservation whose dimensions it carries (0: none)
    available_after: int
    held_after: int
    overdraft_used_after: int


class EntriesPage(msgspec.Struct, frozen=True):
    entries: list[Entry]
    next_cursor: str | None


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


_TYPES: dict[int, EntryType] = {
    TransferCode.GRANT_FUNDING: EntryType.GRANT,
    TransferCode.DEBIT: EntryType.DEBIT,
    TransferCode.RESERVE: EntryType.RESERVE,
    TransferCode.EXPIRE: EntryType.EXPIRE,
    TransferCode.GRANT_VOID: EntryType.VOID,
    TransferCode.USAGE_REFUND: EntryType.REFUND,
    TransferCode.GRANT_REFUND: EntryType.REFUND_OUT,
    TransferCode.CORRECTION: EntryType.CORRECTION,
    TransferCode.OVERDRAFT_DRAW: EntryType.OVERDRAFT_DRAW,
    TransferCode.OVERDRAFT_REPAY: EntryType.OVERDRAFT_REPAY,
    TransferCode.OVERDRAFT_LIMIT: EntryType.OVERDRAFT_LIMIT,
    TransferCode.ROLLOVER: EntryType.ROLLOVER,
}


def entry_type(t: Transfer) -> EntryType:
    """The type of a transfer on a wallet's account: posts and voids of a reservation's legs
    by their flags, everything else by its code."""
    if t.flags & POST:
        return EntryType.SETTLE
    if t.flags & VOID:
        return EntryType.RELEASE
    return _TYPES.get(int(t.code), EntryType.CORRECTION)


class Block(msgspec.Struct, frozen=True):
    """What a read needs to know of a credit block to tell its state at an instant."""

    id: int
    effective_at_ns: int | None  # None: not in the spend path's catalog (yet): not spendable
    expires_at_ns: int | None
    voided_at_ns: int | None  # the instant of its void, if any

    def state(self, at_ns: int, engine_ns: int | None = None) -> BlockState:
        """The state at `at_ns`, by the spend path's clock, of the block as the engine had it
        at `engine_ns` (by default the same instant): a void is an engine event, effective and
        expiry times are business times that a spend compares with its own clock."""
        voided_by = at_ns if engine_ns is None else engine_ns
        if self.voided_at_ns is not None and self.voided_at_ns <= voided_by:
            return BlockState.VOIDED
        if self.effective_at_ns is None:
            return BlockState.UPCOMING
        if self.expires_at_ns is not None and self.expires_at_ns <= at_ns:
            return BlockState.EXPIRED
        if at_ns < self.effective_at_ns:
            return BlockState.UPCOMING
        return BlockState.ACTIVE


def block_of(account: Account, transfers: Iterable[Transfer], catalog: Catalog) -> Block:
    """The block's times: from the spend path's catalog while it holds the block (what a spend
    goes by), else from the ledger: the account's `user_data_64` is its effective time and every
    sweep (expiry, void) carries its expiry in `user_data_64` (0: never). A block that left the
    catalog was voided or finished after its expiry (and then swept, if only of nothing); one
    with no sweep and not in the catalog is being issued: not spendable yet."""
    sweeps = [
        t
        for t in transfers
        if t.debit_account_id == account.id
        and t.code in (TransferCode.EXPIRE, TransferCode.GRANT_VOID)
        # A sweep names its block; a void of part of a block names its operation and leaves
        # the block in force (ControlPlane.void_grant with an amount).
        and t.user_data_128 == account.id
    ]
    voided_at = next((t.timestamp for t in sweeps if t.code == TransferCode.GRANT_VOID), None)
    grant = catalog.grants.get(account.id)
    if grant is not None:
        return Block(account.id, grant.effective_at_ns, grant.expires_at_ns, voided_at)
    if not sweeps:
        return Block(account.id, None, None, None)
    return Block(account.id, account.user_data_64, sweeps[0].user_data_64 or None, voided_at)


def grant_balance(account: Account, transfers: list[Transfer], state: BlockState) -> GrantBalance:
    """A block's figures: the movements summed by kind, and what is left of it (its posted
    balance less what is held) put where its state says."""
    sums = {
        "granted": 0,
        "consumed": 0,
        "expired": 0,
        "voided": 0,
        "refunded": 0,
        "repaid": 0,
        "rolled_over": 0,
    }
    for t in transfers:
        kind = entry_type(t)
        credit = t.credit_account_id == account.id
        if kind is EntryType.GRANT:
            sums["granted"] += t.amount
        elif kind in (EntryType.DEBIT, EntryType.SETTLE) and not credit:
            sums["consumed"] += t.amount
        elif kind is EntryType.REFUND:
            sums["consumed"] -= t.amount
        elif kind is EntryType.EXPIRE:
            sums["expired"] += t.amount
        elif kind is EntryType.VOID:
            sums["voided"] += t.amount
        elif kind is EntryType.REFUND_OUT:
            sums["refunded"] += t.amount
        elif kind is EntryType.OVERDRAFT_REPAY:
            sums["repaid"] += t.amount
        elif kind is EntryType.ROLLOVER:
            sums["granted" if credit else "rolled_over"] += t.amount
    left = account.credits_posted - account.debits_posted - account.debits_pending
    if state is BlockState.EXPIRED:
        sums["expired"] += left
    elif state is BlockState.VOIDED:
        sums["voided"] += left
    return GrantBalance(
        grant_id=account.id,
        state=state.value,
        available=left if state is BlockState.ACTIVE else 0,
        upcoming=left if state is BlockState.UPCOMING else 0,
        held=account.debits_pending,
        **sums,
    )


class Overdraft(msgspec.Struct, frozen=True):
    used: int
    held: int
    consumed: int  # posted draws, net of the usage refunds given back to the overdraft
    limit: int | None
    headroom: int | None


def overdraft_of(
    wallet: Wallet, accounts: Iterable[Account], transfers: Mapping[int, list[Transfer]]
) -> Overdraft:
    """The wallet's overdraft over its accounts: the bounded one of a soft limit (credited its
    limit) and the debt account every wallet has (a settle's overage under the `overdraft`
    policy lands there whatever the limit)."""
    used = held = consumed = limit = headroom = 0
    for a in accounts:
        if a.code == AccountCode.OVERDRAFT:  # the bounded one: its balance is the headroom
            headroom = a.credits_posted - a.debits_posted - a.debits_pending
        for t in transfers[a.id]:
            if t.code == TransferCode.OVERDRAFT_LIMIT:
                limit += t.amount if t.credit_account_id == a.id else -t.amount
            elif t.code == TransferCode.OVERDRAFT_DRAW and not t.flags & (PENDING | VOID):
                consumed += t.amount
            elif t.code == TransferCode.USAGE_REFUND:
                consumed -= t.amount
        used += a.debits_posted + a.debits_pending - a.credits_posted
        held += a.debits_pending
    used += limit
    if wallet.overdraft_mode is OverdraftMode.UNBOUNDED:
        return Overdraft(used, held, consumed, None, None)
    return Overdraft(used, held, consumed, limit, headroom)


class Statements:
    def __init__(
        self, ledger: Ledger, catalog: Catalog, *, clock_ns: Callable[[], int] = time.time_ns
    ) -> None:
        self.ledger = ledger
        self.catalog = catalog
        # The spend path's clock: a read at an instant answers what a spend would then do.
        self.clock_ns = clock_ns

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
        now = self.clock_ns()
        transfers = await _all_transfers(self.ledger, grant_id)
        block = block_of(accounts[0], transfers, self.catalog)
        return grant_balance(accounts[0], transfers, block.state(now, _AFTER_ALL))

    async def _read(self, wallet_id: int) -> _WalletRead:
        wallet = self.catalog.wallets.get(wallet_id)
        if wallet is None:
            raise NotFound(f"wallet {id_text(wallet_id)} not found")
        now = self.clock_ns()
        grants = await self.grant_accounts(wallet)
        # Both overdraft accounts, whatever the mode now: a wallet that was soft once keeps the
        # history of its bounded account (its draws were consumed); one never soft has none,
        # and the lookup leaves it out.
        overdraft_ids = [
            wallet.debt_account_id,
            overdraft_account_id(wallet.id, AccountCode.OVERDRAFT),
        ]
        overdrafts = await self.ledger.lookup_accounts(overdraft_ids)
        transfers = {a.id: await _all_transfers(self.ledger, a.id) for a in grants + overdrafts}
        blocks = {a.id: block_of(a, transfers[a.id], self.catalog) for a in grants}
        return _WalletRead(wallet, now, grants, overdrafts, transfers, blocks)

    async def wallet(self, wallet_id: int) -> WalletBalance:
        read = await self._read(wallet_id)
        grants = [
            grant_balance(a, read.transfers[a.id], read.blocks[a.id].state(read.now_ns, _AFTER_ALL))
            for a in read.grants
        ]
        overdraft = overdraft_of(read.wallet, read.overdrafts, read.transfers)
        return WalletBalance(
            wallet_id=read.wallet.id,
            ledger=read.wallet.ledger,
            available=sum(g.available for g in grants),
            held=sum(g.held for g in grants),
            upcoming=sum(g.upcoming for g in grants),
            consumed=sum(g.consumed for g in grants) + overdraft.consumed,
            expired=sum(g.expired for g in grants),
            voided=sum(g.voided for g in grants),
            overdraft_used=overdraft.used,
            overdraft_held=overdraft.held,
            overdraft_limit=overdraft.limit,
            overdraft_headroom=overdraft.headroom,
            grants=grants,
        )

    async def entries(
        self,
        wallet_id: int,
        *,
        after: str | None = None,
        limit: int = 100,
        types: Collection[str] | None = None,
    ) -> EntriesPage:
        """The wallet's entries in time order, `limit` at a time after the cursor `after`, of
        the given `types` only (every type when None). The whole history is replayed for the
        running figures, so a page costs as much as the wallet's history."""
        if not 1 <= limit <= LIST_PAGE_ROWS_MAX:
            raise InvalidRequest(f"limit must be in 1..{LIST_PAGE_ROWS_MAX}", field="limit")
        start = _parse_cursor(after) if after else None
        read = await self._read(wallet_id)
        page: list[Entry] = []
        last: Key | None = None
        for key, entry in _Timeline(read).entries():
            if (start is not None and key <= start) or (types and entry.type not in types):
                continue
            if len(page) == limit:
                return EntriesPage(page, _cursor(last) if last else None)
            page.append(entry)
            last = key
        return EntriesPage(page, None)


# The engine instant after every transfer a read saw (a void it read has happened).
_AFTER_ALL = 1 << 64


class _WalletRead(msgspec.Struct, frozen=True):
    """One read of a wallet's accounts and transfers, and its blocks' times."""

    wallet: Wallet
    # The clock's at the read: what a spend at this instant would go by. The engine stamps a
    # transfer a little after the clock its caller read, so some may come after it.
    now_ns: int
    grants: list[Account]
    overdrafts: list[Account]
    transfers: dict[int, list[Transfer]]
    blocks: dict[int, Block]


# An entry's place in the timeline: (instant, 0 for what the clock did and 1 for a transfer,
# the order among what the clock did at one instant, the account or leg). Transfers have
# unique timestamps; what the clock did at an instant comes before a transfer of that instant,
# as TigerBeetle expires pending transfers before it applies a request.
Key = tuple[int, int, int, int]
_EFFECTIVE, _EXPIRE, _TIMEOUT = 0, 1, 2


def _cursor(key: Key) -> str:
    text = ".".join(f"{part:x}" for part in key)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _parse_cursor(cursor: str) -> Key:
    """An opaque cursor this API gave back as the key it names."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        parts = tuple(int(part, 16) for part in text.split("."))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        parts = ()
    if len(parts) != 4:
        raise InvalidRequest("cursor is not one this API gave", field="cursor")
    return parts[0], parts[1], parts[2], parts[3]


class _Timeline:
    """A wallet's history replayed: every transfer on its accounts in timestamp order, and what
    the clock did in between (blocks becoming effective and expiring, reservations timing
    out), with the wallet's figures after each. Sweeps of credits a read had already counted
    out (expired or voided) change no figure and are not entries."""

    def __init__(self, read: _WalletRead) -> None:
        self.read = read
        self.kind = {a.id: "grant" for a in read.grants} | {
            a.id: "overdraft" for a in read.overdrafts
        }
        self.free = dict.fromkeys(self.kind, 0)  # a block's posted balance less what it holds
        self.live: dict[int, int] = {}  # a block's free credits counted in `available`
        # The wallet's figures: held on its blocks, its overdraft's deficit (held draws in).
        self.available = self.held = self.used = 0
        self.pending: dict[int, Transfer] = {}
        # A settle's operation -> its reservation: the overage legs of a settle come after its
        # posts, and carry the reservation's dimensions as the posts do.
        self.settled_by: dict[int, int] = {}

    def _events(self) -> list[tuple[Key, Transfer | None, int]]:
        """(key, transfer, block): each transfer once, each timeout of a pending leg and each
        block's transitions up to now; `block` names the block of a transition."""
        read, seen, resolved = self.read, set(), set()
        events: list[tuple[Key, Transfer | None, int]] = []
        for t in (t for transfers in read.transfers.values() for t in transfers):
            if t.id not in seen:  # a repay moves between two accounts of the wallet
                seen.add(t.id)
                events.append(((t.timestamp, 1, 0, 0), t, 0))
                resolved.add(t.pending_id)
        for t in (t for transfers in read.transfers.values() for t in transfers):
            if (
                t.flags & PENDING
                and t.timeout
                and t.id not in resolved
                and t.debit_account_id in self.kind
            ):
                resolved.add(t.id)
                deadline = t.timestamp + t.timeout * NS_PER_S
                if deadline <= read.now_ns:
                    events.append(((deadline, 0, _TIMEOUT, t.id), t, 0))
        for block in read.blocks.values():
            funded = min((t.timestamp for t in read.transfers[block.id]), default=0)
            for at, order in ((block.effective_at_ns, _EFFECTIVE), (block.expires_at_ns, _EXPIRE)):
                if at is None or at > read.now_ns:
                    continue
                if at > funded:
                    if block.voided_at_ns is None or at < block.voided_at_ns:
                        events.append(((at, 0, order, block.id), None, block.id))
                elif order == _EXPIRE and funded:
                    # Issued already expired (backdated): it expires right after its funding,
                    # so that the entries say where its credits went.
                    events.append(((funded, 2, order, block.id), None, block.id))
        events.sort(key=lambda event: event[0])
        return events

    def entries(self) -> Iterable[tuple[Key, Entry]]:
        for key, t, block_id in self._events():
            kind: EntryType | None
            spend = 0
            if t is None:
                account_id, kind, amount = self._transition(key, block_id)
                operation = block_id
            else:
                spend = self._spend_of(t)
                account_id, kind, amount = self._transfer(key, t)
                operation = t.user_data_128
            for touched in (account_id, t.credit_account_id if t else 0):
                self._restate(touched, key[0])
            if kind is not None and amount != 0:
                yield key, self._entry(key, kind, account_id, amount, operation, spend)

    def _spend_of(self, t: Transfer) -> int:
        """The spend (debit or reservation) whose dimensions an entry of `t` carries: a settle,
        release or timeout has its reservation's (its overage legs too), a usage refund its
        debit's."""
        if t.flags & (POST | VOID):
            pending = self.pending.get(t.pending_id)
            if pending is None:
                return 0
            self.settled_by[t.user_data_128] = pending.user_data_128
            return pending.user_data_128
        if t.code in _SPEND_CODES:
            return self.settled_by.get(t.user_data_128, t.user_data_128)
        return 0

    def _transition(self, key: Key, block_id: int) -> tuple[int, EntryType, int]:
        """A block became effective, or expired: what was free in it became, or stopped being,
        available."""
        if key[2] == _EFFECTIVE:
            return block_id, EntryType.EFFECTIVE, self.free[block_id]
        return block_id, EntryType.EXPIRE, -self.free[block_id]

    def _transfer(self, key: Key, t: Transfer) -> tuple[int, EntryType | None, int]:
        """(the account of its entry, its type or None when it is no entry, its amount)."""
        kind = entry_type(t)
        if key[1] == 0:  # the clock passed the leg's timeout
            return t.debit_account_id, EntryType.RESERVATION_EXPIRED, self._hold(t, -1)
        if t.flags & (POST | VOID):
            pending = self.pending[t.pending_id]
            self._hold(pending, -1)
            if t.flags & VOID:
                return pending.debit_account_id, kind, pending.amount
            self._move(pending.debit_account_id, -t.amount, t)
            return pending.debit_account_id, kind, -t.amount
        if t.flags & PENDING:
            return t.debit_account_id, kind, -self._hold(t, 1)
        debit, credit = t.debit_account_id, t.credit_account_id
        self._move(debit, -t.amount, t)
        self._move(credit, t.amount, t)
        if kind in (EntryType.EXPIRE, EntryType.VOID) and self._counted_out(debit, t):
            return debit, None, 0
        if kind is EntryType.ROLLOVER:  # the source's credits were counted out at its expiry
            return credit, kind, t.amount
        return (debit, kind, -t.amount) if debit in self.kind else (credit, kind, t.amount)

    def _hold(self, leg: Transfer, sign: int) -> int:
        """A pending leg holds (sign 1), or gives back (-1, voided or timed out), its amount."""
        if sign > 0:
            self.pending[leg.id] = leg
        else:
            self.pending.pop(leg.id)
        account_id = leg.debit_account_id
        if self.kind.get(account_id) == "grant":
            self.held += sign * leg.amount
        self._move(account_id, -sign * leg.amount, leg)
        return leg.amount

    def _move(self, account_id: int, amount: int, t: Transfer) -> None:
        """`amount` into (+) or out of (-) one of the wallet's accounts: a block's free credits,
        or an overdraft's deficit the other way round (its limit is no deficit)."""
        kind = self.kind.get(account_id)
        if kind == "grant":
            self.free[account_id] += amount
        elif kind == "overdraft" and t.code != TransferCode.OVERDRAFT_LIMIT:
            self.used -= amount

    def _state(self, block: Block, at_ns: int) -> BlockState:
        """A block's state at an event: its times are never judged past the clock of the read
        (a spend now goes by that clock, even for a transfer the engine stamped later)."""
        return block.state(min(at_ns, self.read.now_ns), at_ns)

    def _counted_out(self, block_id: int, t: Transfer) -> bool:
        """A sweep of credits that were no longer available: the block had expired, or had been
        voided, before this sweep."""
        block = self.read.blocks.get(block_id)
        return block is not None and self._state(block, t.timestamp - 1) in (
            BlockState.EXPIRED,
            BlockState.VOIDED,
        )

    def _restate(self, account_id: int, at_ns: int) -> None:
        """A block's part of `available` at `at_ns`, after its latest event."""
        block = self.read.blocks.get(account_id)
        if block is None:
            return
        live = self.free[account_id] if self._state(block, at_ns) is BlockState.ACTIVE else 0
        self.available += live - self.live.get(account_id, 0)
        self.live[account_id] = live

    def _entry(
        self, key: Key, kind: EntryType, account_id: int, amount: int, op: int, spend: int
    ) -> Entry:
        return Entry(
            at_ns=key[0],
            type=kind.value,
            account_id=account_id,
            account_kind=self.kind[account_id],
            amount=amount,
            operation_id=op,
            spend_id=spend,
            available_after=self.available,
            held_after=self.held,
            overdraft_used_after=self.used,
        )


class ReservationView(msgspec.Struct, frozen=True):
    status: str  # held | settled | released | expired
    legs: list[Transfer]


async def reservation_status(ledger: Ledger, reservation_id: int, now_ns: int) -> ReservationView:
    """Where a reservation stands: its marker's resolution, posted by a settle or voided by a
    release (two lookups, with the legs'); with neither, its marker's timeout decides between
    held and expired. A reservation made before markers existed has none: its status is then
    searched for (`_status_without_marker`)."""
    ids = leg_ids(reservation_id, range(chains.RESERVATION_LEGS))
    resolution_id = reservation_resolution_id(reservation_id)
    found = {t.id: t for t in await ledger.lookup_transfers([*ids, resolution_id])}
    legs = [found.get(i, Transfer()) for i in ids]
    marker = legs[chains.MARKER]
    if not marker.id:
        return await _status_without_marker(ledger, legs, now_ns)
    resolution = found.get(resolution_id)
    if resolution is not None:
        return ReservationView("settled" if resolution.flags & POST else "released", legs)
    expired = now_ns >= marker.timestamp + marker.timeout * NS_PER_S
    return ReservationView("expired" if expired else "held", legs)


async def _status_without_marker(
    ledger: Ledger, legs: list[Transfer], now_ns: int
) -> ReservationView:
    """A reservation made before markers: the account of a source leg that held something is
    searched for a post or void of that leg (they carry the leg's code), among the transfers
    that followed it on that account, at most a batch of them. A leg that held nothing tells
    nothing: a settle voids it like a release does. The post or void carries the operation that
    resolved it: a settle has its `SETTLE` leg, even for 0, a release has none. With neither
    post nor void, the timeout decides between held and expired."""
    sources = [
        t
        for t in legs[chains.FIRST_VARIABLE : chains.MARKER]
        if t.id and t.flags & PENDING and t.amount > 0
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
    expired = leg.timeout and now_ns >= leg.timestamp + leg.timeout * NS_PER_S
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
