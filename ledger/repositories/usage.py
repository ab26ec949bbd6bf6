"""Cost attribution read from the usage rollups (migration 0008), never from the entries.

The projection feed adds every consumption entry to two rollups as it writes it (grain 'hour'
and 'day'; ledger/repositories/projection.py, `_INSERT`): credits consumed and their value at
the blocks' cost basis per (customer, bucket, resource, wallet, credit type, dimension set,
currency). `usage_page` adds those rows up into time buckets (hour, day, week from Monday,
month; UTC) and groups, reading `usage_rollups` within the customer's part of its primary key
(a resource or wallet filter names the customer too), `dimension_sets` for the values grouped
or filtered on, and `resources` for a subtree.

Rows come in (bucket, group, currency) order, where a group is ordered by the md5 of its
values (a uuid, compared as its bytes): a page ends with a position that the next one starts
after, compact enough for a cursor whatever the values, and stable while the projection adds
groups.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import msgspec

from ledger.db import Connection, repeatable_read
from ledger.repositories import projection
from ledger.repositories._rows import (
    ROWS_PER_PAGE_DEFAULT,
    from_amount,
    from_uuid_or_none,
    page_limit,
    to_uuid,
)
from ledger.repositories.resources import RESOURCE_DEPTH_MAX

GRAINS: Final = ("hour", "day")
BUCKETS: Final = ("hour", "day", "week", "month")


class UsageSelection(msgspec.Struct, frozen=True, kw_only=True):
    """What to add up. A filter left None is not applied; `resource_id` is the resource's
    whole subtree (its children, theirs, ...); `dimension_filters` keep the rows whose
    dimension NAME is any of its values, for every name given."""

    grain: str  # the rollups read: 'hour' or 'day'
    bucket: str  # 'hour', 'day', 'week' or 'month' (UTC; a week starts on Monday)
    from_at: datetime  # on the grain's edge, like to_at; the range is [from_at, to_at)
    to_at: datetime
    by_customer: bool = False
    by_resource: bool = False
    by_wallet: bool = False
    dimension_names: tuple[str, ...] = ()  # dimensions grouped by, in this order
    customer_id: int | None = None
    resource_id: int | None = None
    wallet_id: int | None = None
    credit_type_id: int | None = None
    dimension_filters: tuple[tuple[str, tuple[str, ...]], ...] = ()
    after: tuple[datetime, int, str] | None = None  # (bucket_start, group, currency)
    limit: int = ROWS_PER_PAGE_DEFAULT

    def __post_init__(self) -> None:
        assert self.grain in GRAINS and self.bucket in BUCKETS, (self.grain, self.bucket)
        assert self.grain == "hour" or self.bucket != "hour"
        assert self.from_at < self.to_at
        assert all(values for _, values in self.dimension_filters)


class UsageRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One bucket x group x credit type x currency. A field not grouped by is None."""

    bucket_start: datetime
    customer_id: int | None
    resource_id: int | None
    wallet_id: int | None
    credit_type_id: int
    dimensions: tuple[str | None, ...]  # the value of each dimension grouped by (None: absent)
    currency: str  # '' where there is no cost basis (promotional blocks, overdraft)
    credits: int  # consumed, in the credit type's units (negative: refunds exceeded it)
    value_minor: Decimal  # their value at the blocks' cost basis, in minor units of currency
    entries: int  # entries added up
    group: int  # the group's place in the order (md5 of its values, as a u128)


class UsageRead(msgspec.Struct, frozen=True, kw_only=True):
    """A page, and where the projection stood when it was read (the same snapshot): the
    rollups include every transfer up to `state.watermark_ts` and nothing after."""

    records: list[UsageRecord]
    more: bool
    state: projection.State


async def usage_page(conn: Connection, selection: UsageSelection) -> UsageRead:
    """A page of usage and the projection's watermark, read in one snapshot. `conn` must have
    no transaction open."""
    sql, params = _statement(selection)
    async with repeatable_read(conn):
        state = await projection.read_state(conn)
        cursor = await conn.execute(sql, params)
        rows = await cursor.fetchall()
    n = len(selection.dimension_names)
    records = [_record(row, selection, n) for row in rows[: selection.limit]]
    return UsageRead(records=records, more=len(rows) > selection.limit, state=state)


# -- the statement -----------------------------------------------------------------------------


def _statement(s: UsageSelection) -> tuple[str, list[Any]]:
    """The SQL of a page and its parameters: the rollups of the range added up per bucket and
    group (inner), each group's place (middle), the page after the cursor (outer)."""
    keys, key_params = _keys(s)
    where, where_params = _conditions(s)
    joined = bool(s.dimension_names or s.dimension_filters)
    join = " LEFT JOIN dimension_sets d ON d.id = u.dimension_set_id" if joined else ""
    named = ", ".join(f"{expr} AS k{i}" for i, expr in enumerate(keys))
    positions = ", ".join(str(i) for i in range(1, len(keys) + 3))
    inner = (
        f"SELECT date_trunc(%s, u.bucket_start, 'UTC') AS bucket_start, {named}, u.currency,"
        " sum(u.credits) AS credits, sum(u.value_minor) AS value_minor,"
        " sum(u.entries) AS entries"
        f" FROM usage_rollups u{join} WHERE {' AND '.join(where)} GROUP BY {positions}"
    )
    row = ", ".join(f"g.k{i}" for i in range(len(keys)))
    middle = f"SELECT g.*, md5(ROW({row})::text)::uuid AS grp FROM ({inner}) g"
    params: list[Any] = [s.bucket, *key_params, *where_params]
    after = ""
    if s.after is not None:
        after = ' WHERE (p.bucket_start, p.grp, p.currency COLLATE "C") > (%s, %s, %s)'
        at, group, currency = s.after
        params += [at, to_uuid(group), currency]
    params.append(page_limit(s.limit) + 1)
    sql = (
        f"SELECT * FROM ({middle}) p{after}"
        ' ORDER BY p.bucket_start, p.grp, p.currency COLLATE "C" LIMIT %s'
    )
    return sql, params


def _keys(s: UsageSelection) -> tuple[list[str], list[Any]]:
    """The group's expressions (the credit type always: credits of two types do not add)."""
    keys = [
        column
        for column, wanted in (
            ("u.customer_id", s.by_customer),
            ("u.resource_id", s.by_resource),
            ("u.wallet_id", s.by_wallet),
        )
        if wanted
    ]
    keys.append("u.credit_type_id")
    keys += ["d.dimensions ->> %s"] * len(s.dimension_names)
    return keys, list(s.dimension_names)


_SUBTREE: Final = (
    "u.resource_id IN (WITH RECURSIVE tree (id, depth) AS ("
    " SELECT id, 1 FROM resources WHERE id = %s"
    " UNION ALL SELECT r.id, tree.depth + 1 FROM resources r JOIN tree ON r.parent_id = tree.id"
    " WHERE tree.depth < %s) SELECT id FROM tree)"
)
_CUSTOMER_OF_RESOURCE: Final = "u.customer_id = (SELECT customer_id FROM resources WHERE id = %s)"
_CUSTOMER_OF_WALLET: Final = (
    "u.customer_id = (SELECT r.customer_id FROM wallets w JOIN resources r"
    " ON r.id = w.resource_id WHERE w.id = %s)"
)


def _conditions(s: UsageSelection) -> tuple[list[str], list[Any]]:
    """The WHERE clauses. A resource or a wallet names its customer too, so that every read
    with a filter on who spent stays within that customer's part of the primary key."""
    where = ["u.grain = %s", "u.bucket_start >= %s", "u.bucket_start < %s"]
    params: list[Any] = [s.grain, s.from_at, s.to_at]
    if s.customer_id is not None:
        where.append("u.customer_id = %s")
        params.append(to_uuid(s.customer_id))
    if s.resource_id is not None:
        resource = to_uuid(s.resource_id)
        where += [_CUSTOMER_OF_RESOURCE, _SUBTREE]
        params += [resource, resource, RESOURCE_DEPTH_MAX]
    if s.wallet_id is not None:
        wallet = to_uuid(s.wallet_id)
        where += [_CUSTOMER_OF_WALLET, "u.wallet_id = %s"]
        params += [wallet, wallet]
    if s.credit_type_id is not None:
        where.append("u.credit_type_id = %s")
        params.append(s.credit_type_id)
    for name, values in s.dimension_filters:
        where.append("d.dimensions ->> %s = ANY(%s)")
        params += [name, list(values)]
    return where, params


def _record(row: tuple[Any, ...], s: UsageSelection, dimensions: int) -> UsageRecord:
    """A row: bucket_start, the keys (k0..), currency, credits, value_minor, entries, grp."""
    keys = list(row[1:-5])
    customer = from_uuid_or_none(keys.pop(0)) if s.by_customer else None
    resource = from_uuid_or_none(keys.pop(0)) if s.by_resource else None
    wallet = from_uuid_or_none(keys.pop(0)) if s.by_wallet else None
    credit_type_id = int(keys.pop(0))
    assert len(keys) == dimensions
    currency, credits, value_minor, entries, group = row[-5:]
    return UsageRecord(
        bucket_start=row[0],
        customer_id=customer,
        resource_id=resource,
        wallet_id=wallet,
        credit_type_id=credit_type_id,
        dimensions=tuple(keys),
        currency=currency,
        credits=from_amount(credits),
        value_minor=value_minor,
        entries=int(entries),
        group=group.int,
    )
