"""Property tests of the finance subledger over random histories, on the embedded engine and
Postgres: grants paid and promotional in several currencies, debits, reservations settled in
part or not at all, timeouts, expiries, rollovers (with a max and a floor), voids, refunds in
money, usage refunds (corrections) and month closes, under remote or proportional breakage.
Whatever the history:
- every journal balances, and the rollforward's check is 0 in every month;
- the blocks' remaining obligations (what the aging report buckets) add up to the closing
  deferred balance;
- every block that is used up, expired or voided has posted exactly its consideration out of
  the liability (usage + breakage + refunds of unused value = consideration);
- the projection and the journals agree block by block;
- a closed month's rows never change afterwards.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from finance import balances, periods
from finance.posting import Poster
from grants.errors import CreditError
from grants.model import Category, RolloverPolicy
from ledger import db
from ledger.clock import ManualClock, datetime_of_ns
from ledger.embedded import EmbeddedEngine
from ledger.repositories import finance as repo
from ledger.repositories.resources import ResourceKind
from tests.conftest import SETTINGS
from tests.integration.projection_support import check_of, plane_on
from wallets.control import ControlPlane, GrantRequest
from wallets.projection import ProjectionFeed

S = 1_000_000_000
START = dt.datetime(2025, 1, 10, 9, tzinfo=dt.UTC)
LEDGER = 41
TENANT = 3
CURRENCIES = {"USD": None, "EUR": "1.0842", "JPY": "0.0067"}

Step = tuple[Any, ...]
grants = st.tuples(
    st.just("grant"),
    st.sampled_from(["USD", "EUR", "JPY", "promo"]),
    st.integers(1, 500),  # credits
    st.integers(0, 99_999),  # consideration
    st.sampled_from([None, 1, 5, 20, 45, 400]),  # days to expiry
    # A rollover policy (max, min) for a block that expires: into a block living 30 days more.
    st.sampled_from([None, None, (50, 0), (500, 100), (30, 30)]),
)
debits = st.tuples(st.just("debit"), st.integers(1, 300))
steps = st.lists(
    st.one_of(
        grants,
        grants,
        debits,
        debits,
        st.tuples(
            st.just("reserve"),
            st.integers(1, 300),
            st.sampled_from(["none", "part", "all", "more", "release"]),
        ),
        st.tuples(st.just("wait"), st.sampled_from([60, 3600, 86_400, 10 * 86_400, 25 * 86_400])),
        st.tuples(st.just("void"), st.integers(0, 50)),
        st.tuples(st.just("refund"), st.integers(0, 50), st.integers(0, 400), st.booleans()),
        st.tuples(st.just("unuse"), st.integers(0, 50), st.integers(1, 100)),
        st.tuples(st.just("close")),
    ),
    min_size=8,
    max_size=40,
)


class World:
    def __init__(self, plane: ControlPlane, clock: ManualClock, wallet_id: int) -> None:
        self.plane = plane
        self.clock = clock
        self.wallet_id = wallet_id
        self.feed = ProjectionFeed(plane.service.ledger, plane.pool, clock_ns=clock)
        self.poster = Poster(plane.pool, entries_max=7)
        self.blocks: list[int] = []
        self.debits: list[int] = []
        self.n = 0

    def key(self, what: str) -> str:
        self.n += 1
        return f"{what}-{self.n}"

    async def run(self, step: Step) -> None:
        name = step[0]
        if name == "close":
            await self.close()  # a refusal here is a failure: every check must pass
            return
        try:
            await getattr(self, name)(*step[1:])
        except CreditError:
            pass  # not enough credits, nothing to refund: business outcomes, nothing moved

    async def grant(
        self,
        currency: str,
        credits: int,
        paid: int,
        days: int | None,
        rollover: tuple[int, int] | None = None,
    ) -> None:
        now = datetime_of_ns(self.clock())
        promo = currency == "promo"
        expires_at = None if days is None else now + dt.timedelta(days=days)
        request = GrantRequest(
            wallet_id=self.wallet_id,
            amount=credits,
            category=Category.PROMOTIONAL if promo else Category.PAID,
            consideration_minor=0 if promo else paid,
            currency=None if promo else currency,
            exchange_rate=None if promo else CURRENCIES[currency],
            expires_at=expires_at,
            rollover=None
            if rollover is None or expires_at is None
            else RolloverPolicy(
                max_credits=rollover[0],
                min_credits=rollover[1],
                expires_at=expires_at + dt.timedelta(days=30),
            ),
        )
        result, _ = await self.plane.issue_grant(
            request, tenant=TENANT, key=self.key("g"), actor="prop"
        )
        self.blocks.append(result.grant_id)

    async def debit(self, amount: int) -> None:
        result = await self.plane.service.debit(
            tenant=TENANT, key=self.key("d"), amount=amount, ledger=LEDGER, wallet_id=self.wallet_id
        )
        self.debits.append(result.operation_id)

    async def reserve(self, amount: int, then: str) -> None:
        svc = self.plane.service
        held = await svc.reserve(
            tenant=TENANT,
            key=self.key("r"),
            amount=amount,
            ledger=LEDGER,
            wallet_id=self.wallet_id,
            timeout_s=1800,
        )
        if then == "release":
            await svc.release(tenant=TENANT, key=self.key("x"), reservation_id=held.reservation_id)
        elif then != "none":
            settle = {"part": amount // 2, "all": amount, "more": amount + 7}[then]
            await svc.settle(
                tenant=TENANT, key=self.key("s"), reservation_id=held.reservation_id, amount=settle
            )

    async def wait(self, seconds: int) -> None:
        self.clock.advance(seconds)
        await self.plane.sweep(self.clock())

    async def void(self, pick: int) -> None:
        if self.blocks:
            block = self.blocks[pick % len(self.blocks)]
            await self.plane.void_grant(block, tenant=TENANT, key=self.key("v"), actor="prop")

    async def refund(self, pick: int, money: int, everything: bool) -> None:
        if self.blocks:
            block = self.blocks[pick % len(self.blocks)]
            await self.plane.refund_grant(
                block,
                amount=None if everything else 1 + money % 20,
                refund_minor=money,
                tenant=TENANT,
                key=self.key("m"),
                actor="prop",
            )

    async def unuse(self, pick: int, amount: int) -> None:
        if self.debits:
            debit = self.debits[pick % len(self.debits)]
            await self.plane.refund(debit, amount, tenant=TENANT, key=self.key("u"), actor="prop")

    async def close(self) -> None:
        """Closes every month that has ended, in order (the checks must pass)."""
        await self.feed.catch_up()
        await self.feed.step()
        checker = check_of(self.plane)

        async def reconciled() -> bool:
            return (await checker.run_to_watermark()).clean

        async with self.plane.pool.connection() as conn:
            closed = await repo.periods(conn)
        month = repo.next_period(closed[-1].period_start) if closed else START.date().replace(day=1)
        while periods.period_end_ns(month) <= self.clock():
            await periods.close_period(
                self.plane.pool,
                month,
                actor="prop",
                clock_ns=self.clock,
                poster=self.poster,
                check_projection=reconciled,
            )
            month = repo.next_period(month)


async def _snapshot(pool: db.Pool, month: dt.date) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT j.id, j.seq, j.kind, j.credits, l.line, l.account, l.debit_minor,"
            " l.credit_minor, l.functional_debit_minor, l.functional_credit_minor"
            " FROM finance_journals j JOIN finance_journal_lines l"
            " ON l.journal_id = j.id AND l.posting_period = j.posting_period"
            " WHERE j.posting_period = %s ORDER BY j.seq, l.line",
            (month,),
        )
        return list(await cursor.fetchall())


async def _check(world: World) -> None:
    pool = world.plane.pool
    await world.feed.catch_up()
    await world.poster.catch_up()
    async with pool.connection() as conn:
        state = await repo.read_state(conn)
        closed = [p.period_start for p in await repo.periods(conn)]
        active = await repo.active_periods(conn)
        for month in active:
            assert await repo.unbalanced_journals(conn, month) == 0, month
            assert (
                await repo.block_differences(conn, month, state.watermark_ts, _base(closed, month))
                == []
            ), month
            rows = await balances.rollforward(conn, month)
            blocks = await balances.period_blocks(conn, month)
            for row in rows:
                assert row.check_minor == 0, row
                remaining = sum(b.remaining_minor for b in blocks if b.currency == row.currency)
                assert remaining == row.closing_minor, (row, remaining)
        cursor = await conn.execute(
            """
            SELECT fb.block_id, fb.consideration_minor, fb.credits, fb.credits_out,
                   fb.accrued_minor,
                   (SELECT coalesce(sum(l.debit_minor - l.credit_minor), 0)
                    FROM finance_journals j JOIN finance_journal_lines l
                      ON l.journal_id = j.id AND l.posting_period = j.posting_period
                    WHERE j.block_id = fb.block_id AND l.account = '2100' AND j.kind <> 'purchase'
                      -- a rollover block's birth is its purchase
                      AND NOT (j.kind = 'rollover' AND l.credit_minor > 0))
            FROM finance_blocks fb WHERE fb.category = 'paid'
            """
        )
        for block, consideration, credits, out, accrued, posted_out in await cursor.fetchall():
            if out == credits:
                assert accrued == 0
                assert posted_out == consideration, (block, consideration, posted_out)
            else:
                assert 0 <= posted_out <= consideration


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=steps, breakage=st.sampled_from(["remote", "0.1", "0.35"]))
def test_random_histories_keep_the_books_exact(
    history: list[Step], breakage: str, fresh_db_url: Callable[..., str], template_db: str
) -> None:
    note(f"history: {history!r}, breakage: {breakage}")  # a failure's report shows them
    asyncio.run(_scenario(history, breakage, fresh_db_url(template_db)))


async def _scenario(history: list[Step], breakage: str, url: str) -> None:
    repo.forget_partitions()
    clock = ManualClock(start_ns=int(START.timestamp()) * S)
    pool = await db.open_pool(SETTINGS, conninfo=url)
    try:
        with EmbeddedEngine(clock_ns=clock) as engine:
            plane = plane_on(pool, engine, clock)
            world = await _setup(plane, clock)
            if breakage != "remote":  # proportional breakage for every block of the product
                async with pool.connection() as conn:
                    await repo.add_policy(
                        conn,
                        credit_type_id=LEDGER,
                        effective_from=START - dt.timedelta(days=1),
                        method="proportional",
                        rate=Decimal(breakage),
                        actor="prop",
                    )
            closed_rows: dict[dt.date, list[tuple[Any, ...]]] = {}
            opening: list[Step] = [
                ("grant", "USD", 300, 10_000, 20),
                ("grant", "EUR", 50, 777, None),
                ("grant", "JPY", 90, 4_321, 5, (40, 10)),
            ]
            # Long enough for the rollover blocks of the last expiries to expire too.
            for step in [
                *opening,
                *history,
                ("wait", 40 * 86_400),
                ("wait", 40 * 86_400),
                ("close",),
            ]:
                await world.run(step)
                async with pool.connection() as conn:
                    for p in await repo.periods(conn):
                        closed_rows.setdefault(
                            p.period_start, await _snapshot(pool, p.period_start)
                        )
            await _check(world)
            for month, rows in closed_rows.items():
                assert await _snapshot(pool, month) == rows, month
            await plane.service.ledger.close()
    finally:
        await db.close(pool)


async def _setup(plane: ControlPlane, clock: ManualClock) -> World:
    await plane.create_credit_type(
        ledger=LEDGER, code="pc", name="Credits", asset_scale=0, actor="a", tenant=0, key="ct"
    )
    customer, _ = await plane.create_customer(name="Prop", actor="a", tenant=0, key="cu")
    resource, _ = await plane.create_resource(
        customer_id=customer.id, kind=ResourceKind.SUBSCRIPTION, actor="a", tenant=0, key="r"
    )
    wallet, _ = await plane.create_wallet(
        resource_id=resource.id, ledger=LEDGER, actor="a", tenant=0, key="w"
    )
    return World(plane, clock, wallet.id)


def _base(closed: list[dt.date], period: dt.date) -> dt.date | None:
    """The last closed month before `period`."""
    return max((p for p in closed if p < period), default=None)
