"""The ledger facade: engine choice, chain-aware splitting, deadlines, settings."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ledger.client import Ledger, LedgerSync, LedgerUnavailable, open_ledger, open_ledger_sync
from ledger.clock import ManualClock
from ledger.embedded import EmbeddedEngine
from ledger.limits import BATCH_EVENTS_MAX
from ledger.settings import FinanceSettings, LedgerSettings, SettingsError
from ledger.types import Account, CreateTransferStatus, Transfer, TransferFlags


def _chains(count: int, length: int, first_id: int = 1000) -> list[Transfer]:
    return [
        Transfer(
            id=first_id + i,
            debit_account_id=1,
            credit_account_id=2,
            amount=1,
            ledger=1,
            code=1,
            flags=TransferFlags.LINKED if i % length != length - 1 else TransferFlags.NONE,
        )
        for i in range(count * length)
    ]


def test_requests_over_the_limit_are_split_between_chains() -> None:
    engine = EmbeddedEngine(clock_ns=ManualClock())
    ledger = open_ledger_sync(LedgerSettings(), engine=engine)
    ledger.create_accounts([Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1)])
    events = _chains(5000, 4)  # 20,000 events: three requests
    results = ledger.create_transfers(events)
    assert len(results) == 20_000
    assert {r.status for r in results} == {CreateTransferStatus.CREATED}
    assert ledger.lookup_accounts([2])[0].credits_posted == 20_000
    # Lookups over the limit are chunked too, and keep their order.
    found = ledger.lookup_transfers([e.id for e in reversed(events)])
    assert [t.id for t in found] == [e.id for e in reversed(events)]
    # Results follow the events: timestamps strictly increase across the split.
    timestamps = [r.timestamp for r in results]
    assert timestamps == sorted(set(timestamps))
    engine.close()


def test_the_raw_engine_refuses_what_the_raw_client_refuses() -> None:
    from ledger.types import TooMuchDataError

    engine = EmbeddedEngine(clock_ns=ManualClock())
    with pytest.raises(TooMuchDataError):
        engine.client_sync().create_transfers(_chains(BATCH_EVENTS_MAX + 1, 1))
    engine.close()


class _SlowClient:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.completed = threading.Event()

    async def lookup_accounts(self, ids: list[int]) -> list[Any]:
        await asyncio.sleep(self.delay_s)
        self.completed.set()
        return []


class _SlowSyncClient:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def lookup_accounts(self, ids: list[int]) -> list[Any]:
        time.sleep(self.delay_s)
        return []


def test_async_call_past_its_deadline_is_an_unknown_outcome() -> None:
    client = _SlowClient(0.3)
    ledger = Ledger(client, deadline_s=0.05, engine_name="fake")

    async def run() -> None:
        with pytest.raises(LedgerUnavailable, match="outcome is unknown"):
            await ledger.lookup_accounts([1])
        # The request itself was not cancelled inside the client: it completes.
        await asyncio.sleep(0.4)
        assert client.completed.is_set()

    asyncio.run(run())


def test_async_call_within_its_deadline_answers() -> None:
    ledger = Ledger(_SlowClient(0.01), deadline_s=1.0, engine_name="fake")
    assert asyncio.run(ledger.lookup_accounts([1])) == []


def test_sync_call_past_its_deadline_is_an_unknown_outcome() -> None:
    ledger = LedgerSync(_SlowSyncClient(0.3), deadline_s=0.05, engine_name="fake")
    with pytest.raises(LedgerUnavailable, match="retry with the same ids"):
        ledger.lookup_accounts([1])
    ledger.close()


def test_open_ledger_defaults_to_the_embedded_engine(tmp_path: Path) -> None:
    settings = LedgerSettings.from_env({"CREDIT_LEDGER_DATA_DIR": str(tmp_path)})
    assert settings.tb_addresses is None
    assert settings.data_dir == tmp_path / "engine"

    async def run() -> None:
        ledger = open_ledger(settings)
        assert ledger.engine_name == "embedded"
        await ledger.create_accounts([Account(id=7, ledger=1, code=1)])
        await ledger.close()

    asyncio.run(run())
    # The engine it opened was durable and closed with the ledger: it opens again.
    with EmbeddedEngine(tmp_path / "engine") as engine:
        assert [a.id for a in engine.client_sync().lookup_accounts([7])] == [7]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TB_CLUSTER_ID": "x"}, "TB_CLUSTER_ID must be an integer"),
        ({"TB_CLUSTER_ID": "-1"}, "TB_CLUSTER_ID must be a u128"),
        ({"TB_REQUEST_DEADLINE_S": "soon"}, "TB_REQUEST_DEADLINE_S must be a number"),
        ({"TB_REQUEST_DEADLINE_S": "0"}, "TB_REQUEST_DEADLINE_S must be positive"),
    ],
)
def test_bad_settings_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        LedgerSettings.from_env(env)


def test_cluster_settings_are_read() -> None:
    settings = LedgerSettings.from_env({"TB_ADDRESSES": "127.0.0.1:3000", "TB_CLUSTER_ID": "5"})
    assert settings.tb_addresses == "127.0.0.1:3000"
    assert settings.tb_cluster_id == 5


def test_the_functional_currency_is_read_and_checked() -> None:
    assert FinanceSettings.from_env({}).functional_currency == "USD"
    env = {"CREDIT_LEDGER_FUNCTIONAL_CURRENCY": "EUR"}
    assert FinanceSettings.from_env(env).functional_currency == "EUR"
    with pytest.raises(SettingsError, match="CREDIT_LEDGER_FUNCTIONAL_CURRENCY"):
        FinanceSettings.from_env({"CREDIT_LEDGER_FUNCTIONAL_CURRENCY": "euro"})
