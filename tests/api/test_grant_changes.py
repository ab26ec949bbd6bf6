"""Changes of a grant after its issue through the HTTP API: a void of part of it (POST
/v1/grants/{id}/void with an amount) and a new expiry (POST /v1/grants/{id}/expiry), on a
sandbox's test clock; and the Python client's methods for them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.conftest import Api
from tests.api.support import assert_problem, balance, created, make_world

pytestmark = pytest.mark.anyio


async def _grant(api: Api, grant_id: str) -> dict[str, Any]:
    r = await api.get(f"/v1/grants/{grant_id}", key="finance")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_a_void_of_part_of_a_grant_and_its_refusals(api: Api) -> None:
    world = await make_world(api, granted=1000)
    grant = world.grant["id"]
    r = await api.post("/v1/reservations", world.spend(amount=200), key="runtime")
    assert r.status_code == 201, r.text
    r = await api.post(f"/v1/grants/{grant}/void", {"amount": 300}, idem="part")
    assert r.status_code == 200, r.text
    assert r.json() == {"grant_id": grant, "voided": 300}
    again = await api.post(f"/v1/grants/{grant}/void", {"amount": 300}, idem="part")
    assert (again.json(), again.headers.get("Idempotency-Hit")) == (r.json(), "true")
    other = await api.post(f"/v1/grants/{grant}/void", {"amount": 301}, idem="part")
    assert_problem(other, "idempotency_conflict")
    block = await _grant(api, grant)
    assert (block["state"], block["available"], block["held"], block["voided"]) == (
        "active",
        500,
        200,
        300,
    )
    r = await api.get(f"/v1/wallets/{world.wallet['id']}/entries", key="finance")
    assert r.status_code == 200, r.text
    entries = [(e["type"], e["amount"], e["available_after"]) for e in r.json()["entries"]]
    assert entries[-1] == ("void", -300, 500), entries
    r = await api.post(f"/v1/grants/{grant}/void", {"amount": 501})
    assert_problem(r, "void_exceeds_available", available=500, field="amount")
    r = await api.post(f"/v1/grants/{grant}/void", {"amount": 0})
    assert_problem(r, "validation_error")
    assert await balance(api, world.wallet["id"]) == (500, 200, 0)
    # Without a body, as before: all that is left, and the grant is voided.
    r = await api.post(f"/v1/grants/{grant}/void", None)
    assert r.status_code == 200, r.text
    assert r.json()["voided"] == 500
    assert (await _grant(api, grant))["state"] == "voided"
    r = await api.post(f"/v1/grants/{grant}/void", {"amount": 1})
    assert_problem(r, "grant_not_changeable", state="voided")
    # Voiding all of it again (another key) is the same refusal, not a 404 for a grant that is
    # there to read.
    r = await api.post(f"/v1/grants/{grant}/void", None)
    assert_problem(r, "grant_not_changeable", state="voided")


async def test_a_new_expiry_through_the_api_on_a_test_clock(clocked_api: Api) -> None:
    api = clocked_api  # 2025-01-01T00:00:00Z
    world = await make_world(api, granted=1000)
    grant = await created(
        api,
        "/v1/grants",
        {
            "wallet_id": world.wallet["id"],
            "amount": 500,
            "category": "promotional",
            "expires_at": "2025-01-02T00:00:00Z",
        },
    )
    path = f"/v1/grants/{grant['id']}/expiry"
    r = await api.post(path, {"expires_at": "2025-03-01T00:00:00Z", "reason": "courtesy"}, idem="x")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "grant_id": grant["id"],
        "expires_at": "2025-03-01T00:00:00Z",
        "previous_expires_at": "2025-01-02T00:00:00Z",
    }
    again = await api.post(
        path, {"expires_at": "2025-03-01T00:00:00Z", "reason": "courtesy"}, idem="x"
    )
    assert again.headers.get("Idempotency-Hit") == "true"
    assert (await _grant(api, grant["id"]))["expires_at"] == "2025-03-01T00:00:00Z"
    # Past the old expiry, the block is still there (the clock's sweep left it alone).
    r = await api.post("/v1/test-clock/advance", {"to": "2025-01-05T00:00:00Z"}, idem=None)
    assert r.status_code == 200, r.text
    assert (await _grant(api, grant["id"]))["state"] == "active"
    assert await balance(api, world.wallet["id"]) == (1500, 0, 0)
    # Refusals.
    r = await api.post(path, {"expires_at": "2025-01-04T00:00:00Z"})
    assert_problem(r, "expiry_in_past", field="expires_at")
    r = await api.post(path, {"expires_at": "2024-12-31T00:00:00Z"})
    assert r.status_code == 422  # before effective_at too (either code names the field)
    r = await api.post(path, {"reason": "no expires_at"})
    assert_problem(r, "validation_error")
    # Never, then shortened again: swept at the new expiry.
    r = await api.post(path, {"expires_at": None})
    assert r.status_code == 200 and r.json()["expires_at"] is None, r.text
    r = await api.post(path, {"expires_at": "2025-01-06T00:00:00Z"})
    assert r.status_code == 200, r.text
    r = await api.post("/v1/test-clock/advance", {"to": "2025-01-06T00:00:00Z"}, idem=None)
    assert r.status_code == 200, r.text
    block = await _grant(api, grant["id"])
    assert (block["state"], block["expired"]) == ("expired", 500)
    r = await api.post(path, {"expires_at": "2026-01-01T00:00:00Z"})
    assert_problem(r, "grant_not_changeable", state="expired")
    r = await api.post(path, {"expires_at": None}, key="runtime")
    assert r.status_code == 403


async def test_a_new_expiry_the_rollover_policy_cannot_follow_is_refused_in_words(
    clocked_api: Api,
) -> None:
    """A grant that rolls over into a block expiring at R cannot be given an expiry at or after
    R, nor none at all: 422 invalid_rollover_policy naming expires_at, not a database
    constraint's name; the grant keeps its expiry. One before R is taken."""
    api = clocked_api  # 2025-01-01T00:00:00Z
    world = await make_world(api, granted=10)
    grant = await created(
        api,
        "/v1/grants",
        {
            "wallet_id": world.wallet["id"],
            "amount": 100,
            "category": "paid",
            "consideration_minor": 1000,
            "currency": "USD",
            "expires_at": "2025-02-01T00:00:00Z",
            "rollover": {"max_credits": 40, "expires_at": "2025-03-01T00:00:00Z"},
        },
    )
    path = f"/v1/grants/{grant['id']}/expiry"
    for expires_at in ("2025-03-01T00:00:00Z", "2025-04-01T00:00:00Z", None):
        r = await api.post(path, {"expires_at": expires_at})
        problem = assert_problem(r, "invalid_rollover_policy", field="expires_at")
        assert "constraint" not in problem and "constraint" not in problem["detail"], problem
    assert (await _grant(api, grant["id"]))["expires_at"] == "2025-02-01T00:00:00Z"
    r = await api.post(path, {"expires_at": "2025-02-15T00:00:00Z"})
    assert r.status_code == 200, r.text


async def test_the_python_client_voids_part_and_changes_the_expiry(api: Api) -> None:
    import datetime as dt

    from credit_ledger_client import (
        AsyncCreditClient,
        ExpiryRefusedError,
        VoidExceedsAvailableError,
    )
    from credit_ledger_client.schemas import GrantExpiryIn, VoidIn

    world = await make_world(api, granted=1000)
    grant = world.grant["id"]
    transport = httpx.ASGITransport(app=api.app)  # type: ignore[arg-type]
    async with AsyncCreditClient(
        "http://testserver", api.keys["admin"], transport=transport
    ) as client:
        out = await client.void_grant(grant, VoidIn(amount=100), idempotency_key="c-void")
        assert (out.grant_id, out.voided) == (grant, 100)
        with pytest.raises(VoidExceedsAvailableError) as refused:
            await client.void_grant(grant, VoidIn(amount=901), idempotency_key="c-void2")
        assert refused.value.available == 900
        later = dt.datetime(2040, 1, 1, tzinfo=dt.UTC)
        changed = await client.change_grant_expiry(
            grant, GrantExpiryIn(expires_at=later), idempotency_key="c-exp"
        )
        assert (changed.expires_at, changed.previous_expires_at) == (later, None)
        with pytest.raises(ExpiryRefusedError) as bad:
            await client.change_grant_expiry(
                grant,
                GrantExpiryIn(expires_at=dt.datetime(2001, 1, 1, tzinfo=dt.UTC)),
                idempotency_key="c-exp2",
            )
        assert bad.value.code == "expiry_not_after_effective"  # 2001: before its effective_at
