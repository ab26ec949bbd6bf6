"""The lists' cursors and query strings (api.paging): a cursor comes back as the position it was
made of, and is refused when it is of another list or not one this API gave; a query string is
decoded strictly."""

from __future__ import annotations

import datetime as dt

import pytest
from credit_ledger_client import schemas
from hypothesis import given
from hypothesis import strategies as st

from api.auth import Principal
from api.paging import (
    NothingVisible,
    customer_filter,
    decode_cursor,
    decode_query,
    encode_cursor,
    keyset_after,
    keyset_cursor,
)
from grants.errors import InvalidRequest
from ledger.limits import LIST_CURSOR_CHARS_MAX, U128_MAX

U128 = st.integers(min_value=0, max_value=U128_MAX)
ID = "0190c3a1-7f3e-7a41-9a6e-1d2c3b4a5f60"


@given(st.lists(U128, min_size=1, max_size=3))
def test_a_cursor_gives_back_its_numbers(numbers: list[int]) -> None:
    cursor = encode_cursor("grants", *numbers)
    assert len(cursor) <= LIST_CURSOR_CHARS_MAX
    assert decode_cursor(cursor, "grants", len(numbers)) == tuple(numbers)


@given(
    st.datetimes(
        min_value=dt.datetime(1971, 1, 1),
        max_value=dt.datetime(2200, 1, 1),
        timezones=st.just(dt.UTC),
    ),
    U128,
)
def test_a_keyset_cursor_gives_back_its_row_to_the_microsecond(at: dt.datetime, row: int) -> None:
    assert keyset_after(keyset_cursor("wallets", (at, row)), "wallets") == (at, row)


@pytest.mark.parametrize(
    "cursor",
    [
        encode_cursor("customers", 1, 2),  # another list's
        encode_cursor("grants", 1),  # another shape
        encode_cursor("grants", 1, 2, 3),
        "not a cursor!",
        "Z3JhbnRzOjE6Mg===",  # bad padding
        encode_cursor("grants", 1, 2)[:-2],  # cut short
        "Z3JhbnRzOnRlbjoy",  # grants:ten:2
        "Z3JhbnRzOi0xOjI",  # grants:-1:2
        "Z3JhbnRzOjAxOjI",  # grants:01:2, not as it was written
    ],
)
def test_a_cursor_of_another_list_or_not_ours_is_refused(cursor: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        decode_cursor(cursor, "grants", 2)
    assert refused.value.details["field"] == "cursor"


def test_no_cursor_is_the_first_page() -> None:
    assert decode_cursor(None, "grants", 2) is None


def test_a_query_is_decoded_strictly_naming_what_is_wrong() -> None:
    query = decode_query([("limit", "5"), ("state", "active")], schemas.GrantQuery)
    assert (query.limit, query.state) == (5, schemas.GrantState.ACTIVE)
    budgets = decode_query([("active", "false"), ("resource_id", ID)], schemas.BudgetQuery)
    assert (budgets.active, budgets.resource_id) == (False, ID)
    with pytest.raises(InvalidRequest) as refused:
        decode_query([("active", "False")], schemas.BudgetQuery)
    assert refused.value.details["field"] == "active"
    at = decode_query([("expires_before", "2030-01-01T00:00:00Z")], schemas.GrantQuery)
    assert at.expires_before == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    for params, field in (
        ([("limit", "5"), ("limit", "6")], "limit"),
        ([("colour", "red")], "colour"),
        ([("limit", "0")], "limit"),
        ([("expires_before", "2030-01-01T00:00:00")], "expires_before"),
        ([("state", "null")], "state"),  # "null" is not how a parameter says "not given"
        ([("wallet_id", "null")], "wallet_id"),
        (
            [("expires_before", "0.5")],
            "expires_before",
        ),  # not a time, whatever msgspec's lax mode says
        ([("limit", "5.0")], "limit"),
        ([("limit", " 5")], "limit"),
    ):
        with pytest.raises(InvalidRequest) as refused:
            decode_query(params, schemas.GrantQuery)
        assert refused.value.details["field"] == field, params


def _principal(customer_id: int | None) -> Principal:
    return Principal(
        key_id=1, name="k", scopes=frozenset({"finance"}), customer_id=customer_id, tenant=0
    )


def test_a_bound_key_lists_its_customer_only() -> None:
    assert customer_filter(_principal(None), None) is None
    assert customer_filter(_principal(None), 7) == 7
    assert customer_filter(_principal(7), None) == 7
    assert customer_filter(_principal(7), 7) == 7
    with pytest.raises(NothingVisible):
        customer_filter(_principal(7), 8)
