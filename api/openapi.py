"""What the OpenAPI document says beyond what litestar infers: each route's problem+json
responses by code, the Idempotency-Key header, an example body, a list's query parameters, and
the bearer scheme; and the bodies' schemas as msgspec, which decodes them, defines them
(`refine`), so that a client (or a fuzzer) generated from the document sends what the service
accepts and expects what it answers.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass
from typing import Any

import msgspec
from credit_ledger_client import schemas as w
from litestar import Litestar, Request
from litestar.enums import ParamType
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    RequestBody,
    Schema,
    SecurityScheme,
)

from api.errors import PROBLEM_MEDIA_TYPE, STATUS, TITLES, problem_type

PROBLEM_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    description="RFC 9457 problem details with a stable `code`; some codes add fields "
    "(`field` for validation_error, `available` and `needed` for insufficient_credits, "
    "`budget_id` for budget_exceeded). A spend refused for want of credits or by a budget "
    "stays refused under its Idempotency-Key: sent again (even after a top-up), it answers "
    "the same code with `Idempotency-Hit: true`, a detail saying it is the key's stored "
    "outcome, and no `available` (what is available now would contradict the stored "
    "refusal). To try again, send a new key.",
    required=["type", "title", "status", "code"],
    properties={
        "type": Schema(type=OpenAPIType.STRING),
        "title": Schema(type=OpenAPIType.STRING),
        "status": Schema(type=OpenAPIType.INTEGER),
        "code": Schema(type=OpenAPIType.STRING, enum=sorted(STATUS)),
        "detail": Schema(type=OpenAPIType.STRING),
    },
)

SECURITY = Components(
    security_schemes={
        "BearerAuth": SecurityScheme(
            type="http",
            scheme="bearer",
            description="An API key (`clk_...`) with the scope the route needs: runtime, "
            "admin or finance; a key bound to one customer sees only that customer.",
        )
    }
)

# Every authenticated route can answer these.
COMMON = ("unauthorized", "forbidden", "internal_error", "method_not_allowed")
WRITE = (
    "validation_error",
    "payload_too_large",
    "unsupported_media_type",
    "idempotency_conflict",
    "ledger_unavailable",
)


def operation(
    *codes: str,
    idempotent: bool = True,
    example: dict[str, Any] | None = None,
    query: type[msgspec.Struct] | None = None,
) -> type[Operation]:
    """An Operation class for one route: `codes` are the problems it documents; `query` the
    struct its query string is decoded with (api.paging), whose fields it documents."""
    problems = sorted(set(codes))
    assert set(problems) <= set(STATUS), problems

    @dataclass
    class RouteOperation(Operation):
        def __post_init__(self) -> None:
            responses = {k: v for k, v in (self.responses or {}).items() if k != "400"}
            by_status: dict[int, list[str]] = {}
            for code in problems:
                by_status.setdefault(STATUS[code], []).append(code)
            for status, named in sorted(by_status.items()):
                responses[str(status)] = OpenAPIResponse(
                    description="; ".join(f"`{c}`: {TITLES[c]}" for c in named),
                    content={
                        PROBLEM_MEDIA_TYPE: OpenAPIMediaType(
                            schema=PROBLEM_SCHEMA,
                            example={
                                "type": problem_type(named[0]),
                                "title": TITLES[named[0]],
                                "status": status,
                                "code": named[0],
                            },
                        )
                    },
                )
            self.responses = responses
            if query is not None:
                self.parameters = [*(self.parameters or []), *query_parameters(query)]
            if idempotent:
                self.parameters = [
                    *(self.parameters or []),
                    Parameter(
                        name="Idempotency-Key",
                        param_in=ParamType.HEADER,
                        required=True,
                        schema=Schema(type=OpenAPIType.STRING, max_length=255),
                        description="Your key for this request. Sent again, the first answer "
                        "comes back with `Idempotency-Hit: true`; with another body, 409.",
                    ),
                ]
            if example is not None and isinstance(self.request_body, RequestBody):
                for media in self.request_body.content.values():
                    media.example = example

    return RouteOperation


# -- the wire contract's own JSON Schema --------------------------------------------------------

# Bodies that name exactly one of each pair (the service refuses anything else with 422).
EXACTLY_ONE: dict[str, tuple[tuple[tuple[str, str], tuple[str, str]], ...]] = {
    name: (
        (("resource_id", "string"), ("wallet_id", "string")),
        (("amount", "integer"), ("usage", "object")),
    )
    for name in ("SpendIn", "DebitIn", "ReserveIn", "BatchDebitIn")
}
EXACTLY_ONE["SettleIn"] = ((("amount", "integer"), ("usage", "object")),)


def wire_components() -> dict[str, Any]:
    """JSON Schema of every struct and enum of the wire contract, as msgspec (which decodes
    the bodies) sees them: exact integer bounds, `additionalProperties: false` where unknown
    fields are refused, dictionary keys' limits, nullable fields as `anyOf`."""
    types = [
        value
        for value in vars(w).values()
        if isinstance(value, type)
        and value.__module__ == w.__name__
        and (issubclass(value, msgspec.Struct) or issubclass(value, enum.Enum))
    ]
    _, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    for name, pairs in EXACTLY_ONE.items():
        components[name]["allOf"] = [
            {
                "description": f"exactly one of `{a}` and `{b}`",
                "oneOf": [
                    {"required": [a], "properties": {a: {"type": a_type}}},
                    {"required": [b], "properties": {b: {"type": b_type}}},
                ],
            }
            for (a, a_type), (b, b_type) in pairs
        ]
    return components


def refine(document: dict[str, Any], open_paths: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The document litestar infers, made exact: the contract's schemas from msgspec, every
    `..._id` path parameter with the one spelling of ids the API reads, and the routes that
    need no key (`open_paths`: health, metrics) without the bearer requirement."""
    document = copy.deepcopy(document)
    for path in open_paths & document.get("paths", {}).keys():
        for operation in document["paths"][path].values():
            if isinstance(operation, dict):
                operation["security"] = []
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(wire_components())
    for path in document.get("paths", {}).values():
        for operation in path.values():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name", "").endswith("_id"):
                    parameter["schema"] = {
                        "type": "string",
                        "pattern": w.ID_PATTERN,
                        "description": "an object id: lowercase UUID text",
                    }
    return document


def document(app: Litestar) -> dict[str, Any]:
    """The OpenAPI document `app` serves at /schema/openapi.json."""
    return refine(app.openapi_schema.to_schema(), open_paths(app))


def open_paths(app: Litestar) -> frozenset[str]:
    """The paths of routes that declare no scopes: anyone may call them."""
    return frozenset(
        route.path
        for route in app.routes
        for handler in getattr(route, "route_handlers", ())
        if handler.opt.get("scopes") is None and handler.include_in_schema
    )


def exact(plugin: OpenAPIRenderPlugin, request: Request[Any, Any, Any], raw: dict[str, Any]) -> Any:
    """The `refine`d document, made once per render plugin: every page shows the same one."""
    document: dict[str, Any] | None = getattr(plugin, "_exact_document", None)
    if document is None:
        document = refine(raw, open_paths(request.app))
        plugin._exact_document = document  # type: ignore[attr-defined]
    return document


class ExactJsonRenderPlugin(JsonRenderPlugin):
    """`/schema/openapi.json`: litestar's document, `refine`d."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, exact(self, request, openapi_schema))


def query_parameters(cls: type[msgspec.Struct]) -> list[Parameter]:
    """The fields of a query struct as OpenAPI query parameters, from msgspec's JSON schema of
    it (one source: the struct that decodes them)."""
    document = msgspec.json.schema(cls)
    definitions: dict[str, Any] = document["$defs"]
    struct = definitions[cls.__name__]
    required = set(struct.get("required", []))
    parameters = []
    for name, prop in struct["properties"].items():
        schema = _schema(prop, definitions)
        parameters.append(
            Parameter(
                name=name,
                param_in=ParamType.QUERY,
                required=name in required,
                schema=schema,
                description=schema.description,
            )
        )
    return parameters


def _schema(prop: dict[str, Any], definitions: dict[str, Any]) -> Schema:
    """A litestar Schema of one JSON-schema property: a nullable one as its non-null type, a
    reference as what it names (an enum), an array with its items' schema."""
    default = prop.get("default")
    for option in prop.get("anyOf", ()):
        if option.get("type") != "null":
            prop = option
    if "$ref" in prop:
        prop = definitions[prop["$ref"].rsplit("/", 1)[-1]]
    return Schema(
        # The enums of the wire contract are of strings; msgspec leaves their type implied.
        type=OpenAPIType(prop.get("type", "string")),
        format=OpenAPIFormat(prop["format"]) if "format" in prop else None,
        enum=prop.get("enum"),
        minimum=prop.get("minimum"),
        maximum=prop.get("maximum"),
        min_length=prop.get("minLength"),
        max_length=prop.get("maxLength"),
        pattern=prop.get("pattern"),
        items=_schema(prop["items"], definitions) if "items" in prop else None,
        max_items=prop.get("maxItems"),
        default=default,
        description=prop.get("description"),
    )
