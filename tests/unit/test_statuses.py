"""Every TigerBeetle status has exactly one outcome class, and the important ones the right one."""

from __future__ import annotations

import pytest

from ledger.statuses import ACCOUNT_OUTCOMES, TRANSFER_OUTCOMES, Outcome, transfer_outcome
from ledger.types import CreateAccountStatus, CreateTransferStatus


def test_every_transfer_status_is_classified() -> None:
    assert set(TRANSFER_OUTCOMES) == set(CreateTransferStatus)


def test_every_account_status_is_classified() -> None:
    assert set(ACCOUNT_OUTCOMES) == set(CreateAccountStatus)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (CreateTransferStatus.CREATED, Outcome.OK),
        (CreateTransferStatus.EXISTS, Outcome.OK),
        (CreateTransferStatus.EXCEEDS_CREDITS, Outcome.BUSINESS),
        (CreateTransferStatus.PENDING_TRANSFER_EXPIRED, Outcome.BUSINESS),
        (CreateTransferStatus.EXISTS_WITH_DIFFERENT_USER_DATA_128, Outcome.CONFLICT),
        (CreateTransferStatus.EXISTS_WITH_DIFFERENT_AMOUNT, Outcome.CONFLICT),
        (CreateTransferStatus.ID_ALREADY_FAILED, Outcome.CONFLICT),
        (CreateTransferStatus.LINKED_EVENT_FAILED, Outcome.CHAIN),
        (CreateTransferStatus.ACCOUNTS_MUST_BE_DIFFERENT, Outcome.BUG),
        (CreateTransferStatus.LINKED_EVENT_CHAIN_OPEN, Outcome.BUG),
    ],
)
def test_outcome_of(status: CreateTransferStatus, outcome: Outcome) -> None:
    assert transfer_outcome(status) is outcome
