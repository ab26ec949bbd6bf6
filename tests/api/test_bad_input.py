"""Bad input of every kind gets a 4xx with a stable code (naming the field where there is
one) and changes nothing: the wallet's balance and the catalog are as they were."""

from __future__ import annotations

from typing import Any

import pytest

from ledger import db
from tests.api.conftest import Api
from tests.api.support import (
    AMOUNT_MAX,
    World,
    assert_problem,
    balance,
    catalog_counts,
    created,
    make_world,
)

pytestmark = pytest.mark.anyio

SPEND_SCOPE = {
    "/v1/debits": "runtime",
    "/v1/debits/batch": "runtime",
    "/v1/reservations": "runtime",
    "/v1/check": "runtime",
}


class Unchanged:
    """The wallet's balance, its grant and the catalog's row counts, to compare at the end."""

    def __init__(self, api: Api, pool: db.Pool, world: World) -> None:
        self.api, self.pool, self.world = api, pool, world
        self.before: tuple[Any, ...] = ()

    async def snapshot(self) -> tuple[Any, ...]:
        grant = await self.api.get(f"/v1/grants/{self.world.grant['id']}", "finance")
        return (
            await balance(self.api, self.world.wallet["id"]),
            grant.json(),
            await catalog_counts(self.pool),
        )

    async def __aenter__(self) -> Unchanged:
        self.before = await self.snapshot()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is None:
            assert await self.snapshot() == self.before


async def _post(api: Api, path: str, body: Any) -> Any:
    scope = "runtime" if path.startswith("/v1/reservations/") else SPEND_SCOPE.get(path, "admin")
    return await api.post(path, body, key=scope)


async def _reservation(api: Api, world: World) -> str:
    reservation = await created(api, "/v1/reservations", world.spend(amount=10), "runtime")
    return str(reservation["id"])


async def test_wrong_types(api: Api, pool: db.Pool) -> None:
    world = await make_world(api, granted=1000)
    reservation = await _reservation(api, world)
    settle = f"/v1/reservations/{reservation}/settle"
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/debits", world.spend(amount="5"), "amount"),
        ("/v1/debits", world.spend(amount=5.0), "amount"),
        ("/v1/debits", world.spend(amount=True), "amount"),
        ("/v1/debits", world.spend(amount=None), "amount"),
        ("/v1/debits", world.spend(amount=[5]), "amount"),
        ("/v1/debits", world.spend(amount={"value": 5}), "amount"),
        ("/v1/debits", world.spend(amount=5, credit_type=5), "credit_type"),
        ("/v1/debits", world.spend(amount=5, resource_id=5), "resource_id"),
        ("/v1/debits", world.spend(amount=5, dimensions={"feature": 5}), "dimensions"),
        ("/v1/debits", world.spend(amount=5, dimensions=["feature"]), "dimensions"),
        ("/v1/debits", world.spend(usage={"feature": 5, "quantity": 1}), "usage.feature"),
        ("/v1/debits", world.spend(usage={"feature": "f", "quantity": "1"}), "usage.quantity"),
        ("/v1/debits", world.spend(usage="f"), "usage"),
        ("/v1/reservations", world.spend(amount=5, timeout_s="60"), "timeout_s"),
        ("/v1/check", world.spend(amount="5"), "amount"),
        (settle, {"amount": "5"}, "amount"),
        (settle, {"amount": 5, "overage": 1}, "overage"),
        (
            "/v1/grants",
            {"wallet_id": world.wallet["id"], "amount": "5", "category": "promotional"},
            "amount",
        ),
        (
            "/v1/grants",
            {
                "wallet_id": world.wallet["id"],
                "amount": 5,
                "category": "promotional",
                "expires_at": 1700000000,
            },
            "expires_at",
        ),
        (
            "/v1/grants",
            {
                "wallet_id": world.wallet["id"],
                "amount": 5,
                "category": "promotional",
                "priority": "high",
            },
            "priority",
        ),
        ("/v1/credit-types", {"code": "x1", "name": 5}, "name"),
        ("/v1/credit-types", {"code": "x1", "name": "X", "asset_scale": "2"}, "asset_scale"),
        ("/v1/customers", {"name": 5}, "name"),
        ("/v1/customers", {"name": ["Acme"]}, "name"),
        ("/v1/resources", {"customer_id": world.customer["id"], "kind": 1}, "kind"),
        (
            "/v1/wallets",
            {"resource_id": world.team["id"], "credit_type": world.code, "fall_through": "yes"},
            "fall_through",
        ),
        (
            "/v1/budgets",
            {
                "resource_id": world.team["id"],
                "credit_type": world.code,
                "period": "day",
                "cap": "5",
            },
            "cap",
        ),
        (
            "/v1/prices",
            {"feature": "f", "credit_type": world.code, "credits_per_unit": "1"},
            "credits_per_unit",
        ),
        (f"/v1/debits/{world.grant['id']}/refund", {"amount": "1"}, "amount"),
    ]
    async with Unchanged(api, pool, world):
        for path, body, field in cases:
            r = await _post(api, path, body)
            got = assert_problem(r, "validation_error")
            assert got.get("field", "").startswith(field), (path, body, got)


async def test_amounts_out_of_range(api: Api, pool: db.Pool) -> None:
    world = await make_world(api, granted=1000)
    reservation = await _reservation(api, world)
    debit = await created(api, "/v1/debits", world.spend(amount=10), "runtime")
    settle = f"/v1/reservations/{reservation}/settle"
    refund = f"/v1/debits/{debit['id']}/refund"
    grant = {"wallet_id": world.wallet["id"], "category": "promotional"}
    budget = {"resource_id": world.team["id"], "credit_type": world.code, "period": "day"}
    price = {"feature": "f", "credit_type": world.code}
    wallet = {"resource_id": world.team["id"], "credit_type": world.code, "overdraft_mode": "soft"}
    cases: list[tuple[str, dict[str, Any], str]] = []
    for bad in (0, -1, -(2**63), AMOUNT_MAX + 1, 2**64, 10**40):
        cases += [
            ("/v1/debits", world.spend(amount=bad), "amount"),
            ("/v1/reservations", world.spend(amount=bad), "amount"),
            ("/v1/check", world.spend(amount=bad), "amount"),
            ("/v1/debits", world.spend(usage={"feature": "f", "quantity": bad}), "usage.quantity"),
            ("/v1/grants", {**grant, "amount": bad}, "amount"),
            (refund, {"amount": bad}, "amount"),
            ("/v1/budgets", {**budget, "cap": bad}, "cap"),
        ]
    for bad in (-1, AMOUNT_MAX + 1, 10**40):
        cases += [
            (settle, {"amount": bad}, "amount"),
            ("/v1/prices", {**price, "credits_per_unit": bad}, "credits_per_unit"),
            ("/v1/wallets", {**wallet, "overdraft_limit": bad}, "overdraft_limit"),
            (
                "/v1/grants",
                {**grant, "amount": 5, "consideration_minor": bad},
                "consideration_minor",
            ),
        ]
    async with Unchanged(api, pool, world):
        for path, body, field in cases:
            r = await _post(api, path, body)
            assert_problem(r, "validation_error", field=field)
        # The largest amount is valid input: a business refusal, not a validation error.
        r = await api.post("/v1/debits", world.spend(amount=AMOUNT_MAX), key="runtime")
        assert_problem(r, "insufficient_credits", available=980)
        r = await api.post("/v1/check", world.spend(amount=AMOUNT_MAX), key="runtime")
        assert (r.status_code, r.json()["allowed"], r.json()["amount"]) == (200, False, AMOUNT_MAX)
        r = await api.post(refund, {"amount": 11})
        assert_problem(r, "validation_error", field="amount")


async def test_a_refusal_reports_large_amounts_as_integers(api: Api) -> None:
    world = await make_world(api, granted=1000)
    r = await api.post("/v1/debits", world.spend(amount=AMOUNT_MAX), key="runtime")
    body = assert_problem(r, "insufficient_credits")
    assert body["needed"] == AMOUNT_MAX


async def test_unknown_fields_are_refused(api: Api, pool: db.Pool) -> None:
    world = await make_world(api, granted=1000)
    reservation = await _reservation(api, world)
    bodies: list[tuple[str, dict[str, Any]]] = [
        ("/v1/debits", world.spend(amount=5)),
        ("/v1/reservations", world.spend(amount=5)),
        ("/v1/check", world.spend(amount=5)),
        (f"/v1/reservations/{reservation}/settle", {"amount": 5}),
        ("/v1/credit-types", {"code": f"u{api.seq}", "name": "U"}),
        ("/v1/customers", {"name": "U"}),
        ("/v1/resources", {"customer_id": world.customer["id"], "kind": "team"}),
        ("/v1/wallets", {"resource_id": world.team["id"], "credit_type": world.code}),
        ("/v1/grants", {"wallet_id": world.wallet["id"], "amount": 5, "category": "promotional"}),
        (f"/v1/grants/{world.grant['id']}/void", {}),
        (
            "/v1/budgets",
            {"resource_id": world.team["id"], "credit_type": world.code, "period": "day", "cap": 5},
        ),
        ("/v1/prices", {"feature": "f", "credit_type": world.code, "credits_per_unit": 1}),
        ("/v1/debits/batch", {"debits": [{**world.spend(amount=5), "idempotency_key": "u"}]}),
    ]
    async with Unchanged(api, pool, world):
        for path, body in bodies:
            for typo in ({"amonut": 5}, {"surprise": None}):
                r = await _post(api, path, {**body, **typo})
                got = assert_problem(r, "validation_error")
                assert "unknown field" in got["detail"], got
        r = await api.post(
            "/v1/debits",
            world.spend(usage={"feature": "f", "quantity": 1, "unit": "s"}),
            key="runtime",
        )
        assert "unknown field" in assert_problem(r, "validation_error")["detail"]
        r = await api.post(
            "/v1/debits/batch",
            {"debits": [{**world.spend(amount=5), "idempotency_key": "u", "extra": 1}]},
            key="runtime",
        )
        assert "unknown field" in assert_problem(r, "validation_error")["detail"]


async def test_an_unknown_or_missing_field_is_named(api: Api) -> None:
    world = await make_world(api, granted=1000)
    r = await api.post("/v1/debits", {"resource_id": world.agent["id"], "amount": 1}, key="runtime")
    assert_problem(r, "validation_error", field="credit_type")
    r = await api.post("/v1/debits", world.spend(amount=5, amonut=5), key="runtime")
    assert_problem(r, "validation_error", field="amonut")
    r = await api.post(
        "/v1/debits",
        world.spend(usage={"feature": "f", "quantity": 1, "unit": "s"}),
        key="runtime",
    )
    assert_problem(r, "validation_error", field="usage.unit")


async def test_malformed_bodies(api: Api, pool: db.Pool) -> None:
    world = await make_world(api, granted=1000)
    raw_bodies = [
        b'{"amount": ',
        b"{amount: 5}",
        b"not json",
        b'{"credit_type": "x", "amount": NaN}',
        b"",
        b"[]",
        b'"a string"',
        b"null",
        b"42",
        b"\xff\xfe{}",
    ]
    async with Unchanged(api, pool, world):
        for path in ("/v1/debits", "/v1/customers", "/v1/debits/batch"):
            scope = "admin" if path == "/v1/customers" else "runtime"
            for raw in raw_bodies:
                r = await api.client.post(
                    path,
                    content=raw,
                    headers={
                        **api.headers(scope, api.k("raw")),
                        "content-type": "application/json",
                    },
                )
                assert_problem(r, "validation_error")


async def test_malformed_ids(api: Api, pool: db.Pool) -> None:
    world = await make_world(api, granted=1000)
    bad_ids = [
        "nope",
        "00000000-0000-0000-0000-000000000000",  # zero is no object's id
        world.wallet["id"].upper(),
        world.wallet["id"] + "0",
        world.wallet["id"][:-1],
        "12345",
    ]
    async with Unchanged(api, pool, world):
        for bad in bad_ids:
            for path, body, field in (
                (
                    "/v1/debits",
                    {"credit_type": world.code, "wallet_id": bad, "amount": 1},
                    "wallet_id",
                ),
                (
                    "/v1/reservations",
                    {"credit_type": world.code, "resource_id": bad, "amount": 1},
                    "resource_id",
                ),
                (
                    "/v1/grants",
                    {"wallet_id": bad, "amount": 1, "category": "promotional"},
                    "wallet_id",
                ),
                ("/v1/resources", {"customer_id": bad, "kind": "team"}, "customer_id"),
            ):
                r = await _post(api, path, body)
                assert_problem(r, "validation_error", field=field)
        for bad in ("nope", "00000000-0000-0000-0000-000000000000", "12345"):
            for path, field in (
                (f"/v1/wallets/{bad}", "wallet_id"),
                (f"/v1/wallets/{bad}/entries", "wallet_id"),
                (f"/v1/grants/{bad}", "grant_id"),
                (f"/v1/reservations/{bad}", "reservation_id"),
                (f"/v1/budgets/{bad}", "budget_id"),
                (f"/v1/customers/{bad}", "customer_id"),
                (f"/v1/resources/{bad}", "resource_id"),
            ):
                assert_problem(await api.get(path, "runtime"), "validation_error", field=field)
            writes: list[tuple[str, Any, str]] = [
                (f"/v1/reservations/{bad}/settle", {"amount": 1}, "reservation_id"),
                (f"/v1/reservations/{bad}/release", None, "reservation_id"),
                (f"/v1/grants/{bad}/void", {}, "grant_id"),
                (f"/v1/debits/{bad}/refund", {"amount": 1}, "debit_id"),
            ]
            for path, body, field in writes:
                assert_problem(await _post(api, path, body), "validation_error", field=field)


async def test_batches_out_of_bounds_or_invalid_apply_nothing(api: Api, pool: db.Pool) -> None:
    world = await make_world(api, granted=5000)

    def items(count: int) -> list[dict[str, Any]]:
        return [
            {**world.spend(amount=1), "idempotency_key": api.k(f"big-{i}")} for i in range(count)
        ]

    async with Unchanged(api, pool, world):
        r = await api.post("/v1/debits/batch", {"debits": items(1001)}, key="runtime")
        assert_problem(r, "validation_error", field="debits")
        r = await api.post("/v1/debits/batch", {"debits": []}, key="runtime")
        assert_problem(r, "validation_error", field="debits")
        r = await api.post("/v1/debits/batch", {}, key="runtime")
        assert_problem(r, "validation_error")
        # One malformed item refuses the whole batch: the valid ones are not applied either.
        batch = items(3)
        batch[1] = {**batch[1], "amount": -1}
        r = await api.post("/v1/debits/batch", {"debits": batch}, key="runtime")
        assert_problem(r, "validation_error", field="debits[1].amount")
        batch[1] = {k: v for k, v in batch[1].items() if k != "idempotency_key"}
        batch[1]["amount"] = 1
        r = await api.post("/v1/debits/batch", {"debits": batch}, key="runtime")
        assert_problem(r, "validation_error")
        batch[1]["idempotency_key"] = "k" * 256
        r = await api.post("/v1/debits/batch", {"debits": batch}, key="runtime")
        assert_problem(r, "validation_error", field="debits[1].idempotency_key")
    # The largest batch is accepted.
    r = await api.post("/v1/debits/batch", {"debits": items(1000)}, key="runtime")
    assert r.status_code == 200, r.text
    assert {x["status"] for x in r.json()["results"]} == {201}
    assert await balance(api, world.wallet["id"]) == (4000, 0, 1000)


async def test_timeouts_page_sizes_and_cursors_out_of_range(api: Api, pool: db.Pool) -> None:
    world = await make_world(api, granted=1000)
    wallet = world.wallet["id"]
    async with Unchanged(api, pool, world):
        for timeout_s in (0, -1, 86401, 2**32, 2**64):
            r = await api.post(
                "/v1/reservations", world.spend(amount=1, timeout_s=timeout_s), key="runtime"
            )
            assert_problem(r, "validation_error", field="timeout_s")
        for query in (
            "limit=0",
            "limit=1001",
            "limit=-1",
            "limit=abc",
            "limit=1.5",
            f"limit={2**70}",
        ):
            r = await api.get(f"/v1/wallets/{wallet}/entries?{query}", "runtime")
            assert_problem(r, "validation_error", field="limit")
        for cursor in ("abc", "-", "1e5", "-1", str(2**64), str(2**128), "0", "AAAA", "%00"):
            r = await api.get(f"/v1/wallets/{wallet}/entries?cursor={cursor}", "runtime")
            assert_problem(r, "validation_error", field="cursor")
    for timeout_s in (1, 86400):
        r = await api.post(
            "/v1/reservations", world.spend(amount=1, timeout_s=timeout_s), key="runtime"
        )
        assert (r.status_code, r.json()["timeout_s"]) == (201, timeout_s)
    for limit in (1, 1000):
        r = await api.get(f"/v1/wallets/{wallet}/entries?limit={limit}", "runtime")
        assert r.status_code == 200, r.text


async def test_exactly_one_amount_or_usage_and_one_target(api: Api, pool: db.Pool) -> None:
    world = await make_world(api, granted=1000)
    await created(
        api, "/v1/prices", {"feature": "f", "credit_type": world.code, "credits_per_unit": 2}
    )
    reservation = await _reservation(api, world)
    usage = {"feature": "f", "quantity": 1}
    wallet = world.wallet["id"]
    resource = world.agent["id"]
    async with Unchanged(api, pool, world):
        for path in ("/v1/debits", "/v1/reservations", "/v1/check"):
            for body, field in (
                (
                    {
                        "credit_type": world.code,
                        "resource_id": resource,
                        "amount": 1,
                        "usage": usage,
                    },
                    "amount",
                ),
                ({"credit_type": world.code, "resource_id": resource}, "amount"),
                (
                    {
                        "credit_type": world.code,
                        "resource_id": resource,
                        "wallet_id": wallet,
                        "amount": 1,
                    },
                    "resource_id",
                ),
                ({"credit_type": world.code, "amount": 1}, "resource_id"),
            ):
                r = await _post(api, path, body)
                assert_problem(r, "validation_error", field=field)
            r = await _post(api, path, {"resource_id": resource, "amount": 1})
            assert "credit_type" in assert_problem(r, "validation_error")["detail"]
            # A batch item of the wrong shape is malformed: the whole batch is refused, as the
            # document's schema says (what exists is then answered item by item).
            good = {**world.spend(amount=1), "idempotency_key": api.k("ok")}
            for item, field in (
                ({"credit_type": world.code, "amount": 1}, "debits[1].resource_id"),
                ({"credit_type": world.code, "resource_id": resource}, "debits[1].amount"),
            ):
                r = await api.post(
                    "/v1/debits/batch",
                    {"debits": [good, {**item, "idempotency_key": api.k("nt")}]},
                    key="runtime",
                )
                assert_problem(r, "validation_error", field=field)
        settle = f"/v1/reservations/{reservation}/settle"
        for body in ({"amount": 1, "usage": usage}, {}, {"overage": "reject"}):
            assert_problem(await _post(api, settle, body), "validation_error", field="amount")
        r = await _post(api, settle, {"usage": {"feature": "unpriced", "quantity": 1}})
        assert_problem(r, "validation_error", field="usage.feature")
    r = await api.get(f"/v1/reservations/{reservation}", "runtime")
    assert r.json()["status"] == "held"


async def test_dimensions_are_bounded(api: Api, pool: db.Pool) -> None:
    world = await make_world(api, granted=1000)
    async with Unchanged(api, pool, world):
        for dimensions in (
            {f"d{i}": "v" for i in range(17)},
            {"x" * 65: "v"},
            {"feature": "v" * 257},
            {"": "v"},
        ):
            r = await api.post(
                "/v1/debits", world.spend(amount=1, dimensions=dimensions), key="runtime"
            )
            assert assert_problem(r, "validation_error")["field"].startswith("dimensions")
    r = await api.post(
        "/v1/debits",
        world.spend(
            amount=1, dimensions={**{f"d{i}": "v" for i in range(15)}, "x" * 64: "v" * 256}
        ),
        key="runtime",
    )
    assert r.status_code == 201, r.text


async def test_authentication_comes_before_body_validation(api: Api) -> None:
    world = await make_world(api, granted=1000)
    bad = world.spend(amount="lots", surprise=1)
    r = await api.client.post("/v1/debits", json=bad, headers={"Idempotency-Key": "x"})
    assert_problem(r, "unauthorized")
    r = await api.post("/v1/debits", bad, key="finance")
    assert_problem(r, "forbidden")


async def test_one_spelling_of_ids_and_none_that_no_object_can_have(
    api: Api, pool: db.Pool
) -> None:
    world = await make_world(api, granted=1000)
    wallet = world.wallet["id"]
    hex_digits = wallet.replace("-", "")
    spellings = [
        "{" + wallet + "}",
        "urn:uuid:" + wallet,
        hex_digits,
        wallet.upper(),
        "ffffffff-ffff-ffff-ffff-ffffffffffff",  # 2^128-1: TigerBeetle refuses it as an id
        "00000000-0000-0000-0000-000000000000",
    ]
    async with Unchanged(api, pool, world):
        for bad in spellings:
            for path, field in (
                (f"/v1/wallets/{bad}", "wallet_id"),
                (f"/v1/wallets/{bad}/entries", "wallet_id"),
                (f"/v1/grants/{bad}", "grant_id"),
                (f"/v1/reservations/{bad}", "reservation_id"),
            ):
                assert_problem(await api.get(path, "runtime"), "validation_error", field=field)
            r = await _post(api, "/v1/debits", {"credit_type": world.code, "wallet_id": bad,
                                                "amount": 1})  # fmt: skip
            assert_problem(r, "validation_error", field="wallet_id")
            r = await _post(api, f"/v1/reservations/{bad}/release", None)
            assert_problem(r, "validation_error", field="reservation_id")
    # The one spelling the API writes is the one it reads.
    r = await api.get(f"/v1/wallets/{wallet}", "runtime")
    assert r.status_code == 200 and r.json()["wallet"]["id"] == wallet


async def test_text_that_postgres_or_a_log_line_cannot_hold_is_refused(
    api: Api, pool: db.Pool
) -> None:
    world = await make_world(api, granted=1000)
    async with Unchanged(api, pool, world):
        for path, body, field in (
            ("/v1/customers", {"name": "Ac\u0000me"}, "name"),
            ("/v1/customers", {"name": "Acme", "external_ref": "a\u0000"}, "external_ref"),
            ("/v1/customers", {"name": "Acme\u001b[31m"}, "name"),
            (f"/v1/grants/{world.grant['id']}/void", {"reason": "x\u0000y"}, "reason"),
            (
                "/v1/prices",
                {"feature": "f\u0000", "credit_type": world.code, "credits_per_unit": 1},
                "feature",
            ),
            ("/v1/debits", world.spend(amount=1, dimensions={"m": "a\u0000"}), "dimensions"),
            ("/v1/debits", world.spend(amount=1, dimensions={"m\u0000": "a"}), "dimensions"),
        ):
            r = await _post(api, path, body)
            problem = assert_problem(r, "validation_error")
            assert problem["field"].startswith(field), (path, problem)
    # Line breaks and tabs are fine in a reason.
    r = await api.post(f"/v1/grants/{world.grant['id']}/void", {"reason": "a\n\tb"})
    assert r.status_code == 200, r.text


async def test_deep_nesting_and_duplicate_keys_on_admin_routes(api: Api, pool: db.Pool) -> None:
    world = await make_world(api, granted=1000)
    deep = b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    async with Unchanged(api, pool, world):
        for raw in (
            deep,
            b'{"name": "Acme", "name": "Evil"}',
            b'{"name": "Acme", "external_ref": "a", "external_ref": "b"}',
            b'{"name": "\xff"}',
        ):
            r = await api.client.post(
                "/v1/customers",
                content=raw,
                headers={**api.headers("admin", api.k("raw")), "content-type": "application/json"},
            )
            assert_problem(r, "validation_error")
        r = await api.client.post(
            "/v1/customers",
            content=b'{"name": "Acme"}',
            headers={**api.headers("admin", api.k("raw")), "content-type": "text/plain"},
        )
        assert_problem(r, "unsupported_media_type")


async def test_a_pattern_refused_is_said_in_words(api: Api) -> None:
    world = await make_world(api, granted=10)
    for path, body, words in (
        ("/v1/debits", {"credit_type": world.code, "wallet_id": "ABC", "amount": 1}, "an id"),
        ("/v1/customers", {"name": "a\u0007"}, "without control characters"),
        (
            "/v1/debits",
            {"credit_type": "Credits", "wallet_id": world.wallet["id"], "amount": 1},
            "a code",
        ),
    ):
        problem = assert_problem(await _post(api, path, body), "validation_error")
        assert words in problem["detail"] and "regex" not in problem["detail"], problem


async def test_a_consideration_without_its_currency_is_named_not_a_constraint(
    api: Api, pool: db.Pool
) -> None:
    """A promotional grant with a consideration but no currency is refused before anything is
    written, naming `currency` in words, not with the name of a database constraint."""
    world = await make_world(api, granted=10)
    body = {
        "wallet_id": world.wallet["id"],
        "amount": 5,
        "category": "promotional",
        "consideration_minor": 5,
    }
    async with Unchanged(api, pool, world):
        problem = assert_problem(await _post(api, "/v1/grants", body), "validation_error")
    assert problem.get("field") == "currency", problem
    assert "constraint" not in problem and "constraint" not in problem["detail"], problem
