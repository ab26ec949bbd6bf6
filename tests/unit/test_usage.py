"""The pure parts of cost attribution (wallets/usage.py): the query's parsing and checks, the
calendar buckets at their edges, the cursor's position, the CSV."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from credit_ledger_client import schemas as w
from hypothesis import given
from hypothesis import strategies as st

from grants.errors import InvalidRequest
from ledger.limits import (
    DIMENSION_NAME_CHARS_MAX,
    DIMENSION_VALUE_CHARS_MAX,
    USAGE_BUCKETS_MAX,
    USAGE_DIMENSION_FILTERS_MAX,
    USAGE_GROUP_BY_CHARS_MAX,
    USAGE_GROUP_BY_FIELDS_MAX,
)
from ledger.repositories.usage import UsageRecord
from wallets.usage import (
    Bucket,
    GroupField,
    Position,
    bucket_count,
    bucket_floor,
    bucket_index,
    bucket_start,
    bucket_starts,
    csv_columns,
    csv_text,
    decimal_text,
    grain_of,
    parse_dimension_filters,
    parse_group_by,
    position_numbers,
    position_of,
    selection_of,
    usage_query,
    usage_range,
)

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def refused(field: str, call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(InvalidRequest) as caught:
        call(*args, **kwargs)
    assert caught.value.details.get("field") == field, caught.value.details
    return caught.value.message


# -- group_by and dimension filters -------------------------------------------------------------


def test_group_by_names_builtins_and_dimensions_in_order() -> None:
    assert parse_group_by("resource,feature,model") == (
        GroupField("resource", "resource"),
        GroupField("dimension", "feature"),
        GroupField("dimension", "model"),
    )
    assert parse_group_by("credit_type,wallet,customer") == (
        GroupField("credit_type", "credit_type"),
        GroupField("wallet", "wallet"),
        GroupField("customer", "customer"),
    )
    assert parse_group_by(None) == ()


def test_a_dimension_named_like_a_builtin_is_reached_with_its_prefix() -> None:
    assert parse_group_by("resource,dimension:resource,dimension:feature") == (
        GroupField("resource", "resource"),
        GroupField("dimension", "resource"),
        GroupField("dimension", "feature"),
    )
    assert parse_group_by("dimension:dimension:x") == (GroupField("dimension", "dimension:x"),)
    # The same dimension with and without its prefix is the same field, named twice.
    refused("group_by", parse_group_by, "feature,dimension:feature")


@pytest.mark.parametrize(
    "text",
    [
        "",  # no name
        "resource,",  # an empty name
        "resource,resource",  # twice
        "dimension:",  # a prefix without a name
        "a\x00b",  # a control character
        "x" * 65,  # a name longer than a dimension's
        ",".join(f"d{i}" for i in range(USAGE_GROUP_BY_FIELDS_MAX + 1)),
        "a," * 600,
    ],
)
def test_a_bad_group_by_is_refused_naming_it(text: str) -> None:
    refused("group_by", parse_group_by, text)


def test_dimension_filters_split_at_the_first_colon_and_gather_values_by_name() -> None:
    filters = parse_dimension_filters(
        ["feature:chat", "model:gpt:4o", "feature:search", "feature:chat", "empty:"]
    )
    assert filters == (("feature", ("chat", "search")), ("model", ("gpt:4o",)), ("empty", ("",)))


@pytest.mark.parametrize(
    "items",
    [["feature"], [":chat"], ["feature:" + "x" * 257], ["feature:a\nb"], ["f:x"] * 17],
)
def test_a_bad_dimension_filter_is_refused_naming_it(items: list[str]) -> None:
    refused("dimension", parse_dimension_filters, items)


# -- the range ----------------------------------------------------------------------------------


def test_a_range_is_utc_on_whole_hours() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    start, end = usage_range(
        dt.datetime(2026, 3, 2, 2, tzinfo=plus_two), at("2026-03-03T00:00:00Z"), Bucket.DAY
    )
    assert (start, end) == (at("2026-03-02T00:00:00Z"), at("2026-03-03T00:00:00Z"))
    assert start.tzinfo is UTC
    # 10:00 at +05:30 is 04:30 UTC: not a whole UTC hour.
    half = dt.timezone(dt.timedelta(hours=5, minutes=30))
    ten = dt.datetime(2026, 3, 2, 10, tzinfo=half)
    refused("from", usage_range, ten, at("2026-03-03T00:00:00Z"), Bucket.DAY)
    refused("to", usage_range, at("2026-03-02T00:00:00Z"), at("2026-03-02T10:30:00Z"), Bucket.DAY)
    refused("from", usage_range, dt.datetime(2026, 3, 2), at("2026-03-03T00:00:00Z"), Bucket.DAY)


@pytest.mark.parametrize(
    ("start", "end", "bucket", "field"),
    [
        ("2026-03-02T00:00:00Z", "2026-03-02T00:00:00Z", "day", "to"),  # empty
        ("2026-03-03T00:00:00Z", "2026-03-02T00:00:00Z", "day", "to"),  # backwards
        ("2026-01-01T00:00:00Z", "2026-02-12T00:00:00Z", "hour", "bucket"),  # 1,008 hours
        ("2026-01-01T00:00:00Z", "2029-01-01T00:00:00Z", "day", "bucket"),  # 1,096 days
        ("2020-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "month", "to"),  # over 1,830 days
        ("2026-01-01T01:00:00Z", "2026-06-01T00:00:00Z", "month", "to"),  # by the hour, 151 days
        ("1969-12-31T23:00:00Z", "1970-01-02T00:00:00Z", "day", "from"),  # before the ledger
        ("2554-07-21T00:00:00Z", "2554-07-22T00:00:00Z", "hour", "to"),  # after its last time
    ],
)
def test_a_range_out_of_bounds_is_refused_naming_the_field(
    start: str, end: str, bucket: str, field: str
) -> None:
    refused(field, usage_range, at(start), at(end), Bucket(bucket))


def test_the_bucket_limit_is_exact() -> None:
    start = at("2026-01-01T00:00:00Z")
    end = start + dt.timedelta(hours=USAGE_BUCKETS_MAX)
    assert usage_range(start, end, Bucket.HOUR) == (start, end)
    message = refused("bucket", usage_range, start, end + dt.timedelta(hours=1), Bucket.HOUR)
    assert f"{USAGE_BUCKETS_MAX + 1} hour buckets" in message


def test_a_time_that_overflows_in_utc_is_refused_not_raised() -> None:
    early = dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    refused("from", usage_range, early, at("2026-01-01T00:00:00Z"), Bucket.DAY)


def test_whole_days_read_the_day_rollups_for_days_and_longer() -> None:
    day, noon = at("2026-03-02T00:00:00Z"), at("2026-03-02T12:00:00Z")
    end = at("2026-04-01T00:00:00Z")
    assert grain_of(day, end, Bucket.DAY) == "day"
    assert grain_of(day, end, Bucket.WEEK) == "day"
    assert grain_of(day, end, Bucket.MONTH) == "day"
    assert grain_of(day, end, Bucket.HOUR) == "hour"
    assert grain_of(noon, end, Bucket.DAY) == "hour"
    assert grain_of(day, end + dt.timedelta(hours=1), Bucket.MONTH) == "hour"


# -- buckets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instant", "bucket", "start"),
    [
        ("2026-03-02T10:59:59.999999Z", "hour", "2026-03-02T10:00:00Z"),
        ("2026-03-02T23:59:59Z", "day", "2026-03-02T00:00:00Z"),
        ("2026-03-08T23:59:59Z", "week", "2026-03-02T00:00:00Z"),  # a Sunday: Monday's week
        ("2026-03-09T00:00:00Z", "week", "2026-03-09T00:00:00Z"),  # a Monday starts one
        ("2027-01-03T12:00:00Z", "week", "2026-12-28T00:00:00Z"),  # a week across the year
        ("1970-01-01T00:00:00Z", "week", "1969-12-29T00:00:00Z"),  # the epoch was a Thursday
        ("2026-12-31T23:59:59Z", "month", "2026-12-01T00:00:00Z"),
        ("2027-01-01T00:00:00Z", "month", "2027-01-01T00:00:00Z"),
        ("2028-02-29T12:00:00Z", "month", "2028-02-01T00:00:00Z"),  # a leap day
        ("2028-02-29T12:00:00Z", "day", "2028-02-29T00:00:00Z"),
    ],
)
def test_a_time_falls_in_its_calendar_bucket(instant: str, bucket: str, start: str) -> None:
    assert bucket_floor(at(instant), Bucket(bucket)) == at(start)


@pytest.mark.parametrize(
    ("start", "end", "bucket", "starts"),
    [
        # Thursday to the next Wednesday: two weeks, the first begun on the Monday before.
        ("2026-03-05T00:00:00Z", "2026-03-12T00:00:00Z", "week",
         ["2026-03-02T00:00:00Z", "2026-03-09T00:00:00Z"]),
        # Monday to Monday: exactly one week.
        ("2026-03-02T00:00:00Z", "2026-03-09T00:00:00Z", "week", ["2026-03-02T00:00:00Z"]),
        # The last day of January to the 1st of March: January and February.
        ("2026-01-31T00:00:00Z", "2026-03-01T00:00:00Z", "month",
         ["2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"]),
        ("2026-12-15T00:00:00Z", "2027-01-02T00:00:00Z", "month",
         ["2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"]),
        ("2026-03-02T22:00:00Z", "2026-03-03T01:00:00Z", "day",
         ["2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z"]),
        ("2026-03-02T22:00:00Z", "2026-03-03T00:00:00Z", "hour",
         ["2026-03-02T22:00:00Z", "2026-03-02T23:00:00Z"]),
    ],
)  # fmt: skip
def test_a_range_touches_its_buckets(start: str, end: str, bucket: str, starts: list[str]) -> None:
    assert bucket_starts(at(start), at(end), Bucket(bucket)) == [at(s) for s in starts]
    assert bucket_count(at(start), at(end), Bucket(bucket)) == len(starts)


instants = st.datetimes(
    min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2554, 7, 1), timezones=st.just(UTC)
)


@given(instants, st.sampled_from(list(Bucket)))
def test_every_time_lies_in_one_bucket_that_starts_on_its_edge(
    instant: dt.datetime, bucket: Bucket
) -> None:
    index = bucket_index(instant, bucket)
    start, following = bucket_start(index, bucket), bucket_start(index + 1, bucket)
    assert start <= instant < following
    assert bucket_index(start, bucket) == index
    assert (start.minute, start.second, start.microsecond) == (0, 0, 0)
    if bucket is not Bucket.HOUR:
        assert start.hour == 0
    if bucket is Bucket.WEEK:
        assert start.weekday() == 0 and following - start == dt.timedelta(weeks=1)
    if bucket is Bucket.MONTH:
        assert start.day == 1 and following.day == 1


@given(instants, st.integers(1, 24 * 60), st.sampled_from(list(Bucket)))
def test_a_range_touches_as_many_buckets_as_its_hours_fall_in(
    instant: dt.datetime, hours: int, bucket: Bucket
) -> None:
    start = instant.replace(minute=0, second=0, microsecond=0)
    end = start + dt.timedelta(hours=hours)
    floors = {bucket_floor(start + dt.timedelta(hours=h), bucket) for h in range(hours)}
    assert bucket_count(start, end, bucket) == len(floors)
    assert bucket_starts(start, end, bucket) == sorted(floors)


# -- the whole query ------------------------------------------------------------------------------


def test_a_query_is_checked_whole_and_selects_what_it_says() -> None:
    query = usage_query(
        from_at=at("2026-03-01T00:00:00Z"),
        to_at=at("2026-04-01T00:00:00Z"),
        bucket="week",
        group_by="customer,feature",
        dimension=["model:small"],
        resource_id=7,
        limit=10,
    )
    selection = selection_of(query)
    assert (selection.grain, selection.bucket) == ("day", "week")
    assert (selection.by_customer, selection.by_resource, selection.by_wallet) == (
        True,
        False,
        False,
    )
    assert selection.dimension_names == ("feature",)
    assert selection.dimension_filters == (("model", ("small",)),)
    assert (selection.resource_id, selection.limit, selection.after) == (7, 10, None)
    refused("bucket", usage_query, from_at=query.from_at, to_at=query.to_at, bucket="year")
    refused("limit", usage_query, from_at=query.from_at, to_at=query.to_at, bucket="day", limit=0)


# -- the cursor's position and the text ----------------------------------------------------------


@given(
    instants.map(lambda t: t.replace(minute=0, second=0, microsecond=0)),
    st.integers(0, (1 << 128) - 1),
    st.sampled_from(["", "USD", "EUR", "JPY", "ZZZ"]),
)
def test_a_position_gives_back_its_numbers(at_: dt.datetime, group: int, currency: str) -> None:
    position = Position(at_, group, currency)
    assert position_of(position_numbers(position)) == position


@pytest.mark.parametrize("number", [1, int.from_bytes(b"usd", "big"), int.from_bytes(b"US", "big")])
def test_a_position_naming_no_currency_is_refused(number: int) -> None:
    refused("cursor", position_of, (0, 0, number))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("1500.000000000"), "1500"),
        (Decimal("0E-9"), "0"),
        (Decimal("-0.000000000"), "0"),
        (Decimal("33.333333333"), "33.333333333"),
        (Decimal("-40.500000000"), "-40.5"),
        (Decimal("1E+3"), "1000"),
    ],
)
def test_values_are_plain_decimal_text(value: Decimal, text: str) -> None:
    assert decimal_text(value) == text


def _record(**kw: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "bucket_start": at("2026-03-02T00:00:00Z"),
        "customer_id": None,
        "resource_id": None,
        "wallet_id": None,
        "credit_type_id": 1,
        "dimensions": (),
        "currency": "USD",
        "credits": 1500,
        "value_minor": Decimal("1500.5"),
        "entries": 3,
        "group": 0,
    }
    return UsageRecord(**(fields | kw))


def test_csv_has_a_header_and_one_row_per_record_in_a_stable_order() -> None:
    group_by = parse_group_by("resource,feature,currency")
    assert csv_columns(group_by) == [
        "bucket_start", "resource_id", "feature", "dimension:currency", "credit_type",
        "currency", "credits", "value_minor", "entries",
    ]  # fmt: skip
    rows = [
        _record(resource_id=1, dimensions=("chat, with commas", None)),
        _record(
            resource_id=2,
            dimensions=('say "hi"', "EUR"),
            currency="",
            credits=-5,
            value_minor=Decimal(0),
        ),
    ]
    text = csv_text(rows, group_by, lambda ledger: {1: "credits"}[ledger])
    assert text.split("\r\n") == [
        "bucket_start,resource_id,feature,dimension:currency,credit_type,currency,credits,"
        "value_minor,entries",
        '2026-03-02T00:00:00Z,00000000-0000-0000-0000-000000000001,"chat, with commas",,'
        "credits,USD,1500,1500.5,3",
        '2026-03-02T00:00:00Z,00000000-0000-0000-0000-000000000002,"say ""hi""",EUR,credits,'
        ",-5,0,3",
        "",
    ]
    assert csv_text([], group_by, str, header=False) == ""


def test_credit_type_is_a_column_where_group_by_puts_it() -> None:
    assert csv_columns(parse_group_by("credit_type,dimension:dimension:x,customer")) == [
        "bucket_start", "credit_type", "dimension:dimension:x", "customer_id", "currency",
        "credits", "value_minor", "entries",
    ]  # fmt: skip


def test_the_wire_contract_states_the_limits_the_service_applies() -> None:
    query = msgspec.json.schema(w.UsageQuery)["$defs"]["UsageQuery"]["properties"]
    group_by = query["group_by"]["anyOf"][0]
    dimension = query["dimension"]["anyOf"][0]
    assert group_by["maxLength"] == USAGE_GROUP_BY_CHARS_MAX
    assert dimension["maxItems"] == USAGE_DIMENSION_FILTERS_MAX
    name_value = DIMENSION_NAME_CHARS_MAX + 1 + DIMENSION_VALUE_CHARS_MAX
    assert dimension["items"]["maxLength"] == name_value
    assert f"{{1,{DIMENSION_NAME_CHARS_MAX}}}:" in w.USAGE_DIMENSION_PATTERN
    assert f"{{0,{DIMENSION_VALUE_CHARS_MAX}}}$" in w.USAGE_DIMENSION_PATTERN
    assert [b.value for b in w.UsageBucket] == [b.value for b in Bucket]
