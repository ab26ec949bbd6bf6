"""The control plane: admin operations that write both stores, and the reconciliation that
finishes what a crash interrupted.

Order of the dual writes (DESIGN.md, "Idempotency and failure"):
1. Postgres, one transaction: claim the idempotency key, write the catalog row in its first
   state ('pending' for a grant), append to the audit log.
2. TigerBeetle: the accounts and transfers, with ids derived from the row's id (idempotent).
3. Postgres, one transaction: the row's final state ('active'), the stored outcome.
4. The in-process cache; other processes learn through the catalog's NOTIFY triggers.
A crash after 1 leaves a pending row and an open key: `reconcile` (or a retry of the same
request) runs 2 and 3 again; every step is idempotent, so finishing is always safe. A crash
after 2 leaves TigerBeetle ahead of Postgres; 3 catches up. Nothing is ever written to
TigerBeetle that Postgres has not recorded first.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal, localcontext
from typing import Any, TypeVar

import msgspec

from grants.errors import (
    Conflict,
    ExpiryInPast,
    ExpiryNotAfterEffective,
    GrantNotChangeable,
    GrantNotRefundable,
    IdempotencyConflict,
    InvalidRequest,
    InvalidRolloverPolicy,
    LedgerUnavailableError,
    NotFound,
    RefundExceedsAvailable,
    VoidExceedsAvailable,
)
from grants.model import (
    Category,
    Grant,
    RolloverPolicy,
    Source,
    rollover_consideration,
    rollover_split,
)
from grants.service import (
    GrantService,
    IssueResult,
    RefundResult,
    RolloverResult,
    SweepReport,
    SweepResult,
    WalletAccounts,
)
from ledger.client import LedgerUnavailable
from ledger.clock import datetime_of_ns, ns_of_datetime, wall_clock_ns
from ledger.codes import AccountCode
from ledger.db import Connection, DatabaseSettings, Pool
from ledger.ids import (
    budget_account_id,
    derive_id,
    id_text,
    idempotency_key_bytes,
    operation_id,
    overdraft_account_id,
    request_fingerprint,
)
from ledger.limits import (
    AMOUNT_MAX_REQUEST,
    ASSET_SCALE_MAX,
    BATCH_EVENTS_MAX,
    BUSINESS_TIME_NS_MAX,
    BUSINESS_TIME_NS_MIN,
    EXCHANGE_RATE_CHARS_MAX,
    EXCHANGE_RATE_DIGITS_MAX,
    EXCHANGE_RATE_PLACES_MAX,
    MONEY_MINOR_MAX,
    ROLLOVER_ATTEMPTS_MAX,
    ROLLOVER_BATCH_MAX,
    U32_MAX,
)
from ledger.notify import CatalogChange, listen_catalog_changes
from ledger.repositories import (
    audit,
    budgets,
    catalog,
    credit_types,
    customers,
    finance,
    grant_refunds,
    grants,
    idempotency,
    prices,
    reconcile_failures,
    resources,
    wallet_changes,
    wallets,
)
from ledger.repositories.grant_refunds import RefundState
from ledger.repositories.grants import GrantState, RolloverState
from ledger.repositories.resources import ResourceKind
from ledger.repositories.wallet_changes import ChangeState
from ledger.settings import FUNCTIONAL_CURRENCY_DEFAULT
from wallets.catalog import (
    Budget,
    Catalog,
    CreditType,
    OverdraftMode,
    Period,
    Resource,
    Wallet,
    period_start_ns,
)
from wallets.limit_accounts import (
    LimitAccount,
    LimitMove,
    Lowering,
    budget_period_account,
    credited,
    move_limit,
    open_limit_account,
    overdraft_account,
)
from wallets.service import CreditService

R = TypeVar("R")
NS = 1_000_000_000
# An exchange rate on the wire: digits, at most one decimal point (no sign, no exponent).
_RATE = re.compile(r"[0-9]+(\.[0-9]+)?", re.ASCII)
_logger = logging.getLogger(__name__)


class GrantRequest(msgspec.Struct, frozen=True, kw_only=True):
    wallet_id: int
    amount: int
    category: Category
    consideration_minor: int = 0
    currency: str | None = None
    exchange_rate: str | None = None  # a decimal: functional currency per unit of `currency`
    priority: int = 0
    effective_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    source: Source = Source.ADMIN
    reason: str | None = None
    external_ref: str | None = None
    # At the block's expiry, what of it rolls over into new blocks (ledger/README.md
    # "Rollover"); the block must expire, before the policy's expires_at.
    rollover: RolloverPolicy | None = None


class GrantRefundResult(msgspec.Struct, frozen=True):
    """A refund in money of unused paid credits, applied."""

    operation_id: int  # its transfer's id and user_data_128; grant_refunds' key
    grant_id: int
    credits: int
    refund_minor: int
    currency: str


class GrantExpiryResult(msgspec.Struct, frozen=True):
    """A change of a block's expiry, applied."""

    grant_id: int
    expires_at: dt.datetime | None  # the new expiry (None: never)
    previous_expires_at: dt.datetime | None


class ReconcileFailure(msgspec.Struct, frozen=True):
    kind: str  # credit_type | wallet | wallet_change | budget | grant | grant_refund
    object_id: str  # UUID text, or a credit type's ledger number
    error: str


class ReconcileReport(msgspec.Struct, frozen=True):
    credit_types: int  # whose system accounts were (re)ensured
    wallets: int  # whose accounts were (re)ensured
    grants_finished: list[int]  # pending grants brought to 'active'
    # What could not be finished this time: recorded in Postgres for an operator, never raised.
    failed: list[ReconcileFailure] = []
    # Why the pass stopped early (the engine did not answer), or None.
    interrupted: str | None = None
    wallet_changes_finished: list[int] = []  # pending policy changes applied or refused
    budgets: int = 0  # active budgets whose opened current period was brought to its cap
    grant_refunds_finished: list[int] = []  # pending refunds in money applied or refused


class PolicyRefused(Conflict):
    """The ledger refused a change of an overdraft limit: more is drawn than the new limit."""


class ControlPlane:
    def __init__(
        self,
        pool: Pool,
        service: CreditService,
        grant_service: GrantService | None = None,
        *,
        functional_currency: str = FUNCTIONAL_CURRENCY_DEFAULT,
    ) -> None:
        self.pool = pool
        self.service = service
        # The currency of the books: a block in it has an exchange rate of 1.
        self.functional_currency = functional_currency
        # The credit blocks' side of the ledger, on the spend path's cache and clock.
        self.grant_service = grant_service or GrantService(
            service.ledger, service.catalog, clock_ns=service.clock_ns
        )
        self.catalog: Catalog = service.catalog
        self.reloads = 0
        # The most rollovers one sweep carries out (the rest wait for the next, unswept).
        self.rollover_batch = ROLLOVER_BATCH_MAX
        # Open reconciliation failures, as of this process's last pass (a metric).
        self.reconcile_failures_open = 0

    # -- the cache ----------------------------------------------------------------------------

    async def load(self) -> None:
        """Fills the in-process catalog from Postgres (at start and after a missed NOTIFY)."""
        since = self.catalog.begin_load()
        async with self.pool.connection() as conn:
            snapshot = await catalog.load_catalog_snapshot(conn)
            # Voided and abandoned blocks are watched: what comes back to them is voided.
            voided = await grants.list_grants_in_states(
                conn, [GrantState.VOIDED, GrantState.ABANDONED]
            )
        tenants = {c.id: c.tenant for c in snapshot.customers}
        self.catalog.load(
            [CreditType(c.id, c.code, c.name, c.asset_scale) for c in snapshot.credit_types],
            [_resource(r, tenants[r.customer_id]) for r in snapshot.resources],
            [_wallet(w) for w in snapshot.wallets],
            [_grant(g) for g in snapshot.grants],
            [
                Budget(b.id, b.resource_id, b.credit_type_id, b.period, b.cap)
                for b in snapshot.budgets
            ],
            [_price(p) for p in snapshot.prices],
            since=since,
        )
        await self.grant_service.track_voided([_grant(g) for g in voided])

    async def apply_change(self, change: CatalogChange) -> None:
        """Brings one changed row into the cache. Row by row, never a whole reload: a reload
        could replace what this process has just put in the cache with a snapshot read a
        moment before (a grant funded here but not yet 'active' in the snapshot)."""
        table, row_id = change.table, change.id
        async with self.pool.connection() as conn:
            if table == "grants":
                grant = await grants.get_grant(conn, row_id)
                if grant is None or grant.state is GrantState.EXPIRED:
                    self.catalog.drop_grant(row_id)
                elif grant.state in (GrantState.VOIDED, GrantState.ABANDONED):
                    # Voided (or abandoned) in another process: this one's sweeps must void
                    # what a release gives back to the block, as the voiding process's do.
                    self.catalog.drop_grant(row_id)
                    await self.grant_service.track_voided([_grant(grant)])
                elif grant.state is GrantState.ACTIVE:
                    self.catalog.put_grant(_grant(grant))
                # 'pending': the issuing process puts the grant once it is funded.
            elif table == "wallets":
                wallet = await wallets.get_wallet(conn, row_id)
                if wallet is not None:
                    self.catalog.put_wallet(_wallet(wallet))
            elif table == "resources":
                resource = await resources.get_resource(conn, row_id)
                if resource is not None:
                    owner = await customers.get_customer(conn, resource.customer_id)
                    assert owner is not None
                    self.catalog.put_resource(_resource(resource, owner.tenant))
            elif table == "credit_types":
                row = await credit_types.get_credit_type(conn, row_id)
                if row is not None:
                    self.catalog.put_credit_type(
                        CreditType(row.id, row.code, row.name, row.asset_scale)
                    )
            elif table == "budgets":
                budget = await budgets.get_budget(conn, row_id)
                if budget is not None and budget.active:
                    self.catalog.put_budget(
                        Budget(
                            budget.id,
                            budget.resource_id,
                            budget.credit_type_id,
                            budget.period,
                            budget.cap,
                        )
                    )
                else:
                    self.catalog.drop_budget(row_id)
            elif table == "prices":
                # A price row is never changed: the new one is all there is to learn.
                price = await prices.get_price(conn, row_id)
                if price is not None:
                    self.catalog.put_price(*_price(price))

    async def follow(self, target: DatabaseSettings | str) -> None:
        """Keeps the cache current until cancelled: every catalog change (from any process)
        is applied row by row; every (re)connection reloads everything, since notifications
        sent while disconnected are lost."""

        async def on_change(change: CatalogChange) -> None:
            await self.apply_change(change)
            self.reloads += 1

        async def on_listening() -> None:
            await self.load()
            self.reloads += 1

        await listen_catalog_changes(target, on_change, on_listening=on_listening)

    # -- idempotency --------------------------------------------------------------------------

    async def _once(
        self,
        *,
        tenant: int,
        key: str,
        operation: str,
        request: Any,
        first: Callable[[Connection], Awaitable[None]],
        then: Callable[[], Awaitable[R]],
        result_type: type[R],
    ) -> tuple[R, bool]:
        """Runs an admin operation once per (tenant, key): `first` in the claiming transaction,
        `then` (the ledger side and the final state) after it. A replay returns the stored
        outcome; an unfinished earlier attempt is finished; another body is a conflict.

        Callers that race with one key all find the record unfinished and run `then` (it is
        idempotent: ids derive from the key). The one whose outcome is stored first answers
        the first answer; every other caller answers that stored outcome as a replay, so
        exactly one answer goes without `Idempotency-Hit`."""
        try:
            idempotency_key_bytes(key)
        except ValueError as error:
            raise InvalidRequest(str(error), field="idempotency_key") from None
        request_hash = hashlib.sha256(
            json.dumps(msgspec.to_builtins(request), sort_keys=True, default=str).encode()
        ).digest()
        async with self.pool.connection() as conn, conn.transaction():
            existing = await idempotency.begin(
                conn, tenant=tenant, key=key, operation=operation, request_hash=request_hash
            )
            if existing is None:
                await first(conn)
        if existing is not None:
            if not existing.matches(operation, request_hash):
                raise IdempotencyConflict("this idempotency key was used with another request")
            if existing.completed:
                return msgspec.convert(existing.response, result_type), True
        result = await then()
        async with self.pool.connection() as conn, conn.transaction():
            stored = await idempotency.complete(
                conn,
                tenant=tenant,
                key=key,
                status_code=200,
                response=msgspec.to_builtins(result),
            )
            if stored is None:  # another caller with this key completed it first
                stored = await idempotency.get(conn, tenant=tenant, key=key)
                assert stored is not None and stored.completed
                return msgspec.convert(stored.response, result_type), True
        return result, False

    # -- catalog objects ----------------------------------------------------------------------

    async def create_credit_type(
        self,
        *,
        code: str,
        name: str,
        asset_scale: int,
        actor: str,
        tenant: int,
        key: str,
        ledger: int | None = None,
    ) -> tuple[CreditType, bool]:
        """A credit type and its TigerBeetle ledger (the next free number unless given)."""
        if ledger is not None and not 1 <= ledger <= U32_MAX:
            raise InvalidRequest("ledger must be in 1..2^32-1", field="ledger")
        if not 0 <= asset_scale <= ASSET_SCALE_MAX:
            raise InvalidRequest(
                f"asset_scale must be in 0..{ASSET_SCALE_MAX}", field="asset_scale"
            )

        async def first(conn: Connection) -> None:
            if await credit_types.get_credit_type_by_code(conn, code) is not None:
                raise Conflict(f"credit type {code!r} exists", field="code")
            number = ledger or await credit_types.next_id(conn)
            await credit_types.insert_credit_type(
                conn, id=number, code=code, name=name, asset_scale=asset_scale
            )
            await audit.append(
                conn,
                actor=actor,
                action="credit_type.create",
                details={"ledger": str(number), "code": code},
            )

        async def then() -> CreditType:
            async with self.pool.connection() as conn:
                row = await credit_types.get_credit_type_by_code(conn, code)
            assert row is not None
            await self.service.open_ledger(row.id)
            credit_type = CreditType(row.id, row.code, row.name, row.asset_scale)
            self.catalog.put_credit_type(credit_type)
            return credit_type

        return await self._once(
            tenant=tenant,
            key=key,
            operation="credit_type.create",
            request=(code, name, asset_scale, ledger),
            first=first,
            then=then,
            result_type=CreditType,
        )

    async def create_customer(
        self, *, name: str, actor: str, tenant: int, key: str, external_ref: str | None = None
    ) -> tuple[customers.Customer, bool]:
        """A customer, with the next free tenant number (its user_data_32 on the ledger)."""
        customer_id = derive_id("customer", tenant, key)

        async def first(conn: Connection) -> None:
            await conn.execute("LOCK TABLE customers IN SHARE ROW EXCLUSIVE MODE")
            number = await customers.next_tenant(conn)
            await customers.insert_customer(
                conn, id=customer_id, tenant=number, name=name, external_ref=external_ref
            )
            await audit.append(
                conn,
                actor=actor,
                action="customer.create",
                object_type="customer",
                object_id=customer_id,
            )

        async def then() -> customers.Customer:
            async with self.pool.connection() as conn:
                row = await customers.get_customer(conn, customer_id)
            assert row is not None
            return row

        return await self._once(
            tenant=tenant,
            key=key,
            operation="customer.create",
            request=(name, external_ref),
            first=first,
            then=then,
            result_type=customers.Customer,
        )

    async def create_resource(
        self,
        *,
        customer_id: int,
        kind: ResourceKind,
        actor: str,
        tenant: int,
        key: str,
        parent_id: int | None = None,
        external_ref: str | None = None,
    ) -> tuple[Resource, bool]:
        resource_id = derive_id("resource", tenant, key)
        parent = self.catalog.resources.get(parent_id) if parent_id is not None else None
        if parent_id is not None and (parent is None or parent.customer_id != customer_id):
            raise NotFound(f"parent resource {id_text(parent_id)} not found for this customer")

        async def first(conn: Connection) -> None:
            if await customers.get_customer(conn, customer_id) is None:
                raise NotFound(f"customer {id_text(customer_id)} not found")
            await resources.insert_resource(
                conn,
                id=resource_id,
                customer_id=customer_id,
                kind=kind,
                parent_id=parent_id,
                external_ref=external_ref,
            )
            await audit.append(
                conn,
                actor=actor,
                action="resource.create",
                object_type="resource",
                object_id=resource_id,
            )

        async def then() -> Resource:
            async with self.pool.connection() as conn:
                owner = await customers.get_customer(conn, customer_id)
            assert owner is not None
            resource = Resource(
                resource_id, customer_id, owner.tenant, kind.value, parent_id, external_ref
            )
            self.catalog.put_resource(resource)
            return resource

        return await self._once(
            tenant=tenant,
            key=key,
            operation="resource.create",
            request=(customer_id, kind.value, parent_id, external_ref),
            first=first,
            then=then,
            result_type=Resource,
        )

    async def create_wallet(
        self,
        *,
        resource_id: int,
        ledger: int,
        actor: str,
        tenant: int,
        key: str,
        overdraft_mode: OverdraftMode = OverdraftMode.HARD,
        overdraft_limit: int = 0,
        fall_through: bool = False,
    ) -> tuple[Wallet, bool]:
        if (overdraft_mode is OverdraftMode.SOFT) != (overdraft_limit > 0):
            raise InvalidRequest(
                "overdraft_limit > 0 goes with, and only with, a soft limit",
                field="overdraft_limit",
            )
        resource = self.catalog.resources.get(resource_id)
        if resource is None:
            raise NotFound(f"resource {id_text(resource_id)} not found")
        if ledger not in self.catalog.credit_types:
            raise NotFound(f"credit type {ledger} not found")
        wallet = Wallet(
            derive_id("wallet", tenant, key),
            resource_id,
            ledger,
            overdraft_mode,
            overdraft_limit,
            fall_through,
        )

        async def first(conn: Connection) -> None:
            if await wallets.get_wallet_by_resource(conn, resource_id, ledger) is not None:
                raise Conflict(
                    "this resource has a wallet for this credit type", field="resource_id"
                )
            await wallets.insert_wallet(
                conn,
                id=wallet.id,
                resource_id=resource_id,
                credit_type_id=ledger,
                overdraft_mode=overdraft_mode,
                overdraft_limit=overdraft_limit,
                overdraft_account_id=wallet.overdraft_account_id,
                fall_through=fall_through,
            )
            await audit.append(
                conn, actor=actor, action="wallet.create", object_type="wallet", object_id=wallet.id
            )

        async def then() -> Wallet:
            # The ledger and the cache follow the row as it stands under its lock, not this
            # request: a retry of the create, after a PATCH, must not bring back the policy
            # the wallet was created with. The answer stays the creation's.
            async with self.pool.connection() as conn:
                row = await wallets.get_wallet(conn, wallet.id)
            assert row is not None
            current = await self._reconcile_wallet(row, resource.tenant, {wallet.id})
            self.catalog.put_wallet(current)
            return wallet

        return await self._once(
            tenant=tenant,
            key=key,
            operation="wallet.create",
            request=(resource_id, ledger, overdraft_mode.value, overdraft_limit, fall_through),
            first=first,
            then=then,
            result_type=Wallet,
        )

    async def create_budget(
        self,
        *,
        resource_id: int,
        ledger: int,
        period: Period,
        cap: int,
        actor: str,
        tenant: int,
        key: str,
    ) -> tuple[Budget, bool]:
        if resource_id not in self.catalog.resources:
            raise NotFound(f"resource {id_text(resource_id)} not found")
        if not 1 <= cap <= AMOUNT_MAX_REQUEST:
            raise InvalidRequest("cap out of range", field="cap")
        budget = Budget(derive_id("budget", tenant, key), resource_id, ledger, period, cap)

        async def first(conn: Connection) -> None:
            await budgets.insert_budget(
                conn,
                id=budget.id,
                resource_id=resource_id,
                credit_type_id=ledger,
                period=period,
                cap=cap,
            )
            await audit.append(
                conn, actor=actor, action="budget.create", object_type="budget", object_id=budget.id
            )

        async def then() -> Budget:
            self.catalog.put_budget(budget)
            return budget

        return await self._once(
            tenant=tenant,
            key=key,
            operation="budget.create",
            request=(resource_id, ledger, period.value, cap),
            first=first,
            then=then,
            result_type=Budget,
        )

    async def set_price(
        self,
        *,
        feature: str,
        ledger: int,
        credits_per_unit: int,
        actor: str,
        tenant: int = 0,
        key: str | None = None,
        effective_at: dt.datetime | None = None,
    ) -> tuple[prices.Price, bool]:
        """A new price of a feature from `effective_at` (default now, never in the past), once
        per key when a key is given (the API always gives one). The price before it stays in
        force until then, and stays in the history."""
        if not feature or len(feature) > 128:
            raise InvalidRequest("feature must be 1..128 characters", field="feature")
        if not 0 <= credits_per_unit <= AMOUNT_MAX_REQUEST:
            raise InvalidRequest("credits_per_unit out of range", field="credits_per_unit")
        business_time_ns(effective_at, "effective_at")  # an instant the ledger can hold
        now = datetime_of_ns(self.service.clock_ns())
        starts = now if effective_at is None else effective_at
        if key is None:
            price_id = derive_id("price", feature, ledger, ns_of_datetime(starts))
        else:
            price_id = derive_id("price", tenant, key)

        async def first(conn: Connection) -> None:
            # Checked on the first attempt only: a replay answers what was done, even once
            # its effective_at has passed.
            if starts < now:
                raise InvalidRequest(
                    "effective_at must not be in the past: a price takes effect from now or "
                    "later, so that every spend was priced by the history as it stands",
                    field="effective_at",
                )
            await prices.insert_price(
                conn,
                id=price_id,
                feature=feature,
                credit_type_id=ledger,
                credits_per_unit=credits_per_unit,
                effective_at=starts,
            )
            await audit.append(
                conn,
                actor=actor,
                action="price.set",
                object_type="price",
                object_id=price_id,
                details={
                    "feature": feature,
                    "ledger": str(ledger),
                    "credits_per_unit": str(credits_per_unit),
                    "effective_at": starts.isoformat(),
                },
            )

        async def then() -> prices.Price:
            async with self.pool.connection() as conn:
                row = await prices.get_price(conn, price_id)
            assert row is not None
            self.catalog.put_price(*_price(row))
            return row

        if key is None:
            async with self.pool.connection() as conn, conn.transaction():
                await first(conn)
            return await then(), False
        return await self._once(
            tenant=tenant,
            key=key,
            operation="price.set",
            request=(feature, ledger, credits_per_unit, effective_at),
            first=first,
            then=then,
            result_type=prices.Price,
        )

    async def refund(
        self,
        debit_id: int,
        amount: int,
        *,
        tenant: int,
        key: str,
        actor: str,
        reason: str | None = None,
    ) -> RefundResult:
        """A usage refund (GrantService.refund), audited. Refunds of one debit run one at a
        time across processes (a transaction-scoped advisory lock on the debit), so two cannot
        both pass the never-more-than-taken check."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("refund", debit_id),))
            result = await self.grant_service.refund(
                debit_id, amount, tenant=tenant, key=key, reason=reason
            )
            if not result.replayed:
                await audit.append(
                    conn,
                    actor=actor,
                    action="debit.refund",
                    object_type="debit",
                    object_id=debit_id,
                    reason=reason,
                    details={"refund_id": str(result.operation_id), "amount": str(amount)},
                )
        return result

    async def customer(self, customer_id: int) -> customers.Customer:
        async with self.pool.connection() as conn:
            row = await customers.get_customer(conn, customer_id)
        if row is None:
            raise NotFound(f"customer {id_text(customer_id)} not found")
        return row

    # -- grants -------------------------------------------------------------------------------

    async def issue_grant(
        self, request: GrantRequest, *, tenant: int, key: str, actor: str
    ) -> tuple[IssueResult, bool]:
        """Issues a credit block once per key. Returns (outcome, replayed)."""
        wallet = self.catalog.wallets.get(request.wallet_id)
        if wallet is None:
            raise NotFound(f"wallet {id_text(request.wallet_id)} not found")
        _validate_grant(request)
        rate = exchange_rate_of(request, self.functional_currency)
        grant_id = operation_id(tenant, key)
        effective_at = request.effective_at or datetime_of_ns(self.service.clock_ns())

        async def first(conn: Connection) -> None:
            # Checked here, with the default effective time, once: a replay of the key is
            # answered its stored outcome, whenever it comes.
            if request.expires_at is not None and request.expires_at <= effective_at:
                raise InvalidRequest(
                    "expires_at must be after effective_at (now, when not given)",
                    field="expires_at",
                )
            await grants.insert_grant(
                conn,
                grants.NewGrant(
                    id=grant_id,
                    wallet_id=wallet.id,
                    credit_type_id=wallet.ledger,
                    amount=request.amount,
                    category=request.category,
                    effective_at=effective_at,
                    source=request.source,
                    actor=actor,
                    consideration_minor=request.consideration_minor,
                    currency=request.currency,
                    exchange_rate=rate,
                    priority=request.priority,
                    expires_at=request.expires_at,
                    reason=request.reason,
                    external_ref=request.external_ref,
                    rollover=None
                    if request.rollover is None
                    else grants.Rollover(
                        max_credits=request.rollover.max_credits,
                        min_credits=request.rollover.min_credits,
                        expires_at=request.rollover.expires_at,
                        state=RolloverState.DUE,
                    ),
                ),
            )
            await audit.append(
                conn,
                actor=actor,
                action="grant.issue",
                object_type="grant",
                object_id=grant_id,
                reason=request.reason,
                details={"amount": str(request.amount)},
            )

        async def then() -> IssueResult:
            async with self.pool.connection() as conn:
                row = await grants.get_grant(conn, grant_id)
            assert row is not None
            return await self._finish_grant(row)

        return await self._once(
            tenant=tenant,
            key=key,
            operation="grant.issue",
            request=request,
            first=first,
            then=then,
            result_type=IssueResult,
        )

    async def _finish_grant(self, row: grants.Grant) -> IssueResult:
        """Steps 2 and 3 of a grant: the ledger side, then 'active'. Idempotent. The ledger
        records the wallet owner's tenant, whoever asked."""
        wallet = self.catalog.wallet(row.wallet_id)
        tenant = self.catalog.resources[wallet.resource_id].tenant
        fingerprint = request_fingerprint(row.id.to_bytes(16, "big"))
        async with self.pool.connection() as conn, conn.transaction():
            # Grants to one wallet are issued one at a time, across processes: the bounded
            # overdraft's repay is computed from a read of its deficit, and with its limit: the
            # row, read under the lock that changes of the limit hold too, is what the ledger
            # holds (this process's cache may not have heard of a change yet). Under the same
            # lock an operator abandons a grant, so a grant read here as not abandoned stays so.
            locked = await wallets.lock_wallet(conn, row.wallet_id)
            assert locked is not None
            if self.catalog.wallets.get(locked.id) != _wallet(locked):
                self.catalog.put_wallet(_wallet(locked))
            current = await grants.get_grant(conn, row.id)
            if current is None or current.state is GrantState.ABANDONED:
                raise Conflict(
                    f"grant {id_text(row.id)} was abandoned by an operator: it was never "
                    "issued; issue it again with a new key"
                )
            result = await self.grant_service.issue(
                _grant(row),
                tenant=tenant,
                fingerprint=fingerprint,
                accounts=await self._repay_accounts(_wallet(locked), tenant),
            )
            await grants.set_grant_state(
                conn, row.id, GrantState.ACTIVE, expected=[GrantState.PENDING]
            )
        return result

    async def _repay_accounts(self, wallet: Wallet, tenant: int) -> WalletAccounts:
        """Where a new block repays the wallet's deficit, with the bounded overdraft's limit as
        the ledger holds it: a change of the limit cut in two by a crash (the ledger moved, the
        row not yet) must not make the deficit read larger than it is (the repay would then
        give the overdraft more headroom than its limit)."""
        accounts = self.catalog.wallet_accounts(wallet.id)
        if accounts.overdraft_account_id is None:
            return accounts
        now = await credited(
            self.service.ledger, overdraft_account(wallet.id, wallet.ledger, tenant)
        )
        return msgspec.structs.replace(accounts, overdraft_limit=now.amount)

    async def sweep(self, at_ns: int) -> SweepReport:
        """The rollovers that are due (`roll_over_due`), then the expiry and void sweeps
        (GrantService.sweep, which leaves a block alone while its rollover is not done), then
        the blocks that are done are 'expired' in Postgres, so that no later cache load brings
        them back."""
        await self._refresh_expired(at_ns)
        rolled = await self.roll_over_due(at_ns, limit=self.rollover_batch)
        report = await self.grant_service.sweep(at_ns)
        if report.finished:
            async with self.pool.connection() as conn, conn.transaction():
                # In one order: two sweeps at once (two processes) that lock the same rows in
                # different orders deadlock (CI saw Postgres break one).
                for grant_id in sorted(report.finished):
                    await grants.set_grant_state(
                        conn, grant_id, GrantState.EXPIRED, expected=[GrantState.ACTIVE]
                    )
        return msgspec.structs.replace(report, rolled_over=rolled)

    async def roll_over_due(
        self, at_ns: int, *, limit: int = ROLLOVER_BATCH_MAX
    ) -> list[RolloverResult]:
        """Carries out the rollover of (at most `limit`) blocks past their expiry at `at_ns`
        whose rollover is not done, oldest expiry first (ledger/README.md "Rollover"). Each is
        its own dual write: the new blocks' rows 'pending' with their amounts fixed (and the
        source's rollover 'pending'), then the ledger, then the rows 'active' and the source's
        rollover 'done'. A pass that finds one unfinished (a crash) finishes it; a block another
        pass is deciding is skipped (its row lock), and the sweep leaves it alone meanwhile.
        One block's failure is logged and never holds the others back."""
        async with self.pool.connection() as conn:
            due = await grants.rollovers_due(conn, datetime_of_ns(at_ns), limit=limit)
        done: list[RolloverResult] = []
        for source_id in due:
            try:
                result = await self._roll_over(source_id)
            except (LedgerUnavailable, LedgerUnavailableError):
                raise
            except Exception:
                _logger.exception("rollover of grant %s failed", id_text(source_id))
                continue
            if result is not None:
                done.append(result)
        return done

    async def _roll_over(self, source_id: int) -> RolloverResult | None:
        """One block's rollover, from wherever it stands; None when another pass holds it or
        it is done."""
        decided = await self._decide_rollover(source_id)
        if decided is None:
            return None
        source, blocks, tenant, remaining = decided
        attempt = 0 if source.rollover is None else source.rollover.attempt
        carried = next((b for b in blocks if b.id == rollover_block_id(source.id, attempt)), None)
        floor = next((b for b in blocks if b.id == rollover_floor_id(source.id, attempt)), None)
        result = RolloverResult(
            source.id,
            remaining,
            0 if carried is None else carried.amount,
            0 if floor is None else floor.amount,
            None if carried is None else carried.id,
            None if floor is None else floor.id,
        )
        if source.rollover is not None and source.rollover.state is RolloverState.DONE:
            return result  # nothing to carry: decided and done in one step
        applied = await self._roll_over_ledger(source, carried, floor, tenant)
        retried = False
        async with self.pool.connection() as conn, conn.transaction():
            for block in blocks:
                await grants.set_grant_state(
                    conn,
                    block.id,
                    GrantState.ACTIVE if applied else GrantState.ABANDONED,
                    expected=[GrantState.PENDING],
                )
            if not applied and attempt + 1 < ROLLOVER_ATTEMPTS_MAX:
                # Refused: the block has less than was fixed (a spend dated before its expiry
                # drew on it in between, or a void took it). Decided again, with fresh ids.
                retried = await grants.retry_rollover(conn, source.id)
            if not retried:
                await grants.set_rollover_state(
                    conn,
                    source.id,
                    RolloverState.DONE if applied else RolloverState.REFUSED,
                    expected=[RolloverState.PENDING],
                )
        if retried:
            _logger.warning(
                "rollover of grant %s refused by the engine (attempt %d): decided again",
                id_text(source.id),
                attempt,
            )
            return await self._roll_over(source.id)
        cached = self.catalog.grants.get(source.id)
        if cached is not None:
            self.catalog.put_grant(msgspec.structs.replace(cached, rollover_due=False))
        if not applied:
            _logger.error(
                "rollover of grant %s refused: the block had less left than fixed",
                id_text(source.id),
            )
        return msgspec.structs.replace(result, refused=not applied)

    async def _roll_over_ledger(
        self,
        source: grants.Grant,
        carried: grants.Grant | None,
        floor: grants.Grant | None,
        tenant: int,
    ) -> bool:
        """Step 2 of a rollover: the ledger (GrantService.roll_over). Idempotent."""
        return await self.grant_service.roll_over(
            _grant(source),
            None if carried is None else _grant(carried),
            None if floor is None else _grant(floor),
            tenant=tenant,
        )

    async def _decide_rollover(
        self, source_id: int
    ) -> tuple[grants.Grant, list[grants.Grant], int, int] | None:
        """Step 1 of a rollover, under the source's row lock (skipped when another pass holds
        it): a block whose rollover is due gets its new blocks' rows, 'pending', with amounts
        fixed from what the engine has available in it now (after its expiry nothing debits a
        block, only releases give back to it: what comes back later is swept), and its rollover
        'pending'; or 'done' at once when nothing is carried (or the block was voided). Returns
        (the source, its new blocks, the tenant, what was left) for the ledger step; None when
        there is nothing more to do."""
        async with self.pool.connection() as conn, conn.transaction():
            source = await grants.lock_rollover_source(conn, source_id)
            if source is None or source.rollover is None:
                return None
            policy = source.rollover
            if policy.state is RolloverState.PENDING:
                found = await self.grant_service.balances(source.id)
                assert found is not None  # its rows were written once it was on the ledger
                ids = (
                    rollover_block_id(source.id, policy.attempt),
                    rollover_floor_id(source.id, policy.attempt),
                )
                rows = [b for b in await grants.rollover_blocks(conn, source.id) if b.id in ids]
                taken = sum(b.amount for b in rows if b.id == ids[0])
                return source, rows, found.tenant, taken
            if policy.state is not RolloverState.DUE:
                return None
            found = await self.grant_service.balances(source.id)
            if source.state is not GrantState.ACTIVE or found is None:
                # Voided (its void took what was left) or never on the ledger: nothing rolls.
                await grants.set_rollover_state(
                    conn, source.id, RolloverState.DONE, expected=[RolloverState.DUE]
                )
                done = msgspec.structs.replace(
                    source, rollover=msgspec.structs.replace(policy, state=RolloverState.DONE)
                )
                return done, [], 0 if found is None else found.tenant, 0
            remaining = found.available
            taken, floor = rollover_split(policy.max_credits, policy.min_credits, remaining)
            assert source.expires_at is not None  # a policy needs an expiry (the schema's)
            blocks: list[grants.Grant] = []
            if taken:
                credits_out = source.amount - found.posted
                blocks.append(
                    await grants.insert_grant(
                        conn,
                        grants.NewGrant(
                            id=rollover_block_id(source.id, policy.attempt),
                            wallet_id=source.wallet_id,
                            credit_type_id=source.credit_type_id,
                            amount=taken,
                            category=source.category,
                            effective_at=source.expires_at,
                            source=Source.ROLLOVER,
                            actor=ROLLOVER_ACTOR,
                            consideration_minor=rollover_consideration(
                                source.consideration_minor, source.amount, credits_out, taken
                            ),
                            currency=source.currency,
                            exchange_rate=source.exchange_rate,
                            priority=source.priority,
                            expires_at=policy.expires_at,
                            reason=f"rollover of grant {id_text(source.id)}",
                            source_grant_id=source.id,
                        ),
                    )
                )
            if floor:
                blocks.append(
                    await grants.insert_grant(
                        conn,
                        grants.NewGrant(
                            id=rollover_floor_id(source.id, policy.attempt),
                            wallet_id=source.wallet_id,
                            credit_type_id=source.credit_type_id,
                            amount=floor,
                            category=Category.PROMOTIONAL,
                            effective_at=source.expires_at,
                            source=Source.ROLLOVER,
                            actor=ROLLOVER_ACTOR,
                            priority=source.priority,
                            expires_at=policy.expires_at,
                            reason=f"rollover floor of grant {id_text(source.id)}",
                            source_grant_id=source.id,
                        ),
                    )
                )
            state = RolloverState.PENDING if blocks else RolloverState.DONE
            await grants.set_rollover_state(conn, source.id, state, expected=[RolloverState.DUE])
            await audit.append(
                conn,
                actor=ROLLOVER_ACTOR,
                action="grant.rollover",
                object_type="grant",
                object_id=source.id,
                details={
                    "remaining": str(remaining),
                    "taken": str(taken),
                    "floor": str(floor),
                    "blocks": [id_text(b.id) for b in blocks],
                },
            )
        if not blocks:
            cached = self.catalog.grants.get(source.id)
            if cached is not None:
                self.catalog.put_grant(msgspec.structs.replace(cached, rollover_due=False))
        source = msgspec.structs.replace(
            source, rollover=msgspec.structs.replace(policy, state=state)
        )
        return source, blocks, found.tenant, remaining

    async def _refresh_expired(self, at_ns: int) -> None:
        """The cached blocks that are past their expiry at `at_ns`, read again from Postgres
        before the sweep moves them: an expiry changed in another process
        (`change_grant_expiry`) whose notification has not arrived yet must not have a block
        swept at its old expiry. Only those blocks: few, and one query."""
        due = {g.id: g for g in self.catalog.grants.values() if g.expired(at_ns)}
        if not due:
            return
        async with self.pool.connection() as conn:
            rows = await grants.get_grants(conn, list(due))
        for row in rows:
            fresh = _grant(row)
            cached = self.catalog.grants.get(row.id)
            # Unless a notification put a newer row meanwhile (then the cache is right).
            if row.state is GrantState.ACTIVE and cached is due[row.id] and cached != fresh:
                self.catalog.put_grant(fresh)

    async def advance_to(self, at_ns: int) -> SweepReport:
        """What the clock's reaching `at_ns` brings, done before this returns (a test clock's
        advance, api.routes.clock): the engine releases every reservation whose timeout passed
        (it pulses before any request, so a read is enough), then the expiry sweep runs. Every
        rollover due goes first, batch after batch (a sweep carries out one batch, and leaves
        the blocks whose rollover waits unswept): each result is a block whose rollover is no
        longer due, so the rounds end; one that fails is logged and left to the jobs' sweep."""
        try:
            await self.service.ledger.lookup_accounts([1])
        except LedgerUnavailable as error:
            raise LedgerUnavailableError(str(error)) from None
        rolled: list[RolloverResult] = []
        while True:
            batch = await self.roll_over_due(at_ns, limit=self.rollover_batch)
            rolled += batch
            if len(batch) < self.rollover_batch:
                break
        report = await self.sweep(at_ns)
        return msgspec.structs.replace(report, rolled_over=rolled + report.rolled_over)

    async def void_grant(
        self,
        grant_id: int,
        *,
        tenant: int,
        key: str,
        actor: str,
        reason: str | None = None,
        amount: int | None = None,
    ) -> tuple[SweepResult, bool]:
        """Voids what is left of a block, once per key; later returns are voided by sweeps.
        With an `amount`: voids exactly that many of the credits the block has available now
        (`_void_part`), and the block stays in force."""
        if amount is not None:
            return await self._void_part(
                grant_id, amount=amount, tenant=tenant, key=key, actor=actor, reason=reason
            )

        async def first(conn: Connection) -> None:
            row = await grants.set_grant_state(
                conn, grant_id, GrantState.VOIDED, expected=[GrantState.ACTIVE]
            )
            if row is None:
                existing = await grants.get_grant(conn, grant_id)
                if existing is None:
                    raise NotFound(f"grant {id_text(grant_id)} not found")
                raise GrantNotChangeable(  # voided, swept, or not issued: as a void of part
                    f"grant {id_text(grant_id)} is {existing.state.value}: only an issued block "
                    "that has neither expired nor been voided can be voided",
                    state=existing.state.value,
                )
            await audit.append(
                conn,
                actor=actor,
                action="grant.void",
                object_type="grant",
                object_id=grant_id,
                reason=reason,
            )

        async def then() -> SweepResult:
            async with self.pool.connection() as conn:
                row = await grants.get_grant(conn, grant_id)
            assert row is not None
            return await self.grant_service.void(
                grant_id, tenant=tenant, key=key, grant=_grant(row)
            )

        return await self._once(
            tenant=tenant,
            key=key,
            operation="grant.void",
            request={"grant_id": str(grant_id), "reason": reason},
            first=first,
            then=then,
            result_type=SweepResult,
        )

    async def _void_part(
        self, grant_id: int, *, amount: int, tenant: int, key: str, actor: str, reason: str | None
    ) -> tuple[SweepResult, bool]:
        """A void of `amount` credits of a block, once per key: checked against what the block
        has available (409 void_exceeds_available, with `available`) and audited in the
        claiming transaction, then one `GRANT_VOID` transfer of exactly `amount` (its id derived
        from the key) that the engine refuses, moving nothing, should a debit have taken the
        credits in between: the engine's balance constraint keeps the block from being
        overdrawn, not the read. The block stays 'active'. No row of its own: the transfer is
        the record (the projection's `void` entry, finance's breakage)."""
        if not 1 <= amount <= AMOUNT_MAX_REQUEST:
            raise InvalidRequest(f"amount must be in 1..{AMOUNT_MAX_REQUEST}", field="amount")
        void_id = derive_id("grant/void-part", tenant, key)

        async def first(conn: Connection) -> None:
            row = await grants.get_grant(conn, grant_id)
            if row is None:
                raise NotFound(f"grant {id_text(grant_id)} not found")
            _changeable(row, datetime_of_ns(self.service.clock_ns()), "voided in part")
            found = await self.grant_service.left(grant_id)
            available = 0 if found is None else found[0]
            if amount > available:
                raise VoidExceedsAvailable(
                    f"grant {id_text(grant_id)} has {available} credits available to void, "
                    f"fewer than {amount}",
                    field="amount",
                    available=available,
                )
            await audit.append(
                conn,
                actor=actor,
                action="grant.void",
                object_type="grant",
                object_id=grant_id,
                reason=reason,
                details={"void_id": id_text(void_id), "amount": str(amount)},
            )

        async def then() -> SweepResult:
            async with self.pool.connection() as conn:
                row = await grants.get_grant(conn, grant_id)
            assert row is not None
            found = await self.grant_service.left(grant_id)
            applied = found is not None and await self.grant_service.void_part(
                _grant(row), operation_id=void_id, credits=amount, tenant=found[1]
            )
            if not applied:
                available = 0 if found is None else found[0]
                raise VoidExceedsAvailable(
                    f"void of grant {id_text(grant_id)} refused: the block had fewer than "
                    f"{amount} credits available when the void reached the ledger",
                    field="amount",
                    available=available,
                )
            return SweepResult(grant_id, amount, "voided")

        return await self._once(
            tenant=tenant,
            key=key,
            operation="grant.void",
            request={"grant_id": str(grant_id), "reason": reason, "amount": str(amount)},
            first=first,
            then=then,
            result_type=SweepResult,
        )

    async def change_grant_expiry(
        self,
        grant_id: int,
        *,
        expires_at: dt.datetime | None,
        tenant: int,
        key: str,
        actor: str,
        reason: str | None = None,
    ) -> tuple[GrantExpiryResult, bool]:
        """Extends, shortens or removes (None) the expiry of a block in force, once per key.
        Returns (outcome, replayed).

        Refused: a block expired by the service's clock, voided or not issued (409
        grant_not_changeable); a new expiry at or before now (422 expiry_in_past: the change
        never reaches into the past, so the block's history reads the same under either
        expiry), or at or before its effective time (422 expiry_not_after_effective); on a
        block with a rollover policy, none or one at or after the rollover's expires_at (422
        invalid_rollover_policy).

        Where the expiry lives, all changed in one transaction under the grant's row lock: the
        grants row (every process's cache learns it through grants_notify: burn order, the spend
        path, the sweep), finance_blocks (the aging report; taken under finance's state lock so
        that a poster batch cannot insert the block with the old one), the audit log (old and
        new). The engine holds no expiry on the block's account (its user_data_64 is the
        effective time): only sweeps carry one, written when they run, so they carry the new
        one. Then this process's cache (a replay does it again: idempotent)."""
        business_time_ns(expires_at, "expires_at")
        change_id = derive_id("grant/expiry", tenant, key)
        previous: list[dt.datetime | None] = []

        async def first(conn: Connection) -> None:
            row = await grants.lock_grant(conn, grant_id)
            if row is None:
                raise NotFound(f"grant {id_text(grant_id)} not found")
            now = datetime_of_ns(self.service.clock_ns())
            _changeable(row, now, "given a new expiry")
            if expires_at is not None and expires_at <= row.effective_at:
                raise ExpiryNotAfterEffective(
                    f"expires_at must be after the grant's effective_at "
                    f"({row.effective_at.isoformat()})",
                    field="expires_at",
                )
            if expires_at is not None and expires_at <= now:
                raise ExpiryInPast(
                    f"expires_at must be after now ({now.isoformat()})", field="expires_at"
                )
            if row.rollover is not None and (
                expires_at is None or expires_at >= row.rollover.expires_at
            ):
                raise InvalidRolloverPolicy(
                    "the grant rolls over into a block expiring at "
                    f"{row.rollover.expires_at.isoformat()}: its new expiry must be before that",
                    field="expires_at",
                )
            await finance.lock_state(conn)
            changed = await grants.set_grant_expiry(conn, grant_id, expires_at)
            assert changed is not None  # locked, and active (_changeable)
            await finance.set_block_expiry(conn, grant_id, expires_at)
            await audit.append(
                conn,
                actor=actor,
                action="grant.expiry",
                object_type="grant",
                object_id=grant_id,
                reason=reason,
                details={
                    "change_id": id_text(change_id),
                    "previous_expires_at": _iso(row.expires_at),
                    "expires_at": _iso(expires_at),
                },
            )
            previous.append(row.expires_at)

        async def then() -> GrantExpiryResult:
            async with self.pool.connection() as conn:
                row = await grants.get_grant(conn, grant_id)
                if not previous:  # an earlier attempt claimed the key: its audit row says
                    entries = await audit.list_for_object(conn, "grant", grant_id)
                    details = next(
                        (
                            e.details
                            for e in entries
                            if e.action == "grant.expiry"
                            and e.details.get("change_id") == id_text(change_id)
                        ),
                        {},
                    )
                    was = details.get("previous_expires_at")
                    previous.append(None if was is None else dt.datetime.fromisoformat(was))
            assert row is not None
            if row.state is GrantState.ACTIVE:  # the row as it is now: right to cache
                self.catalog.put_grant(_grant(row))
            return GrantExpiryResult(grant_id, expires_at, previous[0])

        return await self._once(
            tenant=tenant,
            key=key,
            operation="grant.expiry",
            request={"grant_id": str(grant_id), "expires_at": _iso(expires_at), "reason": reason},
            first=first,
            then=then,
            result_type=GrantExpiryResult,
        )

    async def refund_grant(
        self,
        grant_id: int,
        *,
        amount: int | None,
        refund_minor: int,
        tenant: int,
        key: str,
        actor: str,
        reason: str | None = None,
    ) -> tuple[GrantRefundResult, bool]:
        """Refunds unused credits of a paid block in money, once per key: exactly `amount`
        credits (None: all that is left now, reservations' holds excepted) leave the block for
        the ledger's refunded account, and `refund_minor` (the money returned, in the block's
        currency) is recorded in `grant_refunds`. The row is written first ('pending'), the
        transfer next, then the row is 'applied', or 'refused' when the engine found less left
        than the row says (migration 0010). Returns (outcome, replayed)."""
        if amount is not None and not 1 <= amount <= AMOUNT_MAX_REQUEST:
            raise InvalidRequest(f"amount must be in 1..{AMOUNT_MAX_REQUEST}", field="amount")
        if not 0 <= refund_minor <= MONEY_MINOR_MAX:
            raise InvalidRequest(
                f"refund_minor must be in 0..{MONEY_MINOR_MAX}", field="refund_minor"
            )
        refund_id = derive_id("grant/refund", tenant, key)

        async def first(conn: Connection) -> None:
            row = await grants.get_grant(conn, grant_id)
            if row is None:
                raise NotFound(f"grant {id_text(grant_id)} not found")
            now = datetime_of_ns(self.service.clock_ns())
            _refundable(row, now)
            found = await self.grant_service.left(grant_id)
            left = 0 if found is None else found[0]
            if amount is None and left == 0:
                raise RefundExceedsAvailable(
                    f"grant {id_text(grant_id)} has no credits available to refund",
                    field="amount",
                    refundable=0,
                )
            if amount is not None and amount > left:
                raise RefundExceedsAvailable(
                    f"grant {id_text(grant_id)} has {left} credits available to refund, "
                    f"fewer than {amount}",
                    field="amount",
                    refundable=left,
                )
            assert row.currency is not None  # a paid block has one
            credits = left if amount is None else amount
            await grant_refunds.insert_refund(
                conn,
                grant_refunds.NewGrantRefund(
                    operation_id=refund_id,
                    grant_id=grant_id,
                    credit_type_id=row.credit_type_id,
                    credits=credits,
                    refund_minor=refund_minor,
                    currency=row.currency,
                    whole=amount is None,
                    effective_at=now,
                    actor=actor,
                    reason=reason,
                ),
            )
            await audit.append(
                conn,
                actor=actor,
                action="grant.refund",
                object_type="grant",
                object_id=grant_id,
                reason=reason,
                details={
                    "refund_id": id_text(refund_id),
                    "credits": str(credits),
                    "refund_minor": str(refund_minor),
                    "currency": row.currency,
                },
            )

        async def then() -> GrantRefundResult:
            return await self._finish_refund(refund_id)

        return await self._once(
            tenant=tenant,
            key=key,
            operation="grant.refund",
            request={
                "grant_id": str(grant_id),
                "amount": None if amount is None else str(amount),
                "refund_minor": str(refund_minor),
                "reason": reason,
            },
            first=first,
            then=then,
            result_type=GrantRefundResult,
        )

    async def _finish_refund(self, refund_id: int) -> GrantRefundResult:
        """Steps 2 and 3 of a refund in money: the transfer, then the row 'applied' or
        'refused'. Idempotent (the transfer's id is the refund's). A refund found refused is
        answered as the stored refusal it is."""
        async with self.pool.connection() as conn:
            row = await grant_refunds.get_refund(conn, refund_id)
            assert row is not None
            block = await grants.get_grant(conn, row.grant_id)
            assert block is not None
        replayed = row.state is not RefundState.PENDING
        refundable = None  # what the block has left now, said with a refusal made now
        if not replayed:
            found = await self.grant_service.left(row.grant_id)
            refundable = None if found is None else found[0]
            applied = found is not None and await self.grant_service.refund_out(
                _grant(block),
                operation_id=refund_id,
                credits=row.credits,
                effective_at_ns=ns_of_datetime(row.effective_at),
                tenant=found[1],
            )
            refusal = (
                None
                if applied
                else f"the block had fewer than {row.credits} credits available when the "
                "refund reached the ledger"
            )
            async with self.pool.connection() as conn, conn.transaction():
                finished = await grant_refunds.finish_refund(
                    conn,
                    refund_id,
                    RefundState.APPLIED if applied else RefundState.REFUSED,
                    refusal=refusal,
                )
                if finished is None:  # another attempt finished it first
                    finished = await grant_refunds.get_refund(conn, refund_id)
            assert finished is not None
            row = finished
        if row.state is RefundState.REFUSED:
            assert row.refusal is not None
            raise RefundExceedsAvailable(
                f"refund of grant {id_text(row.grant_id)} refused: {row.refusal}",
                replayed=replayed,
                field="amount",
                refundable=refundable,
            )
        return GrantRefundResult(
            row.operation_id, row.grant_id, row.credits, row.refund_minor, row.currency
        )

    # -- changes of a wallet's policy and of a budget -----------------------------------------

    async def update_wallet(
        self,
        wallet_id: int,
        *,
        actor: str,
        tenant: int,
        key: str,
        overdraft_mode: OverdraftMode | None = None,
        overdraft_limit: int | None = None,
        fall_through: bool | None = None,
    ) -> tuple[Wallet, bool]:
        """Changes a wallet's overdraft mode or limit or its fall-through, once per key; the
        ledger moves with it (migration 0007 states the order). Every switch of mode is
        supported: leaving 'soft' lowers its bounded account to 0, so like any lowering it is
        refused (PolicyRefused, nothing changed) while more than the new limit is drawn, held
        draws included. What an unbounded wallet owes stays owed when it leaves 'unbounded',
        and its next grants repay it."""
        if overdraft_mode is None and overdraft_limit is None and fall_through is None:
            raise InvalidRequest("name at least one field to change", field="overdraft_mode")
        change_id = derive_id("wallet/change", tenant, key)

        async def first(conn: Connection) -> None:
            row = await wallets.lock_wallet(conn, wallet_id)
            if row is None:
                raise NotFound(f"wallet {id_text(wallet_id)} not found")
            if await wallet_changes.pending_change_of(conn, wallet_id) is not None:
                raise Conflict("another change of this wallet is being applied; try again")
            mode, limit = _policy(row, overdraft_mode, overdraft_limit)
            await wallet_changes.insert_change(
                conn,
                id=change_id,
                wallet_id=wallet_id,
                overdraft_mode=mode,
                overdraft_limit=limit,
                fall_through=row.fall_through if fall_through is None else fall_through,
                actor=actor,
            )

        async def then() -> Wallet:
            return await self._apply_wallet_change(change_id)

        return await self._once(
            tenant=tenant,
            key=key,
            operation="wallet.update",
            request={
                "wallet_id": str(wallet_id),
                "overdraft_mode": overdraft_mode,
                "overdraft_limit": overdraft_limit,
                "fall_through": fall_through,
            },
            first=first,
            then=then,
            result_type=Wallet,
        )

    async def _apply_wallet_change(self, change_id: int) -> Wallet:
        """Steps 2 and 3 of a change of policy: the ledger, then the wallet row and the
        change's state, under the wallet's row lock (grants to the wallet wait: a repay reads
        the limit). Idempotent; a refused change raises PolicyRefused every time."""
        async with self.pool.connection() as conn, conn.transaction():
            change = await wallet_changes.get_change(conn, change_id)
            assert change is not None
            row = await wallets.lock_wallet(conn, change.wallet_id)
            assert row is not None
            if change.state is ChangeState.APPLIED:
                return _wallet(row)
            refusal = change.refusal
            if change.state is ChangeState.PENDING:
                refusal = await self._write_wallet_change(conn, change, row)
        if refusal is not None:
            raise PolicyRefused(refusal)
        wallet = _changed(row, change)
        self.catalog.put_wallet(wallet)
        return wallet

    async def _write_wallet_change(
        self, conn: Connection, change: wallet_changes.WalletChange, row: wallets.Wallet
    ) -> str | None:
        """Moves the ledger to the change, then records it (or its refusal) on `conn`, in the
        caller's transaction; the refusal's reason, or None."""
        wallet = _changed(row, change)
        # The tenant from Postgres, in this transaction: this process's cache may not have
        # heard of the resource yet (created in another process a moment ago).
        tenant = await _tenant(conn, wallet.resource_id)
        move = await self._open_wallet(wallet, tenant, operation=change.id)
        before, after = _policy_details(_wallet(row)), _policy_details(wallet)
        if move.refused:
            refusal = (
                f"the overdraft has {move.before - move.balance} drawn (held draws included): "
                f"its limit cannot go below that (asked: {after['overdraft_limit']})"
            )
            await wallet_changes.finish_change(
                conn, change.id, ChangeState.REFUSED, refusal=refusal
            )
            await audit.append(
                conn,
                actor=change.actor,
                action="wallet.update_refused",
                object_type="wallet",
                object_id=wallet.id,
                reason=refusal,
                details={"from": before, "to": after},
            )
            return refusal
        await wallets.update_wallet_policy(
            conn,
            wallet.id,
            overdraft_mode=wallet.overdraft_mode,
            overdraft_limit=wallet.overdraft_limit,
            # A soft wallet names its bounded account, an unbounded one its debt account; a
            # hard one keeps what it named, since a deficit may still be owed there.
            overdraft_account_id=wallet.overdraft_account_id or row.overdraft_account_id,
            fall_through=wallet.fall_through,
        )
        await wallet_changes.finish_change(conn, change.id, ChangeState.APPLIED)
        await audit.append(
            conn,
            actor=change.actor,
            action="wallet.update",
            object_type="wallet",
            object_id=wallet.id,
            details={"from": before, "to": after},
        )
        return None

    async def _open_wallet(self, wallet: Wallet, tenant: int, *, operation: int) -> LimitMove:
        """The wallet's accounts, and its bounded overdraft account at its limit: the soft
        limit, or 0 once the wallet has left 'soft'. The caller holds the wallet's row lock."""
        move = await self.service.open_wallet(wallet, tenant, operation=operation)
        if wallet.overdraft_mode is OverdraftMode.SOFT:
            return move
        return await self.service.sync_overdraft_limit(wallet, tenant, operation=operation)

    async def update_budget(
        self, budget_id: int, *, cap: int, actor: str, tenant: int, key: str
    ) -> tuple[Budget, bool]:
        """Changes a budget's cap, once per key. A cut is exact: under the budget's row lock,
        the current period's account gives back all of the difference, or the ledger refuses
        (more than the new cap is used or held this period: 409, nothing written); then the
        row records it, in the same transaction. A raise is written to Postgres first, then
        the ledger. Later periods open with the new cap."""
        if not 1 <= cap <= AMOUNT_MAX_REQUEST:
            raise InvalidRequest("cap out of range", field="cap")
        change_id = derive_id("budget/change", tenant, key)

        async def first(conn: Connection) -> None:
            row = await _active_budget(conn, budget_id)
            if cap < row.cap:
                await self._cut_budget(conn, row, cap, operation=change_id)
            await budgets.set_budget_cap(conn, budget_id, cap)
            await audit.append(
                conn,
                actor=actor,
                action="budget.update",
                object_type="budget",
                object_id=budget_id,
                details={"from": {"cap": str(row.cap)}, "to": {"cap": str(cap)}},
            )

        async def then() -> Budget:
            return await self._sync_budget(budget_id, operation=change_id)

        return await self._once(
            tenant=tenant,
            key=key,
            operation="budget.update",
            request={"budget_id": str(budget_id), "cap": cap},
            first=first,
            then=then,
            result_type=Budget,
        )

    async def _cut_budget(
        self, conn: Connection, row: budgets.Budget, cap: int, *, operation: int
    ) -> None:
        """The current period's account lowered to `cap`, all of the difference, or refused.
        Were the row's write then lost (a crash before its commit), reconciliation brings the
        account back to the cap Postgres kept."""
        account = await self._period_account(conn, row)
        exact = msgspec.structs.replace(account, lowering=Lowering.EXACT)
        move = await move_limit(self.service.ledger, exact, cap, operation=operation)
        if move.refused:
            used = move.before - move.balance
            raise Conflict(
                f"this period of the budget has {used} used (held reservations included): its "
                f"cap cannot go below that (asked: {cap})",
                field="cap",
                used=used,
            )

    async def _period_account(self, conn: Connection, row: budgets.Budget) -> LimitAccount:
        """The budget's account of the current period, opened (and funded, by the first
        transfer the hot path would make) if no spend has opened it yet."""
        start_ns = period_start_ns(row.period, self.service.clock_ns())
        tenant = await _tenant(conn, row.resource_id)
        account = budget_period_account(
            row.id, row.resource_id, row.credit_type_id, tenant, start_ns
        )
        await open_limit_account(self.service.ledger, account, AccountCode.BUDGET)
        return account

    async def _sync_budget(self, budget_id: int, *, operation: int) -> Budget:
        """The current period's account of an active budget brought to its cap (opened and
        funded if no spend has yet), under the budget's row lock; the budget as it stands."""
        async with self.pool.connection() as conn, conn.transaction():
            row = await budgets.lock_budget(conn, budget_id)
            assert row is not None
            budget = Budget(row.id, row.resource_id, row.credit_type_id, row.period, row.cap)
            if row.active:
                account = await self._period_account(conn, row)
                await move_limit(self.service.ledger, account, row.cap, operation=operation)
        if row.active:
            self.catalog.put_budget(budget)
        return budget

    async def remove_budget(
        self, budget_id: int, *, actor: str, tenant: int, key: str
    ) -> tuple[Budget, bool]:
        """Removes a budget, once per key: it stops applying to new spends at once (this
        process's cache now, the others' on the change's notification). Its ledger accounts
        stay: reservations made under it settle against them."""

        async def first(conn: Connection) -> None:
            await _active_budget(conn, budget_id)
            await budgets.set_budget_active(conn, budget_id, False)
            await audit.append(
                conn,
                actor=actor,
                action="budget.remove",
                object_type="budget",
                object_id=budget_id,
            )

        async def then() -> Budget:
            async with self.pool.connection() as conn:
                row = await budgets.get_budget(conn, budget_id)
            assert row is not None
            self.catalog.drop_budget(budget_id)
            return Budget(row.id, row.resource_id, row.credit_type_id, row.period, row.cap)

        return await self._once(
            tenant=tenant,
            key=key,
            operation="budget.remove",
            request={"budget_id": str(budget_id)},
            first=first,
            then=then,
            result_type=Budget,
        )

    async def reconcile(self, *, older_than_s: float = 0.0) -> ReconcileReport:
        """Finishes every dual write a crash interrupted: system and wallet accounts ensured,
        pending changes of a wallet's policy applied (or refused), overdraft limits and the
        current period of every active budget brought to what Postgres records, pending grants
        funded and activated, their idempotency records completed.

        Never raises for one object's sake: what cannot be finished is logged, recorded in
        `reconcile_failures` (an operator sees it with `credit-ledger reconcile`) and tried
        again next time, after the others. When the engine does not answer, the pass stops
        and says so. Either way the caller (the service's start, the jobs) carries on."""
        # Rows are stamped by Postgres (`created_at`), on the wall clock whatever the service's
        # clock is (a sandbox's test clock stands still between advances).
        cutoff = datetime_of_ns(wall_clock_ns() - int(older_than_s * NS))
        async with self.pool.connection() as conn:
            types = await credit_types.list_credit_types(conn)
            all_wallets = await wallets.list_all_wallets(conn)
            pending = await grants.list_pending_grants(conn, cutoff)
            abandoned = await grants.list_grants_in_states(conn, [GrantState.ABANDONED])
            changes = await wallet_changes.list_pending_changes(conn, cutoff)
            refunds = await grant_refunds.list_pending_refunds(conn, cutoff)
            active_budgets = await budgets.list_all_active_budgets(conn)
            tenants = {c.id: c.tenant for c in await customers.list_all_customers(conn)}
            owners = {r.id: r.customer_id for r in await resources.list_all_resources(conn)}
            failing = await reconcile_failures.open_keys(conn)
        failed: list[ReconcileFailure] = []
        finished: list[int] = []
        changed: list[int] = []
        refunded: list[int] = []
        opened: list[budgets.Budget] = []
        interrupted = None
        try:
            # Read from the engine when the pass starts, a batch at a time: the wallets with a
            # bounded overdraft account (soft, or soft once), and the budgets whose current
            # period has an account (a period no spend has opened needs nothing: its first
            # spend opens it at the cap of the time).
            bounded = await self._bounded_overdrafts(all_wallets)
            opened = await self._opened_periods(active_budgets)
            steps = self._reconcile_steps(
                types, changes, all_wallets, opened, pending, tenants, owners, bounded
            )
            # Refunds in money last: the blocks they take from are issued by then.
            steps += [
                (
                    "grant_refund",
                    id_text(r.operation_id),
                    functools.partial(self._finish_refund_or_refuse, r.operation_id),
                )
                for r in refunds
            ]
            for kind, object_id, step in steps:
                done = await self._reconcile_step(kind, object_id, step, failing, failed)
                if done and kind == "grant":
                    finished.append(uuid.UUID(object_id).int)
                elif done and kind == "wallet_change":
                    changed.append(uuid.UUID(object_id).int)
                elif done and kind == "grant_refund":
                    refunded.append(uuid.UUID(object_id).int)
            # A grant abandoned while an attempt was in flight: its account, should it exist,
            # is watched like a voided block's, so the sweeps empty it.
            await self.grant_service.track_voided([_grant(g) for g in abandoned])
        except (LedgerUnavailable, LedgerUnavailableError) as error:
            interrupted = f"the engine did not answer: {error}"
            _logger.warning("reconciliation stopped: %s", interrupted)
        async with self.pool.connection() as conn:
            self.reconcile_failures_open = await reconcile_failures.count_open(conn)
        return ReconcileReport(
            len(types),
            len(all_wallets),
            finished,
            failed,
            interrupted,
            changed,
            len(opened),
            refunded,
        )

    def _reconcile_steps(
        self,
        types: list[credit_types.CreditType],
        changes: list[wallet_changes.WalletChange],
        all_wallets: list[wallets.Wallet],
        active_budgets: list[budgets.Budget],
        pending: list[grants.Grant],
        tenants: dict[int, int],
        owners: dict[int, int],
        bounded: set[int],
    ) -> list[tuple[str, str, Callable[[], Awaitable[Any]]]]:
        """A pass's work, in order, as (kind, object id, step)."""
        steps: list[tuple[str, str, Callable[[], Awaitable[Any]]]] = [
            ("credit_type", str(t.id), functools.partial(self.service.open_ledger, t.id))
            for t in types
        ]
        # A wallet's row says what its ledger holds once its pending change is finished.
        steps += [
            ("wallet_change", id_text(c.id), functools.partial(self._finish_wallet_change, c.id))
            for c in changes
        ]
        steps += [
            (
                "wallet",
                id_text(w.id),
                functools.partial(
                    self._reconcile_wallet, w, tenants[owners[w.resource_id]], bounded
                ),
            )
            for w in all_wallets
        ]
        steps += [
            ("budget", id_text(b.id), functools.partial(self._sync_budget, b.id, operation=0))
            for b in active_budgets
        ]
        steps += [
            ("grant", id_text(row.id), functools.partial(self._finish_grant, row))
            for row in pending
        ]
        return steps

    async def _finish_refund_or_refuse(self, refund_id: int) -> None:
        """A pending refund in money, applied or refused: either finishes it."""
        with contextlib.suppress(RefundExceedsAvailable):
            await self._finish_refund(refund_id)

    async def _finish_wallet_change(self, change_id: int) -> None:
        """A pending change of a wallet's policy, applied or refused: either finishes it."""
        with contextlib.suppress(PolicyRefused):
            await self._apply_wallet_change(change_id)

    async def _opened_periods(self, rows: list[budgets.Budget]) -> list[budgets.Budget]:
        """The budgets (of `rows`) whose current period has its account on the ledger."""
        now_ns = self.service.clock_ns()
        found: list[budgets.Budget] = []
        for start in range(0, len(rows), BATCH_EVENTS_MAX):
            batch = rows[start : start + BATCH_EVENTS_MAX]
            ids = {
                budget_account_id(b.resource_id, b.id, period_start_ns(b.period, now_ns)): b
                for b in batch
            }
            found += [ids[a.id] for a in await self.service.ledger.lookup_accounts(list(ids))]
        return found

    async def _bounded_overdrafts(self, rows: list[wallets.Wallet]) -> set[int]:
        """The wallets (of `rows`) that have a bounded overdraft account on the ledger."""
        found: set[int] = set()
        for start in range(0, len(rows), BATCH_EVENTS_MAX):
            batch = rows[start : start + BATCH_EVENTS_MAX]
            ids = {overdraft_account_id(w.id, AccountCode.OVERDRAFT): w.id for w in batch}
            found.update(ids[a.id] for a in await self.service.ledger.lookup_accounts(list(ids)))
        return found

    async def _reconcile_wallet(
        self, row: wallets.Wallet, tenant: int, bounded: set[int]
    ) -> Wallet:
        """A wallet's accounts ensured; one with a bounded overdraft account (soft, or soft
        once, or named in `bounded`) brought to its limit under its row lock, as the row stands
        then, unless a change of it is pending (that change finishes it). The ledger refusing
        is never expected: a wallet's row changes after its ledger does. Returns the wallet as
        the ledger was brought to it."""
        wallet = _wallet(row)
        if not (wallet.overdraft_mode is OverdraftMode.SOFT or row.id in bounded):
            # Never soft: nothing of a limit to bring anywhere, only accounts to ensure.
            await self.service.open_wallet(wallet, tenant)
            return wallet
        async with self.pool.connection() as conn, conn.transaction():
            locked = await wallets.lock_wallet(conn, row.id)
            assert locked is not None
            if await wallet_changes.pending_change_of(conn, row.id) is not None:
                return _wallet(locked)
            move = await self._open_wallet(_wallet(locked), tenant, operation=0)
        if move.refused:
            raise PolicyRefused(
                f"the ledger holds an overdraft limit of {move.before} and will not lower it to "
                f"the wallet's {locked.overdraft_limit}: {move.before - move.balance} is drawn"
            )
        return _wallet(locked)

    async def _reconcile_step(
        self,
        kind: str,
        object_id: str,
        step: Callable[[], Awaitable[Any]],
        failing: set[tuple[str, str]],
        failed: list[ReconcileFailure],
    ) -> bool:
        """One object of a reconciliation pass: done (True), or recorded as not done."""
        try:
            await step()
        except (LedgerUnavailable, LedgerUnavailableError):
            raise
        except Exception as error:  # whatever the reason, one object never stops the pass
            text = f"{type(error).__name__}: {error}"
            _logger.error("reconciliation could not finish %s %s: %s", kind, object_id, text)
            failed.append(ReconcileFailure(kind, object_id, text))
            async with self.pool.connection() as conn:
                await reconcile_failures.record(conn, kind=kind, object_id=object_id, error=text)
            return False
        if (kind, object_id) in failing:
            async with self.pool.connection() as conn:
                await reconcile_failures.resolve(
                    conn, kind=kind, object_id=object_id, resolution="finished by reconciliation"
                )
        return True


async def abandon_grant(pool: Pool, grant_id: int, *, actor: str, reason: str) -> grants.Grant:
    """An operator's way out for a pending grant that reconciliation cannot finish: it becomes
    'abandoned' and is never issued (`_finish_grant` refuses it, under the same wallet lock).
    Postgres only, so it works while a service holds the engine. Every process learns it through
    the catalog's notifications and watches the block like a voided one: should an earlier
    attempt have reached the ledger after all, the sweeps void what its account holds."""
    if not reason.strip():
        raise InvalidRequest("say why the grant is abandoned", field="reason")
    async with pool.connection() as conn, conn.transaction():
        row = await grants.get_grant(conn, grant_id)
        if row is None:
            raise NotFound(f"grant {id_text(grant_id)} not found")
        await wallets.lock_wallet(conn, row.wallet_id)
        abandoned = await grants.set_grant_state(
            conn, grant_id, GrantState.ABANDONED, expected=[GrantState.PENDING]
        )
        if abandoned is None:
            raise Conflict(
                f"grant {id_text(grant_id)} is {row.state.value}: only a pending grant can be "
                "abandoned"
            )
        await audit.append(
            conn,
            actor=actor,
            action="grant.abandon",
            object_type="grant",
            object_id=grant_id,
            reason=reason,
        )
        await reconcile_failures.resolve(
            conn, kind="grant", object_id=id_text(grant_id), resolution=f"abandoned: {reason}"
        )
    return abandoned


def _policy(
    row: wallets.Wallet, mode: OverdraftMode | None, limit: int | None
) -> tuple[OverdraftMode, int]:
    """The overdraft mode and limit a change asks for, from what it names and the wallet as it
    is: a limit alone changes a soft wallet's limit; a mode alone keeps a soft limit only while
    the wallet stays soft."""
    new_mode = row.overdraft_mode if mode is None else mode
    if limit is None:
        if new_mode is OverdraftMode.SOFT and row.overdraft_mode is not OverdraftMode.SOFT:
            raise InvalidRequest(
                "a wallet made soft needs its overdraft_limit", field="overdraft_limit"
            )
        limit = row.overdraft_limit if new_mode is OverdraftMode.SOFT else 0
    if (new_mode is OverdraftMode.SOFT) != (limit > 0):
        raise InvalidRequest(
            "overdraft_limit > 0 goes with, and only with, a soft limit", field="overdraft_limit"
        )
    if not 0 <= limit <= AMOUNT_MAX_REQUEST:
        raise InvalidRequest("overdraft_limit out of range", field="overdraft_limit")
    return new_mode, limit


def _changed(row: wallets.Wallet, change: wallet_changes.WalletChange) -> Wallet:
    return Wallet(
        row.id,
        row.resource_id,
        row.credit_type_id,
        change.overdraft_mode,
        change.overdraft_limit,
        change.fall_through,
    )


def _policy_details(wallet: Wallet) -> dict[str, Any]:
    """A policy for the audit log (amounts as strings, like every amount there)."""
    return {
        "overdraft_mode": wallet.overdraft_mode.value,
        "overdraft_limit": str(wallet.overdraft_limit),
        "fall_through": wallet.fall_through,
    }


async def _active_budget(conn: Connection, budget_id: int) -> budgets.Budget:
    """The budget, locked, if it is in force; NotFound once removed (or never there)."""
    row = await budgets.lock_budget(conn, budget_id)
    if row is None or not row.active:
        raise NotFound(f"budget {id_text(budget_id)} not found")
    return row


async def _tenant(conn: Connection, resource_id: int) -> int:
    tenant = await resources.tenant_of(conn, resource_id)
    if tenant is None:
        raise NotFound(f"resource {id_text(resource_id)} not found")
    return tenant


def _lock_key(kind: str, object_id: int) -> int:
    """A signed 64-bit advisory lock key for one object."""
    return derive_id("lock/" + kind, object_id) % (1 << 63)


def _validate_grant(request: GrantRequest) -> None:
    """Everything the catalog and the engine will be asked to store, checked before anything
    is written: a row that cannot reach the ledger would stay 'pending' for ever."""
    if not 1 <= request.amount <= AMOUNT_MAX_REQUEST:
        raise InvalidRequest(f"amount must be in 1..{AMOUNT_MAX_REQUEST}", field="amount")
    if request.category is Category.PAID and not request.currency:
        raise InvalidRequest("a paid grant needs its currency", field="currency")
    if not 0 <= request.consideration_minor <= MONEY_MINOR_MAX:
        raise InvalidRequest(
            f"consideration_minor must be in 0..{MONEY_MINOR_MAX}", field="consideration_minor"
        )
    if request.consideration_minor and not request.currency:
        raise InvalidRequest("a consideration needs its currency", field="currency")
    for name in ("effective_at", "expires_at"):
        business_time_ns(getattr(request, name), name)
    if (
        request.expires_at is not None
        and request.effective_at is not None
        and request.expires_at <= request.effective_at
    ):
        raise InvalidRequest("expires_at must be after effective_at", field="expires_at")
    if request.rollover is not None:
        validate_rollover(request.rollover, request.expires_at)


def validate_rollover(policy: RolloverPolicy, block_expires_at: dt.datetime | None) -> None:
    """A rollover policy the service can carry out on a block expiring at `block_expires_at`
    (else 422 invalid_rollover_policy, naming the field)."""
    if block_expires_at is None:
        raise InvalidRolloverPolicy(
            "a block that never expires has nothing to roll over: give it an expires_at",
            field="rollover",
        )
    for name in ("min_credits", "max_credits"):
        value = getattr(policy, name)
        if not 0 <= value <= AMOUNT_MAX_REQUEST:
            raise InvalidRolloverPolicy(
                f"rollover.{name} must be in 0..{AMOUNT_MAX_REQUEST}", field=f"rollover.{name}"
            )
    if policy.max_credits < policy.min_credits:
        raise InvalidRolloverPolicy(
            "rollover.max_credits must be at least rollover.min_credits",
            field="rollover.max_credits",
        )
    try:
        business_time_ns(policy.expires_at, "rollover.expires_at")
    except InvalidRequest as error:
        raise InvalidRolloverPolicy(str(error), field="rollover.expires_at") from None
    if policy.expires_at <= block_expires_at:
        raise InvalidRolloverPolicy(
            "rollover.expires_at must be after the block's expires_at",
            field="rollover.expires_at",
        )


def exchange_rate_of(request: GrantRequest, functional_currency: str) -> Decimal | None:
    """The block's exchange rate at receipt, as stored: units of the functional currency per
    unit of its currency. A paid block in the functional currency has 1 (a given rate must be
    1); a paid block in another currency has the rate given, or None (unknown); a promotional
    block none (it has no cost basis to measure). Refused (422) past the limits."""
    text = request.exchange_rate
    if request.category is not Category.PAID:
        if text is not None:
            raise InvalidRequest("only a paid grant has an exchange_rate", field="exchange_rate")
        return None
    rate = None if text is None else parse_exchange_rate(text)
    if request.currency == functional_currency:
        if rate is not None and rate != 1:
            raise InvalidRequest(
                f"a grant in the functional currency ({functional_currency}) has an "
                "exchange_rate of 1",
                field="exchange_rate",
            )
        return Decimal(1)
    return rate


def parse_exchange_rate(text: str) -> Decimal:
    """A rate as a decimal string ("1.0842"): digits with at most one decimal point, > 0, at
    most EXCHANGE_RATE_DIGITS_MAX significant digits and EXCHANGE_RATE_PLACES_MAX decimal
    places (trailing zeros do not count). Returned without trailing zeros."""
    if len(text) > EXCHANGE_RATE_CHARS_MAX or not _RATE.fullmatch(text):
        raise InvalidRequest(
            'exchange_rate must be a decimal string such as "1.0842"', field="exchange_rate"
        )
    with localcontext(prec=2 * EXCHANGE_RATE_CHARS_MAX):  # exact: nothing is rounded
        rate = Decimal(text).normalize()
    if rate <= 0:
        raise InvalidRequest("exchange_rate must be more than 0", field="exchange_rate")
    _, digits, exponent = rate.as_tuple()
    assert isinstance(exponent, int)
    significant = len(digits) + max(0, exponent)  # an integer's trailing zeros count
    if significant > EXCHANGE_RATE_DIGITS_MAX or -exponent > EXCHANGE_RATE_PLACES_MAX:
        raise InvalidRequest(
            f"exchange_rate has at most {EXCHANGE_RATE_DIGITS_MAX} significant digits and "
            f"{EXCHANGE_RATE_PLACES_MAX} decimal places",
            field="exchange_rate",
        )
    return rate


def rate_text(rate: Decimal | None) -> str | None:
    """A stored rate as the API writes it: plain digits, never an exponent."""
    return None if rate is None else format(rate.normalize(), "f")


def _refundable(row: grants.Grant, now: dt.datetime) -> None:
    """Refuses (409 grant_not_refundable) a refund in money of a block that cannot have one."""
    if row.category is not Category.PAID:
        raise GrantNotRefundable(
            f"grant {id_text(row.id)} is promotional: nothing was paid for it to give back"
        )
    state = grants.block_state(row, now) if row.state is GrantState.ACTIVE else row.state.value
    if state not in ("active", "upcoming"):
        raise GrantNotRefundable(
            f"grant {id_text(row.id)} is {state}: only an issued block that has neither "
            "expired nor been voided is refunded",
            state=state,
        )


def _iso(at: dt.datetime | None) -> str | None:
    return None if at is None else at.astimezone(dt.UTC).isoformat()


def _changeable(row: grants.Grant, now: dt.datetime, what: str) -> None:
    """Refuses (409 grant_not_changeable) a change of a block that is not in force at `now`:
    expired (by its expiry, swept or not), voided, or not issued (pending, abandoned)."""
    state = grants.block_state(row, now) if row.state is GrantState.ACTIVE else row.state.value
    if state not in ("active", "upcoming"):
        raise GrantNotChangeable(
            f"grant {id_text(row.id)} is {state}: only an issued block that has neither "
            f"expired nor been voided can be {what}",
            state=state,
        )


def business_time_ns(at: dt.datetime | None, field: str) -> int | None:
    """A business time as ns since the epoch, if the engine can record it (else 422)."""
    if at is None:
        return None
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidRequest(f"{field} needs a UTC offset (RFC 3339, e.g. ...Z)", field=field)
    ns = ns_of_datetime(at)
    if not BUSINESS_TIME_NS_MIN <= ns <= BUSINESS_TIME_NS_MAX:
        raise InvalidRequest(
            f"{field} must be between {datetime_of_ns(BUSINESS_TIME_NS_MIN).isoformat()} and "
            f"{datetime_of_ns(BUSINESS_TIME_NS_MAX).isoformat()}",
            field=field,
        )
    return ns


ROLLOVER_ACTOR = "system"


def rollover_block_id(source_id: int, attempt: int = 0) -> int:
    """The block a block's credits roll over into (its account id), in the rollover's
    `attempt`-th attempt (ledger/README.md "Rollover")."""
    if attempt == 0:
        return derive_id("grant/rollover", source_id)
    return derive_id("grant/rollover", source_id, attempt)


def rollover_floor_id(source_id: int, attempt: int = 0) -> int:
    """The promotional block a rollover's floor adds beyond what was left (per attempt)."""
    if attempt == 0:
        return derive_id("grant/rollover/floor", source_id)
    return derive_id("grant/rollover/floor", source_id, attempt)


def _resource(r: resources.Resource, tenant: int) -> Resource:
    return Resource(r.id, r.customer_id, tenant, r.kind.value, r.parent_id, r.external_ref)


def _wallet(w: wallets.Wallet) -> Wallet:
    return Wallet(
        w.id,
        w.resource_id,
        w.credit_type_id,
        OverdraftMode(w.overdraft_mode),
        w.overdraft_limit,
        w.fall_through,
    )


def _price(p: prices.Price) -> tuple[str, int, int, int]:
    """A price's entry as the cache keeps it: feature, ledger, from when (ns), credits."""
    return p.feature, p.credit_type_id, ns_of_datetime(p.effective_at), p.credits_per_unit


def _grant(g: grants.Grant) -> Grant:
    return Grant(
        id=g.id,
        wallet_id=g.wallet_id,
        ledger=g.credit_type_id,
        amount=g.amount,
        category=g.category,
        priority=g.priority,
        effective_at_ns=ns_of_datetime(g.effective_at),
        expires_at_ns=None if g.expires_at is None else ns_of_datetime(g.expires_at),
        consideration_minor=g.consideration_minor,
        currency=g.currency,
        rollover_due=g.rollover is not None
        and g.rollover.state in (RolloverState.DUE, RolloverState.PENDING),
    )
