"""Typed engine settings, read once from the environment at the composition root."""

from __future__ import annotations

import os
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
