"""Domain errors with stable codes. The API maps each code to one HTTP status (one table).

Business outcomes (not enough credits, an expired reservation) are errors of this module, never
assertions: a caller meets them in normal operation. Programmer errors are assertions.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CreditError(Exception):
    code: ClassVar[str] = "credit_error"

    def __init__(self, message: str, *, replayed: bool = False, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        # The stored outcome of an idempotency key answered again (the API says so with
        # `Idempotency-Hit: true`), rather than a decision taken now.
        self.replayed = replayed
        self.details = details


class InsufficientCredits(CreditError):
    code = "insufficient_credits"


class BudgetExceeded(CreditError):
    code = "budget_exceeded"


class ReservationExpired(CreditError):
    code = "reservation_expired"


class ReservationAlreadySettled(CreditError):
    code = "reservation_already_settled"


class ReservationAlreadyReleased(CreditError):
    code = "reservation_already_released"


class IdempotencyConflict(CreditError):
    code = "idempotency_conflict"


class Conflict(CreditError):
    """The request clashes with what exists (a duplicate code, a second wallet)."""

    code = "conflict"


class GrantNotRefundable(CreditError):
    """A refund in money of a block that cannot have one: promotional (nothing was paid), or
    not in force (being issued, voided, expired)."""

    code = "grant_not_refundable"


class RefundExceedsAvailable(CreditError):
    """A refund in money of more credits than the block has available now (`refundable`)."""

    code = "refund_exceeds_available"


class TooManyThresholds(CreditError):
    """A wallet or budget has THRESHOLDS_PER_SUBJECT_MAX thresholds in force already."""

    code = "too_many_thresholds"


class SubscriptionCancelled(CreditError):
    """A change of a cancelled subscription: it gets no further allocation, nor a new plan."""

    code = "subscription_cancelled"


class AlreadySubscribed(CreditError):
    """A second live (active or paused) subscription of one plan on one resource, by subscribe
    or by a change of plan: it would allocate the same credits twice. `subscription_id`: the
    live one."""

    code = "already_subscribed"


class VoidExceedsAvailable(CreditError):
    """A void of part of a block asks for more credits than it has available now (`available`:
    what it has, reservations' holds excepted). Nothing moved."""

    code = "void_exceeds_available"


class GrantNotChangeable(CreditError):
    """A change of a block that is no longer in force (expired, voided, or never issued): a
    void of part of it, or a change of its expiry."""

    code = "grant_not_changeable"


class NotFound(CreditError):
    code = "not_found"


class InvalidRequest(CreditError):
    code = "validation_error"


class OccurredAtOutOfRange(InvalidRequest):
    """A spend's `occurred_at` is in the future, or older than the service accepts
    (ledger.limits.OCCURRED_AT_AGE_S_MAX)."""

    code = "occurred_at_out_of_range"


class ExpiryInPast(InvalidRequest):
    """A new expiry of a block at or before now (the service's clock): credits would expire
    that a spend made before the change could have used."""

    code = "expiry_in_past"


class ExpiryNotAfterEffective(InvalidRequest):
    """A new expiry of a block at or before its effective time."""

    code = "expiry_not_after_effective"


class InvalidRolloverPolicy(InvalidRequest):
    """A grant's rollover policy that cannot be carried out: max_credits below min_credits, a
    negative bound, an expires_at not after the block's, a block that never expires."""

    code = "invalid_rollover_policy"


class ClockBackwards(CreditError):
    """A test clock moves forward only."""

    code = "test_clock_backwards"


class LedgerUnavailableError(CreditError):
    code = "ledger_unavailable"


ALL_ERRORS: tuple[type[CreditError], ...] = (
    InsufficientCredits,
    BudgetExceeded,
    ReservationExpired,
    ReservationAlreadySettled,
    ReservationAlreadyReleased,
    IdempotencyConflict,
    Conflict,
    NotFound,
    InvalidRequest,
    OccurredAtOutOfRange,
    InvalidRolloverPolicy,
    ClockBackwards,
    LedgerUnavailableError,
    GrantNotRefundable,
    RefundExceedsAvailable,
    SubscriptionCancelled,
    VoidExceedsAvailable,
    GrantNotChangeable,
    ExpiryInPast,
    ExpiryNotAfterEffective,
)


class WebhookUrlInvalid(InvalidRequest):
    """A webhook endpoint's URL is not an absolute http(s) URL with a host."""

    code = "webhook_url_invalid"


class UnknownEventType(InvalidRequest):
    """An event type (an endpoint's filter, a list's filter) that is not one of EVENT_TYPES."""

    code = "unknown_event_type"


class WebhookEndpointDisabled(CreditError):
    """A replay to a disabled endpoint: enable it first."""

    code = "webhook_endpoint_disabled"


class ReplayRangeTooLarge(InvalidRequest):
    """A replay's time range is longer, or holds more events, than one replay sends."""

    code = "replay_range_too_large"


ALL_ERRORS = (
    *ALL_ERRORS,
    WebhookUrlInvalid,
    UnknownEventType,
    WebhookEndpointDisabled,
    ReplayRangeTooLarge,
)
