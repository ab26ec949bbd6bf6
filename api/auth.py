"""API-key authentication and scopes: who is calling, and may they do this.

Invariants:
- `Authorization: Bearer <key>` is the only accepted form: one space, a well-formed key
  (`clk_` and 43 URL-safe base64 characters), nothing before or after. The scheme is matched
  case-insensitively, as HTTP auth schemes are (RFC 9110, 11.1); the key exactly.
- `KeyCache.authenticate` never touches Postgres: it hashes the key and looks the hash up in a
  dict loaded by `KeyCache.load` (and kept current by `KeyCache.follow`). Looking up a sha-256
  digest leaks nothing useful through timing: a caller cannot choose a digest's bytes.
- Every refusal of a key says the same thing, whether the key is malformed, unknown or revoked,
  so a caller learns nothing about which keys exist.
- A key's tenant is its customer's (0 for a key bound to no customer); it is read with the keys,
  so a request never waits for it.
- Scopes (issue 4): `runtime` may check, debit, reserve, settle, release and read; `admin` may
  change the catalog, grants, budgets and keys, and read; `finance` may read reports and read.
  Every scope reads: a read route requires any of `READ_SCOPES`.

This module is free of litestar: the HTTP layer calls it and maps `Unauthorized` (401) and
`Forbidden` (403) through the error table like every other `CreditError`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Collection
from typing import Final

import msgspec

from grants.errors import CreditError
from ledger.db import DatabaseSettings, Pool
from ledger.notify import CatalogChange, listen_catalog_changes
from ledger.repositories import api_keys
from ledger.tasks import stop_tasks

_logger = logging.getLogger(__name__)

SCOPE_RUNTIME: Final = "runtime"
SCOPE_ADMIN: Final = "admin"
SCOPE_FINANCE: Final = "finance"
SCOPES: Final = frozenset({SCOPE_RUNTIME, SCOPE_ADMIN, SCOPE_FINANCE})
READ_SCOPES: Final = SCOPES  # every key may read (what its customer binding lets it see)
assert api_keys.SCOPES == SCOPES

# An Authorization header longer than this is refused before any parsing.
AUTHORIZATION_CHARS_MAX: Final = 256
_BEARER: Final = re.compile(
    r"[Bb][Ee][Aa][Rr][Ee][Rr] (?P<key>"
    + re.escape(api_keys.KEY_PREFIX)
    + r"[A-Za-z0-9_-]{"
    + str(api_keys.KEY_SECRET_CHARS)
    + r"})"
)
assert api_keys.KEY_CHARS + len("Bearer ") <= AUTHORIZATION_CHARS_MAX


class Unauthorized(CreditError):
    """No valid API key: the header is missing or malformed, or the key unknown or revoked."""

    code = "unauthorized"


class Forbidden(CreditError):
    """A valid key whose scopes do not allow the operation."""

    code = "forbidden"


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    key_id: int
    name: str
    scopes: frozenset[str]
    customer_id: int | None  # the one customer this key may see; None: every customer
    tenant: int  # the bound customer's tenant; 0 when the key is bound to no customer


def parse_authorization(authorization: str | None) -> str:
    """The key in an `Authorization: Bearer <key>` header, or `Unauthorized`."""
    if authorization is None or authorization == "":
        raise Unauthorized("an Authorization: Bearer <API key> header is required")
    if len(authorization) > AUTHORIZATION_CHARS_MAX:
        raise Unauthorized("the Authorization header is not 'Bearer <API key>'")
    # fullmatch: the whole header, so a trailing newline or space is refused too.
    match = _BEARER.fullmatch(authorization)
    if match is None:
        raise Unauthorized(
            "the Authorization header is not 'Bearer <API key>', an API key being "
            f"{api_keys.KEY_PREFIX} and {api_keys.KEY_SECRET_CHARS} characters"
        )
    return match["key"]


class KeyCache:
    """The active API keys, in memory, by the sha-256 of the key."""

    def __init__(self) -> None:
        self._principals: dict[bytes, Principal] = {}
        self.reloads = 0

    def __len__(self) -> int:
        return len(self._principals)

    async def load(self, pool: Pool) -> None:
        """Replace the cache with the active keys in Postgres (at start, and on every change)."""
        async with pool.connection() as conn:
            rows = await api_keys.list_active_keys_with_tenants(conn)
        # One assignment: a request sees either the old dict or the new one, never half of one.
        self._principals = {
            secret_hash: Principal(
                key_id=key.id,
                name=key.name,
                scopes=key.scopes,
                customer_id=key.customer_id,
                tenant=tenant,
            )
            for secret_hash, key, tenant in rows
        }

    async def follow(self, pool: Pool, target: DatabaseSettings | str) -> None:
        """Keep the cache current until cancelled: reload on every change of `api_keys` or
        `customers` (a tenant), and on every (re)connection, since notifications sent while
        disconnected are lost. Changes that arrive during a reload fold into the next one."""
        dirty = asyncio.Event()

        def on_change(change: CatalogChange) -> None:
            if change.table in ("api_keys", "customers"):
                dirty.set()

        listener = asyncio.create_task(
            listen_catalog_changes(target, on_change, on_listening=dirty.set),
            name="api-key-listener",
        )
        try:
            while True:
                await dirty.wait()
                dirty.clear()
                await self.load(pool)
                self.reloads += 1
        finally:
            await stop_tasks([listener])

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of the key in an `Authorization` header, or `Unauthorized`.

        On every request's path: no I/O, one sha-256 and one dict lookup.
        """
        key = parse_authorization(authorization)
        principal = self._principals.get(api_keys.hash_key(key))
        if principal is None:
            raise Unauthorized("the API key is unknown or revoked")
        return principal


def require_scope(principal: Principal, scope: str) -> None:
    """`Forbidden` unless the principal's key has `scope`."""
    assert scope in SCOPES, scope
    if scope not in principal.scopes:
        raise Forbidden(
            f"this operation needs an API key with the {scope!r} scope",
            required_scopes=[scope],
        )


def require_any_scope(principal: Principal, scopes: Collection[str]) -> None:
    """`Forbidden` unless the principal's key has at least one of `scopes` (for reads:
    `READ_SCOPES`)."""
    assert scopes and set(scopes) <= SCOPES, scopes
    if principal.scopes.isdisjoint(scopes):
        named = sorted(scopes)
        which = (
            f"the {named[0]!r} scope"
            if len(named) == 1
            else "one of the scopes " + ", ".join(repr(scope) for scope in named)
        )
        raise Forbidden(f"this operation needs an API key with {which}", required_scopes=named)
