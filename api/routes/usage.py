"""Cost attribution: `GET /v1/usage`, read from the usage rollups of the projection
(wallets/usage.py holds the rules; this module decodes, applies the key's boundary, and shapes
the answer as JSON or CSV)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, cast

import msgspec
from credit_ledger_client import schemas as w
from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Schema,
)

from api.auth import READ_SCOPES, Principal
from api.common import code_of, sid
from api.openapi import operation
from api.paging import (
    NothingVisible,
    customer_filter,
    decode_cursor,
    encode_cursor,
)
from api.routes.shared import (
    LIST_PROBLEMS,
    id_or_none,
    ledger_filter,
    principal_of,
    query_of,
    services_of,
)
from api.services import Services
from ledger.limits import (
    LIST_PAGE_ROWS_MAX,
    U128_MAX,
    USAGE_BUCKETS_MAX,
    USAGE_HOUR_GRAIN_DAYS_MAX,
    USAGE_RANGE_DAYS_MAX,
)
from ledger.repositories.usage import UsageRecord
from wallets import usage as rules

CURSOR_KIND: Final = "usage"
# A position's numbers at most: the bucket's start (microseconds up to the ledger's last
# instant), the group (a u128), the currency (three ASCII letters).
_CURSOR_MAXIMA: Final = ((1 << 64) // 1000, U128_MAX, rules.CURRENCY_NUMBER_MAX)
# litestar adds "; charset=utf-8" to a text/* media type.
CSV_MEDIA_TYPE: Final = "text/csv"
LAG_HEADER: Final = "Projection-Lag-S"
WATERMARK_HEADER: Final = "Projection-Watermark-Ts"
NEXT_CURSOR_HEADER: Final = "Next-Cursor"

DESCRIPTION: Final = (
    "Credits consumed, and their value at each block's cost basis, per time bucket and group: "
    "'which team, feature and model is consuming the budget'. Consumption is the projection's "
    "entries of kind `debit`, `settle` and `overdraft_draw` (on blocks and overdraft accounts), "
    "less `refund`s, each at its own business time (a reservation counts when it is settled, "
    "a refund when it is made); budget entries never count (a budget limits spending: the "
    "credits left a block). The answer is read from the usage "
    "rollups that the projection of the ledger into Postgres keeps as it goes: it includes "
    "every transfer up to `projection.watermark_ts` and nothing after, and may be behind the "
    "engine by `projection.lag_s` (also in the `Projection-Watermark-Ts` and "
    "`Projection-Lag-S` headers).\n\n"
    "`from` and `to` (RFC 3339 with an offset; `+` is `%2B` in a URL) fall on whole UTC hours; "
    f"the range [from, to) holds at most {USAGE_BUCKETS_MAX:,} `bucket`s (hour, day, week from "
    "Monday, month; "
    "UTC, each named by its start; the first and last count only the part inside the range) "
    f"and spans at most {USAGE_RANGE_DAYS_MAX:,} days, or {USAGE_HOUR_GRAIN_DAYS_MAX} when it "
    "is not on whole UTC days (it is then read by the hour); more is 422 naming "
    "the field. `group_by` is a comma-separated list of resource, wallet, customer, "
    "credit_type and dimension names (`dimension:NAME` for a dimension named like a builtin). "
    "Filters: `customer_id`, `resource_id` (its whole subtree: a subscription includes its "
    "teams and agents), `wallet_id`, `credit_type` (code) and `dimension=NAME:VALUE` "
    "(repeatable; values of one name are alternatives, names all apply). A row is one bucket "
    "x group x credit type x currency (credits of two credit types, or values in two "
    "currencies, never add up), only where something was consumed; `credits` is an integer "
    "and `value_minor` exact decimal text, both strings; `currency` is null for credits "
    "without a cost basis (promotional blocks, overdraft). Rows come in bucket order, pages of "
    f"`limit` (1..{LIST_PAGE_ROWS_MAX}) with `next_cursor`. A key bound to a customer sees "
    "only that customer: another customer's id, like an unknown one, finds nothing.\n\n"
    "With `Accept: text/csv` the answer is CSV: a header row, then one row per bucket x group "
    "x credit type x currency, in the columns bucket_start, the fields of `group_by` in their "
    "order (ids as customer_id, resource_id, wallet_id; a dimension by its name, or "
    "`dimension:NAME` where that is taken), credit_type unless grouped, currency, credits, "
    "value_minor, entries; null is an empty cell. The next page's cursor is in the "
    "`Next-Cursor` header (absent on the last page)."
)


def _headers() -> dict[str, Any]:
    integer = Schema(type=OpenAPIType.INTEGER)
    number = Schema(type=OpenAPIType.NUMBER)
    text = Schema(type=OpenAPIType.STRING)
    return {
        WATERMARK_HEADER: OpenAPIHeader(
            schema=integer, description="the engine timestamp (ns) of the last transfer included"
        ),
        LAG_HEADER: OpenAPIHeader(
            schema=number,
            description="how far behind the engine the answer may be, in seconds (absent: "
            "nothing projected yet)",
        ),
        NEXT_CURSOR_HEADER: OpenAPIHeader(
            schema=text, description="CSV only: the next page's cursor (absent: the last page)"
        ),
    }


_BASE = operation(*LIST_PROBLEMS, idempotent=False, query=w.UsageQuery)


@dataclass
class _UsageOperation(_BASE):  # type: ignore[valid-type,misc]
    """The list's operation, whose 200 may also be CSV, with the projection's headers."""

    def __post_init__(self) -> None:
        super().__post_init__()
        ok = (self.responses or {}).get("200")
        assert isinstance(ok, OpenAPIResponse) and ok.content is not None
        ok.content["text/csv"] = OpenAPIMediaType(
            schema=Schema(type=OpenAPIType.STRING),
            example="bucket_start,resource_id,feature,credit_type,currency,credits,"
            "value_minor,entries\r\n2026-03-02T00:00:00Z,0190c3a1-7f3e-7a41-9a6e-1d2c3b4a5f60,"
            "chat,credits,USD,1500,1500,3\r\n",
        )
        ok.headers = _headers()


@get(
    "/v1/usage",
    operation_class=_UsageOperation,
    opt={"scopes": READ_SCOPES},
    tags=["usage"],
    description=DESCRIPTION,
)
async def usage(request: Request[Any, Any, Any], state: State) -> Response[w.UsagePage]:
    principal = principal_of(request)
    query = query_of(request, w.UsageQuery)
    services = services_of(state)
    checked = _checked(query)
    visible = _visible(services, principal, query, checked)
    if visible is None:
        page = await rules.read_nothing(services.pool)
    else:
        page = await rules.read_usage(services.pool, visible)
    lag_s = page.lag_s(services.service.clock_ns())  # the engine's clock (a test clock too)
    headers = {WATERMARK_HEADER: str(page.watermark_ts)}
    if lag_s is not None:
        headers[LAG_HEADER] = f"{lag_s:.3f}"
    if wants_csv(request.headers.get("accept")):
        # The document's 200 is the JSON page; its CSV form is added by _UsageOperation.
        return cast("Response[w.UsagePage]", _csv(services, checked, page, headers))
    body = w.UsagePage(
        items=[_row_out(services, row, checked.group_by) for row in page.rows],
        next_cursor=_cursor(page.next_position),
        projection=w.UsageProjectionOut(
            watermark_ts=page.watermark_ts, lag_s=None if lag_s is None else round(lag_s, 3)
        ),
    )
    return Response(body, headers=headers)


def _csv(
    services: Services, query: rules.UsageQuery, page: rules.UsagePage, headers: dict[str, str]
) -> Response[bytes]:
    """The page as CSV, its next cursor in a header."""
    cursor = _cursor(page.next_position)
    if cursor is not None:
        headers = {**headers, NEXT_CURSOR_HEADER: cursor}
    text = rules.csv_text(page.rows, query.group_by, lambda ledger: code_of(services, ledger))
    return Response(text.encode(), media_type=CSV_MEDIA_TYPE, headers=headers)


def _checked(query: w.UsageQuery) -> rules.UsageQuery:
    """The query, checked whole: 422 naming what is wrong."""
    numbers = decode_cursor(query.cursor, CURSOR_KIND, 3, _CURSOR_MAXIMA)
    return rules.usage_query(
        from_at=query.from_,
        to_at=query.to,
        bucket=query.bucket.value,
        group_by=query.group_by,
        dimension=query.dimension or (),
        customer_id=id_or_none(query.customer_id, "customer_id"),
        resource_id=id_or_none(query.resource_id, "resource_id"),
        wallet_id=id_or_none(query.wallet_id, "wallet_id"),
        after=None if numbers is None else rules.position_of(numbers),
        limit=query.limit,
    )


def _visible(
    services: Services, principal: Principal, query: w.UsageQuery, checked: rules.UsageQuery
) -> rules.UsageQuery | None:
    """The query narrowed to the key's boundary (a bound key's customer is one more filter);
    None when it names a customer the key cannot see or a credit type that does not exist: it
    finds nothing, as an unknown customer's id does."""
    try:
        customer_id = customer_filter(principal, checked.customer_id)
        credit_type_id = ledger_filter(services, query.credit_type)
    except NothingVisible:
        return None
    return msgspec.structs.replace(checked, customer_id=customer_id, credit_type_id=credit_type_id)


def _cursor(position: rules.Position | None) -> str | None:
    if position is None:
        return None
    return encode_cursor(CURSOR_KIND, *rules.position_numbers(position))


def _row_out(
    services: Services, row: UsageRecord, group_by: tuple[rules.GroupField, ...]
) -> w.UsageRowOut:
    names = rules.dimension_names(group_by)
    return w.UsageRowOut(
        bucket_start=row.bucket_start,
        customer_id=None if row.customer_id is None else sid(row.customer_id),
        resource_id=None if row.resource_id is None else sid(row.resource_id),
        wallet_id=None if row.wallet_id is None else sid(row.wallet_id),
        credit_type=code_of(services, row.credit_type_id),
        dimensions=dict(zip(names, row.dimensions, strict=True)),
        currency=row.currency or None,
        credits=str(row.credits),
        value_minor=rules.decimal_text(row.value_minor),
        entries=row.entries,
    )


def wants_csv(accept: str | None) -> bool:
    """Whether an Accept header prefers text/csv to JSON (`text/csv`, or ranked above
    application/json, application/* and */*)."""
    if not accept:
        return False
    csv_q = json_q = 0.0
    for media_range in accept.split(","):
        media, _, params = media_range.partition(";")
        q = _quality(params)
        media = media.strip().lower()
        if media == "text/csv":
            csv_q = max(csv_q, q)
        elif media in ("application/json", "application/*", "*/*"):
            json_q = max(json_q, q)
    return csv_q > json_q


def _quality(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return min(max(float(value.strip()), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0


ROUTES = [usage]
