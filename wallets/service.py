"""The credit service: debit, reserve, settle, release, check on the hot path; grants, expiry,
voids, refunds and budgets for admins. Every mutation is one TigerBeetle request of linked
transfers built by `wallets.chains`; this module runs them and reads their outcome.

Invariants:
- The hot path (check, debit, reserve, settle, release) reads only the in-process catalog and
  TigerBeetle; it never waits on Postgres.
- Idempotency rides on TigerBeetle: ids derive from (tenant, key), the header carries the
  request's fingerprint. A replay rebuilds the original outcome from the transfers; another
  body under the same key is `IdempotencyConflict`.
- No read-then-write decides a spend: a chain either moves exactly what was asked, or nothing.
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import msgspec

from grants.errors import (
    BudgetExceeded,
    CreditError,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidRequest,
    LedgerUnavailableError,
    NotFound,
    OccurredAtOutOfRange,
    ReservationAlreadyReleased,
    ReservationAlreadySettled,
    ReservationExpired,
)
from ledger.client import Ledger, LedgerUnavailable
from ledger.codes import AccountCode, TransferCode, account_flags
from ledger.ids import derive_id, dimension_set_id, operation_id, system_account_id
from ledger.limits import (
    AMOUNT_MAX_REQUEST,
    CHAIN_LEGS_MAX,
    DIMENSION_NAME_CHARS_MAX,
    DIMENSION_VALUE_CHARS_MAX,
    DIMENSIONS_MAX,
    OCCURRED_AT_AGE_S_MAX,
    OCCURRED_AT_SKEW_S_MAX,
    OVERAGE_LEG_INDEX,
    RESERVATION_TIMEOUT_S_DEFAULT,
    RESERVATION_TIMEOUT_S_MAX,
)
from ledger.operations import fingerprint_of, read_legs
from ledger.statuses import Outcome, transfer_outcome
from ledger.types import (
    Account,
    AccountFlags,
    CreateAccountStatus,
    CreateTransferResult,
    CreateTransferStatus,
    Transfer,
    TransferFlags,
)
from wallets import chains
from wallets.catalog import Catalog, OverdraftMode, PathError, Wallet
from wallets.chains import Operation, Overage, SourceKind, SpendPath
from wallets.dimensions import DimensionSets
from wallets.limit_accounts import LimitMove, move_limit, overdraft_account

S = CreateTransferStatus
_OK_ACCOUNT = {CreateAccountStatus.CREATED, CreateAccountStatus.EXISTS}
_RESOLVED = {
    S.PENDING_TRANSFER_ALREADY_POSTED: ReservationAlreadySettled,
    S.PENDING_TRANSFER_ALREADY_VOIDED: ReservationAlreadyReleased,
}


class Funding(msgspec.Struct, frozen=True):
    account_id: int  # a grant id, or the wallet's overdraft account
    kind: str  # "grant" | "overdraft" | "debt"
    amount: int


class DebitRequest(msgspec.Struct, frozen=True):
    tenant: int
    key: str
    amount: int
    ledger: int
    resource_id: int | None = None
    wallet_id: int | None = None
    at_ns: int | None = None
    dimensions: Mapping[str, str] | None = None
    # When the service was delivered (ns since the epoch): the business effective time of the
    # debit's legs, and the instant its spend path is resolved at. None: the time of recording.
    occurred_at_ns: int | None = None


class _PreparedDebit(msgspec.Struct, frozen=True):
    request: DebitRequest
    wallet: Wallet
    op: Operation
    path: SpendPath
    chain: list[Transfer]


class DebitResult(msgspec.Struct, frozen=True):
    operation_id: int
    amount: int
    funded_by: list[Funding]
    replayed: bool = False


class ReservationResult(msgspec.Struct, frozen=True):
    reservation_id: int
    amount: int
    timeout_s: int
    funded_by: list[Funding]
    replayed: bool = False


class SettleResult(msgspec.Struct, frozen=True):
    reservation_id: int
    operation_id: int
    requested: int
    collected: int  # what was consumed in all
    released: int  # what the reservation held and gave back
    overage: int  # asked beyond the reservation
    overage_collected: int
    overage_uncollected: int
    policy: str
    fallback_debit: bool  # the reservation had timed out: collected by a direct debit
    replayed: bool = False


class ReleaseResult(msgspec.Struct, frozen=True):
    reservation_id: int
    operation_id: int
    released: int
    replayed: bool = False


class BudgetHeadroom(msgspec.Struct, frozen=True):
    budget_id: int
    resource_id: int
    cap: int
    used: int
    headroom: int
    blocking: bool


class CheckResult(msgspec.Struct, frozen=True):
    allowed: bool
    reason: str | None
    amount: int
    available: int  # what the sources could fund now, overdraft headroom included
    reserved: int  # held by open reservations on the wallet's own grants
    overdraft_headroom: int | None  # None: unbounded
    budgets: list[BudgetHeadroom]
    would_fund: list[Funding]


def _balance(account: Account) -> int:
    return account.credits_posted - account.debits_posted - account.debits_pending


class CreditService:
    """Composition: a ledger (either engine), the catalog cache, a clock."""

    def __init__(
        self,
        ledger: Ledger,
        catalog: Catalog,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        dimensions: DimensionSets | None = None,
    ) -> None:
        self.ledger = ledger
        self.catalog = catalog
        self.clock_ns = clock_ns
        # Where a spend's dimension set is made durable before the spend is sent (None: the
        # chain carries the set's id, and nothing records what it means).
        self.dimensions = dimensions
        self._budget_accounts: set[int] = set()
        # How many legs the reservations made here have, so a settle looks up only those.
        self._known_legs: collections.OrderedDict[int, int] = collections.OrderedDict()

    async def _dimension_ids(self, sets: Sequence[Mapping[str, str] | None]) -> list[int]:
        """The id of each spend's dimension set (0: none), recorded before it is used."""
        if not any(sets):
            return [0] * len(sets)
        if self.dimensions is None:
            return [dimension_set_id(s) if s else 0 for s in sets]
        return await self.dimensions.ids(sets)

    # -- engine calls -------------------------------------------------------------------------

    async def _create(self, chain: list[Transfer]) -> list[CreateTransferResult]:
        try:
            return await self.ledger.create_transfers(chain)
        except LedgerUnavailable as error:
            raise LedgerUnavailableError(str(error)) from None

    async def _lookup(self, ids: list[int]) -> list[Transfer]:
        try:
            return await self.ledger.lookup_transfers(ids)
        except LedgerUnavailable as error:
            raise LedgerUnavailableError(str(error)) from None

    async def _accounts(self, ids: list[int]) -> dict[int, Account]:
        try:
            return {a.id: a for a in await self.ledger.lookup_accounts(ids)}
        except LedgerUnavailable as error:
            raise LedgerUnavailableError(str(error)) from None

    async def _funded(self, chain: Sequence[Transfer], drained: int | None = None) -> list[Funding]:
        """What each source of a chain that just succeeded actually moved (balancing legs move
        what they can, so the amounts are read back). `drained`: the chain is a drain chain
        that moved exactly that much, so a lone source moved all of it, with nothing to read."""
        sources = [t for t in chain if t.code in _SOURCE_CODES]
        if drained is not None and len(sources) == 1:
            return [_source_funding(sources[0], drained)]
        return _funding(await self._lookup([t.id for t in sources]))

    async def _legs(self, op_id: int, count: int = CHAIN_LEGS_MAX) -> list[Transfer]:
        """An operation's events by index; a missing index is an empty Transfer (id 0). For a
        reservation made by this process, only the indexes its chain used are looked up (and
        its marker's)."""
        known = self._known_legs.get(op_id) if count >= CHAIN_LEGS_MAX else None
        try:
            return await read_legs(self.ledger, op_id, count, used=known, also=_MARKER_ONLY)
        except LedgerUnavailable as error:
            raise LedgerUnavailableError(str(error)) from None

    def _remember_legs(self, op_id: int, chain: Sequence[Transfer]) -> None:
        # A reservation's chain: its legs from index 0 on, and its marker at chains.MARKER.
        self._known_legs[op_id] = len(chain) - 1
        if len(self._known_legs) > KNOWN_RESERVATIONS_MAX:
            self._known_legs.popitem(last=False)

    # -- set-up of accounts -------------------------------------------------------------------

    async def open_ledger(self, ledger: int) -> None:
        """Creates the system accounts of a credit type (idempotent)."""
        accounts = [
            Account(
                id=system_account_id(ledger, code),
                ledger=ledger,
                code=code,
                flags=AccountFlags(account_flags(code)),
            )
            for code in AccountCode
            if code < 100
        ]
        results = await self.ledger.create_accounts(accounts)
        assert all(r.status in _OK_ACCOUNT for r in results), results

    async def open_wallet(self, wallet: Wallet, tenant: int, *, operation: int = 0) -> LimitMove:
        """Creates the wallet's overdraft accounts (idempotent) and brings a soft limit's
        account to its limit (wallets.limit_accounts; `operation` numbers the change)."""
        accounts = [
            Account(
                id=wallet.debt_account_id,
                ledger=wallet.ledger,
                code=AccountCode.OVERDRAFT_UNBOUNDED,
                user_data_128=wallet.id,
                user_data_32=tenant,
                flags=AccountFlags(account_flags(AccountCode.OVERDRAFT_UNBOUNDED)),
            )
        ]
        if wallet.overdraft_mode is OverdraftMode.SOFT:
            assert wallet.overdraft_account_id is not None
            accounts.append(
                Account(
                    id=wallet.overdraft_account_id,
                    ledger=wallet.ledger,
                    code=AccountCode.OVERDRAFT,
                    user_data_128=wallet.id,
                    user_data_32=tenant,
                    flags=AccountFlags(account_flags(AccountCode.OVERDRAFT)),
                )
            )
        results = await self.ledger.create_accounts(accounts)
        assert all(r.status in _OK_ACCOUNT for r in results), results
        if wallet.overdraft_mode is not OverdraftMode.SOFT:
            return LimitMove(0, 0)
        return await self.sync_overdraft_limit(wallet, tenant, operation=operation)

    async def sync_overdraft_limit(
        self, wallet: Wallet, tenant: int, *, operation: int
    ) -> LimitMove:
        """Brings the wallet's bounded overdraft account to the wallet's limit (0 once the
        wallet is no longer soft); refused, with nothing moved, when more than that is drawn.
        The caller holds the wallet's row lock (wallets.control)."""
        account = overdraft_account(wallet.id, wallet.ledger, tenant)
        if wallet.overdraft_mode is OverdraftMode.SOFT:
            # A wallet opened before limits could change was funded with this id: a retry of
            # its opening (reconciliation) finds it and moves nothing.
            account = msgspec.structs.replace(
                account,
                first_id=derive_id("wallet/overdraft-limit", wallet.id, wallet.overdraft_limit),
            )
        target = wallet.overdraft_limit if wallet.overdraft_mode is OverdraftMode.SOFT else 0
        return await move_limit(self.ledger, account, target, operation=operation)

    async def _ensure_budget_accounts(self, path: SpendPath) -> None:
        """Budget accounts are per period: the first spend of a period opens and funds it."""
        missing = [b for b in path.budgets if b.account_id not in self._budget_accounts]
        if not missing:
            return
        accounts, funding = [], []
        for leg in missing:
            budget = self.catalog.budgets[leg.budget_id]
            accounts.append(
                Account(
                    id=leg.account_id,
                    ledger=path.ledger,
                    code=AccountCode.BUDGET,
                    user_data_128=budget.id,
                    user_data_32=path.tenant,
                    flags=AccountFlags(account_flags(AccountCode.BUDGET)),
                )
            )
            funding.append(
                Transfer(
                    id=derive_id("budget/cap", leg.account_id),
                    amount=budget.cap,
                    debit_account_id=system_account_id(path.ledger, AccountCode.BUDGET_LINE),
                    credit_account_id=leg.account_id,
                    user_data_128=budget.id,
                    user_data_32=path.tenant,
                    ledger=path.ledger,
                    code=TransferCode.BUDGET_LIMIT,
                )
            )
        results = await self.ledger.create_accounts(accounts)
        assert all(r.status in _OK_ACCOUNT for r in results), results
        for r in await self._create(funding):
            # Another amount: the period was funded first by a cap change of the budget
            # (wallets.limit_accounts), which knew a newer cap than this process's cache.
            assert r.status in (S.CREATED, S.EXISTS, S.EXISTS_WITH_DIFFERENT_AMOUNT), r
        self._budget_accounts.update(b.account_id for b in missing)

    # -- hot path -----------------------------------------------------------------------------

    @staticmethod
    def occurred(occurred_at_ns: int | None, now_ns: int) -> tuple[int, ...]:
        """`(occurred_at_ns,)` once checked against the service's clock, `()` when none was
        given: so that the fingerprint of a request without one is what it always was."""
        if occurred_at_ns is None:
            return ()
        earliest = now_ns - OCCURRED_AT_AGE_S_MAX * NS_PER_S
        latest = now_ns + OCCURRED_AT_SKEW_S_MAX * NS_PER_S
        if not max(earliest, 0) <= occurred_at_ns <= latest:
            raise OccurredAtOutOfRange(
                f"occurred_at must be at most {OCCURRED_AT_SKEW_S_MAX} s after the service's "
                f"now and at most {OCCURRED_AT_AGE_S_MAX // 86_400} days before it",
                field="occurred_at",
            )
        return (occurred_at_ns,)

    def _wallet(self, wallet_id: int | None, resource_id: int | None, ledger: int) -> Wallet:
        try:
            if wallet_id is not None:
                return self.catalog.wallet(wallet_id)
            if resource_id is None:
                raise InvalidRequest("name a wallet_id or a resource_id", field="resource_id")
            return self.catalog.wallet_for(resource_id, ledger)
        except PathError as error:
            raise NotFound(str(error)) from None

    def _path(self, wallet: Wallet, at_ns: int) -> SpendPath:
        try:
            return self.catalog.spend_path(wallet, at_ns)
        except PathError as error:
            raise InvalidRequest(str(error)) from None

    async def debit(
        self,
        *,
        tenant: int,
        key: str,
        amount: int,
        ledger: int,
        resource_id: int | None = None,
        wallet_id: int | None = None,
        at_ns: int | None = None,
        dimensions: Mapping[str, str] | None = None,
        occurred_at_ns: int | None = None,
    ) -> DebitResult:
        request = DebitRequest(
            tenant, key, amount, ledger, resource_id, wallet_id, at_ns, dimensions, occurred_at_ns
        )
        _check_dimensions(request.dimensions)
        (dimensions_id,) = await self._dimension_ids([request.dimensions])
        prepared = self._prepare_debit(request, dimensions_id)
        await self._ensure_budget_accounts(prepared.path)
        results = await self._create(prepared.chain)
        return await self._conclude_debit(prepared, results, None)

    async def debit_many(self, requests: Sequence[DebitRequest]) -> list[DebitResult | CreditError]:
        """Many independent debits in one engine request (usage ingestion): each is its own
        linked chain and succeeds or fails alone; the answer for each is its result or the
        domain error it met, in order."""
        checked: list[DebitRequest | CreditError] = []
        for request in requests:
            try:
                _check_dimensions(request.dimensions)
                checked.append(request)
            except CreditError as error:
                checked.append(error)
        dimension_ids = await self._dimension_ids(
            [r.dimensions if isinstance(r, DebitRequest) else None for r in checked]
        )
        prepared: list[_PreparedDebit | CreditError] = []
        for asked, dimensions_id in zip(checked, dimension_ids, strict=True):
            if isinstance(asked, CreditError):
                prepared.append(asked)
                continue
            try:
                prepared.append(self._prepare_debit(asked, dimensions_id))
            except CreditError as error:
                prepared.append(error)
        ready = [item for item in prepared if isinstance(item, _PreparedDebit)]
        for item in ready:
            await self._ensure_budget_accounts(item.path)
        results = await self._create([t for r in ready for t in r.chain]) if ready else []
        # What the sources moved is read back only where there is more than one (see _funded).
        sources = [
            t.id
            for r in ready
            if len(r.path.sources) > 1
            for t in r.chain
            if t.code in _SOURCE_CODES
        ]
        moved = {t.id: t for t in await self._lookup(sources)} if sources else {}
        out: list[DebitResult | CreditError] = []
        offset = 0
        for entry in prepared:
            if isinstance(entry, CreditError):
                out.append(entry)
                continue
            mine = results[offset : offset + len(entry.chain)]
            offset += len(entry.chain)
            try:
                out.append(await self._conclude_debit(entry, mine, moved))
            except CreditError as error:
                out.append(error)
        return out

    def _prepare_debit(self, request: DebitRequest, dimensions_id: int) -> _PreparedDebit:
        _check_amount(request.amount)
        wallet = self._wallet(request.wallet_id, request.resource_id, request.ledger)
        at = self.clock_ns() if request.at_ns is None else request.at_ns
        occurred = self.occurred(request.occurred_at_ns, at)
        fingerprint = fingerprint_of(
            "debit",
            wallet.id,
            request.amount,
            request.ledger,
            *occurred,
            *_flat(request.dimensions),
        )
        at = occurred[0] if occurred else at
        op = Operation(
            operation_id(request.tenant, request.key),
            fingerprint,
            wallet.ledger,
            request.tenant,
            at,
        )
        path = self._path(wallet, at)
        chain = chains.drain_chain(op, path, request.amount, dimensions_id=dimensions_id)
        return _PreparedDebit(request, wallet, op, path, chain)

    async def _conclude_debit(
        self,
        p: _PreparedDebit,
        results: Sequence[CreateTransferResult],
        moved: dict[int, Transfer] | None,
    ) -> DebitResult:
        if results[0].status is S.EXISTS:
            return await self._debit_replay(p.op)
        self._raise_for(p.chain, results, p.path, p.request.amount)
        if moved is None or len(p.path.sources) == 1:
            funded = await self._funded(p.chain, p.request.amount)
        else:
            legs = [moved[t.id] for t in p.chain if t.code in _SOURCE_CODES and t.id in moved]
            funded = _funding(legs)
        return DebitResult(p.op.id, p.request.amount, funded)

    async def _debit_replay(self, op: Operation) -> DebitResult:
        legs = await self._legs(op.id)
        if legs[chains.SETUP].code != TransferCode.CONSUME:
            raise IdempotencyConflict("this idempotency key was used for another operation")
        return DebitResult(op.id, legs[chains.SETUP].amount, _funding(legs), replayed=True)

    def _raise_for(
        self,
        chain: Sequence[Transfer],
        results: Sequence[CreateTransferResult],
        path: SpendPath,
        amount: int,
    ) -> None:
        """Turns the first failing event of a chain into the domain error it means; returns
        when every event was created."""
        if all(r.status is S.CREATED for r in results):
            return
        for position, (event, result) in enumerate(zip(chain, results, strict=True)):
            status = result.status
            if status is S.CREATED or status is S.LINKED_EVENT_FAILED:
                continue
            outcome = transfer_outcome(status)
            if position == 0 and outcome is Outcome.CONFLICT:
                raise IdempotencyConflict("this idempotency key was used with another request body")
            refused = status in (S.EXCEEDS_CREDITS, S.ID_ALREADY_FAILED)
            # TigerBeetle remembers an event that failed for want of credits, and answers
            # `id_already_failed` for its id from then on: this key was refused before, and
            # that refusal is its outcome, whatever the balances are now.
            replayed = status is S.ID_ALREADY_FAILED
            if refused and event.code == TransferCode.BUDGET_SPEND:
                budget = self.catalog.budget_of_account(path, event.debit_account_id)
                raise BudgetExceeded(
                    "the spend would pass a budget's cap",
                    replayed=replayed,
                    budget_id=budget.id if budget else None,
                    resource_id=budget.resource_id if budget else None,
                    needed=amount,
                )
            if refused and event.code == TransferCode.CONTROL_CHECK:
                raise InsufficientCredits("not enough credits", replayed=replayed, needed=amount)
            if status is S.PENDING_TRANSFER_EXPIRED:
                raise ReservationExpired("the reservation has timed out")
            if status in _RESOLVED:
                raise _RESOLVED[status]("the reservation was already resolved")
            raise AssertionError(f"chain event {position} failed: {status.name} ({event})")
        raise AssertionError("a failed chain without a failing event")

    async def reserve(
        self,
        *,
        tenant: int,
        key: str,
        amount: int,
        ledger: int,
        timeout_s: int = RESERVATION_TIMEOUT_S_DEFAULT,
        resource_id: int | None = None,
        wallet_id: int | None = None,
        at_ns: int | None = None,
        dimensions: Mapping[str, str] | None = None,
    ) -> ReservationResult:
        _check_amount(amount)
        _check_dimensions(dimensions)
        if not 1 <= timeout_s <= RESERVATION_TIMEOUT_S_MAX:
            raise InvalidRequest(
                f"timeout_s must be in 1..{RESERVATION_TIMEOUT_S_MAX}", field="timeout_s"
            )
        wallet = self._wallet(wallet_id, resource_id, ledger)
        at = self.clock_ns() if at_ns is None else at_ns
        fingerprint = fingerprint_of(
            "reserve", wallet.id, amount, ledger, timeout_s, *_flat(dimensions)
        )
        op = Operation(operation_id(tenant, key), fingerprint, wallet.ledger, tenant, at)
        path = self._path(wallet, at)
        await self._ensure_budget_accounts(path)
        (dimensions_id,) = await self._dimension_ids([dimensions])
        chain = chains.drain_chain(
            op, path, amount, timeout_s=timeout_s, dimensions_id=dimensions_id
        )
        results = await self._create(chain)
        if results[0].status is not S.EXISTS:
            self._raise_for(chain, results, path, amount)
            self._remember_legs(op.id, chain)
            funded = await self._funded(chain, amount)
            return ReservationResult(op.id, amount, timeout_s, funded)
        legs = await self._legs(op.id)
        if legs[chains.SETUP].code != TransferCode.CONTROL_HOLD:
            raise IdempotencyConflict("this idempotency key was used for another operation")
        return ReservationResult(op.id, amount, timeout_s, _funding(legs), replayed=True)

    async def reservation(self, reservation_id: int) -> list[Transfer]:
        """A reservation's legs by index (NotFound when there is none)."""
        return await self._reservation(reservation_id)

    async def _reservation(self, reservation_id: int) -> list[Transfer]:
        legs = await self._legs(reservation_id, chains.RESERVATION_LEGS)
        if legs[chains.SETUP].code != TransferCode.CONTROL_HOLD:
            # Word for word what the API answers for another customer's reservation, so the
            # answer tells a customer-bound key nothing about what exists beyond its boundary.
            raise NotFound("reservation not found")
        return legs

    async def settle(
        self,
        *,
        tenant: int,
        key: str,
        reservation_id: int,
        amount: int,
        policy: Overage = Overage.CAP,
        at_ns: int | None = None,
        legs: list[Transfer] | None = None,
        occurred_at_ns: int | None = None,
    ) -> SettleResult:
        """`legs`: the reservation's legs when the caller has just read them. `occurred_at_ns`:
        when the service was delivered, the effective time of every leg the settle writes (its
        posts and voids, its SETTLE leg, the overage's or the fallback debit's legs)."""
        if not 0 <= amount <= AMOUNT_MAX_REQUEST:
            raise InvalidRequest("amount out of range", field="amount")
        reservation = legs if legs is not None else await self._reservation(reservation_id)
        ledger = reservation[chains.SETUP].ledger
        wallet = self._wallet(_wallet_of(reservation), None, ledger)
        at = self.clock_ns() if at_ns is None else at_ns
        occurred = self.occurred(occurred_at_ns, at)
        fingerprint = fingerprint_of("settle", reservation_id, amount, policy.value, *occurred)
        at = occurred[0] if occurred else at
        op = Operation(operation_id(tenant, key), fingerprint, ledger, tenant, at)
        path = self._path(wallet, at)
        await self._ensure_budget_accounts(path)
        plan = chains.settle_chain(op, reservation, amount, path, policy)
        results = await self._create(plan.chain)
        if results[0].status is S.EXISTS:
            return await self._settle_outcome(op, reservation, amount, policy, replayed=True)
        expired = any(r.status is S.PENDING_TRANSFER_EXPIRED for r in results)
        if expired:
            return await self._settle_fallback(op, path, reservation, amount, policy)
        self._raise_for(plan.chain, results, path, plan.overage)
        collected = 0
        if plan.overage:
            overage_sources = [
                t for t in plan.chain if t.code in _SOURCE_CODES and not t.pending_id
            ]
            collected = sum(f.amount for f in await self._funded(overage_sources))
        return SettleResult(
            reservation_id=reservation_id,
            operation_id=op.id,
            requested=amount,
            collected=plan.posted + collected,
            released=plan.released,
            overage=plan.overage,
            overage_collected=collected,
            overage_uncollected=plan.overage - collected,
            policy=policy.value,
            fallback_debit=False,
            replayed=False,
        )

    async def _settle_outcome(
        self,
        op: Operation,
        reservation: Sequence[Transfer],
        amount: int,
        policy: Overage,
        *,
        replayed: bool,
    ) -> SettleResult:
        legs = await self._legs(op.id, OVERAGE_LEG_INDEX + CHAIN_LEGS_MAX + 1)
        if legs[chains.SETUP].code not in (
            TransferCode.SETTLE,
            TransferCode.CONSUME,
            TransferCode.CONTROL_CAP,
        ):
            raise IdempotencyConflict("this idempotency key was used for another operation")
        reserved = reservation[chains.SETUP].amount
        fallback = legs[chains.SETUP].code != TransferCode.SETTLE
        if fallback:
            posted, released, base = 0, reserved, 0
        else:
            posted = legs[chains.SETUP].amount
            released, base = reserved - posted, OVERAGE_LEG_INDEX
        overage = amount - posted
        collected = _overage_collected(legs, base)
        return SettleResult(
            reservation_id=_reservation_id(reservation),
            operation_id=op.id,
            requested=amount,
            collected=posted + collected,
            released=released,
            overage=overage,
            overage_collected=collected,
            overage_uncollected=overage - collected,
            policy=policy.value,
            fallback_debit=fallback,
            replayed=replayed,
        )

    async def _settle_fallback(
        self,
        op: Operation,
        path: SpendPath,
        reservation: Sequence[Transfer],
        amount: int,
        policy: Overage,
    ) -> SettleResult:
        """The reservation timed out: collect `amount` as a direct debit, same policy."""
        if amount == 0:
            raise ReservationExpired("the reservation has timed out; nothing to settle")
        chain = [chains.header(op), *chains.overage_legs(op, path, amount, policy, base=0)]
        chains.name_the_spend(chain, path.wallet_id, _dimensions_of(reservation))
        chain[-1].flags &= ~TransferFlags.LINKED
        results = await self._create(chain)
        if results[0].status is not S.EXISTS:
            self._raise_for(chain, results, path, amount)
        return await self._settle_outcome(op, reservation, amount, policy, replayed=False)

    async def release(
        self,
        *,
        tenant: int,
        key: str,
        reservation_id: int,
        at_ns: int | None = None,
        legs: list[Transfer] | None = None,
    ) -> ReleaseResult:
        reservation = legs if legs is not None else await self._reservation(reservation_id)
        ledger = reservation[chains.SETUP].ledger
        at = self.clock_ns() if at_ns is None else at_ns
        op = Operation(
            operation_id(tenant, key), fingerprint_of("release", reservation_id), ledger, tenant, at
        )
        chain = chains.release_chain(op, reservation)
        results = await self._create(chain)
        replayed = results[0].status is S.EXISTS
        if not replayed:
            wallet = self._wallet(_wallet_of(reservation), None, ledger)
            self._raise_for(chain, results, self._path(wallet, at), 0)
        return ReleaseResult(reservation_id, op.id, reservation[chains.SETUP].amount, replayed)

    async def check(
        self,
        *,
        amount: int,
        ledger: int,
        resource_id: int | None = None,
        wallet_id: int | None = None,
        at_ns: int | None = None,
    ) -> CheckResult:
        """What a debit of `amount` would do now; changes nothing."""
        _check_amount(amount)
        wallet = self._wallet(wallet_id, resource_id, ledger)
        at = self.clock_ns() if at_ns is None else at_ns
        path = self._path(wallet, at)
        ids = [s.account_id for s in path.sources] + [b.account_id for b in path.budgets]
        accounts = await self._accounts(ids)
        left, funding, available, reserved = amount, [], 0, 0
        headroom: int | None = 0
        for source in path.sources:
            account = accounts.get(source.account_id)
            if source.kind is SourceKind.DEBT:
                can, headroom = left, None
            else:
                can = max(0, _balance(account)) if account else 0
                if source.kind is SourceKind.OVERDRAFT:
                    headroom = can
                elif account is not None and source.wallet_id == wallet.id:
                    reserved += account.debits_pending
            available += can if source.kind is not SourceKind.DEBT else 0
            take = min(can, left)
            if take:
                funding.append(Funding(source.account_id, source.kind.value, take))
                left -= take
        budgets = []
        for leg in path.budgets:
            budget = self.catalog.budgets[leg.budget_id]
            account = accounts.get(leg.account_id)
            room = _balance(account) if account else budget.cap
            budgets.append(
                BudgetHeadroom(
                    budget.id, leg.resource_id, budget.cap, budget.cap - room, room, room < amount
                )
            )
        reason = None
        if any(b.blocking for b in budgets):
            reason = BudgetExceeded.code
        elif left > 0:
            reason = InsufficientCredits.code
        return CheckResult(
            allowed=reason is None,
            reason=reason,
            amount=amount,
            available=available,
            reserved=reserved,
            overdraft_headroom=headroom,
            budgets=budgets,
            would_fund=funding,
        )


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # what LINE_PATTERN of the wire contract refuses


def _check_dimensions(dimensions: Mapping[str, str] | None) -> None:
    if not dimensions:
        return
    if len(dimensions) > DIMENSIONS_MAX:
        raise InvalidRequest(f"at most {DIMENSIONS_MAX} dimensions", field="dimensions")
    for name, value in dimensions.items():
        if not (isinstance(name, str) and 0 < len(name) <= DIMENSION_NAME_CHARS_MAX):
            raise InvalidRequest(f"bad dimension name {name!r}", field="dimensions")
        if not (isinstance(value, str) and len(value) <= DIMENSION_VALUE_CHARS_MAX):
            raise InvalidRequest(f"bad value for dimension {name!r}", field="dimensions")
    # One search over all the text: a NUL cannot be stored in Postgres, where the dimensions go.
    if _CONTROL.search("".join([part for item in dimensions.items() for part in item])):
        raise InvalidRequest(
            "dimension names and values are text without control characters", field="dimensions"
        )


def _flat(dimensions: Mapping[str, str] | None) -> list[str]:
    if not dimensions:
        return []
    return [part for item in sorted(dimensions.items()) for part in item]


def _check_amount(amount: int) -> None:
    if not 1 <= amount <= AMOUNT_MAX_REQUEST:
        raise InvalidRequest(f"amount must be in 1..{AMOUNT_MAX_REQUEST}", field="amount")


def _dimensions_of(reservation: Sequence[Transfer]) -> int:
    """A reservation's dimension set (its check leg's, ledger/README.md "Dimensions"); 0 for a
    reservation made before chains carried one."""
    carried = reservation[chains.CHECK].user_data_128
    return 0 if carried == reservation[chains.NORMALIZE].user_data_128 else carried


def _wallet_of(legs: Sequence[Transfer]) -> int:
    """The wallet a reservation drew for: its set-up leg names it."""
    return legs[chains.SETUP].user_data_128


def _reservation_id(legs: Sequence[Transfer]) -> int:
    """A reservation's id is its operation id, which every leg but the header carries."""
    return legs[chains.NORMALIZE].user_data_128


NS_PER_S = 1_000_000_000
_MARKER_ONLY = (chains.MARKER,)
# Reservations whose leg count this process remembers (settles look up only those legs).
KNOWN_RESERVATIONS_MAX = 100_000
_SOURCE_CODES = (TransferCode.DEBIT, TransferCode.RESERVE, TransferCode.OVERDRAFT_DRAW)


def _funding(legs: Iterable[Transfer]) -> list[Funding]:
    """What each source leg moved (other legs, and balancing legs that moved 0, are skipped)."""
    return [
        _source_funding(leg, leg.amount)
        for leg in legs
        if leg.id != 0 and leg.amount != 0 and leg.code in _SOURCE_CODES
    ]


def _source_funding(leg: Transfer, amount: int) -> Funding:
    kind = "overdraft" if leg.code == TransferCode.OVERDRAFT_DRAW else "grant"
    return Funding(leg.debit_account_id, kind, amount)


def _overage_collected(legs: Sequence[Transfer], base: int) -> int:
    return sum(
        t.amount
        for t in legs[base + chains.FIRST_VARIABLE : base + CHAIN_LEGS_MAX]
        if t.id and t.code in (TransferCode.DEBIT, TransferCode.OVERDRAFT_DRAW)
    )
