"""Data directories written by earlier engines (tests/fixtures/make_engine_fixture.py) open,
answer every read as those engines did, and are upgraded on the way: format 1 (a snapshot and
a journal tail, the engine before the history store, commit 92b27bc) into the store; format 2
(the store with every account in one value, commit 59381d0) into a key per account."""

from __future__ import annotations

import json
import marshal
import shutil
from pathlib import Path
from typing import Any

from ledger.clock import ManualClock
from ledger.embedded import EmbeddedEngine
from ledger.types import (
    AccountFilter,
    AccountFilterFlags,
    CreateTransferStatus,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
    TransferFlags,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BOTH = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS
TRANSFER_FIELDS = (
    *("id", "debit_account_id", "credit_account_id", "amount", "pending_id", "user_data_128"),
    *("user_data_64", "user_data_32", "timeout", "ledger", "code", "flags", "timestamp"),
)
ACCOUNT_FIELDS = (
    *("id", "debits_pending", "debits_posted", "credits_pending", "credits_posted"),
    *("timestamp", "flags"),
)


def _account_filter(**fields: Any) -> AccountFilter:
    base = dict(user_data_128=0, user_data_64=0, user_data_32=0, code=0)
    base.update(timestamp_min=0, timestamp_max=0)
    base.update(fields)
    return AccountFilter(**base)


def _query_filter(**fields: Any) -> QueryFilter:
    base = dict(user_data_128=0, user_data_64=0, user_data_32=0, ledger=0, code=0)
    base.update(timestamp_min=0, timestamp_max=0, flags=0)
    base.update(fields)
    return QueryFilter(**base)


def _rows(transfers: list[Any]) -> list[list[int]]:
    return [[int(getattr(t, name)) for name in TRANSFER_FIELDS] for t in transfers]


def _reads(client: Any, max_id: int) -> dict[str, Any]:
    return {
        "accounts": [
            [int(getattr(a, name)) for name in ACCOUNT_FIELDS]
            for a in client.lookup_accounts([1, 2, 3, 4])
        ],
        "lookup": _rows(client.lookup_transfers(list(range(1000, max_id + 2)))),
        "account_1": _rows(
            client.get_account_transfers(_account_filter(account_id=1, limit=8189, flags=BOTH))
        ),
        "account_2_reversed_code_1": _rows(
            client.get_account_transfers(
                _account_filter(
                    account_id=2, code=2, limit=5, flags=BOTH | AccountFilterFlags.REVERSED
                )
            )
        ),
        "balances_2": [
            [b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted, b.timestamp]
            for b in client.get_account_balances(
                _account_filter(account_id=2, limit=8189, flags=BOTH)
            )
        ],
        "query_u128_3": _rows(client.query_transfers(_query_filter(user_data_128=3, limit=8189))),
        "query_code_9_reversed": _rows(
            client.query_transfers(_query_filter(code=9, limit=10, flags=QueryFilterFlags.REVERSED))
        ),
    }


def test_a_format_1_directory_is_upgraded_and_reads_as_before(tmp_path: Path) -> None:
    expected = json.loads((FIXTURES / "engine-format-1.json").read_text())
    directory = tmp_path / "data"
    shutil.copytree(FIXTURES / "engine-format-1", directory)
    assert list(directory.glob("snapshot-*.bin"))  # format 1: a snapshot and a journal tail
    clock = ManualClock(start_ns=expected["clock_ns"])
    with EmbeddedEngine(directory, clock_ns=clock) as engine:
        assert engine.upgraded and engine.replayed_records > 0
        assert engine.store is not None and engine.store.count() == len(expected["lookup"])
        reads = _reads(engine.client_sync(), expected["max_id"])
    for name, rows in reads.items():
        assert rows == expected[name], name
    assert not list(directory.glob("snapshot-*.bin"))
    assert len(list(directory.glob("journal-*.log"))) == 1

    # Opened again, it is a directory of the store's format: nothing to upgrade or replay, and
    # ids of every age keep their meaning.
    with EmbeddedEngine(directory, clock_ns=clock) as engine:
        assert not engine.upgraded and engine.replayed_records == 0
        client = engine.client_sync()
        assert _reads(client, expected["max_id"]) == reads
        first = expected["lookup"][0]
        again = Transfer(
            id=first[0],
            debit_account_id=first[1],
            credit_account_id=first[2],
            amount=first[3],
            user_data_128=first[5],
            user_data_64=first[6],
            user_data_32=first[7],
            ledger=first[9],
            code=first[10],
        )
        orphan = 1008  # its first use exceeded the debit account's credits
        voided = next(t for t in expected["lookup"] if t[11] & TransferFlags.VOID_PENDING_TRANSFER)
        post = Transfer(
            id=expected["max_id"] + 10,
            pending_id=voided[4],
            amount=2**128 - 1,
            flags=TransferFlags.POST_PENDING_TRANSFER,
        )
        results = client.create_transfers(
            [
                again,
                Transfer(
                    id=orphan, debit_account_id=1, credit_account_id=2, amount=1, ledger=7, code=1
                ),
                post,
            ]
        )
        assert [r.status for r in results] == [
            CreateTransferStatus.EXISTS,
            CreateTransferStatus.ID_ALREADY_FAILED,
            CreateTransferStatus.PENDING_TRANSFER_ALREADY_VOIDED,
        ]


def _live_keys(directory: Path) -> dict[bytes, Any]:
    """The store's M keys (its live state), read with no engine open: the accounts' (Mc and
    the account's timestamp) and pending transfers' decoded, the state's format."""
    from rocksdict import AccessType, Options, Rdict, ReadOptions

    db = Rdict(
        str(directory / "history"), Options(raw_mode=True), access_type=AccessType.read_only()
    )
    bound = ReadOptions()
    bound.set_iterate_upper_bound(b"N")
    try:
        return {key: marshal.loads(value) for key, value in db.items(from_key=b"M", read_opt=bound)}
    finally:
        db.close()


def test_a_format_2_directory_writes_its_accounts_as_keys_at_its_next_checkpoint(
    tmp_path: Path,
) -> None:
    expected = json.loads((FIXTURES / "engine-format-2.json").read_text())
    directory = tmp_path / "data"
    shutil.copytree(FIXTURES / "engine-format-2", directory)
    before = _live_keys(directory)
    assert before[b"Mstate"][0] == 2 and len(before[b"Maccounts"]) == 4
    assert not [key for key in before if key.startswith(b"Mc")]
    clock = ManualClock(start_ns=expected["clock_ns"])
    with EmbeddedEngine(directory, clock_ns=clock) as engine:
        assert not engine.upgraded and engine.replayed_records > 0
        assert engine.store is not None and engine.store.count() > 0
        reads = _reads(engine.client_sync(), expected["max_id"])
        assert reads == {name: expected[name] for name in reads}
        engine.snapshot()  # the first checkpoint: every account, from the one value
    after = _live_keys(directory)
    assert after[b"Mstate"][0] == 3 and b"Maccounts" not in after
    accounts = [value for key, value in after.items() if key.startswith(b"Mc")]
    assert [a[0] for a in accounts] == [1, 2, 3, 4]
    assert [[a[1], a[2], a[3], a[4]] for a in accounts] == [
        row[1:5] for row in expected["accounts"]
    ]

    with EmbeddedEngine(directory, clock_ns=clock) as engine:
        assert engine.replayed_records == 0
        client = engine.client_sync()
        reads = _reads(client, expected["max_id"])
        assert reads == {name: expected[name] for name in reads}
        moved = client.create_transfers(
            [
                Transfer(
                    id=expected["max_id"] + 1,
                    debit_account_id=1,
                    credit_account_id=3,
                    amount=7,
                    ledger=7,
                    code=1,
                )
            ]
        )
        assert [r.status for r in moved] == [CreateTransferStatus.CREATED]
        store = engine.store
        assert store is not None
        written: list[list[int]] = []
        write = store.write

        def recording(checkpoint: Any) -> None:
            written.append(sorted(a[0] for a in checkpoint.accounts))
            write(checkpoint)

        store.write = recording  # type: ignore[method-assign]
        engine.snapshot()
        assert written == [[1, 3]]  # a store of format 3: only the accounts that changed
        balances = _reads(client, expected["max_id"])["accounts"]
    with EmbeddedEngine(directory, clock_ns=clock) as engine:
        assert engine.replayed_records == 0
        assert _reads(engine.client_sync(), expected["max_id"])["accounts"] == balances
    assert balances[0][2] == expected["accounts"][0][2] + 7  # debits posted of account 1
