"""Schemathesis over the service's own OpenAPI document, against `credit-ledger serve` over real
HTTP (the hot lane, litestar, the protocol layer, the engine process and Postgres all in play).

For every operation, examples generated from the document (valid ones and, in the negative
phase, invalid ones) must never get a 5xx, every answer must have a documented status and
content type and match its documented schema, and invalid input must be refused with a 4xx.
Generation is deterministic (`derandomize`) and bounded (`FUZZ_EXAMPLES` per operation, 25 by
default), so that it fits CI; set FUZZ_EXAMPLES higher to search longer.

Ids are mostly random (and so refer to nothing), so generated ids are swapped, some of the
time, for those of real objects made beforehand: a credit type, a customer with resources,
wallets with grants, a reservation and a debit. That takes the fuzzer past "not found".
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import checks
from schemathesis.core.parameters import ParameterLocation

from api.app import ApiSettings, create_app
from api.openapi import document
from ledger.client import open_ledger
from ledger.embedded import EmbeddedEngine
from ledger.settings import LedgerSettings
from tests.api.served import Served, serve

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


def _made(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(path, json=body, headers={"Idempotency-Key": f"seed-{uuid.uuid4()}"})
    assert r.status_code in (200, 201), (path, r.text)
    answer: dict[str, Any] = r.json()
    return answer


def _seed(served: Served) -> dict[str, list[Any]]:
    """Real objects, by the names their ids go by in paths and bodies."""
    headers = {"Authorization": f"Bearer {served.key}"}
    with httpx.Client(base_url=served.url, headers=headers, timeout=30) as client:
        _made(client, "/v1/credit-types", {"code": "fuzz", "name": "Fuzz credits"})
        customer = _made(client, "/v1/customers", {"name": "Fuzz", "external_ref": "fuzz-1"})
        team = _made(client, "/v1/resources", {"customer_id": customer["id"], "kind": "team"})
        agent = _made(
            client,
            "/v1/resources",
            {"customer_id": customer["id"], "kind": "agent", "parent_id": team["id"]},
        )
        wallets = [
            _made(client, "/v1/wallets", {"resource_id": team["id"], "credit_type": "fuzz"}),
            _made(
                client,
                "/v1/wallets",
                {
                    "resource_id": agent["id"],
                    "credit_type": "fuzz",
                    "overdraft_mode": "soft",
                    "overdraft_limit": 1000,
                    "fall_through": True,
                },
            ),
        ]
        grants = [
            _made(
                client,
                "/v1/grants",
                {"wallet_id": w["id"], "amount": 10**12, "category": "promotional"},
            )
            for w in wallets
        ]
        budget = _made(
            client,
            "/v1/budgets",
            {"resource_id": team["id"], "credit_type": "fuzz", "period": "month", "cap": 10**9},
        )
        _made(client, "/v1/prices", {"feature": "chat", "credit_type": "fuzz",
                                     "credits_per_unit": 2})  # fmt: skip
        spend = {"resource_id": agent["id"], "credit_type": "fuzz", "amount": 5}
        reservation = _made(client, "/v1/reservations", spend)
        debit = _made(client, "/v1/debits", spend)
        allocation = {"credit_type": "fuzz", "amount": 100, "period": "month",
                      "category": "promotional"}  # fmt: skip
        plans = [
            _made(client, "/v1/plans", {"code": code, "name": code, "allocations": [allocation]})
            for code in ("fuzz_basic", "fuzz_pro")
        ]
        subscription = _made(
            client, "/v1/subscriptions", {"resource_id": agent["id"], "plan_id": plans[0]["id"]}
        )
    resources = [team["id"], agent["id"]]
    return {
        "customer_id": [customer["id"]],
        "resource_id": resources,
        "parent_id": resources,
        "wallet_id": [w["id"] for w in wallets],
        "grant_id": [g["id"] for g in grants],
        "budget_id": [budget["id"]],
        "reservation_id": [reservation["id"]],
        "debit_id": [debit["id"]],
        "plan_id": [p["id"] for p in plans],
        "subscription_id": [subscription["id"]],
        "code": ["fuzz"],
        "credit_type": ["fuzz"],
        "feature": ["chat"],
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, dict[str, Any]]]:
    with serve(Path(tmp_path_factory.mktemp("fuzz"))) as service:
        KNOWN.update(_seed(service))
        yield service, KNOWN


# Text that has broken services before: NUL (Postgres cannot store it), terminal escapes,
# separators, numbers and nulls spelled as text, long and astral characters.
NASTY = ["\x00", "a\x00b", "\x1b[31m", "\u2028", "\t", " ", "null", "-1", "9" * 40,
         "%00", "é" * 300, "\U0001f600" * 70, "../../etc/passwd"]  # fmt: skip


def _mixed_in(case: Any) -> st.SearchStrategy[Any]:
    """`case`, with each field of its path or body that names a kind of object replaced, about
    half of the time, by a real one of that kind, and other text fields now and then by nasty
    text. Parts generated to be invalid are left as they are; a part changed here is checked
    again against the schema (`mark_dirty`), so an answer is judged by what was really sent."""
    parts = []
    for location, attribute in ((ParameterLocation.PATH, "path_parameters"),
                                (ParameterLocation.BODY, "body")):  # fmt: skip
        values = getattr(case, attribute)
        negative = case.meta is not None and case.meta.is_negative_at(location)
        if isinstance(values, dict) and not negative:
            for name, value in values.items():
                if name in KNOWN:
                    parts.append((location, values, name, KNOWN[name]))
                elif location is ParameterLocation.BODY and isinstance(value, str):
                    parts.append((location, values, name, NASTY))
    if not parts:
        return st.just(case)
    choices = [st.one_of(st.none(), st.sampled_from(options)) for *_, options in parts]

    def apply(chosen: tuple[Any, ...]) -> Any:
        for (location, values, name, _), value in zip(parts, chosen, strict=True):
            if value is not None:
                values[name] = value
                if case.meta is not None:
                    case.meta.mark_dirty(location)
        return case

    return st.tuples(*choices).map(apply)


def _document() -> dict[str, Any]:
    """The OpenAPI document the service serves, built in this process (the test below checks
    that the running service serves the same one)."""
    engine = EmbeddedEngine()
    ledger = open_ledger(LedgerSettings(), engine=engine)
    try:
        app = create_app(ApiSettings(database=""), ledger=ledger, pool=None)  # type: ignore[arg-type]
        return document(app)
    finally:
        engine.close()


# Real ids, by the name they go by: filled once the service is up, read while generating.
KNOWN: dict[str, list[Any]] = {}
schema = schemathesis.openapi.from_dict(_document())


@schema.hook
def flatmap_case(context: Any, case: Any) -> Any:
    return _mixed_in(case)


def test_the_service_serves_the_document_fuzzed_here(served: tuple[Served, dict[str, Any]]) -> None:
    service, _ = served
    r = httpx.get(f"{service.url}/schema/openapi.json", timeout=30)
    assert r.status_code == 200
    assert r.json() == _document()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_5xx_and_every_answer_as_documented(
    case: Any, served: tuple[Served, dict[str, Any]]
) -> None:
    service, _ = served
    headers = {"Authorization": f"Bearer {service.key}"}
    if case.headers and "Idempotency-Key" in case.headers:
        # A generated key is as good as any, but each example is a call of its own.
        case.headers["Idempotency-Key"] = f"fuzz-{uuid.uuid4()}"
    try:
        case.call_and_validate(base_url=service.url, headers=headers, checks=CHECKS)
    except Exception:
        print(service.log_tail())
        raise


def test_the_whole_run_answered_no_5xx(served: tuple[Served, dict[str, Any]]) -> None:
    """After the fuzzing above: the service's own request counts, by status, have no 5xx (a
    check of the checks), and say how much was sent."""
    service, _ = served
    text = httpx.get(f"{service.url}/metrics", timeout=30).text
    by_status: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("http_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            status = labels.split('status="', 1)[1].split('"', 1)[0]
            by_status[status] = by_status.get(status, 0) + float(value)
    print(f"fuzz: {sum(by_status.values()):.0f} requests by status {sorted(by_status.items())}")
    assert sum(by_status.values()) >= 10 * EXAMPLES
    assert not [s for s in by_status if s.startswith("5")], by_status
