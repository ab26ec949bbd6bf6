"""The in-process catalog cache and the listener that keeps it current: an object created
through this process stays usable while the listener reloads the whole catalog (at start and
after every reconnection)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ledger import db
from ledger.repositories import catalog as catalog_repository
from tests.api.support import created, make_world, running_api, scope_keys, services_of

pytestmark = pytest.mark.anyio


async def test_a_wallet_created_during_a_reload_stays_usable(
    pool: db.Pool, migrated_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = await scope_keys(pool)
    async with running_api(pool, migrated_db_url, keys) as (api, app, _):
        world = await make_world(api)
        services = services_of(app)
        snapshot_read, resume = asyncio.Event(), asyncio.Event()
        read_snapshot = catalog_repository.load_catalog_snapshot

        async def slow_snapshot(conn: Any) -> Any:
            snapshot = await read_snapshot(conn)
            snapshot_read.set()
            await resume.wait()
            return snapshot

        statuses: list[int] = []
        load_keys = services.keys.load
        spend: dict[str, Any] = {}

        async def load_keys_after_the_reload(p: db.Pool) -> None:
            # The listener's next step once the catalog is reloaded: what a request sees now.
            if resume.is_set() and not statuses:
                r = await api.post("/v1/debits", spend, key="runtime")
                statuses.append(r.status_code)
            await load_keys(p)

        monkeypatch.setattr(catalog_repository, "load_catalog_snapshot", slow_snapshot)
        monkeypatch.setattr(services.keys, "load", load_keys_after_the_reload)
        # Drop the listener's connection: it reconnects, LISTENs and reloads everything.
        async with pool.connection() as conn:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query = 'LISTEN catalog_changed'"
                " AND pid <> pg_backend_pid()"
            )
        await asyncio.wait_for(snapshot_read.wait(), 10)
        wallet = await created(
            api, "/v1/wallets", {"resource_id": world.team["id"], "credit_type": world.code}
        )
        await created(
            api,
            "/v1/grants",
            {"wallet_id": wallet["id"], "amount": 10, "category": "promotional"},
        )
        spend.update(credit_type=world.code, wallet_id=wallet["id"], amount=1)
        r = await api.post("/v1/debits", spend, key="runtime")
        assert r.status_code == 201, r.text
        resume.set()
        for _ in range(1000):
            if statuses:
                break
            await asyncio.sleep(0.01)
        assert statuses == [201]
