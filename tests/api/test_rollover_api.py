"""Rollover through HTTP on a test clock: a grant with a policy, the rollover block at its
expiry (linked to its source, its state on reads), and the refusals of a bad policy."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api
from tests.api.support import assert_problem, created, make_world

pytestmark = pytest.mark.anyio


async def test_a_grant_rolls_over_at_its_expiry(clocked_api: Api) -> None:
    api = clocked_api
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
            "expires_at": "2025-01-31T00:00:00Z",
            "rollover": {
                "max_credits": 40,
                "min_credits": 10,
                "expires_at": "2025-02-28T00:00:00Z",
            },
        },
    )
    read = (await api.get(f"/v1/grants/{grant['id']}")).json()
    assert read["rollover"] == {
        "max_credits": 40,
        "min_credits": 10,
        "expires_at": "2025-02-28T00:00:00Z",
        "state": "due",
    }
    assert read["source_grant_id"] is None
    r = await api.post("/v1/test-clock/advance", {"to": "2025-01-31T00:00:00Z"}, idem=None)
    assert r.status_code == 200, r.text
    read = (await api.get(f"/v1/grants/{grant['id']}")).json()
    assert read["rollover"]["state"] == "done"
    assert (read["expired"], read["rolled_over"], read["state"]) == (60, 40, "expired")
    assert read["granted"] == 100
    page = (await api.get(f"/v1/grants?wallet_id={world.wallet['id']}")).json()
    (rolled,) = [g for g in page["items"] if g["source"] == "rollover"]
    assert rolled["source_grant_id"] == grant["id"]
    assert (rolled["amount"], rolled["consideration_minor"], rolled["state"]) == (40, 400, "active")
    assert rolled["expires_at"] == "2025-02-28T00:00:00Z"
    assert rolled["effective_at"] == "2025-01-31T00:00:00Z"
    detail = (await api.get(f"/v1/grants/{rolled['id']}")).json()
    assert (detail["available"], detail["granted"]) == (40, 40)
    # The wallet's statement: the source's 60 + 40 left `available` at its expiry, the 40 came
    # back on the rollover block; every entry's figures follow from the one before.
    r = await api.get(f"/v1/wallets/{world.wallet['id']}/entries")
    assert r.status_code == 200, r.text
    entries = r.json()["entries"]
    assert [(e["type"], e["amount"], e["available_after"]) for e in entries] == [
        ("grant", 10, 10),
        ("grant", 100, 110),
        ("expire", -100, 10),
        ("rollover", 40, 50),
    ]
    (entry,) = [e for e in entries if e["type"] == "rollover"]
    assert entry["amount"] == 40
    assert entries[-1]["available_after"] == 10 + 40
    wallet = (await api.get(f"/v1/wallets/{world.wallet['id']}")).json()
    assert wallet["available"] == 10 + 40


@pytest.mark.parametrize(
    ("rollover", "expires_at", "field"),
    [
        ({"max_credits": 5, "min_credits": 6}, "2025-01-31T00:00:00Z", "rollover.max_credits"),
        ({"max_credits": -1}, "2025-01-31T00:00:00Z", "rollover.max_credits"),
        ({"max_credits": 5, "min_credits": -1}, "2025-01-31T00:00:00Z", "rollover.min_credits"),
        ({"max_credits": 5, "at": "2025-01-30T00:00:00Z"}, "2025-01-31T00:00:00Z", None),
        ({"max_credits": 5}, None, "rollover"),
    ],
)
async def test_a_bad_policy_is_refused(
    clocked_api: Api, rollover: dict[str, Any], expires_at: str | None, field: str | None
) -> None:
    api = clocked_api
    world = await make_world(api, granted=10)
    policy = {"expires_at": rollover.pop("at", "2025-03-01T00:00:00Z"), **rollover}
    body: dict[str, Any] = {
        "wallet_id": world.wallet["id"],
        "amount": 10,
        "category": "promotional",
        "rollover": policy,
    }
    if expires_at is not None:
        body["expires_at"] = expires_at
    r = await api.post("/v1/grants", body)
    assert_problem(r, "invalid_rollover_policy", field=field or "rollover.expires_at")
