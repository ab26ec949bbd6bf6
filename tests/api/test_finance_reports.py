"""GET /v1/reports/{report}, the periods and the breakage policies over HTTP: real grants and
debits made through the app at chosen business times, projected by the app's feed, posted by
the poster; then the reports as JSON and CSV with their control, the digest of the bytes, the
finance scope, a customer-bound key's boundary, and bad input refused naming the field."""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from credit_ledger_client import AsyncCreditClient
from credit_ledger_client.schemas import BreakagePolicyIn, ReportQuery
from litestar import Litestar

from finance.posting import Poster
from ledger import db
from ledger.repositories import finance as finance_repo
from ledger.repositories import projection
from tests.api.conftest import Api
from tests.api.support import (
    MISSING_ID,
    assert_problem,
    bound_key,
    created,
    running_api,
    scope_keys,
)
from tests.api.test_usage import clock_at, projected

pytestmark = pytest.mark.anyio


@pytest.fixture
async def served(pool: db.Pool, migrated_db_url: str) -> AsyncIterator[tuple[Api, Litestar]]:
    async with pool.connection() as conn:
        await projection.reset(conn)
    finance_repo.forget_partitions()
    keys = await scope_keys(pool)
    async with running_api(pool, migrated_db_url, keys) as (api, app, _):
        yield api, app


async def _customer(api: Api, app: Litestar, code: str, name: str, dollars: int) -> str:
    customer = await created(api, "/v1/customers", {"name": name})
    agent = await created(api, "/v1/resources", {"customer_id": customer["id"], "kind": "agent"})
    wallet = await created(api, "/v1/wallets", {"resource_id": agent["id"], "credit_type": code})
    with clock_at(app, "2026-03-02T10:00:00Z"):
        body = {
            "wallet_id": wallet["id"],
            "amount": 1000,
            "category": "paid",
            "consideration_minor": dollars * 100,
            "currency": "USD",
        }
        await created(api, "/v1/grants", body)
    with clock_at(app, "2026-03-05T12:00:00Z"):
        spend = {"resource_id": agent["id"], "credit_type": code, "amount": 250}
        await created(api, "/v1/debits", spend, "runtime")
    return str(customer["id"])


async def _report(api: Api, report: str, key: str = "finance", **params: str) -> httpx.Response:
    r: httpx.Response = await api.client.get(
        f"/v1/reports/{report}", params=params, headers=api.headers(key)
    )
    return r


def _digest(data: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


async def test_reports_over_http(served: tuple[Api, Litestar], pool: db.Pool) -> None:
    api, app = served
    code = f"fr{api.seq}"
    assert (
        await api.post("/v1/credit-types", {"code": code, "name": "Credits"})
    ).status_code == 201
    acme = await _customer(api, app, code, "Acme", 10)
    await _customer(api, app, code, "Globex", 20)
    await projected(app)
    await Poster(pool).catch_up()

    r = await _report(api, "journal-lines", period="2026-03")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert r.headers["content-digest"] == _digest(r.content)
    assert r.headers["x-report-provisional"] == "true" and body["provisional"] is True
    # Two purchases and two usages, two lines each.
    assert body["control"]["rows"] == len(body["rows"]) == 8
    assert body["control"]["totals"] == {"USD": {"credit": "37.50", "debit": "37.50"}}
    as_csv = await _report(api, "journal-lines", period="2026-03", format="csv")
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.headers["content-digest"] == _digest(as_csv.content)
    assert body["control"]["sha256"] == hashlib.sha256(as_csv.content).hexdigest()
    assert json.loads(as_csv.headers["x-control-totals"]) == body["control"]
    rows = list(csv.reader(io.StringIO(as_csv.text)))
    assert rows[0] == body["columns"] and rows[1:] == body["rows"]

    revenue = (await _report(api, "revenue", period="2026-03")).json()
    assert revenue["control"]["totals"] == {"USD": {"revenue": "7.50", "usage": "7.50"}}
    for layout, header in (
        ("netsuite", "External ID,Date,Subsidiary,Currency,Account,Debit,Credit,Memo"),
        ("qbo", "Journal No,Journal Date,Currency,Account,Debits,Credits,Description,Name"),
    ):
        r = await _report(api, "summary-journal", period="2026-03", layout=layout, format="csv")
        assert r.text.splitlines()[0] == header, layout
    rolled = (await _report(api, "rollforward", period="2026-03")).json()
    usd = dict(zip(rolled["columns"], rolled["rows"][0], strict=True))
    assert (usd["additions"], usd["usage"], usd["closing"], usd["check"]) == (
        "30.00",
        "7.50",
        "22.50",
        "0.00",
    )
    aging = (await _report(api, "aging", period="2026-03")).json()
    assert aging["control"]["totals"] == {"USD": {"remaining": "22.50"}}

    # The finance scope only.
    for key in ("admin", "runtime"):
        assert_problem(await _report(api, "revenue", key, period="2026-03"), "forbidden")
    # A bound finance key sees its customer's rows only; another customer finds nothing.
    api.keys["mine"] = await bound_key(pool, acme, ["finance"])
    deadline_s = time.monotonic() + 10.0
    while (await _report(api, "revenue", "mine", period="2026-03")).status_code == 401:
        assert time.monotonic() < deadline_s, "the app never learned of the key"
        await asyncio.sleep(0.01)
    mine = (await _report(api, "journal-lines", "mine", period="2026-03")).json()
    assert {dict(zip(mine["columns"], r, strict=True))["customer_id"] for r in mine["rows"]} == {
        acme
    }
    assert mine["customer_id"] == acme and mine["control"]["rows"] == 4
    other = await _report(api, "journal-lines", "mine", period="2026-03", customer_id=MISSING_ID)
    assert other.json()["rows"] == []

    # The client reads the JSON form.
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with AsyncCreditClient(
        "http://testserver", api.keys["finance"], transport=transport
    ) as c:
        out = await c.report("revenue", ReportQuery(period="2026-03"))
        assert out.control.totals == revenue["control"]["totals"]
        listed = await c.list_periods()
        assert [(p.period, p.state) for p in listed.items] == [("2026-03", "open")]


async def test_bad_reports_are_refused_naming_the_field(served: tuple[Api, Litestar]) -> None:
    api, _ = served
    for params, field in (
        ({"period": "2026-13"}, "period"),
        ({"period": "March"}, "period"),
        ({}, "period"),
        ({"period": "2026-03", "layout": "sap"}, "layout"),
        ({"period": "2026-03", "format": "xml"}, "format"),
        ({"period": "2026-03", "customer_id": "x"}, "customer_id"),
    ):
        assert_problem(await _report(api, "revenue", **params), "validation_error", field=field)
    assert_problem(
        await _report(api, "general-ledger", period="2026-03"), "validation_error", field="report"
    )
    assert_problem(
        await _report(api, "aging", period="2026-03", layout="qbo"),
        "validation_error",
        field="layout",
    )


async def test_periods_close_lock_and_policies(served: tuple[Api, Litestar]) -> None:
    api, app = served
    headers = api.headers("finance")
    with clock_at(app, "2026-03-20T00:00:00Z"):
        r = await api.client.post("/v1/periods/2026-03/close", headers=headers)
    assert_problem(r, "period_close_refused", check="period_ended")
    r = await api.client.post("/v1/periods/2026-03/lock", headers=headers)
    assert_problem(r, "period_not_closed")
    r = await api.client.post("/v1/periods/2026-3/lock", headers=headers)
    assert_problem(r, "validation_error", field="period")
    r = await api.client.post("/v1/periods/2026-03/close", headers=api.headers("admin"))
    assert_problem(r, "forbidden")
    r = await api.client.get("/v1/periods", headers=api.headers("runtime"))
    assert_problem(r, "forbidden")

    code = f"bp{api.seq}"
    assert (
        await api.post("/v1/credit-types", {"code": code, "name": "Credits"})
    ).status_code == 201
    policy = {
        "credit_type": code,
        "method": "proportional",
        "rate": "0.1",
        "effective_from": "2026-01-01T00:00:00Z",
    }
    r = await api.post("/v1/finance/breakage-policies", policy)
    assert r.status_code == 201, r.text
    assert r.json()["rate"] == "0.1"
    assert (await api.post("/v1/finance/breakage-policies", policy)).status_code == 201
    r = await api.post("/v1/finance/breakage-policies", {**policy, "rate": "0.2"})
    assert_problem(r, "conflict")
    for rate in ("1.5", "NaN", "Infinity", "0." + "1" * 40, "ten"):
        r = await api.post("/v1/finance/breakage-policies", {**policy, "rate": rate})
        assert_problem(r, "validation_error", field="rate")
    r = await api.post(
        "/v1/finance/breakage-policies", {**policy, "effective_from": "1830-11-16T03:26:47Z"}
    )
    assert_problem(r, "validation_error", field="effective_from")
    r = await api.post("/v1/finance/breakage-policies", {**policy, "method": "remote"})
    assert_problem(r, "validation_error", field="rate")
    r = await api.post("/v1/finance/breakage-policies", policy, key="finance")
    assert_problem(r, "forbidden")
    r = await api.post("/v1/finance/breakage-policies", {**policy, "credit_type": "nope"})
    assert_problem(r, "not_found")
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with AsyncCreditClient("http://testserver", api.keys["admin"], transport=transport) as c:
        later = BreakagePolicyIn(
            credit_type=code,
            method="remote",  # type: ignore[arg-type]
            effective_from=__import__("datetime").datetime(
                2026, 6, 1, tzinfo=__import__("datetime").UTC
            ),
        )
        out = await c.create_breakage_policy(later)
        assert out.method == "remote" and out.rate == "0"
