"""What every door into the API shares, with no web framework in it: strict body decoding, the
Idempotency-Key rules, wire ids, the customer boundary, and the spend target of a request.

The litestar routes (`api.routes`) and the hot lane (`api.lane`) both call these, so a request
means the same thing whichever door it comes through.
"""

from __future__ import annotations

import functools
import json
import re
from typing import TypeVar

import msgspec
from credit_ledger_client import schemas as w

from api.auth import Principal
from api.errors import field_from_message
from api.services import Services
from grants.errors import CreditError, InvalidRequest, NotFound
from ledger.ids import id_text
from ledger.limits import U128_MAX
from wallets.service import Funding

T = TypeVar("T")


class UnsupportedMediaType(CreditError):
    """A body that does not say it is JSON (415)."""

    code = "unsupported_media_type"


IDEMPOTENCY_KEY_BYTES_MAX = 255
_HEX = re.compile(r"[0-9a-f]{32}")
_EXAMPLE_ID = "0190c3a1-7f3e-7a41-9a6e-1d2c3b4a5f60"


def decode_strict(body: bytes, cls: type[T]) -> T:
    """The body decoded strictly: no coercion ("1" is not 1), unknown fields refused, each
    key at most once per object (a second `amount` must not silently win)."""
    try:
        value = msgspec.json.decode(body, type=cls)
    except msgspec.ValidationError as error:
        message = _in_words(str(error))
        raise InvalidRequest(message, field=field_from_message(message)) from None
    except msgspec.DecodeError as error:
        raise InvalidRequest(f"the body is not JSON: {error}") from None
    except UnicodeDecodeError as error:  # msgspec's answer to invalid UTF-8 inside a string
        raise InvalidRequest(
            f"the body is not UTF-8: {error.reason} at byte {error.start}"
        ) from None
    _refuse_duplicate_keys(body)
    return value


# What the wire contract's patterns mean, for messages (msgspec names the regular expression).
_PATTERNS_IN_WORDS = {
    w.ID_PATTERN: f"an id: lowercase UUID text such as {_EXAMPLE_ID}",
    w.CODE_PATTERN: "a code: a lowercase letter, then up to 63 lowercase letters, digits or _",
    w.LINE_PATTERN: "text without control characters",
    w.TEXT_PATTERN: "text without control characters (tabs and line breaks allowed)",
    w.CURRENCY_PATTERN: "an ISO 4217 currency code: three capital letters",
}
_MATCHING = re.compile(r"Expected `str` matching regex '(?P<pattern>.*)'(?P<rest> - at .*)?$")


def _in_words(message: str) -> str:
    """msgspec's message, with a pattern the contract defines said in words."""
    matched = _MATCHING.match(message)
    if matched is None:
        return message
    pattern = matched.group("pattern").encode().decode("unicode_escape")
    words = _PATTERNS_IN_WORDS.get(pattern)
    return message if words is None else f"Expected {words}{matched.group('rest') or ''}"


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> None:
    if len(pairs) > 1 and len({key for key, _ in pairs}) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)


# Python's JSON scanner hands every object's pairs over in order, duplicates included; msgspec,
# which decodes the body, keeps the last of them. About 2.5 us for a spend's body.
_scan_pairs = json.JSONDecoder(object_pairs_hook=_no_duplicates).decode


def _refuse_duplicate_keys(body: bytes) -> None:
    """A body msgspec accepted (valid UTF-8 JSON) is scanned again for a key given twice."""
    try:
        _scan_pairs(body.decode())
    except _DuplicateKey as duplicate:
        name = duplicate.args[0]
        raise InvalidRequest(f"the key {name!r} appears twice in one object", field=name) from None


def require_json(content_type: str | None, body: bytes) -> None:
    """A request with a body says it is JSON (`application/json`, parameters allowed)."""
    if not body:
        return
    media = (content_type or "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(
            f"the body must be application/json, not {media or 'without a Content-Type'}"
        )


def idempotency_key(value: str | None) -> str:
    if not value:
        raise InvalidRequest("the Idempotency-Key header is required", field="Idempotency-Key")
    if len(value.encode()) > IDEMPOTENCY_KEY_BYTES_MAX:
        raise InvalidRequest("Idempotency-Key is over 255 bytes", field="Idempotency-Key")
    return value


def parse_id(text: str, field: str) -> int:
    """A wire id as its u128. One spelling only, the one this API writes: lowercase UUID text
    (8-4-4-4-12 hex digits). Ids 0 and 2^128-1 are no object's (TigerBeetle refuses both)."""
    if len(text) == 36 and text[8] == text[13] == text[18] == text[23] == "-":
        digits = text.replace("-", "")
        if _HEX.fullmatch(digits):
            value = int(digits, 16)
            if 0 < value < U128_MAX:
                return value
    raise InvalidRequest(
        f"{field} is not an id (lowercase UUID text such as {_EXAMPLE_ID})", field=field
    )


# A u128 as UUID text (what `str(uuid.UUID(int=value))` gives, at a third of the cost).
sid = id_text


def ledger_of(services: Services, code: str) -> int:
    ledger = services.catalog.ledger_of_code(code)
    if ledger is None:
        raise NotFound(f"credit type {code!r} not found")
    return ledger


def code_of(services: Services, ledger: int) -> str:
    credit_type = services.catalog.credit_types.get(ledger)
    return credit_type.code if credit_type else str(ledger)


def own(principal: Principal, customer_id: int | None, what: str) -> None:
    """A key bound to a customer sees only that customer's objects: others are not found."""
    if principal.customer_id is not None and principal.customer_id != customer_id:
        raise NotFound(f"{what} not found")


def wallet_customer(services: Services, wallet_id: int) -> int | None:
    wallet = services.catalog.wallets.get(wallet_id)
    if wallet is None:
        return None
    resource = services.catalog.resources.get(wallet.resource_id)
    return resource.customer_id if resource else None


def resource_customer(services: Services, resource_id: int) -> int | None:
    resource = services.catalog.resources.get(resource_id)
    return resource.customer_id if resource else None


def funding(items: list[Funding]) -> list[w.FundingOut]:
    return [
        w.FundingOut(account_id=_account_sid(f.account_id), kind=f.kind, amount=f.amount)
        for f in items
    ]


# Grant accounts recur in answer after answer: their text is kept.
_account_sid = functools.lru_cache(maxsize=1 << 16)(sid)


def amount_of(
    services: Services,
    ledger: int,
    amount: int | None,
    usage: w.Usage | None,
    at_ns: int | None = None,
) -> int:
    """The amount a request spends: given, or its usage priced by the catalog at `at_ns` (the
    spend's occurred_at; None: now)."""
    if (amount is None) == (usage is None):
        raise InvalidRequest("give exactly one of amount and usage", field="amount")
    if usage is not None:
        try:
            now_ns = services.service.clock_ns() if at_ns is None else at_ns
            return services.catalog.price(usage.feature, ledger, usage.quantity, now_ns)
        except Exception as error:  # PathError: no price
            raise InvalidRequest(str(error), field="usage.feature") from None
    assert amount is not None
    return amount


def target(
    services: Services, principal: Principal, data: w.SpendIn
) -> tuple[int | None, int | None]:
    """(resource_id, wallet_id) of a spend: exactly one named, inside the key's boundary."""
    if (data.resource_id is None) == (data.wallet_id is None):
        raise InvalidRequest("name exactly one of resource_id and wallet_id", field="resource_id")
    if data.wallet_id is not None:
        wallet_id = parse_id(data.wallet_id, "wallet_id")
        own(principal, wallet_customer(services, wallet_id), "wallet")
        return None, wallet_id
    assert data.resource_id is not None
    resource_id = parse_id(data.resource_id, "resource_id")
    own(principal, resource_customer(services, resource_id), "resource")
    return resource_id, None
