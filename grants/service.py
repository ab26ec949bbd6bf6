"""Credit blocks on the ledger: issue, void, expire (sweep), refund usage, refund in money.

Each operation is idempotent on its own: ids derive from the caller's key (issue, void, refund)
or from the block's balances (expiry sweeps), so a retry finds `exists` and moves nothing twice.
The Postgres side of these operations (catalog rows, idempotency records, the audit log) is the
caller's (`wallets.control`), ordered around these calls so that a crash between the two stores
leaves nothing reconciliation cannot finish.

The blocks this process spends from live in a cache the caller owns (`GrantCache`: the spend
path's catalog): a block joins it once funded and leaves it once nothing can come back to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import msgspec

from grants.errors import IdempotencyConflict, InvalidRequest, NotFound
from grants.model import Category, Grant
from ledger.client import Ledger
from ledger.codes import AccountCode, TransferCode, account_flags
from ledger.ids import derive_id, id_text, leg_id, system_account_id
from ledger.limits import (
    AMOUNT_MAX_REQUEST,
    BATCH_EVENTS_MAX,
    BUSINESS_TIME_NS_MAX,
    CHAIN_LEGS_MAX,
)
from ledger.operations import (
    FIRST_VARIABLE,
    SETUP,
    Operation,
    close_chain,
    fingerprint_of,
    header,
    make_leg,
    read_legs,
)
from ledger.statuses import Outcome, transfer_outcome
from ledger.types import (
    AMOUNT_MAX,
    Account,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    CreateAccountStatus,
    CreateTransferStatus,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
    TransferFlags,
)

_logger = logging.getLogger(__name__)
S = CreateTransferStatus
LINKED = TransferFlags.LINKED
BD = TransferFlags.BALANCING_DEBIT
BC = TransferFlags.BALANCING_CREDIT


class WalletAccounts(msgspec.Struct, frozen=True):
    """What issuing a block needs of its wallet: where an overdraft deficit is repaid."""

    debt_account_id: int  # the unbounded overdraft (debt) account every wallet has
    overdraft_account_id: int | None = None  # the bounded one of a soft-limited wallet
    overdraft_limit: int = 0


class GrantCache(Protocol):
    """The blocks a spend may draw from, as the caller caches them (wallets.catalog.Catalog)."""

    @property
    def grants(self) -> Mapping[int, Grant]: ...

    def put_grant(self, grant: Grant) -> None: ...

    def drop_grant(self, grant_id: int) -> None: ...

    def wallet_accounts(self, wallet_id: int) -> WalletAccounts: ...


class IssueResult(msgspec.Struct, frozen=True):
    grant_id: int
    amount: int
    repaid: int  # what went straight to the wallet's overdraft deficit
    replayed: bool


class SweepResult(msgspec.Struct, frozen=True):
    grant_id: int
    amount: int
    reason: str  # "expired" | "voided"


class RolloverResult(msgspec.Struct, frozen=True):
    """A block's rollover, carried out: what was left of it (available at the time its amounts
    were fixed), what moved out of it into `carried_id`, what the floor added in `floor_id`."""

    source_id: int
    remaining: int
    taken: int
    floor: int
    carried_id: int | None = None
    floor_id: int | None = None
    refused: bool = False  # the engine found less left than fixed: nothing moved


class SweepReport(msgspec.Struct, frozen=True):
    swept: list[SweepResult]
    # Blocks with nothing left and nothing held: nothing can come back to them, so they
    # leave the cache and are 'expired' (or stay 'voided') for good.
    finished: list[int]
    # Rollovers carried out before the sweep (ControlPlane.sweep).
    rolled_over: list[RolloverResult] = []


class BlockBalances(msgspec.Struct, frozen=True):
    """A block's balances on the engine, as a rollover reads them."""

    available: int  # posted balance less what reservations hold
    posted: int  # credits_posted - debits_posted
    tenant: int


class RefundResult(msgspec.Struct, frozen=True):
    operation_id: int
    debit_id: int
    amount: int
    restored: list[tuple[int, int]]  # (account id, amount), reverse burn order
    replayed: bool


class GrantService:
    def __init__(
        self, ledger: Ledger, cache: GrantCache, *, clock_ns: Callable[[], int] = time.time_ns
    ) -> None:
        self.ledger = ledger
        self.cache = cache
        self.clock_ns = clock_ns
        # Blocks that were voided: kept so that credits a release returns to them are voided too.
        self.voided: dict[int, Grant] = {}

    async def issue(
        self,
        grant: Grant,
        *,
        tenant: int,
        fingerprint: int,
        accounts: WalletAccounts | None = None,
    ) -> IssueResult:
        """Opens the block's account and funds it, repaying the wallet's deficit first.
        `accounts`: the wallet's, as the caller read them (else the cache's)."""
        if not 1 <= grant.amount <= AMOUNT_MAX_REQUEST:
            raise InvalidRequest("amount out of range", field="amount")
        wallet = accounts or self.cache.wallet_accounts(grant.wallet_id)
        account = Account(
            id=grant.id,
            ledger=grant.ledger,
            code=AccountCode.GRANT,
            user_data_128=grant.wallet_id,
            user_data_64=grant.effective_at_ns,
            user_data_32=tenant,
            flags=AccountFlags(account_flags(AccountCode.GRANT)),
        )
        (created,) = await self.ledger.create_accounts([account])
        if created.status not in (CreateAccountStatus.CREATED, CreateAccountStatus.EXISTS):
            raise IdempotencyConflict("this idempotency key issued another grant")
        op = Operation(grant.id, fingerprint, grant.ledger, tenant, grant.effective_at_ns)
        issuance = (
            AccountCode.ISSUANCE_PAID
            if grant.category is Category.PAID
            else AccountCode.ISSUANCE_PROMOTIONAL
        )
        chain = [
            header(op),
            make_leg(
                op,
                1,
                system_account_id(grant.ledger, issuance),
                grant.id,
                grant.amount,
                TransferCode.GRANT_FUNDING,
                LINKED,
            ),
            make_leg(
                op,
                2,
                grant.id,
                wallet.debt_account_id,
                AMOUNT_MAX,
                TransferCode.OVERDRAFT_REPAY,
                LINKED | BD | BC,
            ),
        ]
        deficit = await self._bounded_deficit(wallet)
        if deficit > 0:
            assert wallet.overdraft_account_id is not None
            chain.append(
                make_leg(
                    op,
                    3,
                    grant.id,
                    wallet.overdraft_account_id,
                    deficit,
                    TransferCode.OVERDRAFT_REPAY,
                    LINKED | BD,
                )
            )
        results = await self.ledger.create_transfers(close_chain(chain))
        replayed = results[0].status is S.EXISTS
        if not replayed and any(r.status is not S.CREATED for r in results):
            if transfer_outcome(results[0].status) is Outcome.CONFLICT:
                raise IdempotencyConflict("this idempotency key issued another grant")
            raise AssertionError(f"grant funding failed: {[r.status.name for r in results]}")
        legs = {
            t.id: t for t in await self.ledger.lookup_transfers([leg_id(op.id, i) for i in (2, 3)])
        }
        repaid = sum(t.amount for t in legs.values())
        self.cache.put_grant(grant)
        return IssueResult(grant.id, grant.amount, repaid, replayed)

    async def _bounded_deficit(self, wallet: WalletAccounts) -> int:
        """The posted deficit of a bounded overdraft account: what was drawn and not repaid.
        Read, not enforced: draws only ever raise it, so a stale read repays too little, never
        too much; and grants to one wallet are issued one at a time."""
        if wallet.overdraft_account_id is None or wallet.overdraft_limit == 0:
            return 0
        accounts = await self.ledger.lookup_accounts([wallet.overdraft_account_id])
        if not accounts:
            return 0
        a = accounts[0]
        return max(0, a.debits_posted + wallet.overdraft_limit - a.credits_posted)

    async def void(
        self, grant_id: int, *, tenant: int, key: str, grant: Grant | None = None
    ) -> SweepResult:
        """Takes what is left of a block out of the wallet; held credits stay held, and what a
        release later gives back to the block is voided by the next sweep. `grant`: the block
        as the caller read it (the cache may already have dropped a block being voided)."""
        grant = grant or self.cache.grants.get(grant_id) or self.voided.get(grant_id)
        if grant is None:
            raise NotFound(f"grant {id_text(grant_id)} not found")
        self.cache.drop_grant(grant_id)
        self.voided[grant_id] = grant
        op = derive_id("grant/void", tenant, key)
        sweep = _sweep(grant, op, AccountCode.VOIDED, TransferCode.GRANT_VOID, tenant)
        (result,) = await self.ledger.create_transfers([sweep])
        if result.status not in (S.CREATED, S.EXISTS):
            raise IdempotencyConflict(f"grant void refused: {result.status.name}")
        (moved,) = await self.ledger.lookup_transfers([sweep.id])
        return SweepResult(grant_id, moved.amount, "voided")

    async def void_part(
        self, grant: Grant, *, operation_id: int, credits: int, tenant: int
    ) -> bool:
        """A void of part of a block: takes exactly `credits` of what it has available to the
        ledger's voided account, in one transfer (`GRANT_VOID`; id and `user_data_128`: the
        operation, never the block's id, which only sweeps carry; `user_data_64` 0: it is dated
        by the engine's time), never a balancing one, so the engine's balance constraint, not a
        read, keeps it from overdrawing the block. The block stays in force. True once applied
        (now, or by an earlier attempt: `exists`); False when the engine refused it because the
        block has less available than that (nothing moved; the same operation stays refused)."""
        if not 1 <= credits <= AMOUNT_MAX_REQUEST:
            raise InvalidRequest("amount out of range", field="amount")
        transfer = Transfer(
            id=operation_id,
            debit_account_id=grant.id,
            credit_account_id=system_account_id(grant.ledger, AccountCode.VOIDED),
            amount=credits,
            user_data_128=operation_id,
            user_data_64=0,
            user_data_32=tenant,
            ledger=grant.ledger,
            code=TransferCode.GRANT_VOID,
            flags=TransferFlags.NONE,
        )
        (result,) = await self.ledger.create_transfers([transfer])
        if result.status in (S.CREATED, S.EXISTS):
            return True
        if result.status in (S.EXCEEDS_CREDITS, S.ID_ALREADY_FAILED):
            return False
        raise IdempotencyConflict(f"grant void refused: {result.status.name}")

    async def left(self, grant_id: int) -> tuple[int, int] | None:
        """What is left of a block, not held by reservations, as the engine has it now, and
        the block's tenant (its account's `user_data_32`); None without an account."""
        accounts = await self.ledger.lookup_accounts([grant_id])
        if not accounts or accounts[0].code != AccountCode.GRANT:
            return None
        a = accounts[0]
        return max(0, a.credits_posted - a.debits_posted - a.debits_pending), a.user_data_32

    async def balances(self, grant_id: int) -> BlockBalances | None:
        """The block's balances now; None without an account."""
        accounts = await self.ledger.lookup_accounts([grant_id])
        if not accounts or accounts[0].code != AccountCode.GRANT:
            return None
        a = accounts[0]
        posted = a.credits_posted - a.debits_posted
        return BlockBalances(max(0, posted - a.debits_pending), posted, a.user_data_32)

    async def roll_over(
        self,
        source: Grant,
        carried: Grant | None,
        floor: Grant | None,
        *,
        tenant: int,
    ) -> bool:
        """The ledger side of a rollover (ledger/README.md "Rollover"): the new blocks'
        accounts, then one linked chain: `carried.amount` from the source to the carried block
        (ROLLOVER, exact, never balancing) and the floor's funding from the promotional issuer
        (GRANT_FUNDING). Ids derive from the source, so a retry answers `exists`. True once
        applied (now or before); False when the engine refused it because the source has less
        left than that (it was voided meanwhile: nothing moved, and never will)."""
        blocks = [b for b in (carried, floor) if b is not None]
        if not blocks:
            return True
        created = await self.ledger.create_accounts(
            [
                Account(
                    id=b.id,
                    ledger=b.ledger,
                    code=AccountCode.GRANT,
                    user_data_128=b.wallet_id,
                    user_data_64=b.effective_at_ns,
                    user_data_32=tenant,
                    flags=AccountFlags(account_flags(AccountCode.GRANT)),
                )
                for b in blocks
            ]
        )
        if any(
            c.status not in (CreateAccountStatus.CREATED, CreateAccountStatus.EXISTS)
            for c in created
        ):
            raise AssertionError(f"rollover accounts refused: {[c.status.name for c in created]}")
        chain: list[Transfer] = []
        if carried is not None:
            chain.append(
                Transfer(
                    id=rollover_transfer_id(carried.id),
                    debit_account_id=source.id,
                    credit_account_id=carried.id,
                    amount=carried.amount,
                    user_data_128=source.id,
                    user_data_64=carried.effective_at_ns,
                    user_data_32=tenant,
                    ledger=source.ledger,
                    code=TransferCode.ROLLOVER,
                    flags=TransferFlags.NONE,
                )
            )
        if floor is not None:
            chain.append(
                Transfer(
                    id=rollover_floor_transfer_id(floor.id),
                    debit_account_id=system_account_id(
                        floor.ledger, AccountCode.ISSUANCE_PROMOTIONAL
                    ),
                    credit_account_id=floor.id,
                    amount=floor.amount,
                    user_data_128=floor.id,
                    user_data_64=floor.effective_at_ns,
                    user_data_32=tenant,
                    ledger=floor.ledger,
                    code=TransferCode.GRANT_FUNDING,
                    flags=TransferFlags.NONE,
                )
            )
        for t in chain[:-1]:
            t.flags = LINKED
        results = await self.ledger.create_transfers(chain)
        statuses = [r.status for r in results]
        if all(s in (S.CREATED, S.EXISTS) for s in statuses):
            for b in blocks:
                self.cache.put_grant(b)
            return True
        if carried is not None and statuses[0] in (S.EXCEEDS_CREDITS, S.ID_ALREADY_FAILED):
            return False
        raise AssertionError(f"rollover refused: {[s.name for s in statuses]}")

    async def refund_out(
        self, grant: Grant, *, operation_id: int, credits: int, effective_at_ns: int, tenant: int
    ) -> bool:
        """Refund in money: takes exactly `credits` out of the block to the ledger's refunded
        account, in one transfer (id and user_data_128: the operation), never a balancing one.
        True once applied (now, or by an earlier attempt: `exists`); False when the engine
        refused it because the block has less left than that, reservations counted (nothing
        moved, and the same operation stays refused: the engine keeps the failed id)."""
        if not 1 <= credits <= AMOUNT_MAX_REQUEST:
            raise InvalidRequest("amount out of range", field="amount")
        transfer = Transfer(
            id=operation_id,
            debit_account_id=grant.id,
            credit_account_id=system_account_id(grant.ledger, AccountCode.REFUNDED),
            amount=credits,
            user_data_128=operation_id,
            user_data_64=effective_at_ns,
            user_data_32=tenant,
            ledger=grant.ledger,
            code=TransferCode.GRANT_REFUND,
            flags=TransferFlags.NONE,
        )
        (result,) = await self.ledger.create_transfers([transfer])
        if result.status in (S.CREATED, S.EXISTS):
            return True
        if result.status in (S.EXCEEDS_CREDITS, S.ID_ALREADY_FAILED):
            return False
        raise IdempotencyConflict(f"grant refund refused: {result.status.name}")

    async def track_voided(self, grants: list[Grant]) -> int:
        """After a restart: voided blocks that still hold credits (or have some left) are
        watched again, so what comes back to them is voided. Returns how many."""
        if not grants:
            return 0
        accounts = {a.id: a for a in await self.ledger.lookup_accounts([g.id for g in grants])}
        for grant in grants:
            a = accounts.get(grant.id)
            if a is not None and (a.debits_pending or a.credits_posted > a.debits_posted):
                self.voided[grant.id] = grant
        return len(self.voided)

    async def sweep(self, at_ns: int) -> SweepReport:
        """Expiry: moves the available balance of every block past `expires_at` to breakage,
        and of every voided block to voided. Credits still held stay held; what comes back
        later is swept again. Each sweep's id derives from the block's balances, so a repeated
        sweep of an unchanged block is `exists`, never a second movement."""
        # A block whose rollover is not done yet is left alone: its rollover goes first
        # (ControlPlane.sweep), then what it did not carry is swept.
        expired = [g for g in self.cache.grants.values() if g.expired(at_ns) and not g.rollover_due]
        candidates = [*expired, *self.voided.values()]
        if not candidates:
            return SweepReport([], [])
        accounts = {a.id: a for a in await self.ledger.lookup_accounts([g.id for g in candidates])}
        sweeps: list[Transfer] = []
        reasons: dict[int, tuple[int, str]] = {}
        finished: list[int] = []
        finishing: dict[int, int] = {}  # a sweep's place in `sweeps` -> the block it finishes
        for grant in candidates:
            account = accounts.get(grant.id)
            if account is None:
                continue
            voided = grant.id in self.voided
            left = account.credits_posted - account.debits_posted - account.debits_pending
            if left <= 0 and account.debits_pending == 0 and voided:
                # Nothing left and nothing held: nothing can come back. Done with this block.
                self._finish(grant.id, finished)
                continue
            if left <= 0 and account.debits_pending == 0:
                # Done too, once a sweep of nothing has written its expiry on the ledger,
                # where reads of a block that left the catalog find it (a void says so itself).
                finishing[len(sweeps)] = grant.id
            elif left <= 0:
                continue
            state = (account.debits_pending, account.debits_posted, account.credits_posted)
            sweeps.append(
                _sweep(
                    grant,
                    derive_id("grant/sweep", grant.id, *state),
                    AccountCode.VOIDED if voided else AccountCode.BREAKAGE,
                    TransferCode.GRANT_VOID if voided else TransferCode.EXPIRE,
                    account.user_data_32,
                )
            )
            reasons[sweeps[-1].id] = (grant.id, "voided" if voided else "expired")
        if not sweeps:
            return SweepReport([], finished)
        results = await self.ledger.create_transfers(sweeps)
        done = []
        for index, (sweep, result) in enumerate(zip(sweeps, results, strict=True)):
            if result.status in (S.CREATED, S.EXISTS):
                done.append(sweep.id)
                if index in finishing:
                    self._finish(finishing[index], finished)
            else:  # one block's refusal never holds the others back; the next tick retries
                _logger.error(
                    "sweep of grant %s refused: %s", reasons[sweep.id][0], result.status.name
                )
        moved = await self.ledger.lookup_transfers(done) if done else []
        swept = [
            SweepResult(reasons[t.id][0], t.amount, reasons[t.id][1]) for t in moved if t.amount
        ]
        return SweepReport(swept, finished)

    def _finish(self, grant_id: int, finished: list[int]) -> None:
        self.cache.drop_grant(grant_id)
        self.voided.pop(grant_id, None)
        finished.append(grant_id)

    async def refund(
        self, debit_id: int, amount: int, *, tenant: int, key: str, reason: str | None = None
    ) -> RefundResult:
        """Gives back up to `amount` of a debit's credits to the blocks it drew from, in
        reverse burn order, never more than the debit took (earlier refunds counted)."""
        if not 1 <= amount <= AMOUNT_MAX_REQUEST:
            raise InvalidRequest("amount out of range", field="amount")
        legs = await read_legs(self.ledger, debit_id, CHAIN_LEGS_MAX)
        setup = legs[SETUP]
        if setup.code != TransferCode.CONSUME:
            raise NotFound(f"debit {id_text(debit_id)} not found")
        op_id = derive_id("refund", tenant, key)
        fingerprint = fingerprint_of("refund", debit_id, amount, reason or "")
        op = Operation(op_id, fingerprint, setup.ledger, tenant, self.clock_ns())
        existing = await self.ledger.lookup_transfers([leg_id(op_id, 0)])
        if existing:
            return await self._refund_replay(op, debit_id, existing[0])
        taken = [
            (t.debit_account_id, t.amount)
            for t in legs[FIRST_VARIABLE:]
            if t.id and t.amount and t.code in (TransferCode.DEBIT, TransferCode.OVERDRAFT_DRAW)
        ]
        refunded = await self._refunded(debit_id, setup.ledger)
        left = amount
        restored: list[tuple[int, int]] = []
        for account_id, took in reversed(taken):  # the debit's legs are in burn order
            room = took - refunded.get(account_id, 0)
            give = min(room, left)
            if give > 0:
                restored.append((account_id, give))
                left -= give
        if left > 0:
            raise InvalidRequest(
                "refund exceeds what the debit took",
                field="amount",
                refundable=amount - left,
            )
        consumed = system_account_id(setup.ledger, AccountCode.CONSUMED)
        chain = [header(op)]
        for i, (account_id, give) in enumerate(restored):
            leg = make_leg(
                op,
                FIRST_VARIABLE + i,
                consumed,
                account_id,
                give,
                TransferCode.USAGE_REFUND,
                LINKED,
            )
            leg.user_data_128 = debit_id  # a refund leg names the debit it gives back
            chain.append(leg)
        # What comes back to an expired or voided block never becomes available again: it is
        # swept in this chain, at the block's expiry, as the sweep would (a block the sweep
        # is done with is not even watched any more).
        sinks = await self._sinks([a for a, _ in restored], op.effective_at_ns)
        for account_id, give in restored:
            if account_id in sinks:
                index = FIRST_VARIABLE + len(chain) - 1
                chain.append(_resweep(op, index, sinks[account_id], give))
        results = await self.ledger.create_transfers(close_chain(chain))
        if results[0].status is S.EXISTS:
            return await self._refund_replay(op, debit_id, chain[0])
        if any(r.status is not S.CREATED for r in results):
            raise IdempotencyConflict(f"refund refused: {[r.status.name for r in results]}")
        return RefundResult(op_id, debit_id, amount, restored, replayed=False)

    async def _sinks(self, accounts: list[int], at_ns: int) -> dict[int, Transfer]:
        """Among `accounts`, the blocks that are expired at `at_ns` or voided: block -> a
        sweep of it (its debit, credit, code and `user_data_64` are what a sweep of the block
        has: to breakage or voided, with the block's expiry)."""
        found: dict[int, Transfer] = {}
        unknown = []
        for account in accounts:
            grant = self.voided.get(account) or self.cache.grants.get(account)
            if grant is None:
                unknown.append(account)
            elif account in self.voided or grant.expired(at_ns):
                voided = account in self.voided
                found[account] = _sweep(
                    grant,
                    0,
                    AccountCode.VOIDED if voided else AccountCode.BREAKAGE,
                    TransferCode.GRANT_VOID if voided else TransferCode.EXPIRE,
                    0,
                )
        found.update(await self._finished_blocks(unknown))
        return found

    async def _finished_blocks(self, accounts: list[int]) -> dict[int, Transfer]:
        """Among `accounts`, the grant accounts the sweep has finished: block -> its last
        sweep (`EXPIRE` or `GRANT_VOID`, which carries the block's expiry). A sweep names its
        block in `user_data_128`; a void of part of a block (`void_part`) names its operation,
        and is no sweep."""
        found: dict[int, Transfer] = {}
        for account in await self.ledger.lookup_accounts(accounts) if accounts else []:
            if account.code != AccountCode.GRANT:
                continue
            for code in (TransferCode.GRANT_VOID, TransferCode.EXPIRE):
                sweeps = await self.ledger.get_account_transfers(
                    AccountFilter(
                        account_id=account.id,
                        user_data_128=account.id,
                        user_data_64=0,
                        user_data_32=0,
                        code=code,
                        timestamp_min=0,
                        timestamp_max=0,
                        limit=1,
                        flags=AccountFilterFlags.DEBITS | AccountFilterFlags.REVERSED,
                    )
                )
                if sweeps:
                    found[account.id] = sweeps[0]
                    break
        return found

    async def _refunded(self, debit_id: int, ledger: int) -> dict[int, int]:
        query = QueryFilter(
            user_data_128=debit_id,
            user_data_64=0,
            user_data_32=0,
            ledger=ledger,
            code=TransferCode.USAGE_REFUND,
            timestamp_min=0,
            timestamp_max=0,
            limit=BATCH_EVENTS_MAX,
            flags=QueryFilterFlags.NONE,
        )
        out: dict[int, int] = {}
        for t in await self.ledger.query_transfers(query):
            out[t.credit_account_id] = out.get(t.credit_account_id, 0) + t.amount
        return out

    async def _refund_replay(self, op: Operation, debit_id: int, header: Transfer) -> RefundResult:
        if header.user_data_128 != op.fingerprint:
            raise IdempotencyConflict("this idempotency key was used with another request body")
        legs = await read_legs(self.ledger, op.id, CHAIN_LEGS_MAX)
        restored = [
            (t.credit_account_id, t.amount)
            for t in legs[FIRST_VARIABLE:]
            if t.id and t.code == TransferCode.USAGE_REFUND
        ]
        return RefundResult(op.id, debit_id, sum(a for _, a in restored), restored, True)


def rollover_transfer_id(carried_id: int) -> int:
    """The id of the ROLLOVER transfer into a rollover block (one per attempt: each attempt has
    blocks of its own, and a refused transfer's id is never usable again)."""
    return derive_id("grant/rollover/transfer", carried_id)


def rollover_floor_transfer_id(floor_id: int) -> int:
    """The id of the funding transfer of a rollover's floor block."""
    return derive_id("grant/rollover/floor-transfer", floor_id)


def _resweep(op: Operation, index: int, last_sweep: Transfer, amount: int) -> Transfer:
    """A sweep, within a usage refund, of what the refund gives back to an expired or voided
    block: to where a sweep of it goes, with a sweep's code and expiry."""
    leg = make_leg(
        op,
        index,
        last_sweep.debit_account_id,
        last_sweep.credit_account_id,
        amount,
        TransferCode(last_sweep.code),
        LINKED,
    )
    leg.user_data_128 = last_sweep.user_data_128  # a sweep names its block
    leg.user_data_64 = last_sweep.user_data_64  # and carries the block's expiry
    return leg


def _sweep(
    grant: Grant, op_id: int, sink: AccountCode, code: TransferCode, tenant: int
) -> Transfer:
    return Transfer(
        id=op_id,
        debit_account_id=grant.id,
        credit_account_id=system_account_id(grant.ledger, sink),
        amount=AMOUNT_MAX,
        user_data_128=grant.id,
        # The API refuses expiries the engine cannot hold; a block written before it did must
        # still be voidable, so its expiry is capped at the field's largest value.
        user_data_64=min(grant.expires_at_ns or 0, BUSINESS_TIME_NS_MAX),
        user_data_32=tenant,
        ledger=grant.ledger,
        code=code,
        flags=BD,
    )
