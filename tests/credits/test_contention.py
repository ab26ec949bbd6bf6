"""Zero overdraft under contention: many concurrent spends on one hard-limited wallet.

Runs on the embedded engine, and on a real cluster too when TB_ADDRESSES is set.
"""

from __future__ import annotations

import asyncio

import pytest

from grants.errors import BudgetExceeded, InsufficientCredits
from tests.credits.conftest import AGENT, World


def _race(world: World, calls: list) -> tuple[int, int]:  # type: ignore[type-arg]
    async def attempt(call) -> bool:  # type: ignore[no-untyped-def]
        try:
            await call
        except (InsufficientCredits, BudgetExceeded):
            return False
        return True

    async def all_of() -> list[bool]:
        return await asyncio.gather(*(attempt(c) for c in calls))

    outcomes = world.run(all_of())
    return sum(outcomes), len(outcomes) - sum(outcomes)


@pytest.mark.parametrize("kind", ["reserve", "debit"])
def test_200_concurrent_spends_of_7_on_1000(any_world: World, kind: str) -> None:
    world = any_world
    wallet = world.wallet(AGENT)
    grants = [world.grant(wallet, 400), world.grant(wallet, 600)]
    spend = world.reserve_async if kind == "reserve" else world.debit_async
    succeeded, refused = _race(world, [spend(7) for _ in range(200)])
    assert (succeeded, refused) == (142, 58)
    accounts = [world.account(g.id) for g in grants]
    assert all(a.debits_posted + a.debits_pending <= a.credits_posted for a in accounts)
    assert sum(a.credits_posted - a.debits_posted - a.debits_pending for a in accounts) == 6


def test_a_budget_as_the_binding_limit(any_world: World) -> None:
    world = any_world
    wallet = world.wallet(AGENT)
    world.grant(wallet, 10_000)
    world.budget(AGENT, 1000)
    succeeded, refused = _race(world, [world.debit_async(7) for _ in range(200)])
    assert (succeeded, refused) == (142, 58)
    assert world.check(7).reason == "budget_exceeded"
