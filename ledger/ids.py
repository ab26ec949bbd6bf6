"""Deterministic ids: every TigerBeetle id the service writes is derived, never minted per attempt.

A retry of the same request (same tenant, same idempotency key) derives the same operation id and
the same id for every event of its chain, so TigerBeetle itself answers `exists` for what an
earlier attempt already applied, and nothing is ever applied twice.

Invariants:
- `derive_id` is a pure function of its namespace and parts: BLAKE2b with a 16-byte digest and
  the personalization `credit-ledger/v1`, over a length-prefixed encoding of the namespace and
  of each part with a type tag. Two different inputs therefore never encode to the same bytes
  (`("ab", "c")` and `("a", "bc")` differ; so do `1`, `"1"` and `b"\\x01"`).
- Every derived id is in 1..2**128-2: TigerBeetle rejects ids 0 and 2**128-1, so those two digests
  are remapped (to 1 and 2**128-2; a collision there is as likely as any other, 2**-128).
- Namespaces keep kinds of ids apart: a system account id never equals an operation id, even for
  the same numbers.
- Changing the encoding, the personalization or a namespace changes every id and breaks the
  idempotency of requests in flight: bump the personalization version and migrate instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Final

from ledger.codes import OVERDRAFT_ACCOUNT_CODES, SYSTEM_ACCOUNT_CODES, AccountCode
from ledger.limits import U32_MAX, U64_MAX, U128_MAX

ID_MIN: Final = 1
ID_MAX: Final = U128_MAX - 1

# An idempotency key is at most this many bytes of UTF-8 (an HTTP header value, kept short).
IDEMPOTENCY_KEY_BYTES_MAX: Final = 255
# A namespace names a kind of id; it is a short ASCII constant in code, never user input.
NAMESPACE_BYTES_MAX: Final = 64
# One part of a derived id: an idempotency key, a body fingerprint input, an id.
PART_BYTES_MAX: Final = 1024 * 1024
# The events of one operation are numbered 0..LEG_INDEX_MAX; 0 is the operation header.
LEG_INDEX_MAX: Final = U32_MAX
LEG_INDEX_HEADER: Final = 0

_PERSON: Final = b"credit-ledger/v1"
_DIGEST_BYTES: Final = 16
_TAG_INT: Final = b"i"
_TAG_STR: Final = b"s"
_TAG_BYTES: Final = b"b"

_NAMESPACE_SYSTEM_ACCOUNT: Final = "account/system"
_NAMESPACE_OVERDRAFT_ACCOUNT: Final = "account/overdraft"
_NAMESPACE_BUDGET_ACCOUNT: Final = "account/budget"
_NAMESPACE_OPERATION: Final = "operation"
_NAMESPACE_LEG: Final = "operation/leg"
_NAMESPACE_FINGERPRINT: Final = "request/fingerprint"

assert len(_PERSON) <= hashlib.blake2b.PERSON_SIZE
assert _DIGEST_BYTES * 8 == 128
assert LEG_INDEX_MAX <= U32_MAX


def id_text(value: int) -> str:
    """A u128 id as the UUID text the API speaks (`str(uuid.UUID(int=value))`, without building
    a UUID): how an id appears in every message, never as a decimal number."""
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def derive_id(namespace: str, *parts: int | str | bytes) -> int:
    """A u128 id in 1..2**128-2 that depends only on `namespace` and `parts`.

    Integer parts must be u128 (0..2**128-1), or ValueError; bools and other types are refused
    with TypeError, so that `True` never stands in for `1` by accident.
    """
    if not namespace or not namespace.isascii():
        raise ValueError(f"namespace must be non-empty ASCII, got {namespace!r}")
    if len(namespace) > NAMESPACE_BYTES_MAX:
        raise ValueError(f"namespace is longer than {NAMESPACE_BYTES_MAX} bytes: {namespace!r}")
    hasher = hashlib.blake2b(digest_size=_DIGEST_BYTES, person=_PERSON)
    hasher.update(_encode_part(namespace))
    hasher.update(len(parts).to_bytes(4, "big"))
    for part in parts:
        hasher.update(_encode_part(part))
    return _u128_from_digest(hasher.digest())


def system_account_id(ledger: int, code: AccountCode) -> int:
    """The id of the one system account of kind `code` on `ledger` (a credit type)."""
    _check_ledger(ledger)
    if code not in SYSTEM_ACCOUNT_CODES:
        raise ValueError(f"{code!r} is not a system account code")
    return derive_id(_NAMESPACE_SYSTEM_ACCOUNT, ledger, int(code))


def overdraft_account_id(wallet_id: int, code: AccountCode) -> int:
    """The id of a soft-limited wallet's overdraft account (bounded or unbounded)."""
    _check_id("wallet_id", wallet_id)
    if code not in OVERDRAFT_ACCOUNT_CODES:
        raise ValueError(f"{code!r} is not an overdraft account code")
    return derive_id(_NAMESPACE_OVERDRAFT_ACCOUNT, wallet_id, int(code))


def budget_account_id(resource_id: int, budget_id: int, period_start_ns: int) -> int:
    """The id of the budget account of one (resource, budget, period).

    `period_start_ns` is the start of the period in ns since the Unix epoch (UTC); a lifetime
    budget has a single period, conventionally starting at 0.
    """
    _check_id("resource_id", resource_id)
    _check_id("budget_id", budget_id)
    if not 0 <= period_start_ns <= U64_MAX:
        raise ValueError(f"period_start_ns must be a u64, got {period_start_ns}")
    return derive_id(_NAMESPACE_BUDGET_ACCOUNT, resource_id, budget_id, period_start_ns)


def operation_id(tenant: int, idempotency_key: str) -> int:
    """The id of the operation that `tenant` asked for under `idempotency_key`.

    The same (tenant, key) always gives the same id; two tenants never share an operation.
    """
    if not 0 <= tenant <= U32_MAX:
        raise ValueError(f"tenant must be a u32, got {tenant}")
    key = idempotency_key_bytes(idempotency_key)
    # derive_id(_NAMESPACE_OPERATION, tenant, key), from a prehashed prefix (every request).
    hasher = _OPERATION_PREFIX.copy()
    hasher.update(_INT_PART + tenant.to_bytes(16, "big"))
    hasher.update(_TAG_BYTES + len(key).to_bytes(4, "big") + key)
    return _u128_from_digest(hasher.digest())


def leg_id(operation_id: int, leg_index: int) -> int:
    """The id of event `leg_index` of an operation's chain; leg 0 is the operation header.

    A builder numbers the events of an operation in a fixed layout, so every attempt of the same
    operation derives the same id for the same event.
    """
    return leg_ids(operation_id, (leg_index,))[0]


def dimension_set_id(dimensions: Mapping[str, str]) -> int:
    """The id of a set of dimensions (name -> value), whatever the order of its names: what a
    spend's chain carries (its check leg's `user_data_128`) for the `dimension_sets` row that
    says what the set is. 0 for no dimensions."""
    if not dimensions:
        return 0
    return derive_id("dimensions", *[part for item in sorted(dimensions.items()) for part in item])


def projection_tick_id(watermark_ts: int) -> int:
    """The tick the projection feed writes when it has read up to `watermark_ts`: one per
    watermark, so feeds that race write it once."""
    return derive_id("projection/tick", watermark_ts)


def reservation_marker_id(reservation_id: int) -> int:
    """A reservation's marker: pending, with the reservation's timeout (ledger/README.md)."""
    return derive_id("reservation/marker", reservation_id)


def reservation_resolution_id(reservation_id: int) -> int:
    """The post (a settle) or void (a release) of a reservation's marker: one of them at most."""
    return derive_id("reservation/resolution", reservation_id)


def leg_ids(operation_id: int, leg_indexes: Iterable[int]) -> list[int]:
    """`leg_id(operation_id, i)` for each i, with the operation's part hashed once (a chain's
    builder needs all its legs' ids at once)."""
    _check_id("operation_id", operation_id)
    # The same bytes as `derive_id(_NAMESPACE_LEG, operation_id, leg_index)`, from a hasher that
    # has already taken the constant prefix and the operation: this runs for every event.
    base = _LEG_PREFIX.copy()
    base.update(_INT_PART + operation_id.to_bytes(16, "big"))
    ids = []
    for leg_index in leg_indexes:
        suffix = _LEG_SUFFIXES[leg_index] if 0 <= leg_index < _LEG_SUFFIXES_CACHED else None
        if suffix is None:
            if leg_index < 0:
                raise ValueError(f"leg_index must not be negative, got {leg_index}")
            if leg_index > LEG_INDEX_MAX:
                raise ValueError(f"leg_index must be at most {LEG_INDEX_MAX}, got {leg_index}")
            suffix = _INT_PART + leg_index.to_bytes(16, "big")
        hasher = base.copy()
        hasher.update(suffix)
        value = int.from_bytes(hasher.digest(), "big")
        ids.append(value if 0 < value < U128_MAX else _u128_from_digest(hasher.digest()))
    return ids


def request_fingerprint(body: bytes) -> int:
    """A u128 fingerprint of a request body, for the operation header's `user_data_128`.

    The caller passes a canonical encoding of the request (fields in a fixed order, defaults
    filled in), so that two requests that mean the same thing have the same fingerprint.
    """
    if len(body) > PART_BYTES_MAX:
        raise ValueError(f"body is longer than {PART_BYTES_MAX} bytes")
    # derive_id(_NAMESPACE_FINGERPRINT, body), from a prehashed prefix (every request).
    hasher = _FINGERPRINT_PREFIX.copy()
    hasher.update(_TAG_BYTES + len(body).to_bytes(4, "big") + body)
    return _u128_from_digest(hasher.digest())


def idempotency_key_bytes(idempotency_key: str) -> bytes:
    """The UTF-8 bytes of a valid idempotency key, or a ValueError saying why it is not valid."""
    if not idempotency_key:
        raise ValueError("idempotency key must not be empty")
    try:
        encoded = idempotency_key.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError("idempotency key must be valid UTF-8 text") from error
    if len(encoded) > IDEMPOTENCY_KEY_BYTES_MAX:
        raise ValueError(
            f"idempotency key is {len(encoded)} bytes, more than {IDEMPOTENCY_KEY_BYTES_MAX}"
        )
    return encoded


def _encode_part(part: int | str | bytes) -> bytes:
    """Type tag, 4-byte big-endian length, payload: no two parts encode to the same bytes."""
    if isinstance(part, bool):
        raise TypeError("a bool is not an id part; pass an int")
    if isinstance(part, int):
        if not 0 <= part <= U128_MAX:
            raise ValueError(f"an int id part must be a u128, got {part}")
        return _TAG_INT + (16).to_bytes(4, "big") + part.to_bytes(16, "big")
    if isinstance(part, str):
        try:
            payload = part.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError("a str id part must be valid UTF-8 text") from error
        tag = _TAG_STR
    elif isinstance(part, bytes):
        payload = part
        tag = _TAG_BYTES
    else:
        raise TypeError(f"an id part must be int, str or bytes, got {type(part).__name__}")
    if len(payload) > PART_BYTES_MAX:
        raise ValueError(f"an id part is longer than {PART_BYTES_MAX} bytes")
    return tag + len(payload).to_bytes(4, "big") + payload


def _u128_from_digest(digest: bytes) -> int:
    """The digest as a big-endian u128, with the two ids TigerBeetle rejects remapped."""
    assert len(digest) == _DIGEST_BYTES
    value = int.from_bytes(digest, "big")
    if value == 0:
        return ID_MIN
    if value == U128_MAX:
        return ID_MAX
    return value


def _check_ledger(ledger: int) -> None:
    if not 1 <= ledger <= U32_MAX:
        raise ValueError(f"ledger must be in 1..{U32_MAX}, got {ledger}")


def _check_id(name: str, value: int) -> None:
    if not ID_MIN <= value <= ID_MAX:
        raise ValueError(f"{name} must be in {ID_MIN}..{ID_MAX}, got {value}")


_INT_PART: Final = _TAG_INT + (16).to_bytes(4, "big")
# The encoded part of the first leg indexes (every chain's legs are among them).
_LEG_SUFFIXES_CACHED: Final = 64
_LEG_SUFFIXES: Final = [_INT_PART + i.to_bytes(16, "big") for i in range(_LEG_SUFFIXES_CACHED)]
# leg_id's constant prefix: the namespace and the count of parts, hashed once.
_LEG_PREFIX: Final = hashlib.blake2b(digest_size=_DIGEST_BYTES, person=_PERSON)
_LEG_PREFIX.update(_encode_part(_NAMESPACE_LEG))
_LEG_PREFIX.update((2).to_bytes(4, "big"))
_OPERATION_PREFIX: Final = hashlib.blake2b(digest_size=_DIGEST_BYTES, person=_PERSON)
_OPERATION_PREFIX.update(_encode_part(_NAMESPACE_OPERATION))
_OPERATION_PREFIX.update((2).to_bytes(4, "big"))
_FINGERPRINT_PREFIX: Final = hashlib.blake2b(digest_size=_DIGEST_BYTES, person=_PERSON)
_FINGERPRINT_PREFIX.update(_encode_part(_NAMESPACE_FINGERPRINT))
_FINGERPRINT_PREFIX.update((1).to_bytes(4, "big"))


_JOURNAL_PREFIX: Final = hashlib.blake2b(digest_size=_DIGEST_BYTES, person=_PERSON)
_JOURNAL_PREFIX.update(_encode_part("finance/journal"))
_JOURNAL_PREFIX.update((4).to_bytes(4, "big"))


def journal_id(transfer_id: int, entry_kind: str, block_id: int, index: int) -> int:
    """The id of journal `index` that the finance poster makes of a projected entry:
    `derive_id("finance/journal", transfer_id, entry_kind, block_id, index)`, from a prehashed
    prefix (one per journal, millions a month)."""
    hasher = _JOURNAL_PREFIX.copy()
    hasher.update(_INT_PART + transfer_id.to_bytes(16, "big"))
    hasher.update(_encode_part(entry_kind))
    hasher.update(_INT_PART + block_id.to_bytes(16, "big"))
    hasher.update(_INT_PART + index.to_bytes(16, "big"))
    return _u128_from_digest(hasher.digest())
