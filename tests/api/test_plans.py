"""Plans and subscriptions through HTTP, on a sandbox's test clock: a subscription started on
the 31st gets its credits on the last day of shorter months as the clock moves, a change of plan
grants the prorated difference, and bad input gets clear problems."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from credit_ledger_client import (
    AlreadySubscribedError,
    AsyncCreditClient,
    SubscriptionCancelledError,
)
from credit_ledger_client.schemas import (
    Category,
    ChangePlanIn,
    PlanAllocationIn,
    PlanIn,
    PlanPeriod,
    PlanRolloverIn,
    SubscriptionIn,
    SubscriptionQuery,
    SubscriptionState,
)

from ledger import db
from tests.api.conftest import Api
from tests.api.support import assert_problem, balance, bound_key, created

pytestmark = pytest.mark.anyio


@pytest.fixture
def migrated_db_url(fresh_db_url: Callable[..., str], template_db: str) -> str:
    """A database of each test's own: an advance allocates every subscription it finds, and
    another test's engine holds none of this one's accounts."""
    return fresh_db_url(template_db)


async def _advance(api: Api, to: str) -> None:
    r = await api.post("/v1/test-clock/advance", {"to": to}, idem=None)
    assert r.status_code == 200, r.text


async def _setup(api: Api) -> tuple[str, str]:
    code = f"pc{api.seq}"
    assert (await api.post("/v1/credit-types", {"code": code, "name": "C"})).status_code == 201
    customer = await created(api, "/v1/customers", {"name": "Acme"})
    resource = await created(
        api, "/v1/resources", {"customer_id": customer["id"], "kind": "subscription"}
    )
    return code, resource["id"]


def _plan(code: str, name: str, amount: int, **extra: Any) -> dict[str, Any]:
    allocation = {"credit_type": code, "amount": amount, "period": "month", "category": "paid"}
    allocation |= {"consideration_minor": amount * 10, "currency": "USD"}
    return {"code": name, "name": name.title(), "allocations": [allocation], **extra}


async def _wallet(api: Api, resource_id: str) -> str:
    r = await api.get(f"/v1/wallets?resource_id={resource_id}")
    assert r.status_code == 200, r.text
    (wallet,) = r.json()["items"]
    return str(wallet["id"])


async def test_a_subscription_on_the_31st_renews_at_month_ends(clocked_api: Api) -> None:
    api = clocked_api
    code, resource = await _setup(api)
    plan = await created(api, "/v1/plans", _plan(code, f"basic{api.seq}", 1000))
    assert plan["allocations"][0]["period"] == "month"
    assert (await api.get(f"/v1/plans/{plan['id']}")).json() == plan
    body = {"resource_id": resource, "plan_id": plan["id"], "start": "2025-01-31T00:00:00Z"}
    r = await api.post("/v1/subscriptions", body, idem="sub-1")
    assert r.status_code == 201, r.text
    sub = r.json()
    assert sub["state"] == "active" and sub["allocations"] == []  # its start is to come
    again = await api.post("/v1/subscriptions", body, idem="sub-1")
    assert again.headers.get("Idempotency-Hit") == "true" and again.json()["id"] == sub["id"]
    wallet = await _wallet(api, resource)  # made by the subscription

    await _advance(api, "2025-01-31T12:00:00Z")
    assert (await balance(api, wallet))[0] == 1000
    # Past two month ends at once: February's is on the 28th, March's on the 31st.
    await _advance(api, "2025-04-01T00:00:00Z")
    assert (await balance(api, wallet))[0] == 1000  # only March's is still in force
    r = await api.get(f"/v1/subscriptions/{sub['id']}")
    assert r.status_code == 200, r.text
    got = r.json()
    assert [(a["period_start"], a["expires_at"]) for a in got["allocations"]] == [
        ("2025-01-31T00:00:00Z", "2025-02-28T00:00:00Z"),
        ("2025-02-28T00:00:00Z", "2025-03-31T00:00:00Z"),
        ("2025-03-31T00:00:00Z", "2025-04-30T00:00:00Z"),
    ]
    assert {a["state"] for a in got["allocations"]} == {"done"}
    assert got["next_allocation_at"] == "2025-04-30T00:00:00Z"
    grant = await api.get(f"/v1/grants/{got['allocations'][1]['grant_id']}")
    assert grant.json()["source"] == "plan_allocation"
    assert grant.json()["consideration_minor"] == 10000

    # An upgrade on Apr 15, prorated: half of April is left (Mar 31 .. Apr 30).
    await _advance(api, "2025-04-15T00:00:00Z")
    pro = await created(api, "/v1/plans", _plan(code, f"pro{api.seq}", 3000, prorate=True))
    r = await api.post(f"/v1/subscriptions/{sub['id']}/change-plan", {"plan_id": pro["id"]})
    assert r.status_code == 200, r.text
    (change,) = [a for a in r.json()["allocations"] if a["kind"] == "change"]
    assert (change["amount"], change["expires_at"]) == (1000, "2025-04-30T00:00:00Z")
    assert (await balance(api, wallet))[0] == 2000
    await _advance(api, "2025-05-01T00:00:00Z")
    assert (await balance(api, wallet))[0] == 3000  # the new plan's May

    r = await api.post(f"/v1/subscriptions/{sub['id']}/pause", None)
    assert r.status_code == 200 and r.json()["state"] == "paused", r.text
    r = await api.post(f"/v1/subscriptions/{sub['id']}/cancel", None)
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    await _advance(api, "2025-06-15T00:00:00Z")
    r = await api.get(f"/v1/subscriptions/{sub['id']}")
    assert len(r.json()["allocations"]) == 5  # nothing after the cancellation
    assert_problem(
        await api.post(f"/v1/subscriptions/{sub['id']}/resume", None), "subscription_cancelled"
    )


async def test_bad_input_gets_clear_problems(clocked_api: Api) -> None:
    api = clocked_api
    code, resource = await _setup(api)
    unpaid = _plan(code, f"x{api.seq}", 10)
    del unpaid["allocations"][0]["currency"]
    assert_problem(
        await api.post("/v1/plans", unpaid), "validation_error", field="allocations[0].currency"
    )
    weird = _plan(code, f"y{api.seq}", 10)
    weird["allocations"][0]["period"] = "fortnight"
    assert_problem(await api.post("/v1/plans", weird), "validation_error")
    twice = _plan(code, f"z{api.seq}", 10)
    twice["allocations"] *= 2
    assert_problem(await api.post("/v1/plans", twice), "validation_error", field="allocations")
    nope = _plan("nope", f"w{api.seq}", 10)
    assert_problem(await api.post("/v1/plans", nope), "not_found")
    plan = await created(api, "/v1/plans", _plan(code, f"ok{api.seq}", 10))
    assert_problem(await api.post("/v1/plans", _plan(code, f"ok{api.seq}", 10)), "conflict")
    missing = "0190c3a1-7f3e-7a41-9a6e-1d2c3b4a5f60"
    body = {"resource_id": resource, "plan_id": missing}
    assert_problem(await api.post("/v1/subscriptions", body), "not_found", field="plan_id")
    assert_problem(await api.get(f"/v1/subscriptions/{missing}"), "not_found")
    sub = await created(api, "/v1/subscriptions", {"resource_id": resource, "plan_id": plan["id"]})
    assert len(sub["allocations"]) == 1  # from now: the first period is allocated at once
    path = f"/v1/subscriptions/{sub['id']}"
    assert_problem(await api.post(f"{path}/change-plan", {"plan_id": plan["id"]}), "conflict")
    assert_problem(await api.post(f"{path}/resume", None), "conflict")
    assert (await api.post(f"{path}/cancel", None)).status_code == 200
    assert_problem(await api.post(f"{path}/cancel", None), "subscription_cancelled")
    assert_problem(await api.post(f"{path}/pause", None, idem=None), "validation_error")
    listed = await api.get("/v1/plans?limit=1")
    assert listed.status_code == 200 and len(listed.json()["items"]) == 1


async def test_the_python_client_drives_plans_and_subscriptions(clocked_api: Api) -> None:
    api = clocked_api
    code, resource = await _setup(api)
    transport = httpx.ASGITransport(app=api.app)
    client = AsyncCreditClient("http://testserver", api.keys["admin"], transport=transport)
    try:
        allocation = PlanAllocationIn(
            credit_type=code,
            amount=50,
            period=PlanPeriod.WEEK,
            category=Category.PROMOTIONAL,
            rollover=PlanRolloverIn(max_credits=10),
        )
        plan = await client.create_plan(
            PlanIn(code=f"weekly{api.seq}", name="Weekly", allocations=[allocation])
        )
        assert plan.allocations[0].rollover is not None
        assert [p.id async for p in client.iter_plans()] == [plan.id]
        sub = await client.subscribe(SubscriptionIn(resource_id=resource, plan_id=plan.id))
        assert [a.amount for a in sub.allocations] == [50]
        with pytest.raises(AlreadySubscribedError) as caught:
            await client.subscribe(SubscriptionIn(resource_id=resource, plan_id=plan.id))
        assert caught.value.subscription_id == sub.id
        query = SubscriptionQuery(resource_id=resource, state=SubscriptionState.ACTIVE, limit=1)
        assert [s.id async for s in client.iter_subscriptions(query)] == [sub.id]
        assert (await client.list_subscriptions(query)).items[0].allocations == []
        paused = await client.pause_subscription(sub.id, idempotency_key=f"p{api.seq}")
        assert paused.state is SubscriptionState.PAUSED
        again = await client.pause_subscription(sub.id, idempotency_key=f"p{api.seq}")
        assert again == paused  # the replay answers what was done
        await client.resume_subscription(sub.id)
        other = await client.create_plan(
            PlanIn(code=f"other{api.seq}", name="Other", allocations=[allocation])
        )
        moved = await client.change_plan(sub.id, ChangePlanIn(plan_id=other.id))
        assert moved.plan_id == other.id
        cancelled = await client.cancel_subscription(sub.id)
        assert cancelled.state is SubscriptionState.CANCELLED
        with pytest.raises(SubscriptionCancelledError):
            await client.resume_subscription(sub.id)
        assert (await client.get_subscription(sub.id)).state is SubscriptionState.CANCELLED
        assert (await client.get_plan(plan.id)) == plan
    finally:
        await client.aclose()


async def _ids(api: Api, query: str = "", key: str = "admin") -> list[str]:
    """Every subscription the list gives (following its cursor), in its order."""
    found: list[str] = []
    cursor: str | None = None
    while True:
        page = f"/v1/subscriptions?limit=2{query}" + (f"&cursor={cursor}" if cursor else "")
        r = await api.get(page, key)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= 2 and all(i["allocations"] == [] for i in body["items"])
        found += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return found


async def test_subscriptions_are_listed_with_each_filter_and_a_bound_keys_view(
    clocked_api: Api, pool: db.Pool
) -> None:
    api = clocked_api
    code, r1 = await _setup(api)
    other = await created(api, "/v1/customers", {"name": "Other"})
    r2 = (
        await created(api, "/v1/resources", {"customer_id": other["id"], "kind": "subscription"})
    )["id"]
    a = await created(api, "/v1/plans", _plan(code, f"la{api.seq}", 10))
    b = await created(api, "/v1/plans", _plan(code, f"lb{api.seq}", 20))
    s1 = await created(api, "/v1/subscriptions", {"resource_id": r1, "plan_id": a["id"]})
    s2 = await created(api, "/v1/subscriptions", {"resource_id": r1, "plan_id": b["id"]})
    s3 = await created(api, "/v1/subscriptions", {"resource_id": r2, "plan_id": a["id"]})
    assert (await api.post(f"/v1/subscriptions/{s2['id']}/cancel", None)).status_code == 200
    assert (await api.post(f"/v1/subscriptions/{s3['id']}/pause", None)).status_code == 200

    everything = [s1["id"], s2["id"], s3["id"]]
    assert await _ids(api) == everything  # two pages of two
    assert await _ids(api, f"&resource_id={r1}") == [s1["id"], s2["id"]]
    assert await _ids(api, f"&plan_id={a['id']}") == [s1["id"], s3["id"]]
    assert await _ids(api, "&state=active") == [s1["id"]]
    assert await _ids(api, "&state=paused") == [s3["id"]]
    assert await _ids(api, "&state=cancelled") == [s2["id"]]
    assert await _ids(api, f"&resource_id={r1}&plan_id={a['id']}&state=active") == [s1["id"]]
    assert await _ids(api, f"&resource_id={r2}&state=active") == []
    r = await api.get("/v1/subscriptions?limit=1")
    (first,) = r.json()["items"]
    assert first["plan_id"] == a["id"] and first["state"] == "active"
    assert first["next_allocation_at"] is not None
    assert_problem(await api.get("/v1/subscriptions?state=gone"), "validation_error", field="state")
    assert_problem(
        await api.get("/v1/subscriptions?resource_id=x"), "validation_error", field="resource_id"
    )
    assert_problem(await api.get("/v1/subscriptions?cursor=abc"), "validation_error")
    assert_problem(await api.get("/v1/subscriptions?nope=1"), "validation_error")

    # A key bound to r2's customer lists only its subscriptions, as it reads only them.
    api.keys["mine"] = await bound_key(pool, other["id"], ["admin"])
    deadline_s = time.monotonic() + 10.0
    while (await api.get("/v1/subscriptions", "mine")).status_code == 401:
        assert time.monotonic() < deadline_s, "the app never learned of the key"
        await asyncio.sleep(0.01)
    assert await _ids(api, key="mine") == [s3["id"]]
    assert await _ids(api, f"&resource_id={r1}", key="mine") == []
    assert await _ids(api, f"&plan_id={a['id']}", key="mine") == [s3["id"]]
    assert_problem(await api.get(f"/v1/subscriptions/{s1['id']}", "mine"), "not_found")


async def test_a_plan_is_subscribed_once_per_resource_while_live(clocked_api: Api) -> None:
    api = clocked_api
    code, resource = await _setup(api)
    a = await created(api, "/v1/plans", _plan(code, f"da{api.seq}", 10))
    b = await created(api, "/v1/plans", _plan(code, f"db{api.seq}", 20))
    on_a = {"resource_id": resource, "plan_id": a["id"]}
    first = await api.post("/v1/subscriptions", on_a, idem=api.k("first"))
    assert first.status_code == 201, first.text
    s1 = first.json()["id"]
    wallet = await _wallet(api, resource)
    assert (await balance(api, wallet))[0] == 10

    # A second subscription of the plan is refused, naming the live one; nothing is granted.
    assert_problem(
        await api.post("/v1/subscriptions", on_a),
        "already_subscribed",
        subscription_id=s1,
        field="plan_id",
    )
    # The first key replayed answers what it did, not a refusal.
    again = await api.post("/v1/subscriptions", on_a, idem=api.k("first"))
    assert again.status_code == 201, again.text
    assert again.headers.get("Idempotency-Hit") == "true" and again.json()["id"] == s1
    assert (await balance(api, wallet))[0] == 10

    # Another plan is fine; a change of it onto the live plan is refused, and changes nothing.
    s2 = (await created(api, "/v1/subscriptions", {"resource_id": resource, "plan_id": b["id"]}))[
        "id"
    ]
    assert (await balance(api, wallet))[0] == 30
    change = {"plan_id": a["id"]}
    assert_problem(
        await api.post(f"/v1/subscriptions/{s2}/change-plan", change),
        "already_subscribed",
        subscription_id=s1,
    )
    got = (await api.get(f"/v1/subscriptions/{s2}")).json()
    assert got["plan_id"] == b["id"] and [x["kind"] for x in got["allocations"]] == ["period"]
    assert (await balance(api, wallet))[0] == 30

    # Paused is live too; cancelled is not: then the plan can be subscribed again.
    assert (await api.post(f"/v1/subscriptions/{s1}/pause", None)).status_code == 200
    assert_problem(await api.post("/v1/subscriptions", on_a), "already_subscribed")
    assert (await api.post(f"/v1/subscriptions/{s1}/cancel", None)).status_code == 200
    s3 = (await created(api, "/v1/subscriptions", on_a))["id"]
    assert s3 != s1
    assert_problem(
        await api.post(f"/v1/subscriptions/{s2}/change-plan", change),
        "already_subscribed",
        subscription_id=s3,
    )
    # With s3 cancelled, s2 may move onto the plan.
    assert (await api.post(f"/v1/subscriptions/{s3}/cancel", None)).status_code == 200
    moved = await api.post(f"/v1/subscriptions/{s2}/change-plan", change)
    assert moved.status_code == 200 and moved.json()["plan_id"] == a["id"], moved.text


async def test_two_subscribes_at_once_make_one_subscription(clocked_api: Api) -> None:
    api = clocked_api
    code, resource = await _setup(api)
    plan = await created(api, "/v1/plans", _plan(code, f"race{api.seq}", 10))
    body = {"resource_id": resource, "plan_id": plan["id"]}
    answers = await asyncio.gather(*(api.post("/v1/subscriptions", body) for _ in range(3)))
    assert sorted(r.status_code for r in answers) == [201, 409, 409], [r.text for r in answers]
    (won,) = [r.json()["id"] for r in answers if r.status_code == 201]
    for r in answers:
        if r.status_code == 409:
            assert_problem(r, "already_subscribed", subscription_id=won)
    assert (await balance(api, await _wallet(api, resource)))[0] == 10
