"""The main flows over HTTP: catalog, grants, debits, reservations, check, errors, replays."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api

pytestmark = pytest.mark.anyio


async def _world(api: Api) -> dict[str, Any]:
    code = f"cr{api.seq}"
    r = await api.post("/v1/credit-types", {"code": code, "name": "Credits", "asset_scale": 2})
    assert r.status_code == 201, r.text
    r = await api.post("/v1/customers", {"name": "Acme"})
    assert r.status_code == 201, r.text
    customer = r.json()
    r = await api.post("/v1/resources", {"customer_id": customer["id"], "kind": "team"})
    assert r.status_code == 201, r.text
    team = r.json()
    r = await api.post(
        "/v1/resources", {"customer_id": customer["id"], "kind": "agent", "parent_id": team["id"]}
    )
    agent = r.json()
    r = await api.post("/v1/wallets", {"resource_id": agent["id"], "credit_type": code})
    assert r.status_code == 201, r.text
    wallet = r.json()
    r = await api.post(
        "/v1/grants",
        {
            "wallet_id": wallet["id"],
            "amount": 1000,
            "category": "paid",
            "consideration_minor": 10000,
            "currency": "USD",
        },
    )
    assert r.status_code == 201, r.text
    return {
        "code": code,
        "customer": customer,
        "team": team,
        "agent": agent,
        "wallet": wallet,
        "grant": r.json(),
    }


async def test_reserve_settle_and_balances(api: Api) -> None:
    world = await _world(api)
    spend = {"resource_id": world["agent"]["id"], "credit_type": world["code"]}
    r = await api.post("/v1/reservations", {**spend, "amount": 300, "timeout_s": 60}, key="runtime")
    assert r.status_code == 201, r.text
    reservation = r.json()
    assert reservation["funded_by"] == [
        {"account_id": world["grant"]["id"], "kind": "grant", "amount": 300}
    ]
    r = await api.get(f"/v1/reservations/{reservation['id']}", key="runtime")
    assert r.json()["status"] == "held"
    r = await api.post(
        f"/v1/reservations/{reservation['id']}/settle", {"amount": 120}, key="runtime"
    )
    assert r.status_code == 200, r.text
    assert (r.json()["collected"], r.json()["released"]) == (120, 180)
    r = await api.get(f"/v1/reservations/{reservation['id']}", key="runtime")
    assert r.json()["status"] == "settled"
    r = await api.get(f"/v1/wallets/{world['wallet']['id']}", key="finance")
    assert r.status_code == 200, r.text
    assert (r.json()["available"], r.json()["consumed"], r.json()["held"]) == (880, 120, 0)
    r = await api.get(f"/v1/wallets/{world['wallet']['id']}/entries?limit=2", key="finance")
    page = r.json()
    assert [e["type"] for e in page["entries"]] == ["grant", "reserve"]
    r = await api.get(
        f"/v1/wallets/{world['wallet']['id']}/entries?cursor={page['next_cursor']}", key="finance"
    )
    assert [e["type"] for e in r.json()["entries"]] == ["settle"]


async def test_debit_replay_conflict_and_refusal(api: Api) -> None:
    world = await _world(api)
    body = {"resource_id": world["agent"]["id"], "credit_type": world["code"], "amount": 400}
    first = await api.post("/v1/debits", body, key="runtime", idem=api.k("d1"))
    assert first.status_code == 201 and "Idempotency-Hit" not in first.headers
    again = await api.post("/v1/debits", body, key="runtime", idem=api.k("d1"))
    assert again.status_code == 201 and again.headers["Idempotency-Hit"] == "true"
    assert again.json() == first.json()
    conflict = await api.post(
        "/v1/debits", {**body, "amount": 401}, key="runtime", idem=api.k("d1")
    )
    assert conflict.status_code == 409
    assert conflict.json()["code"] == "idempotency_conflict"
    assert conflict.headers["content-type"].startswith("application/problem+json")
    refused = await api.post("/v1/debits", {**body, "amount": 700}, key="runtime", idem=api.k("d2"))
    assert refused.status_code == 402, refused.text
    assert (refused.json()["code"], refused.json()["available"]) == ("insufficient_credits", 600)
    assert (refused.json()["needed"]) == 700
    r = await api.post("/v1/check", {**body, "amount": 600}, key="runtime")
    assert r.json()["allowed"] is True


async def test_errors_are_problems_with_stable_codes(api: Api) -> None:
    world = await _world(api)
    body = {"resource_id": world["agent"]["id"], "credit_type": world["code"], "amount": 1}
    r = await api.client.post("/v1/debits", json=body)
    assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
    r = await api.post("/v1/debits", body, key="finance")
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    r = await api.post("/v1/debits", body, key="runtime", idem=None)
    assert (r.status_code, r.json()["code"], r.json()["field"]) == (
        422,
        "validation_error",
        "Idempotency-Key",
    )
    for bad in (
        {**body, "amount": 0},
        {**body, "amount": 2**63},
        {**body, "amount": "1"},
        {**body, "surprise": 1},
        {**body, "resource_id": "nope"},
    ):
        r = await api.post("/v1/debits", bad, key="runtime")
        assert (r.status_code, r.json().get("code")) == (422, "validation_error"), (bad, r.text)
    r = await api.get("/v1/wallets/00000000-0000-0000-0000-000000000001", key="runtime")
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    r = await api.get(f"/v1/wallets/{world['wallet']['id']}", key="runtime")
    assert r.json()["available"] == 1000  # nothing moved by the bad requests
    r = await api.client.post(
        "/v1/debits", content=b"x" * (2 * 1024 * 1024), headers=api.headers("runtime", api.k("big"))
    )
    assert (r.status_code, r.json()["code"]) == (413, "payload_too_large")


async def test_health_metrics_and_schema(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    r = await api.client.get("/readyz")
    assert (r.status_code, r.json()["status"]) == (200, "ready")
    await api.client.get("/healthz")
    r = await api.client.get("/metrics")
    assert "http_requests_total" in r.text and 'route="/healthz"' in r.text
    schema = (await api.client.get("/schema/openapi.json")).json()
    assert "/v1/debits" in schema["paths"]
