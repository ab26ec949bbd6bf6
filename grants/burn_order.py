"""The burn order: which credit block a spend draws from first. One versioned function.

Version 1 (DESIGN.md): priority ascending, then expires_at ascending with never-expiring blocks
last, then promotional before paid, then effective_at ascending, then grant id ascending. Only
blocks effective at the time of the request count. Debit, reserve and expiry use this order;
refunds use it reversed. The order is total (the id breaks every tie), so two processes always
agree on it.
"""

from __future__ import annotations

from collections.abc import Iterable

from grants.model import Category, Grant

BURN_ORDER_VERSION = 1

_NEVER = 1 << 64  # after every real expiry time


def burn_order_key(grant: Grant) -> tuple[int, int, int, int, int]:
    return (
        grant.priority,
        _NEVER if grant.expires_at_ns is None else grant.expires_at_ns,
        0 if grant.category is Category.PROMOTIONAL else 1,
        grant.effective_at_ns,
        grant.id,
    )


def burn_order(grants: Iterable[Grant], at_ns: int) -> list[Grant]:
    """The blocks that may fund a request at `at_ns`, in the order they are drawn from."""
    return sorted((g for g in grants if g.effective(at_ns)), key=burn_order_key)


def refund_order(grants: Iterable[Grant]) -> list[Grant]:
    """Reverse burn order: the block drawn from last is given back to first."""
    return sorted(grants, key=burn_order_key, reverse=True)
