"""Every create status is either produced by a named conformance test, or listed as unreachable
from the Python client with the reason.

The walk fails when tigerbeetle-python gains a status this table does not know, and when a named
test disappears or stops mentioning the status it is listed for.
"""

from __future__ import annotations

import ast
import enum
from pathlib import Path

import pytest
from tigerbeetle import CreateAccountStatus, CreateTransferStatus

HERE = Path(__file__).parent

A = CreateAccountStatus
T = CreateTransferStatus


class Unreachable(str):
    """The reason a status cannot be produced through the Python client."""


ACCOUNT_STATUS_COVERAGE: dict[CreateAccountStatus, str | Unreachable] = {
    A.CREATED: "test_create_accounts.py::test_created_account_is_stored_with_zero_balances",
    A.LINKED_EVENT_FAILED: "test_linked.py::test_account_chain_is_all_or_nothing",
    A.LINKED_EVENT_CHAIN_OPEN: "test_linked.py::test_chain_open_at_the_end_of_the_batch",
    A.IMPORTED_EVENT_EXPECTED: "test_imported.py::test_imported_flag_must_match_the_first_event",
    A.IMPORTED_EVENT_NOT_EXPECTED: (
        "test_imported.py::test_imported_flag_must_match_the_first_event"
    ),
    A.TIMESTAMP_MUST_BE_ZERO: "test_create_accounts.py::test_timestamp_must_be_zero",
    A.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE: "test_imported.py::test_imported_timestamp_range",
    A.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE: "test_imported.py::test_imported_timestamp_range",
    A.RESERVED_FIELD: Unreachable(
        "tigerbeetle.Account has no `reserved` field: CAccount.from_param always encodes it as 0"
    ),
    A.RESERVED_FLAG: "test_create_accounts.py::test_reserved_flag",
    A.ID_MUST_NOT_BE_ZERO: "test_create_accounts.py::test_id_must_not_be_zero",
    A.ID_MUST_NOT_BE_INT_MAX: "test_create_accounts.py::test_id_must_not_be_int_max",
    A.EXISTS_WITH_DIFFERENT_FLAGS: (
        "test_create_accounts.py::test_exists_with_different_fields_in_check_order"
    ),
    A.EXISTS_WITH_DIFFERENT_USER_DATA_128: (
        "test_create_accounts.py::test_exists_with_different_fields_in_check_order"
    ),
    A.EXISTS_WITH_DIFFERENT_USER_DATA_64: (
        "test_create_accounts.py::test_exists_with_different_fields_in_check_order"
    ),
    A.EXISTS_WITH_DIFFERENT_USER_DATA_32: (
        "test_create_accounts.py::test_exists_with_different_fields_in_check_order"
    ),
    A.EXISTS_WITH_DIFFERENT_LEDGER: (
        "test_create_accounts.py::test_exists_with_different_fields_in_check_order"
    ),
    A.EXISTS_WITH_DIFFERENT_CODE: (
        "test_create_accounts.py::test_exists_with_different_fields_in_check_order"
    ),
    A.EXISTS: "test_create_accounts.py::test_exists_returns_the_original_timestamp",
    A.FLAGS_ARE_MUTUALLY_EXCLUSIVE: "test_create_accounts.py::test_flags_are_mutually_exclusive",
    A.DEBITS_PENDING_MUST_BE_ZERO: (
        "test_create_accounts.py::test_balances_must_be_zero_in_field_order"
    ),
    A.DEBITS_POSTED_MUST_BE_ZERO: (
        "test_create_accounts.py::test_balances_must_be_zero_in_field_order"
    ),
    A.CREDITS_PENDING_MUST_BE_ZERO: (
        "test_create_accounts.py::test_balances_must_be_zero_in_field_order"
    ),
    A.CREDITS_POSTED_MUST_BE_ZERO: (
        "test_create_accounts.py::test_balances_must_be_zero_in_field_order"
    ),
    A.LEDGER_MUST_NOT_BE_ZERO: "test_create_accounts.py::test_ledger_and_code_must_not_be_zero",
    A.CODE_MUST_NOT_BE_ZERO: "test_create_accounts.py::test_ledger_and_code_must_not_be_zero",
    A.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS: (
        "test_imported.py::test_imported_account_timestamp_must_not_regress"
    ),
}

_EXISTS_ORDER = "test_create_transfers.py::test_exists_with_different_fields_in_check_order"
_IMPORTED_BATCH = "test_imported.py::test_imported_transfer_batch_checks"
_IMPORTED = "test_imported.py::test_imported_transfers"

TRANSFER_STATUS_COVERAGE: dict[CreateTransferStatus, str | Unreachable] = {
    T.CREATED: "test_create_transfers.py::test_created_transfer_moves_posted_balances",
    T.LINKED_EVENT_FAILED: "test_linked.py::test_transfer_chain_rollback_leaves_no_trace",
    T.LINKED_EVENT_CHAIN_OPEN: "test_linked.py::test_chain_open_at_the_end_of_the_batch",
    T.IMPORTED_EVENT_EXPECTED: _IMPORTED_BATCH,
    T.IMPORTED_EVENT_NOT_EXPECTED: _IMPORTED_BATCH,
    T.TIMESTAMP_MUST_BE_ZERO: "test_create_transfers.py::test_timestamp_must_be_zero",
    T.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE: _IMPORTED_BATCH,
    T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE: _IMPORTED_BATCH,
    T.RESERVED_FLAG: "test_create_transfers.py::test_reserved_flag_comes_before_the_id",
    T.ID_MUST_NOT_BE_ZERO: "test_create_transfers.py::test_id_checks",
    T.ID_MUST_NOT_BE_INT_MAX: "test_create_transfers.py::test_id_checks",
    T.EXISTS_WITH_DIFFERENT_FLAGS: _EXISTS_ORDER,
    T.EXISTS_WITH_DIFFERENT_PENDING_ID: _EXISTS_ORDER,
    T.EXISTS_WITH_DIFFERENT_TIMEOUT: _EXISTS_ORDER,
    T.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID: _EXISTS_ORDER,
    T.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID: _EXISTS_ORDER,
    T.EXISTS_WITH_DIFFERENT_AMOUNT: _EXISTS_ORDER,
    T.EXISTS_WITH_DIFFERENT_USER_DATA_128: _EXISTS_ORDER,
    T.EXISTS_WITH_DIFFERENT_USER_DATA_64: _EXISTS_ORDER,
    T.EXISTS_WITH_DIFFERENT_USER_DATA_32: _EXISTS_ORDER,
    T.EXISTS_WITH_DIFFERENT_LEDGER: _EXISTS_ORDER,
    T.EXISTS_WITH_DIFFERENT_CODE: _EXISTS_ORDER,
    T.EXISTS: "test_create_transfers.py::test_exists_returns_the_original_timestamp",
    T.ID_ALREADY_FAILED: (
        "test_create_transfers.py::test_id_already_failed_after_a_transient_failure"
    ),
    T.FLAGS_ARE_MUTUALLY_EXCLUSIVE: (
        "test_two_phase.py::test_flags_are_mutually_exclusive_for_post_and_void"
    ),
    T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO: (
        "test_create_transfers.py::test_account_id_checks_in_order"
    ),
    T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX: (
        "test_create_transfers.py::test_account_id_checks_in_order"
    ),
    T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO: (
        "test_create_transfers.py::test_account_id_checks_in_order"
    ),
    T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX: (
        "test_create_transfers.py::test_account_id_checks_in_order"
    ),
    T.ACCOUNTS_MUST_BE_DIFFERENT: "test_create_transfers.py::test_account_id_checks_in_order",
    T.PENDING_ID_MUST_BE_ZERO: (
        "test_create_transfers.py::test_pending_id_timeout_and_closing_need_the_right_flags"
    ),
    T.PENDING_ID_MUST_NOT_BE_ZERO: "test_two_phase.py::test_pending_id_checks",
    T.PENDING_ID_MUST_NOT_BE_INT_MAX: "test_two_phase.py::test_pending_id_checks",
    T.PENDING_ID_MUST_BE_DIFFERENT: "test_two_phase.py::test_pending_id_checks",
    T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER: (
        "test_create_transfers.py::test_pending_id_timeout_and_closing_need_the_right_flags"
    ),
    T.CLOSING_TRANSFER_MUST_BE_PENDING: (
        "test_balancing_closing.py::test_closing_transfer_must_be_pending"
    ),
    T.LEDGER_MUST_NOT_BE_ZERO: "test_create_transfers.py::test_ledger_and_code_must_not_be_zero",
    T.CODE_MUST_NOT_BE_ZERO: "test_create_transfers.py::test_ledger_and_code_must_not_be_zero",
    T.DEBIT_ACCOUNT_NOT_FOUND: "test_create_transfers.py::test_accounts_must_exist_debit_first",
    T.CREDIT_ACCOUNT_NOT_FOUND: "test_create_transfers.py::test_accounts_must_exist_debit_first",
    T.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER: "test_create_transfers.py::test_ledgers_must_match",
    T.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS: (
        "test_create_transfers.py::test_ledgers_must_match"
    ),
    T.PENDING_TRANSFER_NOT_FOUND: "test_two_phase.py::test_pending_id_checks",
    T.PENDING_TRANSFER_NOT_PENDING: "test_two_phase.py::test_pending_id_checks",
    T.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID: (
        "test_two_phase.py::test_post_must_match_the_pending_transfer"
    ),
    T.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID: (
        "test_two_phase.py::test_post_must_match_the_pending_transfer"
    ),
    T.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER: (
        "test_two_phase.py::test_post_must_match_the_pending_transfer"
    ),
    T.PENDING_TRANSFER_HAS_DIFFERENT_CODE: (
        "test_two_phase.py::test_post_must_match_the_pending_transfer"
    ),
    T.EXCEEDS_PENDING_TRANSFER_AMOUNT: "test_two_phase.py::test_post_more_than_pending_exceeds",
    T.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT: "test_two_phase.py::test_void_amount_rules",
    T.PENDING_TRANSFER_ALREADY_POSTED: "test_two_phase.py::test_already_posted_and_already_voided",
    T.PENDING_TRANSFER_ALREADY_VOIDED: "test_two_phase.py::test_already_posted_and_already_voided",
    T.PENDING_TRANSFER_EXPIRED: "test_two_phase.py::test_pending_timeout_expires",
    T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS: _IMPORTED,
    T.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_DEBIT_ACCOUNT: _IMPORTED,
    T.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_CREDIT_ACCOUNT: _IMPORTED,
    T.IMPORTED_EVENT_TIMEOUT_MUST_BE_ZERO: _IMPORTED,
    T.DEBIT_ACCOUNT_ALREADY_CLOSED: (
        "test_balancing_closing.py::test_closing_debit_closes_and_void_reopens"
    ),
    T.CREDIT_ACCOUNT_ALREADY_CLOSED: (
        "test_balancing_closing.py::test_closing_debit_closes_and_void_reopens"
    ),
    T.OVERFLOWS_DEBITS_PENDING: "test_create_transfers.py::test_overflows_pending",
    T.OVERFLOWS_CREDITS_PENDING: "test_create_transfers.py::test_overflows_pending",
    T.OVERFLOWS_DEBITS_POSTED: "test_create_transfers.py::test_overflows_posted",
    T.OVERFLOWS_CREDITS_POSTED: "test_create_transfers.py::test_overflows_posted",
    T.OVERFLOWS_DEBITS: "test_create_transfers.py::test_overflows_sum_of_pending_and_posted",
    T.OVERFLOWS_CREDITS: "test_create_transfers.py::test_overflows_sum_of_pending_and_posted",
    # Reachable on the embedded engine only (ManualClock near the end of the u63 range); a real
    # cluster's clock cannot pass 2^63 ns - 2^32 s before the year 2126. The test says so in its
    # skip reason for the cluster engine.
    T.OVERFLOWS_TIMEOUT: "test_create_transfers.py::test_overflows_timeout",
    T.EXCEEDS_CREDITS: "test_create_transfers.py::test_exceeds_credits_and_exceeds_debits",
    T.EXCEEDS_DEBITS: "test_create_transfers.py::test_exceeds_credits_and_exceeds_debits",
}


def _test_source(reference: str) -> str:
    file_name, test_name = reference.split("::")
    source = (HERE / file_name).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == test_name:
            segment = ast.get_source_segment(source, node)
            assert segment is not None
            return segment
    raise AssertionError(f"{reference} does not exist")


@pytest.mark.parametrize(
    ("status_enum", "coverage"),
    [
        (CreateAccountStatus, ACCOUNT_STATUS_COVERAGE),
        (CreateTransferStatus, TRANSFER_STATUS_COVERAGE),
    ],
    ids=["create_account_status", "create_transfer_status"],
)
def test_every_status_is_covered_or_unreachable(
    status_enum: type[enum.IntEnum], coverage: dict[enum.IntEnum, str]
) -> None:
    assert set(coverage) == set(status_enum), (
        f"unlisted: {sorted(s.name for s in set(status_enum) - set(coverage))}"
    )
    for status, entry in coverage.items():
        if isinstance(entry, Unreachable):
            assert len(entry) > 20, f"{status.name}: state why it is unreachable"
            continue
        body = _test_source(entry)
        assert status.name in body, f"{entry} does not mention {status.name}"


def test_unreachable_statuses_are_few() -> None:
    unreachable = [
        s
        for coverage in (ACCOUNT_STATUS_COVERAGE, TRANSFER_STATUS_COVERAGE)
        for s, entry in coverage.items()
        if isinstance(entry, Unreachable)
    ]
    assert unreachable == [CreateAccountStatus.RESERVED_FIELD]
