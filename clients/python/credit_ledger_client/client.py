"""A small typed client for the credit service's HTTP API, for request paths (sync and async).

It imports only httpx, msgspec and the wire contract (`credit_ledger_client.schemas`), never
the server, so a caller needs none of the service's dependencies. Bodies are the msgspec structs
of the wire contract; answers are decoded into its `...Out` structs; errors are `CreditApiError`
subclasses chosen by the problem's stable `code`.

Invariants:
- Every POST carries an `Idempotency-Key`. The key is fixed once per method call, before the first
  attempt, and every retry of that call sends the same key with the same body, so the service
  applies the call at most once however many attempts it takes.
- The default key is a fresh uuid4 string: it makes the client's own retries safe, nothing more.
  A caller that retries a call itself (after a crash, a restart, or catching an error) must pass
  its own `idempotency_key`, the same on every try, or the retry may spend twice.
- The client retries only where the outcome is unknown or the service asks for it: connection
  errors, timeouts, and 502/503/504 (503 is `ledger_unavailable`). A business answer (402, 409,
  404, 422, ...) is final for its key and is raised at once.
- The `reserve(...)` context manager derives the settle and release keys from the reservation's
  key (`{key}:settle`, `{key}:release`), so re-running the same block with the same key after a
  crash replays the same reservation and the same settlement instead of spending again.
- Every change (POST, PATCH, DELETE) carries its key the same way; reads carry none.
- A list takes its `...Query` struct (checked here against the contract before it is sent) and
  answers a page; `iter_...` follows `next_cursor` until the last page.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Generic, Protocol, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import httpx
import msgspec

from credit_ledger_client.schemas import (
    BatchIn,
    BatchOut,
    BreakagePolicyIn,
    BreakagePolicyOut,
    BudgetIn,
    BudgetOut,
    BudgetPage,
    BudgetPatchIn,
    BudgetQuery,
    BudgetThresholdIn,
    ChangePlanIn,
    CheckOut,
    ClockAdvanceIn,
    ClockOut,
    CreditTypeIn,
    CreditTypeOut,
    CustomerIn,
    CustomerOut,
    CustomerPage,
    CustomerQuery,
    DebitIn,
    DebitOut,
    EntriesOut,
    EntryOut,
    EntryType,
    EventOut,
    EventPage,
    EventQuery,
    FundingOut,
    GrantBlockOut,
    GrantDetailOut,
    GrantExpiryIn,
    GrantExpiryOut,
    GrantIn,
    GrantOut,
    GrantPage,
    GrantQuery,
    GrantRefundIn,
    GrantRefundOut,
    ListQuery,
    Overage,
    Page,
    PeriodList,
    PeriodOut,
    PlanIn,
    PlanOut,
    PlanPage,
    PlanQuery,
    PriceAtQuery,
    PriceIn,
    PriceOut,
    PricePage,
    PriceQuery,
    RefundIn,
    RefundOut,
    ReleaseOut,
    ReportFormat,
    ReportName,
    ReportOut,
    ReportQuery,
    ReservationOut,
    ReservationPage,
    ReservationQuery,
    ReserveIn,
    ResourceIn,
    ResourceOut,
    ResourcePage,
    ResourceQuery,
    SettleIn,
    SettleOut,
    SpendIn,
    SubscriptionIn,
    SubscriptionOut,
    SubscriptionPage,
    SubscriptionQuery,
    ThresholdList,
    ThresholdOut,
    TopUpOut,
    TopUpPage,
    TopUpRuleIn,
    TopUpRuleOut,
    Usage,
    UsagePage,
    UsageQuery,
    UsageRowOut,
    VoidIn,
    VoidOut,
    WalletBalanceOut,
    WalletIn,
    WalletOut,
    WalletPage,
    WalletPatchIn,
    WalletQuery,
    WalletThresholdIn,
    WebhookDeliveryPage,
    WebhookDeliveryQuery,
    WebhookEndpointIn,
    WebhookEndpointOut,
    WebhookEndpointPage,
    WebhookEndpointQuery,
    WebhookEndpointSecretOut,
    WebhookReplayIn,
    WebhookReplayOut,
)

__all__ = [
    "ERRORS_BY_CODE",
    "AlreadySubscribedError",
    "AsyncCreditClient",
    "AsyncReservationScope",
    "BudgetExceededError",
    "ConflictError",
    "CreditApiError",
    "CreditClient",
    "ExpiryRefusedError",
    "ForbiddenError",
    "GrantNotChangeableError",
    "GrantNotRefundableError",
    "IdempotencyConflictError",
    "InsufficientCreditsError",
    "InternalServerError",
    "LedgerUnavailableError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RefundExceedsAvailableError",
    "Reservation",
    "ReservationAlreadyReleasedError",
    "ReservationAlreadySettledError",
    "ReservationExpiredError",
    "ReservationScope",
    "ReservationStateError",
    "RetryPolicy",
    "ServiceUnreachableError",
    "SpendKeywords",
    "SpendRefusedError",
    "SubscriptionCancelledError",
    "TooManyThresholdsError",
    "UnauthorizedError",
    "UnexpectedResponseError",
    "ValidationError",
    "VoidExceedsAvailableError",
]

T = TypeVar("T")
P = TypeVar("P", bound=Page)
Q = TypeVar("Q", bound=ListQuery)
Item = TypeVar("Item")  # an item of a page

USER_AGENT = "credit-ledger-python/0.1"
TIMEOUT_S_DEFAULT = 10.0
# 64 concurrent callers each hold one connection for a call; twice that leaves room for bursts
# without opening a connection per request.
CONNECTIONS_MAX_DEFAULT = 128
IDEMPOTENCY_KEY_CHARS_MAX = 255
# The reservation's own key is suffixed for its settle and release, which must still fit.
KEY_SUFFIX_SETTLE = ":settle"
KEY_SUFFIX_RELEASE = ":release"
RESERVATION_KEY_CHARS_MAX = IDEMPOTENCY_KEY_CHARS_MAX - max(
    len(KEY_SUFFIX_SETTLE), len(KEY_SUFFIX_RELEASE)
)
RESERVATION_TIMEOUT_S_DEFAULT = 3600
RETRY_ATTEMPTS_MAX = 10
# A non-problem error body (a proxy's HTML page) is cut to this much in the error's detail.
DETAIL_CHARS_MAX = 500
# Fields of a problem document that are attributes of the error, not extras.
_PROBLEM_FIELDS = frozenset({"type", "title", "status", "code", "detail"})

assert 0 < RESERVATION_KEY_CHARS_MAX < IDEMPOTENCY_KEY_CHARS_MAX


# -- errors ---------------------------------------------------------------------------------------


class CreditApiError(Exception):
    """A call that did not succeed: the service's problem+json answer, or no answer at all.

    `status` is the HTTP status (0 when no response arrived), `code` the stable snake_case code,
    `extra` every other field of the problem document (`available`, `needed`, `budget_id`,
    `field`, ...), and `idempotency_key` the key the call was sent with: retry with that key
    when `retryable` is true. `replayed`: the answer is the outcome stored under that key
    (`Idempotency-Hit: true`), say a refusal decided before a top-up; a refused spend stays
    refused under its key, and its replay carries no `available` of its own.
    """

    # Whether the same call with the same key may still succeed later.
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        *,
        status: int,
        code: str,
        title: str = "",
        detail: str | None = None,
        problem_type: str = "about:blank",
        extra: Mapping[str, Any] | None = None,
        method: str = "",
        path: str = "",
        idempotency_key: str | None = None,
        replayed: bool = False,
    ) -> None:
        self.status = status
        self.replayed = replayed
        self.code = code
        self.title = title
        self.detail = detail
        self.type = problem_type
        self.extra: dict[str, Any] = dict(extra or {})
        self.method = method
        self.path = path
        self.idempotency_key = idempotency_key
        super().__init__(f"{status} {code}: {detail or title or 'no detail'} ({method} {path})")


class SpendRefusedError(CreditApiError):
    """402: the spend was refused and nothing moved. The answer stays with its key: a new attempt
    (after a top-up, say) needs a new key."""


class InsufficientCreditsError(SpendRefusedError):
    @property
    def available(self) -> int | None:
        return _int_or_none(self.extra.get("available"))

    @property
    def needed(self) -> int | None:
        return _int_or_none(self.extra.get("needed"))


class BudgetExceededError(SpendRefusedError):
    @property
    def budget_id(self) -> str | None:
        value = self.extra.get("budget_id")
        return value if isinstance(value, str) else None


class ReservationStateError(CreditApiError):
    """409: the reservation is no longer held (expired, settled or released)."""


class ReservationExpiredError(ReservationStateError):
    pass


class ReservationAlreadySettledError(ReservationStateError):
    pass


class ReservationAlreadyReleasedError(ReservationStateError):
    pass


class IdempotencyConflictError(CreditApiError):
    """409: the key was used before with another body."""


class ConflictError(CreditApiError):
    """409: the request conflicts with what exists (an object created differently before)."""


class GrantNotRefundableError(ConflictError):
    """409: a refund in money of a grant that cannot have one (promotional, voided, expired)."""


class RefundExceedsAvailableError(ConflictError):
    """409: a refund in money of more credits than the grant has available; `refundable` is
    what it has (absent on the replay of a stored refusal)."""

    @property
    def refundable(self) -> int | None:
        value = self.extra.get("refundable")
        return value if isinstance(value, int) else None


class TooManyThresholdsError(ConflictError):
    """409: the wallet or budget already has as many thresholds as it may have."""


class SubscriptionCancelledError(ConflictError):
    """409: a change of a cancelled subscription (it gets no further allocation)."""


class AlreadySubscribedError(ConflictError):
    """409: a second live (active or paused) subscription of one plan on one resource, by
    subscribe or change_plan; `subscription_id` is the live one (absent on the replay of a
    stored refusal)."""

    @property
    def subscription_id(self) -> str | None:
        value = self.extra.get("subscription_id")
        return value if isinstance(value, str) else None


class VoidExceedsAvailableError(ConflictError):
    """409: a void of part of a grant of more credits than it has available; `available` is
    what it has (nothing was voided)."""

    @property
    def available(self) -> int | None:
        value = self.extra.get("available")
        return value if isinstance(value, int) else None


class GrantNotChangeableError(ConflictError):
    """409: a void of part of a grant, or a change of its expiry, when it is expired, voided or
    not issued."""


class NotFoundError(CreditApiError):
    pass


class PayloadTooLargeError(CreditApiError):
    pass


class InternalServerError(CreditApiError):
    """500: a bug in the service. Not retried: the same request would most likely fail again."""


class ValidationError(CreditApiError):
    @property
    def field(self) -> str | None:
        value = self.extra.get("field")
        return value if isinstance(value, str) else None


class ExpiryRefusedError(ValidationError):
    """422: a grant's new expiry is not after now (`expiry_in_past`) or not after its
    effective_at (`expiry_not_after_effective`)."""


class UnauthorizedError(CreditApiError):
    pass


class ForbiddenError(CreditApiError):
    pass


class LedgerUnavailableError(CreditApiError):
    """503: the engine did not answer in time; the outcome is unknown. Retry with the same key."""

    retryable = True


class ServiceUnreachableError(CreditApiError):
    """No answer from the service after every attempt (connection refused or reset, timeout, a
    proxy's 502 or 504); the outcome is unknown. Retry with the same key. For a failure without a
    response, `status` is 0 and the httpx error is the `__cause__`."""

    retryable = True


class UnexpectedResponseError(CreditApiError):
    """A response that is not the contract: a success body that does not decode, or an error
    without a problem document (a proxy's page)."""


ERRORS_BY_CODE: dict[str, type[CreditApiError]] = {
    "insufficient_credits": InsufficientCreditsError,
    "budget_exceeded": BudgetExceededError,
    "reservation_expired": ReservationExpiredError,
    "reservation_already_settled": ReservationAlreadySettledError,
    "reservation_already_released": ReservationAlreadyReleasedError,
    "idempotency_conflict": IdempotencyConflictError,
    "conflict": ConflictError,
    "grant_not_refundable": GrantNotRefundableError,
    "subscription_cancelled": SubscriptionCancelledError,
    "already_subscribed": AlreadySubscribedError,
    "refund_exceeds_available": RefundExceedsAvailableError,
    "too_many_thresholds": TooManyThresholdsError,
    "void_exceeds_available": VoidExceedsAvailableError,
    "grant_not_changeable": GrantNotChangeableError,
    "expiry_in_past": ExpiryRefusedError,
    "expiry_not_after_effective": ExpiryRefusedError,
    "not_found": NotFoundError,
    "validation_error": ValidationError,
    "unauthorized": UnauthorizedError,
    "forbidden": ForbiddenError,
    "ledger_unavailable": LedgerUnavailableError,
    "payload_too_large": PayloadTooLargeError,
    "internal_error": InternalServerError,
}
# For a code this client does not know (a newer service), the status still picks a family.
ERRORS_BY_STATUS: dict[int, type[CreditApiError]] = {
    400: ValidationError,
    401: UnauthorizedError,
    402: SpendRefusedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: ValidationError,
    500: InternalServerError,
    # A proxy's 502 or 504: the service's answer, if any, was lost on the way.
    502: ServiceUnreachableError,
    503: LedgerUnavailableError,
    504: ServiceUnreachableError,
}


def _int_or_none(value: object) -> int | None:
    # The service sends integers of 2^53 and more as strings, which a JSON number cannot carry
    # exactly in every language.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


# -- retries --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently one call is retried (with its one idempotency key).

    `attempts` counts the first try. The pause after failed attempt n is
    `min(backoff_max_s, backoff_initial_s * 2**(n-1))`, raised to a `Retry-After` the service
    sends (still at most `backoff_max_s`), then shortened by up to `jitter` of itself at random
    so that many callers do not retry in step.
    """

    attempts: int = 3
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    jitter: float = 0.5
    statuses: frozenset[int] = field(default_factory=lambda: frozenset({502, 503, 504}))

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= RETRY_ATTEMPTS_MAX:
            raise ValueError(f"attempts must be between 1 and {RETRY_ATTEMPTS_MAX}")
        if not 0 <= self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("backoff_initial_s must be between 0 and backoff_max_s")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")
        if not all(500 <= status <= 599 for status in self.statuses):
            # A 4xx is the service's final answer for the key; retrying it cannot change it.
            raise ValueError("only 5xx statuses may be retried")

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        assert attempt >= 1
        delay_s = min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** (attempt - 1))
        if retry_after_s is not None:
            delay_s = min(self.backoff_max_s, max(delay_s, retry_after_s))
        return delay_s * (1 - self.jitter * random.random())


# Failures after which the request may or may not have reached the service. UnsupportedProtocol,
# LocalProtocolError and ProxyError are configuration bugs: retrying cannot help.
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


# -- requests and responses (pure) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    """One API call, complete before the first attempt: every attempt sends exactly this."""

    method: str
    path: str
    out: type[T]
    body: bytes | None = None
    idempotency_key: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    retry: bool = True

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.body is not None:
            headers["Content-Type"] = "application/json"
        if self.idempotency_key is not None:
            headers["Idempotency-Key"] = self.idempotency_key
        return headers


def _key(idempotency_key: str | None, chars_max: int = IDEMPOTENCY_KEY_CHARS_MAX) -> str:
    if idempotency_key is None:
        return str(uuid.uuid4())
    if not 1 <= len(idempotency_key) <= chars_max:
        raise ValueError(f"idempotency_key must have 1 to {chars_max} characters")
    if not (idempotency_key.isascii() and idempotency_key.isprintable()):
        raise ValueError("idempotency_key must be printable ASCII (it travels in a header)")
    return idempotency_key


def _segment(value: str) -> str:
    """An id or code as one path segment: quoted, so that it can never name another route."""
    if not value:
        raise ValueError("an id or code in the path must not be empty")
    return quote(value, safe="")


def _post(path: str, body: msgspec.Struct | None, out: type[T], key: str | None) -> _Call[T]:
    encoded = msgspec.json.encode(body) if body is not None else b"{}"
    return _Call("POST", path, out, encoded, _key(key))


def _patch(path: str, body: msgspec.Struct, out: type[T], key: str | None) -> _Call[T]:
    return _Call("PATCH", path, out, msgspec.json.encode(body), _key(key))


def _put(path: str, body: msgspec.Struct, out: type[T], key: str | None) -> _Call[T]:
    return _Call("PUT", path, out, msgspec.json.encode(body), _key(key))


def _delete(path: str, out: type[T], key: str | None) -> _Call[T]:
    return _Call("DELETE", path, out, None, _key(key))


def _get(path: str, out: type[T], params: tuple[tuple[str, str], ...] = ()) -> _Call[T]:
    return _Call("GET", path, out, params=params)


def _list(path: str, query: msgspec.Struct, out: type[P]) -> _Call[P]:
    return _get(path, out, _params(query))


def _params(query: msgspec.Struct) -> tuple[tuple[str, str], ...]:
    """A query struct as query parameters, checked against the contract first (a struct built
    in code is not validated by msgspec until it is decoded), so a bad limit or a naive time is
    a ValueError here rather than a 422 there. Unset (None) fields are not sent."""
    try:
        msgspec.convert(msgspec.to_builtins(query), type(query))
    except msgspec.ValidationError as error:
        raise ValueError(f"{type(query).__name__}: {error}") from None
    params: list[tuple[str, str]] = []
    for info in msgspec.structs.fields(query):
        value = getattr(query, info.name)
        if value is None:
            continue
        # A list goes as the parameter repeated (`dimension=a:1&dimension=b:2`); a field goes
        # by the name it has on the wire (UsageQuery's `from_` is `from`).
        for item in value if isinstance(value, list) else [value]:
            params.append((info.encode_name, _param_text(item)))
    return tuple(params)


def _param_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


class _Paged(Protocol[Item]):
    items: list[Item]
    next_cursor: str | None


def _iterate(fetch: Callable[[Q], _Paged[Item]], query: Q) -> Iterator[Item]:
    """Every item of a list, page after page, following `next_cursor`."""
    while True:
        page = fetch(query)
        yield from page.items
        if page.next_cursor is None:
            return
        query = msgspec.structs.replace(query, cursor=page.next_cursor)


async def _aiterate(fetch: Callable[[Q], Awaitable[_Paged[Item]]], query: Q) -> AsyncIterator[Item]:
    """`_iterate`, awaited."""
    while True:
        page = await fetch(query)
        for item in page.items:
            yield item
        if page.next_cursor is None:
            return
        query = msgspec.structs.replace(query, cursor=page.next_cursor)


def _probe(path: str) -> _Call[dict[str, Any]]:
    # A probe wants the current answer, so it is never retried.
    return _Call("GET", path, dict[str, Any], retry=False)


def _entries_params(
    cursor: str | None, limit: int | None, types: Iterable[str] | None = None
) -> tuple[tuple[str, str], ...]:
    params: list[tuple[str, str]] = [("type", str(t)) for t in types or ()]
    if cursor is not None:
        params.append(("cursor", cursor))
    if limit is not None:
        if limit < 1:
            raise ValueError("limit must be positive")
        params.append(("limit", str(limit)))
    return tuple(params)


def _result(call: _Call[T], response: httpx.Response) -> T:
    if not response.is_success:
        raise _error(call, response)
    try:
        return msgspec.json.decode(response.content, type=call.out)
    except msgspec.DecodeError as error:
        raise UnexpectedResponseError(
            status=response.status_code,
            code="unexpected_response",
            detail=f"the response body does not decode as {call.out!r}: {error}",
            method=call.method,
            path=call.path,
            idempotency_key=call.idempotency_key,
        ) from error


def _error(call: _Call[Any], response: httpx.Response) -> CreditApiError:
    status = response.status_code
    problem = _problem(response.content)
    code = problem.get("code") if problem is not None else None
    if problem is None or not isinstance(code, str):
        text = response.text[:DETAIL_CHARS_MAX]
        return ERRORS_BY_STATUS.get(status, UnexpectedResponseError)(
            status=status,
            code=f"http_{status}",
            detail=text or None,
            method=call.method,
            path=call.path,
            idempotency_key=call.idempotency_key,
        )
    error_class = ERRORS_BY_CODE.get(code) or ERRORS_BY_STATUS.get(status, CreditApiError)
    detail, title, problem_type = problem.get("detail"), problem.get("title"), problem.get("type")
    return error_class(
        status=status,
        code=code,
        title=title if isinstance(title, str) else "",
        detail=detail if isinstance(detail, str) else None,
        problem_type=problem_type if isinstance(problem_type, str) else "about:blank",
        extra={k: v for k, v in problem.items() if k not in _PROBLEM_FIELDS},
        method=call.method,
        path=call.path,
        idempotency_key=call.idempotency_key,
        replayed=response.headers.get("idempotency-hit") == "true",
    )


def _problem(content: bytes) -> dict[str, Any] | None:
    try:
        return msgspec.json.decode(content, type=dict[str, Any])
    except msgspec.DecodeError:
        return None


def _retry_after_s(response: httpx.Response) -> float | None:
    # Only the delta-seconds form; an HTTP date falls back to the policy's own pause.
    raw = response.headers.get("Retry-After", "").strip()
    return float(raw) if raw.isdigit() else None


def _unreachable(call: _Call[Any], error: Exception, attempts: int) -> ServiceUnreachableError:
    return ServiceUnreachableError(
        status=0,
        code="unreachable",
        detail=f"no response after {attempts} attempt(s): {type(error).__name__}: {error}",
        method=call.method,
        path=call.path,
        idempotency_key=call.idempotency_key,
    )


def _http_options(
    base_url: str, api_key: str, timeout_s: float, connections_max: int
) -> dict[str, Any]:
    if not base_url:
        raise ValueError("base_url must not be empty")
    if not api_key or not (api_key.isascii() and api_key.isprintable()):
        raise ValueError("api_key must be non-empty printable ASCII")
    if not timeout_s > 0:
        raise ValueError("timeout_s must be positive")
    if connections_max < 1:
        raise ValueError("connections_max must be positive")
    return {
        "base_url": base_url,
        "headers": {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json, application/problem+json",
            "User-Agent": USER_AGENT,
        },
        "timeout": httpx.Timeout(timeout_s),
        "limits": httpx.Limits(
            max_connections=connections_max, max_keepalive_connections=connections_max
        ),
        # Redirects are not part of the contract; a POST must never be re-sent elsewhere.
        "follow_redirects": False,
    }


class SpendKeywords(TypedDict, total=False):
    """What `check`, `debit` and `reserve` take besides `credit_type`: where (a `resource_id`,
    whose spend path is followed, or a `wallet_id`: exactly one), how much (an `amount`, or a
    `usage` at the price in force: exactly one), and the `dimensions` kept with the spend."""

    resource_id: str | None
    wallet_id: str | None
    amount: int | None
    usage: Usage | None
    dimensions: Mapping[str, str] | None


def _spend(credit_type: str, spend: SpendKeywords) -> SpendIn:
    """The body of a check, a debit or (with its timeout) a reservation."""
    unknown = sorted(set(spend) - SpendKeywords.__optional_keys__)
    if unknown:
        # A TypedDict is a promise to a type checker only: a misspelt keyword would otherwise
        # be dropped without a word.
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
    dimensions = spend.get("dimensions")
    return SpendIn(
        credit_type=credit_type,
        resource_id=spend.get("resource_id"),
        wallet_id=spend.get("wallet_id"),
        amount=spend.get("amount"),
        usage=spend.get("usage"),
        dimensions=dict(dimensions) if dimensions is not None else None,
    )


def _debit_in(spend: SpendIn, occurred_at: dt.datetime | None) -> SpendIn:
    """A debit's body: with `occurred_at` only when there is one, so that a debit without it is
    the body it always was (a server from before occurred_at accepts it)."""
    if occurred_at is None:
        return spend
    return DebitIn(**msgspec.structs.asdict(spend), occurred_at=occurred_at)


def _reserve_in(spend: SpendIn, timeout_s: int) -> ReserveIn:
    return ReserveIn(**msgspec.structs.asdict(spend), timeout_s=timeout_s)


# -- reservations as a context manager ------------------------------------------------------------


class Reservation:
    """A held reservation inside `with client.reserve(...) as r:`.

    Before the block ends, set what the work really cost: `r.settle_amount = n` (0 releases it
    all) or `r.usage = Usage(feature=..., quantity=...)`; by default the reserved amount is
    settled. `r.overage` is the policy when the cost exceeds the reservation. After the block,
    `settled` (normal exit) or `released` (exception) holds the service's answer.
    """

    def __init__(self, out: ReservationOut, idempotency_key: str, overage: Overage) -> None:
        self.out = out
        self.idempotency_key = idempotency_key
        self.overage = overage
        self.settled: SettleOut | None = None
        self.released: ReleaseOut | None = None
        # Why the release after an exception failed, if it did (the reservation then expires
        # after its timeout by itself).
        self.release_error: Exception | None = None
        self._settle_amount: int | None = None
        self._usage: Usage | None = None

    @property
    def id(self) -> str:
        return self.out.id

    @property
    def amount(self) -> int:
        return self.out.amount

    @property
    def timeout_s(self) -> int:
        return self.out.timeout_s

    @property
    def funded_by(self) -> list[FundingOut]:
        return self.out.funded_by

    @property
    def settle_key(self) -> str:
        return self.idempotency_key + KEY_SUFFIX_SETTLE

    @property
    def release_key(self) -> str:
        return self.idempotency_key + KEY_SUFFIX_RELEASE

    @property
    def settle_amount(self) -> int | None:
        return self._settle_amount

    @settle_amount.setter
    def settle_amount(self, value: int | None) -> None:
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError("settle_amount must be a non-negative int")
            if self._usage is not None:
                raise ValueError("set either settle_amount or usage, not both")
        self._settle_amount = value

    @property
    def usage(self) -> Usage | None:
        return self._usage

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        if value is not None and self._settle_amount is not None:
            raise ValueError("set either settle_amount or usage, not both")
        self._usage = value

    def settle_body(self) -> SettleIn:
        if self._usage is not None:
            return SettleIn(usage=self._usage, overage=self.overage)
        amount = self.amount if self._settle_amount is None else self._settle_amount
        return SettleIn(amount=amount, overage=self.overage)


def _note_release_failure(
    reservation: Reservation, exc: BaseException, release_error: Exception
) -> None:
    reservation.release_error = release_error
    exc.add_note(
        f"releasing reservation {reservation.id} failed as well ({release_error!r}); "
        f"it expires by itself after {reservation.timeout_s} s"
    )


class ReservationScope:
    """`with client.reserve(...) as r:` reserves on entry, settles on normal exit, releases on an
    exception (which is re-raised). Returned by `CreditClient.reserve`."""

    def __init__(self, client: CreditClient, body: ReserveIn, key: str, overage: Overage) -> None:
        self._client = client
        self._body = body
        self._key = key
        self._overage = overage
        self._reservation: Reservation | None = None

    def __enter__(self) -> Reservation:
        assert self._reservation is None, "a ReservationScope is entered once"
        out = self._client.create_reservation(self._body, idempotency_key=self._key)
        self._reservation = Reservation(out, self._key, self._overage)
        return self._reservation

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        reservation = self._reservation
        assert reservation is not None
        if exc is None:
            reservation.settled = self._client.settle(
                reservation.id, reservation.settle_body(), idempotency_key=reservation.settle_key
            )
            return
        try:
            reservation.released = self._client.release(
                reservation.id, idempotency_key=reservation.release_key
            )
        except Exception as release_error:
            # The caller's exception matters more; the reservation times out on its own.
            _note_release_failure(reservation, exc, release_error)


class AsyncReservationScope:
    """`async with client.reserve(...) as r:`, the async twin of `ReservationScope`."""

    def __init__(
        self, client: AsyncCreditClient, body: ReserveIn, key: str, overage: Overage
    ) -> None:
        self._client = client
        self._body = body
        self._key = key
        self._overage = overage
        self._reservation: Reservation | None = None

    async def __aenter__(self) -> Reservation:
        assert self._reservation is None, "an AsyncReservationScope is entered once"
        out = await self._client.create_reservation(self._body, idempotency_key=self._key)
        self._reservation = Reservation(out, self._key, self._overage)
        return self._reservation

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        reservation = self._reservation
        assert reservation is not None
        if exc is None:
            reservation.settled = await self._client.settle(
                reservation.id, reservation.settle_body(), idempotency_key=reservation.settle_key
            )
            return
        try:
            reservation.released = await self._client.release(
                reservation.id, idempotency_key=reservation.release_key
            )
        except Exception as release_error:
            _note_release_failure(reservation, exc, release_error)


# -- the clients ----------------------------------------------------------------------------------


class CreditClient:
    """The synchronous client. Make one per process and share it between threads: it keeps a pool
    of up to `connections_max` keep-alive connections.

    Every mutating method takes `idempotency_key`; left out, a fresh uuid4 is used, which makes the
    client's own retries safe but not the caller's: pass your own key to retry a call yourself.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        retry: RetryPolicy | None = None,
        connections_max: int = CONNECTIONS_MAX_DEFAULT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = retry if retry is not None else RetryPolicy()
        options = _http_options(base_url, api_key, timeout_s, connections_max)
        self._http = httpx.Client(transport=transport, **options)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CreditClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: _Call[T]) -> T:
        attempts = self.retry.attempts if call.retry else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    content=call.body,
                    params=call.params or None,
                    headers=call.headers(),
                )
            except _TRANSIENT as error:
                if attempt == attempts:
                    raise _unreachable(call, error, attempt) from error
                time.sleep(self.retry.delay_s(attempt))
                continue
            if attempt == attempts or response.status_code not in self.retry.statuses:
                return _result(call, response)
            time.sleep(self.retry.delay_s(attempt, _retry_after_s(response)))
        raise AssertionError("the loop returns or raises on its last attempt")

    # -- catalog

    def create_credit_type(
        self, body: CreditTypeIn, *, idempotency_key: str | None = None
    ) -> CreditTypeOut:
        return self._send(_post("/v1/credit-types", body, CreditTypeOut, idempotency_key))

    def get_credit_type(self, code: str) -> CreditTypeOut:
        return self._send(_get(f"/v1/credit-types/{_segment(code)}", CreditTypeOut))

    def create_customer(
        self, body: CustomerIn, *, idempotency_key: str | None = None
    ) -> CustomerOut:
        return self._send(_post("/v1/customers", body, CustomerOut, idempotency_key))

    def get_customer(self, customer_id: str) -> CustomerOut:
        return self._send(_get(f"/v1/customers/{_segment(customer_id)}", CustomerOut))

    def create_resource(
        self, body: ResourceIn, *, idempotency_key: str | None = None
    ) -> ResourceOut:
        return self._send(_post("/v1/resources", body, ResourceOut, idempotency_key))

    def get_resource(self, resource_id: str) -> ResourceOut:
        return self._send(_get(f"/v1/resources/{_segment(resource_id)}", ResourceOut))

    def create_wallet(self, body: WalletIn, *, idempotency_key: str | None = None) -> WalletOut:
        return self._send(_post("/v1/wallets", body, WalletOut, idempotency_key))

    def get_wallet(self, wallet_id: str) -> WalletBalanceOut:
        return self._send(_get(f"/v1/wallets/{_segment(wallet_id)}", WalletBalanceOut))

    def update_wallet(
        self, wallet_id: str, body: WalletPatchIn, *, idempotency_key: str | None = None
    ) -> WalletOut:
        """Change the overdraft mode or limit, or the fall-through (the fields set in `body`)."""
        path = f"/v1/wallets/{_segment(wallet_id)}"
        return self._send(_patch(path, body, WalletOut, idempotency_key))

    def list_entries(
        self,
        wallet_id: str,
        *,
        cursor: str | None = None,
        limit: int | None = None,
        types: Iterable[EntryType | str] | None = None,
    ) -> EntriesOut:
        """A page of the wallet's entries (of `types` only, when given)."""
        path = f"/v1/wallets/{_segment(wallet_id)}/entries"
        return self._send(_get(path, EntriesOut, _entries_params(cursor, limit, types)))

    def iter_entries(
        self,
        wallet_id: str,
        *,
        page_limit: int | None = None,
        types: Iterable[EntryType | str] | None = None,
    ) -> Iterator[EntryOut]:
        """Every entry of the wallet, page after page, following `next_cursor`."""
        cursor: str | None = None
        kept = list(types) if types is not None else None
        while True:
            page = self.list_entries(wallet_id, cursor=cursor, limit=page_limit, types=kept)
            yield from page.entries
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # -- grants

    def create_grant(self, body: GrantIn, *, idempotency_key: str | None = None) -> GrantOut:
        return self._send(_post("/v1/grants", body, GrantOut, idempotency_key))

    def get_grant(self, grant_id: str) -> GrantDetailOut:
        """The block as issued, its state and its balances."""
        return self._send(_get(f"/v1/grants/{_segment(grant_id)}", GrantDetailOut))

    def void_grant(
        self, grant_id: str, body: VoidIn | None = None, *, idempotency_key: str | None = None
    ) -> VoidOut:
        """Void what is left of a grant, or exactly `body.amount` of what it has available
        (the grant stays active)."""
        path = f"/v1/grants/{_segment(grant_id)}/void"
        return self._send(_post(path, body, VoidOut, idempotency_key))

    def change_grant_expiry(
        self, grant_id: str, body: GrantExpiryIn, *, idempotency_key: str | None = None
    ) -> GrantExpiryOut:
        """Extend, shorten or remove (`body.expires_at` None) a grant's expiry."""
        path = f"/v1/grants/{_segment(grant_id)}/expiry"
        return self._send(_post(path, body, GrantExpiryOut, idempotency_key))

    def refund_grant(
        self, grant_id: str, body: GrantRefundIn, *, idempotency_key: str | None = None
    ) -> GrantRefundOut:
        """Refund unused credits of a paid grant in money: `body.amount` credits (all that is
        available when None) leave the block; `body.refund_minor` is the money given back."""
        path = f"/v1/grants/{_segment(grant_id)}/refund"
        return self._send(_post(path, body, GrantRefundOut, idempotency_key))

    # -- spending

    def debit(
        self,
        *,
        credit_type: str,
        idempotency_key: str | None = None,
        occurred_at: dt.datetime | None = None,
        **spend: Unpack[SpendKeywords],
    ) -> DebitOut:
        """Debit `amount` (or `usage` at its price) from `resource_id`'s spend path or
        `wallet_id`, in one step; the same keywords as `reserve`. `occurred_at` (aware): when
        the service was delivered, the debit's accounting date (default: when it is recorded)."""
        body = _debit_in(_spend(credit_type, spend), occurred_at)
        return self._send(_post("/v1/debits", body, DebitOut, idempotency_key))

    def debit_batch(self, body: BatchIn, *, idempotency_key: str | None = None) -> BatchOut:
        """Many debits in one call; each carries its own key and gets its own result."""
        return self._send(_post("/v1/debits/batch", body, BatchOut, idempotency_key))

    def refund(
        self, debit_id: str, body: RefundIn, *, idempotency_key: str | None = None
    ) -> RefundOut:
        path = f"/v1/debits/{_segment(debit_id)}/refund"
        return self._send(_post(path, body, RefundOut, idempotency_key))

    def check(
        self,
        *,
        credit_type: str,
        idempotency_key: str | None = None,
        **spend: Unpack[SpendKeywords],
    ) -> CheckOut:
        """What a debit of the same keywords would do now (allowed, and why not);
        changes nothing."""
        body = _spend(credit_type, spend)
        return self._send(_post("/v1/check", body, CheckOut, idempotency_key))

    def create_reservation(
        self, body: ReserveIn, *, idempotency_key: str | None = None
    ) -> ReservationOut:
        return self._send(_post("/v1/reservations", body, ReservationOut, idempotency_key))

    def get_reservation(self, reservation_id: str) -> ReservationOut:
        return self._send(_get(f"/v1/reservations/{_segment(reservation_id)}", ReservationOut))

    # -- a sandbox's test clock (`credit-ledger serve --test-clock`)

    def get_test_clock(self) -> ClockOut:
        return self._send(_get("/v1/test-clock", ClockOut))

    def advance_test_clock(
        self, *, to: dt.datetime | None = None, seconds: int | None = None
    ) -> ClockOut:
        """Moves the sandbox's clock forward (exactly one of `to`, aware, and `seconds`); what
        the time brings (timeouts, expiry sweeps) has happened when it returns."""
        body = ClockAdvanceIn(to=to, seconds=seconds)
        return self._send(_post("/v1/test-clock/advance", body, ClockOut, None))

    def settle(
        self,
        reservation_id: str,
        body: SettleIn,
        *,
        idempotency_key: str | None = None,
    ) -> SettleOut:
        """Settle with the measured `amount` or `usage` (one is required); see `Overage`."""
        path = f"/v1/reservations/{_segment(reservation_id)}/settle"
        return self._send(_post(path, body, SettleOut, idempotency_key))

    def release(self, reservation_id: str, *, idempotency_key: str | None = None) -> ReleaseOut:
        path = f"/v1/reservations/{_segment(reservation_id)}/release"
        return self._send(_post(path, None, ReleaseOut, idempotency_key))

    def reserve(
        self,
        *,
        credit_type: str,
        timeout_s: int = RESERVATION_TIMEOUT_S_DEFAULT,
        overage: Overage = Overage.CAP,
        idempotency_key: str | None = None,
        **spend: Unpack[SpendKeywords],
    ) -> ReservationScope:
        """`with client.reserve(...) as r:` holds credits for the block; see `Reservation`.

        Pass `idempotency_key` (at most 247 characters) to make a re-run of the block after a
        crash replay the same reservation and settlement."""
        return ReservationScope(
            self,
            _reserve_in(_spend(credit_type, spend), timeout_s),
            _key(idempotency_key, RESERVATION_KEY_CHARS_MAX),
            overage,
        )

    # -- alerts and automatic top-ups

    def create_wallet_threshold(
        self, wallet_id: str, body: WalletThresholdIn, *, idempotency_key: str | None = None
    ) -> ThresholdOut:
        path = f"/v1/wallets/{_segment(wallet_id)}/thresholds"
        return self._send(_post(path, body, ThresholdOut, idempotency_key))

    def list_wallet_thresholds(self, wallet_id: str) -> ThresholdList:
        path = f"/v1/wallets/{_segment(wallet_id)}/thresholds"
        return self._send(_get(path, ThresholdList))

    def remove_wallet_threshold(
        self, wallet_id: str, threshold_id: str, *, idempotency_key: str | None = None
    ) -> ThresholdOut:
        path = f"/v1/wallets/{_segment(wallet_id)}/thresholds/{_segment(threshold_id)}"
        return self._send(_delete(path, ThresholdOut, idempotency_key))

    def create_budget_threshold(
        self, budget_id: str, body: BudgetThresholdIn, *, idempotency_key: str | None = None
    ) -> ThresholdOut:
        path = f"/v1/budgets/{_segment(budget_id)}/thresholds"
        return self._send(_post(path, body, ThresholdOut, idempotency_key))

    def list_budget_thresholds(self, budget_id: str) -> ThresholdList:
        path = f"/v1/budgets/{_segment(budget_id)}/thresholds"
        return self._send(_get(path, ThresholdList))

    def remove_budget_threshold(
        self, budget_id: str, threshold_id: str, *, idempotency_key: str | None = None
    ) -> ThresholdOut:
        path = f"/v1/budgets/{_segment(budget_id)}/thresholds/{_segment(threshold_id)}"
        return self._send(_delete(path, ThresholdOut, idempotency_key))

    def set_top_up_rule(
        self, wallet_id: str, body: TopUpRuleIn, *, idempotency_key: str | None = None
    ) -> TopUpRuleOut:
        path = f"/v1/wallets/{_segment(wallet_id)}/top-up"
        return self._send(_put(path, body, TopUpRuleOut, idempotency_key))

    def get_top_up_rule(self, wallet_id: str) -> TopUpRuleOut:
        return self._send(_get(f"/v1/wallets/{_segment(wallet_id)}/top-up", TopUpRuleOut))

    def remove_top_up_rule(
        self, wallet_id: str, *, idempotency_key: str | None = None
    ) -> TopUpRuleOut:
        path = f"/v1/wallets/{_segment(wallet_id)}/top-up"
        return self._send(_delete(path, TopUpRuleOut, idempotency_key))

    def list_top_ups(self, wallet_id: str, query: ListQuery | None = None) -> TopUpPage:
        path = f"/v1/wallets/{_segment(wallet_id)}/top-ups"
        return self._send(_list(path, query or ListQuery(), TopUpPage))

    def iter_top_ups(self, wallet_id: str, query: ListQuery | None = None) -> Iterator[TopUpOut]:
        return _iterate(lambda q: self.list_top_ups(wallet_id, q), query or ListQuery())

    # -- budgets and prices

    def create_budget(self, body: BudgetIn, *, idempotency_key: str | None = None) -> BudgetOut:
        return self._send(_post("/v1/budgets", body, BudgetOut, idempotency_key))

    def get_budget(self, budget_id: str) -> BudgetOut:
        return self._send(_get(f"/v1/budgets/{_segment(budget_id)}", BudgetOut))

    def update_budget(
        self, budget_id: str, body: BudgetPatchIn, *, idempotency_key: str | None = None
    ) -> BudgetOut:
        path = f"/v1/budgets/{_segment(budget_id)}"
        return self._send(_patch(path, body, BudgetOut, idempotency_key))

    def remove_budget(self, budget_id: str, *, idempotency_key: str | None = None) -> BudgetOut:
        path = f"/v1/budgets/{_segment(budget_id)}"
        return self._send(_delete(path, BudgetOut, idempotency_key))

    # -- webhooks and events

    def create_webhook_endpoint(
        self, body: WebhookEndpointIn, *, idempotency_key: str | None = None
    ) -> WebhookEndpointSecretOut:
        """A webhook endpoint, with its signing secret (answered this once: keep it)."""
        call = _post("/v1/webhook-endpoints", body, WebhookEndpointSecretOut, idempotency_key)
        return self._send(call)

    def get_webhook_endpoint(self, endpoint_id: str) -> WebhookEndpointOut:
        path = f"/v1/webhook-endpoints/{_segment(endpoint_id)}"
        return self._send(_get(path, WebhookEndpointOut))

    def list_webhook_endpoints(
        self, query: WebhookEndpointQuery | None = None
    ) -> WebhookEndpointPage:
        query = query or WebhookEndpointQuery()
        return self._send(_list("/v1/webhook-endpoints", query, WebhookEndpointPage))

    def rotate_webhook_secret(
        self, endpoint_id: str, *, idempotency_key: str | None = None
    ) -> WebhookEndpointSecretOut:
        """A new secret; the previous one keeps signing until `previous_secret_until`."""
        path = f"/v1/webhook-endpoints/{_segment(endpoint_id)}/rotate-secret"
        return self._send(_post(path, None, WebhookEndpointSecretOut, idempotency_key))

    def disable_webhook_endpoint(
        self, endpoint_id: str, *, idempotency_key: str | None = None
    ) -> WebhookEndpointOut:
        path = f"/v1/webhook-endpoints/{_segment(endpoint_id)}/disable"
        return self._send(_post(path, None, WebhookEndpointOut, idempotency_key))

    def enable_webhook_endpoint(
        self, endpoint_id: str, *, idempotency_key: str | None = None
    ) -> WebhookEndpointOut:
        path = f"/v1/webhook-endpoints/{_segment(endpoint_id)}/enable"
        return self._send(_post(path, None, WebhookEndpointOut, idempotency_key))

    def list_webhook_deliveries(
        self, endpoint_id: str, query: WebhookDeliveryQuery | None = None
    ) -> WebhookDeliveryPage:
        path = f"/v1/webhook-endpoints/{_segment(endpoint_id)}/deliveries"
        return self._send(_list(path, query or WebhookDeliveryQuery(), WebhookDeliveryPage))

    def replay_webhook(
        self, endpoint_id: str, body: WebhookReplayIn, *, idempotency_key: str | None = None
    ) -> WebhookReplayOut:
        path = f"/v1/webhook-endpoints/{_segment(endpoint_id)}/replay"
        return self._send(_post(path, body, WebhookReplayOut, idempotency_key))

    def list_events(self, query: EventQuery | None = None) -> EventPage:
        return self._send(_list("/v1/events", query or EventQuery(), EventPage))

    def iter_events(self, query: EventQuery | None = None) -> Iterator[EventOut]:
        return _iterate(self.list_events, query or EventQuery())

    def get_event(self, event_id: str) -> EventOut:
        return self._send(_get(f"/v1/events/{_segment(event_id)}", EventOut))

    def create_price(self, body: PriceIn, *, idempotency_key: str | None = None) -> PriceOut:
        return self._send(_post("/v1/prices", body, PriceOut, idempotency_key))

    def current_price(self, query: PriceAtQuery) -> PriceOut:
        """The price of a feature in force now (or at `query.at`)."""
        return self._send(_get("/v1/prices/current", PriceOut, _params(query)))

    # -- plans and subscriptions

    def create_plan(self, body: PlanIn, *, idempotency_key: str | None = None) -> PlanOut:
        return self._send(_post("/v1/plans", body, PlanOut, idempotency_key))

    def get_plan(self, plan_id: str) -> PlanOut:
        return self._send(_get(f"/v1/plans/{_segment(plan_id)}", PlanOut))

    def list_plans(self, query: PlanQuery | None = None) -> PlanPage:
        return self._send(_list("/v1/plans", query or PlanQuery(), PlanPage))

    def iter_plans(self, query: PlanQuery | None = None) -> Iterator[PlanOut]:
        return _iterate(self.list_plans, query or PlanQuery())

    def subscribe(
        self, body: SubscriptionIn, *, idempotency_key: str | None = None
    ) -> SubscriptionOut:
        return self._send(_post("/v1/subscriptions", body, SubscriptionOut, idempotency_key))

    def get_subscription(self, subscription_id: str) -> SubscriptionOut:
        return self._send(_get(f"/v1/subscriptions/{_segment(subscription_id)}", SubscriptionOut))

    def list_subscriptions(self, query: SubscriptionQuery | None = None) -> SubscriptionPage:
        """A page of subscriptions (GET /v1/subscriptions), without their allocations."""
        return self._send(
            _list("/v1/subscriptions", query or SubscriptionQuery(), SubscriptionPage)
        )

    def iter_subscriptions(
        self, query: SubscriptionQuery | None = None
    ) -> Iterator[SubscriptionOut]:
        return _iterate(self.list_subscriptions, query or SubscriptionQuery())

    def change_plan(
        self, subscription_id: str, body: ChangePlanIn, *, idempotency_key: str | None = None
    ) -> SubscriptionOut:
        path = f"/v1/subscriptions/{_segment(subscription_id)}/change-plan"
        return self._send(_post(path, body, SubscriptionOut, idempotency_key))

    def pause_subscription(
        self, subscription_id: str, *, idempotency_key: str | None = None
    ) -> SubscriptionOut:
        path = f"/v1/subscriptions/{_segment(subscription_id)}/pause"
        return self._send(_post(path, None, SubscriptionOut, idempotency_key))

    def resume_subscription(
        self, subscription_id: str, *, idempotency_key: str | None = None
    ) -> SubscriptionOut:
        path = f"/v1/subscriptions/{_segment(subscription_id)}/resume"
        return self._send(_post(path, None, SubscriptionOut, idempotency_key))

    def cancel_subscription(
        self, subscription_id: str, *, idempotency_key: str | None = None
    ) -> SubscriptionOut:
        path = f"/v1/subscriptions/{_segment(subscription_id)}/cancel"
        return self._send(_post(path, None, SubscriptionOut, idempotency_key))

    # -- lists: a page, or every item following the cursor

    def list_customers(self, query: CustomerQuery | None = None) -> CustomerPage:
        return self._send(_list("/v1/customers", query or CustomerQuery(), CustomerPage))

    def iter_customers(self, query: CustomerQuery | None = None) -> Iterator[CustomerOut]:
        return _iterate(self.list_customers, query or CustomerQuery())

    def list_resources(self, query: ResourceQuery | None = None) -> ResourcePage:
        return self._send(_list("/v1/resources", query or ResourceQuery(), ResourcePage))

    def iter_resources(self, query: ResourceQuery | None = None) -> Iterator[ResourceOut]:
        return _iterate(self.list_resources, query or ResourceQuery())

    def list_wallets(self, query: WalletQuery | None = None) -> WalletPage:
        return self._send(_list("/v1/wallets", query or WalletQuery(), WalletPage))

    def iter_wallets(self, query: WalletQuery | None = None) -> Iterator[WalletOut]:
        return _iterate(self.list_wallets, query or WalletQuery())

    def list_grants(self, query: GrantQuery | None = None) -> GrantPage:
        return self._send(_list("/v1/grants", query or GrantQuery(), GrantPage))

    def iter_grants(self, query: GrantQuery | None = None) -> Iterator[GrantBlockOut]:
        return _iterate(self.list_grants, query or GrantQuery())

    def list_reservations(self, query: ReservationQuery) -> ReservationPage:
        return self._send(_list("/v1/reservations", query, ReservationPage))

    def iter_reservations(self, query: ReservationQuery) -> Iterator[ReservationOut]:
        return _iterate(self.list_reservations, query)

    def list_budgets(self, query: BudgetQuery | None = None) -> BudgetPage:
        return self._send(_list("/v1/budgets", query or BudgetQuery(), BudgetPage))

    def iter_budgets(self, query: BudgetQuery | None = None) -> Iterator[BudgetOut]:
        return _iterate(self.list_budgets, query or BudgetQuery())

    def list_prices(self, query: PriceQuery | None = None) -> PricePage:
        return self._send(_list("/v1/prices", query or PriceQuery(), PricePage))

    def iter_prices(self, query: PriceQuery | None = None) -> Iterator[PriceOut]:
        return _iterate(self.list_prices, query or PriceQuery())

    def usage(self, query: UsageQuery) -> UsagePage:
        """A page of usage (GET /v1/usage): credits consumed and their value per bucket and
        group, as of `page.projection.watermark_ts`."""
        return self._send(_list("/v1/usage", query, UsagePage))

    def iter_usage(self, query: UsageQuery) -> Iterator[UsageRowOut]:
        return _iterate(self.usage, query)

    # -- finance

    def report(self, report: ReportName | str, query: ReportQuery) -> ReportOut:
        """A finance report of one period as JSON (GET /v1/reports/{report}): its columns,
        rows and control (the SHA-256 is of the report's CSV form)."""
        query = msgspec.structs.replace(query, format=ReportFormat.JSON)
        return self._send(_get(f"/v1/reports/{_segment(str(report))}", ReportOut, _params(query)))

    def list_periods(self) -> PeriodList:
        return self._send(_get("/v1/periods", PeriodList))

    def close_period(self, period: str) -> PeriodOut:
        """Closes a month (YYYY-MM) once its checks pass; closing a closed month answers it."""
        return self._send(_post(f"/v1/periods/{_segment(period)}/close", None, PeriodOut, None))

    def lock_period(self, period: str) -> PeriodOut:
        return self._send(_post(f"/v1/periods/{_segment(period)}/lock", None, PeriodOut, None))

    def create_breakage_policy(self, body: BreakagePolicyIn) -> BreakagePolicyOut:
        return self._send(_post("/v1/finance/breakage-policies", body, BreakagePolicyOut, None))

    # -- probes

    def healthz(self) -> dict[str, Any]:
        return self._send(_probe("/healthz"))

    def readyz(self) -> dict[str, Any]:
        """The readiness document; raises (usually `LedgerUnavailableError`) when not ready."""
        return self._send(_probe("/readyz"))


class AsyncCreditClient:
    """The asyncio client: the same methods as `CreditClient`, awaited. Make one per event loop
    and share it between tasks."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        retry: RetryPolicy | None = None,
        connections_max: int = CONNECTIONS_MAX_DEFAULT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = retry if retry is not None else RetryPolicy()
        options = _http_options(base_url, api_key, timeout_s, connections_max)
        self._http = httpx.AsyncClient(transport=transport, **options)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncCreditClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: _Call[T]) -> T:
        attempts = self.retry.attempts if call.retry else 1
        for attempt in range(1, attempts + 1):
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    content=call.body,
                    params=call.params or None,
                    headers=call.headers(),
                )
            except _TRANSIENT as error:
                if attempt == attempts:
                    raise _unreachable(call, error, attempt) from error
                await asyncio.sleep(self.retry.delay_s(attempt))
                continue
            if attempt == attempts or response.status_code not in self.retry.statuses:
                return _result(call, response)
            await asyncio.sleep(self.retry.delay_s(attempt, _retry_after_s(response)))
        raise AssertionError("the loop returns or raises on its last attempt")

    # -- catalog

    async def create_credit_type(
        self, body: CreditTypeIn, *, idempotency_key: str | None = None
    ) -> CreditTypeOut:
        return await self._send(_post("/v1/credit-types", body, CreditTypeOut, idempotency_key))

    async def get_credit_type(self, code: str) -> CreditTypeOut:
        return await self._send(_get(f"/v1/credit-types/{_segment(code)}", CreditTypeOut))

    async def create_customer(
        self, body: CustomerIn, *, idempotency_key: str | None = None
    ) -> CustomerOut:
        return await self._send(_post("/v1/customers", body, CustomerOut, idempotency_key))

    async def get_customer(self, customer_id: str) -> CustomerOut:
        return await self._send(_get(f"/v1/customers/{_segment(customer_id)}", CustomerOut))

    async def create_resource(
        self, body: ResourceIn, *, idempotency_key: str | None = None
    ) -> ResourceOut:
        return await self._send(_post("/v1/resources", body, ResourceOut, idempotency_key))

    async def get_resource(self, resource_id: str) -> ResourceOut:
        return await self._send(_get(f"/v1/resources/{_segment(resource_id)}", ResourceOut))

    async def create_wallet(
        self, body: WalletIn, *, idempotency_key: str | None = None
    ) -> WalletOut:
        return await self._send(_post("/v1/wallets", body, WalletOut, idempotency_key))

    async def get_wallet(self, wallet_id: str) -> WalletBalanceOut:
        return await self._send(_get(f"/v1/wallets/{_segment(wallet_id)}", WalletBalanceOut))

    async def update_wallet(
        self, wallet_id: str, body: WalletPatchIn, *, idempotency_key: str | None = None
    ) -> WalletOut:
        """Change the overdraft mode or limit, or the fall-through (the fields set in `body`)."""
        path = f"/v1/wallets/{_segment(wallet_id)}"
        return await self._send(_patch(path, body, WalletOut, idempotency_key))

    async def list_entries(
        self,
        wallet_id: str,
        *,
        cursor: str | None = None,
        limit: int | None = None,
        types: Iterable[EntryType | str] | None = None,
    ) -> EntriesOut:
        """A page of the wallet's entries (of `types` only, when given)."""
        path = f"/v1/wallets/{_segment(wallet_id)}/entries"
        return await self._send(_get(path, EntriesOut, _entries_params(cursor, limit, types)))

    async def iter_entries(
        self,
        wallet_id: str,
        *,
        page_limit: int | None = None,
        types: Iterable[EntryType | str] | None = None,
    ) -> AsyncIterator[EntryOut]:
        """Every entry of the wallet, page after page, following `next_cursor`."""
        cursor: str | None = None
        kept = list(types) if types is not None else None
        while True:
            page = await self.list_entries(wallet_id, cursor=cursor, limit=page_limit, types=kept)
            for entry in page.entries:
                yield entry
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # -- grants

    async def create_grant(self, body: GrantIn, *, idempotency_key: str | None = None) -> GrantOut:
        return await self._send(_post("/v1/grants", body, GrantOut, idempotency_key))

    async def get_grant(self, grant_id: str) -> GrantDetailOut:
        """The block as issued, its state and its balances."""
        return await self._send(_get(f"/v1/grants/{_segment(grant_id)}", GrantDetailOut))

    async def void_grant(
        self, grant_id: str, body: VoidIn | None = None, *, idempotency_key: str | None = None
    ) -> VoidOut:
        path = f"/v1/grants/{_segment(grant_id)}/void"
        return await self._send(_post(path, body, VoidOut, idempotency_key))

    async def change_grant_expiry(
        self, grant_id: str, body: GrantExpiryIn, *, idempotency_key: str | None = None
    ) -> GrantExpiryOut:
        path = f"/v1/grants/{_segment(grant_id)}/expiry"
        return await self._send(_post(path, body, GrantExpiryOut, idempotency_key))

    async def refund_grant(
        self, grant_id: str, body: GrantRefundIn, *, idempotency_key: str | None = None
    ) -> GrantRefundOut:
        path = f"/v1/grants/{_segment(grant_id)}/refund"
        return await self._send(_post(path, body, GrantRefundOut, idempotency_key))

    # -- spending

    async def debit(
        self,
        *,
        credit_type: str,
        idempotency_key: str | None = None,
        occurred_at: dt.datetime | None = None,
        **spend: Unpack[SpendKeywords],
    ) -> DebitOut:
        """Debit `amount` (or `usage` at its price) from `resource_id`'s spend path or
        `wallet_id`, in one step; the same keywords as `reserve`. `occurred_at` (aware): when
        the service was delivered, the debit's accounting date (default: when it is recorded)."""
        body = _debit_in(_spend(credit_type, spend), occurred_at)
        return await self._send(_post("/v1/debits", body, DebitOut, idempotency_key))

    async def debit_batch(self, body: BatchIn, *, idempotency_key: str | None = None) -> BatchOut:
        """Many debits in one call; each carries its own key and gets its own result."""
        return await self._send(_post("/v1/debits/batch", body, BatchOut, idempotency_key))

    async def refund(
        self, debit_id: str, body: RefundIn, *, idempotency_key: str | None = None
    ) -> RefundOut:
        path = f"/v1/debits/{_segment(debit_id)}/refund"
        return await self._send(_post(path, body, RefundOut, idempotency_key))

    async def check(
        self,
        *,
        credit_type: str,
        idempotency_key: str | None = None,
        **spend: Unpack[SpendKeywords],
    ) -> CheckOut:
        """What a debit of the same keywords would do now (allowed, and why not);
        changes nothing."""
        body = _spend(credit_type, spend)
        return await self._send(_post("/v1/check", body, CheckOut, idempotency_key))

    async def create_reservation(
        self, body: ReserveIn, *, idempotency_key: str | None = None
    ) -> ReservationOut:
        return await self._send(_post("/v1/reservations", body, ReservationOut, idempotency_key))

    async def get_reservation(self, reservation_id: str) -> ReservationOut:
        path = f"/v1/reservations/{_segment(reservation_id)}"
        return await self._send(_get(path, ReservationOut))

    async def get_test_clock(self) -> ClockOut:
        return await self._send(_get("/v1/test-clock", ClockOut))

    async def advance_test_clock(
        self, *, to: dt.datetime | None = None, seconds: int | None = None
    ) -> ClockOut:
        """See `CreditClient.advance_test_clock`."""
        body = ClockAdvanceIn(to=to, seconds=seconds)
        return await self._send(_post("/v1/test-clock/advance", body, ClockOut, None))

    async def settle(
        self,
        reservation_id: str,
        body: SettleIn,
        *,
        idempotency_key: str | None = None,
    ) -> SettleOut:
        """Settle with the measured `amount` or `usage` (one is required); see `Overage`."""
        path = f"/v1/reservations/{_segment(reservation_id)}/settle"
        return await self._send(_post(path, body, SettleOut, idempotency_key))

    async def release(
        self, reservation_id: str, *, idempotency_key: str | None = None
    ) -> ReleaseOut:
        path = f"/v1/reservations/{_segment(reservation_id)}/release"
        return await self._send(_post(path, None, ReleaseOut, idempotency_key))

    def reserve(
        self,
        *,
        credit_type: str,
        timeout_s: int = RESERVATION_TIMEOUT_S_DEFAULT,
        overage: Overage = Overage.CAP,
        idempotency_key: str | None = None,
        **spend: Unpack[SpendKeywords],
    ) -> AsyncReservationScope:
        """`async with client.reserve(...) as r:`; see `CreditClient.reserve`."""
        key = _key(idempotency_key, RESERVATION_KEY_CHARS_MAX)
        body = _reserve_in(_spend(credit_type, spend), timeout_s)
        return AsyncReservationScope(self, body, key, overage)

    # -- alerts and automatic top-ups

    async def create_wallet_threshold(
        self, wallet_id: str, body: WalletThresholdIn, *, idempotency_key: str | None = None
    ) -> ThresholdOut:
        path = f"/v1/wallets/{_segment(wallet_id)}/thresholds"
        return await self._send(_post(path, body, ThresholdOut, idempotency_key))

    async def list_wallet_thresholds(self, wallet_id: str) -> ThresholdList:
        path = f"/v1/wallets/{_segment(wallet_id)}/thresholds"
        return await self._send(_get(path, ThresholdList))

    async def remove_wallet_threshold(
        self, wallet_id: str, threshold_id: str, *, idempotency_key: str | None = None
    ) -> ThresholdOut:
        path = f"/v1/wallets/{_segment(wallet_id)}/thresholds/{_segment(threshold_id)}"
        return await self._send(_delete(path, ThresholdOut, idempotency_key))

    async def create_budget_threshold(
        self, budget_id: str, body: BudgetThresholdIn, *, idempotency_key: str | None = None
    ) -> ThresholdOut:
        path = f"/v1/budgets/{_segment(budget_id)}/thresholds"
        return await self._send(_post(path, body, ThresholdOut, idempotency_key))

    async def list_budget_thresholds(self, budget_id: str) -> ThresholdList:
        path = f"/v1/budgets/{_segment(budget_id)}/thresholds"
        return await self._send(_get(path, ThresholdList))

    async def remove_budget_threshold(
        self, budget_id: str, threshold_id: str, *, idempotency_key: str | None = None
    ) -> ThresholdOut:
        path = f"/v1/budgets/{_segment(budget_id)}/thresholds/{_segment(threshold_id)}"
        return await self._send(_delete(path, ThresholdOut, idempotency_key))

    async def set_top_up_rule(
        self, wallet_id: str, body: TopUpRuleIn, *, idempotency_key: str | None = None
    ) -> TopUpRuleOut:
        path = f"/v1/wallets/{_segment(wallet_id)}/top-up"
        return await self._send(_put(path, body, TopUpRuleOut, idempotency_key))

    async def get_top_up_rule(self, wallet_id: str) -> TopUpRuleOut:
        return await self._send(_get(f"/v1/wallets/{_segment(wallet_id)}/top-up", TopUpRuleOut))

    async def remove_top_up_rule(
        self, wallet_id: str, *, idempotency_key: str | None = None
    ) -> TopUpRuleOut:
        path = f"/v1/wallets/{_segment(wallet_id)}/top-up"
        return await self._send(_delete(path, TopUpRuleOut, idempotency_key))

    async def list_top_ups(self, wallet_id: str, query: ListQuery | None = None) -> TopUpPage:
        path = f"/v1/wallets/{_segment(wallet_id)}/top-ups"
        return await self._send(_list(path, query or ListQuery(), TopUpPage))

    def iter_top_ups(
        self, wallet_id: str, query: ListQuery | None = None
    ) -> AsyncIterator[TopUpOut]:
        return _aiterate(lambda q: self.list_top_ups(wallet_id, q), query or ListQuery())

    # -- budgets and prices

    async def create_budget(
        self, body: BudgetIn, *, idempotency_key: str | None = None
    ) -> BudgetOut:
        return await self._send(_post("/v1/budgets", body, BudgetOut, idempotency_key))

    async def get_budget(self, budget_id: str) -> BudgetOut:
        return await self._send(_get(f"/v1/budgets/{_segment(budget_id)}", BudgetOut))

    async def update_budget(
        self, budget_id: str, body: BudgetPatchIn, *, idempotency_key: str | None = None
    ) -> BudgetOut:
        path = f"/v1/budgets/{_segment(budget_id)}"
        return await self._send(_patch(path, body, BudgetOut, idempotency_key))

    async def remove_budget(
        self, budget_id: str, *, idempotency_key: str | None = None
    ) -> BudgetOut:
        path = f"/v1/budgets/{_segment(budget_id)}"
        return await self._send(_delete(path, BudgetOut, idempotency_key))

    # -- webhooks and events

    async def create_webhook_endpoint(
        self, body: WebhookEndpointIn, *, idempotency_key: str | None = None
    ) -> WebhookEndpointSecretOut:
        """A webhook endpoint, with its signing secret (answered this once: keep it)."""
        call = _post("/v1/webhook-endpoints", body, WebhookEndpointSecretOut, idempotency_key)
        return await self._send(call)

    async def get_webhook_endpoint(self, endpoint_id: str) -> WebhookEndpointOut:
        path = f"/v1/webhook-endpoints/{_segment(endpoint_id)}"
        return await self._send(_get(path, WebhookEndpointOut))

    async def list_webhook_endpoints(
        self, query: WebhookEndpointQuery | None = None
    ) -> WebhookEndpointPage:
        query = query or WebhookEndpointQuery()
        return await self._send(_list("/v1/webhook-endpoints", query, WebhookEndpointPage))

    async def rotate_webhook_secret(
        self, endpoint_id: str, *, idempotency_key: str | None = None
    ) -> WebhookEndpointSecretOut:
        """A new secret; the previous one keeps signing until `previous_secret_until`."""
        path = f"/v1/webhook-endpoints/{_segment(endpoint_id)}/rotate-secret"
        return await self._send(_post(path, None, WebhookEndpointSecretOut, idempotency_key))

    async def disable_webhook_endpoint(
        self, endpoint_id: str, *, idempotency_key: str | None = None
    ) -> WebhookEndpointOut:
        path = f"/v1/webhook-endpoints/{_segment(endpoint_id)}/disable"
        return await self._send(_post(path, None, WebhookEndpointOut, idempotency_key))

    async def enable_webhook_endpoint(
        self, endpoint_id: str, *, idempotency_key: str | None = None
    ) -> WebhookEndpointOut:
        path = f"/v1/webhook-endpoints/{_segment(endpoint_id)}/enable"
        return await self._send(_post(path, None, WebhookEndpointOut, idempotency_key))

    async def list_webhook_deliveries(
        self, endpoint_id: str, query: WebhookDeliveryQuery | None = None
    ) -> WebhookDeliveryPage:
        path = f"/v1/webhook-endpoints/{_segment(endpoint_id)}/deliveries"
        return await self._send(_list(path, query or WebhookDeliveryQuery(), WebhookDeliveryPage))

    async def replay_webhook(
        self, endpoint_id: str, body: WebhookReplayIn, *, idempotency_key: str | None = None
    ) -> WebhookReplayOut:
        path = f"/v1/webhook-endpoints/{_segment(endpoint_id)}/replay"
        return await self._send(_post(path, body, WebhookReplayOut, idempotency_key))

    async def list_events(self, query: EventQuery | None = None) -> EventPage:
        return await self._send(_list("/v1/events", query or EventQuery(), EventPage))

    def iter_events(self, query: EventQuery | None = None) -> AsyncIterator[EventOut]:
        return _aiterate(self.list_events, query or EventQuery())

    async def get_event(self, event_id: str) -> EventOut:
        return await self._send(_get(f"/v1/events/{_segment(event_id)}", EventOut))

    async def create_price(self, body: PriceIn, *, idempotency_key: str | None = None) -> PriceOut:
        return await self._send(_post("/v1/prices", body, PriceOut, idempotency_key))

    async def current_price(self, query: PriceAtQuery) -> PriceOut:
        """The price of a feature in force now (or at `query.at`)."""
        return await self._send(_get("/v1/prices/current", PriceOut, _params(query)))

    # -- plans and subscriptions

    async def create_plan(self, body: PlanIn, *, idempotency_key: str | None = None) -> PlanOut:
        return await self._send(_post("/v1/plans", body, PlanOut, idempotency_key))

    async def get_plan(self, plan_id: str) -> PlanOut:
        return await self._send(_get(f"/v1/plans/{_segment(plan_id)}", PlanOut))

    async def list_plans(self, query: PlanQuery | None = None) -> PlanPage:
        return await self._send(_list("/v1/plans", query or PlanQuery(), PlanPage))

    def iter_plans(self, query: PlanQuery | None = None) -> AsyncIterator[PlanOut]:
        return _aiterate(self.list_plans, query or PlanQuery())

    async def subscribe(
        self, body: SubscriptionIn, *, idempotency_key: str | None = None
    ) -> SubscriptionOut:
        return await self._send(_post("/v1/subscriptions", body, SubscriptionOut, idempotency_key))

    async def get_subscription(self, subscription_id: str) -> SubscriptionOut:
        path = f"/v1/subscriptions/{_segment(subscription_id)}"
        return await self._send(_get(path, SubscriptionOut))

    async def list_subscriptions(self, query: SubscriptionQuery | None = None) -> SubscriptionPage:
        """A page of subscriptions (GET /v1/subscriptions), without their allocations."""
        return await self._send(
            _list("/v1/subscriptions", query or SubscriptionQuery(), SubscriptionPage)
        )

    def iter_subscriptions(
        self, query: SubscriptionQuery | None = None
    ) -> AsyncIterator[SubscriptionOut]:
        return _aiterate(self.list_subscriptions, query or SubscriptionQuery())

    async def change_plan(
        self, subscription_id: str, body: ChangePlanIn, *, idempotency_key: str | None = None
    ) -> SubscriptionOut:
        path = f"/v1/subscriptions/{_segment(subscription_id)}/change-plan"
        return await self._send(_post(path, body, SubscriptionOut, idempotency_key))

    async def pause_subscription(
        self, subscription_id: str, *, idempotency_key: str | None = None
    ) -> SubscriptionOut:
        path = f"/v1/subscriptions/{_segment(subscription_id)}/pause"
        return await self._send(_post(path, None, SubscriptionOut, idempotency_key))

    async def resume_subscription(
        self, subscription_id: str, *, idempotency_key: str | None = None
    ) -> SubscriptionOut:
        path = f"/v1/subscriptions/{_segment(subscription_id)}/resume"
        return await self._send(_post(path, None, SubscriptionOut, idempotency_key))

    async def cancel_subscription(
        self, subscription_id: str, *, idempotency_key: str | None = None
    ) -> SubscriptionOut:
        path = f"/v1/subscriptions/{_segment(subscription_id)}/cancel"
        return await self._send(_post(path, None, SubscriptionOut, idempotency_key))

    # -- lists: a page, or every item following the cursor

    async def list_customers(self, query: CustomerQuery | None = None) -> CustomerPage:
        return await self._send(_list("/v1/customers", query or CustomerQuery(), CustomerPage))

    def iter_customers(self, query: CustomerQuery | None = None) -> AsyncIterator[CustomerOut]:
        return _aiterate(self.list_customers, query or CustomerQuery())

    async def list_resources(self, query: ResourceQuery | None = None) -> ResourcePage:
        return await self._send(_list("/v1/resources", query or ResourceQuery(), ResourcePage))

    def iter_resources(self, query: ResourceQuery | None = None) -> AsyncIterator[ResourceOut]:
        return _aiterate(self.list_resources, query or ResourceQuery())

    async def list_wallets(self, query: WalletQuery | None = None) -> WalletPage:
        return await self._send(_list("/v1/wallets", query or WalletQuery(), WalletPage))

    def iter_wallets(self, query: WalletQuery | None = None) -> AsyncIterator[WalletOut]:
        return _aiterate(self.list_wallets, query or WalletQuery())

    async def list_grants(self, query: GrantQuery | None = None) -> GrantPage:
        return await self._send(_list("/v1/grants", query or GrantQuery(), GrantPage))

    def iter_grants(self, query: GrantQuery | None = None) -> AsyncIterator[GrantBlockOut]:
        return _aiterate(self.list_grants, query or GrantQuery())

    async def list_reservations(self, query: ReservationQuery) -> ReservationPage:
        return await self._send(_list("/v1/reservations", query, ReservationPage))

    def iter_reservations(self, query: ReservationQuery) -> AsyncIterator[ReservationOut]:
        return _aiterate(self.list_reservations, query)

    async def list_budgets(self, query: BudgetQuery | None = None) -> BudgetPage:
        return await self._send(_list("/v1/budgets", query or BudgetQuery(), BudgetPage))

    def iter_budgets(self, query: BudgetQuery | None = None) -> AsyncIterator[BudgetOut]:
        return _aiterate(self.list_budgets, query or BudgetQuery())

    async def list_prices(self, query: PriceQuery | None = None) -> PricePage:
        return await self._send(_list("/v1/prices", query or PriceQuery(), PricePage))

    def iter_prices(self, query: PriceQuery | None = None) -> AsyncIterator[PriceOut]:
        return _aiterate(self.list_prices, query or PriceQuery())

    async def usage(self, query: UsageQuery) -> UsagePage:
        """A page of usage (GET /v1/usage): credits consumed and their value per bucket and
        group, as of `page.projection.watermark_ts`."""
        return await self._send(_list("/v1/usage", query, UsagePage))

    def iter_usage(self, query: UsageQuery) -> AsyncIterator[UsageRowOut]:
        return _aiterate(self.usage, query)

    # -- finance

    async def report(self, report: ReportName | str, query: ReportQuery) -> ReportOut:
        """A finance report of one period as JSON (GET /v1/reports/{report}): its columns,
        rows and control (the SHA-256 is of the report's CSV form)."""
        query = msgspec.structs.replace(query, format=ReportFormat.JSON)
        return await self._send(
            _get(f"/v1/reports/{_segment(str(report))}", ReportOut, _params(query))
        )

    async def list_periods(self) -> PeriodList:
        return await self._send(_get("/v1/periods", PeriodList))

    async def close_period(self, period: str) -> PeriodOut:
        """Closes a month (YYYY-MM) once its checks pass; closing a closed month answers it."""
        return await self._send(
            _post(f"/v1/periods/{_segment(period)}/close", None, PeriodOut, None)
        )

    async def lock_period(self, period: str) -> PeriodOut:
        return await self._send(
            _post(f"/v1/periods/{_segment(period)}/lock", None, PeriodOut, None)
        )

    async def create_breakage_policy(self, body: BreakagePolicyIn) -> BreakagePolicyOut:
        return await self._send(
            _post("/v1/finance/breakage-policies", body, BreakagePolicyOut, None)
        )

    # -- probes

    async def healthz(self) -> dict[str, Any]:
        return await self._send(_probe("/healthz"))

    async def readyz(self) -> dict[str, Any]:
        """The readiness document; raises (usually `LedgerUnavailableError`) when not ready."""
        return await self._send(_probe("/readyz"))
