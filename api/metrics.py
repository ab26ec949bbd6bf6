"""Prometheus metrics: request counts and latencies per route (litestar's middleware), engine
latency, decisions by outcome, a supervised engine's state and restarts, the projection and its
reconciliation. One registry per app, so tests can build many apps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ledger.client import ENGINE_STATES, EngineHealth
from ledger.repositories.projection import State
from wallets.reconcile_projection import KINDS as DIFFERENCE_KINDS


class ProjectionView(Protocol):
    state: State | None

    def lag_s(self) -> float | None: ...


class ProjectionCheckView(Protocol):
    last_counts: dict[str, int] | None
    last_ran_at_s: float


def _or_unknown(value: float | None) -> float:
    return -1.0 if value is None else value


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.decisions = Counter(
            "credit_decisions",
            "Spending decisions by operation and outcome",
            ["operation", "outcome"],
            registry=registry,
        )
        self.engine_seconds = Histogram(
            "credit_engine_request_seconds",
            "Latency of requests to the ledger engine",
            ["method"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )

        self.requests = Counter(
            "http_requests",
            "HTTP requests by method, route and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "http_request_seconds",
            "HTTP request latency by method and route",
            ["method", "route"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )

    def watch_projection(self, status: ProjectionView) -> None:
        """The projection of the ledger into Postgres, whichever process feeds it: how far
        behind the engine it may be, where it stands, how many entries it holds."""
        Gauge(
            "credit_projection_lag_seconds",
            "Now less the engine time up to which the projection is complete (-1: unknown)",
            registry=self.registry,
        ).set_function(lambda: _or_unknown(status.lag_s()))
        Gauge(
            "credit_projection_watermark_timestamp_seconds",
            "Engine timestamp of the last transfer projected",
            registry=self.registry,
        ).set_function(lambda: status.state.watermark_ts / 1e9 if status.state else 0.0)
        Gauge(
            "credit_projection_entries",
            "Entries in the projection",
            registry=self.registry,
        ).set_function(lambda: status.state.entries if status.state else 0)

    def watch_reconciliation(self, failures_open: Callable[[], int]) -> None:
        """What reconciliation could not finish and nobody resolved (`credit-ledger
        reconcile`), as of this process's last pass."""
        Gauge(
            "credit_reconcile_failures_open",
            "Objects reconciliation could not finish, waiting for an operator",
            registry=self.registry,
        ).set_function(failures_open)

    def watch_projection_check(self, check: ProjectionCheckView) -> None:
        """The last reconciliation of the projection against the engine that this process ran
        or read (`credit-ledger reconcile` shows its differences): nothing before the first."""
        self.registry.register(_ProjectionCheckCollector(check))

    def watch_engine(self, health: Callable[[], EngineHealth | None]) -> None:
        """A supervised engine's state and restarts, read at each scrape (nothing while
        `health` is None: an engine without a supervisor)."""
        self.registry.register(_EngineCollector(health))

    def engine(self, method: str, seconds: float) -> None:
        self.engine_seconds.labels(method).observe(seconds)

    def decision(self, operation: str, outcome: str, count: int = 1) -> None:
        self.decisions.labels(operation, outcome).inc(count)


class _ProjectionCheckCollector(Collector):
    def __init__(self, check: ProjectionCheckView) -> None:
        self._check = check

    def collect(self) -> Iterator[Metric]:
        counts = self._check.last_counts
        if counts is None:
            return
        differences = GaugeMetricFamily(
            "credit_projection_differences",
            "Differences between the engine and the projection found by the last "
            "reconciliation, per kind (ledger/README.md, 'Reconciliation of the projection')",
            labels=["kind"],
        )
        for kind in DIFFERENCE_KINDS:
            differences.add_metric([kind], float(counts.get(kind, 0)))
        yield differences
        yield GaugeMetricFamily(
            "credit_projection_check_clean",
            "1 when the last reconciliation of the projection found no difference, else 0",
            value=0.0 if any(counts.values()) else 1.0,
        )
        yield GaugeMetricFamily(
            "credit_projection_check_timestamp_seconds",
            "When the last reconciliation of the projection ran",
            value=self._check.last_ran_at_s,
        )


class _EngineCollector(Collector):
    """The supervisor keeps its own counts; this reads them when scraped, so that its code
    knows nothing of Prometheus."""

    def __init__(self, health: Callable[[], EngineHealth | None]) -> None:
        self._health = health

    def collect(self) -> Iterator[Metric]:
        health = self._health()
        if health is None:
            return
        yield CounterMetricFamily(
            "credit_engine_restarts",
            "Engine processes started to replace a dead one",
            value=health.restarts,
        )
        state = GaugeMetricFamily(
            "credit_engine_state",
            "The engine process's state: 1 for the current one (restarting: no engine answers; "
            "failed: given up on, /healthz fails)",
            labels=["state"],
        )
        for name in ENGINE_STATES:
            state.add_metric([name], 1.0 if name == health.state else 0.0)
        yield state
