"""The account and transfer codes: unique, nonzero u16, and every account kind has its flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger import codes
from ledger.codes import (
    ACCOUNT_FLAG_CLOSED,
    ACCOUNT_FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS,
    ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS,
    ACCOUNT_FLAG_HISTORY,
    ACCOUNT_FLAG_IMPORTED,
    ACCOUNT_FLAG_LINKED,
    ACCOUNT_FLAGS,
    CONTROL_ACCOUNT_CODES,
    OWNED_ACCOUNT_CODES,
    SYSTEM_ACCOUNT_CODES,
    AccountCode,
    TransferCode,
    account_flags,
)

DMNEC = ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS
CMNED = ACCOUNT_FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS


@pytest.mark.parametrize("enum_type", [AccountCode, TransferCode])
def test_codes_are_unique_nonzero_u16(enum_type: type[AccountCode] | type[TransferCode]) -> None:
    values = [member.value for member in enum_type]
    assert len(values) == len(set(values))
    assert all(1 <= value <= 0xFFFF for value in values)


def test_flag_bits_match_tigerbeetle() -> None:
    assert ACCOUNT_FLAG_LINKED == 1
    assert DMNEC == 2
    assert CMNED == 4
    assert ACCOUNT_FLAG_HISTORY == 8
    assert ACCOUNT_FLAG_IMPORTED == 16
    assert ACCOUNT_FLAG_CLOSED == 32


def test_flag_bits_match_the_tigerbeetle_client() -> None:
    # codes.py does not import the client; this test pins its plain ints to the client's enum.
    import tigerbeetle

    flags = tigerbeetle.AccountFlags
    assert flags.LINKED.value == ACCOUNT_FLAG_LINKED
    assert flags.DEBITS_MUST_NOT_EXCEED_CREDITS.value == DMNEC
    assert flags.CREDITS_MUST_NOT_EXCEED_DEBITS.value == CMNED
    assert flags.HISTORY.value == ACCOUNT_FLAG_HISTORY
    assert flags.IMPORTED.value == ACCOUNT_FLAG_IMPORTED
    assert flags.CLOSED.value == ACCOUNT_FLAG_CLOSED


def test_every_account_code_has_flags() -> None:
    assert set(ACCOUNT_FLAGS) == set(AccountCode)
    for code in AccountCode:
        assert account_flags(code) == ACCOUNT_FLAGS[code]


@pytest.mark.parametrize("code", list(AccountCode))
def test_flags_are_creatable(code: AccountCode) -> None:
    flags = ACCOUNT_FLAGS[code]
    # TigerBeetle refuses both balance limits on one account; linked, imported and closed are
    # never part of an account kind.
    assert flags & (DMNEC | CMNED) != DMNEC | CMNED
    assert flags & (ACCOUNT_FLAG_LINKED | ACCOUNT_FLAG_IMPORTED | ACCOUNT_FLAG_CLOSED) == 0
    assert flags & ~(DMNEC | CMNED | ACCOUNT_FLAG_HISTORY) == 0


def test_grant_accounts_cannot_go_negative_and_keep_history() -> None:
    assert ACCOUNT_FLAGS[AccountCode.GRANT] == DMNEC | ACCOUNT_FLAG_HISTORY
    assert ACCOUNT_FLAGS[AccountCode.BUDGET] == DMNEC | ACCOUNT_FLAG_HISTORY
    assert ACCOUNT_FLAGS[AccountCode.OVERDRAFT] == DMNEC | ACCOUNT_FLAG_HISTORY
    assert ACCOUNT_FLAGS[AccountCode.OVERDRAFT_UNBOUNDED] == CMNED | ACCOUNT_FLAG_HISTORY


def test_control_accounts_that_must_stay_zero_are_bounded_on_the_moving_side() -> None:
    assert ACCOUNT_FLAGS[AccountCode.CONTROL_CHECK] == DMNEC
    assert ACCOUNT_FLAGS[AccountCode.OPERATION_HEADER_DEBIT] == DMNEC
    assert ACCOUNT_FLAGS[AccountCode.OPERATION_HEADER_CREDIT] == CMNED
    assert ACCOUNT_FLAGS[AccountCode.CONTROL_DRAIN] == CMNED
    assert ACCOUNT_FLAGS[AccountCode.CONTROL_HOLD] == DMNEC


def test_issuers_and_sinks_have_the_opposite_limits() -> None:
    for issuer in (
        AccountCode.ISSUANCE_PAID,
        AccountCode.ISSUANCE_PROMOTIONAL,
        AccountCode.OVERDRAFT_LINE,
        AccountCode.BUDGET_LINE,
    ):
        assert ACCOUNT_FLAGS[issuer] == CMNED
    for sink in (
        AccountCode.CONSUMED,
        AccountCode.BREAKAGE,
        AccountCode.VOIDED,
        AccountCode.REFUNDED,
        AccountCode.BUDGET_USAGE,
    ):
        assert ACCOUNT_FLAGS[sink] == DMNEC


def test_system_and_owned_codes_partition_the_account_codes() -> None:
    assert not SYSTEM_ACCOUNT_CODES & OWNED_ACCOUNT_CODES
    assert set(AccountCode) == SYSTEM_ACCOUNT_CODES | OWNED_ACCOUNT_CODES
    assert set(OWNED_ACCOUNT_CODES) == {
        AccountCode.GRANT,
        AccountCode.OVERDRAFT,
        AccountCode.OVERDRAFT_UNBOUNDED,
        AccountCode.BUDGET,
    }
    assert CONTROL_ACCOUNT_CODES <= SYSTEM_ACCOUNT_CODES


def test_values_are_stable() -> None:
    # Codes are stored in TigerBeetle forever: renumbering one is a data migration, not a refactor.
    assert {member.name: member.value for member in AccountCode} == {
        "ISSUANCE_PAID": 1,
        "ISSUANCE_PROMOTIONAL": 2,
        "CONSUMED": 3,
        "BREAKAGE": 4,
        "VOIDED": 5,
        "REFUNDED": 6,
        "OVERDRAFT_LINE": 7,
        "BUDGET_LINE": 8,
        "BUDGET_USAGE": 9,
        "CONTROL_DRAIN": 10,
        "CONTROL_CHECK": 11,
        "CONTROL_HOLD": 12,
        "OPERATION_HEADER_DEBIT": 13,
        "OPERATION_HEADER_CREDIT": 14,
        "CONTROL_CAP": 15,
        "GRANT": 100,
        "OVERDRAFT": 101,
        "OVERDRAFT_UNBOUNDED": 102,
        "BUDGET": 103,
    }
    assert {member.name: member.value for member in TransferCode} == {
        "OPERATION_HEADER": 1,
        "GRANT_FUNDING": 2,
        "DEBIT": 3,
        "RESERVE": 4,
        "CONSUME": 5,
        "SETTLE": 6,
        "EXPIRE": 7,
        "GRANT_VOID": 8,
        "GRANT_REFUND": 9,
        "USAGE_REFUND": 10,
        "CORRECTION": 11,
        "OVERDRAFT_LIMIT": 12,
        "OVERDRAFT_DRAW": 13,
        "OVERDRAFT_REPAY": 14,
        "BUDGET_LIMIT": 15,
        "BUDGET_SPEND": 16,
        "CONTROL_HOLD": 17,
        "CONTROL_NORMALIZE": 18,
        "CONTROL_CHECK": 19,
        "CONTROL_CAP": 20,
        "RESERVATION_MARKER": 21,
        "PROJECTION_TICK": 22,
        "ROLLOVER": 23,
    }


def test_import_time_checks_pass() -> None:
    codes._check_tables()


def test_readme_lists_every_code() -> None:
    readme = (Path(codes.__file__).parent / "README.md").read_text(encoding="utf-8")
    for member in [*AccountCode, *TransferCode]:
        assert f"| {member.value} | `{member.name}` |" in readme, member


def test_transfer_field_order_is_what_positional_builders_assume() -> None:
    """ledger.operations.make_leg and the embedded engine build `Transfer` positionally."""
    import dataclasses

    from ledger.types import Transfer

    assert [f.name for f in dataclasses.fields(Transfer)] == [
        "id",
        "debit_account_id",
        "credit_account_id",
        "amount",
        "pending_id",
        "user_data_128",
        "user_data_64",
        "user_data_32",
        "timeout",
        "ledger",
        "code",
        "flags",
        "timestamp",
    ]
