"""Credit blocks (grants): the value objects of the grants layer.

A grant is one TigerBeetle account (code GRANT) funded once; its balance is what is left of the
block. Times are integers of nanoseconds since the Unix epoch, UTC, as on the ledger.
"""

from __future__ import annotations

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

    def effective(self, at_ns: int) -> bool:
        """Whether the block may fund a request made at `at_ns`."""
        return self.effective_at_ns <= at_ns and (
            self.expires_at_ns is None or at_ns < self.expires_at_ns
        )

    def expired(self, at_ns: int) -> bool:
        return self.expires_at_ns is not None and self.expires_at_ns <= at_ns
