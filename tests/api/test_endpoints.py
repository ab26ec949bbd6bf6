"""Every endpoint answers its success case, and the state it reports moved as it says."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from tests.api.conftest import Api
from tests.api.support import assert_problem, balance, created, make_world

pytestmark = pytest.mark.anyio


async def test_catalog_objects_are_created_and_read_back(api: Api) -> None:
    code = f"ep{api.seq}"
    r = await api.post("/v1/credit-types", {"code": code, "name": "Tokens", "asset_scale": 2})
    assert r.status_code == 201, r.text
    credit_type = r.json()
    assert (credit_type["code"], credit_type["name"], credit_type["asset_scale"]) == (
        code,
        "Tokens",
        2,
    )
    assert isinstance(credit_type["id"], int) and credit_type["id"] >= 1
    r = await api.get(f"/v1/credit-types/{code}", key="runtime")
    assert (r.status_code, r.json()) == (200, credit_type)

    customer = await created(api, "/v1/customers", {"name": "Acme", "external_ref": "crm-1"})
    assert (customer["name"], customer["external_ref"]) == ("Acme", "crm-1")
    assert isinstance(customer["id"], str) and customer["tenant"] >= 1
    r = await api.get(f"/v1/customers/{customer['id']}", key="finance")
    assert (r.status_code, r.json()) == (200, customer)

    team = await created(api, "/v1/resources", {"customer_id": customer["id"], "kind": "team"})
    agent = await created(
        api,
        "/v1/resources",
        {"customer_id": customer["id"], "kind": "agent", "parent_id": team["id"]},
    )
    assert (team["parent_id"], agent["parent_id"]) == (None, team["id"])
    assert (team["external_ref"], agent["external_ref"]) == (None, None)
    user = await created(
        api,
        "/v1/resources",
        {"customer_id": customer["id"], "kind": "user", "external_ref": "crm-user-9"},
    )
    assert user["external_ref"] == "crm-user-9"
    r = await api.get(f"/v1/resources/{user['id']}", key="runtime")
    assert (r.status_code, r.json()) == (200, user)
    assert (agent["customer_id"], agent["kind"]) == (customer["id"], "agent")
    r = await api.get(f"/v1/resources/{agent['id']}", key="runtime")
    assert (r.status_code, r.json()) == (200, agent)

    wallet = await created(
        api,
        "/v1/wallets",
        {
            "resource_id": agent["id"],
            "credit_type": code,
            "overdraft_mode": "soft",
            "overdraft_limit": 50,
            "fall_through": True,
        },
    )
    assert wallet["resource_id"] == agent["id"]
    assert (wallet["credit_type"], wallet["overdraft_mode"], wallet["overdraft_limit"]) == (
        code,
        "soft",
        50,
    )
    assert wallet["fall_through"] is True
    r = await api.get(f"/v1/wallets/{wallet['id']}", key="finance")
    assert r.status_code == 200, r.text
    summary = r.json()
    assert summary["wallet"] == wallet
    assert (summary["available"], summary["held"], summary["consumed"]) == (0, 0, 0)
    assert (summary["overdraft_used"], summary["overdraft_limit"], summary["grants"]) == (
        0,
        50,
        [],
    )


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


async def test_grants_are_issued_read_and_voided(api: Api) -> None:
    world = await make_world(api, granted=1000)
    assert (world.grant["wallet_id"], world.grant["amount"]) == (world.wallet["id"], 1000)
    assert world.grant["repaid_overdraft"] == 0
    promo = await created(
        api,
        "/v1/grants",
        {
            "wallet_id": world.wallet["id"],
            "amount": 300,
            "category": "promotional",
            "priority": 5,
            "reason": "welcome",
        },
    )
    assert await balance(api, world.wallet["id"]) == (1300, 0, 0)
    r = await api.get(f"/v1/grants/{promo['id']}", key="runtime")
    assert r.status_code == 200, r.text
    block = r.json()
    assert _at(block.pop("effective_at")) <= _at(block.pop("created_at"))
    assert block == {
        "id": promo["id"],
        "wallet_id": world.wallet["id"],
        "credit_type": world.code,
        "amount": 300,
        "category": "promotional",
        "priority": 5,
        "expires_at": None,
        "consideration_minor": 0,
        "currency": None,
        "exchange_rate": None,
        "source": "admin",
        "reason": "welcome",
        "external_ref": None,
        "actor": "test-admin",
        # The figures, as they were before the block's fields joined them.
        "grant_id": promo["id"],
        "state": "active",
        "granted": 300,
        "available": 300,
        "upcoming": 0,
        "held": 0,
        "consumed": 0,
        "expired": 0,
        "voided": 0,
        "refunded": 0,
        "repaid": 0,
        "rolled_over": 0,
        "source_grant_id": None,
        "rollover": None,
    }
    r = await api.post(f"/v1/grants/{promo['id']}/void", {"reason": "abuse"})
    assert r.status_code == 200, r.text
    assert r.json() == {"grant_id": promo["id"], "voided": 300}
    r = await api.get(f"/v1/grants/{promo['id']}", key="finance")
    assert (r.json()["state"], r.json()["available"], r.json()["voided"]) == ("voided", 0, 300)
    r = await api.get(f"/v1/wallets/{world.wallet['id']}", key="finance")
    assert (r.json()["available"], r.json()["voided"]) == (1000, 300)
    assert {g["grant_id"] for g in r.json()["grants"]} == {world.grant["id"], promo["id"]}


async def test_debit_spends_the_grant_and_refund_gives_it_back(api: Api) -> None:
    world = await make_world(api, granted=1000)
    r = await api.post(
        "/v1/debits",
        world.spend(amount=250, dimensions={"feature": "chat", "model": "m1", "user": "u7"}),
        key="runtime",
    )
    assert r.status_code == 201, r.text
    debit = r.json()
    assert debit["amount"] == 250
    assert debit["funded_by"] == [{"account_id": world.grant["id"], "kind": "grant", "amount": 250}]
    assert await balance(api, world.wallet["id"]) == (750, 0, 250)

    r = await api.post(f"/v1/debits/{debit['id']}/refund", {"amount": 100, "reason": "bug"})
    assert r.status_code == 200, r.text
    refund = r.json()
    assert (refund["debit_id"], refund["amount"]) == (debit["id"], 100)
    assert refund["restored"] == [{"account_id": world.grant["id"], "kind": "grant", "amount": 100}]
    assert await balance(api, world.wallet["id"]) == (850, 0, 150)  # consumed is net of refunds
    r = await api.get(f"/v1/grants/{world.grant['id']}", key="finance")
    # A usage refund un-consumes; `refunded` counts credits refunded out of the grant.
    assert (r.json()["available"], r.json()["consumed"], r.json()["refunded"]) == (850, 150, 0)

    # A debit may name the wallet instead of the resource.
    r = await api.post(
        "/v1/debits",
        {"credit_type": world.code, "wallet_id": world.wallet["id"], "amount": 50},
        key="runtime",
    )
    assert (r.status_code, r.json()["amount"]) == (201, 50)
    assert (await balance(api, world.wallet["id"]))[0] == 800


async def test_batch_gives_each_debit_its_own_result(api: Api) -> None:
    world = await make_world(api, granted=100)
    items = [
        {**world.spend(amount=30), "idempotency_key": api.k("b-ok-1")},
        {**world.spend(amount=500), "idempotency_key": api.k("b-poor")},
        {**world.spend(amount=1, credit_type="nosuchtype"), "idempotency_key": api.k("b-type")},
        {
            **world.spend(usage={"feature": "unpriced", "quantity": 1}),
            "idempotency_key": api.k("b-unpriced"),
        },
        {
            "credit_type": world.code,
            "wallet_id": world.wallet["id"],
            "amount": 20,
            "idempotency_key": api.k("b-ok-2"),
        },
    ]
    r = await api.post("/v1/debits/batch", {"debits": items}, key="runtime", idem=None)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["idempotency_key"] for x in results] == [i["idempotency_key"] for i in items]
    assert [x["status"] for x in results] == [201, 402, 404, 422, 201]
    assert [x["error"]["code"] if x["error"] else None for x in results] == [
        None,
        "insufficient_credits",
        "not_found",
        "validation_error",
        None,
    ]
    assert [x["debit"]["amount"] if x["debit"] else None for x in results] == [
        30,
        None,
        None,
        None,
        20,
    ]
    # Only the two successes moved credits.
    assert await balance(api, world.wallet["id"]) == (50, 0, 50)


async def test_reservation_is_held_settled_or_released(api: Api) -> None:
    world = await make_world(api, granted=1000)
    r = await api.post("/v1/reservations", world.spend(amount=300, timeout_s=120), key="runtime")
    assert r.status_code == 201, r.text
    held = r.json()
    assert (held["amount"], held["timeout_s"], held["status"]) == (300, 120, "held")
    assert held["funded_by"] == [{"account_id": world.grant["id"], "kind": "grant", "amount": 300}]
    assert await balance(api, world.wallet["id"]) == (700, 300, 0)
    r = await api.get(f"/v1/reservations/{held['id']}", key="finance")
    assert (r.status_code, r.json()) == (200, held)

    r = await api.post(f"/v1/reservations/{held['id']}/settle", {"amount": 120}, key="runtime")
    assert r.status_code == 200, r.text
    settled = r.json()
    assert settled["reservation_id"] == held["id"]
    assert (settled["requested"], settled["collected"], settled["released"]) == (120, 120, 180)
    assert (settled["overage"], settled["policy"], settled["fallback_debit"]) == (0, "cap", False)
    assert await balance(api, world.wallet["id"]) == (880, 0, 120)
    r = await api.get(f"/v1/reservations/{held['id']}", key="runtime")
    assert r.json()["status"] == "settled"

    r = await api.post("/v1/reservations", world.spend(amount=200), key="runtime")
    other = r.json()
    assert (r.status_code, other["timeout_s"]) == (201, 3600)
    assert await balance(api, world.wallet["id"]) == (680, 200, 120)
    r = await api.post(f"/v1/reservations/{other['id']}/release", None, key="runtime")
    assert r.status_code == 200, r.text
    assert (r.json()["reservation_id"], r.json()["released"]) == (other["id"], 200)
    assert await balance(api, world.wallet["id"]) == (880, 0, 120)
    r = await api.get(f"/v1/reservations/{other['id']}", key="runtime")
    assert r.json()["status"] == "released"


async def test_usage_is_priced_on_debits_reservations_and_settles(api: Api) -> None:
    world = await make_world(api, granted=1000)
    r = await api.post(
        "/v1/prices", {"feature": "gpu-s", "credit_type": world.code, "credits_per_unit": 7}
    )
    assert r.status_code == 201, r.text
    price = r.json()
    assert (price["feature"], price["credit_type"], price["credits_per_unit"]) == (
        "gpu-s",
        world.code,
        7,
    )
    # Now: just before the row was written.
    assert _at(price["effective_at"]) <= _at(price["created_at"])

    r = await api.post(
        "/v1/debits", world.spend(usage={"feature": "gpu-s", "quantity": 3}), key="runtime"
    )
    assert (r.status_code, r.json()["amount"]) == (201, 21)
    r = await api.post(
        "/v1/reservations", world.spend(usage={"feature": "gpu-s", "quantity": 10}), key="runtime"
    )
    assert (r.status_code, r.json()["amount"]) == (201, 70)
    reservation = r.json()["id"]
    r = await api.post(
        f"/v1/reservations/{reservation}/settle",
        {"usage": {"feature": "gpu-s", "quantity": 4}},
        key="runtime",
    )
    assert r.status_code == 200, r.text
    assert (r.json()["collected"], r.json()["released"]) == (28, 42)
    assert await balance(api, world.wallet["id"]) == (1000 - 21 - 28, 0, 49)

    # A new price applies from the next request on.
    r = await api.post(
        "/v1/prices", {"feature": "gpu-s", "credit_type": world.code, "credits_per_unit": 2}
    )
    assert r.status_code == 201, r.text
    r = await api.post(
        "/v1/check",
        world.spend(usage={"feature": "gpu-s", "quantity": 5}),
        key="runtime",
        idem=None,
    )
    assert (r.json()["allowed"], r.json()["amount"]) == (True, 10)


async def test_check_allows_or_names_what_blocks(api: Api) -> None:
    world = await make_world(api, granted=1000)
    r = await api.post("/v1/check", world.spend(amount=400), key="runtime", idem=None)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "allowed": True,
        "reason": None,
        "amount": 400,
        "available": 1000,
        "reserved": 0,
        "overdraft_headroom": 0,
        "budgets": [],
        "would_fund": [{"account_id": world.grant["id"], "kind": "grant", "amount": 400}],
    }
    r = await api.post("/v1/check", world.spend(amount=1001), key="admin", idem=None)
    assert r.status_code == 200, r.text
    assert (r.json()["allowed"], r.json()["reason"], r.json()["available"]) == (
        False,
        "insufficient_credits",
        1000,
    )

    budget = await created(
        api,
        "/v1/budgets",
        {"resource_id": world.team["id"], "credit_type": world.code, "period": "day", "cap": 100},
    )
    r = await api.post("/v1/check", world.spend(amount=150), key="runtime", idem=None)
    body = r.json()
    assert (body["allowed"], body["reason"]) == (False, "budget_exceeded")
    assert body["budgets"] == [
        {
            "budget_id": budget["id"],
            "resource_id": world.team["id"],
            "cap": 100,
            "used": 0,
            "headroom": 100,
            "blocking": True,
        }
    ]
    # A check changes nothing.
    assert await balance(api, world.wallet["id"]) == (1000, 0, 0)


async def test_budget_reports_used_and_headroom(api: Api) -> None:
    world = await make_world(api, granted=1000)
    r = await api.post(
        "/v1/budgets",
        {"resource_id": world.team["id"], "credit_type": world.code, "period": "month", "cap": 500},
    )
    assert r.status_code == 201, r.text
    budget = r.json()
    assert (budget["resource_id"], budget["credit_type"], budget["period"], budget["cap"]) == (
        world.team["id"],
        world.code,
        "month",
        500,
    )
    r = await api.get(f"/v1/budgets/{budget['id']}", key="finance")
    assert (r.status_code, r.json()["used"], r.json()["headroom"]) == (200, 0, 500)
    r = await api.post("/v1/debits", world.spend(amount=120), key="runtime")
    assert r.status_code == 201, r.text
    r = await api.get(f"/v1/budgets/{budget['id']}", key="runtime")
    assert (r.json()["used"], r.json()["headroom"]) == (120, 380)


async def test_entries_page_through_every_movement(api: Api) -> None:
    world = await make_world(api, granted=1000)
    wallet = world.wallet["id"]
    assert (await api.post("/v1/debits", world.spend(amount=100), key="runtime")).status_code == 201
    r = await api.post("/v1/reservations", world.spend(amount=50), key="runtime")
    reservation = r.json()["id"]
    r = await api.post(f"/v1/reservations/{reservation}/settle", {"amount": 20}, key="runtime")
    assert r.status_code == 200, r.text
    r = await api.post("/v1/reservations", world.spend(amount=10), key="runtime")
    r = await api.post(f"/v1/reservations/{r.json()['id']}/release", None, key="runtime")
    assert r.status_code == 200, r.text

    r = await api.get(f"/v1/wallets/{wallet}/entries?limit=1000", key="finance")
    everything = r.json()
    assert everything["next_cursor"] is None
    entries = everything["entries"]
    assert [(e["type"], e["amount"]) for e in entries] == [
        ("grant", 1000),
        ("debit", -100),
        ("reserve", -50),
        ("settle", -20),
        ("reserve", -10),
        ("release", 10),
    ]
    assert [e["available_after"] for e in entries] == [1000, 900, 850, 880, 870, 880]
    assert [e["held_after"] for e in entries] == [0, 0, 50, 0, 10, 0]
    assert entries[-1]["available_after"] == (await balance(api, wallet))[0]
    assert all(e["account_id"] == world.grant["id"] for e in entries)
    assert all(e["account_kind"] == "grant" for e in entries)
    # Times are RFC 3339, UTC, to the nanosecond: as text they sort as the instants do.
    times = [e["at"] for e in entries]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", t) for t in times)
    assert times == sorted(times) and len(set(times)) == len(times)

    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        query = "limit=4" + (f"&cursor={cursor}" if cursor else "")
        r = await api.get(f"/v1/wallets/{wallet}/entries?{query}", key="runtime")
        assert r.status_code == 200, r.text
        pages.append(r.json()["entries"])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [4, 2]
    assert [e for page in pages for e in page] == entries

    r = await api.get(f"/v1/wallets/{wallet}/entries?type=reserve&type=release", key="finance")
    assert [(e["type"], e["available_after"]) for e in r.json()["entries"]] == [
        ("reserve", 850),
        ("reserve", 870),
        ("release", 880),
    ]
    r = await api.get(f"/v1/wallets/{wallet}/entries?type=settle&limit=1", key="finance")
    assert [e["type"] for e in r.json()["entries"]] == ["settle"]
    assert r.json()["next_cursor"] is None


async def test_health_readiness_metrics_and_schema(api: Api) -> None:
    r = await api.client.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    r = await api.client.get("/readyz")
    assert (r.status_code, r.json()["status"]) == (200, "ready")
    projection = r.json()["projection"]
    assert set(projection) == {"lag_s", "watermark_ts"}
    world = await make_world(api)
    assert (await api.post("/v1/debits", world.spend(amount=1), key="runtime")).status_code == 201
    assert (
        await api.post("/v1/debits", world.spend(amount=10**6), key="runtime")
    ).status_code == 402
    assert (await api.get(f"/v1/wallets/{world.wallet['id']}")).status_code == 200
    r = await api.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'http_requests_total{method="POST",route="/v1/debits",status="201"} 1.0' in text
    assert 'http_requests_total{method="POST",route="/v1/debits",status="402"} 1.0' in text
    # Routes are labelled by their template, not by each object's id.
    assert 'route="/v1/wallets/{wallet_id}"' in text
    assert world.wallet["id"] not in text
    assert 'credit_decisions_total{operation="debit",outcome="ok"} 1.0' in text
    assert 'credit_decisions_total{operation="debit",outcome="insufficient_credits"} 1.0' in text
    assert 'http_request_seconds_count{method="POST",route="/v1/debits"} 2.0' in text
    r = await api.client.get("/schema/openapi.json")
    assert r.status_code == 200
    assert r.json()["openapi"].startswith("3.") and "/v1/reservations" in r.json()["paths"]


async def test_metrics_report_engine_latency(api: Api) -> None:
    world = await make_world(api)
    assert (await api.post("/v1/debits", world.spend(amount=1), key="runtime")).status_code == 201
    text = (await api.client.get("/metrics")).text
    assert re.search(r'credit_engine_request_seconds_count\{method="[a-z_]+"\} [1-9]', text)


async def test_entries_refuse_what_they_do_not_know(api: Api) -> None:
    world = await make_world(api, granted=100)
    path = f"/v1/wallets/{world.wallet['id']}/entries"
    for query, field in (
        ("type=debitt", "type"),
        ("type=debit&type=nope", "type"),
        ("kind=debit", "kind"),
        ("limit=10&colour=red", "colour"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=12345", "cursor"),
        ("limit=0", "limit"),
    ):
        assert_problem(
            await api.get(f"{path}?{query}", key="finance"), "validation_error", field=field
        )
    r = await api.get(f"{path}?type=grant&type=debit", key="finance")
    assert [e["type"] for e in r.json()["entries"]] == ["grant"]


async def test_a_wallet_reads_what_a_spend_would_find(api: Api) -> None:
    world = await make_world(api, granted=100)
    wallet = world.wallet["id"]
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    later = await created(
        api,
        "/v1/grants",
        {"wallet_id": wallet, "amount": 50, "category": "promotional", "effective_at": tomorrow},
    )
    r = await api.get(f"/v1/wallets/{wallet}", key="finance")
    body = r.json()
    assert (body["available"], body["upcoming"], body["held"]) == (100, 50, 0)
    assert (body["overdraft_used"], body["overdraft_held"], body["overdraft_limit"]) == (0, 0, 0)
    assert body["overdraft_headroom"] == 0
    states = {g["grant_id"]: (g["state"], g["available"], g["upcoming"]) for g in body["grants"]}
    assert states == {world.grant["id"]: ("active", 100, 0), later["id"]: ("upcoming", 0, 50)}
    r = await api.get(f"/v1/grants/{later['id']}", key="finance")
    assert (r.json()["state"], r.json()["upcoming"]) == ("upcoming", 50)
    check = await api.post("/v1/check", world.spend(amount=101), key="runtime", idem=None)
    assert (check.json()["allowed"], check.json()["available"]) == (False, 100)
