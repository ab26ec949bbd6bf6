"""Many concurrent callers on one limited account never overdraw it.

Each transfer is its own request, so the engine sees them interleaved from several clients; the
limit (`debits_must_not_exceed_credits`) must hold exactly: with 1000 credits and transfers of 7,
exactly 142 succeed (994) and 6 remain.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tigerbeetle import AccountFlags, CreateTransferStatus, TransferFlags

from ._helpers import (
    account,
    account_filter,
    balances,
    create_transfers_ok,
    new_accounts,
    query_filter,
    transfer,
)

S = CreateTransferStatus
CREDITS = 1000
AMOUNT = 7
CALLERS = 200
SUCCEEDED = CREDITS // AMOUNT
REMAINDER = CREDITS % AMOUNT
CLIENTS_SYNC = 4
THREADS = 32


def _limited_account(tb: Any, ledger_id: int) -> tuple[int, int]:
    (source,) = new_accounts(tb, ledger_id, count=1)
    (limited,) = new_accounts(
        tb, ledger_id, count=1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    )
    create_transfers_ok(tb, [transfer(source, limited, CREDITS, ledger_id)])
    return limited, source


def _assert_outcome(tb: Any, statuses: list[Any], limited: int, pending: bool) -> None:
    assert Counter(statuses) == Counter(
        {S.CREATED: SUCCEEDED, S.EXCEEDS_CREDITS: CALLERS - SUCCEEDED}
    )
    spent = SUCCEEDED * AMOUNT
    if pending:
        assert balances(tb, limited) == (spent, 0, 0, CREDITS)
    else:
        assert balances(tb, limited) == (0, spent, 0, CREDITS)
    assert CREDITS - spent == REMAINDER


def test_threads_with_sync_clients_never_overdraw(tb: Any, engine: Any, ledger_id: int) -> None:
    limited, sink = _limited_account(tb, ledger_id)
    clients = engine.clients_sync(CLIENTS_SYNC)
    transfers = [transfer(limited, sink, AMOUNT, ledger_id) for _ in range(CALLERS)]

    def call(index: int) -> Any:
        client = clients[index % len(clients)]
        (result,) = client.create_transfers([transfers[index]])
        return result.status

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        statuses = list(pool.map(call, range(CALLERS)))
    _assert_outcome(tb, statuses, limited, pending=False)
    created = [t.id for t, s in zip(transfers, statuses, strict=True) if s == S.CREATED]
    assert len(tb.lookup_transfers(created)) == SUCCEEDED


def test_threads_reserving_with_pending_transfers_never_overdraw(
    tb: Any, engine: Any, ledger_id: int
) -> None:
    limited, sink = _limited_account(tb, ledger_id)
    clients = engine.clients_sync(CLIENTS_SYNC)

    def call(index: int) -> Any:
        client = clients[index % len(clients)]
        hold = transfer(limited, sink, AMOUNT, ledger_id, flags=TransferFlags.PENDING)
        (result,) = client.create_transfers([hold])
        return result.status

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        statuses = list(pool.map(call, range(CALLERS)))
    _assert_outcome(tb, statuses, limited, pending=True)


def test_asyncio_tasks_never_overdraw(tb: Any, atb: Any, ledger_id: int) -> None:
    limited, sink = _limited_account(tb, ledger_id)

    async def call() -> Any:
        (result,) = await atb.create_transfers([transfer(limited, sink, AMOUNT, ledger_id)])
        return result.status

    async def scenario() -> list[Any]:
        return list(await asyncio.gather(*(call() for _ in range(CALLERS))))

    statuses = asyncio.run(scenario())
    _assert_outcome(tb, statuses, limited, pending=False)


def test_async_client_reads_and_writes(atb: Any, ledger_id: int) -> None:
    async def scenario() -> None:
        a, b = account(ledger_id), account(ledger_id)
        results = await atb.create_accounts([a, b])
        assert [r.status.name for r in results] == ["CREATED", "CREATED"]
        t = transfer(a.id, b.id, 5, ledger_id)
        (result,) = await atb.create_transfers([t])
        assert result.status == S.CREATED
        found = await atb.lookup_accounts([a.id, b.id])
        assert [(x.debits_posted, x.credits_posted) for x in found] == [(5, 0), (0, 5)]
        assert [x.id for x in await atb.lookup_transfers([t.id])] == [t.id]
        assert [x.id for x in await atb.get_account_transfers(account_filter(a.id))] == [t.id]
        assert await atb.get_account_balances(account_filter(a.id)) == []
        assert [x.id for x in await atb.query_accounts(query_filter(ledger=ledger_id))] == [
            a.id,
            b.id,
        ]
        assert [x.id for x in await atb.query_transfers(query_filter(ledger=ledger_id))] == [t.id]

    asyncio.run(scenario())
