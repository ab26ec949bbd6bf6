"""`credit-ledger demo`: a guided tour over real HTTP, printed as readable tables.

Which service it tours:
- The one at `--url` (default `URL_DEFAULT`, where `./dev serve` listens) when its /readyz says
  ready. The embedded engine allows one process per data directory, so the tour does not open
  the engine beside a running service: it talks to the service. Without `--key`, it creates a
  key named demo-<run> (scopes admin and runtime) in the service's database, as `credit-ledger
  keys create` does, with an entry in the audit log: the Postgres of the data directory
  (`--data-dir`; one server shared by every process that uses the directory) or DATABASE_URL.
  It revokes the key at the end. If no Postgres runs in that data directory, or the service
  does not accept the key (it uses another database), it says so and stops.
- If nothing answers at the default URL (and no `--key` was given), a service started in this
  process on a free loopback port, on the embedded defaults, its data in the data directory.
- Anything else (nothing at an explicit `--url`, a service not ready, another program): it says
  what it found and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click
import httpx

from api.cli_keys import create_key_audited, revoke_key_audited
from ledger import db
from ledger.embedded.journal import DataDirectoryLocked

URL_DEFAULT = "http://127.0.0.1:8080"
# How long the probe of a running service waits for /readyz.
PROBE_TIMEOUT_S = 2.0
# A running service learns of a new key when its cache reloads (LISTEN/NOTIFY, within a moment);
# a key still refused after this was created in a database the service does not use.
KEY_ACCEPTED_WITHIN_S = 10.0
DEMO_SCOPES = ("admin", "runtime")
AUDIT_ACTOR = "demo"


@dataclasses.dataclass(frozen=True)
class _Probe:
    ready: bool
    answered: bool  # False: nothing listens there
    detail: str = ""


async def _probe(url: str) -> _Probe:
    try:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
            response = await client.get(f"{url}/readyz")
    except httpx.ConnectError:
        return _Probe(ready=False, answered=False)
    except httpx.HTTPError as error:
        return _Probe(ready=False, answered=True, detail=f"no answer to GET /readyz ({error!r})")
    if response.status_code == 200:
        return _Probe(ready=True, answered=True)
    return _Probe(
        ready=False,
        answered=True,
        detail=f"GET /readyz answered {response.status_code} {response.text[:200]!r}",
    )


def _database_settings(data_dir: Path | None) -> tuple[db.DatabaseSettings, str]:
    """The database a service on `data_dir` uses, and how to name it to a person."""
    from cli import env_with_data_dir

    settings = dataclasses.replace(
        db.DatabaseSettings.from_env(env_with_data_dir(data_dir)), pool_min_size=1, pool_max_size=1
    )
    if settings.database_url is not None:
        return settings, "the database of DATABASE_URL"
    return settings, f"the Postgres of the data directory {settings.embedded_data_dir.parent}"


async def _create_key(pool: db.Pool, name: str) -> tuple[int, str]:
    async with pool.connection() as conn, conn.transaction():
        row, key = await create_key_audited(conn, name=name, scopes=DEMO_SCOPES, actor=AUDIT_ACTOR)
    return row.id, key


async def _revoke_key(pool: db.Pool, key_id: int) -> None:
    async with pool.connection() as conn, conn.transaction():
        await revoke_key_audited(conn, key_id, actor=AUDIT_ACTOR)


@contextlib.asynccontextmanager
async def _key_in_service_database(
    url: str, data_dir: Path | None, name: str
) -> AsyncIterator[str]:
    """A new demo key in the database of the service at `url`, revoked on the way out."""
    settings, where = _database_settings(data_dir)
    running = (settings.embedded_data_dir / "postmaster.pid").exists()
    if settings.database_url is None and not running:
        raise click.ClickException(
            f"a service runs at {url}, but no Postgres runs in {settings.embedded_data_dir}: "
            "the service keeps its data elsewhere. Pass its --data-dir, or an API key with --key."
        )
    click.echo(
        f"creating API key {name!r} (scopes {', '.join(DEMO_SCOPES)}) in {where}; "
        "it is revoked at the end",
        err=True,
    )
    conninfo = await db.resolve_conninfo(settings)  # joins the service's embedded Postgres
    try:
        pool = await db.open_pool(settings, conninfo=conninfo)
        try:
            key_id, key = await _create_key(pool, name)
            try:
                await _wait_until_accepted(url, key, where)
                yield key
            finally:
                await _revoke_key(pool, key_id)
        finally:
            await db.close(pool)
    finally:
        if settings.database_url is None:
            # Lets go of the server; the service keeps it running.
            db.stop_embedded_postgres(settings.embedded_data_dir)


async def _wait_until_accepted(url: str, key: str, where: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    deadline_s = time.monotonic() + KEY_ACCEPTED_WITHIN_S
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=PROBE_TIMEOUT_S) as client:
        while (await client.get("/v1/credit-types/demo-probe")).status_code == 401:
            if time.monotonic() > deadline_s:
                raise click.ClickException(
                    f"the service at {url} does not accept the key created in {where}: it uses "
                    "another database. Pass its --data-dir, or an API key with --key."
                )
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def _local_service(data_dir: Path | None, name: str) -> AsyncIterator[tuple[str, str]]:
    """A service in this process on a free loopback port, and a demo key for it."""
    from api.app import ApiSettings, create_app
    from api.server import HTTP_LIMITS, Server, configure, listen
    from cli import runtime

    sock = listen("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings, where = _database_settings(data_dir)
    click.echo(
        f"starting a service in this process at {url}, its data in "
        f"{settings.embedded_data_dir.parent}; creating API key {name!r} in {where}",
        err=True,
    )
    async with runtime(data_dir) as rt:
        key_id, key = await _create_key(rt.pool, name)
        app = create_app(ApiSettings(database=rt.conninfo), ledger=rt.ledger, pool=rt.pool)
        config = configure(app, sock, limits=HTTP_LIMITS, access_log=False, log_level="warning")
        # Ctrl-C stays the command's (it cancels the tour), not this server's.
        server = Server(config, handle_signals=False)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        try:
            yield url, key
        finally:
            server.should_exit = True
            await task
            await _revoke_key(rt.pool, key_id)


def _table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    click.echo(f"\n{title}")
    for n, row in enumerate(cells):
        click.echo(
            "  "
            + "  ".join(
                c.rjust(w) if n and c.lstrip("-").isdigit() else c.ljust(w)
                for c, w in zip(row, widths, strict=True)
            )
        )
        if n == 0:
            click.echo("  " + "  ".join("-" * w for w in widths))


class _Demo:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.run = uuid.uuid4().hex[:8]

    async def post(self, path: str, body: dict[str, Any], expect: int = 201) -> Any:
        response = await self.client.post(
            path, json=body, headers={"Idempotency-Key": f"demo-{self.run}-{uuid.uuid4()}"}
        )
        if response.status_code != expect:
            raise click.ClickException(f"{path}: {response.status_code} {response.text}")
        return response.json()

    async def get(self, path: str) -> Any:
        response = await self.client.get(path)
        response.raise_for_status()
        return response.json()


async def _tour(demo: _Demo) -> None:
    code = f"demo_{demo.run}"
    await demo.post("/v1/credit-types", {"code": code, "name": "Demo credits"})
    customer = await demo.post("/v1/customers", {"name": "Acme AI"})
    team = await demo.post("/v1/resources", {"customer_id": customer["id"], "kind": "team"})
    agent = await demo.post(
        "/v1/resources", {"customer_id": customer["id"], "kind": "agent", "parent_id": team["id"]}
    )
    await demo.post("/v1/wallets", {"resource_id": team["id"], "credit_type": code})
    wallet = await demo.post(
        "/v1/wallets", {"resource_id": agent["id"], "credit_type": code, "fall_through": True}
    )
    click.echo(
        f"customer {customer['id']} (tenant {customer['tenant']}); team and agent "
        "wallets; the agent's spending falls through to the team"
    )
    paid = await demo.post(
        "/v1/grants",
        {
            "wallet_id": wallet["id"],
            "amount": 1000,
            "category": "paid",
            "consideration_minor": 1000,
            "currency": "USD",
        },
    )
    promo = await demo.post(
        "/v1/grants", {"wallet_id": wallet["id"], "amount": 200, "category": "promotional"}
    )
    click.echo(
        f"granted 1000 paid ({paid['id'][:8]}...) and 200 promotional ({promo['id'][:8]}...)"
    )
    spend = {"resource_id": agent["id"], "credit_type": code}
    reservation = await demo.post("/v1/reservations", {**spend, "amount": 300, "timeout_s": 60})
    settled = await demo.post(
        f"/v1/reservations/{reservation['id']}/settle", {"amount": 250}, expect=200
    )
    click.echo(
        f"reserved 300, settled 250 (released {settled['released']}): promotional credits go first"
    )
    await demo.post("/v1/debits", {**spend, "amount": 900})
    click.echo("debited 900: the wallet is down to the last 50")
    refused = await demo.client.post(
        "/v1/debits",
        json={**spend, "amount": 100},
        headers={"Idempotency-Key": f"demo-{demo.run}-limit"},
    )
    body = refused.json()
    click.echo(
        f"a debit of 100 more: {refused.status_code} {body['code']} "
        f"(available {body.get('available')}, needed {body.get('needed')})"
    )
    balance = await demo.get(f"/v1/wallets/{wallet['id']}")
    _table(
        "balances",
        ["grant", "granted", "available", "held", "consumed"],
        [
            [g["grant_id"][:8], g["granted"], g["available"], g["held"], g["consumed"]]
            for g in balance["grants"]
        ],
    )
    entries = await demo.get(f"/v1/wallets/{wallet['id']}/entries?limit=50")
    _table(
        "entries",
        ["type", "block", "amount", "available after"],
        [
            [e["type"], e["account_id"][:8], e["amount"], e["available_after"]]
            for e in entries["entries"]
        ],
    )


async def run_demo(url: str | None, key: str | None, data_dir: Path | None) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    target = url or URL_DEFAULT
    name = f"demo-{uuid.uuid4().hex[:8]}"
    found = await _probe(target)
    async with contextlib.AsyncExitStack() as stack:
        if found.ready:
            click.echo(f"a service runs at {target}: touring it over HTTP", err=True)
            if key is None:
                key = await stack.enter_async_context(
                    _key_in_service_database(target, data_dir, name)
                )
        elif not found.answered and url is None and key is None:
            click.echo(f"nothing answers at {target}", err=True)
            try:
                target, key = await stack.enter_async_context(_local_service(data_dir, name))
            except DataDirectoryLocked as error:
                raise click.ClickException(
                    f"{error}. A service holds that data directory but does not answer at "
                    f"{target}: give its address with --url (e.g. --url http://127.0.0.1:8081)"
                ) from None
        elif not found.answered:
            raise click.ClickException(f"nothing answers at {target}: is the service running?")
        else:
            raise click.ClickException(f"{target} is not a ready credit-ledger: {found.detail}")
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=target, headers={"Authorization": f"Bearer {key}"}, timeout=30.0
            )
        )
        await _tour(_Demo(client))
