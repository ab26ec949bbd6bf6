"""Cache invalidation across processes: Postgres NOTIFY on channel `catalog_changed`.

Every insert, update or delete of a catalog row that the hot path caches (credit types,
customers, resources, wallets, grants, budgets, prices), and of an API key (which the HTTP edge
keeps in memory), notifies `'<table>:<id>'` through a trigger (migrations 0001 and 0003);
`notify_catalog_changed` sends the same for anything else. Postgres delivers a notification
when its transaction commits, and never when it rolls back, so a listener never sees a change
that did not happen.

A listener can miss notifications while it is disconnected. `listen_catalog_changes` therefore
calls `on_listening` each time its LISTEN is in place, the first time included: the caller
reloads its whole cache then, and from that moment every change reaches `on_change`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import psycopg
from psycopg.conninfo import make_conninfo

from ledger.db import Connection, DatabaseSettings, connection_kwargs, resolve_conninfo

_logger = logging.getLogger(__name__)

CATALOG_CHANNEL: Final = "catalog_changed"  # also spelled out in LISTEN below and in 0001
CATALOG_TABLES: Final = frozenset(
    {
        "credit_types",
        "customers",
        "resources",
        "wallets",
        "grants",
        "budgets",
        "prices",
        "api_keys",
    }
)
RECONNECT_DELAY_S_MIN: Final = 0.1
RECONNECT_DELAY_S_MAX: Final = 10.0
# A dead listener connection is noticed within idle + interval * count seconds.
LISTEN_KEEPALIVE_IDLE_S: Final = 30
LISTEN_KEEPALIVE_INTERVAL_S: Final = 10
LISTEN_KEEPALIVE_COUNT: Final = 3
assert 0 < RECONNECT_DELAY_S_MIN <= RECONNECT_DELAY_S_MAX


@dataclass(frozen=True)
class CatalogChange:
    table: str
    # The changed row's id, as everywhere above the repositories: an int (a u128 for rows with
    # uuid keys, the ledger number for a credit type).
    id: int


def parse_payload(payload: str) -> CatalogChange:
    """`'wallets:<uuid>'` or `'credit_types:<int>'` as a `CatalogChange`; ValueError if neither."""
    table, separator, raw_id = payload.partition(":")
    if not separator or not table or not raw_id:
        raise ValueError(f"catalog notification {payload!r} is not '<table>:<id>'")
    if "-" in raw_id:
        return CatalogChange(table, uuid.UUID(raw_id).int)
    return CatalogChange(table, int(raw_id))


async def notify_catalog_changed(conn: Connection, table: str, id: int) -> None:
    """Notify listeners, when the caller's transaction commits, that a row of `table` changed."""
    assert table in CATALOG_TABLES, f"unknown catalog table {table!r}"
    await conn.execute("SELECT pg_notify(%s, %s)", (CATALOG_CHANNEL, f"{table}:{id}"))


ChangeCallback = Callable[[CatalogChange], Awaitable[None] | None]
ListeningCallback = Callable[[], Awaitable[None] | None]


async def listen_catalog_changes(
    target: DatabaseSettings | str,
    on_change: ChangeCallback,
    *,
    on_listening: ListeningCallback | None = None,
    reconnect_delay_s_max: float = RECONNECT_DELAY_S_MAX,
) -> None:
    """Deliver catalog changes to `on_change` until cancelled, reconnecting after failures.

    `target` is the settings (the embedded server is started if they name none) or a
    connection string. A malformed payload is logged and skipped. A callback that fails (the
    engine restarting while a change is applied, say) is logged, and the listener starts over:
    it reconnects and `on_listening` reloads everything, so no change is lost; a failure that
    lasts is retried with the same backoff as a lost connection. Cancel the task to stop.
    """
    if isinstance(target, DatabaseSettings):
        settings = target
        conninfo = await resolve_conninfo(settings)
    else:
        settings, conninfo = DatabaseSettings(), target
    delay_s = RECONNECT_DELAY_S_MIN

    async def listening() -> None:
        # Connected again: the next failure starts over from the shortest delay.
        nonlocal delay_s
        delay_s = RECONNECT_DELAY_S_MIN
        if on_listening is not None:
            await _call(on_listening())

    while True:
        try:
            await _listen_once(settings, conninfo, on_change, listening)
        except psycopg.OperationalError as error:
            _logger.warning(
                "catalog listener lost its connection (%s); retrying in %.1f s", error, delay_s
            )
        except Exception:  # a change not applied: start over, reloading everything
            _logger.exception(
                "a catalog change could not be applied; reloading everything in %.1f s", delay_s
            )
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, reconnect_delay_s_max)


async def _listen_once(
    settings: DatabaseSettings,
    conninfo: str,
    on_change: ChangeCallback,
    listening: Callable[[], Awaitable[None]],
) -> None:
    # The connection idles between notifications: TCP keepalives notice a peer that vanished
    # without closing it (libpq ignores them on a Unix socket, where that cannot happen).
    full_conninfo = make_conninfo(
        conninfo,
        **connection_kwargs(settings, conninfo),
        keepalives="1",
        keepalives_idle=str(LISTEN_KEEPALIVE_IDLE_S),
        keepalives_interval=str(LISTEN_KEEPALIVE_INTERVAL_S),
        keepalives_count=str(LISTEN_KEEPALIVE_COUNT),
    )
    conn = await psycopg.AsyncConnection.connect(full_conninfo, autocommit=True)
    async with conn:
        await conn.execute("LISTEN catalog_changed")
        await listening()
        async for notify in conn.notifies():
            try:
                change = parse_payload(notify.payload)
            except ValueError:
                _logger.error("ignoring a malformed catalog notification %r", notify.payload)
                continue
            await _call(on_change(change))


async def _call(result: Awaitable[None] | None) -> None:
    if inspect.isawaitable(result):
        await result
