"""Health: the process is up (/healthz) and ready (/readyz)."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.datastructures import State

from api.openapi import operation
from api.routes.shared import (
    services_of,
)

OPS = {
    "healthz": operation("internal_error", idempotent=False),
    "readyz": operation("internal_error", idempotent=False),
}


# -- health ---------------------------------------------------------------------------------------


@get("/healthz", operation_class=OPS["healthz"], tags=["health"], description="The process is up.")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    operation_class=OPS["readyz"],
    tags=["health"],
    description="The engine and Postgres answer.",
)
async def readyz(state: State) -> Response[dict[str, Any]]:
    services = services_of(state)
    problems = await services.readiness()
    if problems:
        return Response({"status": "unavailable", "problems": problems}, status_code=503)
    return Response({"status": "ready"})


ROUTES = [
    healthz,
    readyz,
]
