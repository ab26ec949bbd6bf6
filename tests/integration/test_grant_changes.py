"""Changes of a grant after its issue (ControlPlane.void_grant with an amount, and
change_grant_expiry): on Postgres and the embedded engine, on a test clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from finance import recognition as rec
from finance.posting import Poster
from grants.errors import (
    ExpiryInPast,
    ExpiryNotAfterEffective,
    GrantNotChangeable,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    VoidExceedsAvailable,
)
from grants.model import Category
from ledger import db
from ledger.clock import ManualClock, datetime_of_ns, ns_of_datetime
from ledger.codes import TransferCode
from ledger.repositories import audit
from ledger.repositories import grants as grant_rows
from ledger.repositories.grants import GrantState
from ledger.repositories.resources import ResourceKind
from ledger.types import AccountFilter, AccountFilterFlags
from tests.conftest import SETTINGS
from tests.integration.projection_support import assert_reconciled, clocked_plane, january_clock
from wallets.catalog import Catalog, Wallet
from wallets.control import ControlPlane, GrantRequest
from wallets.projection import ProjectionFeed
from wallets.service import CreditService

pytestmark = pytest.mark.anyio

TENANT = 9
HOUR = 3600


@pytest.fixture
def db_url(fresh_db_url: Callable[..., str], template_db: str) -> str:
    return fresh_db_url(template_db)  # a database of the test's own


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[db.Pool]:
    made = await db.open_pool(SETTINGS, conninfo=db_url)
    try:
        yield made
    finally:
        await db.close(made)


@pytest.fixture
def clock() -> ManualClock:
    return january_clock()


@pytest.fixture
async def plane(pool: db.Pool, clock: ManualClock) -> AsyncIterator[ControlPlane]:
    async for made in clocked_plane(pool, clock):
        yield made


async def _wallet(plane: ControlPlane, tag: int = 1) -> Wallet:
    credit_type, _ = await plane.create_credit_type(
        ledger=300 + tag, code=f"gc{tag}", name="Credits", asset_scale=0, actor="a", tenant=0,
        key=f"ct{tag}",
    )  # fmt: skip
    customer, _ = await plane.create_customer(name="Acme", actor="a", tenant=0, key=f"cu{tag}")
    resource, _ = await plane.create_resource(
        customer_id=customer.id, kind=ResourceKind.AGENT, actor="a", tenant=0, key=f"re{tag}"
    )
    wallet, _ = await plane.create_wallet(
        resource_id=resource.id, ledger=credit_type.ledger, actor="a", tenant=0, key=f"wa{tag}"
    )
    return wallet


def _now(clock: ManualClock) -> dt.datetime:
    return datetime_of_ns(clock())


async def _grant(
    plane: ControlPlane,
    wallet: Wallet,
    key: str,
    *,
    amount: int = 1000,
    consideration: int = 999,
    expires_at: dt.datetime | None = None,
    effective_at: dt.datetime | None = None,
) -> int:
    result, _ = await plane.issue_grant(
        GrantRequest(
            wallet_id=wallet.id,
            amount=amount,
            category=Category.PAID,
            consideration_minor=consideration,
            currency="USD",
            expires_at=expires_at,
            effective_at=effective_at,
        ),
        tenant=TENANT,
        key=key,
        actor="a",
    )
    return result.grant_id


async def _left(plane: ControlPlane, grant_id: int) -> int:
    found = await plane.grant_service.left(grant_id)
    assert found is not None
    return found[0]


async def _debit(plane: ControlPlane, wallet: Wallet, key: str, amount: int) -> Any:
    return await plane.service.debit(
        tenant=TENANT, key=key, amount=amount, ledger=wallet.ledger, wallet_id=wallet.id
    )


async def _row(plane: ControlPlane, grant_id: int) -> grant_rows.Grant:
    async with plane.pool.connection() as conn:
        row = await grant_rows.get_grant(conn, grant_id)
    assert row is not None
    return row


async def _audit(plane: ControlPlane, grant_id: int, action: str) -> list[audit.AuditEntry]:
    async with plane.pool.connection() as conn:
        entries = await audit.list_for_object(conn, "grant", grant_id)
    return [e for e in entries if e.action == action]


# -- a void of part of a block ------------------------------------------------------------------


async def test_a_partial_void_moves_exactly_the_amount_and_the_block_stays_active(
    plane: ControlPlane, clock: ManualClock
) -> None:
    wallet = await _wallet(plane)
    grant = await _grant(plane, wallet, "g", expires_at=_now(clock) + dt.timedelta(days=30))
    voided, replayed = await plane.void_grant(
        grant, tenant=TENANT, key="v1", actor="ops", reason="goodwill reversed", amount=300
    )
    assert (voided.grant_id, voided.amount, voided.reason) == (grant, 300, "voided")
    assert not replayed
    assert await _left(plane, grant) == 700
    assert (await _row(plane, grant)).state is GrantState.ACTIVE
    assert grant in plane.catalog.grants
    # The same key answers the stored outcome; another body under it is a conflict.
    again, replayed = await plane.void_grant(
        grant, tenant=TENANT, key="v1", actor="ops", reason="goodwill reversed", amount=300
    )
    assert (again, replayed) == (voided, True)
    with pytest.raises(IdempotencyConflict):
        await plane.void_grant(grant, tenant=TENANT, key="v1", actor="ops", amount=200)
    with pytest.raises(IdempotencyConflict):  # the whole void's body is another body too
        await plane.void_grant(grant, tenant=TENANT, key="v1", actor="ops")
    assert await _left(plane, grant) == 700
    # A second slice, with its own key; then what is left still funds a debit, and no more.
    await plane.void_grant(grant, tenant=TENANT, key="v2", actor="ops", amount=200)
    debit = await _debit(plane, wallet, "d1", 500)
    assert [(f.account_id, f.amount) for f in debit.funded_by] == [(grant, 500)]
    with pytest.raises(InsufficientCredits):
        await _debit(plane, wallet, "d2", 1)
    (entry, *_) = await _audit(plane, grant, "grant.void")
    assert (entry.actor, entry.details["amount"]) == ("ops", "200")
    assert len(await _audit(plane, grant, "grant.void")) == 2
    # The ledger's transfer: a GRANT_VOID naming its operation, not the block (no sweep).
    transfers = await plane.service.ledger.get_account_transfers(
        AccountFilter(
            account_id=grant, user_data_128=0, user_data_64=0, user_data_32=0,
            code=TransferCode.GRANT_VOID, timestamp_min=0, timestamp_max=0, limit=10,
            flags=AccountFilterFlags.DEBITS,
        )
    )  # fmt: skip
    assert sorted(t.amount for t in transfers) == [200, 300]
    assert all(t.user_data_128 != grant for t in transfers)
    assert uuid.UUID(entry.details["void_id"]).int in {t.id for t in transfers}


async def test_a_partial_void_of_more_than_is_available_is_refused_and_moves_nothing(
    plane: ControlPlane, clock: ManualClock
) -> None:
    wallet = await _wallet(plane)
    grant = await _grant(plane, wallet, "g")
    await plane.service.reserve(
        tenant=TENANT, key="r", amount=600, ledger=wallet.ledger, wallet_id=wallet.id,
        timeout_s=600,
    )  # fmt: skip
    with pytest.raises(VoidExceedsAvailable) as refused:
        await plane.void_grant(grant, tenant=TENANT, key="v", actor="ops", amount=401)
    assert refused.value.details == {"field": "amount", "available": 400}
    assert await _left(plane, grant) == 400
    assert await _audit(plane, grant, "grant.void") == []
    # The refusal claimed nothing: the key still serves a request that fits.
    voided, replayed = await plane.void_grant(
        grant, tenant=TENANT, key="v", actor="ops", amount=400
    )
    assert (voided.amount, replayed) == (400, False)
    assert await _left(plane, grant) == 0
    for amount in (0, -1):
        with pytest.raises(InvalidRequest):
            await plane.void_grant(grant, tenant=TENANT, key="bad", actor="ops", amount=amount)
    with pytest.raises(NotFound):
        await plane.void_grant(12345, tenant=TENANT, key="nf", actor="ops", amount=1)


async def test_a_partial_void_of_a_block_not_in_force_is_refused(
    plane: ControlPlane, clock: ManualClock
) -> None:
    wallet = await _wallet(plane)
    expiring = await _grant(plane, wallet, "e", expires_at=_now(clock) + dt.timedelta(hours=1))
    voided = await _grant(plane, wallet, "w")
    await plane.void_grant(voided, tenant=TENANT, key="all", actor="ops")
    clock.advance(HOUR)  # expired by the clock, not yet swept
    for grant, state in ((expiring, "expired"), (voided, "voided")):
        with pytest.raises(GrantNotChangeable) as refused:
            await plane.void_grant(grant, tenant=TENANT, key=f"p{grant}", actor="o", amount=1)
        assert refused.value.details["state"] == state


async def test_a_debit_that_takes_the_credits_first_makes_the_void_refused_not_an_overdraft(
    plane: ControlPlane, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check reads 1000 available; a debit takes 900 before the transfer: the engine's
    balance constraint refuses the void, nothing moves, and the same key stays refused."""
    wallet = await _wallet(plane)
    grant = await _grant(plane, wallet, "g")
    real_left = plane.grant_service.left
    raced = []

    async def left_then_debit(grant_id: int) -> tuple[int, int] | None:
        found = await real_left(grant_id)
        if not raced:
            raced.append(await _debit(plane, wallet, "race", 900))
        return found

    monkeypatch.setattr(plane.grant_service, "left", left_then_debit)
    with pytest.raises(VoidExceedsAvailable) as refused:
        await plane.void_grant(grant, tenant=TENANT, key="v", actor="ops", amount=600)
    assert refused.value.details["available"] == 100
    monkeypatch.setattr(plane.grant_service, "left", real_left)
    (account,) = await plane.service.ledger.lookup_accounts([grant])
    assert (account.debits_posted, account.credits_posted) == (900, 1000)
    with pytest.raises(VoidExceedsAvailable):  # a replay of the key: still refused
        await plane.void_grant(grant, tenant=TENANT, key="v", actor="ops", amount=600)
    assert await _left(plane, grant) == 100


async def test_concurrent_debits_and_partial_voids_never_overdraw_the_block(
    plane: ControlPlane, clock: ManualClock
) -> None:
    wallet = await _wallet(plane)
    grant = await _grant(plane, wallet, "g")

    async def void(n: int) -> int:
        try:
            result, _ = await plane.void_grant(
                grant, tenant=TENANT, key=f"v{n}", actor="ops", amount=150
            )
        except VoidExceedsAvailable:
            return 0
        return result.amount

    async def debit(n: int) -> int:
        try:
            await _debit(plane, wallet, f"d{n}", 100)
        except InsufficientCredits:
            return 0
        return 100

    outcomes = await asyncio.gather(*(void(n) for n in range(6)), *(debit(n) for n in range(6)))
    voided, debited = sum(outcomes[:6]), sum(outcomes[6:])
    (account,) = await plane.service.ledger.lookup_accounts([grant])
    assert account.debits_posted <= account.credits_posted == 1000
    assert account.debits_posted == voided + debited
    assert voided + debited + await _left(plane, grant) == 1000


# -- finance of a partial void ------------------------------------------------------------------


async def _journal_lines(plane: ControlPlane, grant_id: int) -> list[tuple[Any, ...]]:
    async with plane.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT j.kind, j.reason, j.actor, j.credits, l.account, l.debit_minor, l.credit_minor"
            " FROM finance_journals j JOIN finance_journal_lines l"
            " ON l.journal_id = j.id AND l.posting_period = j.posting_period"
            " WHERE j.block_id = %s ORDER BY j.seq, l.line",
            (uuid.UUID(int=grant_id),),
        )
        return list(await cursor.fetchall())


async def test_finance_books_exactly_the_voided_slice_and_the_block_sums_to_its_price(
    plane: ControlPlane, clock: ManualClock
) -> None:
    wallet = await _wallet(plane)
    expiry = _now(clock) + dt.timedelta(days=10)
    grant = await _grant(plane, wallet, "g", amount=1000, consideration=999, expires_at=expiry)
    feed = ProjectionFeed(plane.service.ledger, plane.pool, clock_ns=clock)
    poster = Poster(plane.pool)
    await _debit(plane, wallet, "d", 333)
    clock.advance(1)
    await plane.void_grant(grant, tenant=TENANT, key="v", actor="ops", reason="slice", amount=333)
    clock.advance(11 * 24 * HOUR)
    report = await plane.sweep(clock())
    assert [(s.grant_id, s.amount, s.reason) for s in report.swept] == [(grant, 334, "expired")]
    await feed.catch_up()
    await assert_reconciled(plane)  # the projection's entries tie to the engine
    await poster.catch_up()
    lines = await _journal_lines(plane, grant)
    liability = [
        (kind, reason, actor, int(credits), debit)
        for kind, reason, actor, credits, account, debit, _ in lines
        if account == rec.CONTRACT_LIABILITY and debit
    ]
    value = [rec.value_of(999, d, 1000) for d in (0, 333, 666, 1000)]
    assert liability == [
        ("usage", "debit", "runtime", 333, value[1] - value[0]),
        ("breakage", "slice", "ops", 333, value[2] - value[1]),
        ("breakage", "expiry", "system", 334, value[3] - value[2]),
    ]
    assert sum(row[-1] for row in liability) == 999  # C, to the cent
    credited = sum(c for *_, account, _, c in lines if account == rec.CONTRACT_LIABILITY)
    assert credited == 999  # the purchase
    # The expiry's transfer carries the block's expiry; the void's carries none (engine time).
    sweeps = await plane.service.ledger.get_account_transfers(
        AccountFilter(
            account_id=grant, user_data_128=0, user_data_64=0, user_data_32=0, code=0,
            timestamp_min=0, timestamp_max=0, limit=10, flags=AccountFilterFlags.DEBITS,
        )
    )  # fmt: skip
    by_code = {t.code: t for t in sweeps}
    assert by_code[TransferCode.EXPIRE].user_data_64 == ns_of_datetime(expiry)
    assert by_code[TransferCode.GRANT_VOID].user_data_64 == 0


# -- a change of expiry -------------------------------------------------------------------------


async def test_an_extended_block_outlives_its_old_expiry_and_expires_at_the_new_one(
    plane: ControlPlane, clock: ManualClock
) -> None:
    wallet = await _wallet(plane)
    old = _now(clock) + dt.timedelta(hours=1)
    new = _now(clock) + dt.timedelta(hours=3)
    grant = await _grant(plane, wallet, "g", expires_at=old)
    feed = ProjectionFeed(plane.service.ledger, plane.pool, clock_ns=clock)
    await feed.catch_up()
    await Poster(plane.pool).catch_up()  # finance met the block with its old expiry
    result, replayed = await plane.change_grant_expiry(
        grant, expires_at=new, tenant=TENANT, key="x", actor="ops", reason="courtesy"
    )
    assert (result.grant_id, result.expires_at, result.previous_expires_at) == (grant, new, old)
    assert not replayed
    again, replayed = await plane.change_grant_expiry(
        grant, expires_at=new, tenant=TENANT, key="x", actor="ops", reason="courtesy"
    )
    assert (again, replayed) == (result, True)
    with pytest.raises(IdempotencyConflict):
        await plane.change_grant_expiry(
            grant, expires_at=new + dt.timedelta(hours=1), tenant=TENANT, key="x", actor="ops"
        )
    assert (await _row(plane, grant)).expires_at == new
    assert plane.catalog.grants[grant].expires_at_ns == ns_of_datetime(new)
    (entry,) = await _audit(plane, grant, "grant.expiry")
    assert (entry.actor, entry.reason) == ("ops", "courtesy")
    assert entry.details["previous_expires_at"] == old.isoformat()
    assert entry.details["expires_at"] == new.isoformat()
    async with plane.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT expires_at FROM finance_blocks WHERE block_id = %s", (uuid.UUID(int=grant),)
        )
        assert await cursor.fetchall() == [(new,)]
    clock.advance(2 * HOUR)  # past the old expiry
    assert (await plane.sweep(clock())).swept == []
    debit = await _debit(plane, wallet, "d", 100)
    assert [(f.account_id, f.amount) for f in debit.funded_by] == [(grant, 100)]
    clock.advance(HOUR)  # at the new expiry
    report = await plane.sweep(clock())
    assert [(s.grant_id, s.amount, s.reason) for s in report.swept] == [(grant, 900, "expired")]
    (expire,) = await plane.service.ledger.get_account_transfers(
        AccountFilter(
            account_id=grant, user_data_128=0, user_data_64=0, user_data_32=0,
            code=TransferCode.EXPIRE, timestamp_min=0, timestamp_max=0, limit=10,
            flags=AccountFilterFlags.DEBITS,
        )
    )  # fmt: skip
    assert expire.user_data_64 == ns_of_datetime(new)  # the breakage's accounting date


async def test_a_shortened_block_is_swept_at_its_new_expiry(
    plane: ControlPlane, clock: ManualClock
) -> None:
    wallet = await _wallet(plane)
    grant = await _grant(plane, wallet, "g", expires_at=_now(clock) + dt.timedelta(days=10))
    new = _now(clock) + dt.timedelta(hours=1)
    await plane.change_grant_expiry(grant, expires_at=new, tenant=TENANT, key="x", actor="o")
    clock.advance(HOUR - 1)
    assert (await plane.sweep(clock())).swept == []
    clock.advance(1)
    with pytest.raises(InsufficientCredits):
        await _debit(plane, wallet, "d", 1)
    report = await plane.sweep(clock())
    assert [(s.grant_id, s.amount) for s in report.swept] == [(grant, 1000)]
    assert (await plane.sweep(clock())).finished == [grant]  # nothing left, nothing held
    assert (await _row(plane, grant)).state is GrantState.EXPIRED


async def test_a_removed_expiry_never_expires(plane: ControlPlane, clock: ManualClock) -> None:
    wallet = await _wallet(plane)
    old = _now(clock) + dt.timedelta(hours=1)
    grant = await _grant(plane, wallet, "g", expires_at=old)
    result, _ = await plane.change_grant_expiry(
        grant, expires_at=None, tenant=TENANT, key="x", actor="o"
    )
    assert (result.expires_at, result.previous_expires_at) == (None, old)
    clock.advance(1000 * HOUR)
    assert (await plane.sweep(clock())).swept == []
    assert (await _row(plane, grant)).expires_at is None
    await _debit(plane, wallet, "d", 1000)


async def test_changes_of_expiry_that_cannot_be_are_refused(
    plane: ControlPlane, clock: ManualClock
) -> None:
    wallet = await _wallet(plane)
    now = _now(clock)
    grant = await _grant(plane, wallet, "g", expires_at=now + dt.timedelta(hours=2))
    upcoming = await _grant(
        plane, wallet, "u", effective_at=now + dt.timedelta(days=2),
        expires_at=now + dt.timedelta(days=3),
    )  # fmt: skip
    clock.advance(1)
    with pytest.raises(ExpiryInPast):
        await plane.change_grant_expiry(
            grant, expires_at=_now(clock), tenant=TENANT, key="a", actor="o"
        )
    with pytest.raises(ExpiryNotAfterEffective):
        await plane.change_grant_expiry(
            upcoming, expires_at=now + dt.timedelta(days=1), tenant=TENANT, key="b", actor="o"
        )
    with pytest.raises(InvalidRequest):  # no offset
        await plane.change_grant_expiry(
            grant, expires_at=dt.datetime(2030, 1, 1), tenant=TENANT, key="c", actor="o"
        )
    with pytest.raises(NotFound):
        await plane.change_grant_expiry(12345, expires_at=None, tenant=TENANT, key="d", actor="o")
    # An upcoming block may be given a later expiry.
    await plane.change_grant_expiry(
        upcoming, expires_at=now + dt.timedelta(days=5), tenant=TENANT, key="e", actor="o"
    )
    voided = await _grant(plane, wallet, "w")
    await plane.void_grant(voided, tenant=TENANT, key="all", actor="o")
    clock.advance(2 * HOUR - 1)  # `grant` has expired by the clock (not yet swept)
    for gid, state in ((grant, "expired"), (voided, "voided")):
        with pytest.raises(GrantNotChangeable) as refused:
            await plane.change_grant_expiry(
                gid, expires_at=None, tenant=TENANT, key=f"f{gid}", actor="o"
            )
        assert refused.value.details["state"] == state
    assert (await _row(plane, grant)).expires_at == now + dt.timedelta(hours=2)


async def test_burn_order_follows_the_new_expiry(plane: ControlPlane, clock: ManualClock) -> None:
    wallet = await _wallet(plane)
    now = _now(clock)
    sooner = await _grant(plane, wallet, "a", expires_at=now + dt.timedelta(days=5))
    later = await _grant(plane, wallet, "b", expires_at=now + dt.timedelta(days=10))
    first = await _debit(plane, wallet, "d1", 10)
    assert [f.account_id for f in first.funded_by] == [sooner]
    await plane.change_grant_expiry(
        later, expires_at=now + dt.timedelta(days=2), tenant=TENANT, key="x", actor="o"
    )
    second = await _debit(plane, wallet, "d2", 10)
    assert [f.account_id for f in second.funded_by] == [later]


async def test_another_process_learns_a_new_expiry(
    plane: ControlPlane, clock: ManualClock, db_url: str
) -> None:
    other = ControlPlane(plane.pool, CreditService(plane.service.ledger, Catalog(), clock_ns=clock))
    follower = asyncio.create_task(other.follow(db_url))
    try:
        for _ in range(500):
            if other.reloads:
                break
            await asyncio.sleep(0.01)
        wallet = await _wallet(plane)
        grant = await _grant(plane, wallet, "g", expires_at=_now(clock) + dt.timedelta(hours=1))
        for _ in range(500):
            if grant in other.catalog.grants:
                break
            await asyncio.sleep(0.01)
        new = _now(clock) + dt.timedelta(days=1)
        await plane.change_grant_expiry(grant, expires_at=new, tenant=TENANT, key="x", actor="o")
        for _ in range(500):
            if other.catalog.grants[grant].expires_at_ns == ns_of_datetime(new):
                break
            await asyncio.sleep(0.01)
        assert other.catalog.grants[grant].expires_at_ns == ns_of_datetime(new)
        # Its sweep goes by the new expiry too.
        clock.advance(2 * HOUR)
        assert (await other.sweep(clock())).swept == []
    finally:
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower


async def test_a_change_cut_by_a_crash_is_finished_by_its_retry(
    plane: ControlPlane, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres holds the change once its transaction commits; a crash before the cache and
    the stored outcome leaves the key open, and its retry answers the change, old expiry
    included (from the audit row)."""
    wallet = await _wallet(plane)
    old = _now(clock) + dt.timedelta(hours=1)
    new = _now(clock) + dt.timedelta(hours=5)
    grant = await _grant(plane, wallet, "g", expires_at=old)

    def crash(_: object) -> None:
        raise RuntimeError("crash")

    monkeypatch.setattr(plane.catalog, "put_grant", crash)
    with pytest.raises(RuntimeError):
        await plane.change_grant_expiry(grant, expires_at=new, tenant=TENANT, key="x", actor="o")
    monkeypatch.undo()
    assert (await _row(plane, grant)).expires_at == new
    result, replayed = await plane.change_grant_expiry(
        grant, expires_at=new, tenant=TENANT, key="x", actor="o"
    )
    assert (result.expires_at, result.previous_expires_at, replayed) == (new, old, False)
    assert plane.catalog.grants[grant].expires_at_ns == ns_of_datetime(new)
    assert len(await _audit(plane, grant, "grant.expiry")) == 1


async def test_a_process_that_missed_the_notification_does_not_sweep_at_the_old_expiry(
    plane: ControlPlane, clock: ManualClock
) -> None:
    """Another process's cache still has the old expiry (its notification has not come): its
    sweep reads the due blocks again from Postgres and leaves the extended block alone."""
    other = ControlPlane(plane.pool, CreditService(plane.service.ledger, Catalog(), clock_ns=clock))
    wallet = await _wallet(plane)
    grant = await _grant(plane, wallet, "g", expires_at=_now(clock) + dt.timedelta(hours=1))
    await other.load()
    new = _now(clock) + dt.timedelta(hours=5)
    await plane.change_grant_expiry(grant, expires_at=new, tenant=TENANT, key="x", actor="o")
    assert other.catalog.grants[grant].expires_at_ns != ns_of_datetime(new)  # not heard yet
    clock.advance(2 * HOUR)
    assert (await other.sweep(clock())).swept == []
    assert other.catalog.grants[grant].expires_at_ns == ns_of_datetime(new)
    assert await _left(plane, grant) == 1000
