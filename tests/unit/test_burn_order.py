"""Burn order, version 1: properties over random blocks, and the rules one by one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from grants.burn_order import burn_order, burn_order_key, refund_order
from grants.model import Category, Grant

NOW = 1_000_000


def grant(gid: int, **kw: object) -> Grant:
    fields: dict[str, object] = {
        "id": gid,
        "wallet_id": 1,
        "ledger": 1,
        "amount": 10,
        "category": Category.PAID,
        "effective_at_ns": 0,
    }
    fields.update(kw)
    return Grant(**fields)  # type: ignore[arg-type]


grants_strategy = st.lists(
    st.builds(
        grant,
        gid=st.integers(1, 10**6),
        priority=st.integers(0, 3),
        expires_at_ns=st.one_of(st.none(), st.integers(0, 2 * NOW)),
        category=st.sampled_from(list(Category)),
        effective_at_ns=st.integers(0, 2 * NOW),
    ),
    unique_by=lambda g: g.id,
    max_size=30,
)


@given(grants_strategy)
def test_only_effective_blocks_in_a_total_order(grants: list[Grant]) -> None:
    ordered = burn_order(grants, NOW)
    assert {g.id for g in ordered} == {g.id for g in grants if g.effective(NOW)}
    keys = [burn_order_key(g) for g in ordered]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    # The order does not depend on the order blocks were given in.
    assert burn_order(list(reversed(grants)), NOW) == ordered


@given(grants_strategy)
def test_refund_order_is_burn_order_reversed(grants: list[Grant]) -> None:
    effective = [g for g in grants if g.effective(NOW)]
    assert refund_order(effective) == list(reversed(burn_order(effective, NOW)))


def test_rules_in_precedence() -> None:
    never = grant(1)
    soon = grant(2, expires_at_ns=NOW + 10)
    later = grant(3, expires_at_ns=NOW + 20)
    promo_later = grant(4, expires_at_ns=NOW + 20, category=Category.PROMOTIONAL)
    urgent = grant(5, priority=-1)
    older_promo = grant(
        6, expires_at_ns=NOW + 20, category=Category.PROMOTIONAL, effective_at_ns=-5
    )
    order = burn_order([never, soon, later, promo_later, urgent, older_promo], NOW)
    assert [g.id for g in order] == [5, 2, 6, 4, 3, 1]


def test_expiry_is_exclusive_and_future_blocks_wait() -> None:
    expiring_now = grant(1, expires_at_ns=NOW)
    not_yet = grant(2, effective_at_ns=NOW + 1)
    starting_now = grant(3, effective_at_ns=NOW)
    assert [g.id for g in burn_order([expiring_now, not_yet, starting_now], NOW)] == [3]
