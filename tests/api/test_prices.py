"""Prices keep their history over HTTP: a new price takes effect at its effective_at (now, or a
time to come) while the one before stays in force until then and stays readable; the spend path
charges usage at the price in force at the request's time, a scheduled price taking over by
itself (the service's clock moved, no reload)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from ledger.clock import ns_of_datetime
from tests.api.conftest import Api
from tests.api.support import assert_problem, created, make_world, services_of

pytestmark = pytest.mark.anyio


async def get(api: Api, path: str, key: str = "admin", **params: Any) -> Any:
    return await api.client.get(path, params=params, headers=api.headers(key))


def _iso(at: dt.datetime) -> str:
    return at.isoformat()


async def test_a_scheduled_price_takes_over_at_its_time(api: Api) -> None:
    world = await make_world(api, granted=10_000)
    feature = f"gpu-{api.seq}"
    price = {"feature": feature, "credit_type": world.code}
    now = await created(api, "/v1/prices", {**price, "credits_per_unit": 7})
    starts = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    later = await created(
        api, "/v1/prices", {**price, "credits_per_unit": 9, "effective_at": _iso(starts)}
    )
    assert dt.datetime.fromisoformat(later["effective_at"]) == starts

    # The history, in the order the prices take effect.
    r = await get(api, "/v1/prices", key="runtime", **price)
    assert r.json() == {"items": [now, later], "next_cursor": None}
    r = await get(api, "/v1/prices/current", key="finance", **price)
    assert r.json() == now
    r = await get(api, "/v1/prices/current", **price, at=_iso(starts))
    assert r.json() == later
    r = await get(api, "/v1/prices/current", **price, at=_iso(starts - dt.timedelta(seconds=1)))
    assert r.json() == now

    usage = world.spend(usage={"feature": feature, "quantity": 3})
    r = await api.post("/v1/debits", usage, key="runtime")
    assert (r.status_code, r.json()["amount"]) == (201, 21)
    # The service's clock reaches the scheduled time: the next spend is charged at 9, by the
    # cache as it was (nothing was reloaded).
    service = services_of(api.app).service
    reloads = services_of(api.app).control.reloads
    service.clock_ns = lambda: ns_of_datetime(starts) + 1000
    try:
        r = await api.post("/v1/debits", usage, key="runtime")
        assert (r.status_code, r.json()["amount"]) == (201, 27)
        r = await get(api, "/v1/prices/current", **price)
        assert r.json() == later
        reservation = await created(api, "/v1/reservations", usage, "runtime")
        assert reservation["amount"] == 27
    finally:
        service.clock_ns = time.time_ns
    assert services_of(api.app).control.reloads == reloads


async def test_a_price_cannot_start_in_the_past_nor_twice_at_once(api: Api) -> None:
    world = await make_world(api)
    price = {"feature": f"f-{api.seq}", "credit_type": world.code, "credits_per_unit": 2}
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    r = await api.post("/v1/prices", {**price, "effective_at": _iso(past)})
    assert_problem(r, "validation_error", field="effective_at")
    r = await api.post("/v1/prices", {**price, "effective_at": "2030-01-01T00:00:00"})
    assert_problem(r, "validation_error", field="effective_at")  # no offset: ambiguous
    starts = _iso(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    await created(api, "/v1/prices", {**price, "effective_at": starts})
    r = await api.post("/v1/prices", {**price, "credits_per_unit": 3, "effective_at": starts})
    assert_problem(r, "conflict")
    # Nothing in force yet: the only price starts tomorrow.
    r = await get(api, "/v1/prices/current", feature=price["feature"], credit_type=world.code)
    assert_problem(r, "not_found")
    r = await api.post(
        "/v1/debits", world.spend(usage={"feature": price["feature"], "quantity": 1}), key="runtime"
    )
    assert_problem(r, "validation_error", field="usage.feature")


async def test_a_price_replays_with_its_key_once_its_time_has_passed(api: Api) -> None:
    world = await make_world(api)
    body = {
        "feature": f"r-{api.seq}",
        "credit_type": world.code,
        "credits_per_unit": 4,
        "effective_at": _iso(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)),
    }
    first = await api.post("/v1/prices", body, idem=api.k("price"))
    assert first.status_code == 201, first.text
    service = services_of(api.app).service
    wall = service.clock_ns
    service.clock_ns = lambda: wall() + 3600 * 10**9  # an hour on: effective_at is past
    try:
        again = await api.post("/v1/prices", body, idem=api.k("price"))
        assert (again.status_code, again.json()) == (201, first.json())
        assert again.headers["Idempotency-Hit"] == "true"
        # Sent with a new key now, the same price is refused: its effective_at is past.
        late = await api.post("/v1/prices", body, idem=api.k("price-late"))
        assert_problem(late, "validation_error", field="effective_at")
    finally:
        service.clock_ns = wall
    listed = await get(api, "/v1/prices", feature=body["feature"])
    assert len(listed.json()["items"]) == 1
