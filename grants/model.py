"""Credit blocks (grants): the value objects of the grants layer.

A grant is one TigerBeetle account (code GRANT) funded once; its balance is what is left of the
block. Times are integers of nanoseconds since the Unix epoch, UTC, as on the ledger.
"""

from __future__ import annotations

import datetime as dt

import msgspec

from ledger.repositories.grants import GrantCategory, GrantSource

# The vocabulary is the catalog's: one definition, shared with the Postgres rows.
Category = GrantCategory
Source = GrantSource


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    """A credit block as the spend path needs it."""

    id: int  # the TigerBeetle account id, derived from the issuing operation
    wallet_id: int
    ledger: int  # the credit type
    amount: int  # credits granted, in the credit type's minor unit
    category: Category
    priority: int = 0
    effective_at_ns: int
    expires_at_ns: int | None = None  # exclusive; None: never expires
    consideration_minor: int = 0  # what was paid for it, in `currency`'s minor unit
    currency: str | None = None
    # Its rollover (a policy) is not done yet: the expiry sweep leaves it alone until it is.
    rollover_due: bool = False

    def effective(self, at_ns: int) -> bool:
        """Whether the block may fund a request made at `at_ns`."""
        return self.effective_at_ns <= at_ns and (
            self.expires_at_ns is None or at_ns < self.expires_at_ns
        )

    def expired(self, at_ns: int) -> bool:
        return self.expires_at_ns is not None and self.expires_at_ns <= at_ns


class RolloverPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """What of a block rolls over at its expiry: `carried = min(max_credits, max(min_credits,
    remaining))` credits, into new blocks that expire at `expires_at` (ledger/README.md
    "Rollover"). Up to `remaining` of them move out of the block (its category and cost basis
    per credit kept); what the floor adds beyond that is a promotional block."""

    max_credits: int
    min_credits: int = 0
    expires_at: dt.datetime


def rollover_split(policy_max: int, policy_min: int, remaining: int) -> tuple[int, int]:
    """(taken from the block, added by the floor) of a rollover with `remaining` left:
    carried = min(max, max(min, remaining)); taken = min(carried, remaining)."""
    assert 0 <= policy_min <= policy_max and remaining >= 0
    carried = min(policy_max, max(policy_min, remaining))
    taken = min(carried, remaining)
    return taken, carried - taken


def rollover_consideration(
    consideration_minor: int, credits: int, credits_out: int, taken: int
) -> int:
    """The consideration `taken` credits carry out of a block of `credits` for
    `consideration_minor` of which `credits_out` have already left: value(D2) - value(D1) by
    finance's cumulative rounding (ACCOUNTING.md "Rounding"), value(D) = round half away from
    zero of C x D / G."""
    assert credits_out >= 0 and credits_out + taken <= credits

    def value(out: int) -> int:
        return (2 * consideration_minor * out + credits) // (2 * credits)

    return value(credits_out + taken) - value(credits_out)
