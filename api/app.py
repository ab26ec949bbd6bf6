"""The composition root: `create_app(settings, ledger=..., pool=...)` builds the service from
the dependencies it is given. Nothing reads the environment or opens a connection at import.

At start it loads the catalog and the API keys into memory, finishes any dual write a crash
interrupted (reconcile), and runs two background tasks: the projection of the ledger into
Postgres (wallets/projection.py; one leader writes when several processes run it), and the
listener that reloads the caches whenever the catalog or the keys change, in this process or
another.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, generate_latest

from api import docs
from api.auth import KeyCache
from api.common import IDEMPOTENCY_KEY_BYTES_MAX
from api.errors import EXCEPTION_HANDLERS
from api.lane import HotLane
from api.metrics import Metrics
from api.openapi import SECURITY, ExactJsonRenderPlugin
from api.routes import ROUTES, authorize
from api.services import Services
from ledger.client import Ledger
from ledger.clock import TestClock, rfc3339_of_ns, wall_clock_ns
from ledger.db import DatabaseSettings, Pool
from ledger.heap import HeapPolicy, manage_heap
from ledger.limits import HTTP_HEADER_BYTES_MAX, REQUEST_BODY_BYTES_MAX
from ledger.notify import CatalogChange, listen_catalog_changes
from ledger.repositories.api_keys import KEY_CHARS
from ledger.settings import FinanceSettings
from ledger.tasks import stop_tasks
from wallets.catalog import Catalog
from wallets.control import ControlPlane
from wallets.dimensions import DimensionSets
from wallets.plans import PlanService
from wallets.projection import ProjectionFeed, ProjectionStatus
from wallets.reconcile_projection import ProjectionCheck
from wallets.service import CreditService
from wallets.statements import Statements

_logger = logging.getLogger(__name__)

# The HTTP limits (the body's, and the server's in api.server) are in ledger/limits.py; the
# headers the API reads, with room for a browser's (the schema page), fit many times over.
assert 8 * (KEY_CHARS + IDEMPOTENCY_KEY_BYTES_MAX) < HTTP_HEADER_BYTES_MAX < REQUEST_BODY_BYTES_MAX


@dataclass(frozen=True)
class ApiSettings:
    # Where the cache listener connects (the same database as the pool).
    database: DatabaseSettings | str
    request_body_bytes_max: int = REQUEST_BODY_BYTES_MAX
    reconcile_on_start: bool = True
    title: str = "credit-ledger"
    # Serve the spending routes from the hot lane (api.lane) in front of litestar. Off, the
    # litestar handlers of the same paths serve them (the same answers, more CPU per request).
    hot_lane: bool = True
    # How the process collects garbage (ledger.heap); None leaves CPython's defaults. The
    # server sets it: with the embedded engine its heap is large and lives as long as it does.
    heap: HeapPolicy | None = None
    # Feed the projection of the ledger into Postgres from this process (wallets.projection);
    # the server runs it in a process of its own instead (`credit-ledger projection feed`).
    projection: bool = True
    # The functional currency (`CREDIT_LEDGER_FUNCTIONAL_CURRENCY`), in which blocks' exchange
    # rates are given.
    finance: FinanceSettings = field(default_factory=FinanceSettings)


class CreditLedgerApp(Litestar):
    """Litestar with the hot lane in front: the spending routes skip litestar's routing,
    guard and response machinery; everything else (and the lifespan) is litestar's. On a test
    clock, every response says so (`Test-Clock`, the instant it stands at)."""

    lane: HotLane | None = None
    test_clock: TestClock | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        clock = self.test_clock
        if clock is not None and scope["type"] == "http":
            send = _saying_the_clock(send, clock)
        lane = self.lane
        if lane is not None:
            matched = lane.match(scope)
            if matched is not None:
                await lane.serve(*matched, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


TEST_CLOCK_HEADER = b"test-clock"


def _saying_the_clock(send: Any, clock: TestClock) -> Any:
    async def send_with_clock(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", ()), (TEST_CLOCK_HEADER, _clock_text(clock))]
            message = {**message, "headers": headers}
        await send(message)

    return send_with_clock


def _clock_text(clock: TestClock) -> bytes:
    return rfc3339_of_ns(clock()).encode()


class _RouteMetrics:
    """ASGI middleware: request counts and latencies per route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = str(scope.get("path_template") or "unmatched")
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.request_seconds.labels(method, route).observe(time.perf_counter() - start)


def build_services(
    ledger: Ledger,
    pool: Pool,
    finance: FinanceSettings | None = None,
    *,
    test_clock: TestClock | None = None,
) -> Services:
    """`test_clock`: the clock business time is read from (the spend path, statements, the
    sweep, budget periods, the projection's lag and ticks), the engine's too; None: the wall
    clock."""
    clock_ns = wall_clock_ns if test_clock is None else test_clock
    catalog = Catalog()
    service = CreditService(ledger, catalog, clock_ns=clock_ns, dimensions=DimensionSets(pool))
    feed = ProjectionFeed(ledger, pool, clock_ns=clock_ns)
    status = ProjectionStatus(pool, clock_ns=clock_ns)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    ledger.observe = metrics.engine
    metrics.watch_engine(lambda: ledger.health)
    metrics.watch_projection(status)
    projection_check = ProjectionCheck(ledger, pool)
    metrics.watch_projection_check(projection_check)
    finance = finance or FinanceSettings()
    control = ControlPlane(pool, service, functional_currency=finance.functional_currency)
    metrics.watch_reconciliation(lambda: control.reconcile_failures_open)
    return Services(
        pool=pool,
        catalog=catalog,
        service=service,
        grant_service=control.grant_service,
        control=control,
        statements=Statements(ledger, catalog, clock_ns=service.clock_ns),
        projection=feed,
        projection_status=status,
        projection_check=projection_check,
        keys=KeyCache(),
        metrics=metrics,
        plans=PlanService(control),
        test_clock=test_clock,
    )


async def _follow(services: Services, target: DatabaseSettings | str) -> None:
    """Keeps the caches current: catalog rows change one by one; the keys reload whole (they
    are few); every (re)connection reloads everything, as notifications may have been lost."""

    async def on_change(change: CatalogChange) -> None:
        if change.table in ("api_keys", "customers"):
            await services.keys.load(services.pool)
        if change.table != "api_keys":
            await services.control.apply_change(change)

    async def on_listening() -> None:
        await services.control.load()
        await services.keys.load(services.pool)

    await listen_catalog_changes(target, on_change, on_listening=on_listening)


async def _reconcile_on_start(services: Services) -> None:
    """Finishes what a crash interrupted before serving. Nothing it meets stops the start: a
    row it cannot finish is recorded for an operator (`credit-ledger reconcile`), and the jobs
    try again later."""
    try:
        report = await services.control.reconcile()
    except Exception:  # the start goes on: readiness and the jobs say the rest
        _logger.exception("reconciliation at start failed; the jobs will try again")
        return
    if report.grants_finished:
        _logger.warning("reconciled %d unfinished grants", len(report.grants_finished))
    for failure in report.failed:
        _logger.error(
            "reconciliation could not finish %s %s (see `credit-ledger reconcile`): %s",
            failure.kind,
            failure.object_id,
            failure.error,
        )
    if report.interrupted:
        _logger.warning("reconciliation at start stopped early: %s", report.interrupted)


def create_app(
    settings: ApiSettings, *, ledger: Ledger, pool: Pool, test_clock: TestClock | None = None
) -> CreditLedgerApp:
    """`test_clock`: a sandbox's (`serve --test-clock`), the one its engine reads too; it
    enables /v1/test-clock and is said on every response."""
    services = build_services(ledger, pool, settings.finance, test_clock=test_clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await services.control.load()
        await services.keys.load(pool)
        if settings.reconcile_on_start:
            await _reconcile_on_start(services)
        if settings.projection:
            services.start(services.projection.run(), "projection")
        services.start(services.projection_status.run(), "projection-status")
        services.start(_follow(services, settings.database), "cache-follow")
        if settings.heap is not None:
            services.start(manage_heap(settings.heap), "heap")
        try:
            yield
        finally:
            # What one that ended early raised was logged when it ended.
            await stop_tasks(services.tasks)

    @get(
        "/metrics",
        tags=["health"],
        include_in_schema=True,
        media_type="text/plain; version=0.0.4",
        description="Prometheus metrics: requests and latencies per route, engine latency, "
        "spending decisions by outcome.",
    )
    async def metrics(state: State) -> Response[bytes]:
        body = generate_latest(services.metrics.registry)
        return Response(body, media_type="text/plain; version=0.0.4")

    def route_metrics(app: ASGIApp) -> ASGIApp:
        return _RouteMetrics(app, services.metrics)

    app = CreditLedgerApp(
        route_handlers=[*ROUTES, metrics, docs.asset],
        state=State({"services": services}),
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        guards=[authorize],
        middleware=[route_metrics],
        request_max_body_size=settings.request_body_bytes_max,
        openapi_config=OpenAPIConfig(
            title=settings.title,
            version="1",
            description="Exact, fast, auditable credits on TigerBeetle. Ids are strings; "
            "amounts are integers in the credit type's minor unit. Every POST requires an "
            "Idempotency-Key header, but /v1/check (it changes nothing) and /v1/debits/batch "
            "(each debit carries its own idempotency_key); sent again with the same body, the "
            "first answer comes back with Idempotency-Hit: true. Errors are problem+json with "
            "a stable code. A sandbox started with `credit-ledger serve --test-clock` runs on a "
            "test clock that moves only through POST /v1/test-clock/advance, and says the "
            "instant it stands at in a `Test-Clock` header (RFC 3339) on every response.",
            path=docs.SCHEMA_PATH,
            render_plugins=[ExactJsonRenderPlugin(), *docs.render_plugins()],
            components=SECURITY,
            security=[{"BearerAuth": []}],
        ),
        debug=False,
    )
    if settings.hot_lane:
        app.lane = HotLane(services, settings.request_body_bytes_max)
    app.test_clock = test_clock
    return app


def request_services(request: Request[Any, Any, Any]) -> Services:
    services: Services = request.app.state.services
    return services
