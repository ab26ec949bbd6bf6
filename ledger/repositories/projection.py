"""The projection's tables (migration 0008): entries, usage rollups, open pending legs, the
watermark. Written only by the projection feed (`wallets.projection`), one batch per
transaction (see "the batch" below).
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from ledger.db import Connection
from ledger.repositories._copy import NULL, copy_text, timestamp_us, uuid_hex_or_null
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
    caught_up_ns: int  # wall time when the leading feed last found nothing newer (0: never)
    updated_at: datetime


class LostLeadership(RuntimeError):
    """The watermark moved under this feed: another feed is writing. Nothing was written."""


# -- reads -------------------------------------------------------------------------------------


async def read_state(conn: Connection) -> State:
    cursor = await conn.execute(
        "SELECT watermark_ts, entries, caught_up_ns, updated_at FROM projection_state"
        " WHERE name = 'ledger'"
    )
    row = await cursor.fetchone()
    assert row is not None, "migration 0008 inserts the state row"
    return State(int(row[0]), int(row[1]), int(row[2]), row[3])


async def mark_caught_up(conn: Connection, at_ns: int) -> None:
    """The leading feed found the engine had nothing newer than the watermark at `at_ns`."""
    await conn.execute(
        "UPDATE projection_state SET caught_up_ns = greatest(caught_up_ns, %s)"
        " WHERE name = 'ledger'",
        (at_ns,),
    )


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
    legs = [_pending_leg(row) for row in await cursor.fetchall()]
    return {leg.transfer_id: leg for leg in legs}


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


# -- the batch ----------------------------------------------------------------------------------
#
# The feed writes a batch in one transaction (wallets/projection.py): `claim_watermark` first
# (the row lock serializes two feeds: the second finds the watermark moved and writes nothing),
# then the pending legs, the entries (COPY, straight into the partitioned table: the watermark
# guarantees that none of them is there yet), the rollups and the count of entries.


class EntryRow(msgspec.Struct, frozen=True):
    """An entry as stored: the entry and what the catalog says of it."""

    entry: Entry
    resource_id: int  # 0: unknown to the catalog
    customer_id: int  # 0: unknown
    currency: str  # '' : none (a promotional block, an overdraft or budget account)
    value_nano: int  # its value at the block's cost basis, in 10^-9 minor units, signed


class RollupRow(msgspec.Struct, frozen=True):
    customer_id: int
    grain: str  # hour | day
    bucket_start_ns: int
    resource_id: int
    wallet_id: int
    credit_type_id: int
    dimension_set_id: int  # 0: none
    currency: str
    credits: int
    value_nano: int
    entries: int


class BlockTerms(msgspec.Struct, frozen=True):
    """What a block's entries are worth: its currency and consideration for its credits."""

    currency: str  # '' : none
    consideration_minor: int
    amount: int


async def claim_watermark(conn: Connection, from_ts: int, to_ts: int) -> None:
    """Moves the watermark from `from_ts` to `to_ts` in the caller's transaction, or raises
    LostLeadership when it is not at `from_ts` (another feed wrote)."""
    assert to_ts >= from_ts
    cursor = await conn.execute(
        "UPDATE projection_state SET watermark_ts = %s, updated_at = now()"
        " WHERE name = 'ledger' AND watermark_ts = %s",
        (to_ts, from_ts),
    )
    if cursor.rowcount != 1:
        raise LostLeadership("the projection's watermark moved under this feed")


async def count_entries(conn: Connection, entries: int) -> None:
    await conn.execute(
        "UPDATE projection_state SET entries = entries + %s WHERE name = 'ledger'", (entries,)
    )


async def open_pending(conn: Connection, legs: Sequence[PendingLeg]) -> None:
    if not legs:
        return
    await copy_text(conn, "projection_pending", _PENDING_COLUMNS, _pending_text(legs))


async def resolve_pending(conn: Connection, ids: Collection[int]) -> None:
    if ids:
        await conn.execute(
            "DELETE FROM projection_pending WHERE transfer_id = ANY(%s)", (uuids(ids),)
        )


async def expire_pending(conn: Connection, watermark_ts: int) -> list[PendingLeg]:
    """Removes and returns the open legs whose expiry the watermark reached: they timed out."""
    cursor = await conn.execute(
        f"DELETE FROM projection_pending WHERE expires_at_ns <= %s RETURNING {_PENDING_COLUMNS}",
        (watermark_ts,),
    )
    return sorted(
        (_pending_leg(row) for row in await cursor.fetchall()),
        key=lambda leg: (leg.expires_at_ns, leg.transfer_id),
    )


async def wallet_owners(conn: Connection, ids: Collection[int]) -> dict[int, tuple[int, int]]:
    """wallet -> (resource, customer), for the wallets the catalog knows."""
    if not ids:
        return {}
    cursor = await conn.execute(
        "SELECT w.id, w.resource_id, r.customer_id FROM wallets w"
        " JOIN resources r ON r.id = w.resource_id WHERE w.id = ANY(%s)",
        (uuids(ids),),
    )
    return {from_uuid(r[0]): (from_uuid(r[1]), from_uuid(r[2])) for r in await cursor.fetchall()}


async def budget_owners(conn: Connection, ids: Collection[int]) -> dict[int, tuple[int, int]]:
    """budget -> (resource, customer), for the budgets the catalog knows."""
    if not ids:
        return {}
    cursor = await conn.execute(
        "SELECT b.id, b.resource_id, r.customer_id FROM budgets b"
        " JOIN resources r ON r.id = b.resource_id WHERE b.id = ANY(%s)",
        (uuids(ids),),
    )
    return {from_uuid(r[0]): (from_uuid(r[1]), from_uuid(r[2])) for r in await cursor.fetchall()}


async def block_terms(conn: Connection, ids: Collection[int]) -> dict[int, BlockTerms]:
    """grant -> its terms, for the grants the catalog knows."""
    if not ids:
        return {}
    cursor = await conn.execute(
        "SELECT id, currency, consideration_minor, amount FROM grants WHERE id = ANY(%s)",
        (uuids(ids),),
    )
    return {
        from_uuid(r[0]): BlockTerms(r[1] or "", int(r[2]), from_amount(r[3]))
        for r in await cursor.fetchall()
    }


async def insert_entries(conn: Connection, rows: Sequence[EntryRow]) -> None:
    """COPYs new entries (none of them may be there: the caller holds the watermark)."""
    if not rows:
        return
    await _ensure_partitions(conn, {_month(row.entry.effective_at_ns) for row in rows})
    await copy_text(conn, "ledger_entries", _ENTRY_COLUMNS, _entries_text(rows))


async def add_rollups(conn: Connection, rows: Sequence[RollupRow]) -> None:
    """Adds consumption to the rollups (one row per key at most in `rows`)."""
    if not rows:
        return
    await conn.execute(
        """
        INSERT INTO usage_rollups AS u (
            customer_id, grain, bucket_start, resource_id, wallet_id, credit_type_id,
            dimension_set_id, currency, credits, value_minor, entries)
        SELECT c, g, timestamptz 'epoch' + b * interval '1 microsecond', r, w, t, d, cu, cr,
               v / 1000000000.0, n
        FROM unnest(%s::uuid[], %s::text[], %s::bigint[], %s::uuid[], %s::uuid[], %s::bigint[],
                    %s::uuid[], %s::text[], %s::numeric[], %s::numeric[], %s::bigint[])
             AS x (c, g, b, r, w, t, d, cu, cr, v, n)
        ON CONFLICT (customer_id, grain, bucket_start, resource_id, wallet_id, credit_type_id,
                     dimension_set_id, currency)
        DO UPDATE SET credits = u.credits + excluded.credits,
                      value_minor = u.value_minor + excluded.value_minor,
                      entries = u.entries + excluded.entries
        """,
        (
            [_uuid_text(r.customer_id) for r in rows],
            [r.grain for r in rows],
            [r.bucket_start_ns // 1000 for r in rows],
            [_uuid_text(r.resource_id) for r in rows],
            [_uuid_text(r.wallet_id) for r in rows],
            [r.credit_type_id for r in rows],
            [_uuid_text(r.dimension_set_id) if r.dimension_set_id else ZERO_UUID for r in rows],
            [r.currency for r in rows],
            [r.credits for r in rows],
            [r.value_nano for r in rows],
            [r.entries for r in rows],
        ),
    )


_ENTRY_COLUMNS: Final = (
    "transfer_id, kind, effective_at, engine_ts, code, credit_type_id, account_id, account_kind,"
    " wallet_id, resource_id, customer_id, operation_id, reservation_id, amount, pending,"
    " dimension_set_id, currency, value_minor"
)

# The months that have a partition of ledger_entries, per database (loaded once per process).
_MONTHS: dict[str, set[str]] = {}
_NS_PER_S: Final = 1_000_000_000


@functools.lru_cache(maxsize=4096)
def _day_month(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m")


def _month(at_ns: int) -> str:
    return _day_month(at_ns // (86_400 * _NS_PER_S))


async def _ensure_partitions(conn: Connection, months: set[str]) -> None:
    """Creates the month partitions `months` ('YYYY-MM', UTC) that do not exist yet."""
    database = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    known = _MONTHS.get(database)
    if known is None or not months <= known:
        cursor = await conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'ledger_entries'::regclass"
        )
        known = _MONTHS[database] = {row[0] for row in await cursor.fetchall()}
    for month in sorted(months):
        name = partition_name(month)
        if name in known:
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
        known.add(name)


def partition_name(month: str) -> str:
    """The partition of ledger_entries that holds the month 'YYYY-MM' (UTC)."""
    year, number = month.split("-")
    return f"ledger_entries_y{year}m{number}"


def forget_partitions() -> None:
    """Forgets the partitions this process knows of (after a test drops its database)."""
    _MONTHS.clear()


def _uuid_text(value: int) -> str:
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _decimal_nano(value: int) -> str:
    """10^-9 units as a decimal with 9 places."""
    sign = "-" if value < 0 else ""
    whole, fraction = divmod(abs(value), _NS_PER_S)
    return f"{sign}{whole}.{fraction:09d}"


def _entries_text(rows: Sequence[EntryRow]) -> bytes:
    """The rows in COPY's text format (`_copy`)."""
    lines = []
    for row in rows:
        e = row.entry
        lines.append(
            f"{e.transfer_id:032x}\t{e.kind}\t{timestamp_us(e.effective_at_ns)}\t{e.engine_ts}\t"
            f"{e.code}\t{e.credit_type_id}\t{e.account_id:032x}\t{e.account_kind}\t"
            f"{uuid_hex_or_null(e.wallet_id)}\t{uuid_hex_or_null(row.resource_id)}\t"
            f"{uuid_hex_or_null(row.customer_id)}\t{uuid_hex_or_null(e.operation_id)}\t"
            f"{uuid_hex_or_null(e.reservation_id)}\t{e.amount}\t{e.pending}\t"
            f"{uuid_hex_or_null(e.dimension_set_id)}\t{row.currency or NULL}\t"
            f"{_decimal_nano(row.value_nano)}\n"
        )
    return "".join(lines).encode()


def _pending_leg(row: tuple[Any, ...]) -> PendingLeg:
    return PendingLeg(
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


def _pending_text(legs: Sequence[PendingLeg]) -> bytes:
    lines = []
    for leg in legs:
        lines.append(
            f"{leg.transfer_id:032x}\t{leg.expires_at_ns}\t{leg.amount}\t{leg.code}\t"
            f"{leg.credit_type_id}\t{leg.account_id:032x}\t{leg.account_kind}\t"
            f"{leg.owner_id:032x}\t{uuid_hex_or_null(leg.wallet_id)}\t"
            f"{uuid_hex_or_null(leg.reservation_id)}\t{uuid_hex_or_null(leg.dimension_set_id)}\n"
        )
    return "".join(lines).encode()


# -- rebuild and comparison ------------------------------------------------------------------


async def reset(conn: Connection) -> None:
    """Empties the projection (entries, rollups, open legs) and its watermark, for a rebuild.
    The dimension sets stay: they are not derived from the engine."""
    async with conn.transaction():
        await conn.execute("TRUNCATE ledger_entries, usage_rollups, projection_pending")
        await conn.execute(
            "UPDATE projection_state SET watermark_ts = 0, entries = 0, caught_up_ns = 0,"
            " updated_at = now()"
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
