"""The ledger's transfers as typed entries: the pure half of the projection.

No I/O here. `project` takes whole linked chains, in engine timestamp order, with what it needs
to know about them (the accounts they touch, the pending legs they resolve, the debits they
refund), and returns the entries they make and the pending legs they open and resolve. The
feed (`wallets.projection`) reads the engine, gathers that context and writes the result.
ledger/README.md ("The projection") is the table of what each transfer becomes; invariants:

- An entry is a movement of credits on an owned account (a block, an overdraft account, a
  budget account). `amount` is the signed change of the account's posted balance (credits
  minus debits), `pending` the signed change of the debits reservations hold on it; summed over
  an account's entries they are its balances in the engine.
- Bookkeeping events (headers, the control legs of a drain chain, reservation markers,
  projection ticks) touch only system accounts and make no entry; nor does a balancing leg that
  moved nothing.
- The same transfers give the same entries, whatever the batches they come in: an entry is a
  function of its chain and of the pending leg it resolves, never of the time it is projected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import msgspec

from ledger.codes import AccountCode, TransferCode
from ledger.ids import leg_id
from ledger.operations import CHECK, SETUP
from ledger.repositories.projection import BlockTerms, Entry, EntryRow, PendingLeg, RollupRow
from ledger.types import Transfer, TransferFlags, TransferRecord

NS_PER_S: Final = 1_000_000_000
# The expiry of a pending leg without a timeout: past every engine timestamp (< 2^63).
NEVER_NS: Final = (1 << 63) - 1

# Plain ints: an IntFlag `&` is a Python-level call, and the feed tests every transfer's flags
# (`t.flags & X` stays in C).
_LINKED: Final = int(TransferFlags.LINKED)
PENDING: Final = int(TransferFlags.PENDING)
_POST: Final = int(TransferFlags.POST_PENDING_TRANSFER)
_RESOLVES: Final = _POST | int(TransferFlags.VOID_PENDING_TRANSFER)

ACCOUNT_KINDS: Final[dict[int, str]] = {
    AccountCode.GRANT: "block",
    AccountCode.OVERDRAFT: "overdraft",
    AccountCode.OVERDRAFT_UNBOUNDED: "overdraft",
    AccountCode.BUDGET: "budget",
}

# What a posted transfer of each code is, seen from the owned account it moves.
POSTED_KINDS: Final[dict[int, str]] = {
    TransferCode.GRANT_FUNDING: "grant",
    TransferCode.DEBIT: "debit",
    TransferCode.EXPIRE: "expire",
    TransferCode.GRANT_VOID: "void",
    TransferCode.GRANT_REFUND: "refund_out",
    TransferCode.USAGE_REFUND: "refund",
    TransferCode.CORRECTION: "correction",
    TransferCode.OVERDRAFT_LIMIT: "overdraft_limit",
    TransferCode.OVERDRAFT_DRAW: "overdraft_draw",
    TransferCode.OVERDRAFT_REPAY: "overdraft_repay",
    TransferCode.BUDGET_LIMIT: "budget_limit",
    TransferCode.BUDGET_SPEND: "budget_usage",
    # Source block -> its rollover block: an entry on each (-, +), no consumption.
    TransferCode.ROLLOVER: "rollover",
}
NS_PER_HOUR: Final = 3600 * NS_PER_S
NS_PER_DAY: Final = 24 * NS_PER_HOUR
GRAINS: Final = (("hour", NS_PER_HOUR), ("day", NS_PER_DAY))

# The set-up legs of a spend's chain: a debit's, a reservation's, a settle's fallback debit's.
_SPEND_SETUPS: Final = frozenset(
    {TransferCode.CONSUME, TransferCode.CONTROL_HOLD, TransferCode.CONTROL_CAP}
)

# Codes whose transfers can move an owned account: the others are bookkeeping.
MOVING_CODES: Final = frozenset(POSTED_KINDS) | {TransferCode.RESERVE}
# The kinds that are consumption (summed by the usage rollups, on blocks and overdraft).
CONSUMPTION_KINDS: Final = ("debit", "settle", "overdraft_draw", "refund")


class AccountInfo(msgspec.Struct, frozen=True):
    """What the projection needs of an account: its kind and its owner (`user_data_128`)."""

    code: int
    owner: int


class SpendOf(msgspec.Struct, frozen=True):
    """The spend a usage refund gives back: its wallet and dimension set."""

    wallet_id: int
    dimension_set_id: int


class Projected(msgspec.Struct):
    entries: list[Entry]
    opened: list[PendingLeg]  # pending legs opened by these chains and still open after them
    resolved: list[int]  # pending legs opened before these chains, posted or voided by them


class _Context(msgspec.Struct):
    wallet_id: int = 0
    dimension_set_id: int = 0
    reservation_id: int = 0


def split_chains(transfers: Sequence[TransferRecord]) -> list[list[TransferRecord]]:
    """Whole linked chains, in order; a trailing chain cut short is left out."""
    chains: list[list[TransferRecord]] = []
    current: list[TransferRecord] = []
    for t in transfers:
        current.append(t)
        if not t.flags & _LINKED:
            chains.append(current)
            current = []
    return chains


def needed_accounts(chains: Sequence[Sequence[TransferRecord]]) -> set[int]:
    """The accounts whose kind and owner `project` needs."""
    out: set[int] = set()
    for chain in chains:
        for t in chain:
            if t.code in MOVING_CODES and not t.flags & _RESOLVES:
                out.add(t.debit_account_id)
                out.add(t.credit_account_id)
    return out


def needed_pending(chains: Sequence[Sequence[TransferRecord]]) -> set[int]:
    """The pending legs that posts and voids in these chains resolve."""
    return {
        t.pending_id
        for chain in chains
        for t in chain
        if t.flags & _RESOLVES and t.code in MOVING_CODES
    }


def refunded_debits(chains: Sequence[Sequence[TransferRecord]]) -> set[int]:
    """The debits that usage refunds in these chains give back (their legs name them)."""
    return {
        t.user_data_128 for chain in chains for t in chain if t.code == TransferCode.USAGE_REFUND
    }


def spend_legs(debit_id: int) -> tuple[int, int]:
    """The ids of a spend's set-up leg (its wallet) and check leg (its dimension set)."""
    return leg_id(debit_id, SETUP), leg_id(debit_id, CHECK)


def spend_of(setup: Transfer | None, check: Transfer | None) -> SpendOf:
    """A spend's wallet and dimension set from its set-up and check legs (a set equal to the
    spend's id: one written before chains carried sets, see `drain_chain_operation`)."""
    wallet = setup.user_data_128 if setup is not None else 0
    return SpendOf(wallet, check.user_data_128 if check is not None else 0)


def legacy_operations(
    chains: Sequence[Sequence[TransferRecord]], spends: Mapping[int, SpendOf]
) -> set[int]:
    """The spends among these chains (and refunded by them) whose dimensions are legacy rows."""
    out = {debit for debit, of in spends.items() if of.dimension_set_id == debit}
    for chain in chains:
        spend = drain_chain_operation(chain)
        if spend is not None and spend[0] == spend[2]:
            out.add(spend[0])
    return out


def drain_chain_operation(chain: Sequence[TransferRecord]) -> tuple[int, int, int] | None:
    """(operation, wallet, dimension set) of a spend's chain (a debit, a reservation, a settle's
    fallback debit), else None. The set is on the spend's event 3 (its check leg: the chain's
    last, but for a fallback under `cap`). A chain written before spends carried a set has the
    operation there, and in a fallback's set-up leg (then the wallet is 0: unknown); its set is
    then the operation itself (the feed looks it up among the legacy rows)."""
    if (
        len(chain) < 4
        or chain[0].code != TransferCode.OPERATION_HEADER
        or chain[1].code != TransferCode.CONTROL_NORMALIZE
        or chain[2].code not in _SPEND_SETUPS
    ):
        return None
    op = chain[1].user_data_128
    wallet = chain[2].user_data_128
    last = chain[-1]
    if last.code == TransferCode.CONTROL_CHECK:
        dimensions = last.user_data_128
    else:
        check_id = leg_id(op, CHECK)
        dimensions = next((t.user_data_128 for t in chain if t.id == check_id), 0)
    return op, 0 if wallet == op else wallet, dimensions


def project(
    chains: Sequence[Sequence[TransferRecord]],
    accounts: Mapping[int, AccountInfo],
    pending: Mapping[int, PendingLeg],
    spends: Mapping[int, SpendOf],
    legacy_dimensions: Mapping[int, int],
) -> Projected:
    """The entries of `chains`; `pending`: the open legs they may resolve (from before them);
    `spends`: the refunded debits; `legacy_dimensions`: operation -> dimension set of spends
    whose chains carry none."""
    out = Projected([], [], [])
    opened: dict[int, PendingLeg] = {}
    for chain in chains:
        context = _context(chain, pending, opened, spends, legacy_dimensions)
        for t in chain:
            if t.flags & _RESOLVES:
                _resolve(t, pending, opened, out)
            elif t.code in MOVING_CODES:
                _move(t, accounts, context, opened, out)
    out.opened = list(opened.values())
    return out


def timeout_entry(leg: PendingLeg) -> Entry:
    """What a pending leg's timeout is: the engine released it at `expires_at_ns`."""
    return Entry(
        transfer_id=leg.transfer_id,
        kind="timeout",
        effective_at_ns=leg.expires_at_ns,
        engine_ts=leg.expires_at_ns,
        code=leg.code,
        credit_type_id=leg.credit_type_id,
        account_id=leg.account_id,
        account_kind=leg.account_kind,
        owner_id=leg.owner_id,
        wallet_id=leg.wallet_id,
        operation_id=leg.reservation_id,
        reservation_id=leg.reservation_id,
        amount=0,
        pending=-leg.amount,
        dimension_set_id=leg.dimension_set_id,
    )


def _context(
    chain: Sequence[TransferRecord],
    pending: Mapping[int, PendingLeg],
    opened: Mapping[int, PendingLeg],
    spends: Mapping[int, SpendOf],
    legacy_dimensions: Mapping[int, int],
) -> _Context:
    """Whose spend a chain is, and with which dimensions (see `Entry.wallet_id`)."""
    spend = drain_chain_operation(chain)
    if spend is not None:
        op, wallet, dimensions = spend
        if dimensions == op:
            dimensions = legacy_dimensions.get(op, 0)
        held = chain[2].code == TransferCode.CONTROL_HOLD
        return _Context(wallet, dimensions, op if held else 0)
    for t in chain:
        if t.flags & _RESOLVES:
            leg = opened.get(t.pending_id) or pending.get(t.pending_id)
            if leg is not None:
                return _Context(leg.wallet_id, leg.dimension_set_id, leg.reservation_id)
        if t.code == TransferCode.USAGE_REFUND and t.user_data_128 in spends:
            debit, of = t.user_data_128, spends[t.user_data_128]
            dimensions = of.dimension_set_id
            if dimensions == debit:
                dimensions = legacy_dimensions.get(debit, 0)
            return _Context(of.wallet_id, dimensions)
    return _Context()


def _resolve(
    t: TransferRecord,
    pending: Mapping[int, PendingLeg],
    opened: dict[int, PendingLeg],
    out: Projected,
) -> None:
    leg = opened.pop(t.pending_id, None)
    if leg is None:
        leg = pending.get(t.pending_id)
        if leg is None:
            return  # a leg on system accounts (a marker), or one that moved nothing
        out.resolved.append(leg.transfer_id)
    posted = t.amount if t.flags & _POST else 0
    if posted:
        out.entries.append(_resolution(t, leg, "settle", -posted, -posted))
    if leg.amount > posted:
        out.entries.append(_resolution(t, leg, "release", 0, posted - leg.amount))


def _resolution(t: TransferRecord, leg: PendingLeg, kind: str, amount: int, pending: int) -> Entry:
    return Entry(
        transfer_id=t.id,
        kind=kind,
        effective_at_ns=t.user_data_64 or t.timestamp,
        engine_ts=t.timestamp,
        code=t.code,
        credit_type_id=leg.credit_type_id,
        account_id=leg.account_id,
        account_kind=leg.account_kind,
        owner_id=leg.owner_id,
        wallet_id=leg.wallet_id,
        operation_id=t.user_data_128,
        reservation_id=leg.reservation_id,
        amount=amount,
        pending=pending,
        dimension_set_id=leg.dimension_set_id,
    )


def _move(
    t: TransferRecord,
    accounts: Mapping[int, AccountInfo],
    context: _Context,
    opened: dict[int, PendingLeg],
    out: Projected,
) -> None:
    if t.amount == 0:
        return  # a balancing leg that moved nothing
    pending = bool(t.flags & PENDING)
    for account_id, sign in ((t.debit_account_id, -1), (t.credit_account_id, 1)):
        info = accounts.get(account_id)
        kind = ACCOUNT_KINDS.get(info.code) if info is not None else None
        if info is None or kind is None:
            continue
        wallet = context.wallet_id or (info.owner if kind != "budget" else 0)
        entry = Entry(
            transfer_id=t.id,
            kind="reserve" if pending else POSTED_KINDS[t.code],
            effective_at_ns=t.user_data_64 or t.timestamp,
            engine_ts=t.timestamp,
            code=t.code,
            credit_type_id=t.ledger,
            account_id=account_id,
            account_kind=kind,
            owner_id=info.owner,
            wallet_id=wallet,
            operation_id=t.user_data_128,
            reservation_id=context.reservation_id,
            amount=0 if pending else sign * t.amount,
            pending=t.amount if pending else 0,
            dimension_set_id=context.dimension_set_id,
        )
        out.entries.append(entry)
        if pending:
            assert sign < 0, f"a pending leg credits an owned account: {t}"
            opened[t.id] = PendingLeg(
                transfer_id=t.id,
                expires_at_ns=t.timestamp + t.timeout * NS_PER_S if t.timeout else NEVER_NS,
                amount=t.amount,
                code=t.code,
                credit_type_id=t.ledger,
                account_id=account_id,
                account_kind=kind,
                owner_id=info.owner,
                wallet_id=wallet,
                reservation_id=context.reservation_id,
                dimension_set_id=context.dimension_set_id,
            )


# -- what the catalog says of entries, and what they add to the rollups -------------------------


def value_nano(amount: int, terms: BlockTerms | None) -> int:
    """`amount` credits of a block at its cost basis (consideration / credits), in 10^-9 minor
    units, rounded half away from zero: informative (attribution); finance's postings round
    per block, cumulatively."""
    if terms is None or terms.consideration_minor == 0:
        return 0
    whole, rest = divmod(abs(amount) * terms.consideration_minor * NS_PER_S, terms.amount)
    if 2 * rest >= terms.amount:
        whole += 1
    return whole if amount >= 0 else -whole


def enrich(
    entries: Sequence[Entry],
    wallets: Mapping[int, tuple[int, int]],
    budgets: Mapping[int, tuple[int, int]],
    blocks: Mapping[int, BlockTerms],
) -> list[EntryRow]:
    """Each entry with its resource and customer (its wallet's, else its budget's) and, on a
    block, its currency and value; 0 and '' for what the catalog does not know."""
    rows = []
    for e in entries:
        owner = wallets.get(e.wallet_id) if e.wallet_id else None
        if owner is None and e.account_kind == "budget":
            owner = budgets.get(e.owner_id)
        resource, customer = owner if owner is not None else (0, 0)
        terms = blocks.get(e.account_id) if e.account_kind == "block" else None
        rows.append(
            EntryRow(
                entry=e,
                resource_id=resource,
                customer_id=customer,
                currency=terms.currency if terms is not None else "",
                value_nano=value_nano(e.amount, terms),
            )
        )
    return rows


def rollups(rows: Sequence[EntryRow]) -> list[RollupRow]:
    """What the consumption among `rows` adds to each hour's and day's rollup: credits consumed
    (debits, settles, overdraft draws, less usage refunds) and their value, per key."""
    sums: dict[tuple[int, str, int, int, int, int, int, str], list[int]] = {}
    for row in rows:
        e = row.entry
        if (
            e.kind not in CONSUMPTION_KINDS
            or e.account_kind == "budget"
            or not (row.customer_id and row.resource_id and e.wallet_id)
        ):
            continue
        for grain, width_ns in GRAINS:
            key = (
                row.customer_id,
                grain,
                e.effective_at_ns // 1000 * 1000 // width_ns * width_ns,
                row.resource_id,
                e.wallet_id,
                e.credit_type_id,
                e.dimension_set_id,
                row.currency,
            )
            total = sums.setdefault(key, [0, 0, 0])
            total[0] -= e.amount
            total[1] -= row.value_nano
            total[2] += 1
    return [
        RollupRow(
            customer_id=customer,
            grain=grain,
            bucket_start_ns=bucket,
            resource_id=resource,
            wallet_id=wallet,
            credit_type_id=credit_type,
            dimension_set_id=dimensions,
            currency=currency,
            credits=credits,
            value_nano=value,
            entries=count,
        )
        for (customer, grain, bucket, resource, wallet, credit_type, dimensions, currency), (
            credits,
            value,
            count,
        ) in sums.items()
    ]
