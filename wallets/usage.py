"""Cost attribution: credits consumed and their value, by time bucket and any grouping, as
`GET /v1/usage` and `credit-ledger usage` answer it. Everything here but `read_usage` is pure:
the parsing and checking of a query, the bucket arithmetic, the cursor's position, the CSV.

Invariants:
- Consumption is what the projection rolls up as it writes entries (ledger/repositories/
  projection.py): entries of kind debit, settle and overdraft_draw, less refunds, on block and
  overdraft accounts; budget entries never (a budget only limits: the same credits left a block
  too). Each counts at its business time: a reservation when it is settled, a refund when it
  is made. It is read from the rollups (`usage_rollups`), never from the entries, and is as
  complete as the projection: an answer says up to which engine timestamp.
- Buckets are calendar buckets in UTC: an hour, a day, a week (from Monday 00:00), a month
  (from the 1st, 00:00), each named by its start. `from` and `to` fall on whole UTC hours, the
  rollups' finest grain, and the range is [from, to): the first and last buckets cover only
  the part of them inside it. With day, week or month buckets and a range on whole UTC days the
  day rollups are read; otherwise the hour rollups.
- A row is one bucket x group x credit type x currency: credits of two credit types are
  different units, values in two currencies do not add; neither is ever summed. There is a row
  only where something was consumed (no rows of zeros).
- A group is the values of the fields grouped by: resource, wallet, customer, credit_type and
  any dimension (a dimension a spend did not carry groups as null). A dimension that has a
  builtin's name is named `dimension:NAME`.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import io
import re
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Final, NamedTuple

import msgspec

from grants.errors import InvalidRequest
from ledger.clock import ns_of_datetime
from ledger.db import Pool
from ledger.ids import id_text
from ledger.limits import (
    BUSINESS_TIME_NS_MAX,
    DIMENSION_NAME_CHARS_MAX,
    DIMENSION_VALUE_CHARS_MAX,
    LIST_PAGE_ROWS_DEFAULT,
    LIST_PAGE_ROWS_MAX,
    USAGE_BUCKETS_MAX,
    USAGE_DIMENSION_FILTERS_MAX,
    USAGE_GROUP_BY_CHARS_MAX,
    USAGE_GROUP_BY_FIELDS_MAX,
    USAGE_HOUR_GRAIN_DAYS_MAX,
    USAGE_RANGE_DAYS_MAX,
)
from ledger.repositories import projection
from ledger.repositories.usage import UsageRecord, UsageSelection, usage_page
from wallets.projection import lag_of


class Bucket(enum.StrEnum):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


BUILTINS: Final = ("resource", "wallet", "customer", "credit_type")
DIMENSION_PREFIX: Final = "dimension:"
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MONDAY: Final = dt.datetime(1969, 12, 29, tzinfo=dt.UTC)  # the week of the epoch starts here
_HOUR: Final = dt.timedelta(hours=1)
_DAY: Final = dt.timedelta(days=1)
_WEEK: Final = dt.timedelta(weeks=1)
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


class GroupField(NamedTuple):
    """A field grouped by: a builtin (`kind` is its name) or a dimension (`kind` is
    'dimension', `name` the dimension's)."""

    kind: str
    name: str


class Position(NamedTuple):
    """Where a row stands in the order of the answer; a page goes on after its last row's."""

    bucket_start: dt.datetime
    group: int
    currency: str


class UsageQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A checked query: the range in UTC on whole hours, at most USAGE_BUCKETS_MAX buckets."""

    from_at: dt.datetime
    to_at: dt.datetime
    bucket: Bucket
    group_by: tuple[GroupField, ...] = ()
    customer_id: int | None = None
    resource_id: int | None = None  # the resource's whole subtree
    wallet_id: int | None = None
    credit_type_id: int | None = None
    dimensions: tuple[tuple[str, tuple[str, ...]], ...] = ()  # name: any of these values
    after: Position | None = None
    limit: int = LIST_PAGE_ROWS_DEFAULT


class UsagePage(msgspec.Struct, frozen=True, kw_only=True):
    rows: list[UsageRecord]
    next_position: Position | None  # None: the last page
    # The projection's state, read with the rows: they include every transfer up to its
    # watermark (the engine timestamp of the last transfer projected; 0: none) and no more.
    state: projection.State

    @property
    def watermark_ts(self) -> int:
        return self.state.watermark_ts

    def lag_s(self, now_ns: int) -> float | None:
        """How far behind the engine the answer may be at `now_ns` (None: nothing projected
        yet), as `wallets.projection.lag_of` tells it from the state."""
        return lag_of(self.state, now_ns)


# -- the query ---------------------------------------------------------------------------------


def usage_query(
    *,
    from_at: dt.datetime,
    to_at: dt.datetime,
    bucket: str,
    group_by: str | None = None,
    dimension: Sequence[str] = (),
    customer_id: int | None = None,
    resource_id: int | None = None,
    wallet_id: int | None = None,
    credit_type_id: int | None = None,
    after: Position | None = None,
    limit: int = LIST_PAGE_ROWS_DEFAULT,
) -> UsageQuery:
    """The query, checked; InvalidRequest (422) naming the field that is wrong."""
    kind = _bucket(bucket)
    start, end = usage_range(from_at, to_at, kind)
    if not 1 <= limit <= LIST_PAGE_ROWS_MAX:
        raise InvalidRequest(f"limit must be in 1..{LIST_PAGE_ROWS_MAX}", field="limit")
    return UsageQuery(
        from_at=start,
        to_at=end,
        bucket=kind,
        group_by=parse_group_by(group_by),
        customer_id=customer_id,
        resource_id=resource_id,
        wallet_id=wallet_id,
        credit_type_id=credit_type_id,
        dimensions=parse_dimension_filters(dimension),
        after=after,
        limit=limit,
    )


def _bucket(text: str) -> Bucket:
    try:
        return Bucket(text)
    except ValueError:
        names = ", ".join(b.value for b in Bucket)
        raise InvalidRequest(f"bucket must be one of {names}", field="bucket") from None


def parse_group_by(text: str | None) -> tuple[GroupField, ...]:
    """`resource,feature,model` as its fields: a builtin by its name (resource, wallet,
    customer, credit_type), any other name a dimension, `dimension:NAME` the dimension NAME
    (whatever NAME is). Names are exact: nothing is trimmed."""
    if text is None:
        return ()
    if len(text) > USAGE_GROUP_BY_CHARS_MAX:
        raise InvalidRequest(
            f"group_by is over {USAGE_GROUP_BY_CHARS_MAX} characters", field="group_by"
        )
    items = text.split(",")
    if len(items) > USAGE_GROUP_BY_FIELDS_MAX:
        raise InvalidRequest(
            f"group_by names at most {USAGE_GROUP_BY_FIELDS_MAX} fields", field="group_by"
        )
    fields = tuple(_group_field(item) for item in items)
    if len(set(fields)) != len(fields):
        raise InvalidRequest("group_by names a field twice", field="group_by")
    return fields


def _group_field(item: str) -> GroupField:
    if item.startswith(DIMENSION_PREFIX):
        return GroupField("dimension", _dimension_name(item[len(DIMENSION_PREFIX) :], "group_by"))
    if item in BUILTINS:
        return GroupField(item, item)
    return GroupField("dimension", _dimension_name(item, "group_by"))


def _dimension_name(name: str, field: str) -> str:
    if not 0 < len(name) <= DIMENSION_NAME_CHARS_MAX or _CONTROL.search(name):
        raise InvalidRequest(
            f"{name!r} is not a dimension name (1 to {DIMENSION_NAME_CHARS_MAX} characters,"
            " no control characters)",
            field=field,
        )
    return name


def parse_dimension_filters(items: Sequence[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`feature:chat` filters (split at the first colon) as (name, values): a name given more
    than once keeps any of its values; several names keep what matches each of them."""
    if len(items) > USAGE_DIMENSION_FILTERS_MAX:
        raise InvalidRequest(
            f"at most {USAGE_DIMENSION_FILTERS_MAX} dimension filters", field="dimension"
        )
    by_name: dict[str, list[str]] = {}
    for item in items:
        name, colon, value = item.partition(":")
        if not colon:
            raise InvalidRequest(f"{item!r} is not NAME:VALUE", field="dimension")
        name = _dimension_name(name, "dimension")
        if len(value) > DIMENSION_VALUE_CHARS_MAX or _CONTROL.search(value):
            raise InvalidRequest(
                f"the value of dimension {name!r} is not one a spend can carry (at most "
                f"{DIMENSION_VALUE_CHARS_MAX} characters, no control characters)",
                field="dimension",
            )
        values = by_name.setdefault(name, [])
        if value not in values:
            values.append(value)
    return tuple((name, tuple(values)) for name, values in by_name.items())


# -- time --------------------------------------------------------------------------------------


def usage_range(
    from_at: dt.datetime, to_at: dt.datetime, bucket: Bucket
) -> tuple[dt.datetime, dt.datetime]:
    """[from, to) in UTC, checked: aware, on whole hours, in order, bounded."""
    start, end = _instant(from_at, "from"), _instant(to_at, "to")
    if end <= start:
        raise InvalidRequest("to must be after from", field="to")
    if end - start > dt.timedelta(days=USAGE_RANGE_DAYS_MAX):
        raise InvalidRequest(f"from..to spans more than {USAGE_RANGE_DAYS_MAX} days", field="to")
    count = bucket_count(start, end, bucket)
    if count > USAGE_BUCKETS_MAX:
        raise InvalidRequest(
            f"from..to holds {count} {bucket.value} buckets, more than {USAGE_BUCKETS_MAX}:"
            " shorten the range or choose a longer bucket",
            field="bucket",
        )
    if grain_of(start, end, bucket) == "hour" and end - start > USAGE_HOUR_GRAIN_DAYS_MAX * _DAY:
        raise InvalidRequest(
            f"a range not on whole UTC days is read by the hour, for at most "
            f"{USAGE_HOUR_GRAIN_DAYS_MAX} days: put from and to at 00:00 UTC, or shorten it",
            field="to",
        )
    return start, end


def _instant(at: dt.datetime, field: str) -> dt.datetime:
    """An aware time as UTC, on a whole hour, within the times the ledger records."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidRequest(f"{field} needs its UTC offset (2027-01-01T00:00:00Z)", field=field)
    try:
        utc = at.astimezone(dt.UTC)
        ns = ns_of_datetime(utc)
    except OverflowError:
        ns = -1
    if not 0 <= ns <= BUSINESS_TIME_NS_MAX:
        raise InvalidRequest(
            f"{field} must be between 1970-01-01T00:00:00Z and 2554-07-21T23:00:00Z", field=field
        )
    if (utc.minute, utc.second, utc.microsecond) != (0, 0, 0):
        raise InvalidRequest(
            f"{field} must fall on a whole UTC hour (the finest grain usage is kept at)",
            field=field,
        )
    return utc


def grain_of(from_at: dt.datetime, to_at: dt.datetime, bucket: Bucket) -> str:
    """The rollups a range is read from: the day's when buckets are days or longer and the
    range is on whole UTC days, else the hour's."""
    on_days = _midnight(from_at) and _midnight(to_at)
    return "day" if bucket is not Bucket.HOUR and on_days else "hour"


def _midnight(at: dt.datetime) -> bool:
    return (at.hour, at.minute, at.second, at.microsecond) == (0, 0, 0, 0)


def bucket_index(at: dt.datetime, bucket: Bucket) -> int:
    """The number of the bucket holding `at` (UTC), counted from the epoch's."""
    if bucket is Bucket.HOUR:
        return (at - _EPOCH) // _HOUR
    if bucket is Bucket.DAY:
        return (at - _EPOCH) // _DAY
    if bucket is Bucket.WEEK:
        return (at - _MONDAY) // _WEEK
    return at.year * 12 + at.month - 1


def bucket_start(index: int, bucket: Bucket) -> dt.datetime:
    """The start of bucket number `index`."""
    if bucket is Bucket.HOUR:
        return _EPOCH + index * _HOUR
    if bucket is Bucket.DAY:
        return _EPOCH + index * _DAY
    if bucket is Bucket.WEEK:
        return _MONDAY + index * _WEEK
    year, month = divmod(index, 12)
    return dt.datetime(year, month + 1, 1, tzinfo=dt.UTC)


def bucket_floor(at: dt.datetime, bucket: Bucket) -> dt.datetime:
    """The start of the bucket holding `at`."""
    return bucket_start(bucket_index(at, bucket), bucket)


def bucket_count(from_at: dt.datetime, to_at: dt.datetime, bucket: Bucket) -> int:
    """How many buckets [from, to) touches."""
    assert from_at < to_at
    last = to_at - dt.timedelta(microseconds=1)
    return bucket_index(last, bucket) - bucket_index(from_at, bucket) + 1


def bucket_starts(from_at: dt.datetime, to_at: dt.datetime, bucket: Bucket) -> list[dt.datetime]:
    """The start of every bucket [from, to) touches, the first one's before `from` when the
    range starts inside it."""
    first = bucket_index(from_at, bucket)
    return [bucket_start(first + i, bucket) for i in range(bucket_count(from_at, to_at, bucket))]


# -- reading ------------------------------------------------------------------------------------


def selection_of(query: UsageQuery) -> UsageSelection:
    """The repository's selection of a checked query."""
    kinds = {f.kind for f in query.group_by}
    after = query.after
    return UsageSelection(
        grain=grain_of(query.from_at, query.to_at, query.bucket),
        bucket=query.bucket.value,
        from_at=query.from_at,
        to_at=query.to_at,
        by_customer="customer" in kinds,
        by_resource="resource" in kinds,
        by_wallet="wallet" in kinds,
        dimension_names=dimension_names(query.group_by),
        customer_id=query.customer_id,
        resource_id=query.resource_id,
        wallet_id=query.wallet_id,
        credit_type_id=query.credit_type_id,
        dimension_filters=query.dimensions,
        after=None if after is None else (after.bucket_start, after.group, after.currency),
        limit=query.limit,
    )


def dimension_names(group_by: Iterable[GroupField]) -> tuple[str, ...]:
    return tuple(f.name for f in group_by if f.kind == "dimension")


async def read_usage(pool: Pool, query: UsageQuery) -> UsagePage:
    """A page of usage, and the projection's watermark in the same snapshot."""
    async with pool.connection() as conn:
        read = await usage_page(conn, selection_of(query))
    last = read.records[-1] if read.records else None
    position = None
    if read.more and last is not None:
        position = Position(last.bucket_start, last.group, last.currency)
    return UsagePage(rows=read.records, next_position=position, state=read.state)


async def read_nothing(pool: Pool) -> UsagePage:
    """The answer of a query that can find nothing (a customer the caller may not see): no
    rows, and where the projection stands, as for a customer that does not exist."""
    async with pool.connection() as conn:
        state = await projection.read_state(conn)
    return UsagePage(rows=[], next_position=None, state=state)


# -- the cursor's position ----------------------------------------------------------------------

_CURRENCY: Final = re.compile(r"[A-Z]{3}")
CURRENCY_NUMBER_MAX: Final = (1 << 24) - 1


def position_numbers(position: Position) -> tuple[int, int, int]:
    """A position as three numbers (bucket start in microseconds, group, currency)."""
    micros = ns_of_datetime(position.bucket_start) // 1000
    currency = int.from_bytes(position.currency.encode("ascii"), "big")
    assert currency <= CURRENCY_NUMBER_MAX, position.currency
    return micros, position.group, currency


def position_of(numbers: Sequence[int]) -> Position:
    """The position of `position_numbers`; InvalidRequest (cursor) when it names no currency."""
    micros, group, number = numbers
    currency = number.to_bytes(3, "big").lstrip(b"\0").decode("latin-1")
    if currency and not _CURRENCY.fullmatch(currency):
        raise InvalidRequest("cursor is not one this list gave", field="cursor")
    at = _EPOCH + dt.timedelta(microseconds=micros)
    return Position(at, group, currency)


# -- text -------------------------------------------------------------------------------------


def decimal_text(value: Decimal) -> str:
    """A value in minor units as plain decimal text: no exponent, no trailing zeros."""
    if value == 0:
        return "0"
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def time_text(at: dt.datetime) -> str:
    """A bucket's start as RFC 3339 UTC text (`2026-03-02T00:00:00Z`)."""
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_FIXED_COLUMNS: Final = frozenset(
    {"bucket_start", "customer_id", "resource_id", "wallet_id", "credit_type", "currency"}
    | {"credits", "value_minor", "entries"}
)


def column_name(field: GroupField) -> str:
    """A field's column: a builtin's (customer_id, resource_id, wallet_id, credit_type), else
    the dimension's name, or `dimension:NAME` where that would be taken or misread."""
    if field.kind != "dimension":
        return field.kind if field.kind == "credit_type" else f"{field.kind}_id"
    if field.name in _FIXED_COLUMNS or field.name.startswith(DIMENSION_PREFIX):
        return DIMENSION_PREFIX + field.name
    return field.name


def csv_columns(group_by: Sequence[GroupField]) -> list[str]:
    """bucket_start, the fields grouped by in their order (credit_type after them unless
    named), currency, credits, value_minor, entries."""
    columns = ["bucket_start", *(column_name(f) for f in group_by)]
    if "credit_type" not in columns:
        columns.append("credit_type")
    return [*columns, "currency", "credits", "value_minor", "entries"]


def csv_row(
    row: UsageRecord, group_by: Sequence[GroupField], code_of: Callable[[int], str]
) -> list[str]:
    """A row's cells, in the order of `csv_columns(group_by)`; null is the empty cell."""
    dimensions = iter(row.dimensions)
    builtins = {
        "customer": row.customer_id,
        "resource": row.resource_id,
        "wallet": row.wallet_id,
    }
    cells = [time_text(row.bucket_start)]
    for field in group_by:
        if field.kind == "dimension":
            cells.append(next(dimensions) or "")
        elif field.kind == "credit_type":
            cells.append(code_of(row.credit_type_id))
        else:
            value = builtins[field.kind]
            cells.append("" if value is None else id_text(value))
    if all(f.kind != "credit_type" for f in group_by):
        cells.append(code_of(row.credit_type_id))
    counts = [str(row.credits), decimal_text(row.value_minor), str(row.entries)]
    return [*cells, row.currency, *counts]


def csv_text(
    rows: Iterable[UsageRecord],
    group_by: Sequence[GroupField],
    code_of: Callable[[int], str],
    *,
    header: bool = True,
) -> str:
    """Rows as CSV (RFC 4180: CRLF line ends, quoted where needed), a header row first."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(csv_columns(group_by))
    writer.writerows(csv_row(row, group_by, code_of) for row in rows)
    return out.getvalue()
