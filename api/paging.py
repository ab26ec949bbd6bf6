"""Lists: strict query parameters, opaque cursors, and the customer boundary of a list.

Invariants:
- A list's query string is decoded like a body, by a `...Query` struct of the wire contract:
  a value of the wrong type or out of range, an unknown parameter and a parameter given twice
  are each refused with 422 `validation_error` naming the parameter. A parameter whose field
  is a list is the one kind that repeats (`dimension=a:1&dimension=b:2`).
- A cursor is opaque to callers: URL-safe base64 of `<list>:<n>:<n>...`, the position after
  the last item of a page in that list's order. It names its list, so a cursor of another list,
  an edited one or anything else that is not one this API gave is refused (422, `cursor`), never
  read as some other position.
- A key bound to a customer lists only that customer's objects: its customer is one more
  filter, and a filter naming another customer finds nothing (as a read of one of that
  customer's objects is `not_found`).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from collections.abc import Iterable
from typing import Any, TypeVar

import msgspec
import msgspec.inspect

from api.auth import Principal
from api.errors import field_from_message
from grants.errors import InvalidRequest
from ledger.clock import datetime_of_ns, ns_of_datetime
from ledger.limits import LIST_CURSOR_CHARS_MAX, U128_MAX
from ledger.repositories._rows import Keyset

T = TypeVar("T")

_CURSOR_TEXT = re.compile(r"(?P<kind>[a-z_]+)(?P<numbers>(?::[0-9]{1,40})+)")


def decode_query(params: Iterable[tuple[str, str]], cls: type[T]) -> T:
    """The query parameters as `cls`, strictly (see the module's invariants). Only integers
    and booleans are read from their text (`5`, `true`/`false`, nothing else); everything else
    goes as the text it is, so a time must be RFC 3339 and an enum one of its values (msgspec's
    lax mode would take `0.5` for a time and `null` for "not given")."""
    scalars = _scalar_fields(cls)
    values: dict[str, Any] = {}
    for name, text in params:
        kind = scalars.get(name)
        if kind is list:
            values.setdefault(name, []).append(text)
            continue
        if name in values:
            raise InvalidRequest(f"query parameter {name!r} is given twice", field=name)
        values[name] = _typed(text, kind)
    try:
        return msgspec.convert(values, cls)
    except msgspec.ValidationError as error:
        message = str(error).replace("Object contains unknown field", "Unknown query parameter")
        raise InvalidRequest(message, field=field_from_message(str(error))) from None


_INTEGER = re.compile(r"-?[0-9]{1,20}")


def _typed(text: str, scalar: type | None) -> Any:
    if scalar is int and _INTEGER.fullmatch(text):
        return int(text)
    if scalar is bool and text in ("true", "false"):
        return text == "true"
    return text  # refused by the conversion if the field wants something else


_SCALARS: dict[type[Any], dict[str, type]] = {}  # one entry per query struct: a few


def _scalar_fields(cls: type[Any]) -> dict[str, type]:
    """The parameters of a query struct (by the name they go by) that are integers, booleans
    or lists (or optional ones): `int`, `bool` or `list`."""
    if cls in _SCALARS:
        return _SCALARS[cls]
    found: dict[str, type] = {}
    struct = msgspec.inspect.type_info(cls)
    assert isinstance(struct, msgspec.inspect.StructType), cls
    for field in struct.fields:
        kinds = (
            field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
        )
        for kind in kinds:
            inner = kind.type if isinstance(kind, msgspec.inspect.Metadata) else kind
            if isinstance(inner, msgspec.inspect.BoolType):
                found[field.encode_name] = bool
            elif isinstance(inner, msgspec.inspect.IntType):
                found[field.encode_name] = int
            elif isinstance(inner, msgspec.inspect.ListType):
                found[field.encode_name] = list
    _SCALARS[cls] = found
    return found


def encode_cursor(kind: str, *numbers: int) -> str:
    assert numbers and all(0 <= n <= U128_MAX for n in numbers), numbers
    text = kind + "".join(f":{n}" for n in numbers)
    cursor = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
    assert len(cursor) <= LIST_CURSOR_CHARS_MAX, cursor
    return cursor


def decode_cursor(
    cursor: str | None, kind: str, arity: int, maxima: tuple[int, ...] | None = None
) -> tuple[int, ...] | None:
    """The numbers of a cursor of list `kind` (None when there is none: the first page), each
    at most its `maxima` (else the cursor is not one this API gave: it could not be used)."""
    if cursor is None:
        return None
    refused = InvalidRequest("cursor is not one this list gave", field="cursor")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise refused from None
    match = _CURSOR_TEXT.fullmatch(text)
    if match is None or match["kind"] != kind:
        raise refused
    numbers = tuple(int(n) for n in match["numbers"][1:].split(":"))
    if len(numbers) != arity or any(n > U128_MAX for n in numbers):
        raise refused
    if maxima is not None and any(n > m for n, m in zip(numbers, maxima, strict=True)):
        raise refused
    # Only the exact text this API wrote (no padding, no leading zeros): one cursor a position.
    if encode_cursor(kind, *numbers) != cursor:
        raise refused
    return numbers


def keyset_cursor(kind: str, created_at_and_id: Keyset) -> str:
    """The cursor after a row at (time, id): the time in microseconds, as Postgres keeps it."""
    at, row_id = created_at_and_id
    return encode_cursor(kind, ns_of_datetime(at) // 1000, row_id)


# The latest instant a keyset cursor may name: the end of year 9999, in microseconds.
_KEYSET_MICROS_MAX = ns_of_datetime(datetime.datetime.max.replace(tzinfo=datetime.UTC)) // 1000


def keyset_after(cursor: str | None, kind: str) -> Keyset | None:
    numbers = decode_cursor(cursor, kind, 2, (_KEYSET_MICROS_MAX, U128_MAX))
    if numbers is None:
        return None
    micros, row_id = numbers
    return datetime_of_ns(micros * 1000), row_id


def next_cursor(kind: str, last: Keyset | None, more: bool) -> str | None:
    """A page's `next_cursor`: after its last row, or None when no rows follow."""
    return keyset_cursor(kind, last) if more and last is not None else None


class NothingVisible(Exception):
    """The list's filters name a customer the caller's key may not see: an empty page."""


def customer_filter(principal: Principal, requested: int | None) -> int | None:
    """The customer a list is narrowed to: the one asked for, within the key's boundary."""
    bound = principal.customer_id
    if bound is None:
        return requested
    if requested is not None and requested != bound:
        raise NothingVisible
    return bound
