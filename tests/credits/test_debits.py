"""Debits: burn order, spans over several blocks, fall-through, overdraft, idempotency."""

from __future__ import annotations

import pytest

from grants.errors import IdempotencyConflict, InsufficientCredits
from grants.model import Category
from tests.credits.conftest import AGENT, TEAM, OverdraftMode, World

S = 1_000_000_000


def test_debit_spans_blocks_in_burn_order(world: World) -> None:
    wallet = world.wallet(AGENT)
    now = world.now()
    later = world.grant(wallet, 100, expires_at_ns=now + 90 * S)
    sooner = world.grant(wallet, 50, expires_at_ns=now + 10 * S)
    promo = world.grant(wallet, 30, category=Category.PROMOTIONAL, expires_at_ns=now + 90 * S)
    result = world.debit(120)
    assert [(f.account_id, f.amount) for f in result.funded_by] == [
        (sooner.id, 50),
        (promo.id, 30),
        (later.id, 40),
    ]
    assert world.available(later.id) == 60
    assert world.available(sooner.id) == 0
    assert world.available(promo.id) == 0


def test_debit_of_more_than_available_moves_nothing(world: World) -> None:
    wallet = world.wallet(AGENT)
    grant = world.grant(wallet, 100)
    with pytest.raises(InsufficientCredits):
        world.debit(101)
    assert world.available(grant.id) == 100
    assert world.debit(100).amount == 100
    assert world.available(grant.id) == 0


def test_replay_returns_the_original_outcome_and_moves_nothing(world: World) -> None:
    wallet = world.wallet(AGENT)
    grant = world.grant(wallet, 100)
    first = world.debit(30, key="same")
    again = world.debit(30, key="same")
    assert again.replayed and not first.replayed
    assert again.operation_id == first.operation_id
    assert again.funded_by == first.funded_by
    assert world.available(grant.id) == 70
    with pytest.raises(IdempotencyConflict):
        world.debit(31, key="same")
    assert world.available(grant.id) == 70


def test_a_refused_debit_keeps_its_answer_under_the_same_key(world: World) -> None:
    wallet = world.wallet(AGENT)
    grant = world.grant(wallet, 10)
    with pytest.raises(InsufficientCredits) as first:
        world.debit(20, key="k-refused")
    assert not first.value.replayed
    world.grant(wallet, 100)
    with pytest.raises(InsufficientCredits) as again:
        world.debit(20, key="k-refused")
    # The answer is the key's stored outcome, and says so.
    assert again.value.replayed
    assert world.available(grant.id) == 10


def test_fall_through_to_the_parent_wallet(world: World) -> None:
    team = world.wallet(TEAM)
    agent = world.wallet(AGENT, fall_through=True)
    own = world.grant(agent, 10)
    parent = world.grant(team, 100)
    result = world.debit(25)
    assert [(f.account_id, f.amount) for f in result.funded_by] == [(own.id, 10), (parent.id, 15)]
    assert world.available(parent.id) == 85


def test_no_fall_through_without_the_flag(world: World) -> None:
    team = world.wallet(TEAM)
    agent = world.wallet(AGENT)
    world.grant(agent, 10)
    world.grant(team, 100)
    with pytest.raises(InsufficientCredits):
        world.debit(25)


def test_soft_limit_overdraft_and_repayment_by_the_next_grant(world: World) -> None:
    wallet = world.wallet(AGENT, overdraft_mode=OverdraftMode.SOFT, overdraft_limit=50)
    world.grant(wallet, 20)
    result = world.debit(60)
    assert [(f.kind, f.amount) for f in result.funded_by] == [("grant", 20), ("overdraft", 40)]
    with pytest.raises(InsufficientCredits):
        world.debit(11)  # 10 of headroom left
    grant = world.grant(wallet, 100)
    assert world.available(grant.id) == 60  # 40 repaid the deficit first
    assert world.account(wallet.overdraft_account_id).debits_posted == 40
    # The headroom is whole again.
    world.debit(60 + 50)


def test_unbounded_overdraft_never_refuses(world: World) -> None:
    wallet = world.wallet(AGENT, overdraft_mode=OverdraftMode.UNBOUNDED)
    world.grant(wallet, 5)
    result = world.debit(1000)
    assert [(f.kind, f.amount) for f in result.funded_by] == [("grant", 5), ("overdraft", 995)]
    grant = world.grant(wallet, 2000)
    assert world.available(grant.id) == 1005


def test_many_debits_in_one_request_each_on_its_own(world: World) -> None:
    from grants.errors import InvalidRequest
    from wallets.service import DebitRequest

    wallet = world.wallet(AGENT)
    grant = world.grant(wallet, 100)
    requests = [
        DebitRequest(7, world.k(f"b{i}"), amount, world.ledger_id, resource_id=AGENT)
        for i, amount in enumerate([30, 50, 40, 20])
    ] + [DebitRequest(7, world.k("bad"), 0, world.ledger_id, resource_id=AGENT)]
    outcomes = world.run(world.service.debit_many(requests))
    assert [type(o).__name__ for o in outcomes] == [
        "DebitResult",
        "DebitResult",
        "InsufficientCredits",
        "DebitResult",
        "InvalidRequest",
    ]
    assert isinstance(outcomes[4], InvalidRequest)
    assert world.available(grant.id) == 0
    again = world.run(world.service.debit_many(requests[:2]))
    assert all(o.replayed for o in again)  # type: ignore[union-attr]


def test_a_whole_catalog_load_keeps_what_was_written_meanwhile(world: World) -> None:
    from wallets.catalog import Wallet

    catalog = world.catalog
    before = catalog.wallets[world.wallet(AGENT).id]
    since = catalog.begin_load()  # a snapshot is read now; then this process writes
    later = Wallet(999_999, TEAM, world.ledger_id)
    catalog.put_wallet(later)
    catalog.load(
        list(catalog.credit_types.values()),
        list(catalog.resources.values()),
        [before],
        [],
        [],
        since=since,
    )
    assert catalog.wallets[later.id] == later  # not taken back by the older snapshot
    assert catalog.wallets[before.id] == before
    assert catalog._journal == []
