"""Postgres plumbing: typed settings, the connection pool, and the embedded server.

Postgres is the control plane and the read model (DESIGN.md, "Two stores, two roles"); no request
path waits on it. SQL lives in `ledger/repositories/`; this module only connects.

Invariants:
- Nothing connects, starts a server or reads the environment at import time: the composition
  root calls `DatabaseSettings.from_env()` once and passes the settings down.
- `DATABASE_URL` names a server the operator runs. Without it the service starts an embedded
  Postgres (the `pgserver` package ships real Postgres binaries) in
  `<CREDIT_LEDGER_DATA_DIR or .data>/postgres`: one server per data directory, shared by every
  process that uses that directory, stopped when the last of them exits.
- Every session runs with `TimeZone=UTC` and the configured `statement_timeout`, so timestamps
  come back as aware UTC datetimes and no statement runs unbounded.
- Run as root, `pgserver` runs Postgres as a dedicated system user `pgserver` (Postgres refuses
  to run as root): it creates that user with `useradd`, hands it the data directory, and makes
  the directories above it traversable (`chmod go+rx`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import threading
import warnings
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from ledger.settings import SettingsError

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer

_logger = logging.getLogger(__name__)

# The connection type of the whole project: psycopg's async connection with tuple rows.
Connection = psycopg.AsyncConnection[TupleRow]
Pool = AsyncConnectionPool[Connection]

POOL_MIN_SIZE_DEFAULT: Final = 2
POOL_MAX_SIZE_DEFAULT: Final = 10
# A pool holds at most this many connections: Postgres' default max_connections is 100, shared
# by every API replica and the jobs process.
POOL_SIZE_MAX: Final = 64
STATEMENT_TIMEOUT_MS_DEFAULT: Final = 30_000
STATEMENT_TIMEOUT_MS_MAX: Final = 3_600_000
# How long a caller waits for a free connection, and how long opening the pool may take.
POOL_WAIT_S_DEFAULT: Final = 30.0
CONNECT_TIMEOUT_S_DEFAULT: Final = 10.0
EMBEDDED_DIR_NAME: Final = "postgres"

assert 1 <= POOL_MIN_SIZE_DEFAULT <= POOL_MAX_SIZE_DEFAULT <= POOL_SIZE_MAX
assert 0 < STATEMENT_TIMEOUT_MS_DEFAULT <= STATEMENT_TIMEOUT_MS_MAX


@dataclass(frozen=True)
class DatabaseSettings:
    # A libpq URI or key=value string; None: the embedded server in `embedded_data_dir`.
    database_url: str | None = None
    embedded_data_dir: Path = Path(".data") / EMBEDDED_DIR_NAME
    pool_min_size: int = POOL_MIN_SIZE_DEFAULT
    pool_max_size: int = POOL_MAX_SIZE_DEFAULT
    pool_wait_s: float = POOL_WAIT_S_DEFAULT
    connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT
    statement_timeout_ms: int = STATEMENT_TIMEOUT_MS_DEFAULT
    application_name: str = "credit-ledger"

    def __post_init__(self) -> None:
        if not 0 <= self.pool_min_size <= self.pool_max_size:
            raise SettingsError("pool_min_size must be between 0 and pool_max_size")
        if not 1 <= self.pool_max_size <= POOL_SIZE_MAX:
            raise SettingsError(f"pool_max_size must be between 1 and {POOL_SIZE_MAX}")
        if not 1 <= self.statement_timeout_ms <= STATEMENT_TIMEOUT_MS_MAX:
            raise SettingsError(
                f"statement_timeout_ms must be between 1 and {STATEMENT_TIMEOUT_MS_MAX}"
            )
        if not (self.pool_wait_s > 0 and self.connect_timeout_s > 0):
            raise SettingsError("pool_wait_s and connect_timeout_s must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DatabaseSettings:
        """Settings from `DATABASE_URL`, `CREDIT_LEDGER_DATA_DIR` and `DATABASE_POOL_MIN_SIZE`,
        `DATABASE_POOL_MAX_SIZE`, `DATABASE_STATEMENT_TIMEOUT_MS` (defaults otherwise)."""
        env = os.environ if env is None else env
        url = env.get("DATABASE_URL", "").strip() or None
        data_dir = Path(env.get("CREDIT_LEDGER_DATA_DIR", ".data")) / EMBEDDED_DIR_NAME
        return cls(
            database_url=url,
            embedded_data_dir=data_dir,
            pool_min_size=_int_env(env, "DATABASE_POOL_MIN_SIZE", POOL_MIN_SIZE_DEFAULT),
            pool_max_size=_int_env(env, "DATABASE_POOL_MAX_SIZE", POOL_MAX_SIZE_DEFAULT),
            statement_timeout_ms=_int_env(
                env, "DATABASE_STATEMENT_TIMEOUT_MS", STATEMENT_TIMEOUT_MS_DEFAULT
            ),
        )


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer") from None


async def resolve_conninfo(settings: DatabaseSettings) -> str:
    """The connection string of the configured server, starting the embedded one if needed."""
    if settings.database_url is not None:
        return settings.database_url
    # Starting the server blocks (initdb on first use, then pg_ctl start): not on the event loop.
    return await asyncio.to_thread(start_embedded_postgres, settings.embedded_data_dir)


def connection_kwargs(settings: DatabaseSettings, conninfo: str) -> dict[str, str]:
    """Per-connection parameters: UTC, the statement timeout, the application name.

    They go in the startup packet (`options`), so no extra round trip is spent per connection;
    `options` already present in the connection string are kept, ours appended.
    """
    existing = str(conninfo_to_dict(conninfo).get("options") or "")
    ours = f"-c TimeZone=UTC -c statement_timeout={settings.statement_timeout_ms}"
    return {
        "options": f"{existing} {ours}".strip(),
        "application_name": settings.application_name,
        "connect_timeout": str(max(1, round(settings.connect_timeout_s))),
    }


async def open_pool(settings: DatabaseSettings, *, conninfo: str | None = None) -> Pool:
    """An open pool of `settings.pool_min_size`..`pool_max_size` connections.

    `conninfo` overrides the settings' server (tests point pools at their own databases).
    Waits until `pool_min_size` connections are up, or raises `psycopg_pool.PoolTimeout`.
    """
    if conninfo is None:
        conninfo = await resolve_conninfo(settings)
    pool: Pool = AsyncConnectionPool(
        conninfo,
        kwargs=connection_kwargs(settings, conninfo),
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_wait_s,
        name=settings.application_name,
        open=False,
    )
    await pool.open(wait=True, timeout=settings.connect_timeout_s)
    return pool


async def close(pool: Pool) -> None:
    """Close the pool: waits for connections in use to come back, then closes them all."""
    await pool.close()


@asynccontextmanager
async def repeatable_read(conn: Connection) -> AsyncIterator[Connection]:
    """A read-only REPEATABLE READ transaction on `conn`: every read sees one snapshot.

    `conn` must have no transaction open (Postgres fixes the isolation level at the first
    statement). Used to load the catalog snapshot consistently across its tables.
    """
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield conn


# The embedded servers this process started, by resolved data directory.
_embedded: dict[Path, PostgresServer] = {}
_embedded_lock = threading.Lock()


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or join) the embedded Postgres in `data_dir` and return its connection URI.

    Idempotent: a second call for the same directory, from this process or another, joins the
    running server. The server listens on a Unix socket only, trusts local connections, and is
    stopped when the last process that started or joined it exits (pgserver counts them in
    `<data_dir>/.handle_pids.json`).
    """
    data_dir = data_dir.expanduser().resolve()
    with _embedded_lock:
        server = _embedded.get(data_dir)
        if server is None:
            server = _start_server(data_dir)
            _embedded[data_dir] = server
        return server.get_uri()


def stop_embedded_postgres(data_dir: Path) -> None:
    """Let go of the embedded server in `data_dir`; it stops if no other process uses it."""
    data_dir = data_dir.expanduser().resolve()
    with _embedded_lock:
        server = _embedded.pop(data_dir, None)
    if server is not None:
        server.cleanup()


def _start_server(data_dir: Path) -> PostgresServer:
    # pgserver computes a runtime directory at import and warns when XDG_RUNTIME_DIR is unset
    # (as for root in a container); it then falls back to /tmp, which is what we want.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver import postgres_server

    if hasattr(os, "geteuid") and os.geteuid() == 0:
        _check_root_can_run_postgres()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # pgserver's own inter-process lock guards its list of users; take it to edit that list.
    with postgres_server.PostgresServer._lock:
        _forget_dead_handles(data_dir)
    _logger.info("starting the embedded Postgres in %s", data_dir)
    return postgres_server.get_server(data_dir, cleanup_mode="stop")


def _check_root_can_run_postgres() -> None:
    """As root, pgserver runs Postgres as the `pgserver` user, creating it with `useradd`."""
    import pwd

    try:
        pwd.getpwnam("pgserver")
    except KeyError:
        if shutil.which("useradd") is None:
            raise RuntimeError(
                "the embedded Postgres cannot run as root and needs a `pgserver` system user, "
                "but `useradd` is not available to create it: create the user, run as another "
                "user, or set DATABASE_URL"
            ) from None


def _forget_dead_handles(data_dir: Path) -> None:
    """Drop the pids of dead processes from pgserver's list of the server's users.

    pgserver stops the server when its last user exits, and a process killed with SIGKILL never
    removes itself: without this, one crash would leave the server running forever.
    """
    handles = data_dir / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (FileNotFoundError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _pid_alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
