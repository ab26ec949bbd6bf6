"""The repositories against a real Postgres: round trips, constraints, the tree, idempotency,
the append-only audit log and the catalog snapshot.

Each test runs in a transaction that is rolled back (the `conn` fixture); a statement expected
to fail runs in a savepoint (`conn.transaction()`), so the test can go on after it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import psycopg
import pytest
from psycopg import errors

from ledger import db
from ledger.limits import U128_MAX
from ledger.repositories import (
    audit,
    budgets,
    credit_types,
    customers,
    grants,
    idempotency,
    prices,
    resources,
    wallet_changes,
    wallets,
)
from ledger.repositories._rows import to_uuid
from ledger.repositories.budgets import BudgetPeriod
from ledger.repositories.catalog import load_catalog_snapshot
from ledger.repositories.grants import GrantCategory, GrantSource, GrantState, NewGrant
from ledger.repositories.resources import ResourceKind
from ledger.repositories.wallet_changes import ChangeState
from ledger.repositories.wallets import OverdraftMode

pytestmark = pytest.mark.anyio

LEDGER = 7
BIG = U128_MAX - 5  # ids and amounts near the top of the u128 range survive the round trip
T0 = datetime(2025, 1, 1, tzinfo=UTC)


async def _tree(conn: db.Connection, *, tenant: int = 42) -> dict[str, int]:
    """A credit type (once), a customer, and subscription > team > agent, each with a
    wallet."""
    if await credit_types.get_credit_type(conn, LEDGER) is None:
        await credit_types.insert_credit_type(
            conn, id=LEDGER, code="tokens", name="Tokens", asset_scale=2
        )
    customer = await customers.insert_customer(conn, id=tenant * 1000, tenant=tenant, name="Acme")
    ids = {"customer": customer.id}
    parent: int | None = None
    for offset, kind in enumerate(
        (ResourceKind.SUBSCRIPTION, ResourceKind.TEAM, ResourceKind.AGENT)
    ):
        resource = await resources.insert_resource(
            conn, id=customer.id + 10 + offset, customer_id=customer.id, kind=kind, parent_id=parent
        )
        wallet = await wallets.insert_wallet(
            conn,
            id=customer.id + 20 + offset,
            resource_id=resource.id,
            credit_type_id=LEDGER,
            fall_through=kind is not ResourceKind.SUBSCRIPTION,
        )
        ids[kind.value] = resource.id
        ids[f"{kind.value}_wallet"] = wallet.id
        parent = resource.id
    return ids


def _grant(wallet_id: int, grant_id: int, **overrides: Any) -> NewGrant:
    fields: dict[str, Any] = {
        "id": grant_id,
        "wallet_id": wallet_id,
        "credit_type_id": LEDGER,
        "amount": 1_000,
        "category": GrantCategory.PROMOTIONAL,
        "effective_at": T0,
        "source": GrantSource.ADMIN,
        "actor": "admin@example.com",
    }
    fields.update(overrides)
    return NewGrant(**fields)


def _at(row: Any) -> tuple[datetime, int]:
    """Where a page that ends with `row` goes on from."""
    return row.created_at, row.id


async def _fails(conn: db.Connection, error: type[Exception], coro: Any) -> None:
    """Run `coro` in a savepoint and assert it fails with `error`."""
    with pytest.raises(error):
        async with conn.transaction():
            await coro


# Round trips.


async def test_credit_type_round_trip(conn: db.Connection) -> None:
    created = await credit_types.insert_credit_type(
        conn, id=2**32 - 1, code="usd_credits", name="USD credits", asset_scale=18
    )
    assert created.id == 2**32 - 1 and created.asset_scale == 18
    assert created.created_at.tzinfo is not None
    assert await credit_types.get_credit_type(conn, 2**32 - 1) == created
    assert await credit_types.get_credit_type_by_code(conn, "usd_credits") == created
    assert await credit_types.list_credit_types(conn) == [created]
    assert await credit_types.get_credit_type(conn, 1) is None


async def test_u128_ids_and_amounts_round_trip(conn: db.Connection) -> None:
    ids = await _tree(conn)
    grant = await grants.insert_grant(
        conn, _grant(ids["agent_wallet"], BIG, amount=U128_MAX, expires_at=T0 + timedelta(days=30))
    )
    assert grant.id == BIG and grant.amount == U128_MAX
    assert await grants.get_grant(conn, BIG) == grant
    customer = await customers.insert_customer(conn, id=U128_MAX, tenant=2**32 - 1, name="Max")
    assert await customers.get_customer(conn, U128_MAX) == customer
    assert await customers.get_customer_by_tenant(conn, 2**32 - 1) == customer


async def test_customer_lookups_and_pages(conn: db.Connection) -> None:
    for n in range(1, 6):
        await customers.insert_customer(conn, id=n, tenant=n, name=f"c{n}", external_ref=f"ext-{n}")
    found = await customers.get_customer_by_external_ref(conn, "ext-3")
    assert found is not None and found.id == 3
    # One transaction: every row has the same created_at, so the id orders them.
    first, more = await customers.list_customers(conn, limit=2)
    assert more
    second, more = await customers.list_customers(conn, after=_at(first[-1]), limit=2)
    third, more = await customers.list_customers(conn, after=_at(second[-1]), limit=2)
    assert not more
    assert [c.id for c in first + second + third] == [1, 2, 3, 4, 5]
    assert await customers.list_customers(conn, external_ref="ext-3") == ([found], False)
    assert await customers.list_customers(conn, customer_id=4) == (
        [await customers.get_customer(conn, 4)],
        False,
    )


async def test_wallets_by_resource_and_policy(conn: db.Connection) -> None:
    ids = await _tree(conn)
    wallet = await wallets.get_wallet_by_resource(conn, ids["team"], LEDGER)
    assert wallet is not None and wallet.id == ids["team_wallet"]
    assert wallet.overdraft_mode is OverdraftMode.HARD and wallet.overdraft_limit == 0
    assert await wallets.get_wallet_by_resource(conn, ids["team"], LEDGER + 1) is None
    updated = await wallets.update_wallet_policy(
        conn,
        wallet.id,
        overdraft_mode=OverdraftMode.SOFT,
        overdraft_limit=BIG,
        overdraft_account_id=BIG,
        fall_through=False,
    )
    assert updated is not None
    assert (updated.overdraft_mode, updated.overdraft_limit) == (OverdraftMode.SOFT, BIG)
    assert updated.overdraft_account_id == BIG and not updated.fall_through
    assert await wallets.lock_wallet(conn, wallet.id) == updated
    listed = await wallets.list_wallets_for_resources(conn, [ids["team"], ids["agent"]])
    assert {w.id for w in listed} == {ids["team_wallet"], ids["agent_wallet"]}
    assert await wallets.list_wallets_for_resources(conn, []) == []


async def test_grants_list_and_state_compare_and_set(conn: db.Connection) -> None:
    ids = await _tree(conn)
    paid = await grants.insert_grant(
        conn,
        _grant(
            ids["agent_wallet"],
            101,
            category=GrantCategory.PAID,
            consideration_minor=1999,
            currency="USD",
            priority=-1,
            reason="purchase #1",
            external_ref="inv-1",
        ),
    )
    promo = await grants.insert_grant(conn, _grant(ids["team_wallet"], 102))
    assert paid.state is GrantState.PENDING and paid.currency == "USD"
    both = await grants.list_grants_for_wallets(conn, [ids["agent_wallet"], ids["team_wallet"]])
    assert {g.id for g in both} == {paid.id, promo.id}

    active = await grants.set_grant_state(
        conn, paid.id, GrantState.ACTIVE, expected=[GrantState.PENDING]
    )
    assert active is not None and active.state is GrantState.ACTIVE
    # A second activation finds the grant no longer pending: compare-and-set refuses it.
    again = await grants.set_grant_state(
        conn, paid.id, GrantState.ACTIVE, expected=[GrantState.PENDING]
    )
    assert again is None
    only_active = await grants.list_grants_for_wallets(
        conn, [ids["agent_wallet"], ids["team_wallet"]], states=[GrantState.ACTIVE]
    )
    assert [g.id for g in only_active] == [paid.id]
    assert await grants.set_grant_state(conn, 999, GrantState.VOIDED) is None


async def test_expired_and_pending_grant_queries(conn: db.Connection) -> None:
    ids = await _tree(conn)
    wallet = ids["agent_wallet"]
    await grants.insert_grant(
        conn, _grant(wallet, 1, state=GrantState.ACTIVE, expires_at=T0 + timedelta(days=1))
    )
    await grants.insert_grant(
        conn, _grant(wallet, 2, state=GrantState.ACTIVE, expires_at=T0 + timedelta(days=9))
    )
    await grants.insert_grant(conn, _grant(wallet, 3, state=GrantState.ACTIVE))
    await grants.insert_grant(conn, _grant(wallet, 4))
    expired = await grants.list_expired_active_grants(conn, T0 + timedelta(days=1))
    assert [g.id for g in expired] == [1]  # expires_at is exclusive: expired at that instant
    far_future = datetime(9999, 1, 1, tzinfo=UTC)
    pending = await grants.list_pending_grants(conn, far_future)
    assert [g.id for g in pending] == [4]


async def test_budgets_and_prices(conn: db.Connection) -> None:
    ids = await _tree(conn)
    budget = await budgets.insert_budget(
        conn,
        id=77,
        resource_id=ids["team"],
        credit_type_id=LEDGER,
        period=BudgetPeriod.MONTH,
        cap=5_000,
    )
    assert budget.active and budget.cap == 5_000
    raised = await budgets.set_budget_cap(conn, budget.id, BIG)
    assert raised is not None and raised.cap == BIG
    listed = await budgets.list_budgets_for_resources(conn, [ids["team"], ids["agent"]])
    assert [b.id for b in listed] == [77]
    await budgets.set_budget_active(conn, 77, False)
    assert await budgets.list_budgets_for_resources(conn, [ids["team"]]) == []
    assert (
        len(await budgets.list_budgets_for_resources(conn, [ids["team"]], active_only=False)) == 1
    )

    feature = "gpt-x.input_tokens"
    first = await prices.insert_price(
        conn, id=500, feature=feature, credit_type_id=LEDGER, credits_per_unit=3, effective_at=T0
    )
    later = T0 + timedelta(days=30)
    second = await prices.insert_price(
        conn, id=501, feature=feature, credit_type_id=LEDGER, credits_per_unit=4, effective_at=later
    )
    # A new price is a new entry: the first one stays, in force until the second's time.
    assert (first.id, second.id, second.credits_per_unit) == (500, 501, 4)
    assert await prices.get_price(conn, 500) == first
    assert await prices.price_at(conn, feature, LEDGER, T0 - timedelta(microseconds=1)) is None
    assert await prices.price_at(conn, feature, LEDGER, T0) == first
    assert await prices.price_at(conn, feature, LEDGER, later - timedelta(microseconds=1)) == first
    assert await prices.price_at(conn, feature, LEDGER, later) == second
    assert await prices.list_all_prices(conn) == [first, second]
    assert await prices.list_prices(conn, feature=feature, credit_type_id=LEDGER) == (
        [first, second],
        False,
    )
    # Two entries of one feature cannot start at the same instant.
    await _fails(
        conn,
        errors.UniqueViolation,
        prices.insert_price(
            conn,
            id=502,
            feature=feature,
            credit_type_id=LEDGER,
            credits_per_unit=5,
            effective_at=T0,
        ),
    )


async def _page_all(fetch: Any, limit: int) -> list[Any]:
    """Every row of a list, `limit` at a time, following the pages' positions."""
    rows: list[Any] = []
    after = None
    while True:
        page, more = await fetch(after=after, limit=limit)
        rows += page
        if not more:
            return rows
        after = _at(page[-1])


async def test_lists_page_in_created_order_with_their_filters(conn: db.Connection) -> None:
    ids = await _tree(conn)
    other = await _tree(conn, tenant=43)
    # Creation times out of id order: the lists follow created_at, then the id.
    await conn.execute(
        "UPDATE resources SET created_at = now() - interval '1 day' WHERE id = %s",
        (to_uuid(ids["agent"]),),
    )
    listed, more = await resources.list_resources(conn, limit=10)
    assert not more and len(listed) == 6
    assert listed[0].id == ids["agent"]  # created first
    one_by_one = await _page_all(partial(resources.list_resources, conn), 1)
    assert [r.id for r in one_by_one] == [r.id for r in listed]
    mine, _ = await resources.list_resources(conn, customer_id=ids["customer"])
    assert {r.id for r in mine} == {ids["subscription"], ids["team"], ids["agent"]}
    children, _ = await resources.list_resources(conn, parent_id=ids["team"])
    assert [r.id for r in children] == [ids["agent"]]
    teams, _ = await resources.list_resources(conn, kind=ResourceKind.TEAM)
    assert {r.id for r in teams} == {ids["team"], other["team"]}
    await conn.execute(
        "UPDATE resources SET external_ref = 'crm-7' WHERE id = %s", (to_uuid(other["agent"]),)
    )
    found, _ = await resources.list_resources(conn, external_ref="crm-7")
    assert [r.id for r in found] == [other["agent"]]
    assert await resources.list_resources(
        conn, external_ref="crm-7", customer_id=ids["customer"]
    ) == ([], False)

    theirs, _ = await wallets.list_wallets(conn, customer_id=other["customer"])
    assert {w.id for w in theirs} == {
        other[f"{k}_wallet"] for k in ("subscription", "team", "agent")
    }
    one, _ = await wallets.list_wallets(conn, resource_id=ids["team"], credit_type_id=LEDGER)
    assert [w.id for w in one] == [ids["team_wallet"]]
    assert len(await _page_all(partial(wallets.list_wallets, conn), 4)) == 6

    soon, late = T0 + timedelta(days=1), T0 + timedelta(days=9)
    await grants.insert_grant(conn, _grant(ids["agent_wallet"], 1, expires_at=soon))
    await grants.insert_grant(
        conn, _grant(ids["agent_wallet"], 2, state=GrantState.ACTIVE, expires_at=late)
    )
    await grants.insert_grant(
        conn,
        _grant(other["agent_wallet"], 3, category=GrantCategory.PAID, currency="EUR"),
    )
    expiring, _ = await grants.list_grants(conn, expires_before=late)
    assert [g.id for g in expiring] == [1]  # strictly before; never-expiring ones are not
    # States as a spend sees them at an instant: Postgres' state and the block's times.
    hour, later = T0 + timedelta(hours=1), T0 + timedelta(days=10)
    for block, at, found in (
        ("active", hour, [2]),
        ("upcoming", hour, [1, 3]),  # pending: not on the ledger yet
        ("expired", later, [2]),  # active in Postgres, past its expiry
        ("voided", hour, []),
    ):
        page, _ = await grants.list_grants(conn, block=(block, at))
        assert [g.id for g in page] == found, block
        assert all(grants.block_state(g, at) == block for g in page)
    paid, _ = await grants.list_grants(conn, category=GrantCategory.PAID)
    assert [g.id for g in paid] == [3]
    assert [g.id for g in (await grants.list_grants(conn, customer_id=ids["customer"]))[0]] == [
        1,
        2,
    ]
    assert [g.id for g in (await grants.list_grants(conn, wallet_id=other["agent_wallet"]))[0]] == [
        3
    ]

    for budget_id, resource in ((7, ids["team"]), (8, other["team"])):
        await budgets.insert_budget(
            conn,
            id=budget_id,
            resource_id=resource,
            credit_type_id=LEDGER,
            period=BudgetPeriod.DAY,
            cap=10,
        )
    await budgets.set_budget_active(conn, 8, False)
    active, _ = await budgets.list_budgets(conn, active=True)
    removed, _ = await budgets.list_budgets(conn, active=False)
    assert ([b.id for b in active], [b.id for b in removed]) == ([7], [8])
    both, _ = await budgets.list_budgets(conn, customer_id=other["customer"])
    assert [b.id for b in both] == [8]
    locked = await budgets.lock_budget(conn, 7)
    assert locked is not None and locked.cap == 10


async def test_wallet_changes_are_pending_one_at_a_time_then_finished(conn: db.Connection) -> None:
    ids = await _tree(conn)
    wallet = ids["agent_wallet"]
    change = await wallet_changes.insert_change(
        conn,
        id=BIG,
        wallet_id=wallet,
        overdraft_mode=OverdraftMode.SOFT,
        overdraft_limit=U128_MAX,
        fall_through=True,
        actor="admin@example.com",
    )
    assert (change.state, change.finished_at, change.overdraft_limit) == (
        ChangeState.PENDING,
        None,
        U128_MAX,
    )
    assert await wallet_changes.get_change(conn, BIG) == change
    assert await wallet_changes.pending_change_of(conn, wallet) == change
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert await wallet_changes.list_pending_changes(conn, later) == [change]
    assert await wallet_changes.list_pending_changes(conn, change.created_at) == []
    # One pending change of a wallet at a time.
    second = wallet_changes.insert_change(
        conn,
        id=2,
        wallet_id=wallet,
        overdraft_mode=OverdraftMode.HARD,
        overdraft_limit=0,
        fall_through=False,
        actor="a",
    )
    await _fails(conn, errors.UniqueViolation, second)
    refused = await wallet_changes.finish_change(conn, BIG, ChangeState.REFUSED, refusal="drawn")
    assert refused is not None and refused.finished_at is not None
    assert (refused.state, refused.refusal) == (ChangeState.REFUSED, "drawn")
    assert await wallet_changes.finish_change(conn, BIG, ChangeState.APPLIED) is None
    assert await wallet_changes.pending_change_of(conn, wallet) is None
    # A change asks for a policy a wallet could hold.
    for mode, limit in ((OverdraftMode.SOFT, 0), (OverdraftMode.HARD, 5)):
        bad = wallet_changes.insert_change(
            conn,
            id=3,
            wallet_id=wallet,
            overdraft_mode=mode,
            overdraft_limit=limit,
            fall_through=False,
            actor="a",
        )
        await _fails(conn, errors.CheckViolation, bad)


# Constraints: the schema refuses what the services must never write.


async def test_amount_constraints(conn: db.Connection) -> None:
    ids = await _tree(conn)
    wallet = ids["agent_wallet"]
    await _fails(
        conn, errors.CheckViolation, grants.insert_grant(conn, _grant(wallet, 1, amount=0))
    )
    await _fails(
        conn, errors.CheckViolation, grants.insert_grant(conn, _grant(wallet, 2, amount=-1))
    )
    # 2^128 does not fit a u128 (numeric(39,0) alone would take it).
    await _fails(
        conn, errors.CheckViolation, grants.insert_grant(conn, _grant(wallet, 3, amount=2**128))
    )
    await _fails(
        conn,
        errors.CheckViolation,
        budgets.insert_budget(
            conn,
            id=1,
            resource_id=ids["team"],
            credit_type_id=LEDGER,
            period=BudgetPeriod.DAY,
            cap=0,
        ),
    )
    await _fails(
        conn,
        errors.CheckViolation,
        prices.insert_price(
            conn, id=1, feature="f", credit_type_id=LEDGER, credits_per_unit=-1, effective_at=T0
        ),
    )


async def test_grant_field_constraints(conn: db.Connection) -> None:
    ids = await _tree(conn)
    wallet = ids["agent_wallet"]
    bad: list[dict[str, Any]] = [
        {"category": GrantCategory.PAID},  # paid without a currency
        {"consideration_minor": 100},  # a consideration without a currency
        {"consideration_minor": -1, "currency": "USD"},
        {"currency": "usd"},
        {"expires_at": T0},  # expires_at is exclusive: must be after effective_at
        {"actor": ""},
    ]
    for n, overrides in enumerate(bad, start=1):
        await _fails(
            conn, errors.CheckViolation, grants.insert_grant(conn, _grant(wallet, n, **overrides))
        )
    # A grant's credit type is its wallet's (composite foreign key).
    await credit_types.insert_credit_type(conn, id=8, code="other", name="Other", asset_scale=0)
    await _fails(
        conn,
        errors.ForeignKeyViolation,
        grants.insert_grant(conn, _grant(wallet, 50, credit_type_id=8)),
    )
    await _fails(conn, errors.ForeignKeyViolation, grants.insert_grant(conn, _grant(12345, 51)))
    await grants.insert_grant(conn, _grant(wallet, 60))
    await _fails(conn, errors.UniqueViolation, grants.insert_grant(conn, _grant(wallet, 60)))


async def test_catalog_constraints(conn: db.Connection) -> None:
    ids = await _tree(conn)
    for bad_id in (0, 2**32):
        await _fails(
            conn,
            errors.CheckViolation,
            credit_types.insert_credit_type(conn, id=bad_id, code="x", name="X", asset_scale=0),
        )
    await _fails(
        conn,
        errors.CheckViolation,
        credit_types.insert_credit_type(conn, id=9, code="x", name="X", asset_scale=19),
    )
    await _fails(
        conn,
        errors.UniqueViolation,
        credit_types.insert_credit_type(conn, id=9, code="tokens", name="X", asset_scale=0),
    )
    for bad_tenant in (0, 2**32):
        await _fails(
            conn,
            errors.CheckViolation,
            customers.insert_customer(conn, id=9, tenant=bad_tenant, name="X"),
        )
    await _fails(
        conn, errors.UniqueViolation, customers.insert_customer(conn, id=9, tenant=42, name="X")
    )
    # One wallet per (resource, credit type).
    await _fails(
        conn,
        errors.UniqueViolation,
        wallets.insert_wallet(conn, id=9, resource_id=ids["team"], credit_type_id=LEDGER),
    )


async def test_wallet_policy_constraints(conn: db.Connection) -> None:
    ids = await _tree(conn)
    wallet = ids["team_wallet"]
    bad: list[tuple[OverdraftMode, int, int | None]] = [
        (OverdraftMode.HARD, 10, None),  # a limit on a hard wallet
        (OverdraftMode.SOFT, 0, 5),  # a soft wallet without a limit
        (OverdraftMode.SOFT, 10, None),  # a soft wallet without an overdraft account
        (OverdraftMode.UNBOUNDED, 10, 5),  # a limit on an unbounded wallet
        (OverdraftMode.UNBOUNDED, 0, None),
    ]
    for mode, limit, account in bad:
        await _fails(
            conn,
            errors.CheckViolation,
            wallets.update_wallet_policy(
                conn,
                wallet,
                overdraft_mode=mode,
                overdraft_limit=limit,
                overdraft_account_id=account,
                fall_through=True,
            ),
        )
    # A hard wallet keeps the overdraft account of its soft past (a deficit may be owed on it).
    kept = await wallets.update_wallet_policy(
        conn,
        wallet,
        overdraft_mode=OverdraftMode.HARD,
        overdraft_limit=0,
        overdraft_account_id=5,
        fall_through=False,
    )
    assert kept is not None and kept.overdraft_account_id == 5


async def test_enum_constraints_hold_for_raw_sql(conn: db.Connection) -> None:
    ids = await _tree(conn)
    await _fails(
        conn,
        errors.CheckViolation,
        conn.execute(
            "UPDATE resources SET kind = 'planet' WHERE id = %s",
            (to_uuid(ids["team"]),),
        ),
    )
    await _fails(
        conn,
        errors.CheckViolation,
        conn.execute(
            "UPDATE wallets SET overdraft_mode = 'maybe' WHERE id = %s",
            (to_uuid(ids["team_wallet"]),),
        ),
    )


# The resource tree.


async def test_ancestors_walk_up_the_tree(conn: db.Connection) -> None:
    ids = await _tree(conn)
    up = await resources.ancestors(conn, ids["agent"])
    assert [r.id for r in up] == [ids["team"], ids["subscription"]]
    assert [r.kind for r in up] == [ResourceKind.TEAM, ResourceKind.SUBSCRIPTION]
    path = await resources.path_to_root(conn, ids["agent"])
    assert [r.id for r in path] == [ids["agent"], ids["team"], ids["subscription"]]
    assert await resources.ancestors(conn, ids["subscription"]) == []
    assert await resources.path_to_root(conn, 123456789) == []
    children = await resources.list_children(conn, ids["subscription"])
    assert [r.id for r in children] == [ids["team"]]


async def test_tree_refuses_cycles_and_other_customers_parents(conn: db.Connection) -> None:
    ids = await _tree(conn)
    other = await _other_customer_root(conn)
    # A parent of another customer: the composite foreign key refuses it.
    await _fails(
        conn,
        errors.ForeignKeyViolation,
        resources.insert_resource(
            conn, id=900, customer_id=ids["customer"], kind=ResourceKind.USER, parent_id=other
        ),
    )
    # The subscription under its own agent would be a cycle.
    await _fails(
        conn, errors.CheckViolation, resources.set_parent(conn, ids["subscription"], ids["agent"])
    )
    await _fails(conn, errors.CheckViolation, resources.set_parent(conn, ids["team"], ids["team"]))
    moved = await resources.set_parent(conn, ids["agent"], ids["subscription"])
    assert moved is not None and moved.parent_id == ids["subscription"]
    assert [r.id for r in await resources.ancestors(conn, ids["agent"])] == [ids["subscription"]]


async def _other_customer_root(conn: db.Connection) -> int:
    customer = await customers.insert_customer(conn, id=31337, tenant=31337, name="Other")
    root = await resources.insert_resource(
        conn, id=31338, customer_id=customer.id, kind=ResourceKind.SUBSCRIPTION
    )
    return root.id


async def test_ancestors_refuse_a_tree_deeper_than_the_limit(conn: db.Connection) -> None:
    ids = await _tree(conn)
    parent = ids["agent"]
    for n in range(resources.RESOURCE_DEPTH_MAX):
        child = await resources.insert_resource(
            conn,
            id=5000 + n,
            customer_id=ids["customer"],
            kind=ResourceKind.SESSION,
            parent_id=parent,
        )
        parent = child.id
    with pytest.raises(resources.ResourceTreeTooDeep):
        await resources.ancestors(conn, parent)


# Idempotency records.


async def test_idempotency_begin_and_complete(conn: db.Connection) -> None:
    first = await idempotency.begin(
        conn, tenant=42, key="k-1", operation="grant.issue", request_hash=b"\x01" * 32
    )
    assert first is None  # claimed now
    in_progress = await idempotency.begin(
        conn, tenant=42, key="k-1", operation="grant.issue", request_hash=b"\x01" * 32
    )
    assert in_progress is not None and not in_progress.completed
    assert in_progress.matches("grant.issue", b"\x01" * 32)
    assert not in_progress.matches("grant.issue", b"\x02" * 32)

    done = await idempotency.complete(
        conn, tenant=42, key="k-1", status_code=201, response={"grant_id": str(BIG)}
    )
    assert done is not None and done.completed and done.status_code == 201
    replay = await idempotency.begin(
        conn, tenant=42, key="k-1", operation="grant.issue", request_hash=b"\x01" * 32
    )
    assert replay == done and replay.response == {"grant_id": str(BIG)}
    # Completing twice is refused: the stored outcome never changes.
    assert (
        await idempotency.complete(conn, tenant=42, key="k-1", status_code=500, response={}) is None
    )
    # The same key of another tenant is another record.
    assert (
        await idempotency.begin(
            conn, tenant=43, key="k-1", operation="grant.issue", request_hash=b"\x02" * 32
        )
        is None
    )
    with pytest.raises(ValueError, match="idempotency key"):
        await idempotency.begin(conn, tenant=1, key="", operation="x", request_hash=b"")


async def test_idempotency_concurrent_first_attempts_claim_once(pool: db.Pool) -> None:
    """Two transactions begin the same key at once: exactly one owns it; the other waits for
    the owner's commit and then sees its outcome."""
    owner_claimed = asyncio.Event()

    async def owner() -> idempotency.IdempotencyRecord | None:
        async with pool.connection() as conn:
            claimed = await idempotency.begin(
                conn, tenant=7, key="race", operation="op", request_hash=b"h"
            )
            owner_claimed.set()
            await asyncio.sleep(0.2)  # the other attempt blocks on the uncommitted row meanwhile
            await idempotency.complete(conn, tenant=7, key="race", status_code=200, response=[1])
            return claimed

    async def late() -> idempotency.IdempotencyRecord | None:
        await owner_claimed.wait()
        async with pool.connection() as conn:
            return await idempotency.begin(
                conn, tenant=7, key="race", operation="op", request_hash=b"h"
            )

    claimed, seen = await asyncio.gather(owner(), late())
    assert claimed is None
    assert seen is not None and seen.completed and seen.response == [1]


async def test_idempotency_retention(conn: db.Connection) -> None:
    for n in range(3):
        await idempotency.begin(conn, tenant=1, key=f"r{n}", operation="op", request_hash=b"h")
    later = datetime.now(UTC) + timedelta(days=1)
    # Other tests of this module may have committed records too: delete by pages until none.
    assert await idempotency.delete_created_before(conn, later, limit=2) == 2
    while await idempotency.delete_created_before(conn, later, limit=2):
        pass
    for n in range(3):
        assert await idempotency.get(conn, tenant=1, key=f"r{n}") is None


# The audit log.


async def test_audit_append_and_read(conn: db.Connection) -> None:
    entry = await audit.append(
        conn,
        actor="admin@example.com",
        action="grant.void",
        object_type="grant",
        object_id=BIG,
        reason="customer request",
        details={"remaining": str(10**30)},
    )
    assert entry.object_id == BIG and entry.details == {"remaining": str(10**30)}
    bare = await audit.append(conn, actor="system", action="migrate")
    assert bare.details == {} and bare.object_id is None
    assert await audit.list_for_object(conn, "grant", BIG) == [entry]
    assert [e.id for e in await audit.list_entries(conn, after_id=entry.id - 1)] == [
        entry.id,
        bare.id,
    ]


async def test_audit_log_is_append_only(conn: db.Connection) -> None:
    entry = await audit.append(conn, actor="admin", action="price.set")
    for statement in (
        "UPDATE audit_log SET actor = 'someone else' WHERE id = %s",
        "DELETE FROM audit_log WHERE id = %s",
    ):
        with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
            async with conn.transaction():
                await conn.execute(statement, (entry.id,))
    with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
        async with conn.transaction():
            await conn.execute("TRUNCATE audit_log")
    assert await audit.list_for_object(conn, "x", 1) == []
    assert (await audit.list_entries(conn, after_id=entry.id - 1))[0] == entry


# The catalog snapshot.


async def test_catalog_snapshot_reads_what_the_hot_path_needs(pool: db.Pool) -> None:
    async with pool.connection() as conn, conn.transaction(force_rollback=True):
        ids = await _tree(conn)
        live = await grants.insert_grant(
            conn, _grant(ids["agent_wallet"], 1, state=GrantState.ACTIVE)
        )
        await grants.insert_grant(conn, _grant(ids["agent_wallet"], 2))  # pending: not yet
        expired_active = await grants.insert_grant(
            conn,
            _grant(ids["agent_wallet"], 3, state=GrantState.ACTIVE, expires_at=T0 + timedelta(1)),
        )  # expired long ago, not yet swept: the sweep needs it
        await grants.insert_grant(
            conn,
            _grant(ids["agent_wallet"], 5, state=GrantState.EXPIRED, expires_at=T0 + timedelta(2)),
        )  # swept: done
        await grants.insert_grant(conn, _grant(ids["agent_wallet"], 4, state=GrantState.VOIDED))
        await budgets.insert_budget(
            conn,
            id=1,
            resource_id=ids["team"],
            credit_type_id=LEDGER,
            period=BudgetPeriod.WEEK,
            cap=10,
        )
        await prices.insert_price(
            conn, id=1, feature="chat", credit_type_id=LEDGER, credits_per_unit=2, effective_at=T0
        )
        snapshot = await load_catalog_snapshot(conn)
    assert [c.id for c in snapshot.credit_types] == [LEDGER]
    assert [c.tenant for c in snapshot.customers] == [42]
    parents = {r.id: r.parent_id for r in snapshot.resources}
    assert parents == {
        ids["subscription"]: None,
        ids["team"]: ids["subscription"],
        ids["agent"]: ids["team"],
    }
    assert len(snapshot.wallets) == 3
    assert snapshot.grants == (live, expired_active)
    assert [b.id for b in snapshot.budgets] == [1]
    assert [p.feature for p in snapshot.prices] == ["chat"]


async def test_catalog_snapshot_in_repeatable_read(pool: db.Pool) -> None:
    """Inside `repeatable_read`, a commit between two reads is not seen by the second."""
    async with pool.connection() as reader, pool.connection() as writer:
        async with db.repeatable_read(reader):
            before = await load_catalog_snapshot(reader)
            await credit_types.insert_credit_type(
                writer, id=99, code="late", name="Late", asset_scale=0
            )
            await writer.commit()
            again = await load_catalog_snapshot(reader)
        assert before.credit_types == again.credit_types
        assert 99 not in {c.id for c in before.credit_types}
        # Not a read-only test: clean up what was committed.
        await writer.execute("DELETE FROM credit_types WHERE id = 99")
        await writer.commit()
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        async with pool.connection() as conn, db.repeatable_read(conn):
            await credit_types.insert_credit_type(conn, id=98, code="ro", name="R", asset_scale=0)
