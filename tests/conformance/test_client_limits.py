"""Limits the client enforces before anything reaches the engine.

- A batch holds at most 8189 events (a 1 MiB message), and a query asks for at most 8189 results:
  more raises `tigerbeetle.TooMuchDataError` (`Operation.event_max` / `result_max` in TigerBeetle's
  `src/tigerbeetle.zig`, checked by the client in `tb_client/context.zig`).
- A field out of its integer range raises `tigerbeetle.IntegerOverflowError` while the request is
  encoded, so no event of that request is applied.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import tigerbeetle

from ._helpers import (
    BATCH_EVENTS_MAX,
    U16_MAX,
    U32_MAX,
    U64_MAX,
    U128_MAX,
    account,
    account_filter,
    create_accounts_ok,
    new_accounts,
    new_id,
    query_filter,
    transfer,
)


def test_create_accounts_batch_limit(tb: Any, ledger_id: int) -> None:
    too_many = [account(ledger_id) for _ in range(BATCH_EVENTS_MAX + 1)]
    with pytest.raises(tigerbeetle.TooMuchDataError):
        tb.create_accounts(too_many)
    assert tb.lookup_accounts([too_many[0].id, too_many[-1].id]) == []
    create_accounts_ok(tb, too_many[:BATCH_EVENTS_MAX])
    found = tb.lookup_accounts([too_many[0].id, too_many[BATCH_EVENTS_MAX - 1].id])
    assert len(found) == 2


def test_create_transfers_batch_limit(tb: Any, ledger_id: int) -> None:
    dr, cr = new_accounts(tb, ledger_id)
    too_many = [transfer(dr, cr, 1, ledger_id) for _ in range(BATCH_EVENTS_MAX + 1)]
    with pytest.raises(tigerbeetle.TooMuchDataError):
        tb.create_transfers(too_many)
    assert tb.lookup_transfers([too_many[0].id]) == []
    assert tb.lookup_accounts([dr])[0].debits_posted == 0


def test_lookup_batch_limit(tb: Any) -> None:
    ids = [new_id() for _ in range(BATCH_EVENTS_MAX + 1)]
    with pytest.raises(tigerbeetle.TooMuchDataError):
        tb.lookup_accounts(ids)
    with pytest.raises(tigerbeetle.TooMuchDataError):
        tb.lookup_transfers(ids)
    assert tb.lookup_accounts(ids[:BATCH_EVENTS_MAX]) == []
    assert tb.lookup_transfers(ids[:BATCH_EVENTS_MAX]) == []


def test_query_limit_above_the_result_max(tb: Any, ledger_id: int) -> None:
    (a,) = new_accounts(tb, ledger_id, count=1)
    over = BATCH_EVENTS_MAX + 1
    with pytest.raises(tigerbeetle.TooMuchDataError):
        tb.get_account_transfers(account_filter(a, limit=over))
    with pytest.raises(tigerbeetle.TooMuchDataError):
        tb.get_account_balances(account_filter(a, limit=over))
    with pytest.raises(tigerbeetle.TooMuchDataError):
        tb.query_accounts(query_filter(ledger=ledger_id, limit=over))
    with pytest.raises(tigerbeetle.TooMuchDataError):
        tb.query_transfers(query_filter(ledger=ledger_id, limit=U32_MAX))
    assert [x.id for x in tb.query_accounts(query_filter(ledger=ledger_id))] == [a]


def test_async_client_batch_limit(atb: Any, ledger_id: int) -> None:
    async def scenario() -> None:
        with pytest.raises(tigerbeetle.TooMuchDataError):
            await atb.create_accounts([account(ledger_id) for _ in range(BATCH_EVENTS_MAX + 1)])

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "fields",
    [
        {"id": -1},
        {"id": U128_MAX + 1},
        {"debits_posted": U128_MAX + 1},
        {"user_data_128": -1},
        {"user_data_64": U64_MAX + 1},
        {"user_data_32": U32_MAX + 1},
        {"ledger": U32_MAX + 1},
        {"code": U16_MAX + 1},
        {"code": -1},
        {"timestamp": U64_MAX + 1},
    ],
)
def test_account_field_out_of_range(tb: Any, ledger_id: int, fields: dict[str, Any]) -> None:
    valid = account(ledger_id)
    invalid = account(ledger_id, **fields)
    with pytest.raises(tigerbeetle.IntegerOverflowError):
        tb.create_accounts([valid, invalid])
    # Nothing of the request was applied.
    assert tb.lookup_accounts([valid.id]) == []


@pytest.mark.parametrize(
    "fields",
    [
        {"id": -1},
        {"amount": U128_MAX + 1},
        {"amount": -1},
        {"pending_id": U128_MAX + 1},
        {"debit_account_id": -1},
        {"user_data_64": -1},
        {"user_data_32": U32_MAX + 1},
        {"timeout": U32_MAX + 1},
        {"ledger": -1},
        {"code": U16_MAX + 1},
    ],
)
def test_transfer_field_out_of_range(tb: Any, ledger_id: int, fields: dict[str, Any]) -> None:
    dr, cr = new_accounts(tb, ledger_id)
    valid = transfer(dr, cr, 1, ledger_id)
    invalid = transfer(dr, cr, 1, ledger_id, **fields)
    with pytest.raises(tigerbeetle.IntegerOverflowError):
        tb.create_transfers([valid, invalid])
    assert tb.lookup_transfers([valid.id]) == []
    assert tb.lookup_accounts([dr])[0].debits_posted == 0


def test_filter_fields_out_of_range(tb: Any, ledger_id: int) -> None:
    (a,) = new_accounts(tb, ledger_id, count=1)
    with pytest.raises(tigerbeetle.IntegerOverflowError):
        tb.get_account_transfers(account_filter(a, limit=U32_MAX + 1))
    with pytest.raises(tigerbeetle.IntegerOverflowError):
        tb.get_account_balances(account_filter(-1))
    with pytest.raises(tigerbeetle.IntegerOverflowError):
        tb.get_account_transfers(account_filter(a, timestamp_min=-1))
    with pytest.raises(tigerbeetle.IntegerOverflowError):
        tb.query_accounts(query_filter(ledger=-1))
    with pytest.raises(tigerbeetle.IntegerOverflowError):
        tb.query_transfers(query_filter(code=U16_MAX + 1))


def test_async_client_integer_overflow(atb: Any, ledger_id: int) -> None:
    async def scenario() -> None:
        with pytest.raises(tigerbeetle.IntegerOverflowError):
            await atb.create_transfers([transfer(new_id(), new_id(), -5, ledger_id)])

    asyncio.run(scenario())


def test_lookup_ids_are_not_range_checked_by_the_client(tb: Any) -> None:
    # tigerbeetle-python 0.17.9 encodes lookup ids with c_uint128.from_param, which does not
    # validate (unlike every field of an event or a filter): an out-of-range id is looked up
    # (modulo 2^128) and, here, not found. No IntegerOverflowError.
    assert tb.lookup_accounts([-1]) == []
    assert tb.lookup_accounts([U128_MAX + 1]) == []
    assert tb.lookup_transfers([-1]) == []
