"""A short tour of the ledger engine: `./dev tour` (or `python -m ledger.tour`).

Runs on the embedded engine in `--data-dir` (default `.data/tour`), or on a real cluster when
TB_ADDRESSES is set, and prints what happens: accounts with a balance constraint, a transfer, a
refused overdraft, a reservation that times out by itself, a linked chain that rolls back, and
on the embedded engine, a restart that replays the journal.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from ledger.client import LedgerSync, open_ledger_sync
from ledger.settings import LedgerSettings
from ledger.types import (
    Account,
    AccountFlags,
    CreateAccountResult,
    CreateTransferResult,
    Transfer,
    TransferFlags,
    new_id,
)


def _show(ledger: LedgerSync, names: dict[int, str]) -> None:
    print(f"    {'account':<10}{'debits':>10}{'(pending)':>11}{'credits':>10}{'(pending)':>11}")
    for a in ledger.lookup_accounts(list(names)):
        print(
            f"    {names[a.id]:<10}{a.debits_posted:>10}{a.debits_pending:>11}"
            f"{a.credits_posted:>10}{a.credits_pending:>11}"
        )


def _say(step: str, results: Sequence[CreateAccountResult | CreateTransferResult]) -> None:
    statuses = ", ".join(r.status.name.lower() for r in results)
    print(f"\n{step}\n    -> {statuses}")


def tour(ledger: LedgerSync) -> None:
    issuance, wallet, consumed = new_id(), new_id(), new_id()
    names = {issuance: "issuance", wallet: "wallet", consumed: "consumed"}
    ledger_id = 1
    _say(
        "Three accounts; the wallet may never spend more than it was given:",
        ledger.create_accounts(
            [
                Account(id=issuance, ledger=ledger_id, code=101),
                Account(
                    id=wallet,
                    ledger=ledger_id,
                    code=200,
                    flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.HISTORY,
                ),
                Account(id=consumed, ledger=ledger_id, code=110),
            ]
        ),
    )

    def move(
        dr: int, cr: int, amount: int, flags: TransferFlags = TransferFlags.NONE, timeout: int = 0
    ) -> Transfer:
        return Transfer(
            id=new_id(),
            debit_account_id=dr,
            credit_account_id=cr,
            amount=amount,
            ledger=ledger_id,
            code=1,
            flags=flags,
            timeout=timeout,
        )

    _say("Grant 1,000 credits:", ledger.create_transfers([move(issuance, wallet, 1000)]))
    _say("Spend 300:", ledger.create_transfers([move(wallet, consumed, 300)]))
    _say(
        "Try to spend 800 (only 700 left):", ledger.create_transfers([move(wallet, consumed, 800)])
    )
    _say(
        "Reserve 200 for 1 second (a pending transfer with a timeout):",
        ledger.create_transfers(
            [move(wallet, consumed, 200, flags=TransferFlags.PENDING, timeout=1)]
        ),
    )
    _show(ledger, names)
    print("\n(waiting 1.5 s for the reservation to time out by itself)")
    time.sleep(1.5)
    _show(ledger, names)
    _say(
        "A linked chain whose second leg overdraws: all or nothing:",
        ledger.create_transfers(
            [move(wallet, consumed, 100, flags=TransferFlags.LINKED), move(wallet, consumed, 900)]
        ),
    )
    _show(ledger, names)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A short tour of the ledger engine.")
    parser.add_argument("--data-dir", type=Path, default=Path(".data/tour"))
    args = parser.parse_args(argv)
    settings = LedgerSettings.from_env()
    if not settings.tb_addresses:
        settings = LedgerSettings(data_dir=args.data_dir)
        print(f"embedded engine, journal in {args.data_dir}/")
    else:
        print(f"TigerBeetle cluster at {settings.tb_addresses}")
    ledger = open_ledger_sync(settings)
    try:
        tour(ledger)
    finally:
        ledger.close()
    if not settings.tb_addresses:
        from ledger.embedded import EmbeddedEngine

        with EmbeddedEngine(args.data_dir) as engine:
            print(
                f"\nRestarted: replayed {engine.replayed_records} journal records; "
                f"{len(engine.state.accounts)} accounts, {len(engine.state.transfers)} transfers "
                "in the ledger (every run of the tour adds its own)."
            )


if __name__ == "__main__":
    main()
