"""A child process for the crash test: applies requests from several threads, forever.

Prints `S <id>` before submitting a linked pair of transfers and `A <id>` once the engine has
acknowledged it; the parent kills it with SIGKILL at a random moment (often while a checkpoint
is being written). With `ingest`, its checkpoints go through the checkpointer process, which
the kill leaves running until it next reads.
"""

from __future__ import annotations

import sys
import threading

from ledger.embedded import EmbeddedEngine
from ledger.types import Account, AccountFlags, CreateTransferStatus, Transfer, TransferFlags

THREADS = 4
# A checkpoint every few dozen requests, and a history store whose cache (256 KiB) the history
# soon outgrows: kills land in checkpoints too, and reads after a restart come from disk.
SMALL = {"snapshot_bytes": 8192, "cache_bytes": 256 * 1024, "id_filter_bits_log2": 16}


def main(data_dir: str, first_id: int, ingest: bool) -> None:
    engine = EmbeddedEngine(data_dir, **SMALL)
    if ingest:  # every checkpoint through the checkpointer process, as large ones go
        assert engine.store is not None
        engine.store.ingest_min = 0
    client = engine.client_sync()
    client.create_accounts(
        [
            Account(id=1, ledger=1, code=1),
            Account(id=2, ledger=1, code=1, flags=AccountFlags.HISTORY),
            Account(id=3, ledger=1, code=1),
        ]
    )
    out = threading.Lock()

    def say(line: str) -> None:
        with out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def work(thread: int) -> None:
        n = 0
        while True:
            tid = first_id + (n * THREADS + thread) * 2
            n += 1
            pair = [
                Transfer(
                    id=tid,
                    debit_account_id=1,
                    credit_account_id=2,
                    amount=3,
                    ledger=1,
                    code=1,
                    flags=TransferFlags.LINKED,
                ),
                Transfer(
                    id=tid + 1, debit_account_id=2, credit_account_id=3, amount=1, ledger=1, code=1
                ),
            ]
            say(f"S {tid}")
            results = client.create_transfers(pair)
            assert all(r.status == CreateTransferStatus.CREATED for r in results), results
            say(f"A {tid}")

    for thread in range(THREADS):
        threading.Thread(target=work, args=(thread,), daemon=True).start()
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["ingest"])
