"""Scopes (runtime spends, admin changes the catalog, finance reads; everyone reads) and the
customer boundary (a key bound to one customer finds nothing of any other)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from ledger import db
from ledger.embedded import EmbeddedEngine
from tests.api.conftest import Api
from tests.api.support import (
    MISSING_ID,
    World,
    assert_problem,
    balance,
    bound_key,
    created,
    make_world,
    running_api,
    scope_keys,
)

pytestmark = pytest.mark.anyio


def _admin_writes(world: World, api: Api) -> list[tuple[str, Any]]:
    return [
        ("/v1/credit-types", {"code": f"sc{api.seq}", "name": "x"}),
        ("/v1/customers", {"name": "x"}),
        ("/v1/resources", {"customer_id": world.customer["id"], "kind": "team"}),
        ("/v1/wallets", {"resource_id": world.team["id"], "credit_type": world.code}),
        ("/v1/grants", {"wallet_id": world.wallet["id"], "amount": 5, "category": "promotional"}),
        (f"/v1/grants/{world.grant['id']}/void", {}),
        (
            "/v1/budgets",
            {"resource_id": world.team["id"], "credit_type": world.code, "period": "day", "cap": 5},
        ),
        ("/v1/prices", {"feature": "f", "credit_type": world.code, "credits_per_unit": 1}),
    ]


async def _spending_writes(world: World, api: Api) -> list[tuple[str, Any]]:
    reservation = await created(api, "/v1/reservations", world.spend(amount=10), "runtime")
    return [
        ("/v1/debits", world.spend(amount=1)),
        ("/v1/debits/batch", {"debits": [{**world.spend(amount=1), "idempotency_key": "b"}]}),
        ("/v1/reservations", world.spend(amount=1)),
        (f"/v1/reservations/{reservation['id']}/settle", {"amount": 1}),
        (f"/v1/reservations/{reservation['id']}/release", None),
    ]


async def test_runtime_and_finance_keys_cannot_change_the_catalog(api: Api) -> None:
    world = await make_world(api, granted=1000)
    debit = await created(api, "/v1/debits", world.spend(amount=10), "runtime")
    writes = [*_admin_writes(world, api), (f"/v1/debits/{debit['id']}/refund", {"amount": 5})]
    for scope in ("runtime", "finance"):
        for path, body in writes:
            r = await api.post(path, body, key=scope)
            assert_problem(r, "forbidden", required_scopes=["admin"])
    assert_problem(await api.get(f"/v1/credit-types/sc{api.seq}", "admin"), "not_found")
    r = await api.get(f"/v1/grants/{world.grant['id']}", "admin")
    assert (r.json()["voided"], r.json()["consumed"]) == (0, 10)
    r = await api.get(f"/v1/wallets/{world.wallet['id']}", "admin")
    assert (r.json()["available"], len(r.json()["grants"])) == (990, 1)
    r = await api.post(
        "/v1/debits", world.spend(amount=1, usage={"feature": "f", "quantity": 1}), key="runtime"
    )
    assert_problem(r, "validation_error")  # no price was set


async def test_admin_and_finance_keys_cannot_spend(api: Api) -> None:
    world = await make_world(api, granted=1000)
    writes = await _spending_writes(world, api)
    for scope in ("admin", "finance"):
        for path, body in writes:
            r = await api.post(path, body, key=scope)
            assert_problem(r, "forbidden", required_scopes=["runtime"])
    assert await balance(api, world.wallet["id"]) == (990, 10, 0)
    # Check changes nothing: runtime and admin may ask, finance may not.
    for scope in ("runtime", "admin", "all"):
        r = await api.post("/v1/check", world.spend(amount=1), key=scope, idem=None)
        assert (r.status_code, r.json()["allowed"]) == (200, True)
    r = await api.post("/v1/check", world.spend(amount=1), key="finance", idem=None)
    assert_problem(r, "forbidden", required_scopes=["admin", "runtime"])


async def test_every_scope_reads(api: Api) -> None:
    world = await make_world(api, granted=1000)
    reservation = await created(api, "/v1/reservations", world.spend(amount=10), "runtime")
    budget = await created(
        api,
        "/v1/budgets",
        {"resource_id": world.team["id"], "credit_type": world.code, "period": "day", "cap": 50},
    )
    reads = [
        f"/v1/credit-types/{world.code}",
        f"/v1/customers/{world.customer['id']}",
        f"/v1/resources/{world.agent['id']}",
        f"/v1/wallets/{world.wallet['id']}",
        f"/v1/wallets/{world.wallet['id']}/entries",
        f"/v1/grants/{world.grant['id']}",
        f"/v1/reservations/{reservation['id']}",
        f"/v1/budgets/{budget['id']}",
    ]
    for scope in ("runtime", "admin", "finance"):
        for path in reads:
            r = await api.get(path, scope)
            assert r.status_code == 200, (scope, path, r.text)


async def test_the_all_scopes_key_does_everything(api: Api) -> None:
    world = await make_world(api, granted=1000)
    r = await api.post("/v1/debits", world.spend(amount=5), key="all")
    assert r.status_code == 201, r.text
    r = await api.post(f"/v1/debits/{r.json()['id']}/refund", {"amount": 5}, key="all")
    assert r.status_code == 200, r.text
    assert await balance(api, world.wallet["id"]) == (1000, 0, 0)


# -- the customer boundary --------------------------------------------------------------------


@dataclass
class Tenants:
    api: Api
    mine: World
    theirs: World
    their_reservation: str
    their_debit: str
    their_budget: str


@pytest.fixture
async def tenants(pool: db.Pool, migrated_db_url: str) -> AsyncIterator[Tenants]:
    """Two customers' worlds, and keys bound to each (`mine`: every scope; `theirs`:
    runtime), created while the service was stopped so that it starts with them."""
    keys = await scope_keys(pool)
    engine = EmbeddedEngine()
    try:
        async with running_api(pool, migrated_db_url, keys, engine=engine) as (api, _, _):
            mine = await make_world(api, granted=1000, name="Mine")
            theirs = await make_world(api, granted=1000, code=mine.code, name="Theirs")
            reservation = await created(
                api, "/v1/reservations", theirs.spend(amount=100), "runtime"
            )
            debit = await created(api, "/v1/debits", theirs.spend(amount=50), "runtime")
            budget = await created(
                api,
                "/v1/budgets",
                {
                    "resource_id": theirs.team["id"],
                    "credit_type": mine.code,
                    "period": "day",
                    "cap": 10_000,
                },
            )
        keys["mine"] = await bound_key(pool, mine.customer["id"], ["admin", "runtime", "finance"])
        keys["theirs"] = await bound_key(pool, theirs.customer["id"], ["runtime"])
        async with running_api(pool, migrated_db_url, keys, engine=engine) as (api, _, _):
            yield Tenants(api, mine, theirs, reservation["id"], debit["id"], budget["id"])
    finally:
        engine.close()


async def test_a_bound_key_finds_nothing_of_another_customer(tenants: Tenants) -> None:
    api, theirs = tenants.api, tenants.theirs
    their_balance = await balance(api, theirs.wallet["id"])
    assert their_balance == (850, 100, 50)
    reads = [
        f"/v1/customers/{theirs.customer['id']}",
        f"/v1/resources/{theirs.agent['id']}",
        f"/v1/wallets/{theirs.wallet['id']}",
        f"/v1/wallets/{theirs.wallet['id']}/entries",
        f"/v1/grants/{theirs.grant['id']}",
        f"/v1/reservations/{tenants.their_reservation}",
        f"/v1/budgets/{tenants.their_budget}",
    ]
    for path in reads:
        assert_problem(await api.get(path, "mine"), "not_found")
    by_wallet = {"credit_type": theirs.code, "wallet_id": theirs.wallet["id"]}
    writes: list[tuple[str, Any]] = [
        (f"/v1/reservations/{tenants.their_reservation}/settle", {"amount": 1}),
        (f"/v1/reservations/{tenants.their_reservation}/release", None),
        (f"/v1/debits/{tenants.their_debit}/refund", {"amount": 1}),
        ("/v1/debits", theirs.spend(amount=1)),
        ("/v1/debits", {**by_wallet, "amount": 1}),
        ("/v1/reservations", theirs.spend(amount=1)),
        ("/v1/reservations", {**by_wallet, "amount": 1}),
        ("/v1/check", theirs.spend(amount=1)),
        ("/v1/check", {**by_wallet, "amount": 1}),
        ("/v1/grants", {"wallet_id": theirs.wallet["id"], "amount": 5, "category": "promotional"}),
        (f"/v1/grants/{theirs.grant['id']}/void", {}),
        ("/v1/wallets", {"resource_id": theirs.team["id"], "credit_type": theirs.code}),
        (
            "/v1/budgets",
            {
                "resource_id": theirs.agent["id"],
                "credit_type": theirs.code,
                "period": "day",
                "cap": 1,
            },
        ),
        ("/v1/resources", {"customer_id": theirs.customer["id"], "kind": "team"}),
        (
            "/v1/resources",
            {
                "customer_id": tenants.mine.customer["id"],
                "kind": "agent",
                "parent_id": theirs.team["id"],
            },
        ),
        ("/v1/customers", {"name": "Another"}),
        ("/v1/prices", {"feature": "f", "credit_type": theirs.code, "credits_per_unit": 1}),
    ]
    for path, body in writes:
        assert_problem(await api.post(path, body, key="mine"), "not_found")
    r = await api.post(
        "/v1/debits/batch",
        {"debits": [{**theirs.spend(amount=1), "idempotency_key": api.k("x")}]},
        key="mine",
    )
    assert r.status_code == 200, r.text
    assert [(x["status"], x["error"]["code"]) for x in r.json()["results"]] == [(404, "not_found")]
    # Nothing of theirs moved.
    assert await balance(api, theirs.wallet["id"]) == their_balance
    r = await api.get(f"/v1/reservations/{tenants.their_reservation}", "admin")
    assert r.json()["status"] == "held"
    r = await api.get(f"/v1/grants/{theirs.grant['id']}", "admin")
    assert (r.json()["voided"], r.json()["available"]) == (0, 850)


async def test_another_customers_reservation_answers_as_a_missing_one(tenants: Tenants) -> None:
    """A bound key learns nothing from the answer: theirs and one that does not exist read
    the same (status, code, detail), whether read, settled or released."""
    api = tenants.api
    requests = [
        lambda rid: api.get(f"/v1/reservations/{rid}", "mine"),
        lambda rid: api.post(f"/v1/reservations/{rid}/settle", {"amount": 1}, key="mine"),
        lambda rid: api.post(f"/v1/reservations/{rid}/release", None, key="mine"),
    ]
    for send in requests:
        theirs = assert_problem(await send(tenants.their_reservation), "not_found")
        missing = assert_problem(await send(MISSING_ID), "not_found")
        assert theirs == missing


async def test_a_bound_key_works_on_its_own_customer(tenants: Tenants) -> None:
    api, mine = tenants.api, tenants.mine
    for path in (
        f"/v1/customers/{mine.customer['id']}",
        f"/v1/resources/{mine.agent['id']}",
        f"/v1/wallets/{mine.wallet['id']}",
        f"/v1/wallets/{mine.wallet['id']}/entries",
        f"/v1/grants/{mine.grant['id']}",
        f"/v1/credit-types/{mine.code}",  # credit types are shared by all customers
    ):
        r = await api.get(path, "mine")
        assert r.status_code == 200, (path, r.text)
    debit = await created(api, "/v1/debits", mine.spend(amount=100), "mine")
    r = await api.post(f"/v1/debits/{debit['id']}/refund", {"amount": 40}, key="mine")
    assert r.status_code == 200, r.text
    reservation = await created(api, "/v1/reservations", mine.spend(amount=200), "mine")
    r = await api.get(f"/v1/reservations/{reservation['id']}", "mine")
    assert r.json()["status"] == "held"
    r = await api.post(f"/v1/reservations/{reservation['id']}/settle", {"amount": 50}, key="mine")
    assert r.status_code == 200, r.text
    other = await created(api, "/v1/reservations", mine.spend(amount=10), "mine")
    r = await api.post(f"/v1/reservations/{other['id']}/release", None, key="mine")
    assert r.status_code == 200, r.text
    r = await api.post("/v1/check", mine.spend(amount=1), key="mine", idem=None)
    assert r.json()["allowed"] is True
    team = await created(
        api, "/v1/resources", {"customer_id": mine.customer["id"], "kind": "team"}, "mine"
    )
    wallet = await created(
        api, "/v1/wallets", {"resource_id": team["id"], "credit_type": mine.code}, "mine"
    )
    grant = await created(
        api,
        "/v1/grants",
        {"wallet_id": wallet["id"], "amount": 70, "category": "promotional"},
        "mine",
    )
    r = await api.post(f"/v1/grants/{grant['id']}/void", {}, key="mine")
    assert (r.status_code, r.json()["voided"]) == (200, 70)
    budget = await created(
        api,
        "/v1/budgets",
        {
            "resource_id": mine.team["id"],
            "credit_type": mine.code,
            "period": "lifetime",
            "cap": 1000,
        },
        "mine",
    )
    r = await api.get(f"/v1/budgets/{budget['id']}", "mine")
    assert (r.json()["used"], r.json()["headroom"]) == (0, 1000)
    assert await balance(api, mine.wallet["id"]) == (1000 - 60 - 50, 0, 110)


async def test_idempotency_keys_are_per_customer(tenants: Tenants) -> None:
    api = tenants.api
    same = api.k("shared-key")
    mine = await api.post("/v1/debits", tenants.mine.spend(amount=3), key="mine", idem=same)
    theirs = await api.post("/v1/debits", tenants.theirs.spend(amount=4), key="theirs", idem=same)
    assert (mine.status_code, theirs.status_code) == (201, 201), (mine.text, theirs.text)
    assert mine.json()["id"] != theirs.json()["id"]
    assert "Idempotency-Hit" not in theirs.headers
    assert (await balance(api, tenants.mine.wallet["id"]))[0] == 997
    assert (await balance(api, tenants.theirs.wallet["id"]))[0] == 850 - 4


async def test_a_bound_key_cannot_create_shared_credit_types(tenants: Tenants) -> None:
    api = tenants.api
    code = f"bound{api.seq}"
    r = await api.post("/v1/credit-types", {"code": code, "name": "Squatted"}, key="mine")
    assert_problem(r, "not_found")
    assert_problem(await api.get(f"/v1/credit-types/{code}", "admin"), "not_found")
