"""Changes over HTTP: PATCH /v1/wallets/{id} (overdraft mode and limit, fall-through) and
PATCH/DELETE /v1/budgets/{id}. Each moves the ledger with it, checked through the wallet's and
the budget's reads and through spends at the new limit; each is audited and idempotent like
every admin operation; a budget's removal stops it limiting spends in every process."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from ledger import db
from tests.api.conftest import Api
from tests.api.support import (
    MISSING_ID,
    World,
    assert_problem,
    created,
    make_world,
    running_api,
    scope_keys,
    services_of,
)

pytestmark = pytest.mark.anyio


async def patch(
    api: Api, path: str, body: Any, key: str = "admin", idem: str | None = "auto"
) -> Any:
    idem_key = api.k(f"patch-{time.monotonic_ns()}") if idem == "auto" else idem
    return await api.client.patch(path, json=body, headers=api.headers(key, idem_key))


async def delete(api: Api, path: str, key: str = "admin", idem: str | None = "auto") -> Any:
    idem_key = api.k(f"delete-{time.monotonic_ns()}") if idem == "auto" else idem
    return await api.client.delete(path, headers=api.headers(key, idem_key))


async def check(api: Api, world: World, amount: int) -> dict[str, Any]:
    r = await api.post("/v1/check", world.spend(amount=amount), key="runtime", idem=None)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def debit(api: Api, world: World, amount: int) -> Any:
    return await api.post("/v1/debits", world.spend(amount=amount), key="runtime")


async def overdraft(api: Api, world: World) -> tuple[int, int | None]:
    """(overdraft_used, overdraft_limit) of the world's wallet, as the ledger has them."""
    body = (await api.get(f"/v1/wallets/{world.wallet['id']}", key="finance")).json()
    return body["overdraft_used"], body["overdraft_limit"]


async def audit_actions(pool: db.Pool, object_id: str) -> list[str]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT action FROM audit_log WHERE object_id = %s ORDER BY id", (object_id,)
        )
        return [str(row[0]) for row in await cursor.fetchall()]


async def test_a_soft_limit_raised_and_lowered_moves_the_ledger(api: Api, pool: db.Pool) -> None:
    world = await make_world(api, granted=1000)
    path = f"/v1/wallets/{world.wallet['id']}"
    r = await patch(api, path, {"overdraft_mode": "soft", "overdraft_limit": 100})
    assert r.status_code == 200, r.text
    assert r.json() == {**world.wallet, "overdraft_mode": "soft", "overdraft_limit": 100}
    assert (await api.get(path, key="finance")).json()["wallet"] == r.json()
    assert (await check(api, world, 1100))["allowed"] is True
    assert (await check(api, world, 1101))["reason"] == "insufficient_credits"
    assert (await debit(api, world, 1050)).status_code == 201
    assert await overdraft(api, world) == (50, 100)

    # Raised: the account is credited the difference, and a spend may draw it.
    r = await patch(api, path, {"overdraft_limit": 300})
    assert (r.status_code, r.json()["overdraft_limit"]) == (200, 300)
    assert (await check(api, world, 1))["overdraft_headroom"] == 250
    assert (await debit(api, world, 250)).status_code == 201
    assert_problem(await debit(api, world, 1), "insufficient_credits")
    assert await overdraft(api, world) == (300, 300)

    # Lowered below what is drawn: refused, and nothing changed anywhere.
    r = await patch(api, path, {"overdraft_limit": 200})
    assert_problem(r, "conflict")
    assert "300 drawn" in r.json()["detail"]
    assert await overdraft(api, world) == (300, 300)
    assert (await api.get(path)).json()["wallet"]["overdraft_limit"] == 300

    # A grant repays the deficit; then the limit comes down, and spends stop at it.
    grant = await created(
        api,
        "/v1/grants",
        {"wallet_id": world.wallet["id"], "amount": 500, "category": "promotional"},
    )
    assert grant["repaid_overdraft"] == 300
    r = await patch(api, path, {"overdraft_limit": 50})
    assert (r.status_code, r.json()["overdraft_limit"]) == (200, 50)
    assert await overdraft(api, world) == (0, 50)
    assert (await check(api, world, 1))["overdraft_headroom"] == 50
    assert (await debit(api, world, 250)).status_code == 201  # 200 of the grant, 50 drawn
    assert_problem(await debit(api, world, 1), "insufficient_credits")
    assert await audit_actions(pool, world.wallet["id"]) == [
        "wallet.create",
        "wallet.update",
        "wallet.update",
        "wallet.update_refused",
        "wallet.update",
    ]


async def test_every_switch_of_mode_and_what_it_leaves_owed(api: Api) -> None:
    world = await make_world(api, granted=100)
    path = f"/v1/wallets/{world.wallet['id']}"
    r = await patch(api, path, {"overdraft_mode": "unbounded", "fall_through": True})
    assert (r.json()["overdraft_mode"], r.json()["fall_through"]) == ("unbounded", True)
    assert (await debit(api, world, 160)).status_code == 201  # 60 owed
    assert await overdraft(api, world) == (60, None)
    # Leaving 'unbounded' keeps the debt: the wallet is hard now, and its next grant repays it.
    r = await patch(api, path, {"overdraft_mode": "hard"})
    assert (r.status_code, r.json()["overdraft_mode"]) == (200, "hard")
    assert_problem(await debit(api, world, 1), "insufficient_credits")
    grant = await created(
        api,
        "/v1/grants",
        {"wallet_id": world.wallet["id"], "amount": 100, "category": "promotional"},
    )
    assert grant["repaid_overdraft"] == 60
    # hard -> soft -> unbounded -> soft: each switch moves the bounded account to its limit.
    r = await patch(api, path, {"overdraft_mode": "soft", "overdraft_limit": 30})
    assert r.status_code == 200, r.text
    assert (await check(api, world, 70))["overdraft_headroom"] == 30
    assert (await debit(api, world, 60)).status_code == 201  # 40 of the grant, 20 drawn
    # Leaving 'soft' lowers its account to 0: refused while 20 is drawn.
    assert_problem(await patch(api, path, {"overdraft_mode": "unbounded"}), "conflict")
    await created(
        api,
        "/v1/grants",
        {"wallet_id": world.wallet["id"], "amount": 20, "category": "promotional"},
    )
    r = await patch(api, path, {"overdraft_mode": "unbounded"})
    assert (r.status_code, r.json()["overdraft_limit"]) == (200, 0)
    assert (await debit(api, world, 500)).status_code == 201
    r = await patch(api, path, {"overdraft_mode": "soft", "overdraft_limit": 10})
    assert r.status_code == 200, r.text
    assert (await check(api, world, 1))["overdraft_headroom"] == 10
    assert await overdraft(api, world) == (500, 10)  # the debt, and nothing drawn of the 10


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "overdraft_mode"),
        ({"overdraft_limit": 10}, "overdraft_limit"),  # the wallet is hard
        ({"overdraft_mode": "soft"}, "overdraft_limit"),  # soft needs its limit
        ({"overdraft_mode": "hard", "overdraft_limit": 5}, "overdraft_limit"),
        ({"overdraft_mode": "soft", "overdraft_limit": 0}, "overdraft_limit"),
        ({"overdraft_mode": "sideways"}, "overdraft_mode"),
        ({"overdraft_limit": -1}, "overdraft_limit"),
        ({"fall_through": "yes"}, "fall_through"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_wallet_changes_are_refused_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    world = await make_world(api)
    r = await patch(api, f"/v1/wallets/{world.wallet['id']}", body)
    assert_problem(r, "validation_error", field=field)
    assert (await api.get(f"/v1/wallets/{world.wallet['id']}")).json()["wallet"] == world.wallet


async def test_changes_need_the_admin_scope_a_key_and_an_object(api: Api) -> None:
    world = await make_world(api)
    budget = await _budget(api, world, 100)
    wallet, budget_path = f"/v1/wallets/{world.wallet['id']}", f"/v1/budgets/{budget['id']}"
    for scope in ("runtime", "finance"):
        r = await patch(api, wallet, {"fall_through": True}, key=scope)
        assert_problem(r, "forbidden")
        assert_problem(await patch(api, budget_path, {"cap": 5}, key=scope), "forbidden")
        assert_problem(await delete(api, budget_path, key=scope), "forbidden")
    r = await patch(api, wallet, {"fall_through": True}, idem=None)
    assert_problem(r, "validation_error", field="Idempotency-Key")
    assert_problem(await patch(api, budget_path, {"cap": 5}, idem=None), "validation_error")
    assert_problem(await delete(api, budget_path, idem=None), "validation_error")
    assert_problem(await patch(api, budget_path, {"cap": 0}), "validation_error", field="cap")
    assert_problem(
        await patch(api, f"/v1/wallets/{MISSING_ID}", {"fall_through": True}), "not_found"
    )
    assert_problem(await patch(api, f"/v1/budgets/{MISSING_ID}", {"cap": 5}), "not_found")
    assert_problem(await delete(api, f"/v1/budgets/{MISSING_ID}"), "not_found")


async def test_changes_replay_with_their_key_and_conflict_with_another_body(
    api: Api, pool: db.Pool
) -> None:
    world = await make_world(api)
    path = f"/v1/wallets/{world.wallet['id']}"
    key = api.k("soft")
    first = await patch(api, path, {"overdraft_mode": "soft", "overdraft_limit": 40}, idem=key)
    assert first.status_code == 200 and "Idempotency-Hit" not in first.headers
    again = await patch(api, path, {"overdraft_mode": "soft", "overdraft_limit": 40}, idem=key)
    assert (again.status_code, again.json()) == (200, first.json())
    assert again.headers["Idempotency-Hit"] == "true"
    other = await patch(api, path, {"overdraft_mode": "soft", "overdraft_limit": 41}, idem=key)
    assert_problem(other, "idempotency_conflict")
    assert await overdraft(api, world) == (0, 40)  # credited once
    assert (await check(api, world, 1040))["allowed"] is True
    assert (await check(api, world, 1041))["allowed"] is False

    budget = await _budget(api, world, 100)
    budget_path = f"/v1/budgets/{budget['id']}"
    cap_key = api.k("cap")
    first = await patch(api, budget_path, {"cap": 60}, idem=cap_key)
    again = await patch(api, budget_path, {"cap": 60}, idem=cap_key)
    assert (first.json()["cap"], again.json(), again.headers["Idempotency-Hit"]) == (
        60,
        first.json(),
        "true",
    )
    assert_problem(await patch(api, budget_path, {"cap": 61}, idem=cap_key), "idempotency_conflict")

    removal = api.k("remove")
    first = await delete(api, budget_path, idem=removal)
    assert first.status_code == 200, first.text
    assert (first.json()["active"], first.json()["cap"]) == (False, 60)
    again = await delete(api, budget_path, idem=removal)
    assert (again.status_code, again.json(), again.headers["Idempotency-Hit"]) == (
        200,
        first.json(),
        "true",
    )
    another = await _budget(api, world, 100, period="month")
    r = await delete(api, f"/v1/budgets/{another['id']}", idem=removal)
    assert_problem(r, "idempotency_conflict")
    # Removed: a new key finds nothing to remove or change.
    assert_problem(await delete(api, budget_path), "not_found")
    assert_problem(await patch(api, budget_path, {"cap": 5}), "not_found")
    assert await audit_actions(pool, world.wallet["id"]) == ["wallet.create", "wallet.update"]
    assert await audit_actions(pool, budget["id"]) == [
        "budget.create",
        "budget.update",
        "budget.remove",
    ]


async def _budget(api: Api, world: World, cap: int, period: str = "day") -> dict[str, Any]:
    return await created(
        api,
        "/v1/budgets",
        {"resource_id": world.team["id"], "credit_type": world.code, "period": period, "cap": cap},
    )


async def test_a_cap_change_moves_the_current_period(api: Api) -> None:
    world = await make_world(api, granted=10_000)
    budget = await _budget(api, world, 100)
    path = f"/v1/budgets/{budget['id']}"
    assert (await debit(api, world, 80)).status_code == 201
    r = await patch(api, path, {"cap": 150})
    assert r.json() == {**budget, "cap": 150}
    got = (await api.get(path)).json()
    assert (got["cap"], got["used"], got["headroom"]) == (150, 80, 70)
    assert (await debit(api, world, 70)).status_code == 201
    assert_problem(await debit(api, world, 1), "budget_exceeded", budget_id=budget["id"])
    # A cut below what the period used is refused, and changes nothing.
    assert_problem(await patch(api, path, {"cap": 100}), "conflict", field="cap", used=150)
    assert (await api.get(path)).json()["cap"] == 150
    # Down to exactly what was used: no headroom.
    assert (await patch(api, path, {"cap": 150})).status_code == 200
    assert (await api.get(path)).json()["headroom"] == 0
    assert_problem(await debit(api, world, 1), "budget_exceeded")
    # Raised again: the headroom is the new cap less what the period used.
    assert (await patch(api, path, {"cap": 500})).status_code == 200
    got = (await api.get(path)).json()
    assert (got["used"], got["headroom"]) == (150, 350)
    # Cut with headroom left: it is taken back, down to the new cap exactly.
    assert (await patch(api, path, {"cap": 300})).status_code == 200
    assert (await check(api, world, 150))["allowed"] is True
    assert (await check(api, world, 151))["reason"] == "budget_exceeded"


async def test_a_cut_counts_what_reservations_hold_and_stays_enforced_when_they_end(
    api: Api,
) -> None:
    """Cap 100, 90 held: a cut to 50 is refused (it would hold when the reservation ends, but
    not now); a cut to 90 takes effect; released, the 90 come back as headroom under the new
    cap, never past it (the review's case: a cut by what headroom there was let a debit of 90
    pass a cap of 50 once the reservation was released)."""
    world = await make_world(api, granted=10_000)
    budget = await _budget(api, world, 100)
    path = f"/v1/budgets/{budget['id']}"
    held = await created(api, "/v1/reservations", world.spend(amount=90), "runtime")
    assert_problem(await patch(api, path, {"cap": 50}), "conflict", used=90)
    assert (await patch(api, path, {"cap": 90})).status_code == 200
    r = await api.post(f"/v1/reservations/{held['id']}/release", None, key="runtime")
    assert r.status_code == 200, r.text
    got = (await api.get(path)).json()
    assert (got["cap"], got["used"], got["headroom"]) == (90, 0, 90)
    assert_problem(await debit(api, world, 91), "budget_exceeded")
    assert (await debit(api, world, 90)).status_code == 201


async def test_a_cap_changed_before_any_spend_opens_the_period_with_it(api: Api) -> None:
    world = await make_world(api, granted=10_000)
    budget = await _budget(api, world, 100)
    assert (await patch(api, f"/v1/budgets/{budget['id']}", {"cap": 40})).status_code == 200
    assert_problem(await debit(api, world, 41), "budget_exceeded")
    assert (await debit(api, world, 40)).status_code == 201
    assert_problem(await debit(api, world, 1), "budget_exceeded")


async def test_a_removed_budget_stops_limiting_spends_in_every_process(
    api: Api, pool: db.Pool, migrated_db_url: str
) -> None:
    world = await make_world(api, granted=10_000)
    budget = await _budget(api, world, 10)
    async with running_api(pool, migrated_db_url, api.keys, engine=api.engine) as (other, app, _):
        assert_problem(await debit(api, world, 11), "budget_exceeded")
        await _until(lambda: budget_ids(app) >= {int(budget["id"].replace("-", ""), 16)})
        assert_problem(await debit(other, world, 11), "budget_exceeded")
        r = await delete(api, f"/v1/budgets/{budget['id']}")
        assert r.status_code == 200, r.text
        # This process forgot it at once; the other one on the change's notification.
        assert (await debit(api, world, 11)).status_code == 201
        await _until(lambda: not budget_ids(app) & {int(budget["id"].replace("-", ""), 16)})
        assert (await debit(other, world, 11)).status_code == 201
    assert_problem(await api.get(f"/v1/budgets/{budget['id']}"), "not_found")
    r = await api.client.get(
        "/v1/budgets",
        params={"resource_id": world.team["id"], "active": "false"},
        headers=api.headers(),
    )
    assert [b["id"] for b in r.json()["items"]] == [budget["id"]]
    assert r.json()["items"][0]["active"] is False


def budget_ids(app: Any) -> set[int]:
    return set(services_of(app).catalog.budgets)


async def _until(condition: Any) -> None:
    deadline_s = time.monotonic() + 10.0
    while not condition():
        assert time.monotonic() < deadline_s, "the other process never heard of the change"
        await asyncio.sleep(0.01)


async def test_a_retried_create_does_not_bring_back_the_policy_a_patch_changed(
    pool: db.Pool, migrated_db_url: str
) -> None:
    """The create's ledger write failed (503: retry with the same key); an admin then makes the
    wallet hard; the client retries the create, as told. The wallet stays hard, in the ledger
    and in the cache: the retry finishes the create as the row stands, not as it was asked."""
    keys = await scope_keys(pool)
    async with running_api(pool, migrated_db_url, keys) as (api, app, ledger):
        world = await make_world(api, granted=100)
        resource = world.team["id"]
        body = {"resource_id": resource, "credit_type": world.code,
                "overdraft_mode": "unbounded"}  # fmt: skip
        ledger.down = True
        assert_problem(await api.post("/v1/wallets", body, idem="w-retry"), "ledger_unavailable")
        ledger.down = False
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT id FROM wallets WHERE resource_id = %s", (uuid.UUID(resource),)
            )
            (row,) = await cursor.fetchall()
        wallet_id = str(row[0])
        await wait_until(lambda: uuid.UUID(wallet_id).int in services_of(app).catalog.wallets)
        r = await patch(api, f"/v1/wallets/{wallet_id}", {"overdraft_mode": "hard"})
        assert r.status_code == 200, r.text
        again = await api.post("/v1/wallets", body, idem="w-retry")
        assert again.status_code == 201, again.text
        assert again.json()["overdraft_mode"] == "unbounded"  # the create's own answer
        cached = services_of(app).catalog.wallets[uuid.UUID(wallet_id).int]
        assert cached.overdraft_mode.value == "hard"
        spend = {"wallet_id": wallet_id, "credit_type": world.code, "amount": 1}
        assert_problem(await api.post("/v1/debits", spend, key="runtime"), "insufficient_credits")
        r = await api.get(f"/v1/wallets/{wallet_id}")
        assert r.json()["wallet"]["overdraft_mode"] == "hard"


async def wait_until(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the change did not arrive"
        await asyncio.sleep(0.01)


async def test_a_wallet_that_was_soft_keeps_its_overdraft_history(api: Api) -> None:
    """Drawn while soft, repaid, then made hard: what was consumed from the overdraft is still
    consumed, and its draw and repay are still entries (they were read only while soft)."""
    world = await make_world(api, granted=100)
    path = f"/v1/wallets/{world.wallet['id']}"
    assert (await patch(api, path, {"overdraft_mode": "soft", "overdraft_limit": 50})).is_success
    assert (await debit(api, world, 130)).status_code == 201  # 100 from the grant, 30 drawn
    topup = {"wallet_id": world.wallet["id"], "amount": 30, "category": "promotional"}
    assert (await api.post("/v1/grants", topup)).status_code == 201  # repays the 30
    before = (await api.get(path, key="finance")).json()
    assert (before["consumed"], before["overdraft_used"]) == (130, 0)
    assert (await patch(api, path, {"overdraft_mode": "hard"})).status_code == 200
    after = (await api.get(path, key="finance")).json()
    assert (after["consumed"], after["overdraft_used"], after["available"]) == (130, 0, 0)
    entries = (await api.get(f"{path}/entries", key="finance")).json()["entries"]
    types = [e["type"] for e in entries]
    assert "overdraft_draw" in types and "overdraft_repay" in types


async def test_a_grant_repays_the_deficit_the_ledger_holds_when_a_change_is_cut_in_two(
    api: Api,
) -> None:
    """A limit change that moved the ledger (100 -> 50) but not yet the row (a crash between
    the two): a grant issued meanwhile repays what was drawn (30), not what the row's limit
    would make of it (80), which would leave the overdraft more headroom than any limit."""
    from wallets.limit_accounts import move_limit, overdraft_account

    world = await make_world(api, granted=100)
    path = f"/v1/wallets/{world.wallet['id']}"
    assert (await patch(api, path, {"overdraft_mode": "soft", "overdraft_limit": 100})).is_success
    assert (await debit(api, world, 130)).status_code == 201  # 30 drawn
    services = services_of(api.app)
    wallet = services.catalog.wallets[uuid.UUID(world.wallet["id"]).int]
    tenant = services.catalog.resources[wallet.resource_id].tenant
    account = overdraft_account(wallet.id, wallet.ledger, tenant)
    move = await move_limit(services.service.ledger, account, 50, operation=12345)
    assert (move.before, move.after, move.refused) == (100, 50, False)
    r = await api.post("/v1/grants", {"wallet_id": world.wallet["id"], "amount": 200,
                                      "category": "promotional"})  # fmt: skip
    assert (r.status_code, r.json()["repaid_overdraft"]) == (201, 30), r.text
