"""Dimension sets: one id per set whatever the order of its names, written before first use,
and a spend with a set nobody could record is refused rather than sent."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from grants.errors import LedgerUnavailableError
from ledger.ids import dimension_set_id
from wallets.dimensions import DimensionSets

pytestmark = pytest.mark.anyio


class _Pool:
    """Records what would be written; `down` makes every connection fail."""

    def __init__(self) -> None:
        self.down = False
        self.connections = 0

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        self.connections += 1
        if self.down:
            raise psycopg.OperationalError("connection refused")
        yield _Conn()


class _Conn:
    def transaction(self) -> Any:
        return contextlib.nullcontext()

    async def execute(self, *_: Any) -> None:
        return None


def test_a_set_has_one_id_whatever_the_order_of_its_names() -> None:
    a = dimension_set_id({"model": "m", "feature": "f"})
    assert a == dimension_set_id({"feature": "f", "model": "m"})
    assert a != dimension_set_id({"feature": "m", "model": "f"})
    assert dimension_set_id({}) == 0


async def test_a_known_set_never_waits_on_postgres_and_a_new_one_needs_it() -> None:
    pool = _Pool()
    sets = DimensionSets(pool)  # type: ignore[arg-type]
    chat = {"feature": "chat"}
    assert await sets.ids([chat, None, chat]) == [dimension_set_id(chat), 0, dimension_set_id(chat)]
    assert pool.connections == 1
    pool.down = True
    assert await sets.ids([chat]) == [dimension_set_id(chat)]  # known: no connection
    assert pool.connections == 1
    with pytest.raises(LedgerUnavailableError, match="dimensions could not be recorded"):
        await sets.ids([{"feature": "new"}])
