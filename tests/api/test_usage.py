"""GET /v1/usage over HTTP: real spends (debits, a settled reservation, a refund) made through
the app at chosen business times, projected by the app's own feed, then attributed: exact
credits and values per bucket, group and currency, resource subtrees, the customer boundary of
a bound key, CSV, pages, the projection's lag, and bad input refused naming the field."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
from credit_ledger_client import AsyncCreditClient
from credit_ledger_client.schemas import UsageBucket, UsageQuery
from litestar import Litestar

from ledger import db
from ledger.clock import ns_of_datetime
from ledger.repositories import projection
from tests.api.conftest import Api
from tests.api.support import (
    MISSING_ID,
    assert_problem,
    bound_key,
    created,
    running_api,
    scope_keys,
    services_of,
)

pytestmark = pytest.mark.anyio

MARCH = {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}
CHAT_SMALL = {"feature": "chat", "model": "small"}


@dataclass
class Attributed:
    """Customer A: subscription > team > agent X (paid: 1,000 credits for $10.00, a cent a
    credit); subscription > agent Y (500 promotional, then 100 paid for 2.50 EUR, 2.5 cents
    a credit). Customer B: agent Z (1,000 credits for $20.00). Every spend below is made."""

    api: Api
    app: Litestar
    code: str
    customer: str
    other_customer: str
    subscription: str
    team: str
    agent_x: str
    agent_y: str
    agent_z: str


@pytest.fixture
async def served(pool: db.Pool, migrated_db_url: str) -> AsyncIterator[tuple[Api, Litestar]]:
    """The app on a projection of its own (emptied: earlier tests' engines are gone)."""
    async with pool.connection() as conn:
        await projection.reset(conn)
    keys = await scope_keys(pool)
    async with running_api(pool, migrated_db_url, keys) as (api, app, _):
        yield api, app


@contextlib.contextmanager
def clock_at(app: Litestar, when: str) -> Iterator[None]:
    """The service's business time (what a spend or refund is dated) is `when`."""
    services = services_of(app)
    ns = ns_of_datetime(_at(when))
    before = services.service.clock_ns, services.grant_service.clock_ns
    services.service.clock_ns = services.grant_service.clock_ns = lambda: ns
    try:
        yield
    finally:
        services.service.clock_ns, services.grant_service.clock_ns = before


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def projected(app: Litestar) -> None:
    """Returns once the app's feed has projected everything the engine had on the call."""
    feed = services_of(app).projection
    since_ns = time.time_ns()
    deadline_s = time.monotonic() + 10.0
    while not (feed.leader and feed.caught_up_at_ns > since_ns):
        assert time.monotonic() < deadline_s, "the projection did not catch up"
        await asyncio.sleep(0.01)


async def _grant(api: Api, wallet: str, amount: int, **body: Any) -> None:
    body = {"wallet_id": wallet, "amount": amount, "category": "paid", **body}
    await created(api, "/v1/grants", {**body, "effective_at": "2026-01-01T00:00:00Z"})


async def _agent(api: Api, customer: str, parent: str | None, code: str) -> tuple[str, str]:
    body = {"customer_id": customer, "kind": "agent", "parent_id": parent}
    agent = await created(api, "/v1/resources", {k: v for k, v in body.items() if v})
    wallet = await created(api, "/v1/wallets", {"resource_id": agent["id"], "credit_type": code})
    return agent["id"], wallet["id"]


async def _debit(api: Api, app: Litestar, when: str, body: dict[str, Any]) -> dict[str, Any]:
    with clock_at(app, when):
        return await created(api, "/v1/debits", body, "runtime")


async def _spend(world: Attributed) -> None:
    api, app = world.api, world.app

    def spend(agent: str, amount: int, **dims: str) -> dict[str, Any]:
        return {"resource_id": agent, "credit_type": world.code, "amount": amount,
                "dimensions": dims}  # fmt: skip

    first = await _debit(api, app, "2026-03-02T09:10:00Z", spend(world.agent_x, 120, **CHAT_SMALL))
    await _debit(api, app, "2026-03-02T09:40:00Z",
                 spend(world.agent_x, 30, feature="chat", model="large"))  # fmt: skip
    # 500 promotional credits, then 20 of the EUR block.
    await _debit(api, app, "2026-03-02T13:00:00Z",
                 spend(world.agent_y, 520, feature="search", model="small"))  # fmt: skip
    await _debit(api, app, "2026-03-02T09:15:00Z", spend(world.agent_z, 100, **CHAT_SMALL))
    # A reservation counts once settled, when settled (08:30, not 07:50): 35 of 50.
    with clock_at(app, "2026-03-03T07:50:00Z"):
        held = await created(api, "/v1/reservations", spend(world.agent_x, 50, **CHAT_SMALL),
                             "runtime")  # fmt: skip
    with clock_at(app, "2026-03-03T08:30:00Z"):
        r = await api.post(f"/v1/reservations/{held['id']}/settle", {"amount": 35}, "runtime")
        assert r.status_code == 200, r.text
    with clock_at(app, "2026-03-03T12:00:00Z"):
        r = await api.post(f"/v1/debits/{first['id']}/refund", {"amount": 20})
        assert r.status_code == 200, r.text
    await projected(app)


@pytest.fixture
async def world(served: tuple[Api, Litestar]) -> Attributed:
    api, app = served
    code = f"us{api.seq}"
    await created(api, "/v1/credit-types", {"code": code, "name": "Credits"})
    a = (await created(api, "/v1/customers", {"name": "A"}))["id"]
    b = (await created(api, "/v1/customers", {"name": "B"}))["id"]
    sub = (await created(api, "/v1/resources", {"customer_id": a, "kind": "subscription"}))["id"]
    team = await created(api, "/v1/resources", {"customer_id": a, "kind": "team",
                                                "parent_id": sub})  # fmt: skip
    agent_x, wallet_x = await _agent(api, a, team["id"], code)
    agent_y, wallet_y = await _agent(api, a, sub, code)
    agent_z, wallet_z = await _agent(api, b, None, code)
    await _grant(api, wallet_x, 1000, consideration_minor=1000, currency="USD")
    await _grant(api, wallet_y, 500, category="promotional")
    await _grant(api, wallet_y, 100, consideration_minor=250, currency="EUR")
    await _grant(api, wallet_z, 1000, consideration_minor=2000, currency="USD")
    world = Attributed(api, app, code, a, b, sub, team["id"], agent_x, agent_y, agent_z)
    await _spend(world)
    return world


async def usage(world: Attributed, key: str = "finance", **params: Any) -> Any:
    return await world.api.client.get(
        "/v1/usage", params={**MARCH, **params}, headers=world.api.headers(key)
    )


async def items(world: Attributed, key: str = "finance", **params: Any) -> list[dict[str, Any]]:
    r = await usage(world, key, **params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["next_cursor"] is None
    found: list[dict[str, Any]] = body["items"]
    return found


def row(bucket: str, credits: int, value: str, currency: str | None, **fields: Any) -> Any:
    """A row as the API answers it, with `fields` (resource_id, dimensions, ...) set."""
    base: dict[str, Any] = {
        "bucket_start": bucket,
        "customer_id": None,
        "resource_id": None,
        "wallet_id": None,
        "dimensions": {},
        "currency": currency,
        "credits": str(credits),
        "value_minor": value,
    }
    return base | fields


def without_entries(rows: list[dict[str, Any]], code: str) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        assert r.pop("credit_type") == code and r.pop("entries") >= 1
        out.append(r)
    return sorted(out, key=repr)


async def test_usage_by_day_resource_feature_and_model_per_currency(world: Attributed) -> None:
    found = await items(world, customer_id=world.customer, group_by="resource,feature,model")
    x, y, day2, day3 = world.agent_x, world.agent_y, "2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z"
    small, large = {"feature": "chat", "model": "small"}, {"feature": "chat", "model": "large"}
    search = {"feature": "search", "model": "small"}
    assert without_entries(found, world.code) == sorted(
        [
            row(day2, 120, "120", "USD", resource_id=x, dimensions=small),
            row(day2, 30, "30", "USD", resource_id=x, dimensions=large),
            # Promotional credits have no cost basis; 20 EUR credits at 2.5 cents each.
            row(day2, 500, "0", None, resource_id=y, dimensions=search),
            row(day2, 20, "50", "EUR", resource_id=y, dimensions=search),
            # The settle of 35, less the refund of 20 of the first debit (its dimensions).
            row(day3, 15, "15", "USD", resource_id=x, dimensions=small),
        ],
        key=repr,
    )


async def test_hours_weeks_and_months(world: Attributed) -> None:
    day3 = {"from": "2026-03-03T00:00:00Z", "to": "2026-03-04T00:00:00Z"}
    hours = await items(world, customer_id=world.customer, bucket="hour", **day3)
    assert [(r["bucket_start"], r["credits"]) for r in hours] == [
        ("2026-03-03T08:00:00Z", "35"),
        ("2026-03-03T12:00:00Z", "-20"),
    ]
    weeks = await items(world, bucket="week", group_by="customer")
    assert without_entries(weeks, world.code) == sorted(
        [
            row("2026-03-02T00:00:00Z", 165, "165", "USD", customer_id=world.customer),
            row("2026-03-02T00:00:00Z", 500, "0", None, customer_id=world.customer),
            row("2026-03-02T00:00:00Z", 20, "50", "EUR", customer_id=world.customer),
            row("2026-03-02T00:00:00Z", 100, "200", "USD", customer_id=world.other_customer),
        ],
        key=repr,
    )
    months = await items(world, bucket="month", customer_id=world.customer)
    assert [(r["bucket_start"], r["currency"], r["credits"]) for r in months] == sorted(
        [("2026-03-01T00:00:00Z", c, n) for c, n in (("USD", "165"), (None, "500"), ("EUR", "20"))],
        key=lambda t: t[1] or "",
    )


async def test_a_resource_is_its_whole_subtree(world: Attributed) -> None:
    def credits(rows: list[dict[str, Any]]) -> dict[tuple[str, str | None], int]:
        out: dict[tuple[str, str | None], int] = {}
        for r in rows:
            out[(r["resource_id"], r["currency"])] = int(r["credits"])
        return out

    params = {"bucket": "month", "group_by": "resource"}
    everything = {(world.agent_x, "USD"): 165, (world.agent_y, None): 500,
                  (world.agent_y, "EUR"): 20}  # fmt: skip
    assert credits(await items(world, resource_id=world.subscription, **params)) == everything
    assert credits(await items(world, resource_id=world.team, **params)) == {
        (world.agent_x, "USD"): 165
    }
    assert credits(await items(world, resource_id=world.agent_y, **params)) == {
        (world.agent_y, None): 500,
        (world.agent_y, "EUR"): 20,
    }


async def test_filters_on_dimensions_and_credit_type(world: Attributed) -> None:
    chat = await items(world, bucket="month", group_by="customer,model",
                       dimension=["feature:chat"])  # fmt: skip
    assert {(r["customer_id"], r["dimensions"]["model"], r["value_minor"]) for r in chat} == {
        (world.customer, "small", "135"),
        (world.customer, "large", "30"),
        (world.other_customer, "small", "200"),
    }
    models = ["model:small", "model:large"]
    either = await items(world, bucket="month", customer_id=world.customer, dimension=models,
                         credit_type=world.code)  # fmt: skip
    assert {(r["currency"], r["credits"]) for r in either} == {
        ("USD", "165"), (None, "500"), ("EUR", "20"),
    }  # fmt: skip
    assert await items(world, credit_type="nosuchtype") == []


async def test_a_bound_key_sees_its_customer_and_another_is_as_unknown(
    world: Attributed, pool: db.Pool
) -> None:
    api = world.api
    api.keys["mine"] = await bound_key(pool, world.customer, ["runtime"])
    deadline_s = time.monotonic() + 10.0
    while (await usage(world, "mine")).status_code == 401:
        assert time.monotonic() < deadline_s, "the app never learned of the key"
        await asyncio.sleep(0.01)

    mine = await items(world, "mine", bucket="month", group_by="customer")
    assert {r["customer_id"] for r in mine} == {world.customer}
    assert mine == await items(world, bucket="month", group_by="customer",
                               customer_id=world.customer)  # fmt: skip

    other = await usage(world, "mine", customer_id=world.other_customer)
    unknown = await usage(world, "mine", customer_id=MISSING_ID)
    assert other.status_code == unknown.status_code == 200
    a, b = other.json(), unknown.json()
    assert a["items"] == b["items"] == [] and a["next_cursor"] is b["next_cursor"] is None
    assert a["projection"]["watermark_ts"] == b["projection"]["watermark_ts"]
    assert set(other.headers) == set(unknown.headers)
    theirs = {"resource_id": world.subscription, "customer_id": world.other_customer}
    for named in ({"resource_id": world.agent_z}, theirs):
        assert await items(world, "mine", **named) == []


async def test_csv_has_a_header_and_a_row_per_bucket_group_and_currency(
    world: Attributed,
) -> None:
    params = {"customer_id": world.customer, "group_by": "feature,resource", "limit": 2}
    headers = {**world.api.headers("admin"), "Accept": "text/csv"}
    lines: list[list[str]] = []
    cursor = None
    while True:
        extra = {"cursor": cursor} if cursor else {}
        r = await world.api.client.get("/v1/usage", params={**MARCH, **params, **extra},
                                       headers=headers)  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "text/csv; charset=utf-8"
        assert int(r.headers["projection-watermark-ts"]) > 0
        page = list(csv.reader(io.StringIO(r.text)))
        assert page[0] == ["bucket_start", "feature", "resource_id", "credit_type", "currency",
                           "credits", "value_minor", "entries"]  # fmt: skip
        assert 1 <= len(page) - 1 <= 2
        lines += page[1:]
        cursor = r.headers.get("next-cursor")
        if cursor is None:
            break
    x, y = world.agent_x, world.agent_y
    assert sorted(line[:7] for line in lines) == sorted(
        [
            ["2026-03-02T00:00:00Z", "chat", x, world.code, "USD", "150", "150"],
            ["2026-03-02T00:00:00Z", "search", y, world.code, "", "500", "0"],
            ["2026-03-02T00:00:00Z", "search", y, world.code, "EUR", "20", "50"],
            ["2026-03-03T00:00:00Z", "chat", x, world.code, "USD", "15", "15"],
        ]
    )
    # The JSON of the same query says the same.
    found = await items(world, customer_id=world.customer, group_by="feature,resource")
    assert len(found) == len(lines)


async def test_pages_follow_the_cursor_without_gaps_or_repeats(world: Attributed) -> None:
    params = {"group_by": "customer,resource,feature,model", "bucket": "hour"}
    whole = await items(world, **params)
    assert len(whole) == 7
    seen: list[dict[str, Any]] = []
    cursor, pages = None, 0
    while True:
        extra = {"cursor": cursor} if cursor else {}
        r = await usage(world, limit=3, **params, **extra)
        assert r.status_code == 200, r.text
        seen += r.json()["items"]
        cursor, pages = r.json()["next_cursor"], pages + 1
        if cursor is None:
            break
    assert (seen, pages) == (whole, 3)
    assert [r["bucket_start"] for r in seen] == sorted(r["bucket_start"] for r in seen)


async def test_every_read_scope_may_ask_and_the_projection_is_stated(world: Attributed) -> None:
    for key in ("runtime", "admin", "finance"):
        r = await usage(world, key, customer_id=world.customer)
        assert r.status_code == 200, (key, r.text)
        projection_ = r.json()["projection"]
        assert projection_["watermark_ts"] == int(r.headers["projection-watermark-ts"]) > 0
        assert 0 <= projection_["lag_s"] == float(r.headers["projection-lag-s"]) < 60
    r = await world.api.client.get("/v1/usage", params=MARCH)
    assert_problem(r, "unauthorized")


BAD = [
    ({"from": None}, "from"),
    ({"from": "2026-03-01T00:00:00"}, "from"),  # no offset
    ({"from": "2026-03-01"}, "from"),
    ({"from": "2026-03-01T00:30:00Z"}, "from"),
    ({"to": "2026-02-01T00:00:00Z"}, "to"),
    ({"bucket": "hour"}, "bucket"),  # 744 hours is fine; see the next
    ({"bucket": "year"}, "bucket"),
    ({"group_by": "resource,resource"}, "group_by"),
    ({"group_by": ""}, "group_by"),
    ({"group_by": "a\tb"}, "group_by"),
    ({"dimension": "feature"}, "dimension[0]"),
    ({"customer_id": "ACME"}, "customer_id"),
    ({"resource_id": "0190C3A1-7F3E-7A41-9A6E-1D2C3B4A5F60"}, "resource_id"),
    ({"wallet_id": "1"}, "wallet_id"),
    ({"credit_type": "Credits"}, "credit_type"),
    ({"limit": 0}, "limit"),
    ({"limit": 1001}, "limit"),
    ({"cursor": "bm90LW91cnM"}, "cursor"),
    ({"colour": "blue"}, "colour"),
]


@pytest.mark.parametrize(("change", "field"), BAD)
async def test_bad_input_is_refused_naming_the_field(
    served: tuple[Api, Litestar], change: dict[str, Any], field: str
) -> None:
    api, _ = served
    params = {**MARCH, **change}
    if change == {"bucket": "hour"}:
        params["to"] = "2026-05-01T00:00:00Z"  # 1,464 hours
    params = {k: v for k, v in params.items() if v is not None}
    r = await api.client.get("/v1/usage", params=params, headers=api.headers("finance"))
    assert_problem(r, "validation_error", field=field)


async def test_a_parameter_given_twice_is_refused_but_dimension_repeats(
    served: tuple[Api, Litestar],
) -> None:
    api, _ = served
    twice = [*MARCH.items(), ("bucket", "day"), ("bucket", "week")]
    r = await api.client.get("/v1/usage", params=twice, headers=api.headers("finance"))
    assert_problem(r, "validation_error", field="bucket")
    repeated = [*MARCH.items(), ("dimension", "a:1"), ("dimension", "b:2")]
    r = await api.client.get("/v1/usage", params=repeated, headers=api.headers("finance"))
    assert r.status_code == 200, r.text


async def test_the_python_client_reads_usage_page_after_page(world: Attributed) -> None:
    transport = httpx.ASGITransport(app=world.app)  # type: ignore[arg-type]
    query = UsageQuery(
        from_=_at(MARCH["from"]), to=_at(MARCH["to"]), bucket=UsageBucket.DAY,
        group_by="resource,model", customer_id=world.customer,
        dimension=["feature:chat", "feature:search"], limit=1,
    )  # fmt: skip
    async with AsyncCreditClient(
        "http://testserver", world.api.keys["finance"], transport=transport
    ) as client:
        rows = [r async for r in client.iter_usage(query)]
        page = await client.usage(msgspec.structs.replace(query, limit=100))
    assert rows == page.items and page.next_cursor is None
    assert page.projection.watermark_ts > 0
    assert {(r.resource_id, r.dimensions["model"], r.currency, r.credits) for r in rows} == {
        (world.agent_x, "small", "USD", "120"),
        (world.agent_x, "large", "USD", "30"),
        (world.agent_y, "small", None, "500"),
        (world.agent_y, "small", "EUR", "20"),
        (world.agent_x, "small", "USD", "15"),
    }
