"""Health: the process is up (/healthz) and ready (/readyz)."""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
import psycopg
from litestar import Response, get
from litestar.datastructures import State
from litestar.openapi import ResponseSpec

from api.openapi import operation
from api.routes.shared import (
    services_of,
)
from ledger.clock import rfc3339_of_ns

OPS = {
    "healthz": operation("internal_error", idempotent=False),
    "readyz": operation("internal_error", idempotent=False),
}


# -- health ---------------------------------------------------------------------------------------


class ProbeProblems(msgspec.Struct):
    """A probe's 503 body (not problem+json: the probes answer in their own small shape)."""

    status: str
    problems: list[str]


def _probe_failure(meaning: str, example: str) -> dict[int, ResponseSpec]:
    return {
        503: ResponseSpec(
            data_container=ProbeProblems,
            generate_examples=False,
            description=f"{meaning}: `status` is `unavailable` and `problems` says what, for "
            f"instance `{example}`.",
        )
    }


@get(
    "/healthz",
    operation_class=OPS["healthz"],
    tags=["health"],
    responses=_probe_failure(
        "The service cannot recover by itself; restart it",
        "ledger: engine restarting (attempt 11); attempt 10 failed: ...",
    ),
    description="The process is up and can recover by itself. 503 when it cannot: its engine "
    "process has not come back after many restart attempts, or its journal is corrupt; an "
    "outside supervisor (systemd, Kubernetes) should then restart the service. Reads memory "
    "only.",
)
async def healthz(state: State) -> Response[dict[str, Any]]:
    problems = services_of(state).liveness()
    if problems:
        return Response({"status": "unavailable", "problems": problems}, status_code=503)
    return Response({"status": "ok"})


@get(
    "/readyz",
    operation_class=OPS["readyz"],
    tags=["health"],
    responses=_probe_failure(
        "Not ready: the engine or Postgres does not answer", "ledger: engine restarting (attempt 1)"
    ),
    description="The engine and Postgres answer. The body says where the projection of the "
    "ledger into Postgres stands, whichever process feeds it: how far behind the engine it may "
    "be (`lag_s`: now less the engine time up to which it is complete, as of its state in "
    "Postgres read at most a second ago; null until read) and its watermark (the engine "
    "timestamp, in ns, of the last transfer projected). A lagging projection does not make "
    'the service unready: spending never waits on it. `test_clock`: null, or `{"now": ...}` '
    "on a sandbox that runs on a test clock (`serve --test-clock`).",
)
async def readyz(state: State) -> Response[dict[str, Any]]:
    services = services_of(state)
    problems = await services.readiness()
    status = services.projection_status
    if status.state is None:
        with contextlib.suppress(psycopg.Error, OSError):
            await status.refresh()
    lag_s = status.lag_s()
    projection = {
        "lag_s": None if lag_s is None else round(lag_s, 3),
        "watermark_ts": None if status.state is None else status.state.watermark_ts,
    }
    clock = services.test_clock
    test_clock = None if clock is None else {"now": rfc3339_of_ns(clock())}
    if problems:
        return Response(
            {
                "status": "unavailable",
                "problems": problems,
                "projection": projection,
                "test_clock": test_clock,
            },
            status_code=503,
        )
    return Response({"status": "ready", "projection": projection, "test_clock": test_clock})


ROUTES = [
    healthz,
    readyz,
]
