"""The catalog snapshot: everything the hot path caches, read in one call.

Check, debit, reserve, settle and release never query Postgres while a caller waits
(DESIGN.md): they read an in-process copy of this snapshot, reloaded when `ledger.notify`
reports a change. Load it inside `ledger.db.repeatable_read(conn)` so that its tables are read
at one instant (a wallet is never missing for a grant that names it).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from ledger.db import Connection
from ledger.repositories import budgets, credit_types, customers, grants, prices, resources, wallets


class CatalogSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    # The transaction time of the read (Postgres' now()).
    read_at: datetime
    credit_types: tuple[credit_types.CreditType, ...]
    customers: tuple[customers.Customer, ...]
    # Every resource, with parent_id: the trees the spend paths walk.
    resources: tuple[resources.Resource, ...]
    wallets: tuple[wallets.Wallet, ...]
    # Active grants not expired at read_at (effective or not yet: the builder checks that).
    grants: tuple[grants.Grant, ...]
    budgets: tuple[budgets.Budget, ...]  # the active ones
    prices: tuple[prices.Price, ...]  # every entry of every price's history


async def load_catalog_snapshot(conn: Connection) -> CatalogSnapshot:
    """Read the whole hot-path catalog on `conn`, in the caller's transaction."""
    cursor = await conn.execute("SELECT now()")
    now_row = await cursor.fetchone()
    assert now_row is not None
    return CatalogSnapshot(
        read_at=now_row[0],
        credit_types=tuple(await credit_types.list_credit_types(conn)),
        customers=tuple(await customers.list_all_customers(conn)),
        resources=tuple(await resources.list_all_resources(conn)),
        wallets=tuple(await wallets.list_all_wallets(conn)),
        grants=tuple(await grants.list_all_live_grants(conn)),
        budgets=tuple(await budgets.list_all_active_budgets(conn)),
        prices=tuple(await prices.list_all_prices(conn)),
    )
