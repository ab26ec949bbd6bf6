"""The in-process catalog: what the hot path needs to build a chain, without asking Postgres.

Postgres is the catalog's home; this is its cache, loaded at start and kept current by the
process's own admin operations and by change notifications from other processes. Resolving a
spend path is pure computation over this cache.

Invariants:
- A grant is listed here only once its TigerBeetle account exists and is funded, so a chain
  never names an account that is not there.
- Wallets are unique per (resource, credit type); a resource's parent is on the same customer.
"""

from __future__ import annotations

import bisect
import calendar
import datetime as dt
import threading
from collections.abc import Iterable
from typing import Any

import msgspec

from grants.burn_order import burn_order_key
from grants.model import Grant
from grants.service import WalletAccounts
from ledger.codes import AccountCode
from ledger.ids import budget_account_id, id_text, overdraft_account_id
from ledger.limits import PATH_BUDGETS_MAX, PATH_SOURCES_MAX
from ledger.repositories import wallets as repo_wallets
from ledger.repositories.budgets import BudgetPeriod
from wallets.chains import BudgetLeg, Source, SourceKind, SpendPath

# The vocabulary is the catalog's: one definition, shared with the Postgres rows.
OverdraftMode = repo_wallets.OverdraftMode
Period = BudgetPeriod


class CreditType(msgspec.Struct, frozen=True):
    ledger: int  # the TigerBeetle ledger; also the credit type's id
    code: str
    name: str
    asset_scale: int


class Resource(msgspec.Struct, frozen=True):
    id: int
    customer_id: int
    tenant: int
    kind: str
    parent_id: int | None = None
    external_ref: str | None = None  # the caller's own reference, as stored


class Wallet(msgspec.Struct, frozen=True):
    id: int
    resource_id: int
    ledger: int
    overdraft_mode: OverdraftMode = OverdraftMode.HARD
    overdraft_limit: int = 0
    fall_through: bool = False

    @property
    def overdraft_account_id(self) -> int | None:
        if self.overdraft_mode is OverdraftMode.SOFT:
            return overdraft_account_id(self.id, AccountCode.OVERDRAFT)
        if self.overdraft_mode is OverdraftMode.UNBOUNDED:
            return self.debt_account_id
        return None

    @property
    def debt_account_id(self) -> int:
        """The wallet's unbounded overdraft account: an unbounded wallet's overdraft, and where
        a settle's overage goes under the `overdraft` policy."""
        return overdraft_account_id(self.id, AccountCode.OVERDRAFT_UNBOUNDED)


class Budget(msgspec.Struct, frozen=True):
    id: int
    resource_id: int
    ledger: int
    period: Period
    cap: int


class PathError(Exception):
    """The request names something the catalog does not have (a 404 or 422 above)."""


def period_start_ns(period: Period, at_ns: int) -> int:
    """Start of the UTC calendar period containing `at_ns` (0 for a lifetime budget)."""
    if period is Period.LIFETIME:
        return 0
    # Whole seconds, by integer division: `at_ns / 1e9` is a float, which rounds an instant a
    # few hundred ns before midnight into the next day.
    at = dt.datetime.fromtimestamp(at_ns // 1_000_000_000, tz=dt.UTC)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is Period.WEEK:
        day -= dt.timedelta(days=day.weekday())
    elif period is Period.MONTH:
        day = day.replace(day=1)
    return calendar.timegm(day.timetuple()) * 1_000_000_000


def period_end_ns(period: Period, at_ns: int) -> int | None:
    """Start of the period after the one containing `at_ns` (None for a lifetime budget)."""
    if period is Period.LIFETIME:
        return None
    start = period_start_ns(period, at_ns)
    days = {Period.DAY: 1, Period.WEEK: 7, Period.MONTH: 32}[period]
    return period_start_ns(period, start + days * 86_400 * 1_000_000_000)


_FOREVER = 1 << 64


class Catalog:
    """The cache. Readers never lock; writers replace whole entries under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.credit_types: dict[int, CreditType] = {}
        self.ledger_by_code: dict[str, int] = {}
        self.resources: dict[int, Resource] = {}
        self.wallets: dict[int, Wallet] = {}
        self.wallet_of: dict[tuple[int, int], int] = {}
        self.grants: dict[int, Grant] = {}
        self.grants_of: dict[int, tuple[Grant, ...]] = {}
        self.budgets: dict[int, Budget] = {}
        self.budgets_of: dict[tuple[int, int], tuple[Budget, ...]] = {}
        # (feature, credit type) -> its price history: the times each price takes effect (ns,
        # ascending) and the credits per unit from then. Usage is priced without a deploy, and
        # a price set for a time to come takes over at that time by itself.
        self.prices: dict[tuple[str, int], tuple[tuple[int, ...], tuple[int, ...]]] = {}
        # Every write since the last whole load began, numbered: a load re-applies those made
        # after its snapshot was read, so it never takes back what this process just did.
        self.generation = 0
        self._journal: list[tuple[int, str, Any]] = []
        self._loading = 0  # whole loads under way: only then is the journal kept
        # wallet id -> (generation, valid from, valid until, its spend path): a path holds
        # while the catalog is unchanged and the time stays between the same grant starts,
        # expiries and budget periods.
        self._paths: dict[int, tuple[int, int, int, SpendPath]] = {}

    def _note(self, method: str, argument: Any) -> None:
        self.generation += 1
        if self._loading:
            self._journal.append((self.generation, method, argument))

    def begin_load(self) -> int:
        """Marks the start of a whole load; returns the `since` to pass to `load`."""
        with self._lock:
            self._loading += 1
            return self.generation

    def _code(self, ledger: int) -> str:
        """A credit type as callers name it (its code), for messages."""
        credit_type = self.credit_types.get(ledger)
        return credit_type.code if credit_type is not None else str(ledger)

    def ledger_of_code(self, code: str) -> int | None:
        """The ledger of the credit type with this code (codes are unique), if cached."""
        return self.ledger_by_code.get(code)

    # -- writes -------------------------------------------------------------------------------

    def put_credit_type(self, credit_type: CreditType) -> None:
        self._note("put_credit_type", credit_type)
        self.credit_types[credit_type.ledger] = credit_type
        self.ledger_by_code[credit_type.code] = credit_type.ledger

    def put_resource(self, resource: Resource) -> None:
        self._note("put_resource", resource)
        assert resource.parent_id is None or resource.parent_id in self.resources
        self.resources[resource.id] = resource

    def put_wallet(self, wallet: Wallet) -> None:
        self._note("put_wallet", wallet)
        with self._lock:
            self.wallets[wallet.id] = wallet
            self.wallet_of[(wallet.resource_id, wallet.ledger)] = wallet.id

    def put_grant(self, grant: Grant) -> None:
        self._note("put_grant", grant)
        with self._lock:
            self.grants[grant.id] = grant
            others = [g for g in self.grants_of.get(grant.wallet_id, ()) if g.id != grant.id]
            # Kept in burn order, so a spend only filters by time and never sorts.
            self.grants_of[grant.wallet_id] = tuple(sorted((*others, grant), key=burn_order_key))

    def drop_grant(self, grant_id: int) -> None:
        self._note("drop_grant", grant_id)
        with self._lock:
            grant = self.grants.pop(grant_id, None)
            if grant is not None:
                self.grants_of[grant.wallet_id] = tuple(
                    g for g in self.grants_of.get(grant.wallet_id, ()) if g.id != grant_id
                )

    def put_price(
        self, feature: str, ledger: int, effective_at_ns: int, credits_per_unit: int
    ) -> None:
        """One entry of a price's history: `credits_per_unit` from `effective_at_ns` on (an
        entry of the same time is replaced: entries are never changed, so it is the same)."""
        self._note("put_price", (feature, ledger, effective_at_ns, credits_per_unit))
        with self._lock:
            times, amounts = self.prices.get((feature, ledger), ((), ()))
            entries = dict(zip(times, amounts, strict=True))
            entries[effective_at_ns] = credits_per_unit
            ordered = sorted(entries.items())
            # One assignment: a reader sees the old history or the new one, never half of it.
            self.prices[(feature, ledger)] = (
                tuple(t for t, _ in ordered),
                tuple(a for _, a in ordered),
            )

    def price(self, feature: str, ledger: int, quantity: int, at_ns: int) -> int:
        """The credits `quantity` units of `feature` cost at `at_ns`: at the price in force
        then (the latest entry of its history that took effect at or before it)."""
        times, amounts = self.prices.get((feature, ledger), ((), ()))
        index = bisect.bisect_right(times, at_ns) - 1
        if index < 0:
            raise PathError(
                f"no price for feature {feature!r} in credit type {self._code(ledger)!r}"
            )
        return amounts[index] * quantity

    def drop_budget(self, budget_id: int) -> None:
        self._note("drop_budget", budget_id)
        with self._lock:
            budget = self.budgets.pop(budget_id, None)
            if budget is not None:
                key = (budget.resource_id, budget.ledger)
                self.budgets_of[key] = tuple(
                    b for b in self.budgets_of.get(key, ()) if b.id != budget_id
                )

    def put_budget(self, budget: Budget) -> None:
        self._note("put_budget", budget)
        with self._lock:
            self.budgets[budget.id] = budget
            key = (budget.resource_id, budget.ledger)
            others = [b for b in self.budgets_of.get(key, ()) if b.id != budget.id]
            self.budgets_of[key] = (*others, budget)

    # -- reads --------------------------------------------------------------------------------

    def wallet(self, wallet_id: int) -> Wallet:
        wallet = self.wallets.get(wallet_id)
        if wallet is None:
            raise PathError(f"wallet {id_text(wallet_id)} not found")
        return wallet

    def wallet_accounts(self, wallet_id: int) -> WalletAccounts:
        """Where a new block of this wallet repays an overdraft deficit (grants.service)."""
        wallet = self.wallet(wallet_id)
        if wallet.overdraft_mode is OverdraftMode.SOFT:
            return WalletAccounts(
                wallet.debt_account_id, wallet.overdraft_account_id, wallet.overdraft_limit
            )
        return WalletAccounts(wallet.debt_account_id)

    def wallet_for(self, resource_id: int, ledger: int) -> Wallet:
        wallet_id = self.wallet_of.get((resource_id, ledger))
        if wallet_id is None:
            raise PathError(
                f"resource {id_text(resource_id)} has no wallet"
                f" for credit type {self._code(ledger)!r}"
            )
        return self.wallets[wallet_id]

    def ancestors(self, resource_id: int) -> list[Resource]:
        """The resource and its ancestors, nearest first."""
        chain = []
        seen: set[int] = set()
        current: int | None = resource_id
        while current is not None:
            assert current not in seen, "the resource tree has a cycle"
            seen.add(current)
            resource = self.resources.get(current)
            if resource is None:
                raise PathError(f"resource {id_text(current)} not found")
            chain.append(resource)
            current = resource.parent_id
        return chain

    def spend_path(self, wallet: Wallet, at_ns: int) -> SpendPath:
        """Own grants in burn order, the parents' while the wallet falls through, then the
        overdraft; plus every budget on the resource and its ancestors. Cached per wallet."""
        cached = self._paths.get(wallet.id)
        if cached is not None:
            generation, valid_from, valid_until, path = cached
            if generation == self.generation and valid_from <= at_ns < valid_until:
                return path
        path, valid_from, valid_until = self._spend_path(wallet, at_ns)
        self._paths[wallet.id] = (self.generation, valid_from, valid_until, path)
        return path

    def _spend_path(self, wallet: Wallet, at_ns: int) -> tuple[SpendPath, int, int]:
        """The path at `at_ns`, and the times between which it stays the same."""
        valid_from, valid_until = 0, _FOREVER

        def bound(edge: int) -> None:
            nonlocal valid_from, valid_until
            if edge <= at_ns:
                valid_from = max(valid_from, edge)
            else:
                valid_until = min(valid_until, edge)

        sources: list[Source] = []
        current: Wallet | None = wallet
        resources = self.ancestors(wallet.resource_id)
        level = 0
        while current is not None:
            for g in self.grants_of.get(current.id, ()):
                bound(g.effective_at_ns)
                if g.expires_at_ns is not None:
                    bound(g.expires_at_ns)
                if g.effective(at_ns):
                    sources.append(Source(g.id, SourceKind.GRANT, current.id))
            if not current.fall_through or level + 1 >= len(resources):
                break
            level += 1
            parent_wallet = self.wallet_of.get((resources[level].id, wallet.ledger))
            current = self.wallets[parent_wallet] if parent_wallet is not None else None
        if wallet.overdraft_mode is OverdraftMode.SOFT:
            sources.append(
                Source(wallet.overdraft_account_id or 0, SourceKind.OVERDRAFT, wallet.id)
            )
        elif wallet.overdraft_mode is OverdraftMode.UNBOUNDED:
            sources.append(Source(wallet.debt_account_id, SourceKind.DEBT, wallet.id))
        if len(sources) > PATH_SOURCES_MAX:
            # Drawing from more blocks than one chain holds: the earliest in burn order first.
            sources = sources[: PATH_SOURCES_MAX - 1] + sources[-1:]
        budgets = []
        for r in resources:
            for b in self.budgets_of.get((r.id, wallet.ledger), ()):
                start = period_start_ns(b.period, at_ns)
                end = period_end_ns(b.period, at_ns)
                bound(start)
                if end is not None:
                    bound(end)
                budgets.append(BudgetLeg(b.id, budget_account_id(r.id, b.id, start), r.id))
        if len(budgets) > PATH_BUDGETS_MAX:
            raise PathError(f"{len(budgets)} budgets on the path, over {PATH_BUDGETS_MAX}")
        tenant = resources[0].tenant
        path = SpendPath(
            wallet.ledger, tenant, wallet.id, wallet.resource_id, tuple(sources), tuple(budgets)
        )
        return path, valid_from, valid_until

    def budget_of_account(self, path: SpendPath, account_id: int) -> Budget | None:
        for leg in path.budgets:
            if leg.account_id == account_id:
                return self.budgets[leg.budget_id]
        return None

    def load(
        self,
        credit_types: Iterable[CreditType],
        resources: Iterable[Resource],
        wallets: Iterable[Wallet],
        grants: Iterable[Grant],
        budgets: Iterable[Budget],
        prices: Iterable[tuple[str, int, int, int]] = (),
        *,
        since: int | None = None,
    ) -> None:
        """Replaces the whole cache (at start, or after a missed notification) with a snapshot
        read after write number `since` of this cache; the writes made here after it are applied
        again on top, so a load never undoes them."""
        fresh = Catalog()
        for feature, ledger, effective_at_ns, credits_per_unit in prices:
            fresh.put_price(feature, ledger, effective_at_ns, credits_per_unit)
        for credit_type in credit_types:
            fresh.put_credit_type(credit_type)
        pending = list(resources)
        while pending:  # parents before children
            placed = [r for r in pending if r.parent_id is None or r.parent_id in fresh.resources]
            assert placed, "resources whose parents are missing"
            for r in placed:
                fresh.put_resource(r)
            pending = [r for r in pending if r.id not in fresh.resources]
        for wallet in wallets:
            fresh.put_wallet(wallet)
        for grant in grants:
            fresh.put_grant(grant)
        for budget in budgets:
            fresh.put_budget(budget)
        with self._lock:
            later = [(g, m, a) for g, m, a in self._journal if since is not None and g > since]
            for _, method, argument in later:
                if method == "put_price":
                    fresh.put_price(*argument)
                else:
                    getattr(fresh, method)(argument)
            generation, loading = self.generation, max(0, self._loading - 1)
            self.__dict__.update(
                {
                    k: v
                    for k, v in fresh.__dict__.items()
                    if k not in ("_lock", "generation", "_loading")
                }
            )
            self.generation, self._loading = generation, loading
            self._journal = later if loading else []
