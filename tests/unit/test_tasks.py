"""`stop_tasks` ends a task whose cancellation was swallowed (Python 3.11's `wait_for` race),
and gives up on one that never ends instead of hanging."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ledger.tasks import stop_tasks

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_task_that_loses_a_cancellation_is_cancelled_again() -> None:
    """A loop that runs until cancelled, and loses the first cancellation it gets, as one does
    on Python 3.11 when the cancellation arrives as a `wait_for` it awaits completes."""
    lost: list[bool] = []

    async def loses_its_first_cancellation() -> None:
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost.append(True)

    task = asyncio.create_task(loses_its_first_cancellation())
    await asyncio.sleep(0)
    assert await stop_tasks([task], grace_s=5.0) == []
    assert task.cancelled() and lost == [True]


async def test_a_task_that_never_ends_is_given_up_after_the_grace_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(1.0)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.ERROR, logger="ledger.tasks"):
        left = await stop_tasks([task], grace_s=0.3)
    assert left == [task] and not task.done()
    assert 0.3 <= loop.time() - started < 2.0
    assert "stubborn" in caplog.text and "did not stop" in caplog.text
    release.set()
    await asyncio.wait([task], timeout=2.0)
    assert task.done()


async def test_tasks_already_ended_or_failed_are_not_raised() -> None:
    async def fails() -> None:
        raise RuntimeError("ended early")

    async def runs() -> None:
        await asyncio.Event().wait()

    failed = asyncio.create_task(fails())
    running = asyncio.create_task(runs())
    await asyncio.sleep(0)
    assert failed.done()
    assert await stop_tasks([failed, running]) == []
    assert running.cancelled()
    assert isinstance(failed.exception(), RuntimeError)
