"""Stopping background tasks for sure.

`task.cancel()` followed by `await task` can wait forever on Python 3.11: `asyncio.wait_for`
there returns the awaited result, and drops the cancellation, when both arrive in the same turn
of the loop (gh-86296, fixed in 3.12). psycopg_pool waits for a connection through `wait_for`,
and so does our ledger client; a loop that runs until it is cancelled (the catalog listener,
the projection) then goes on running, and whatever awaits it hangs. A service stopping during
such a race never stopped (a test run waited out CI's whole budget on one).

`stop_tasks` cancels again, a second apart, until each task has ended, and gives up, loudly,
after a grace period rather than hang a shutdown. The second lets a task's own clean-up on
cancellation finish (a cancellation again would cut it short): tasks whose clean-up takes
longer (ending a child process) and that await nothing that can lose a cancellation are
cancelled once, as before (`cli._Beside`, the engine's supervisor).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

_logger = logging.getLogger(__name__)

# Between two cancellations of a task that is still running.
RECANCEL_S = 1.0
# After this, the tasks still running are logged and left to the event loop's end.
STOP_GRACE_S = 10.0


async def stop_tasks(
    tasks: Iterable[asyncio.Future[Any]], *, grace_s: float = STOP_GRACE_S
) -> list[asyncio.Future[Any]]:
    """Cancels `tasks` and waits until all have ended, cancelling again every `RECANCEL_S` the
    ones still running. Returns the ones still running after `grace_s` (logged as
    errors); what the others raised is theirs to report (a done callback), not raised here."""
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while pending:
        remaining = deadline - loop.time()
        if remaining <= 0:
            for task in pending:
                _logger.error("%r did not stop within %.1f s of being cancelled", task, grace_s)
            return list(pending)
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_S, remaining))
    return []
