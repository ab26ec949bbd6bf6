"""The wire schemas repeat the catalog's enums and the limits of a list (the client imports no
server code): the values must stay the same on both sides."""

from __future__ import annotations

import enum

import pytest
from credit_ledger_client import schemas

from ledger import limits
from ledger.repositories import budgets, grants, resources, wallets
from wallets import plan_periods, statements


@pytest.mark.parametrize(
    ("wire", "catalog"),
    [
        (schemas.ResourceKind, resources.ResourceKind),
        (schemas.OverdraftMode, wallets.OverdraftMode),
        (schemas.Category, grants.GrantCategory),
        (schemas.GrantSource, grants.GrantSource),
        (schemas.Period, budgets.BudgetPeriod),
        (schemas.EntryType, statements.EntryType),
        (schemas.GrantState, statements.BlockState),
        (schemas.PlanPeriod, plan_periods.PeriodUnit),
    ],
)
def test_wire_and_catalog_enums_agree(wire: type[enum.Enum], catalog: type[enum.Enum]) -> None:
    assert {m.value for m in wire} == {m.value for m in catalog}


def test_wire_and_service_page_limits_agree() -> None:
    assert schemas.PAGE_LIMIT_DEFAULT == limits.LIST_PAGE_ROWS_DEFAULT
    assert schemas.PAGE_LIMIT_MAX == limits.LIST_PAGE_ROWS_MAX
    assert schemas.CURSOR_CHARS_MAX == limits.LIST_CURSOR_CHARS_MAX


def test_wire_and_service_exchange_rate_limits_agree() -> None:
    assert schemas.EXCHANGE_RATE_CHARS_MAX == limits.EXCHANGE_RATE_CHARS_MAX


def test_the_listed_grant_states_are_the_wire_states() -> None:
    assert set(grants.BLOCK_STATES) == {m.value for m in schemas.GrantState}
