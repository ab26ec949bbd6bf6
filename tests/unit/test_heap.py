"""The garbage-collection policy of the server process (ledger.heap)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from ledger import heap

pytestmark = pytest.mark.anyio


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_a_frozen_cycle_is_reclaimed_by_the_full_step_only() -> None:
    alive = _cycle()
    held = alive()  # alive at the freeze, garbage after it
    report = heap.freeze()
    assert report.frozen == gc.get_freeze_count() > 0
    del held
    gc.collect()
    assert alive() is not None, "a frozen cycle is not walked by ordinary collections"
    report = heap.full()
    assert alive() is None
    assert report.collected >= 2 and gc.get_freeze_count() > 0


def test_freeze_collects_what_died_before_it() -> None:
    alive = _cycle()
    report = heap.freeze()
    assert alive() is None and report.collected >= 2


def test_the_engine_process_freezes_what_its_requests_leave() -> None:
    """What a request leaves in the engine process (its transfers, now state) is in the
    permanent generation once the requests read are applied: no young collection walks it."""
    from ledger.embedded.process import _frame, _Requests

    kept: list[Any] = []

    class Engine:
        def apply(self, operation: int, argument: Any) -> tuple[list[Any], int]:
            kept.append([tuple(event) for event in argument])  # the state it leaves
            return [], 0

    requests = _Requests(cast(Any, Engine()), asyncio.Queue())
    frames = _frame(("create_accounts", [[1, 2], [3, 4]])) + _frame(("create_accounts", [[5]]))
    requests.data_received(frames[:10])  # a frame and a half: the rest comes next
    requests.data_received(frames[10:])
    assert len(kept) == 2 and all(gc.is_tracked(state) for state in kept)
    young_and_old = gc.get_objects()  # (the permanent generation is not listed)
    assert not any(o is state for state in kept for o in young_and_old)


def test_the_engine_process_requests_make_no_cyclic_garbage(tmp_path: Path) -> None:
    """A cycle a request makes in the engine process is frozen with the rest, and only the
    hourly full step would reclaim it: created, refused, malformed and unknown requests and
    reads (of the store, past small checkpoints) make none."""
    from ledger.embedded import EmbeddedEngine
    from ledger.embedded.engine import account_tuples, transfer_tuples
    from ledger.embedded.process import _Requests
    from ledger.types import Account, Transfer

    answers: asyncio.Queue[Any] = asyncio.Queue()
    with EmbeddedEngine(tmp_path, fsync=False, snapshot_bytes=32 * 1024) as engine:
        requests = _Requests(engine, answers)

        def send(operation: str, argument: Any) -> None:
            requests.on_frame((operation, argument))
            position, _ = answers.get_nowait()
            engine.wait(position)  # (as the process answers: the journal writes, checkpoints run)

        accounts = [Account(id=i, ledger=1, code=1) for i in (1, 2)]
        send("create_accounts", account_tuples(accounts))
        gc.collect()
        for n in range(200):
            transfers = [
                Transfer(
                    id=n * 10 + i + 1,
                    debit_account_id=1,
                    credit_account_id=2,
                    amount=1,
                    ledger=1,
                    code=1,
                )
                for i in range(10)
            ]
            transfers.append(  # refused: no such account
                Transfer(id=10**9 + n, debit_account_id=1, credit_account_id=99, ledger=1, code=1)
            )
            send("create_transfers", transfer_tuples(transfers))
            send("create_transfers", "not a list of transfers")
            send("no such operation", None)
            send("lookup_transfers", [1, n * 10 + 1, 10**12])
            send("query_transfers", (0, 0, 0, 0, 0, 1, 0, 50, n % 2))
        assert engine.store is not None and engine.store.visible_ts > 0  # (reads saw the store)
        assert gc.collect() == 0


async def test_manage_heap_runs_its_steps_and_restores_the_collector() -> None:
    before = gc.get_threshold()
    policy = heap.HeapPolicy(freeze_every_s=0.01, full_every_s=0.05, young_threshold=12_345)
    task = asyncio.create_task(heap.manage_heap(policy))
    await asyncio.sleep(0.02)
    assert gc.get_threshold()[0] == 12_345
    assert gc.get_freeze_count() > 0
    doomed = _cycle()
    held = doomed()
    gc.freeze()  # alive at a freeze, garbage after it
    del held
    await asyncio.sleep(0.15)  # past a full step
    assert doomed() is None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
