"""The OpenAPI document describes what the app serves: every route with a description, every
error code, the problem responses of each route, and the headers every POST needs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute

from api.errors import PROBLEM_MEDIA_TYPE, STATUS
from ledger import db
from tests.api.conftest import Api
from tests.api.support import running_api, scope_keys

pytestmark = pytest.mark.anyio

SCHEMA_PATH = "/schema/openapi.json"
# Routes that change nothing, carry their keys per item, or are idempotent by nature (closing a
# closed month answers it; the same breakage policy again answers it; advancing the test clock
# `to` an instant): no Idempotency-Key.
NO_IDEMPOTENCY_KEY = {
    ("POST", "/v1/check"),
    ("POST", "/v1/debits/batch"),
    ("POST", "/v1/periods/{period}/close"),
    ("POST", "/v1/periods/{period}/lock"),
    ("POST", "/v1/finance/breakage-policies"),
    ("POST", "/v1/test-clock/advance"),
}
# POSTs without a body: the path says it all.
NO_BODY = (
    "/release",
    "/close",
    "/lock",
    "/rotate-secret",
    "/disable",
    "/enable",
    "/pause",
    "/resume",
    "/cancel",
)
WRITES = ("POST", "PATCH", "DELETE")
UNAUTHENTICATED = {"/healthz", "/readyz", "/metrics"}


def _served(app: Litestar) -> set[tuple[str, str]]:
    """(method, path) of every handler the app serves, but OPTIONS and the schema's own."""
    served: set[tuple[str, str]] = set()
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or route.path.startswith("/schema"):
            continue
        for handler in route.route_handlers:
            for method in handler.http_methods:
                if method not in ("OPTIONS", "HEAD"):
                    served.add((str(method), route.path_format))
    return served


@dataclass
class Served:
    api: Api
    routes: set[tuple[str, str]]
    document: dict[str, Any]


@pytest.fixture
async def served(pool: db.Pool, migrated_db_url: str) -> AsyncIterator[Served]:
    keys = await scope_keys(pool)
    async with running_api(pool, migrated_db_url, keys) as (api, app, _):
        r = await api.client.get(SCHEMA_PATH)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/")
        yield Served(api, _served(app), r.json())


@pytest.fixture
def document(served: Served) -> dict[str, Any]:
    return served.document


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method.upper() in ("GET", "POST", "PUT", "PATCH", "DELETE")
    }


async def test_the_document_is_served(served: Served) -> None:
    api, document = served.api, served.document
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "credit-ledger"
    assert "Idempotency-Key" in document["info"]["description"]
    # The issue names GET /schema: it answers (litestar serves a viewer there).
    r = await api.client.get("/schema")
    assert r.status_code == 200


async def test_every_served_route_is_documented_with_a_description(served: Served) -> None:
    operations = _operations(served.document)
    assert set(operations) == served.routes
    assert len(served.routes) >= 37
    undescribed = [k for k, op in operations.items() if len(op.get("description", "")) < 10]
    assert undescribed == []
    # Request bodies are documented with their schema.
    for (method, path), operation in operations.items():
        if method in ("POST", "PATCH") and not path.endswith(NO_BODY):
            content = operation["requestBody"]["content"]["application/json"]
            assert content["schema"], (method, path)


async def test_every_error_code_appears_in_the_document(document: dict[str, Any]) -> None:
    text = json.dumps(document)
    missing = sorted(code for code in STATUS if code not in text)
    assert missing == []


async def test_every_route_documents_its_problem_responses(document: dict[str, Any]) -> None:
    gaps = []
    for (method, path), operation in _operations(document).items():
        responses = operation.get("responses", {})
        queried = any(p["in"] == "query" for p in operation.get("parameters", []))
        expected = {"422"} if method in WRITES or queried else set()
        if path not in UNAUTHENTICATED:
            expected |= {"401", "403"}
        if "{" in path:
            expected.add("404")
        if method in ("PATCH", "DELETE"):
            expected |= {"409"}  # idempotency_conflict
        if method == "POST" and path in ("/v1/debits", "/v1/reservations"):
            expected |= {"402", "409", "503"}
        for status in sorted(expected):
            content = responses.get(status, {}).get("content", {})
            if PROBLEM_MEDIA_TYPE not in content:
                gaps.append(f"{method} {path} {status}")
        if "400" in responses:
            gaps.append(f"{method} {path} documents 400, which the API never sends")
    assert gaps == []


async def test_every_success_response_has_a_schema(document: dict[str, Any]) -> None:
    empty = []
    for (method, path), operation in _operations(document).items():
        for status, response in operation["responses"].items():
            if not status.startswith("2") or path == "/metrics":
                continue
            schema = response.get("content", {}).get("application/json", {}).get("schema")
            if not schema:
                empty.append(f"{method} {path} {status}")
    assert empty == []


async def test_auth_and_idempotency_headers_are_documented(document: dict[str, Any]) -> None:
    schemes = document.get("components", {}).get("securitySchemes", {})
    assert any(s.get("scheme", "").lower() == "bearer" for s in schemes.values()), schemes
    missing = []
    for (method, path), operation in _operations(document).items():
        if method not in WRITES or (method, path) in NO_IDEMPOTENCY_KEY:
            continue
        headers = {
            p["name"].lower() for p in operation.get("parameters", []) if p["in"] == "header"
        }
        if "idempotency-key" not in headers:
            missing.append(path)
    assert missing == []


async def test_every_list_documents_its_page_and_its_filters(document: dict[str, Any]) -> None:
    operations = _operations(document)
    filters = {
        "/v1/customers": {"external_ref"},
        "/v1/resources": {"customer_id", "parent_id", "kind", "external_ref"},
        "/v1/wallets": {"resource_id", "customer_id", "credit_type"},
        "/v1/grants": {"wallet_id", "state", "category", "expires_before"},
        "/v1/reservations": {"wallet_id", "status"},
        "/v1/budgets": {"resource_id", "credit_type", "active"},
        "/v1/prices": {"feature", "credit_type"},
    }
    for path, named in filters.items():
        parameters = {p["name"]: p for p in operations[("GET", path)]["parameters"]}
        assert set(parameters) == {"limit", "cursor", *named}, path
        assert all(p["in"] == "query" for p in parameters.values())
        assert parameters["limit"]["schema"]["maximum"] == 1000
        schema = operations[("GET", path)]["responses"]["200"]["content"]["application/json"]
        assert schema["schema"]["$ref"].endswith("Page"), path
    wallet_id = {p["name"]: p for p in operations[("GET", "/v1/reservations")]["parameters"]}
    assert wallet_id["wallet_id"]["required"] is True


async def test_every_request_body_has_an_example(document: dict[str, Any]) -> None:
    schemas = document.get("components", {}).get("schemas", {})
    missing = []
    for (method, path), operation in _operations(document).items():
        body = operation.get("requestBody")
        if body is None:
            continue
        media = body["content"]["application/json"]
        name = media["schema"].get("$ref", "").rsplit("/", 1)[-1]
        schema = schemas.get(name, media["schema"])
        if not ({"example", "examples"} & (set(media) | set(schema))):
            missing.append(f"{method} {path}")
    assert missing == []


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


async def test_bodies_are_described_as_they_are_decoded(document: dict[str, Any]) -> None:
    """Exact enough for a generated client or a fuzzer: unknown fields refused, the real bounds,
    exactly one of each pair the service requires, one spelling of ids."""
    spend = _schema(document, "SpendIn")
    assert spend["additionalProperties"] is False
    amount = spend["properties"]["amount"]["anyOf"][0]
    assert (amount["minimum"], amount["maximum"]) == (1, 2**63 - 1)
    assert type(amount["maximum"]) is int  # not 9.223372036854776e+18, which is 2**63
    pairs = [
        sorted(next(iter(choice["required"])) for choice in rule["oneOf"])
        for rule in spend["allOf"]
    ]
    assert pairs == [["resource_id", "wallet_id"], ["amount", "usage"]]
    assert _schema(document, "GrantIn")["additionalProperties"] is False
    dimensions = spend["properties"]["dimensions"]["anyOf"][0]
    assert dimensions["maxProperties"] == 16
    assert dimensions["propertyNames"]["maxLength"] == 64
    effective_at = _schema(document, "GrantIn")["properties"]["effective_at"]["anyOf"][0]
    assert effective_at["format"] == "date-time" and "UTC offset" in effective_at["description"]
    for path, item in document["paths"].items():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"].endswith("_id"):
                    assert parameter["schema"]["pattern"].startswith("^[0-9a-f]{8}-"), path


async def test_the_probes_and_metrics_need_no_key_and_document_their_failure(
    document: dict[str, Any],
) -> None:
    for path in UNAUTHENTICATED:
        (operation,) = document["paths"][path].values()
        assert operation["security"] == [], path
    for path in ("/healthz", "/readyz"):
        assert "503" in document["paths"][path]["get"]["responses"], path
    assert "text/plain" in next(
        iter(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"])
    )


async def test_the_entries_document_their_types_times_and_running_figures(
    document: dict[str, Any],
) -> None:
    operation = _operations(document)[("GET", "/v1/wallets/{wallet_id}/entries")]
    parameters = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
    assert set(parameters) == {"cursor", "limit", "type"}
    schemas = document["components"]["schemas"]
    type_schema = json.dumps(parameters["type"]["schema"])
    assert "reservation_expired" in type_schema or "EntryType" in type_schema
    assert "reservation_expired" in schemas["EntryType"]["enum"]
    entry = schemas["EntryOut"]
    assert "RFC 3339" in entry["properties"]["at"]["description"]
    assert "GET /v1/wallets/{id}" in entry["properties"]["available_after"]["description"]
    assert "available_after" in operation["description"]
    wallet = schemas["WalletBalanceOut"]["properties"]
    assert {"upcoming", "overdraft_held", "overdraft_headroom"} <= set(wallet)


async def test_problem_examples_carry_the_type_the_service_sends(document: dict[str, Any]) -> None:
    from api.errors import problem_type

    examples = [
        media["example"]
        for item in document["paths"].values()
        for operation in item.values()
        for response in operation.get("responses", {}).values()
        for media_type, media in response.get("content", {}).items()
        if media_type == PROBLEM_MEDIA_TYPE and "example" in media
    ]
    assert len(examples) > 50
    for example in examples:
        assert example["type"] == problem_type(example["code"]), example
