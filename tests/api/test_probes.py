"""The probes and metrics of a supervised engine (`ledger.embedded.supervisor`): /readyz fails
while it restarts and says so; /healthz fails only once the service cannot recover by itself;
/metrics shows the state and the restarts. The engine's health is set by hand here; the real
supervisor behind a real server is in tests/api/test_e2e_serve.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from api.metrics import Metrics
from ledger import db
from ledger.client import EngineHealth
from tests.api.conftest import Api
from tests.api.support import SwitchableLedger, running_api, scope_keys, services_of

pytestmark = pytest.mark.anyio

RESTARTING = EngineHealth(
    state="restarting",
    attempt=3,
    restarts=1,
    detail="engine restarting (attempt 3); attempt 2 failed: data directory in use",
    recoverable=True,
)
HOPELESS = EngineHealth(
    state="failed",
    attempt=1,
    restarts=1,
    detail="the engine cannot restart, its journal is corrupt: record 7 fails its checksum",
    recoverable=False,
)


@pytest.fixture
async def probed(
    pool: db.Pool, migrated_db_url: str
) -> AsyncIterator[tuple[Api, SwitchableLedger]]:
    keys = await scope_keys(pool)
    async with running_api(pool, migrated_db_url, keys) as (api, _, ledger):
        yield api, ledger


async def test_readyz_says_the_engine_restarts_and_healthz_stays_up(
    probed: tuple[Api, SwitchableLedger],
) -> None:
    api, ledger = probed
    ledger.health = RESTARTING
    r = await api.client.get("/readyz")
    body = r.json()
    assert set(body.pop("projection")) == {"lag_s", "watermark_ts"}
    assert body.pop("test_clock") is None  # the wall clock
    assert (r.status_code, body) == (
        503,
        {"status": "unavailable", "problems": [f"ledger: {RESTARTING.detail}"]},
    )
    r = await api.client.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    metrics = (await api.client.get("/metrics")).text
    assert 'credit_engine_state{state="restarting"} 1.0' in metrics
    assert 'credit_engine_state{state="running"} 0.0' in metrics
    assert "credit_engine_restarts_total 1.0" in metrics


async def test_healthz_fails_once_the_service_cannot_recover_by_itself(
    probed: tuple[Api, SwitchableLedger],
) -> None:
    api, ledger = probed
    ledger.health = HOPELESS
    expected = {"status": "unavailable", "problems": [f"ledger: {HOPELESS.detail}"]}
    r = await api.client.get("/healthz")
    assert (r.status_code, r.json()) == (503, expected)
    r = await api.client.get("/readyz")
    body = r.json()
    body.pop("projection")
    assert body.pop("test_clock") is None
    assert (r.status_code, body) == (503, expected)
    assert 'credit_engine_state{state="failed"} 1.0' in (await api.client.get("/metrics")).text


async def test_healthz_fails_once_a_background_task_has_ended(
    pool: db.Pool, migrated_db_url: str
) -> None:
    """A task that runs as long as the service does (the cache follower, the movement writer)
    ended: the service cannot do its work, and says so where a supervisor looks."""
    keys = await scope_keys(pool)
    async with running_api(pool, migrated_db_url, keys) as (api, app, _):
        services = services_of(app)
        assert (await api.client.get("/healthz")).status_code == 200

        async def dies() -> None:
            raise RuntimeError("a bug")

        services.start(dies(), "cache-follow-test")
        await asyncio.sleep(0)  # it runs, and ends
        await asyncio.sleep(0)
        r = await api.client.get("/healthz")
        assert r.status_code == 503, r.text
        (problem,) = r.json()["problems"]
        assert "cache-follow-test" in problem and "a bug" in problem
        # The real ones still run: only a task that ended is a problem.
        assert [t.get_name() for t in services.tasks if t.done()] == ["cache-follow-test"]


async def test_an_engine_without_a_supervisor_reports_no_engine_state(
    probed: tuple[Api, SwitchableLedger],
) -> None:
    api, _ = probed  # the engine in-process: nothing to restart
    assert (await api.client.get("/healthz")).status_code == 200
    assert "credit_engine_state" not in (await api.client.get("/metrics")).text


def test_the_engine_state_is_one_of_its_states_at_a_time() -> None:
    metrics = Metrics(CollectorRegistry())
    health: list[EngineHealth | None] = [RESTARTING]
    metrics.watch_engine(lambda: health[0])
    health[0] = HOPELESS
    lines = generate_latest(metrics.registry).decode().splitlines()
    states = [line for line in lines if line.startswith("credit_engine_state{")]
    assert sorted(states) == [
        'credit_engine_state{state="closed"} 0.0',
        'credit_engine_state{state="failed"} 1.0',
        'credit_engine_state{state="restarting"} 0.0',
        'credit_engine_state{state="running"} 0.0',
    ]
