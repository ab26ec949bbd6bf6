"""Pure builders of the TigerBeetle chains that move credits (ledger/README.md, "Drain chains").

No I/O here: each function takes what the spend path is and returns the list of transfers of
one linked chain, in order. The service runs them. Invariants:

- Every id is `leg_id(operation, index)` with a fixed index per role, so a retry derives the
  same ids and TigerBeetle answers `exists`, and a reservation's legs are found again from its
  id alone.
- Event 0 is the operation header (amount 0, `user_data_128` = the request's fingerprint): the
  same key with another body comes back `exists_with_different_*` from TigerBeetle itself.
- A drain chain moves exactly N or nothing: its last event, the check, fails when the sources
  came up short.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import msgspec

from ledger.codes import AccountCode, TransferCode
from ledger.ids import leg_id, leg_ids, overdraft_account_id, reservation_resolution_id
from ledger.limits import (
    CHAIN_LEGS_MAX,
    OVERAGE_LEG_INDEX,
    PATH_BUDGETS_MAX,
    PATH_SOURCES_MAX,
    SETTLE_LEG_INDEX,
)
from ledger.operations import CHECK as CHECK
from ledger.operations import FIRST_VARIABLE as FIRST_VARIABLE
from ledger.operations import HEADER as HEADER
from ledger.operations import NORMALIZE as NORMALIZE
from ledger.operations import SETUP as SETUP
from ledger.operations import Operation as Operation
from ledger.operations import header as header
from ledger.operations import make_leg as make_leg
from ledger.operations import system_account
from ledger.types import AMOUNT_MAX, Transfer, TransferFlags

# Under the `cap` policy, the leg passing what was collected to consumed.
CAP_CONSUME = CHAIN_LEGS_MAX
# A reservation's marker (ledger/README.md, "Reserve"): a fixed index past every other leg, so
# that a reservation's legs, read by index, include it; a reservation has this many.
MARKER = CHAIN_LEGS_MAX
RESERVATION_LEGS = MARKER + 1
assert MARKER < OVERAGE_LEG_INDEX

LINKED = TransferFlags.LINKED
PENDING = TransferFlags.PENDING
BD = TransferFlags.BALANCING_DEBIT
BC = TransferFlags.BALANCING_CREDIT
POST = TransferFlags.POST_PENDING_TRANSFER
VOID = TransferFlags.VOID_PENDING_TRANSFER
# Combinations built once: an IntFlag `|` is a Python call, and chains are built per request.
LINKED_PENDING = LINKED | PENDING
_LINKED_BC = LINKED | BC
# The flags of a source leg, by (pending, drains fully (BD|BC) or takes what is left (BC)).
_SOURCE_FLAGS = {
    (False, True): LINKED | BD | BC,
    (True, True): LINKED_PENDING | BD | BC,
    (False, False): LINKED | BC,
    (True, False): LINKED_PENDING | BC,
}


class SourceKind(enum.Enum):
    GRANT = "grant"
    OVERDRAFT = "overdraft"
    DEBT = "debt"  # an unbounded overdraft account: takes whatever is left


class Source(msgspec.Struct, frozen=True):
    """An account a spend may draw from, in burn order."""

    account_id: int
    kind: SourceKind
    wallet_id: int


class BudgetLeg(msgspec.Struct, frozen=True):
    budget_id: int
    account_id: int  # the budget account of the request's period
    resource_id: int


class SpendPath(msgspec.Struct, frozen=True):
    """Everything a drain chain needs, resolved from the catalog at the time of the request."""

    ledger: int
    tenant: int
    wallet_id: int
    resource_id: int
    sources: tuple[Source, ...]
    budgets: tuple[BudgetLeg, ...]

    def __post_init__(self) -> None:
        assert len(self.sources) <= PATH_SOURCES_MAX
        assert len(self.budgets) <= PATH_BUDGETS_MAX


def _source_legs(
    op: Operation,
    path: SpendPath,
    amount: int,
    first_index: int,
    pending: bool,
    timeout_s: int,
    ids: Sequence[int] | None = None,
) -> list[Transfer]:
    """One leg per source, in burn order; `pending`: a reservation's (bool, not the chain's
    flags: a `Flag` operation per leg costs about a microsecond)."""
    drain = system_account(op.ledger, AccountCode.CONTROL_DRAIN)
    legs = []
    for i, source in enumerate(path.sources):
        if source.kind is SourceKind.GRANT:
            code = TransferCode.RESERVE if pending else TransferCode.DEBIT
            leg_flags = _SOURCE_FLAGS[pending, True]
        elif source.kind is SourceKind.OVERDRAFT:
            code, leg_flags = TransferCode.OVERDRAFT_DRAW, _SOURCE_FLAGS[pending, True]
        else:
            code, leg_flags = TransferCode.OVERDRAFT_DRAW, _SOURCE_FLAGS[pending, False]
        legs.append(
            make_leg(
                op,
                first_index + i,
                source.account_id,
                drain,
                amount,
                code,
                leg_flags,
                timeout_s,
                ids,
            )
        )
    return legs


def drain_chain(
    op: Operation, path: SpendPath, amount: int, *, timeout_s: int = 0, dimensions_id: int = 0
) -> list[Transfer]:
    """Debit (timeout_s == 0) or reserve (timeout_s > 0) exactly `amount`, or nothing.
    `dimensions_id`: the spend's dimension set (`ledger.ids.dimension_set_id`), carried by the
    check leg, 0 for none."""
    assert amount > 0
    pending = timeout_s > 0
    ledger = op.ledger
    drain = system_account(ledger, AccountCode.CONTROL_DRAIN)
    hold = system_account(ledger, AccountCode.CONTROL_HOLD)
    flags = LINKED_PENDING if pending else LINKED
    ids = leg_ids(op.id, range(FIRST_VARIABLE + len(path.budgets) + len(path.sources)))
    setup = (
        make_leg(op, SETUP, drain, hold, amount, TransferCode.CONTROL_HOLD, LINKED, 0, ids)
        if pending
        else make_leg(
            op,
            SETUP,
            drain,
            system_account(ledger, AccountCode.CONSUMED),
            amount,
            TransferCode.CONSUME,
            LINKED,
            0,
            ids,
        )
    )
    # The set-up leg names the wallet spent from, so a reservation's wallet is found again
    # from its legs alone.
    setup.user_data_128 = path.wallet_id
    chain = [
        header(op, ids),
        make_leg(
            op,
            NORMALIZE,
            hold,
            drain,
            AMOUNT_MAX,
            TransferCode.CONTROL_NORMALIZE,
            _LINKED_BC,
            0,
            ids,
        ),
        setup,
    ]
    usage = system_account(ledger, AccountCode.BUDGET_USAGE)
    index = FIRST_VARIABLE
    for budget in path.budgets:
        chain.append(
            make_leg(
                op,
                index,
                budget.account_id,
                usage,
                amount,
                TransferCode.BUDGET_SPEND,
                flags,
                timeout_s,
                ids,
            )
        )
        index += 1
    chain += _source_legs(op, path, amount, index, pending, timeout_s, ids)
    if pending:
        chain.append(_marker(op, timeout_s))
    check = system_account(ledger, AccountCode.CONTROL_CHECK)
    last = make_leg(op, CHECK, check, drain, AMOUNT_MAX, TransferCode.CONTROL_CHECK, BC, 0, ids)
    # The spend's dimensions, by the id of their `dimension_sets` row (ledger/README.md,
    # "Dimensions"): the check leg's operation id is said by every other leg.
    last.user_data_128 = dimensions_id
    chain.append(last)
    return chain


def _marker(op: Operation, timeout_s: int) -> Transfer:
    """A reservation's marker: 0 between the header accounts, pending for as long as the
    reservation; the settle posts it, the release voids it, with one id of the reservation's
    (`reservation_resolution_id`), so where a reservation stands is two lookups away."""
    return make_leg(
        op,
        MARKER,
        system_account(op.ledger, AccountCode.OPERATION_HEADER_DEBIT),
        system_account(op.ledger, AccountCode.OPERATION_HEADER_CREDIT),
        0,
        TransferCode.RESERVATION_MARKER,
        LINKED_PENDING,
        timeout_s,
    )


def _resolve_marker(
    op: Operation, reservation: Sequence[Transfer], flag: TransferFlags
) -> Transfer:
    marker = reservation[MARKER]
    return Transfer(
        id=reservation_resolution_id(marker.user_data_128),
        pending_id=marker.id,
        user_data_128=op.id,
        user_data_64=op.effective_at_ns,
        user_data_32=op.tenant,
        flags=LINKED | flag,
    )


def budget_leg_index(path: SpendPath, position: int) -> int:
    return FIRST_VARIABLE + position


def source_leg_index(path: SpendPath, position: int) -> int:
    return FIRST_VARIABLE + len(path.budgets) + position


# ---------------------------------------------------------------------------------------------
# Settle and release: posts and voids of a reservation's pending legs.


class Overage(enum.StrEnum):
    REJECT = "reject"
    CAP = "cap"
    OVERDRAFT = "overdraft"


class SettlePlan(msgspec.Struct, frozen=True):
    chain: list[Transfer]
    posted: int  # credits posted from the reservation's legs
    released: int  # credits the reservation held and gave back
    overage: int  # credits asked beyond the reservation


def settle_chain(
    op: Operation,
    reservation: Sequence[Transfer],
    amount: int,
    overage_path: SpendPath | None,
    policy: Overage,
) -> SettlePlan:
    """Posts the reservation's legs in burn order up to `amount` and releases the rest; past the
    reserved amount, collects the overage in the same chain under `policy`."""
    ledger = op.ledger
    hold_leg = reservation[SETUP]
    reserved = hold_leg.amount
    to_post = min(amount, reserved)
    chain = [header(op)]
    remaining = to_post
    for index, leg in enumerate(reservation[:MARKER]):
        if index < FIRST_VARIABLE or leg.id == 0:
            continue
        if leg.code == TransferCode.BUDGET_SPEND:
            share = to_post
        else:
            share = min(remaining, leg.amount)
            remaining -= share
        chain.append(_resolve(op, SETTLE_LEG_INDEX + index, leg, share))
    assert remaining == 0
    consumed = system_account(ledger, AccountCode.CONSUMED)
    hold = system_account(ledger, AccountCode.CONTROL_HOLD)
    chain.append(make_leg(op, SETUP, hold, consumed, to_post, TransferCode.SETTLE, LINKED))
    overage = amount - to_post
    if overage > 0:
        assert overage_path is not None
        chain += overage_legs(op, overage_path, overage, policy, base=OVERAGE_LEG_INDEX)
    if len(reservation) > MARKER and reservation[MARKER].id:  # none before markers existed
        chain.append(_resolve_marker(op, reservation, POST))
    last = chain[-1]
    last.flags &= ~LINKED
    return SettlePlan(chain=chain, posted=to_post, released=reserved - to_post, overage=overage)


def _resolve(op: Operation, index: int, leg: Transfer, amount: int) -> Transfer:
    """Posts `amount` of a pending leg, or voids it when nothing of it is used."""
    flags = LINKED | (POST if amount > 0 else VOID)
    return Transfer(
        id=leg_id(op.id, index),
        pending_id=leg.id,
        amount=amount if amount > 0 else 0,
        user_data_128=op.id,
        user_data_64=op.effective_at_ns,
        user_data_32=op.tenant,
        flags=flags,
    )


def release_chain(op: Operation, reservation: Sequence[Transfer]) -> list[Transfer]:
    """Voids every pending leg of a reservation, and its marker."""
    chain = [header(op)]
    for index, leg in enumerate(reservation[:MARKER]):
        if index < FIRST_VARIABLE or leg.id == 0:
            continue
        chain.append(_resolve(op, SETTLE_LEG_INDEX + index, leg, 0))
    if len(reservation) > MARKER and reservation[MARKER].id:  # none before markers existed
        chain.append(_resolve_marker(op, reservation, VOID))
    chain[-1].flags &= ~LINKED
    return chain


def name_the_spend(chain: list[Transfer], wallet_id: int, dimensions_id: int) -> None:
    """Makes a settle's fallback debit (header, then `overage_legs` from index 0) say, as a
    debit does, which wallet spent (its set-up leg) and with which dimensions (event 3: the
    check, or under `cap` the leg that gives back the shortfall)."""
    op_id = chain[SETUP].user_data_128
    assert chain[SETUP].id == leg_id(op_id, SETUP), "not a fallback debit's chain"
    chain[SETUP].user_data_128 = wallet_id
    check_id = leg_id(op_id, CHECK)
    (check,) = [leg for leg in chain if leg.id == check_id]
    check.user_data_128 = dimensions_id


def overage_legs(
    op: Operation, path: SpendPath, amount: int, policy: Overage, *, base: int
) -> list[Transfer]:
    """Collects `amount` under `policy`: `reject` needs all of it, `cap` takes what the sources
    have, `overdraft` takes the rest from the wallet's debt account. Indexes start at `base`."""
    ledger = op.ledger
    drain = system_account(ledger, AccountCode.CONTROL_DRAIN)
    hold = system_account(ledger, AccountCode.CONTROL_HOLD)
    consumed = system_account(ledger, AccountCode.CONSUMED)
    legs = [
        make_leg(
            op,
            base + NORMALIZE,
            hold,
            drain,
            AMOUNT_MAX,
            TransferCode.CONTROL_NORMALIZE,
            LINKED | BC,
        ),
    ]
    capped = policy is Overage.CAP
    if capped:
        cap = system_account(ledger, AccountCode.CONTROL_CAP)
        legs.append(
            make_leg(op, base + SETUP, drain, cap, amount, TransferCode.CONTROL_CAP, LINKED)
        )
    else:
        legs.append(
            make_leg(op, base + SETUP, drain, consumed, amount, TransferCode.CONSUME, LINKED)
        )
    usage = system_account(ledger, AccountCode.BUDGET_USAGE)
    index = base + FIRST_VARIABLE
    budget_flags = LINKED if policy is Overage.REJECT else LINKED | BD
    for budget in path.budgets:
        legs.append(
            make_leg(
                op, index, budget.account_id, usage, amount, TransferCode.BUDGET_SPEND, budget_flags
            )
        )
        index += 1
    kept = tuple(s for s in path.sources if s.kind is not SourceKind.DEBT)
    if policy is Overage.OVERDRAFT:
        # Whatever the wallet's limit, the overage is owed: the wallet's debt account takes
        # what the blocks and the overdraft headroom could not.
        debt = overdraft_account_id(path.wallet_id, AccountCode.OVERDRAFT_UNBOUNDED)
        kept += (Source(debt, SourceKind.DEBT, path.wallet_id),)
    sources = msgspec.structs.replace(path, sources=kept)
    legs += _source_legs(op, sources, amount, index, False, 0)
    if capped:
        cap = system_account(ledger, AccountCode.CONTROL_CAP)
        legs.append(
            make_leg(
                op, base + CHECK, cap, drain, AMOUNT_MAX, TransferCode.CONTROL_CAP, LINKED | BC
            )
        )
        legs.append(
            make_leg(
                op, base + CAP_CONSUME, cap, consumed, AMOUNT_MAX, TransferCode.CONSUME, LINKED | BD
            )
        )
    else:
        check = system_account(ledger, AccountCode.CONTROL_CHECK)
        legs.append(
            make_leg(
                op, base + CHECK, check, drain, AMOUNT_MAX, TransferCode.CONTROL_CHECK, LINKED | BC
            )
        )
    return legs
