"""The projection's tables (migration 0008): entries, usage rollups, open pending legs, the
watermark. Written only by the projection feed (`wallets.projection`), one batch per
transaction: `apply_batch` writes a batch's entries, the rollups they add to, the pending legs
it opens, resolves and times out, and the new watermark, or nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from psycopg.pq import TransactionStatus

from ledger.db import Connection
from ledger.repositories._rows import from_amount, from_uuid, uuids

ZERO_UUID: Final = "00000000-0000-0000-0000-000000000000"


class Entry(msgspec.Struct, frozen=True):
    """One movement of credits on an owned account (wallets/entries.py says which)."""

    transfer_id: int
    kind: str
    effective_at_ns: int  # business time: the transfer's user_data_64, else its timestamp
    engine_ts: int  # the engine's timestamp (a timeout: the instant the engine released it)
    code: int  # the transfer's code (a post, void or timeout: the pending transfer's)
    credit_type_id: int
    account_id: int
    account_kind: str  # block | overdraft | budget
    owner_id: int  # the account's owner: its wallet (block, overdraft) or budget
    wallet_id: int  # the wallet that spent (a spend's), else the owner wallet; 0: none
    operation_id: int  # the leg's user_data_128 (a refund: the debit; a sweep: the block)
    reservation_id: int  # reserve, settle, release, timeout (and a settle's overage); else 0
    amount: int  # signed change of the account's posted balance (credits - debits)
    pending: int  # signed change of the debits reservations hold on it
    dimension_set_id: int  # 0: none


class PendingLeg(msgspec.Struct, frozen=True):
    """A pending leg on an owned account, open until posted, voided or timed out."""

    transfer_id: int
    expires_at_ns: int
    amount: int
    code: int
    credit_type_id: int
    account_id: int
    account_kind: str
    owner_id: int
    wallet_id: int  # the wallet that spent (0: none)
    reservation_id: int
    dimension_set_id: int


class State(msgspec.Struct, frozen=True):
    watermark_ts: int  # the engine timestamp of the last transfer projected (0: none)
    entries: int  # entries written since the projection started (or was rebuilt)
    updated_at: datetime


class Applied(msgspec.Struct, frozen=True):
    entries: int  # new entry rows (timeouts included)
    timeouts: int  # pending legs the watermark passed the expiry of


class LostLeadership(RuntimeError):
    """The watermark moved under this feed: another feed is writing. Nothing was written."""


# -- reads -------------------------------------------------------------------------------------


async def read_state(conn: Connection) -> State:
    cursor = await conn.execute(
        "SELECT watermark_ts, entries, updated_at FROM projection_state WHERE name = 'ledger'"
    )
    row = await cursor.fetchone()
    assert row is not None, "migration 0008 inserts the state row"
    return State(int(row[0]), int(row[1]), row[2])


_PENDING_COLUMNS: Final = (
    "transfer_id, expires_at_ns, amount, code, credit_type_id, account_id, account_kind,"
    " owner_id, wallet_id, reservation_id, dimension_set_id"
)


def _id(value: Any) -> int:
    return 0 if value is None else from_uuid(value)


async def pending_legs(conn: Connection, ids: Collection[int]) -> dict[int, PendingLeg]:
    """The open pending legs among `ids`."""
    if not ids:
        return {}
    cursor = await conn.execute(
        f"SELECT {_PENDING_COLUMNS} FROM projection_pending WHERE transfer_id = ANY(%s)",
        (uuids(ids),),
    )
    out = {}
    for row in await cursor.fetchall():
        leg = PendingLeg(
            transfer_id=from_uuid(row[0]),
            expires_at_ns=int(row[1]),
            amount=from_amount(row[2]),
            code=int(row[3]),
            credit_type_id=int(row[4]),
            account_id=from_uuid(row[5]),
            account_kind=row[6],
            owner_id=from_uuid(row[7]),
            wallet_id=_id(row[8]),
            reservation_id=_id(row[9]),
            dimension_set_id=_id(row[10]),
        )
        out[leg.transfer_id] = leg
    return out


async def earliest_open_expiry(conn: Connection) -> tuple[int, int] | None:
    """(expiry in ns, credit type) of the open pending leg that expires first, if any."""
    cursor = await conn.execute(
        "SELECT expires_at_ns, credit_type_id FROM projection_pending"
        " ORDER BY expires_at_ns LIMIT 1"
    )
    row = await cursor.fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


async def legacy_dimensions(
    conn: Connection, operations: Collection[int]
) -> dict[int, dict[str, str]]:
    """The dimensions the old projection kept for spends whose chains carry no set."""
    if not operations:
        return {}
    cursor = await conn.execute(
        "SELECT operation_id, dimensions FROM legacy_operation_dimensions"
        " WHERE operation_id = ANY(%s)",
        (uuids(operations),),
    )
    return {from_uuid(row[0]): row[1] for row in await cursor.fetchall()}


# -- the batch -----------------------------------------------------------------------------------

_STAGING: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS entries_in (transfer_id uuid, kind text, effective_us bigint,"
    " engine_ts bigint, code integer, credit_type_id bigint, account_id uuid,"
    " account_kind text, owner_id uuid,"
    " wallet_id uuid, operation_id uuid, reservation_id uuid, amount numeric, pending numeric,"
    " dimension_set_id uuid) ON COMMIT DELETE ROWS"
)
_STAGED: Final = (
    "transfer_id, kind, effective_us, engine_ts, code, credit_type_id, account_id,"
    " account_kind, owner_id, wallet_id, operation_id, reservation_id, amount, pending,"
    " dimension_set_id"
)
_STAGING_READY: weakref.WeakSet[Connection] = weakref.WeakSet()

_TIMEOUTS: Final = f"""
WITH expired AS (
    DELETE FROM projection_pending WHERE expires_at_ns <= %s RETURNING *
)
INSERT INTO entries_in ({_STAGED})
SELECT transfer_id, 'timeout', expires_at_ns / 1000, expires_at_ns, code, credit_type_id,
       account_id,
       account_kind, owner_id, wallet_id, reservation_id, reservation_id, 0, -amount,
       dimension_set_id
FROM expired
"""

_INSERT: Final = f"""
WITH new AS (
    INSERT INTO ledger_entries (
        transfer_id, kind, effective_at, engine_ts, code, credit_type_id, account_id,
        account_kind, wallet_id, resource_id, customer_id, operation_id, reservation_id,
        amount, pending, dimension_set_id, currency, value_minor)
    SELECT e.transfer_id, e.kind, timestamptz 'epoch' + e.effective_us * interval '1 microsecond',
           e.engine_ts, e.code, e.credit_type_id, e.account_id, e.account_kind, e.wallet_id,
           COALESCE(w.resource_id, b.resource_id), r.customer_id, e.operation_id,
           e.reservation_id, e.amount, e.pending, e.dimension_set_id, g.currency,
           CASE WHEN g.id IS NULL OR g.consideration_minor = 0 THEN 0
                ELSE round(e.amount * g.consideration_minor / g.amount, 9) END
    FROM entries_in e
    LEFT JOIN wallets w ON w.id = e.wallet_id
    LEFT JOIN budgets b ON e.account_kind = 'budget' AND b.id = e.owner_id
    LEFT JOIN resources r ON r.id = COALESCE(w.resource_id, b.resource_id)
    LEFT JOIN grants g ON e.account_kind = 'block' AND g.id = e.account_id
    ON CONFLICT DO NOTHING
    RETURNING customer_id, effective_at, resource_id, wallet_id, credit_type_id,
              dimension_set_id, currency, kind, account_kind, amount, value_minor
), usage AS (
    SELECT * FROM new
    WHERE kind IN ('debit', 'settle', 'overdraft_draw', 'refund') AND account_kind <> 'budget'
      AND customer_id IS NOT NULL AND resource_id IS NOT NULL AND wallet_id IS NOT NULL
), rolled AS (
    INSERT INTO usage_rollups AS u (
        customer_id, grain, bucket_start, resource_id, wallet_id, credit_type_id,
        dimension_set_id, currency, credits, value_minor, entries)
    SELECT s.customer_id, g.grain, date_trunc(g.grain, s.effective_at, 'UTC'), s.resource_id,
           s.wallet_id, s.credit_type_id, COALESCE(s.dimension_set_id, '{ZERO_UUID}'),
           COALESCE(s.currency, ''), -sum(s.amount), -sum(s.value_minor), count(*)
    FROM usage s CROSS JOIN (VALUES ('hour'), ('day')) AS g (grain)
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
    ON CONFLICT (customer_id, grain, bucket_start, resource_id, wallet_id, credit_type_id,
                 dimension_set_id, currency)
    DO UPDATE SET credits = u.credits + excluded.credits,
                  value_minor = u.value_minor + excluded.value_minor,
                  entries = u.entries + excluded.entries
    RETURNING 1
)
SELECT (SELECT count(*) FROM new), (SELECT count(*) FROM rolled)
"""

# The months that have a partition of ledger_entries, per connection's database (loaded once).
_MONTHS: dict[str, set[str]] = {}


async def apply_batch(
    conn: Connection,
    *,
    entries: Sequence[Entry],
    opened: Sequence[PendingLeg],
    resolved: Collection[int],
    from_ts: int,
    watermark_ts: int,
) -> Applied:
    """Writes one batch in one transaction: `entries`; the pending legs `opened` and those
    `resolved`; a timeout entry for every open leg that expired by `watermark_ts`; the rollups
    of the new entries; the watermark moved from `from_ts` to `watermark_ts`. Entries already
    there (same transfer, kind and account) are skipped, and add nothing to the rollups. Raises
    LostLeadership, writing nothing, when the watermark is not at `from_ts`."""
    assert watermark_ts >= from_ts
    await _ensure_staging(conn)
    async with conn.transaction():
        if conn not in _STAGING_READY:
            await conn.execute(_STAGING)
        async with conn.cursor() as cursor:
            if entries:
                async with cursor.copy(f"COPY entries_in ({_STAGED}) FROM STDIN") as copy:
                    await copy.write(_entries_text(entries))
            if resolved:
                await cursor.execute(
                    "DELETE FROM projection_pending WHERE transfer_id = ANY(%s)",
                    (uuids(resolved),),
                )
            if opened:
                async with cursor.copy(
                    f"COPY projection_pending ({_PENDING_COLUMNS}) FROM STDIN"
                ) as copy:
                    await copy.write(_pending_text(opened))
            await cursor.execute(_TIMEOUTS, (watermark_ts,))
            timeouts = cursor.rowcount
            await _ensure_partitions(conn)
            await cursor.execute(_INSERT)
            row = await cursor.fetchone()
            assert row is not None
            inserted = int(row[0])
            await cursor.execute(
                "UPDATE projection_state SET watermark_ts = %s, entries = entries + %s,"
                " updated_at = now() WHERE name = 'ledger' AND watermark_ts = %s",
                (watermark_ts, inserted, from_ts),
            )
            if cursor.rowcount != 1:
                raise LostLeadership("the projection's watermark moved under this feed")
    return Applied(inserted, max(timeouts, 0))


async def _ensure_staging(conn: Connection) -> None:
    if conn not in _STAGING_READY and conn.info.transaction_status is TransactionStatus.IDLE:
        async with conn.transaction():
            await conn.execute(_STAGING)
        _STAGING_READY.add(conn)


async def _ensure_partitions(conn: Connection) -> None:
    """Creates the month partitions the staged entries need (in the batch's transaction)."""
    database = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    months = _MONTHS.get(database)
    if months is None:
        cursor = await conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'ledger_entries'::regclass"
        )
        months = {row[0] for row in await cursor.fetchall()}
        _MONTHS[database] = months
    cursor = await conn.execute(
        "SELECT DISTINCT to_char((timestamptz 'epoch' + effective_us * interval '1 microsecond')"
        " AT TIME ZONE 'UTC', 'YYYY-MM') FROM entries_in"
    )
    for (month,) in await cursor.fetchall():
        name = partition_name(month)
        if name in months:
            continue
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF ledger_entries"
            f" FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
        months.add(name)


def partition_name(month: str) -> str:
    """The partition of ledger_entries that holds the month 'YYYY-MM' (UTC)."""
    year, number = month.split("-")
    return f"ledger_entries_y{year}m{number}"


def forget_partitions() -> None:
    """Forgets the partitions this process knows of (after a test drops its database)."""
    _MONTHS.clear()


def _nullable(value: int) -> str:
    return "\\N" if value == 0 else _hex(value)


def _hex(value: int) -> str:
    return f"{value:032x}"


def _entries_text(entries: Sequence[Entry]) -> bytes:
    """The entries in COPY's text format, written here rather than by psycopg's adapters."""
    lines = []
    for e in entries:
        lines.append(
            f"{_hex(e.transfer_id)}\t{e.kind}\t{e.effective_at_ns // 1000}\t{e.engine_ts}\t"
            f"{e.code}\t{e.credit_type_id}\t{_hex(e.account_id)}\t{e.account_kind}\t{_hex(e.owner_id)}\t"
            f"{_nullable(e.wallet_id)}\t{_nullable(e.operation_id)}\t"
            f"{_nullable(e.reservation_id)}\t{e.amount}\t{e.pending}\t"
            f"{_nullable(e.dimension_set_id)}\n"
        )
    return "".join(lines).encode()


def _pending_text(legs: Sequence[PendingLeg]) -> bytes:
    lines = []
    for leg in legs:
        lines.append(
            f"{_hex(leg.transfer_id)}\t{leg.expires_at_ns}\t{leg.amount}\t{leg.code}\t"
            f"{leg.credit_type_id}\t"
            f"{_hex(leg.account_id)}\t{leg.account_kind}\t{_hex(leg.owner_id)}\t"
            f"{_nullable(leg.wallet_id)}\t{_nullable(leg.reservation_id)}\t"
            f"{_nullable(leg.dimension_set_id)}\n"
        )
    return "".join(lines).encode()


# -- rebuild and comparison ------------------------------------------------------------------


async def reset(conn: Connection) -> None:
    """Empties the projection (entries, rollups, open legs) and its watermark, for a rebuild.
    The dimension sets stay: they are not derived from the engine."""
    async with conn.transaction():
        await conn.execute("TRUNCATE ledger_entries, usage_rollups, projection_pending")
        await conn.execute(
            "UPDATE projection_state SET watermark_ts = 0, entries = 0, updated_at = now()"
            " WHERE name = 'ledger'"
        )


async def dump(conn: Connection) -> bytes:
    """Every entry and rollup, in a fixed order, as text: equal projections, equal bytes."""
    out = bytearray()
    for table, order in (
        ("ledger_entries", "transfer_id, kind, account_id"),
        (
            "usage_rollups",
            "customer_id, grain, bucket_start, resource_id, wallet_id,"
            " credit_type_id, dimension_set_id, currency",
        ),
        ("projection_pending", "transfer_id"),
    ):
        async with (
            conn.cursor() as cursor,
            cursor.copy(f"COPY (SELECT * FROM {table} ORDER BY {order}) TO STDOUT") as copy,
        ):
            async for chunk in copy:
                out += bytes(chunk)
    return bytes(out)
