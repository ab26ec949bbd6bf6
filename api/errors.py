"""One table from error codes to HTTP statuses, and problem+json (RFC 9457) on the wire.

A business outcome is a 4xx with a stable snake_case `code`, never a 500. A test checks that
every domain error's code is in this table and documented.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import msgspec
import psycopg
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotFoundException,
    ValidationException,
)

from grants.errors import CreditError
from ledger.client import LedgerUnavailable

_logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
# On a replay's answer, a success or the stored refusal alike.
IDEMPOTENCY_HIT = {"Idempotency-Hit": "true"}

STATUS: dict[str, int] = {
    "insufficient_credits": 402,
    "budget_exceeded": 402,
    "reservation_expired": 409,
    "reservation_already_settled": 409,
    "reservation_already_released": 409,
    "idempotency_conflict": 409,
    "conflict": 409,
    "grant_not_refundable": 409,
    "period_close_refused": 409,
    "period_not_closed": 409,
    "refund_exceeds_available": 409,
    "too_many_thresholds": 409,
    "subscription_cancelled": 409,
    "already_subscribed": 409,
    "void_exceeds_available": 409,
    "grant_not_changeable": 409,
    "expiry_in_past": 422,
    "expiry_not_after_effective": 422,
    "not_found": 404,
    "validation_error": 422,
    "occurred_at_out_of_range": 422,
    "invalid_rollover_policy": 422,
    "test_clock_backwards": 409,
    "webhook_url_invalid": 422,
    "unknown_event_type": 422,
    "webhook_endpoint_disabled": 409,
    "replay_range_too_large": 422,
    "unauthorized": 401,
    "forbidden": 403,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "method_not_allowed": 405,
    "ledger_unavailable": 503,
    "internal_error": 500,
}

TITLES: dict[str, str] = {
    "insufficient_credits": "Not enough credits",
    "budget_exceeded": "A budget's cap would be passed",
    "reservation_expired": "The reservation has timed out",
    "reservation_already_settled": "The reservation was already settled",
    "reservation_already_released": "The reservation was already released",
    "idempotency_conflict": "Idempotency key reused with another request",
    "conflict": "Conflicts with what exists",
    "grant_not_refundable": "The grant cannot be refunded in money",
    "period_close_refused": "A check of the period's close failed",
    "period_not_closed": "The period is open: close it first",
    "refund_exceeds_available": "The grant has fewer credits available to refund",
    "too_many_thresholds": "The wallet or budget has as many thresholds as it may",
    "subscription_cancelled": "The subscription is cancelled",
    "already_subscribed": "The resource has a live subscription of this plan",
    "void_exceeds_available": "The grant has fewer credits available to void",
    "grant_not_changeable": "The grant is expired, voided or not issued: it cannot change",
    "expiry_in_past": "The new expiry is not after now",
    "expiry_not_after_effective": "The new expiry is not after the grant's effective time",
    "not_found": "Not found",
    "validation_error": "Invalid request",
    "occurred_at_out_of_range": "occurred_at is in the future or too far in the past",
    "invalid_rollover_policy": "The grant's rollover policy cannot be carried out",
    "test_clock_backwards": "A test clock moves forward only",
    "webhook_url_invalid": "The webhook URL must be an absolute http or https URL",
    "unknown_event_type": "Not an event type this service sends",
    "webhook_endpoint_disabled": "The webhook endpoint is disabled: enable it first",
    "replay_range_too_large": "The replay's range is too long or holds too many events",
    "unauthorized": "Missing or invalid API key",
    "forbidden": "The API key lacks the scope for this",
    "payload_too_large": "Request body too large",
    "unsupported_media_type": "The body must be JSON (Content-Type: application/json)",
    "method_not_allowed": "Method not allowed",
    "ledger_unavailable": "The ledger did not answer; retry with the same idempotency key",
    "internal_error": "Internal error",
}

assert set(STATUS) == set(TITLES)


def problem_type(code: str) -> str:
    """The problem's `type` URI: names the kind of problem (RFC 9457), one per code."""
    return f"https://credit-ledger.dev/problems/{code.replace('_', '-')}"


def problem(code: str, detail: str | None = None, **extra: Any) -> Response[bytes]:
    status, body = problem_body(code, detail, **extra)
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE)


def problem_body(code: str, detail: str | None = None, **extra: Any) -> tuple[int, bytes]:
    """(status, problem+json bytes) of a code: what every door sends for it."""
    status = STATUS[code]
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": TITLES[code],
        "status": status,
        "code": code,
    }
    if detail:
        body["detail"] = detail
    for name, value in extra.items():
        if isinstance(value, int) and not isinstance(value, bool) and name.endswith("_id"):
            value = str(uuid.UUID(int=value))  # ids travel as strings, like everywhere else
        body[name] = value  # amounts stay integers, as in every other body
    return status, msgspec.json.encode(body)


# How a refusal answered again under its idempotency key says so (with `Idempotency-Hit`).
STORED_OUTCOME = (
    ": the stored outcome of this idempotency key (a refused request stays refused;"
    " to try again, send a new key)"
)


def credit_problem(error: CreditError) -> tuple[int, bytes]:
    details = {k: v for k, v in error.details.items() if v is not None}
    message = error.message + STORED_OUTCOME if error.replayed else error.message
    return problem_body(error.code, message, **details)


def credit_error_handler(_: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    assert isinstance(error, CreditError)
    status, body = credit_problem(error)
    headers = IDEMPOTENCY_HIT if error.replayed else None
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def validation_handler(_: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    assert isinstance(error, ValidationException)
    field = None
    extra = error.extra
    if isinstance(extra, list) and extra and isinstance(extra[0], dict):
        key = extra[0].get("key")
        field = str(key) if key is not None else None
        message = str(extra[0].get("message") or error.detail)
    else:
        message = str(error.detail)
    named = _FIELD_IN_MESSAGE.search(message)
    if field in (None, "data"):
        field = field_from_message(message)
    elif named is not None and not named.group("path"):
        field = f"{field}.{named.group('name')}"  # litestar names the parent object
    return problem("validation_error", message, field=field)


def field_from_message(message: str) -> str | None:
    """The field a msgspec validation message is about ("Object contains unknown field `x` -
    at `$.a`" is about a.x; "Expected `int`, got `str` - at `$.amount`" about amount)."""
    named = _FIELD_IN_MESSAGE.search(message)
    if named is not None:
        path, name = named.group("path"), named.group("name")
        return f"{path}.{name}" if path else name
    at = _PATH_IN_MESSAGE.search(message)
    return at.group(1) if at else None


_FIELD_IN_MESSAGE = re.compile(
    r"(?:unknown|missing required) field `(?P<name>[^`]+)`(?: - at `\$\.?(?P<path>[^`]*)`)?"
)
_PATH_IN_MESSAGE = re.compile(r"at (?:`key` in )?`\$\.([^`]+)`")


def http_handler(_: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    assert isinstance(error, HTTPException)
    if isinstance(error, NotFoundException):
        return problem("not_found", "no such route")
    code = {
        413: "payload_too_large",
        415: "unsupported_media_type",
        405: "method_not_allowed",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
    }.get(error.status_code)
    if code is None:
        code = "validation_error" if 400 <= error.status_code < 500 else "internal_error"
    return problem(code, str(error.detail))


def integrity_handler(_: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    """A constraint of the catalog refused the write: the request clashes or is invalid."""
    assert isinstance(error, psycopg.errors.IntegrityError)
    diag = error.diag
    if isinstance(error, psycopg.errors.UniqueViolation):
        return problem("conflict", "that already exists", constraint=diag.constraint_name)
    if isinstance(error, psycopg.errors.ForeignKeyViolation):
        return problem(
            "not_found", "a referenced object does not exist", constraint=diag.constraint_name
        )
    return problem(
        "validation_error", diag.message_primary or "invalid value", constraint=diag.constraint_name
    )


def ledger_unavailable_handler(_: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    """The engine did not answer in time: the outcome is unknown; the same key is safe."""
    return problem("ledger_unavailable", str(error))


def internal_handler(request: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    _logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem("internal_error", "an unexpected error; it has been logged")


EXCEPTION_HANDLERS = {
    CreditError: credit_error_handler,
    psycopg.errors.IntegrityError: integrity_handler,
    LedgerUnavailable: ledger_unavailable_handler,
    ValidationException: validation_handler,
    HTTPException: http_handler,
    Exception: internal_handler,
}
