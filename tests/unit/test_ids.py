"""Derived ids: deterministic, distinct, never 0 or 2**128-1, and strict about their inputs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import ids
from ledger.codes import OWNED_ACCOUNT_CODES, SYSTEM_ACCOUNT_CODES, AccountCode
from ledger.ids import (
    IDEMPOTENCY_KEY_BYTES_MAX,
    LEG_INDEX_MAX,
    budget_account_id,
    derive_id,
    leg_id,
    operation_id,
    overdraft_account_id,
    request_fingerprint,
    system_account_id,
)

U128_MAX = (1 << 128) - 1
U32_MAX = (1 << 32) - 1

# Only characters UTF-8 can encode (no lone surrogates); 60 of them are at most 240 bytes.
text_chars = st.characters(codec="utf-8")
keys = st.text(text_chars, min_size=1, max_size=60)
tenants = st.integers(min_value=0, max_value=U32_MAX)
ledgers = st.integers(min_value=1, max_value=U32_MAX)
u128_ids = st.integers(min_value=1, max_value=U128_MAX - 1)
parts = st.one_of(
    st.integers(min_value=0, max_value=U128_MAX),
    st.text(text_chars, max_size=20),
    st.binary(max_size=20),
)


def assert_valid_id(value: int) -> None:
    assert 1 <= value <= U128_MAX - 1


@given(st.lists(parts, max_size=5))
def test_derive_id_is_deterministic_and_valid(values: list[int | str | bytes]) -> None:
    first = derive_id("test", *values)
    assert first == derive_id("test", *values)
    assert_valid_id(first)


def test_derive_id_is_pinned() -> None:
    # Ids are stored in TigerBeetle: an accidental change to the encoding breaks every replay.
    assert derive_id("test", 1, "a", b"b") == 0x0421F24EC97CFE391A346C118437CE6D
    assert system_account_id(1, AccountCode.CONTROL_DRAIN) == (0xC66DEEA2E84DE2D04368A6DB7B9435AB)


@given(st.lists(parts, max_size=4), st.lists(parts, max_size=4))
def test_distinct_parts_give_distinct_ids(
    left: list[int | str | bytes], right: list[int | str | bytes]
) -> None:
    def typed(values: list[int | str | bytes]) -> list[tuple[str, int | str | bytes]]:
        return [(type(value).__name__, value) for value in values]

    if typed(left) != typed(right):
        assert derive_id("test", *left) != derive_id("test", *right)


def test_encoding_is_unambiguous() -> None:
    assert derive_id("n", "ab", "c") != derive_id("n", "a", "bc")
    assert derive_id("n", b"ab", b"c") != derive_id("n", b"a", b"bc")
    assert derive_id("n", 1) != derive_id("n", "1") != derive_id("n", b"\x01")
    assert derive_id("n", 1) != derive_id("n", b"\x00" * 15 + b"\x01")
    assert derive_id("n") != derive_id("n", b"")
    assert derive_id("n", "") != derive_id("n", b"")
    assert derive_id("n1") != derive_id("n", 1)
    assert derive_id("a", "b") != derive_id("ab")


def test_digest_remaps_the_ids_tigerbeetle_refuses() -> None:
    assert ids._u128_from_digest(bytes(16)) == 1
    assert ids._u128_from_digest(b"\xff" * 16) == U128_MAX - 1
    assert ids._u128_from_digest(b"\x00" * 15 + b"\x05") == 5


@given(tenants, keys)
def test_operation_id_is_deterministic(tenant: int, key: str) -> None:
    op = operation_id(tenant, key)
    assert op == operation_id(tenant, key)
    assert_valid_id(op)


@given(tenants, tenants, keys, keys)
def test_operation_ids_are_distinct(tenant_a: int, tenant_b: int, key_a: str, key_b: str) -> None:
    if (tenant_a, key_a) != (tenant_b, key_b):
        assert operation_id(tenant_a, key_a) != operation_id(tenant_b, key_b)


def test_many_operation_and_leg_ids_are_all_distinct() -> None:
    seen: set[int] = set()
    for tenant in range(3):
        for number in range(300):
            op = operation_id(tenant, f"key-{number}")
            seen.add(op)
            seen.update(leg_id(op, index) for index in range(8))
    assert len(seen) == 3 * 300 * 9


@given(u128_ids, st.integers(min_value=0, max_value=LEG_INDEX_MAX))
def test_leg_id_is_deterministic_and_not_the_operation_id(op: int, index: int) -> None:
    leg = leg_id(op, index)
    assert leg == leg_id(op, index)
    assert leg != op
    assert_valid_id(leg)


def test_leg_ids_of_one_operation_are_distinct() -> None:
    op = operation_id(1, "order-42")
    legs = {leg_id(op, index) for index in range(2000)}
    assert len(legs) == 2000
    assert op not in legs


def test_system_account_ids_are_distinct_per_ledger_and_code() -> None:
    accounts = {
        (ledger, code): system_account_id(ledger, code)
        for ledger in (1, 2, 3, 1000, U32_MAX)
        for code in SYSTEM_ACCOUNT_CODES
    }
    assert len(set(accounts.values())) == len(accounts)
    for value in accounts.values():
        assert_valid_id(value)


@given(ledgers)
def test_system_account_id_is_deterministic(ledger: int) -> None:
    for code in SYSTEM_ACCOUNT_CODES:
        assert system_account_id(ledger, code) == system_account_id(ledger, code)


def test_namespaces_keep_kinds_apart() -> None:
    # The same numbers in two kinds of id must not give the same id.
    assert system_account_id(1, AccountCode.ISSUANCE_PAID) != derive_id(
        "operation/leg", 1, int(AccountCode.ISSUANCE_PAID)
    )
    wallet = 12345
    assert overdraft_account_id(wallet, AccountCode.OVERDRAFT) != overdraft_account_id(
        wallet, AccountCode.OVERDRAFT_UNBOUNDED
    )
    assert budget_account_id(wallet, 1, 0) != budget_account_id(wallet, 1, 1)
    assert budget_account_id(wallet, 1, 0) != budget_account_id(wallet, 2, 0)


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_request_fingerprint(body_a: bytes, body_b: bytes) -> None:
    assert request_fingerprint(body_a) == request_fingerprint(body_a)
    assert_valid_id(request_fingerprint(body_a))
    if body_a != body_b:
        assert request_fingerprint(body_a) != request_fingerprint(body_b)


def test_idempotency_key_validation() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        operation_id(1, "")
    with pytest.raises(ValueError, match="more than 255"):
        operation_id(1, "k" * (IDEMPOTENCY_KEY_BYTES_MAX + 1))
    with pytest.raises(ValueError, match="more than 255"):
        operation_id(1, "é" * 128)  # 256 bytes of UTF-8 in 128 characters.
    with pytest.raises(ValueError, match="UTF-8"):
        operation_id(1, "\ud800")
    assert_valid_id(operation_id(1, "k" * IDEMPOTENCY_KEY_BYTES_MAX))


def test_tenant_validation() -> None:
    with pytest.raises(ValueError, match="tenant"):
        operation_id(-1, "key")
    with pytest.raises(ValueError, match="tenant"):
        operation_id(U32_MAX + 1, "key")


def test_leg_index_validation() -> None:
    op = operation_id(1, "key")
    with pytest.raises(ValueError, match="must not be negative"):
        leg_id(op, -1)
    with pytest.raises(ValueError, match="at most"):
        leg_id(op, LEG_INDEX_MAX + 1)
    with pytest.raises(ValueError, match="operation_id"):
        leg_id(0, 0)
    with pytest.raises(ValueError, match="operation_id"):
        leg_id(U128_MAX, 0)


def test_ledger_validation() -> None:
    for ledger in (0, -1, U32_MAX + 1):
        with pytest.raises(ValueError, match="ledger"):
            system_account_id(ledger, AccountCode.CONSUMED)


@pytest.mark.parametrize("code", sorted(OWNED_ACCOUNT_CODES))
def test_owned_codes_have_no_system_account(code: AccountCode) -> None:
    with pytest.raises(ValueError, match="not a system account code"):
        system_account_id(1, code)


def test_owned_account_validation() -> None:
    with pytest.raises(ValueError, match="not an overdraft account code"):
        overdraft_account_id(1, AccountCode.GRANT)
    with pytest.raises(ValueError, match="wallet_id"):
        overdraft_account_id(0, AccountCode.OVERDRAFT)
    with pytest.raises(ValueError, match="period_start_ns"):
        budget_account_id(1, 1, -1)
    with pytest.raises(ValueError, match="budget_id"):
        budget_account_id(1, 0, 0)


def test_part_validation() -> None:
    with pytest.raises(ValueError, match="namespace"):
        derive_id("")
    with pytest.raises(ValueError, match="namespace"):
        derive_id("n" * 65)
    with pytest.raises(ValueError, match="u128"):
        derive_id("n", -1)
    with pytest.raises(ValueError, match="u128"):
        derive_id("n", U128_MAX + 1)
    with pytest.raises(TypeError, match="bool"):
        derive_id("n", True)
    with pytest.raises(TypeError, match="float"):
        derive_id("n", 1.0)  # type: ignore[arg-type]


@given(st.integers(1, 2**128 - 2), st.integers(0, 2**32 - 1))
def test_leg_id_fast_path_is_derive_id(operation: int, index: int) -> None:
    assert leg_id(operation, index) == derive_id("operation/leg", operation, index)


@given(st.integers(0, 2**32 - 1), st.text(min_size=1, max_size=60))
def test_operation_id_fast_path_is_derive_id(tenant: int, key: str) -> None:
    from ledger.ids import operation_id

    assert operation_id(tenant, key) == derive_id("operation", tenant, key.encode())


@given(st.binary(max_size=300))
def test_fingerprint_fast_path_is_derive_id(body: bytes) -> None:
    from ledger.ids import request_fingerprint

    assert request_fingerprint(body) == derive_id("request/fingerprint", body)


def test_leg_ids_are_leg_id_for_each_index() -> None:
    for op in (1, 2**64 + 7, U128_MAX - 1):
        indexes = [0, 1, 2, 3, 4, 57, 100, 10**6]
        assert ids.leg_ids(op, indexes) == [ids.leg_id(op, i) for i in indexes]
        assert ids.leg_id(op, 3) == ids.derive_id(ids._NAMESPACE_LEG, op, 3)
        # The first indexes use pre-encoded parts; the ones past them encode their own.
        every = range(ids._LEG_SUFFIXES_CACHED + 3)
        assert ids.leg_ids(op, every) == [ids.derive_id(ids._NAMESPACE_LEG, op, i) for i in every]
