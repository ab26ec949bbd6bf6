"""Rows in COPY's text format, written here rather than by psycopg's adapters: the
projection's entries and pending legs, finance's journals, lines and memo. A batch is
thousands of rows, and an adapter a value costs more than the text. Postgres stores what the
adapters' text gave it: a uuid from its 32 hex digits (0, no id, is NULL where the column takes
one), a timestamptz in UTC to the µs, NULL as `\\N`, free text escaped (`escaped`)."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Final

from ledger.db import Connection

NULL: Final = "\\N"  # COPY's NULL
_ESCAPES: Final = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_EPOCH: Final = dt.datetime(1970, 1, 1)  # naive: its isoformat() has no offset


async def copy_text(conn: Connection, table: str, columns: str, text: bytes) -> None:
    """`text` (rows in COPY's text format) into `table` (`columns`)."""
    statement = f"COPY {table} ({columns}) FROM STDIN"
    async with conn.cursor() as cursor, cursor.copy(statement) as copy:
        await copy.write(text)


def uuid_hex(value: int) -> str:
    """A u128 id as the 32 hex digits Postgres reads as a uuid (OverflowError: not a u128)."""
    return value.to_bytes(16, "big").hex()


def uuid_hex_or_null(value: int) -> str:
    """An id for a column that takes NULL: 0 (no id) is NULL."""
    return NULL if value == 0 else value.to_bytes(16, "big").hex()


def escaped(value: str) -> str:
    """Text escaped for COPY's text format (its delimiter, line ends and backslash)."""
    return value.translate(_ESCAPES)


def timestamp_us(at_ns: int) -> str:
    """A timestamptz in UTC, to the µs (what Postgres keeps; the ns below it are dropped, as
    `ledger.clock.datetime_of_ns` drops them), ns since the epoch."""
    seconds, micros = divmod(at_ns // 1000, 1_000_000)
    return f"{_second(seconds)}.{micros:06d}+00"


@functools.lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    return (_EPOCH + dt.timedelta(seconds=seconds)).isoformat(" ")
