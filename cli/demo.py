"""`credit-ledger demo`: a guided tour over real HTTP, printed as readable tables.

Against `--url` with `--key`, or else a service started in this process on a free loopback
port, on the embedded defaults (its data in DATA_DIR, `.data` unless told otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click
import httpx

from ledger.repositories import api_keys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _local_service(data_dir: Path | None) -> AsyncIterator[tuple[str, str]]:
    import uvicorn

    from api.app import ApiSettings, create_app
    from cli import runtime

    async with runtime(data_dir) as rt:
        async with rt.pool.connection() as conn, conn.transaction():
            _, key = await api_keys.create_key(conn, name="demo", scopes=["admin", "runtime"])
        app = create_app(ApiSettings(database=rt.conninfo), ledger=rt.ledger, pool=rt.pool)
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, loop="none", log_level="warning")
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}", key
        finally:
            server.should_exit = True
            await task


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
    async with contextlib.AsyncExitStack() as stack:
        if url is None:
            url, key = await stack.enter_async_context(_local_service(data_dir))
            click.echo(f"started a service at {url} (embedded defaults)", err=True)
        assert key is not None and url is not None
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30.0
            )
        )
        await _tour(_Demo(client))
