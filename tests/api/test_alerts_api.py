"""Thresholds, top-up rules and top-ups through the HTTP API: admin scope, Idempotency-Key,
audit, stable problem codes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from credit_ledger_client import AsyncCreditClient, NotFoundError
from credit_ledger_client.schemas import TopUpRuleIn, WalletThresholdIn

from ledger import db
from tests.api.conftest import Api
from tests.api.support import assert_problem, created, make_world

pytestmark = pytest.mark.anyio


async def _audited(pool: db.Pool, action: str) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT count(*) FROM audit_log WHERE action = %s", (action,))
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_wallet_thresholds(api: Api, pool: db.Pool) -> None:
    world = await make_world(api)
    path = f"/v1/wallets/{world.wallet['id']}/thresholds"
    made = await created(api, path, {"amount": 100})
    assert made["amount"] == 100 and made["wallet_id"] == world.wallet["id"]
    share = await created(api, path, {"percent_of_allocation": 20})
    assert share["percent_of_allocation"] == 20 and share["amount"] is None
    again = await api.post(path, {"amount": 100}, idem="same")
    replay = await api.post(path, {"amount": 100}, idem="same")
    assert replay.status_code == 201 and replay.headers.get("Idempotency-Hit") == "true"
    assert replay.json() == again.json()
    r = await api.post(path, {"amount": 100, "percent_of_allocation": 5})
    assert_problem(r, "validation_error")
    r = await api.post(path, {})
    assert_problem(r, "validation_error")
    r = await api.post(path, {"amount": 5}, key="runtime")
    assert r.status_code == 403
    listed = (await api.get(path)).json()["items"]
    assert [t["id"] for t in listed] == [made["id"], share["id"], again.json()["id"]]
    r = await api.client.delete(f"{path}/{made['id']}", headers=api.headers(idem="rm"))
    assert r.status_code == 200, r.text
    r = await api.client.delete(f"{path}/{made['id']}", headers=api.headers(idem="rm2"))
    assert_problem(r, "not_found")
    assert len((await api.get(path)).json()["items"]) == 2
    assert await _audited(pool, "threshold.create") == 3
    assert await _audited(pool, "threshold.remove") == 1
    for n in range(14):  # 16 in force
        await created(api, path, {"amount": 10 + n})
    r = await api.post(path, {"amount": 5})
    assert_problem(r, "too_many_thresholds")


async def test_budget_thresholds(api: Api) -> None:
    world = await make_world(api)
    budget = await created(
        api,
        "/v1/budgets",
        {"resource_id": world.agent["id"], "credit_type": world.code, "period": "day", "cap": 10},
    )
    path = f"/v1/budgets/{budget['id']}/thresholds"
    made = await created(api, path, {"percent": 80})
    assert made["percent"] == 80 and made["budget_id"] == budget["id"]
    r = await api.post(path, {"percent": 101})
    assert_problem(r, "validation_error")
    r = await api.post(path, {"amount": 5})
    assert_problem(r, "validation_error")
    assert len((await api.get(path)).json()["items"]) == 1
    r = await api.post(
        "/v1/budgets/00000000-0000-0000-0000-000000000001/thresholds", {"percent": 5}
    )
    assert_problem(r, "not_found")


async def test_top_up_rule(api: Api, pool: db.Pool) -> None:
    world = await make_world(api)
    path = f"/v1/wallets/{world.wallet['id']}/top-up"
    r = await api.get(path)
    assert_problem(r, "not_found")
    rule: dict[str, Any] = {
        "threshold": 100,
        "amount": 1000,
        "consideration_minor": 999,
        "currency": "USD",
        "daily_max": 2,
        "expires_in_days": 30,
    }
    r = await api.client.put(path, json=rule, headers=api.headers(idem="put1"))
    assert r.status_code == 200, r.text
    assert r.json()["threshold"] == 100 and r.json()["enabled"] is True
    r = await api.client.put(path, json=rule, headers=api.headers(idem="put1"))
    assert r.headers.get("Idempotency-Hit") == "true"
    r = await api.client.put(path, json={**rule, "currency": "usd"}, headers=api.headers(idem="x"))
    assert_problem(r, "validation_error")
    got = (await api.get(path)).json()
    assert got["amount"] == 1000 and got["expires_in_days"] == 30
    r = await api.get(f"/v1/wallets/{world.wallet['id']}/top-ups")
    assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None}
    r = await api.client.delete(path, headers=api.headers(idem="del1"))
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert_problem(await api.get(path), "not_found")
    assert await _audited(pool, "top_up_rule.set") == 1
    assert await _audited(pool, "top_up_rule.remove") == 1


async def test_the_python_client(api: Api) -> None:
    world = await make_world(api)
    wallet = world.wallet["id"]
    transport = httpx.ASGITransport(app=api.app)  # type: ignore[arg-type]
    async with AsyncCreditClient(
        "http://testserver", api.keys["admin"], transport=transport
    ) as client:
        made = await client.create_wallet_threshold(wallet, WalletThresholdIn(amount=50))
        assert made.amount == 50 and made.wallet_id == wallet
        listed = await client.list_wallet_thresholds(wallet)
        assert [t.id for t in listed.items] == [made.id]
        removed = await client.remove_wallet_threshold(wallet, made.id)
        assert removed.id == made.id
        rule = await client.set_top_up_rule(
            wallet,
            TopUpRuleIn(
                threshold=10, amount=100, consideration_minor=100, currency="USD", daily_max=2
            ),
        )
        assert rule.enabled and (await client.get_top_up_rule(wallet)).amount == 100
        assert [t async for t in client.iter_top_ups(wallet)] == []
        assert not (await client.remove_top_up_rule(wallet)).enabled
        with pytest.raises(NotFoundError):
            await client.get_top_up_rule(wallet)
