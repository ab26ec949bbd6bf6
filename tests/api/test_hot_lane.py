"""The hot lane (api.lane) and the litestar routes of the same paths answer alike.

Every request here goes through both doors of one app: the lane, then litestar (the lane
switched off), and the answers must be the same bytes: status, content type, the
Idempotency-Hit header and the body. Successful writes are compared through replays (the first
answer is new, its replay through either door must be identical), so no id differs.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec
import pytest

from ledger import db
from tests.api.conftest import Api
from tests.api.support import MISSING_ID, World, bound_key, make_world

pytestmark = pytest.mark.anyio

_keys = itertools.count(1)

Send = Callable[[], Awaitable[httpx.Response]]


def _answer(r: httpx.Response) -> tuple[int, str, str | None, bytes]:
    return (
        r.status_code,
        r.headers["content-type"],
        r.headers.get("idempotency-hit"),
        r.content,
    )


async def _both(api: Api, send: Send) -> tuple[httpx.Response, httpx.Response]:
    """`send` through the lane, then through litestar; returns both answers."""
    lane = api.app.lane
    assert lane is not None, "the app serves from the hot lane by default"
    through_lane = await send()
    api.app.lane = None
    try:
        through_litestar = await send()
    finally:
        api.app.lane = lane
    return through_lane, through_litestar


async def _same(api: Api, send: Send) -> httpx.Response:
    a, b = await _both(api, send)
    assert _answer(a) == _answer(b), (a.text, b.text)
    return a


def _post(
    api: Api,
    path: str,
    body: Any,
    key: str | None = "runtime",
    idem: str | None = None,
    content_type: str | None = "application/json",
) -> Send:
    headers = {} if key is None else {"Authorization": f"Bearer {api.keys.get(key, key)}"}
    if idem is not None:
        headers["Idempotency-Key"] = idem
    if content_type is not None:
        headers["Content-Type"] = content_type
    content = body if isinstance(body, bytes) else msgspec.json.encode(body)
    return lambda: api.client.post(path, content=content, headers=headers)


@pytest.fixture
async def world(api: Api) -> World:
    return await make_world(api, granted=100)


async def test_refusals_are_the_same_bytes(api: Api, world: World, pool: db.Pool) -> None:
    spend = world.spend(amount=1)
    other = await make_world(api, granted=5, code=world.code, name="Other")
    theirs = await bound_key(pool, other.customer["id"], ["runtime"])
    cases: list[tuple[str, Any, str | None, str | None]] = [
        # auth and scopes
        ("/v1/debits", spend, None, "k"),
        ("/v1/debits", spend, "clk_not-a-key", "k"),
        ("/v1/debits", spend, "finance", "k"),
        ("/v1/check", spend, "finance", None),
        ("/v1/debits/batch", {"debits": []}, "admin", None),
        # bodies
        ("/v1/debits", b"{not json", "runtime", "k"),
        ("/v1/debits", {**spend, "amount": "1"}, "runtime", "k"),
        ("/v1/debits", {**spend, "amount": 0}, "runtime", "k"),
        ("/v1/debits", {**spend, "amount": 1 << 63}, "runtime", "k"),
        ("/v1/debits", {**spend, "colour": "red"}, "runtime", "k"),
        ("/v1/debits", {**spend, "dimensions": {"x" * 65: "v"}}, "runtime", "k"),
        ("/v1/debits", {"credit_type": world.code, "amount": 1}, "runtime", "k"),
        ("/v1/debits", {**spend, "usage": {"feature": "nope", "quantity": 1}}, "runtime", "k"),
        ("/v1/debits", b"x" * (1024 * 1024 + 1), "runtime", "k"),
        ("/v1/reservations", {**spend, "timeout_s": 0}, "runtime", "k"),
        ("/v1/debits/batch", {"debits": [{**spend}]}, "runtime", None),
        # the Idempotency-Key
        ("/v1/debits", spend, "runtime", None),
        ("/v1/reservations", spend, "runtime", "x" * 256),
        # what is not there, or not theirs
        ("/v1/debits", {**spend, "credit_type": "nope"}, "runtime", "k"),
        ("/v1/debits", {**spend, "resource_id": MISSING_ID}, "runtime", "k"),
        ("/v1/debits", {**spend, "resource_id": "not-an-id"}, "runtime", "k"),
        ("/v1/debits", spend, theirs, "k"),
        ("/v1/reservations/" + MISSING_ID + "/settle", {"amount": 1}, "runtime", "k"),
        ("/v1/reservations/not-an-id/release", b"", "runtime", "k"),
        # business refusals
        ("/v1/debits", {**spend, "amount": 101}, "runtime", None),
        ("/v1/check", {**spend, "amount": 101}, "runtime", None),
    ]
    for path, body, key, idem in cases:
        if idem == "k":
            idem = f"lane-{next(_keys)}"
        r = await _same(api, _post(api, path, body, key, idem))
        assert r.status_code >= 400 or path == "/v1/check" or "batch" in path, (path, r.text)
    # a body that is not said to be JSON, a key given twice, bytes that are not UTF-8
    duplicated = b'{"credit_type": "%s", "resource_id": "%s", "amount": 1, "amount": 1000}' % (
        world.code.encode(),
        world.agent["id"].encode(),
    )
    not_utf8 = b'{"credit_type": "\xff", "amount": 1}'
    for path, body, content_type in (
        ("/v1/debits", spend, None),
        ("/v1/debits", spend, "text/plain"),
        ("/v1/check", spend, "application/x-www-form-urlencoded"),
        ("/v1/reservations/" + MISSING_ID + "/release", b"{}", "text/plain"),
        ("/v1/debits", duplicated, "application/json"),
        ("/v1/debits/batch", b'{"debits": [], "debits": []}', "application/json"),
        ("/v1/debits", not_utf8, "application/json; charset=utf-8"),
    ):
        idem = f"lane-{next(_keys)}"
        r = await _same(api, _post(api, path, body, "runtime", idem, content_type))
        code = "validation_error" if content_type and "json" in content_type else None
        assert r.json()["code"] == (code or "unsupported_media_type"), (path, r.text)
    # a debit refused for lack of credits keeps that answer under its key, through either door:
    # the first answer says what was available, its replays say they are replays
    poor = _post(api, "/v1/debits", {**spend, "amount": 101}, "runtime", "poor")
    r = await poor()
    assert (r.json()["code"], r.json()["available"]) == ("insufficient_credits", 100)
    assert "idempotency-hit" not in r.headers
    r = await _same(api, poor)
    assert (r.json()["code"], r.headers["idempotency-hit"]) == ("insufficient_credits", "true")
    assert "available" not in r.json()


async def test_writes_replay_the_same_bytes(api: Api, world: World) -> None:
    spend = world.spend(amount=3, dimensions={"feature": "chat"})
    for path, body in (
        ("/v1/debits", spend),
        ("/v1/reservations", {**spend, "timeout_s": 60}),
        ("/v1/check", spend),
    ):
        first = await _post(api, path, body, idem=f"w-{next(_keys)}")()
        assert first.status_code in (200, 201), first.text
        if path == "/v1/check":
            continue
        replay_lane, replay_litestar = await _both(
            api, _post(api, path, body, idem=first.request.headers["idempotency-key"])
        )
        assert _answer(replay_lane) == _answer(replay_litestar)
        assert replay_lane.headers["idempotency-hit"] == "true"
        assert replay_lane.json() == first.json()

    # settle and release: made through litestar, replayed through both doors
    for action, body in (("settle", {"amount": 2}), ("release", None)):
        reservation = await _post(api, "/v1/reservations", spend, idem=f"r-{next(_keys)}")()
        path = f"/v1/reservations/{reservation.json()['id']}/{action}"
        idem = f"{action}-{next(_keys)}"
        lane = api.app.lane
        api.app.lane = None
        try:
            first = await _post(api, path, body if body is not None else b"", idem=idem)()
        finally:
            api.app.lane = lane
        assert first.status_code == 200, first.text
        a, b = await _both(api, _post(api, path, body if body is not None else b"", idem=idem))
        assert _answer(a) == _answer(b) and a.json() == first.json()

    batch = {"debits": [{**spend, "idempotency_key": f"b-{next(_keys)}"} for _ in range(3)]}
    first = await _post(api, "/v1/debits/batch", batch)()
    assert [item["status"] for item in first.json()["results"]] == [201, 201, 201]
    r = await _same(api, _post(api, "/v1/debits/batch", batch))
    assert r.json() == {"results": [{**x, "replayed": True} for x in first.json()["results"]]}


async def test_other_methods_and_paths_go_to_litestar(api: Api, world: World) -> None:
    r = await api.client.get("/v1/debits", headers=api.headers("runtime"))
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
    r = await api.client.post(
        f"/v1/reservations/{MISSING_ID}/cancel", json={}, headers=api.headers("runtime", "c")
    )
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = await api.client.get(f"/v1/reservations/{MISSING_ID}", headers=api.headers("runtime"))
    assert r.status_code == 404 and r.json()["code"] == "not_found"


async def test_the_lane_counts_its_requests(api: Api, world: World) -> None:
    await _post(api, "/v1/debits", world.spend(amount=1), idem=f"m-{next(_keys)}")()
    await _post(api, "/v1/debits", world.spend(amount=1000), idem=f"m-{next(_keys)}")()
    text = (await api.client.get("/metrics")).text
    assert 'http_requests_total{method="POST",route="/v1/debits",status="201"} 1.0' in text
    assert 'http_requests_total{method="POST",route="/v1/debits",status="402"} 1.0' in text
    assert 'credit_decisions_total{operation="debit",outcome="ok"} 1.0' in text


def test_the_lane_serves_the_litestar_routes_paths_with_their_scopes() -> None:
    """The lane's table names the same paths (as metrics label them) and scopes as the
    litestar routes of the same operations."""
    import re

    from api import lane
    from api.routes import ROUTES

    declared = {
        re.sub(r":\w+\}", "}", path): handler.opt["scopes"]
        for handler in ROUTES
        if "POST" in handler.http_methods
        for path in handler.paths
    }
    routes = [*lane._EXACT.values(), *lane._ON_RESERVATION.values()]
    assert len(routes) == 6
    for route in routes:
        assert declared[route.template] == route.scopes, route.template
