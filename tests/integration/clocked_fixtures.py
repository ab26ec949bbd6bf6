"""The fixtures of the tests that run a control plane on a clock of their own: a database of
their own (cloned from the migrated template), the clock (January 10, moved by the test) and a
control plane whose engine and service read it. Import them into a test module:
`from tests.integration.clocked_fixtures import clock, plane, pool  # noqa: F401`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from ledger import db
from ledger.clock import ManualClock
from tests.integration.projection_support import clocked_plane, january_clock, own_pool
from wallets.control import ControlPlane


@pytest.fixture
async def pool(fresh_db_url: Callable[..., str], template_db: str) -> AsyncIterator[db.Pool]:
    async for made in own_pool(fresh_db_url, template_db):
        yield made


@pytest.fixture
def clock() -> ManualClock:
    return january_clock()


@pytest.fixture
async def plane(pool: db.Pool, clock: ManualClock) -> AsyncIterator[ControlPlane]:
    async for made in clocked_plane(pool, clock):
        yield made
