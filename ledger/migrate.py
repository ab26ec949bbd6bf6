"""Schema migrations: numbered SQL files in `ledger/migrations/`, applied once each, in order.

Invariants:
- A migration is a file `NNNN_name.sql` (four digits, then a lower-case name). Its version is the
  number; versions are unique and applied in ascending order. A file is never edited once
  applied: a change is a new file.
- Each file runs in its own transaction, together with its row in `schema_migrations`
  (version, name, sha-256 checksum of the file's bytes, applied_at): a file is applied entirely
  or not at all. (So a migration cannot use statements that refuse a transaction, such as
  CREATE INDEX CONCURRENTLY.)
- All of it happens under a session-level Postgres advisory lock: two processes that migrate at
  once run one after the other, and the second finds nothing left to apply.
- Before applying anything, the checksums of the files already applied are compared with the
  files on disk: a file changed after it was applied is a `MigrationError` naming it, and nothing
  is applied.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from ledger.db import Connection, Pool

# The key of the advisory lock that serializes migrations: a fixed, arbitrary bigint
# (the first 8 bytes of sha-256("credit-ledger/migrate"), as a signed integer).
MIGRATION_LOCK_KEY: Final = int.from_bytes(
    hashlib.sha256(b"credit-ledger/migrate").digest()[:8], "big", signed=True
)
# Migrations may rewrite large tables: their statements get a longer bound than requests do.
MIGRATION_STATEMENT_TIMEOUT_MS_DEFAULT: Final = 600_000
MIGRATION_STATEMENT_TIMEOUT_MS_MAX: Final = 24 * 3_600_000
MIGRATIONS_PACKAGE: Final = "ledger"
MIGRATIONS_DIR: Final = "migrations"
_FILE_NAME: Final = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")

_CREATE_TABLE: Final = b"""
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migrations on disk and the ones applied disagree; the message says how."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: bytes

    @property
    def label(self) -> str:
        """`0001_catalog`: how reports and errors name the migration."""
        return f"{self.version:04d}_{self.name}"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql).hexdigest()


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migrations in `directory` (default: the ones shipped in `ledger/migrations/`), sorted.

    Files not ending in `.sql` are ignored; a `.sql` file with a malformed name, or two files
    with the same version, is a `MigrationError`.
    """
    if directory is None:
        root = resources.files(MIGRATIONS_PACKAGE).joinpath(MIGRATIONS_DIR)
        files = [(entry.name, entry.read_bytes()) for entry in root.iterdir() if entry.is_file()]
    else:
        files = [(path.name, path.read_bytes()) for path in directory.iterdir() if path.is_file()]
    migrations: dict[int, Migration] = {}
    for file_name, sql in files:
        if not file_name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(file_name)
        if match is None:
            raise MigrationError(f"migration file {file_name!r} is not named NNNN_name.sql")
        migration = Migration(int(match["version"]), match["name"], sql)
        if migration.version in migrations:
            other = migrations[migration.version].label
            raise MigrationError(f"migrations {other} and {migration.label} share a version")
        migrations[migration.version] = migration
    return [migrations[version] for version in sorted(migrations)]


async def migrate(
    pool: Pool,
    migrations: Sequence[Migration] | None = None,
    *,
    statement_timeout_ms: int = MIGRATION_STATEMENT_TIMEOUT_MS_DEFAULT,
) -> list[str]:
    """Apply the pending migrations; return the labels of those applied now, in order.

    Safe to call from several processes at once, and again and again: a second call applies
    nothing and returns []. `statement_timeout_ms` bounds each statement, the wait for another
    process' migrations included (the pool's own timeout is meant for requests, not DDL).
    """
    assert 1 <= statement_timeout_ms <= MIGRATION_STATEMENT_TIMEOUT_MS_MAX
    if migrations is None:
        migrations = load_migrations()
    async with pool.connection() as conn:
        # Session-level lock on an autocommit connection: held across the per-file
        # transactions, released in `finally` (or by Postgres if the connection dies).
        await conn.set_autocommit(True)
        await conn.execute(
            "SELECT set_config('statement_timeout', %s, false)", (f"{statement_timeout_ms}ms",)
        )
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            return await _migrate_locked(conn, migrations)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
            # Back to the connection's own timeout (from its startup options) for the pool.
            await conn.execute("RESET statement_timeout")
            await conn.set_autocommit(False)


async def _migrate_locked(conn: Connection, migrations: Sequence[Migration]) -> list[str]:
    await conn.execute(_CREATE_TABLE)
    cursor = await conn.execute("SELECT version, name, checksum FROM schema_migrations")
    applied = {
        int(version): (str(name), str(checksum))
        for version, name, checksum in await cursor.fetchall()
    }
    _check_applied(applied, migrations)
    done: list[str] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
        done.append(migration.label)
    return done


def _check_applied(applied: dict[int, tuple[str, str]], migrations: Sequence[Migration]) -> None:
    on_disk = {migration.version: migration for migration in migrations}
    for version, (name, checksum) in sorted(applied.items()):
        migration = on_disk.get(version)
        if migration is None:
            # A newer deployment may have applied migrations this code does not know; that is
            # fine as long as the ones it knows are unchanged.
            continue
        if migration.name != name or migration.checksum != checksum:
            raise MigrationError(
                f"migration {migration.label} changed after it was applied "
                f"(applied as {version:04d}_{name} with sha-256 {checksum}, "
                f"the file now has {migration.checksum}); "
                "restore the file and put the change in a new migration"
            )
