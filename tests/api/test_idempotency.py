"""Idempotency: every mutating request names a key; a replay answers as the first time did,
with `Idempotency-Hit: true`, and changes nothing more; another body under the same key is a
conflict; a debit refused for lack of credits stays refused."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ledger import db
from tests.api.conftest import Api
from tests.api.support import (
    World,
    assert_problem,
    balance,
    catalog_counts,
    created,
    make_world,
)

pytestmark = pytest.mark.anyio

# The path and body of a first request, the path and body of another request to send under the
# same key, and the scope of the API key to send them with.
Case = tuple[str, Any, str, Any, str]
CaseFactory = Callable[[Api, World], Awaitable[Case]]


async def _credit_type(api: Api, world: World) -> Case:
    code = f"id{api.seq}"
    path = "/v1/credit-types"
    return (path, {"code": code, "name": "A"}, path, {"code": code, "name": "B"}, "admin")


async def _customer(api: Api, world: World) -> Case:
    return ("/v1/customers", {"name": "A"}, "/v1/customers", {"name": "B"}, "admin")


async def _resource(api: Api, world: World) -> Case:
    body = {"customer_id": world.customer["id"], "kind": "agent", "parent_id": world.team["id"]}
    return ("/v1/resources", body, "/v1/resources", {**body, "kind": "user"}, "admin")


async def _wallet(api: Api, world: World) -> Case:
    body = {"resource_id": world.team["id"], "credit_type": world.code}
    return ("/v1/wallets", body, "/v1/wallets", {**body, "fall_through": True}, "admin")


async def _grant(api: Api, world: World) -> Case:
    body = {"wallet_id": world.wallet["id"], "amount": 100, "category": "promotional"}
    return ("/v1/grants", body, "/v1/grants", {**body, "amount": 101}, "admin")


async def _void(api: Api, world: World) -> Case:
    grants = [
        await created(
            api,
            "/v1/grants",
            {"wallet_id": world.wallet["id"], "amount": 30, "category": "promotional"},
        )
        for _ in range(2)
    ]
    paths = [f"/v1/grants/{g['id']}/void" for g in grants]
    return (paths[0], {"reason": "a"}, paths[1], {"reason": "a"}, "admin")


async def _refund(api: Api, world: World) -> Case:
    debit = await created(api, "/v1/debits", world.spend(amount=50), "runtime")
    path = f"/v1/debits/{debit['id']}/refund"
    return (path, {"amount": 10}, path, {"amount": 11}, "admin")


async def _budget(api: Api, world: World) -> Case:
    body = {
        "resource_id": world.team["id"],
        "credit_type": world.code,
        "period": "day",
        "cap": 10_000,
    }
    return ("/v1/budgets", body, "/v1/budgets", {**body, "cap": 10_001}, "admin")


async def _debit(api: Api, world: World) -> Case:
    return ("/v1/debits", world.spend(amount=20), "/v1/debits", world.spend(amount=21), "runtime")


async def _reservation(api: Api, world: World) -> Case:
    path = "/v1/reservations"
    return (path, world.spend(amount=20), path, world.spend(amount=20, timeout_s=60), "runtime")


async def _settle(api: Api, world: World) -> Case:
    reservation = await created(api, "/v1/reservations", world.spend(amount=40), "runtime")
    path = f"/v1/reservations/{reservation['id']}/settle"
    return (path, {"amount": 15}, path, {"amount": 16}, "runtime")


async def _release(api: Api, world: World) -> Case:
    reservation = await created(api, "/v1/reservations", world.spend(amount=40), "runtime")
    # A release has no body: the same key on another reservation is the other request.
    other = await created(api, "/v1/reservations", world.spend(amount=1), "runtime")
    return (
        f"/v1/reservations/{reservation['id']}/release",
        None,
        f"/v1/reservations/{other['id']}/release",
        None,
        "runtime",
    )


CASES = {
    "credit_type": _credit_type,
    "customer": _customer,
    "resource": _resource,
    "wallet": _wallet,
    "grant": _grant,
    "void": _void,
    "refund": _refund,
    "budget": _budget,
    "debit": _debit,
    "reservation": _reservation,
    "settle": _settle,
    "release": _release,
}


async def _state(api: Api, pool: db.Pool, world: World) -> tuple[Any, ...]:
    r = await api.get(f"/v1/wallets/{world.wallet['id']}", "finance")
    body = r.json()
    wallet = (body["available"], body["held"], body["consumed"], body["voided"])
    return wallet, await catalog_counts(pool)


@pytest.mark.parametrize("case", list(CASES))
async def test_a_request_without_a_key_is_refused_and_changes_nothing(
    api: Api, pool: db.Pool, case: str
) -> None:
    world = await make_world(api, granted=1000)
    path, body, _, _, scope = await CASES[case](api, world)
    before = await _state(api, pool, world)
    r = await api.post(path, body, key=scope, idem=None)
    assert_problem(r, "validation_error", field="Idempotency-Key")
    r = await api.post(path, body, key=scope, idem="")
    assert_problem(r, "validation_error", field="Idempotency-Key")
    r = await api.post(path, body, key=scope, idem="k" * 256)
    assert_problem(r, "validation_error", field="Idempotency-Key")
    assert await _state(api, pool, world) == before


@pytest.mark.parametrize("case", list(CASES))
async def test_a_replay_answers_as_the_first_time_and_changes_nothing_more(
    api: Api, pool: db.Pool, case: str
) -> None:
    world = await make_world(api, granted=1000)
    path, body, other_path, other_body, scope = await CASES[case](api, world)
    key = api.k(f"replay-{case}")
    first = await api.post(path, body, key=scope, idem=key)
    assert first.status_code in (200, 201), first.text
    assert "Idempotency-Hit" not in first.headers
    after_first = await _state(api, pool, world)
    for _ in range(2):
        again = await api.post(path, body, key=scope, idem=key)
        assert (again.status_code, again.json()) == (first.status_code, first.json())
        assert again.headers["Idempotency-Hit"] == "true"
    assert await _state(api, pool, world) == after_first

    r = await api.post(other_path, other_body, key=scope, idem=key)
    assert_problem(r, "idempotency_conflict")
    assert await _state(api, pool, world) == after_first


@pytest.mark.parametrize("case", ["customer", "resource", "wallet", "grant", "void"])
async def test_concurrent_identical_requests_make_one_object_and_one_first_answer(
    api: Api, pool: db.Pool, case: str
) -> None:
    """Twenty callers race with one key and one body: one object, one answer without
    Idempotency-Hit (the first answer), and nineteen replays of exactly that answer."""
    world = await make_world(api, granted=1000)
    path, body, _, _, scope = await CASES[case](api, world)
    before = await catalog_counts(pool)
    key = api.k(f"race-{case}")
    answers = await asyncio.gather(*(api.post(path, body, key=scope, idem=key) for _ in range(20)))
    assert {(r.status_code, r.text) for r in answers} == {(answers[0].status_code, answers[0].text)}
    assert answers[0].status_code in (200, 201), answers[0].text
    hits = sorted(r.headers.get("Idempotency-Hit", "none") for r in answers)
    assert hits == ["none"] + ["true"] * 19
    after = await catalog_counts(pool)
    made = {table: after[table] - before[table] for table in after}
    expected = {"customer": "customers", "resource": "resources", "wallet": "wallets"}
    assert made == {t: int(expected.get(case) == t or (case == "grant" and t == "grants"))
                    for t in after}  # fmt: skip
    available, _, _ = await balance(api, world.wallet["id"])
    assert available == {"grant": 1100, "void": 1030}.get(case, 1000)


async def test_a_key_is_bound_to_one_kind_of_operation(api: Api) -> None:
    world = await make_world(api, granted=1000)
    key = api.k("one-kind")
    assert (await api.post("/v1/debits", world.spend(amount=5), key="runtime", idem=key)).is_success
    r = await api.post("/v1/reservations", world.spend(amount=5), key="runtime", idem=key)
    assert_problem(r, "idempotency_conflict")
    admin_key = api.k("one-kind-admin")
    assert (await api.post("/v1/customers", {"name": "A"}, idem=admin_key)).is_success
    r = await api.post("/v1/credit-types", {"code": f"ok{api.seq}", "name": "A"}, idem=admin_key)
    assert_problem(r, "idempotency_conflict")
    assert_problem(await api.get(f"/v1/credit-types/ok{api.seq}"), "not_found")
    assert await balance(api, world.wallet["id"]) == (995, 0, 5)


async def test_a_debit_refused_for_lack_of_credits_stays_refused(api: Api) -> None:
    world = await make_world(api, granted=100)
    key = api.k("poor")
    r = await api.post("/v1/debits", world.spend(amount=150), key="runtime", idem=key)
    assert_problem(r, "insufficient_credits", available=100, needed=150)
    await created(
        api,
        "/v1/grants",
        {"wallet_id": world.wallet["id"], "amount": 500, "category": "promotional"},
    )
    assert await balance(api, world.wallet["id"]) == (600, 0, 0)
    r = await api.post("/v1/debits", world.spend(amount=150), key="runtime", idem=key)
    # The replay says it is one, and keeps the first answer's meaning: no `available` of now
    # (600 would contradict "not enough credits"), a detail naming the stored outcome.
    body = assert_problem(r, "insufficient_credits", needed=150)
    assert r.headers["Idempotency-Hit"] == "true"
    assert "available" not in body and "stored outcome" in body["detail"]
    assert await balance(api, world.wallet["id"]) == (600, 0, 0)
    # The same debit under a new key goes through.
    r = await api.post("/v1/debits", world.spend(amount=150), key="runtime")
    assert r.status_code == 201, r.text
    assert await balance(api, world.wallet["id"]) == (450, 0, 150)


async def test_a_reservation_refused_for_lack_of_credits_stays_refused(api: Api) -> None:
    world = await make_world(api, granted=100)
    key = api.k("poor-reserve")
    r = await api.post("/v1/reservations", world.spend(amount=150), key="runtime", idem=key)
    assert_problem(r, "insufficient_credits", needed=150)
    await created(
        api,
        "/v1/grants",
        {"wallet_id": world.wallet["id"], "amount": 500, "category": "promotional"},
    )
    r = await api.post("/v1/reservations", world.spend(amount=150), key="runtime", idem=key)
    body = assert_problem(r, "insufficient_credits", needed=150)
    assert r.headers["Idempotency-Hit"] == "true" and "available" not in body
    assert await balance(api, world.wallet["id"]) == (600, 0, 0)


async def test_batch_items_replay_one_by_one(api: Api) -> None:
    world = await make_world(api, granted=100)
    items = [
        {**world.spend(amount=30), "idempotency_key": api.k("bi-1")},
        {**world.spend(amount=500), "idempotency_key": api.k("bi-2")},
        {**world.spend(amount=20), "idempotency_key": api.k("bi-3")},
    ]
    first = await api.post("/v1/debits/batch", {"debits": items}, key="runtime", idem=None)
    assert [x["status"] for x in first.json()["results"]] == [201, 402, 201]
    assert await balance(api, world.wallet["id"]) == (50, 0, 50)
    again = await api.post("/v1/debits/batch", {"debits": items}, key="runtime", idem=None)
    assert [x["replayed"] for x in first.json()["results"]] == [False, False, False]
    # The same outcomes, each marked as answered again under its key.
    assert again.json() == {"results": [{**x, "replayed": True} for x in first.json()["results"]]}
    assert await balance(api, world.wallet["id"]) == (50, 0, 50)
    # An item's key with another amount conflicts; the single-debit route shares the keys.
    changed = [{**items[0], "amount": 31}, items[2]]
    r = await api.post("/v1/debits/batch", {"debits": changed}, key="runtime", idem=None)
    assert [x["status"] for x in r.json()["results"]] == [409, 201]
    assert r.json()["results"][0]["error"]["code"] == "idempotency_conflict"
    assert [x["replayed"] for x in r.json()["results"]] == [False, True]
    r = await api.post(
        "/v1/debits", world.spend(amount=20), key="runtime", idem=items[2]["idempotency_key"]
    )
    assert (r.status_code, r.headers.get("Idempotency-Hit")) == (201, "true")
    assert r.json() == first.json()["results"][2]["debit"]
    assert await balance(api, world.wallet["id"]) == (50, 0, 50)


async def test_prices_need_a_key_check_and_batches_do_not(api: Api) -> None:
    world = await make_world(api, granted=1000)
    body = {"feature": "tok", "credit_type": world.code, "credits_per_unit": 3}
    r = await api.post("/v1/prices", body, idem=None)
    assert_problem(r, "validation_error", field="Idempotency-Key")
    r = await api.post(
        "/v1/check", world.spend(usage={"feature": "tok", "quantity": 1}), key="runtime", idem=None
    )
    assert_problem(r, "validation_error", field="usage.feature")  # no price was set
    # A check changes nothing and a batch carries a key per item: no header needed.
    r = await api.post("/v1/check", world.spend(amount=1), key="runtime", idem=None)
    assert r.status_code == 200, r.text
    item = {**world.spend(amount=1), "idempotency_key": api.k("nokey")}
    r = await api.post("/v1/debits/batch", {"debits": [item]}, key="runtime", idem=None)
    assert r.json()["results"][0]["status"] == 201


@pytest.mark.parametrize("operation", ["void", "refund"])
async def test_another_reason_under_the_same_key_is_a_conflict(api: Api, operation: str) -> None:
    world = await make_world(api, granted=1000)
    path, _, _, _, _ = await CASES[operation](api, world)
    body: dict[str, Any] = {"amount": 10} if operation == "refund" else {}
    key = api.k(f"reason-{operation}")
    first = await api.post(path, {**body, "reason": "customer asked"}, idem=key)
    assert first.status_code == 200, first.text
    r = await api.post(path, {**body, "reason": "fraud"}, idem=key)
    assert_problem(r, "idempotency_conflict")


async def test_prices_honour_their_idempotency_key(api: Api) -> None:
    world = await make_world(api)
    key = api.k("price")
    body = {"feature": "tok", "credit_type": world.code, "credits_per_unit": 3}
    first = await api.post("/v1/prices", body, idem=key)
    assert first.status_code == 201, first.text
    again = await api.post("/v1/prices", body, idem=key)
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers.get("Idempotency-Hit") == "true"
    r = await api.post("/v1/prices", {**body, "credits_per_unit": 4}, idem=key)
    assert_problem(r, "idempotency_conflict")
    r = await api.post(
        "/v1/check", world.spend(usage={"feature": "tok", "quantity": 1}), key="runtime", idem=None
    )
    assert r.json()["amount"] == 3
