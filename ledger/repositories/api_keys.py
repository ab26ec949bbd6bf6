"""API keys: stored as the sha-256 of the key, never the key itself (migration 0003).

Invariants:
- A key is `clk_` followed by 43 characters of URL-safe base64 without padding: 256 bits from
  `secrets.token_bytes`. `create_key` returns it once; nothing stores or logs it.
- `secret_hash` is `hash_key(key)`, sha-256 of the whole key's ASCII. A fast hash is right: the
  key is 256-bit random, so a slow password hash would protect nothing and cost every request.
- `prefix` is the key's first 12 characters (`clk_` and 48 random bits): unique, shown in
  listings to tell keys apart.
- `revoked_at` is set once and never cleared or moved: revoking again changes nothing.
- Scopes are a non-empty subset of `SCOPES`; the table's CHECK refuses anything else (this
  module does not check them first, so the schema is the one place that decides).
- At most `ACTIVE_KEYS_MAX` keys are active at once: every process holds all of them in memory.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

import msgspec

from ledger.db import Connection
from ledger.repositories._rows import (
    ROWS_PER_PAGE_DEFAULT,
    from_uuid,
    from_uuid_or_none,
    page_limit,
    to_uuid,
    to_uuid_or_none,
)

SCOPES: Final = frozenset({"runtime", "admin", "finance"})  # the CHECK of api_keys.scopes
KEY_PREFIX: Final = "clk_"
KEY_SECRET_BYTES: Final = 32
KEY_SECRET_CHARS: Final = 43  # URL-safe base64 of 32 bytes, unpadded
KEY_CHARS: Final = len(KEY_PREFIX) + KEY_SECRET_CHARS
DISPLAY_PREFIX_CHARS: Final = 12
NAME_CHARS_MAX: Final = 200  # the CHECK of api_keys.name
ACTIVE_KEYS_MAX: Final = 10_000
# A new key's id, prefix or hash equal to an existing one's is (astronomically) unlikely; the
# insert then tries again with new random values, this many times at most.
CREATE_ATTEMPTS_MAX: Final = 3

assert len(base64.urlsafe_b64encode(bytes(KEY_SECRET_BYTES)).rstrip(b"=")) == KEY_SECRET_CHARS
assert len(KEY_PREFIX) < DISPLAY_PREFIX_CHARS < KEY_CHARS

_COLUMNS: Final = "id, name, prefix, scopes, customer_id, created_at, revoked_at"


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    id: int  # a random u128
    name: str
    prefix: str  # the key's first DISPLAY_PREFIX_CHARS characters
    scopes: frozenset[str]
    customer_id: int | None  # the one customer the key may see; None: every customer
    created_at: datetime
    revoked_at: datetime | None


class ActiveKeyLimitReached(Exception):
    """`ACTIVE_KEYS_MAX` keys are active already: revoke one before creating another."""


def hash_key(key: str) -> bytes:
    """The stored form of a key: sha-256 of its UTF-8 bytes (32 bytes)."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def new_key() -> str:
    """A fresh key: `clk_` and 43 characters of URL-safe base64 (256 random bits)."""
    secret = base64.urlsafe_b64encode(secrets.token_bytes(KEY_SECRET_BYTES)).rstrip(b"=")
    key = KEY_PREFIX + secret.decode("ascii")
    assert len(key) == KEY_CHARS
    return key


def _row(row: tuple[Any, ...]) -> ApiKey:
    id_, name, prefix, scopes, customer_id, created_at, revoked_at = row
    return ApiKey(
        id=from_uuid(id_),
        name=name,
        prefix=prefix,
        scopes=frozenset(scopes),
        customer_id=from_uuid_or_none(customer_id),
        created_at=created_at,
        revoked_at=revoked_at,
    )


async def create_key(
    conn: Connection, *, name: str, scopes: Iterable[str], customer_id: int | None = None
) -> tuple[ApiKey, str]:
    """Store a new key; return its row and the key itself, which is never available again.

    An unknown scope or no scope at all is a `psycopg.errors.CheckViolation`, an unknown
    customer a `ForeignKeyViolation`; `ActiveKeyLimitReached` when too many keys are active.
    """
    ordered_scopes = sorted(set(scopes))
    for _ in range(CREATE_ATTEMPTS_MAX):
        key = new_key()
        # The count and the insert are one statement; two concurrent creations may both pass
        # the count, so the limit can be exceeded by the number of concurrent creators.
        cursor = await conn.execute(
            "INSERT INTO api_keys (id, name, prefix, secret_hash, scopes, customer_id)"
            " SELECT %s, %s, %s, %s, %s, %s"
            " WHERE (SELECT count(*) FROM api_keys WHERE revoked_at IS NULL) < %s"
            f" ON CONFLICT DO NOTHING RETURNING {_COLUMNS}",
            (
                to_uuid(secrets.randbelow(2**128 - 2) + 1),
                name,
                key[:DISPLAY_PREFIX_CHARS],
                hash_key(key),
                ordered_scopes,
                to_uuid_or_none(customer_id),
                ACTIVE_KEYS_MAX,
            ),
        )
        row = await cursor.fetchone()
        if row is not None:
            return _row(row), key
        if await _count_active(conn) >= ACTIVE_KEYS_MAX:
            raise ActiveKeyLimitReached(f"{ACTIVE_KEYS_MAX} API keys are active already")
    raise AssertionError(f"{CREATE_ATTEMPTS_MAX} random keys in a row clashed with stored ones")


async def _count_active(conn: Connection) -> int:
    cursor = await conn.execute("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def get_key(conn: Connection, id: int) -> ApiKey | None:
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = %s", (to_uuid(id),))
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def list_keys(
    conn: Connection,
    *,
    include_revoked: bool = False,
    after_id: int | None = None,
    limit: int = ROWS_PER_PAGE_DEFAULT,
) -> list[ApiKey]:
    """A page of keys by id (active ones only, unless `include_revoked`); pass the last id of a
    page as `after_id` for the next."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM api_keys"
        " WHERE (%s OR revoked_at IS NULL) AND (%s::uuid IS NULL OR id > %s::uuid)"
        " ORDER BY id LIMIT %s",
        (include_revoked, to_uuid_or_none(after_id), to_uuid_or_none(after_id), page_limit(limit)),
    )
    return [_row(row) for row in await cursor.fetchall()]


async def revoke_key(conn: Connection, id: int) -> ApiKey | None:
    """Revoke a key (at the transaction's time); None if there is no such key.

    Idempotent: a key revoked already keeps its first `revoked_at`, and the row is not written
    again (so no change is notified either).
    """
    cursor = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL"
        f" RETURNING {_COLUMNS}",
        (to_uuid(id),),
    )
    row = await cursor.fetchone()
    if row is not None:
        return _row(row)
    return await get_key(conn, id)


async def list_active_keys(conn: Connection) -> list[tuple[bytes, ApiKey]]:
    """Every active key with its stored hash, for the in-process cache (unpaged: bounded by
    `ACTIVE_KEYS_MAX`)."""
    return [(secret_hash, key) for secret_hash, key, _ in await list_active_keys_with_tenants(conn)]


async def list_active_keys_with_tenants(conn: Connection) -> list[tuple[bytes, ApiKey, int]]:
    """`list_active_keys`, each with the tenant of the key's customer (0 for an unbound key)."""
    columns = ", ".join(f"k.{column}" for column in _COLUMNS.split(", "))
    cursor = await conn.execute(
        f"SELECT k.secret_hash, coalesce(c.tenant, 0), {columns}"
        " FROM api_keys k LEFT JOIN customers c ON c.id = k.customer_id"
        " WHERE k.revoked_at IS NULL ORDER BY k.id"
    )
    return [(bytes(row[0]), _row(row[2:]), int(row[1])) for row in await cursor.fetchall()]
