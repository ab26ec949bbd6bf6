"""No request may wedge the service (issue 9, section 1).

Every time and amount is checked against what the engine can store before anything is written;
what reconciliation cannot finish is recorded for an operator, never raised out of it, and
never a reason for the service not to start.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from ledger import db
from ledger.embedded import EmbeddedEngine
from ledger.repositories import grants, reconcile_failures
from ledger.repositories.grants import GrantCategory, GrantSource, GrantState
from tests.api.conftest import Api
from tests.api.support import (
    assert_problem,
    catalog_counts,
    make_world,
    running_api,
    scope_keys,
    services_of,
)
from wallets.control import abandon_grant

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


async def _idempotency_records(pool: db.Pool) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT count(*) FROM idempotency_records")
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(
    ("times", "field"),
    [
        ({"effective_at": "1969-12-31T23:59:59Z"}, "effective_at"),
        ({"effective_at": "0002-01-01T00:00:00Z"}, "effective_at"),
        ({"expires_at": "2554-07-22T00:00:00Z"}, "expires_at"),
        ({"expires_at": "9999-12-31T23:59:59Z"}, "expires_at"),
        ({"effective_at": "2025-01-01T00:00:00"}, "effective_at"),
        ({"effective_at": "2025-01-01T00:00:00", "expires_at": "2026-01-01T00:00:00Z"}, None),
        ({"effective_at": "2025-01-01T00:00:00Z", "expires_at": "2026-01-01T00:00:00"}, None),
    ],
)
async def test_grant_times_the_engine_cannot_hold_are_refused_before_anything_is_written(
    api: Api, pool: db.Pool, times: dict[str, str], field: str | None
) -> None:
    world = await make_world(api)
    before = await catalog_counts(pool), await _idempotency_records(pool)
    body = {"wallet_id": world.wallet["id"], "amount": 10, "category": "promotional", **times}
    r = await api.post("/v1/grants", body)
    problem = assert_problem(r, "validation_error")
    assert problem["field"] == (field or problem["field"]) and problem["field"] in times
    assert (await catalog_counts(pool), await _idempotency_records(pool)) == before
    # The service goes on: a grant at the edges of what the engine holds is issued.
    edges = {"effective_at": "1970-01-01T00:00:00Z", "expires_at": "2554-07-21T23:34:33Z"}
    r = await api.post("/v1/grants", {**body, **edges})
    assert r.status_code == 201, r.text
    r = await api.post(f"/v1/grants/{r.json()['id']}/void", {"reason": "edge"})
    assert r.status_code == 200, r.text
    assert r.json()["voided"] == 10


async def _insert_pending_grant(
    pool: db.Pool, wallet_id: str, credit_type_id: int, effective_at: dt.datetime
) -> int:
    """A pending grant written straight into Postgres, as a crash after the first step of the
    dual write leaves it (with a time the API no longer lets through)."""
    grant_id = uuid.uuid4().int
    async with pool.connection() as conn, conn.transaction():
        await grants.insert_grant(
            conn,
            grants.NewGrant(
                id=grant_id,
                wallet_id=uuid.UUID(wallet_id).int,
                credit_type_id=credit_type_id,
                amount=25,
                category=GrantCategory.PROMOTIONAL,
                effective_at=effective_at,
                source=GrantSource.ADMIN,
                actor="test",
            ),
        )
    return grant_id


async def _credit_type_id(api: Api, code: str) -> int:
    r = await api.get(f"/v1/credit-types/{code}")
    assert r.status_code == 200, r.text
    return int(r.json()["id"])


async def _state(pool: db.Pool, grant_id: int) -> GrantState:
    async with pool.connection() as conn:
        row = await grants.get_grant(conn, grant_id)
    assert row is not None
    return row.state


async def test_an_unfinishable_row_is_recorded_and_the_service_still_starts(
    pool: db.Pool, migrated_db_url: str
) -> None:
    keys = await scope_keys(pool)
    engine = EmbeddedEngine()
    async with running_api(pool, migrated_db_url, keys, engine=engine) as (api, _, _):
        world = await make_world(api)
        ledger = await _credit_type_id(api, world.code)
    # Between two runs of the service: a row the engine refuses, and one it can finish.
    before_epoch = dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    bad = await _insert_pending_grant(pool, world.wallet["id"], ledger, before_epoch)
    good = await _insert_pending_grant(pool, world.wallet["id"], ledger, dt.datetime.now(dt.UTC))
    async with running_api(pool, migrated_db_url, keys, engine=engine) as (api, app, _):
        r = await api.client.get("/readyz")
        assert r.status_code == 200, r.text
        assert await _state(pool, good) is GrantState.ACTIVE
        assert await _state(pool, bad) is GrantState.PENDING
        async with pool.connection() as conn:
            (failure,) = await reconcile_failures.list_open(conn)
        assert (failure.kind, failure.object_id) == ("grant", str(uuid.UUID(int=bad)))
        assert failure.attempts == 1 and failure.error
        metrics = (await api.client.get("/metrics")).text
        assert "credit_reconcile_failures_open 1.0" in metrics
        # Another pass (the jobs') records a second attempt and still raises nothing.
        report = await services_of(app).control.reconcile()
        assert [f.object_id for f in report.failed] == [failure.object_id]
        assert report.grants_finished == []
        # The wallet spends what the finished grant gave, not what the failed one never did.
        r = await api.get(f"/v1/wallets/{world.wallet['id']}")
        assert r.json()["available"] == 1000 + 25
        # The operator gives up on it: it is never issued, and the failure is closed.
        abandoned = await abandon_grant(pool, bad, actor="operator", reason="bad effective_at")
        assert abandoned.state is GrantState.ABANDONED
        report = await services_of(app).control.reconcile()
        assert report.failed == [] and report.interrupted is None
        async with pool.connection() as conn:
            assert await reconcile_failures.list_open(conn) == []
        assert "credit_reconcile_failures_open 0.0" in (await api.client.get("/metrics")).text


async def test_a_grant_abandoned_mid_issue_answers_its_key_with_a_conflict(
    pool: db.Pool, migrated_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = await scope_keys(pool)
    async with running_api(pool, migrated_db_url, keys) as (api, app, _):
        world = await make_world(api)
        control = services_of(app).control

        async def crash(*_: Any, **__: Any) -> Any:
            raise RuntimeError("the process died here")

        monkeypatch.setattr(control.grant_service, "issue", crash)
        body = {"wallet_id": world.wallet["id"], "amount": 7, "category": "promotional"}
        r = await api.post("/v1/grants", body, idem="mid-issue")
        assert_problem(r, "internal_error")
        monkeypatch.undo()
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT id FROM grants WHERE state = 'pending'")
            (row,) = await cursor.fetchall()
        grant_id = row[0].int
        await abandon_grant(pool, grant_id, actor="operator", reason="gave up")
        r = await api.post("/v1/grants", body, idem="mid-issue")
        problem = assert_problem(r, "conflict")
        assert "abandoned" in problem["detail"]
        assert await _state(pool, grant_id) is GrantState.ABANDONED
        r = await api.get(f"/v1/wallets/{world.wallet['id']}")
        assert r.json()["available"] == 1000
        with pytest.raises(Exception, match="only a pending grant"):
            await abandon_grant(pool, grant_id, actor="operator", reason="again")


def _cli(*args: str, database_url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "CREDIT_LEDGER_DATA_DIR": str(data_dir)}
    env.pop("TB_ADDRESSES", None)
    return subprocess.run(
        [str(Path(sys.executable).parent / "credit-ledger"), "reconcile", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_the_reconcile_command_shows_and_resolves_what_cannot_be_finished(
    api: Api, pool: db.Pool, migrated_db_url: str, tmp_path: Path
) -> None:
    world = await make_world(api)
    ledger = await _credit_type_id(api, world.code)
    before_epoch = dt.datetime(1969, 7, 20, 20, 17, tzinfo=dt.UTC)
    bad = await _insert_pending_grant(pool, world.wallet["id"], ledger, before_epoch)
    text_id = str(uuid.UUID(int=bad))
    # The command opens the engine of its own data directory (no service holds it): the pass
    # runs, records the failure and exits 1 while something is left unfinished.
    ran = _cli(database_url=migrated_db_url, data_dir=tmp_path)
    assert "1 not finished" in ran.stdout, ran.stdout + ran.stderr
    assert ran.returncode == 1
    assert f"grant {text_id}" in ran.stdout and "--abandon-grant" in ran.stdout
    refused = _cli("--abandon-grant", text_id, database_url=migrated_db_url, data_dir=tmp_path)
    assert refused.returncode == 2 and "--reason" in refused.stderr
    resolved = _cli(
        "--abandon-grant", text_id, "--reason", "typo", database_url=migrated_db_url,
        data_dir=tmp_path,
    )  # fmt: skip
    assert resolved.returncode == 0, resolved.stdout + resolved.stderr
    assert f"grant {text_id} abandoned" in resolved.stdout
    assert "nothing left unfinished" in resolved.stdout
    assert await _state(pool, bad) is GrantState.ABANDONED
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT actor, reason FROM audit_log WHERE action = 'grant.abandon' AND object_id = %s",
            (uuid.UUID(int=bad),),
        )
        (actor, reason) = await cursor.fetchone() or (None, None)
    assert actor.startswith("cli:") and reason == "typo"


async def test_a_pass_where_every_object_fails_records_them_all_and_raises_nothing(
    pool: db.Pool, migrated_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = await scope_keys(pool)
    async with running_api(pool, migrated_db_url, keys) as (api, app, _):
        world = await make_world(api)
        r = await api.post(
            "/v1/budgets",
            {"resource_id": world.team["id"], "credit_type": world.code, "period": "day",
             "cap": 100},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        # A spend opens the budget's current period (a pass has nothing to do for one unopened).
        r = await api.post("/v1/debits", world.spend(amount=1), key="runtime")
        assert r.status_code == 201, r.text
        ledger = await _credit_type_id(api, world.code)
        await _insert_pending_grant(pool, world.wallet["id"], ledger, dt.datetime.now(dt.UTC))
        control = services_of(app).control

        async def broken(*_: Any, **__: Any) -> None:
            raise RuntimeError("broken on purpose")

        for name in ("_reconcile_wallet", "_sync_budget", "_finish_grant", "_finish_wallet_change"):
            monkeypatch.setattr(control, name, broken)
        monkeypatch.setattr(control.service, "open_ledger", broken)
        report = await control.reconcile()
        kinds = {f.kind for f in report.failed}
        assert {"credit_type", "wallet", "budget", "grant"} <= kinds
        assert kinds <= reconcile_failures.KINDS and report.interrupted is None
        async with pool.connection() as conn:
            recorded = {(f.kind, f.object_id) for f in await reconcile_failures.list_open(conn)}
        assert recorded == {(f.kind, f.object_id) for f in report.failed}
        monkeypatch.undo()
        report = await control.reconcile()  # mended: every failure is closed
        assert report.failed == []
        async with pool.connection() as conn:
            assert await reconcile_failures.list_open(conn) == []


async def test_the_failures_table_takes_every_kind_reconciliation_uses(pool: db.Pool) -> None:
    async with pool.connection() as conn, conn.transaction():
        for kind in sorted(reconcile_failures.KINDS):
            await reconcile_failures.record(conn, kind=kind, object_id=f"x-{kind}", error="e")
        assert len(await reconcile_failures.list_open(conn)) >= len(reconcile_failures.KINDS)
        await conn.execute("DELETE FROM reconcile_failures WHERE object_id LIKE 'x-%%'")


async def test_an_expiry_before_the_default_effective_time_is_named(
    api: Api, pool: db.Pool
) -> None:
    """Without effective_at (now), an expires_at in the past is the caller's mistake, named as
    such; it used to come back as the database's constraint."""
    world = await make_world(api)
    before = await catalog_counts(pool)
    body = {"wallet_id": world.wallet["id"], "amount": 1, "category": "promotional",
            "expires_at": "2020-01-01T00:00:00Z"}  # fmt: skip
    problem = assert_problem(await api.post("/v1/grants", body), "validation_error")
    assert problem["field"] == "expires_at" and "constraint" not in problem
    assert await catalog_counts(pool) == before
