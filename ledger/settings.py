"""Typed engine settings, read once from the environment at the composition root."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ledger.limits import CLUSTER_REQUEST_DEADLINE_S_DEFAULT


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class LedgerSettings:
    # Comma-separated replica addresses of a real TigerBeetle cluster; None: embedded engine.
    tb_addresses: str | None = None
    tb_cluster_id: int = 0
    # Where the embedded engine keeps its journal and snapshots.
    data_dir: Path = Path(".data/engine")
    request_deadline_s: float = CLUSTER_REQUEST_DEADLINE_S_DEFAULT
    # The embedded engine in a process of its own (`ledger.embedded.process`), as the server
    # runs it; False: in this process.
    engine_process: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LedgerSettings:
        env = os.environ if env is None else env
        addresses = env.get("TB_ADDRESSES", "").strip() or None
        try:
            cluster_id = int(env.get("TB_CLUSTER_ID", "0"))
        except ValueError:
            raise SettingsError("TB_CLUSTER_ID must be an integer") from None
        if not 0 <= cluster_id < 1 << 128:
            raise SettingsError("TB_CLUSTER_ID must be a u128")
        try:
            deadline_s = float(env.get("TB_REQUEST_DEADLINE_S", CLUSTER_REQUEST_DEADLINE_S_DEFAULT))
        except ValueError:
            raise SettingsError("TB_REQUEST_DEADLINE_S must be a number of seconds") from None
        if not deadline_s > 0:
            raise SettingsError("TB_REQUEST_DEADLINE_S must be positive")
        data_dir = Path(env.get("CREDIT_LEDGER_DATA_DIR", ".data"))
        return cls(addresses, cluster_id, data_dir / "engine", deadline_s)


# The currency the service's books are kept in, when the environment does not say.
FUNCTIONAL_CURRENCY_DEFAULT = "USD"


@dataclass(frozen=True)
class FinanceSettings:
    # ISO 4217 code of the functional currency: a block's `exchange_rate` is in units of it per
    # unit of the block's currency (`CREDIT_LEDGER_FUNCTIONAL_CURRENCY`).
    functional_currency: str = FUNCTIONAL_CURRENCY_DEFAULT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FinanceSettings:
        env = os.environ if env is None else env
        currency = env.get("CREDIT_LEDGER_FUNCTIONAL_CURRENCY", "").strip()
        currency = currency or FUNCTIONAL_CURRENCY_DEFAULT
        if not re.fullmatch(r"[A-Z]{3}", currency):
            raise SettingsError(
                "CREDIT_LEDGER_FUNCTIONAL_CURRENCY must be an ISO 4217 code (three capitals)"
            )
        return cls(currency)
