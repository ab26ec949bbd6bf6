"""The lists over HTTP: pages that follow the cursor with no gap and no duplicate, every filter,
lookups by external_ref, the customer boundary of a bound key, and bad parameters refused with
422 naming the parameter. Reservations are listed from the ledger, the rest from Postgres."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest

from ledger import db
from tests.api.conftest import Api
from tests.api.support import (
    MISSING_ID,
    assert_problem,
    bound_key,
    created,
    make_world,
    services_of,
)

pytestmark = pytest.mark.anyio

LISTS = (
    "/v1/customers",
    "/v1/resources",
    "/v1/wallets",
    "/v1/grants",
    "/v1/budgets",
    "/v1/prices",
)


async def get(api: Api, path: str, key: str = "admin", **params: Any) -> Any:
    return await api.client.get(path, params=params, headers=api.headers(key))


async def every_page(
    api: Api, path: str, key: str = "admin", **params: Any
) -> tuple[list[dict[str, Any]], int]:
    """Every item of a list, following next_cursor, and how many pages it took."""
    items: list[dict[str, Any]] = []
    cursor, pages = None, 0
    while True:
        extra = {"cursor": cursor} if cursor is not None else {}
        r = await get(api, path, key, **params, **extra)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"items", "next_cursor"}
        items += body["items"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


def at(delta_s: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delta_s)).isoformat()


async def test_customers_page_without_gaps_or_duplicates(api: Api) -> None:
    mine = [
        await created(api, "/v1/customers", {"name": f"c{i}", "external_ref": f"l{api.seq}-{i}"})
        for i in range(5)
    ]
    whole, _ = await every_page(api, "/v1/customers", limit=1000)
    paged, pages = await every_page(api, "/v1/customers", limit=2)
    # The same items in the same order, page by page: none missed, none twice.
    assert ids(paged) == ids(whole)
    assert len(set(ids(paged))) == len(paged)
    assert pages == (len(whole) + 1) // 2
    # Oldest first: these were created one after the other.
    assert [i for i in ids(paged) if i in ids(mine)] == ids(mine)
    assert paged[-len(mine) :] == mine
    # The last page says it is the last: a full last page has no cursor to an empty one.
    r = await get(api, "/v1/customers", limit=len(whole))
    assert r.json()["next_cursor"] is None


async def test_customers_and_resources_are_found_by_external_ref(api: Api) -> None:
    world = await make_world(api)
    ref = f"crm-{api.seq}"
    customer = await created(api, "/v1/customers", {"name": "Ref", "external_ref": ref})
    r = await get(api, "/v1/customers", external_ref=ref, key="finance")
    assert r.json() == {"items": [customer], "next_cursor": None}
    r = await get(api, "/v1/customers", external_ref=f"{ref}-nobody")
    assert r.json() == {"items": [], "next_cursor": None}

    workspace = await created(
        api,
        "/v1/resources",
        {"customer_id": world.customer["id"], "kind": "workspace", "external_ref": ref},
    )
    assert workspace["external_ref"] == ref
    r = await get(api, "/v1/resources", external_ref=ref, key="runtime")
    assert r.json() == {"items": [workspace], "next_cursor": None}
    # A single read says the same as the list (it reads Postgres too).
    r = await api.get(f"/v1/resources/{workspace['id']}")
    assert r.json() == workspace


async def test_resources_filter_by_customer_parent_and_kind(api: Api) -> None:
    world = await make_world(api)
    other = await make_world(api, code=world.code, name="Other")
    helper = await created(
        api,
        "/v1/resources",
        {"customer_id": world.customer["id"], "kind": "agent", "parent_id": world.team["id"]},
    )
    customer = world.customer["id"]
    tree, _ = await every_page(api, "/v1/resources", customer_id=customer, limit=2)
    assert ids(tree) == [world.team["id"], world.agent["id"], helper["id"]]
    assert tree[0] == world.team
    children, _ = await every_page(api, "/v1/resources", parent_id=world.team["id"])
    assert ids(children) == [world.agent["id"], helper["id"]]
    agents, _ = await every_page(api, "/v1/resources", kind="agent", customer_id=customer)
    assert ids(agents) == [world.agent["id"], helper["id"]]
    teams, _ = await every_page(api, "/v1/resources", kind="team")
    assert {world.team["id"], other.team["id"]} <= set(ids(teams))
    assert all(item["kind"] == "team" for item in teams)
    nothing, _ = await every_page(api, "/v1/resources", parent_id=MISSING_ID)
    assert nothing == []


async def test_wallets_filter_by_resource_customer_and_credit_type(api: Api) -> None:
    world = await make_world(api)
    other = await make_world(api, code=world.code, name="Other")
    team_wallet = await created(
        api, "/v1/wallets", {"resource_id": world.team["id"], "credit_type": world.code}
    )
    r = await get(api, "/v1/wallets", resource_id=world.agent["id"])
    assert r.json() == {"items": [world.wallet], "next_cursor": None}
    theirs, _ = await every_page(api, "/v1/wallets", customer_id=world.customer["id"], limit=1)
    assert ids(theirs) == [world.wallet["id"], team_wallet["id"]]
    same_type, _ = await every_page(api, "/v1/wallets", credit_type=world.code)
    assert {world.wallet["id"], team_wallet["id"], other.wallet["id"]} == set(ids(same_type))
    r = await get(api, "/v1/wallets", credit_type="no_such_code")
    assert r.json() == {"items": [], "next_cursor": None}


async def test_grants_filter_by_wallet_state_category_and_expiry(api: Api) -> None:
    world = await make_world(api, granted=1000)
    wallet = world.wallet["id"]
    soon = await created(
        api,
        "/v1/grants",
        {"wallet_id": wallet, "amount": 50, "category": "promotional", "expires_at": at(3600)},
    )
    later = await created(
        api,
        "/v1/grants",
        {
            "wallet_id": wallet,
            "amount": 70,
            "category": "promotional",
            "expires_at": at(86_400),
            "external_ref": "promo-7",
            "reason": "welcome",
        },
    )
    r = await api.post(f"/v1/grants/{soon['id']}/void", {"reason": "abuse"})
    assert r.status_code == 200, r.text

    every, pages = await every_page(api, "/v1/grants", wallet_id=wallet, limit=2)
    assert (ids(every), pages) == ([world.grant["id"], soon["id"], later["id"]], 2)
    # The block as issued, without balances (GET /v1/grants/{id} has those).
    block = every[2]
    assert "available" not in block
    assert (block["amount"], block["category"], block["state"]) == (70, "promotional", "active")
    assert (block["external_ref"], block["reason"], block["actor"]) == (
        "promo-7",
        "welcome",
        "test-admin",
    )
    detail = (await api.get(f"/v1/grants/{later['id']}")).json()
    assert {k: detail[k] for k in block} == block

    def found(**params: Any) -> Any:
        return every_page(api, "/v1/grants", wallet_id=wallet, **params)

    assert ids((await found(state="voided"))[0]) == [soon["id"]]
    assert ids((await found(state="active"))[0]) == [world.grant["id"], later["id"]]
    # Not effective yet: upcoming, in the list as in the single read.
    coming = await created(
        api,
        "/v1/grants",
        {"wallet_id": wallet, "amount": 5, "category": "promotional", "effective_at": at(3600)},
    )
    (listed,), _ = await found(state="upcoming")
    assert (listed["id"], listed["state"]) == (coming["id"], "upcoming")
    assert (await api.get(f"/v1/grants/{coming['id']}")).json()["state"] == "upcoming"
    assert ids((await found(category="paid"))[0]) == [world.grant["id"]]
    assert ids((await found(expires_before=at(7200)))[0]) == [soon["id"]]
    assert ids((await found(expires_before=at(2 * 86_400)))[0]) == [soon["id"], later["id"]]


async def test_reservations_are_listed_from_the_ledger_with_their_status(api: Api) -> None:
    world = await make_world(api, granted=1000)
    made = [
        await created(api, "/v1/reservations", world.spend(amount=10 + i), "runtime")
        for i in range(5)
    ]
    await created(api, "/v1/debits", world.spend(amount=3), "runtime")  # not a reservation
    r = await api.post(f"/v1/reservations/{made[0]['id']}/settle", {"amount": 4}, key="runtime")
    assert r.status_code == 200, r.text
    r = await api.post(f"/v1/reservations/{made[1]['id']}/release", None, key="runtime")
    assert r.status_code == 200, r.text

    wallet = world.wallet["id"]
    listed, pages = await every_page(
        api, "/v1/reservations", wallet_id=wallet, limit=2, key="runtime"
    )
    assert (ids(listed), pages) == (ids(made), 3)
    assert [item["status"] for item in listed] == ["settled", "released", "held", "held", "held"]
    # Each item is what GET /v1/reservations/{id} answers.
    single = await api.get(f"/v1/reservations/{made[2]['id']}", "finance")
    assert listed[2] == single.json()
    assert (listed[2]["amount"], listed[2]["timeout_s"]) == (12, 3600)

    held, _ = await every_page(api, "/v1/reservations", wallet_id=wallet, status="held", limit=2)
    assert ids(held) == ids(made[2:])
    settled, _ = await every_page(api, "/v1/reservations", wallet_id=wallet, status="settled")
    assert ids(settled) == [made[0]["id"]]
    # Past their timeout (the service's clock moved on), the held ones are expired.
    service = services_of(api.app).service
    service.clock_ns = lambda: time.time_ns() + 2 * 3600 * 10**9
    try:
        expired, _ = await every_page(api, "/v1/reservations", wallet_id=wallet, status="expired")
    finally:
        service.clock_ns = time.time_ns
    assert ids(expired) == ids(made[2:])
    other = await make_world(api, code=world.code, name="Other")
    r = await get(api, "/v1/reservations", wallet_id=other.wallet["id"])
    assert r.json() == {"items": [], "next_cursor": None}
    assert_problem(await get(api, "/v1/reservations", wallet_id=MISSING_ID), "not_found")


async def test_budgets_filter_by_resource_and_credit_type(api: Api) -> None:
    world = await make_world(api)
    budgets = [
        await created(
            api,
            "/v1/budgets",
            {
                "resource_id": world.team["id"],
                "credit_type": world.code,
                "period": period,
                "cap": 500,
            },
        )
        for period in ("day", "month")
    ]
    listed, _ = await every_page(api, "/v1/budgets", resource_id=world.team["id"], limit=1)
    assert listed == budgets
    assert all(b["active"] and b["used"] is None for b in listed)
    of_type, _ = await every_page(api, "/v1/budgets", credit_type=world.code)
    assert set(ids(budgets)) <= set(ids(of_type))
    none, _ = await every_page(api, "/v1/budgets", resource_id=world.agent["id"])
    assert none == []


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        *[(path, {"limit": "0"}, "limit") for path in LISTS],
        ("/v1/customers", {"limit": "1001"}, "limit"),
        ("/v1/customers", {"limit": "ten"}, "limit"),
        ("/v1/customers", {"limit": "1.5"}, "limit"),
        *[(path, {"colour": "red"}, "colour") for path in LISTS],
        *[(path, {"cursor": "not a cursor!"}, "cursor") for path in LISTS],
        ("/v1/customers", {"cursor": ""}, "cursor"),
        ("/v1/customers", {"cursor": "x" * 201}, "cursor"),
        ("/v1/resources", {"customer_id": "42"}, "customer_id"),
        ("/v1/resources", {"kind": "planet"}, "kind"),
        ("/v1/grants", {"state": "gone"}, "state"),
        ("/v1/grants", {"expires_before": "tomorrow"}, "expires_before"),
        ("/v1/grants", {"expires_before": "2030-01-01T00:00:00"}, "expires_before"),  # no offset
        ("/v1/budgets", {"active": "maybe"}, "active"),
        ("/v1/reservations", {}, "wallet_id"),
        ("/v1/reservations", {"wallet_id": MISSING_ID, "status": "lost"}, "status"),
        ("/v1/prices/current", {"feature": "f"}, "credit_type"),
    ],
)
async def test_bad_list_parameters_are_refused_naming_them(
    api: Api, path: str, params: dict[str, str], field: str
) -> None:
    assert_problem(await get(api, path, **params), "validation_error", field=field)


async def test_a_parameter_given_twice_and_a_cursor_of_another_list_are_refused(api: Api) -> None:
    await make_world(api)
    r = await api.client.get("/v1/customers?limit=1&limit=2", headers=api.headers("admin"))
    assert_problem(r, "validation_error", field="limit")
    r = await get(api, "/v1/customers", limit=1)
    cursor = r.json()["next_cursor"]
    assert cursor is not None
    for other in ("/v1/resources", "/v1/wallets", "/v1/grants", "/v1/budgets", "/v1/prices"):
        assert_problem(await get(api, other, cursor=cursor), "validation_error", field="cursor")
    # An edited cursor is refused, not read as some other position.
    assert_problem(
        await get(api, "/v1/customers", cursor=cursor[:-2] + "zz"),
        "validation_error",
        field="cursor",
    )


async def test_a_bound_key_lists_only_its_own_customer(api: Api, pool: db.Pool) -> None:
    mine = await make_world(api, name="Mine")
    theirs = await make_world(api, code=mine.code, name="Theirs")
    for world in (mine, theirs):
        await created(
            api,
            "/v1/budgets",
            {"resource_id": world.team["id"], "credit_type": world.code, "period": "day", "cap": 9},
        )
        await created(api, "/v1/reservations", world.spend(amount=5), "runtime")
    api.keys["mine"] = await bound_key(pool, mine.customer["id"], ["finance"])
    await _until_known(api, "mine")

    customers, _ = await every_page(api, "/v1/customers", "mine")
    assert ids(customers) == [mine.customer["id"]]
    resources, _ = await every_page(api, "/v1/resources", "mine")
    assert ids(resources) == [mine.team["id"], mine.agent["id"]]
    wallets, _ = await every_page(api, "/v1/wallets", "mine")
    assert ids(wallets) == [mine.wallet["id"]]
    grants, _ = await every_page(api, "/v1/grants", "mine")
    assert ids(grants) == [mine.grant["id"]]
    budgets, _ = await every_page(api, "/v1/budgets", "mine")
    assert [b["resource_id"] for b in budgets] == [mine.team["id"]]
    reservations, _ = await every_page(api, "/v1/reservations", "mine", wallet_id=mine.wallet["id"])
    assert len(reservations) == 1
    # Naming the other customer's objects finds nothing (an empty page, or 404 for a wallet).
    theirs_id = theirs.customer["id"]
    for path, params in (
        ("/v1/resources", {"customer_id": theirs_id}),
        ("/v1/wallets", {"customer_id": theirs_id}),
        ("/v1/wallets", {"resource_id": theirs.agent["id"]}),
        ("/v1/grants", {"wallet_id": theirs.wallet["id"]}),
        ("/v1/budgets", {"resource_id": theirs.team["id"]}),
        ("/v1/customers", {"external_ref": "nothing"}),
    ):
        r = await get(api, path, "mine", **params)
        assert r.json() == {"items": [], "next_cursor": None}, (path, params)
    r = await get(api, "/v1/reservations", "mine", wallet_id=theirs.wallet["id"])
    assert_problem(r, "not_found")
    # The unbound key sees both.
    every, _ = await every_page(api, "/v1/wallets", credit_type=mine.code)
    assert {mine.wallet["id"], theirs.wallet["id"]} <= set(ids(every))


async def _until_known(api: Api, key: str) -> None:
    """A key created while the app runs is known once its notification came through."""
    deadline_s = time.monotonic() + 10.0
    while (await get(api, "/v1/customers", key)).status_code == 401:
        assert time.monotonic() < deadline_s, "the app never learned of the key"
        await asyncio.sleep(0.01)


async def test_a_cursor_made_up_with_numbers_past_any_real_one_is_refused(api: Api) -> None:
    """A cursor is opaque, but its numbers are a time and an id: ones no real row could have
    (a time past year 9999, a timestamp past TigerBeetle's) are 422, not a 500."""
    from api.paging import encode_cursor

    world = await make_world(api)
    kinds = {path: path.rsplit("/", 1)[1] for path in LISTS}
    for path, kind in kinds.items():
        # The same list's cursor with numbers a row could have is taken (the kind is right).
        assert (await get(api, path, cursor=encode_cursor(kind, 1, 1))).status_code == 200
        for numbers in ((10**30, 1), (2**63, 2**128 - 1)):
            r = await get(api, path, cursor=encode_cursor(kind, *numbers))
            assert_problem(r, "validation_error", field="cursor")
    r = await get(api, "/v1/reservations", key="runtime", wallet_id=world.wallet["id"],
                  cursor=encode_cursor("reservations", 1))  # fmt: skip
    assert r.status_code == 200, r.text
    for after_ns in (2**63 - 1, 2**64, 2**100):
        r = await get(
            api,
            "/v1/reservations",
            key="runtime",
            wallet_id=world.wallet["id"],
            cursor=encode_cursor("reservations", after_ns),
        )
        assert_problem(r, "validation_error", field="cursor")
