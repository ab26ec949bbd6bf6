"""A settle after its reservation timed out is collected by a direct debit (the fallback): its
entries should carry the reservation's dimensions and wallet, as a settle in time does.

They do not yet (found by bench.projection_kill): the fallback chain is a header and the
overage legs (`wallets.chains.overage_legs`, from index 0), whose set-up and check legs carry
the settle's own operation id, not the wallet and the dimension set a drain chain carries. So
its entries have no dimensions; under `cap` their wallet is the block's owner (a fall-through
spend is attributed to the parent), and under `reject` and `overdraft` the classifier takes the
chain for a legacy drain chain: its wallet is the operation id, no wallet at all, so the
entries have no resource or customer and their consumption is left out of the usage rollups.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ledger import db
from ledger.repositories._rows import to_uuid
from ledger.repositories.dimensions import get_dimension_sets
from tests.integration.test_projection import (
    TENANT,
    feed_of,
    grant,
    plane,  # noqa: F401 (the fixture)
    rows,
    world,
)
from wallets.chains import Overage
from wallets.control import ControlPlane

pytestmark = pytest.mark.anyio


async def test_a_settle_after_the_timeout_keeps_the_reservations_dimensions_and_wallet(
    plane: ControlPlane,  # noqa: F811 (the fixture)
    pool: db.Pool,
) -> None:
    wallet, customer = await world(plane, 40)
    await grant(plane, wallet, "fb-g", 1000)
    svc = plane.service
    late = {"feature": "late", "model": "m1"}
    held = {
        policy: await svc.reserve(
            tenant=TENANT,
            key=f"fb-r-{policy}",
            amount=20,
            ledger=wallet.ledger,
            wallet_id=wallet.id,
            timeout_s=1,
            dimensions=late,
        )
        for policy in Overage
    }
    await asyncio.sleep(1.2)
    settled = {
        policy: await svc.settle(
            tenant=TENANT,
            key=f"fb-s-{policy}",
            reservation_id=reservation.reservation_id,
            amount=25,
            policy=policy,
        )
        for policy, reservation in held.items()
    }
    assert all(s.fallback_debit and s.collected == 25 for s in settled.values())
    await feed_of(plane).catch_up()
    found: list[tuple[Any, ...]] = await rows(
        pool,
        "SELECT operation_id, kind, amount, wallet_id, customer_id, dimension_set_id"
        " FROM ledger_entries WHERE operation_id = ANY(%s)",
        [to_uuid(s.operation_id) for s in settled.values()],
    )
    async with pool.connection() as conn:
        sets = await get_dimension_sets(conn, {r[5].int for r in found if r[5] is not None})
    policy_of = {to_uuid(s.operation_id): policy.value for policy, s in settled.items()}

    def named(set_id: Any) -> str | None:
        return None if set_id is None else str(sorted(sets[set_id.int].items()))

    got = {
        (policy_of[op], kind, int(amount), wallet_id, customer_id, named(set_id))
        for op, kind, amount, wallet_id, customer_id, set_id in found
    }
    entry = (to_uuid(wallet.id), to_uuid(customer), str(sorted(late.items())))
    assert got == {(policy.value, "debit", -25, *entry) for policy in Overage}
