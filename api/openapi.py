"""What the OpenAPI document says beyond what litestar infers: each route's problem+json
responses by code, the Idempotency-Key header, an example body, and the bearer scheme."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar.enums import ParamType
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    RequestBody,
    Schema,
    SecurityScheme,
)

from api.errors import PROBLEM_MEDIA_TYPE, STATUS, TITLES

PROBLEM_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    description="RFC 9457 problem details with a stable `code`; some codes add fields "
    "(`field` for validation_error, `available` and `needed` for insufficient_credits, "
    "`budget_id` for budget_exceeded).",
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
    *codes: str, idempotent: bool = True, example: dict[str, Any] | None = None
) -> type[Operation]:
    """An Operation class for one route: `codes` are the problems it documents."""
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
                                "type": f"https://credit-ledger.dev/problems/{named[0]}",
                                "title": TITLES[named[0]],
                                "status": status,
                                "code": named[0],
                            },
                        )
                    },
                )
            self.responses = responses
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
