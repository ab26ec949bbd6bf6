"""API keys against a real Postgres: the repository (stored hashed, unique prefixes, scopes
checked by the schema, idempotent revocation) and the in-memory cache that authenticates every
request (strict Bearer parsing, revoked keys refused, tenants of bound keys, scopes).

Tests that only read or fail use the rolled-back `conn`; those that need separate transactions
(revocation times, the cache, notifications) commit through `pool`, and look only at the keys
they created, since committed rows stay in the module's database.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable

import pytest
from psycopg import errors

from api.auth import (
    READ_SCOPES,
    SCOPES,
    Forbidden,
    KeyCache,
    Principal,
    Unauthorized,
    parse_authorization,
    require_any_scope,
    require_scope,
)
from grants.errors import CreditError
from ledger import db
from ledger.repositories import api_keys, customers
from ledger.repositories._rows import to_uuid

pytestmark = pytest.mark.anyio

KEY_PATTERN = re.compile(r"clk_[A-Za-z0-9_-]{43}")
WAIT_S = 5.0


async def _stored_hash(conn: db.Connection, id: int) -> bytes:
    cursor = await conn.execute("SELECT secret_hash FROM api_keys WHERE id = %s", (to_uuid(id),))
    row = await cursor.fetchone()
    assert row is not None
    return bytes(row[0])


async def _create(
    pool: db.Pool, *, name: str, scopes: list[str], customer_id: int | None = None
) -> tuple[api_keys.ApiKey, str]:
    async with pool.connection() as conn:
        return await api_keys.create_key(conn, name=name, scopes=scopes, customer_id=customer_id)


async def _customer(pool: db.Pool, *, id: int, tenant: int) -> customers.Customer:
    async with pool.connection() as conn:
        return await customers.insert_customer(conn, id=id, tenant=tenant, name=f"c{tenant}")


# -- the repository ---------------------------------------------------------------------------


async def test_create_returns_the_key_once_and_stores_its_hash(conn: db.Connection) -> None:
    row, key = await api_keys.create_key(conn, name="ops", scopes=["admin", "runtime", "admin"])
    assert KEY_PATTERN.fullmatch(key)
    assert len(key) == api_keys.KEY_CHARS == 47
    assert row.prefix == key[:12]
    assert row.name == "ops"
    assert row.scopes == frozenset({"admin", "runtime"})
    assert row.customer_id is None and row.revoked_at is None
    assert row.created_at.tzinfo is not None
    assert await _stored_hash(conn, row.id) == api_keys.hash_key(key)
    assert api_keys.hash_key(key) == hashlib.sha256(key.encode()).digest()
    # Nothing stored is the key, nor any part of it past the displayed prefix.
    cursor = await conn.execute(
        "SELECT count(*) FROM api_keys WHERE position(%s in api_keys::text) > 0", (key[12:],)
    )
    assert await cursor.fetchone() == (0,)
    assert await api_keys.get_key(conn, row.id) == row


async def test_keys_and_prefixes_are_unique(conn: db.Connection) -> None:
    created = [await api_keys.create_key(conn, name=f"k{i}", scopes=["runtime"]) for i in range(20)]
    assert len({key for _, key in created}) == 20
    assert len({row.prefix for row, _ in created}) == 20
    assert len({row.id for row, _ in created}) == 20
    # The schema refuses a second key with the same prefix (or the same hash).
    first, _ = created[0]
    with pytest.raises(errors.UniqueViolation):
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO api_keys (id, name, prefix, secret_hash, scopes)"
                " VALUES (%s, 'dup', %s, %s, ARRAY['runtime'])",
                (to_uuid(12345), first.prefix, b"\x01" * 32),
            )


@pytest.mark.parametrize(
    "scopes", [["root"], ["runtime", "root"], [], ["Admin"]], ids=["root", "mixed", "none", "case"]
)
async def test_the_schema_refuses_unknown_or_missing_scopes(
    conn: db.Connection, scopes: list[str]
) -> None:
    with pytest.raises(errors.CheckViolation):
        async with conn.transaction():
            await api_keys.create_key(conn, name="bad", scopes=scopes)


async def test_the_schema_refuses_a_null_scope_and_an_unknown_customer(
    conn: db.Connection,
) -> None:
    with pytest.raises(errors.CheckViolation):
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO api_keys (id, name, prefix, secret_hash, scopes)"
                " VALUES (%s, 'n', 'clk_abcdefgh', %s, ARRAY['runtime', NULL])",
                (to_uuid(1), b"\x02" * 32),
            )
    with pytest.raises(errors.ForeignKeyViolation):
        async with conn.transaction():
            await api_keys.create_key(conn, name="bound", scopes=["runtime"], customer_id=999)


async def test_list_pages_and_leaves_out_revoked_keys(conn: db.Connection) -> None:
    await conn.execute("DELETE FROM api_keys")  # rolled back with the test
    rows = [
        (await api_keys.create_key(conn, name=f"k{i}", scopes=["finance"]))[0] for i in range(5)
    ]
    revoked = await api_keys.revoke_key(conn, rows[0].id)
    assert revoked is not None and revoked.revoked_at is not None

    active = await api_keys.list_keys(conn)
    assert {row.id for row in active} == {row.id for row in rows[1:]}
    assert [row.id for row in active] == sorted(row.id for row in active)
    everything = await api_keys.list_keys(conn, include_revoked=True)
    assert {row.id for row in everything} == {row.id for row in rows}

    first_page = await api_keys.list_keys(conn, include_revoked=True, limit=3)
    second_page = await api_keys.list_keys(
        conn, include_revoked=True, after_id=first_page[-1].id, limit=3
    )
    assert first_page + second_page == everything


async def test_revoke_is_idempotent_and_keeps_the_first_time(pool: db.Pool) -> None:
    row, _ = await _create(pool, name="to revoke", scopes=["runtime"])
    async with pool.connection() as conn:
        first = await api_keys.revoke_key(conn, row.id)
    async with pool.connection() as conn:
        second = await api_keys.revoke_key(conn, row.id)
        cursor = await conn.execute("SELECT now()")
        later = await cursor.fetchone()
    assert first is not None and second is not None and later is not None
    assert first.revoked_at is not None and first.revoked_at >= row.created_at
    assert second == first
    assert later[0] > first.revoked_at  # the second call ran later and changed nothing
    async with pool.connection() as conn:
        assert await api_keys.revoke_key(conn, 424242) is None


async def test_active_keys_come_with_their_hash_and_tenant(pool: db.Pool) -> None:
    customer = await _customer(pool, id=7001, tenant=701)
    bound, bound_key = await _create(pool, name="bound", scopes=["runtime"], customer_id=7001)
    unbound, unbound_key = await _create(pool, name="unbound", scopes=["admin"])
    revoked, _ = await _create(pool, name="revoked", scopes=["admin"])
    async with pool.connection() as conn:
        await api_keys.revoke_key(conn, revoked.id)
        active = await api_keys.list_active_keys(conn)
        with_tenants = await api_keys.list_active_keys_with_tenants(conn)

    by_id = {row.id: (secret_hash, row) for secret_hash, row in active}
    assert by_id[bound.id] == (api_keys.hash_key(bound_key), bound)
    assert by_id[unbound.id] == (api_keys.hash_key(unbound_key), unbound)
    assert revoked.id not in by_id
    tenants = {row.id: tenant for _, row, tenant in with_tenants}
    assert tenants[bound.id] == customer.tenant == 701
    assert tenants[unbound.id] == 0
    assert revoked.id not in tenants


# -- the cache and the scopes -------------------------------------------------------------------


async def test_the_cache_authenticates_a_good_key(pool: db.Pool) -> None:
    await _customer(pool, id=7002, tenant=702)
    bound, bound_key = await _create(
        pool, name="agent", scopes=["runtime", "finance"], customer_id=7002
    )
    unbound, unbound_key = await _create(pool, name="ops", scopes=["admin"])
    cache = KeyCache()
    await cache.load(pool)

    assert cache.authenticate(f"Bearer {bound_key}") == Principal(
        key_id=bound.id,
        name="agent",
        scopes=frozenset({"runtime", "finance"}),
        customer_id=7002,
        tenant=702,
    )
    principal = cache.authenticate(f"bearer {unbound_key}")  # the scheme is case-insensitive
    assert (principal.key_id, principal.scopes) == (unbound.id, frozenset({"admin"}))
    assert (principal.customer_id, principal.tenant) == (None, 0)


async def test_the_cache_refuses_unknown_and_revoked_keys(pool: db.Pool) -> None:
    row, key = await _create(pool, name="short-lived", scopes=["runtime"])
    cache = KeyCache()
    await cache.load(pool)
    assert cache.authenticate(f"Bearer {key}").key_id == row.id

    unknown = api_keys.new_key()
    with pytest.raises(Unauthorized, match="unknown or revoked"):
        cache.authenticate(f"Bearer {unknown}")
    async with pool.connection() as conn:
        await api_keys.revoke_key(conn, row.id)
    # The cache answers from memory until it reloads: no Postgres on the request path.
    assert cache.authenticate(f"Bearer {key}").key_id == row.id
    await cache.load(pool)
    with pytest.raises(Unauthorized, match="unknown or revoked") as refused:
        cache.authenticate(f"Bearer {key}")
    assert refused.value.code == "unauthorized"


async def test_an_empty_cache_refuses_every_key() -> None:
    cache = KeyCache()
    assert len(cache) == 0
    with pytest.raises(Unauthorized):
        cache.authenticate(f"Bearer {api_keys.new_key()}")


GOOD_KEY = "clk_" + "A" * 43


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        GOOD_KEY,  # no scheme
        f"Basic {GOOD_KEY}",
        f"Token {GOOD_KEY}",
        "Bearer",
        "Bearer ",
        f"Bearer  {GOOD_KEY}",  # two spaces
        f"Bearer\t{GOOD_KEY}",
        f" Bearer {GOOD_KEY}",
        f"Bearer {GOOD_KEY} ",
        f"Bearer {GOOD_KEY}\n",
        f"Bearer {GOOD_KEY} extra",
        f"Bearer {GOOD_KEY}A",  # too long
        f"Bearer {GOOD_KEY[:-1]}",  # too short
        f"Bearer {GOOD_KEY[:-1]}=",  # padded base64
        f"Bearer {GOOD_KEY[:-1]}+",  # not the URL-safe alphabet
        f"Bearer CLK_{'A' * 43}",
        f"Bearer sk_{'A' * 44}",
        "Bearer " + "x" * 10_000,
    ],
)
def test_the_bearer_header_is_parsed_strictly(header: str | None) -> None:
    with pytest.raises(Unauthorized) as refused:
        parse_authorization(header)
    assert refused.value.code == "unauthorized"
    with pytest.raises(Unauthorized):
        KeyCache().authenticate(header)


def test_a_well_formed_header_gives_the_key() -> None:
    assert parse_authorization(f"Bearer {GOOD_KEY}") == GOOD_KEY
    assert parse_authorization(f"BEARER {GOOD_KEY}") == GOOD_KEY
    key = api_keys.new_key()
    assert parse_authorization(f"Bearer {key}") == key


def _principal(*scopes: str) -> Principal:
    return Principal(key_id=1, name="p", scopes=frozenset(scopes), customer_id=None, tenant=0)


def test_scopes_are_required() -> None:
    require_scope(_principal("runtime"), "runtime")
    require_scope(_principal("admin", "finance"), "finance")
    with pytest.raises(Forbidden, match="'admin' scope") as refused:
        require_scope(_principal("runtime", "finance"), "admin")
    assert refused.value.code == "forbidden"
    assert refused.value.details == {"required_scopes": ["admin"]}
    for scope in SCOPES:
        require_any_scope(_principal(scope), READ_SCOPES)  # every scope reads
    with pytest.raises(Forbidden):
        require_any_scope(_principal("finance"), {"runtime", "admin"})
    assert {"runtime", "admin", "finance"} == READ_SCOPES
    assert issubclass(Unauthorized, CreditError) and issubclass(Forbidden, CreditError)


async def test_following_changes_refuses_a_revoked_key(pool: db.Pool, migrated_db_url: str) -> None:
    row, key = await _create(pool, name="followed", scopes=["runtime"])
    cache = KeyCache()
    follower = asyncio.create_task(cache.follow(pool, migrated_db_url))
    try:
        # The first reload happens as soon as the listener is in place.
        await _until(lambda: cache.reloads >= 1)
        assert cache.authenticate(f"Bearer {key}").key_id == row.id
        reloads = cache.reloads
        async with pool.connection() as conn:
            await api_keys.revoke_key(conn, row.id)
        await _until(lambda: cache.reloads > reloads)
        with pytest.raises(Unauthorized):
            cache.authenticate(f"Bearer {key}")
    finally:
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.01)
