"""Every TigerBeetle result status, classified once.

- `OK`: the event took effect (`created`) or had already taken effect identically (`exists`:
  an idempotent replay).
- `BUSINESS`: the ledger said no for a reason a caller may meet in normal operation (not enough
  credits, an expired reservation, a closed account); a 4xx with a stable code above.
- `CONFLICT`: the id is taken by another event (`exists_with_different_*`, `id_already_failed`):
  the same idempotency key was used for another request.
- `CHAIN`: this event did not fail itself; another event of its linked chain did.
- `BUG`: a malformed event that the project's own builders must never produce; an assertion.

A test walks both enums so that a status added by a new TigerBeetle release cannot go
unclassified.
"""

from __future__ import annotations

import enum

from ledger.types import CreateAccountStatus as A
from ledger.types import CreateTransferStatus as T


class Outcome(enum.Enum):
    OK = "ok"
    BUSINESS = "business"
    CONFLICT = "conflict"
    CHAIN = "chain"
    BUG = "bug"


_TRANSFER_BUSINESS = {
    T.DEBIT_ACCOUNT_NOT_FOUND,
    T.CREDIT_ACCOUNT_NOT_FOUND,
    T.PENDING_TRANSFER_NOT_FOUND,
    T.PENDING_TRANSFER_ALREADY_POSTED,
    T.PENDING_TRANSFER_ALREADY_VOIDED,
    T.PENDING_TRANSFER_EXPIRED,
    T.EXCEEDS_PENDING_TRANSFER_AMOUNT,
    T.EXCEEDS_CREDITS,
    T.EXCEEDS_DEBITS,
    T.DEBIT_ACCOUNT_ALREADY_CLOSED,
    T.CREDIT_ACCOUNT_ALREADY_CLOSED,
    T.OVERFLOWS_DEBITS_PENDING,
    T.OVERFLOWS_CREDITS_PENDING,
    T.OVERFLOWS_DEBITS_POSTED,
    T.OVERFLOWS_CREDITS_POSTED,
    T.OVERFLOWS_DEBITS,
    T.OVERFLOWS_CREDITS,
}

TRANSFER_OUTCOMES: dict[T, Outcome] = {}
for _status in T:
    if _status in (T.CREATED, T.EXISTS):
        TRANSFER_OUTCOMES[_status] = Outcome.OK
    elif _status.name.startswith("EXISTS_WITH_DIFFERENT") or _status is T.ID_ALREADY_FAILED:
        TRANSFER_OUTCOMES[_status] = Outcome.CONFLICT
    elif _status is T.LINKED_EVENT_FAILED:
        TRANSFER_OUTCOMES[_status] = Outcome.CHAIN
    elif _status in _TRANSFER_BUSINESS:
        TRANSFER_OUTCOMES[_status] = Outcome.BUSINESS
    else:
        TRANSFER_OUTCOMES[_status] = Outcome.BUG

ACCOUNT_OUTCOMES: dict[A, Outcome] = {}
for _account_status in A:
    if _account_status in (A.CREATED, A.EXISTS):
        ACCOUNT_OUTCOMES[_account_status] = Outcome.OK
    elif _account_status.name.startswith("EXISTS_WITH_DIFFERENT"):
        ACCOUNT_OUTCOMES[_account_status] = Outcome.CONFLICT
    elif _account_status is A.LINKED_EVENT_FAILED:
        ACCOUNT_OUTCOMES[_account_status] = Outcome.CHAIN
    else:
        ACCOUNT_OUTCOMES[_account_status] = Outcome.BUG


def transfer_outcome(status: T) -> Outcome:
    return TRANSFER_OUTCOMES[status]


def account_outcome(status: A) -> Outcome:
    return ACCOUNT_OUTCOMES[status]
