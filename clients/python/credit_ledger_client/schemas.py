"""The wire contract: msgspec structs for every request and response body.

This module stands alone (msgspec only) in the client's distribution, so that the Python client
imports no server code; the service decodes, answers and documents its API with these same
structs. Its enums therefore repeat the catalog's values on purpose, and a test checks both
sides accept the same values.

Ids are strings (a u128 does not fit a JSON number): UUID text for objects and operations.
Amounts are integers in the credit type's minor unit, 1 .. 2^63-1. Times are RFC 3339 UTC.
Unknown fields are refused, so a typo is an error instead of a silently ignored field.

Lists take their filters as query parameters, described by the `...Query` structs (decoded as
strictly as bodies: an unknown parameter is refused), and answer a page: `items` and
`next_cursor`, which is null on the last page and otherwise goes back as `cursor`.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Any

import msgspec

AMOUNT = Annotated[int, msgspec.Meta(ge=1, le=(1 << 63) - 1, description="credits, minor unit")]
AMOUNT0 = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
CODE_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"
ID = Annotated[
    str,
    msgspec.Meta(
        pattern=ID_PATTERN,
        description="an object id (UUID text of a u128)",
        examples=["0190c3a1-7f3e-7a41-9a6e-1d2c3b4a5f60"],
    ),
]
CODE = Annotated[str, msgspec.Meta(pattern=CODE_PATTERN, examples=["credits"])]
# Text on one line: no control characters (a NUL cannot even be stored in Postgres).
LINE_PATTERN = r"^[^\x00-\x1f\x7f]*$"
# Free text (a reason): tabs and line breaks allowed, no other control characters.
TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
NAME = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=LINE_PATTERN)]
REF = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=200,
        pattern=LINE_PATTERN,
        description="your own id for the object (unique per kind)",
    ),
]
REASON = Annotated[str, msgspec.Meta(max_length=500, pattern=TEXT_PATTERN)]
FEATURE = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=LINE_PATTERN)]
# A spend's dimensions: their text is checked by the service (wallets.service), once for all of
# them; a pattern checked by the decoder per name and value cost more than the rest of a spend's
# decoding. The document says it all the same.
_LINE_SCHEMA = {"pattern": LINE_PATTERN}
DIMENSIONS = Annotated[
    dict[
        Annotated[str, msgspec.Meta(min_length=1, max_length=64, extra_json_schema=_LINE_SCHEMA)],
        Annotated[str, msgspec.Meta(max_length=256, extra_json_schema=_LINE_SCHEMA)],
    ],
    msgspec.Meta(max_length=16, examples=[{"feature": "chat", "model": "gpt-x", "session": "s1"}]),
]
# A business time: RFC 3339 with its UTC offset (a time without one is refused), from
# 1970-01-01T00:00:00Z to 2554-07-21T23:34:33Z, the times TigerBeetle's u64 of nanoseconds
# since the Unix epoch can hold (the service checks the range).
TIME = Annotated[
    dt.datetime,
    msgspec.Meta(
        tz=True,
        description="RFC 3339 with a UTC offset, 1970-01-01T00:00:00Z .. 2554-07-21T23:34:33Z",
        examples=["2027-01-01T00:00:00Z"],
    ),
]
TIMEOUT_S = Annotated[int, msgspec.Meta(ge=1, le=24 * 3600)]
# An exchange rate as a decimal string (the service checks > 0, at most 12 significant digits
# and 10 decimal places; ledger.limits holds the same numbers).
EXCHANGE_RATE_CHARS_MAX = 32
EXCHANGE_RATE = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=EXCHANGE_RATE_CHARS_MAX,
        pattern=r"^[0-9]+(\.[0-9]+)?$",
        description="units of the service's functional currency per unit of the block's "
        "currency at receipt: > 0, at most 12 significant digits and 10 decimal places",
        examples=["1.0842"],
    ),
]
# Pages of a list (the service's ledger.limits holds the same numbers; a test compares them).
PAGE_LIMIT_DEFAULT = 100
PAGE_LIMIT_MAX = 1000
CURSOR_CHARS_MAX = 200
LIMIT = Annotated[
    int, msgspec.Meta(ge=1, le=PAGE_LIMIT_MAX, description="items per page (default 100)")
]
CURSOR = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=CURSOR_CHARS_MAX,
        description="the previous page's next_cursor, as it came (opaque)",
    ),
]


class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class Out(msgspec.Struct, kw_only=True):
    pass


class ListQuery(Strict):
    """What every list takes: a page size and where to go on from."""

    limit: LIMIT = PAGE_LIMIT_DEFAULT
    cursor: CURSOR | None = None


class Page(Out):
    """What every list answers (with `items` of its own type): null `next_cursor` on the last
    page."""

    next_cursor: str | None


# -- catalog ------------------------------------------------------------------------------------


class CreditTypeIn(Strict):
    code: CODE
    name: NAME
    asset_scale: Annotated[int, msgspec.Meta(ge=0, le=18)] = 0


class CreditTypeOut(Out):
    id: int  # the TigerBeetle ledger number
    code: str
    name: str
    asset_scale: int


class CustomerIn(Strict):
    name: NAME
    external_ref: REF | None = None


class CustomerOut(Out):
    id: str
    tenant: int
    name: str
    external_ref: str | None


class CustomerQuery(ListQuery):
    """`external_ref`: the customer your own system knows by that reference (0 or 1 item)."""

    external_ref: REF | None = None


class CustomerPage(Page):
    items: list[CustomerOut]


class ResourceKind(enum.StrEnum):
    SUBSCRIPTION = "subscription"
    TEAM = "team"
    AGENT = "agent"
    USER = "user"
    WORKSPACE = "workspace"
    SESSION = "session"


class ResourceIn(Strict):
    customer_id: ID
    kind: ResourceKind
    parent_id: ID | None = None
    external_ref: REF | None = None


class ResourceOut(Out):
    id: str
    customer_id: str
    kind: str
    parent_id: str | None
    external_ref: str | None


class ResourceQuery(ListQuery):
    """Every filter given applies; `external_ref` is unique per (customer, kind)."""

    customer_id: ID | None = None
    parent_id: ID | None = None
    kind: ResourceKind | None = None
    external_ref: REF | None = None


class ResourcePage(Page):
    items: list[ResourceOut]


class OverdraftMode(enum.StrEnum):
    HARD = "hard"
    SOFT = "soft"
    UNBOUNDED = "unbounded"


class WalletIn(Strict):
    resource_id: ID
    credit_type: CODE
    overdraft_mode: OverdraftMode = OverdraftMode.HARD
    overdraft_limit: AMOUNT0 = 0
    fall_through: bool = False


class WalletOut(Out):
    id: str
    resource_id: str
    credit_type: str
    overdraft_mode: str
    overdraft_limit: int
    fall_through: bool


class WalletPatchIn(Strict):
    """The fields to change (at least one). `overdraft_limit` applies to a soft wallet: give it
    with `overdraft_mode: "soft"` to make a wallet soft, or alone to change a soft one's limit."""

    overdraft_mode: OverdraftMode | None = None
    overdraft_limit: AMOUNT0 | None = None
    fall_through: bool | None = None


class WalletQuery(ListQuery):
    resource_id: ID | None = None
    customer_id: ID | None = None
    credit_type: CODE | None = None


class WalletPage(Page):
    items: list[WalletOut]


class GrantState(enum.StrEnum):
    UPCOMING = "upcoming"  # before its effective_at (or not yet known to the spend path)
    ACTIVE = "active"
    EXPIRED = "expired"
    VOIDED = "voided"


class GrantBalanceOut(Out):
    """A block's figures now. They add up: granted = available + upcoming + held + consumed +
    expired + voided + refunded + repaid + rolled_over."""

    grant_id: str
    state: GrantState
    granted: int
    available: Annotated[int, msgspec.Meta(description="what a spend may draw on now")]
    upcoming: Annotated[int, msgspec.Meta(description="available once effective_at comes")]
    held: Annotated[int, msgspec.Meta(description="held by open reservations")]
    consumed: Annotated[int, msgspec.Meta(description="spent, net of usage refunds")]
    expired: Annotated[
        int,
        msgspec.Meta(
            description="swept to breakage, or left in the block at or past its expires_at "
            "(out of `available` from that instant, swept or not)"
        ),
    ]
    voided: Annotated[
        int,
        msgspec.Meta(description="voided, and whatever came back to the block since its void"),
    ]
    refunded: Annotated[
        int,
        msgspec.Meta(
            description="unused credits refunded in money (not built yet: 0). A usage refund "
            "gives credits back to the block: it lowers `consumed`"
        ),
    ]
    repaid: Annotated[int, msgspec.Meta(description="paid the wallet's overdraft back")]
    rolled_over: Annotated[
        int,
        msgspec.Meta(description="moved into the block's rollover block at its expiry"),
    ] = 0


class WalletBalanceOut(Out):
    """A wallet's figures now: what a spend would find at this instant. `available`: credits
    in the wallet's own blocks that a spend may draw on now (effective, not expired, not
    voided, not held); `check` adds the parent's (when the wallet falls through) and the
    overdraft's headroom."""

    wallet: WalletOut
    available: int
    held: Annotated[int, msgspec.Meta(description="held on the blocks by open reservations")]
    upcoming: Annotated[int, msgspec.Meta(description="in blocks not effective yet")]
    consumed: Annotated[
        int,
        msgspec.Meta(
            description="paid for by the blocks and by the overdraft (settled draws), net of "
            "usage refunds"
        ),
    ]
    expired: int
    voided: int
    overdraft_used: Annotated[
        int,
        msgspec.Meta(
            description="drawn on the overdraft and not repaid, held draws included; past the "
            "limit only by a settle's overage collected under the `overdraft` policy"
        ),
    ]
    overdraft_held: Annotated[
        int, msgspec.Meta(description="the part of overdraft_used open reservations hold")
    ]
    overdraft_limit: Annotated[int | None, msgspec.Meta(description="null: unbounded")]
    overdraft_headroom: Annotated[
        int | None,
        msgspec.Meta(description="what a spend may still draw on the overdraft; null: unbounded"),
    ]
    grants: list[GrantBalanceOut]


class EntryType(enum.StrEnum):
    GRANT = "grant"
    EFFECTIVE = "effective"
    DEBIT = "debit"
    RESERVE = "reserve"
    SETTLE = "settle"
    RELEASE = "release"
    RESERVATION_EXPIRED = "reservation_expired"
    EXPIRE = "expire"
    VOID = "void"
    REFUND = "refund"
    REFUND_OUT = "refund_out"
    OVERDRAFT_DRAW = "overdraft_draw"
    OVERDRAFT_REPAY = "overdraft_repay"
    OVERDRAFT_LIMIT = "overdraft_limit"
    CORRECTION = "correction"
    ROLLOVER = "rollover"


class AccountKind(enum.StrEnum):
    GRANT = "grant"
    OVERDRAFT = "overdraft"


class EntryOut(Out):
    """One movement of a wallet, and the wallet's figures just after it: after the last entry
    they are what GET /v1/wallets/{id} reports (available, held, overdraft_used)."""

    at: Annotated[
        str,
        msgspec.Meta(
            description="RFC 3339, UTC, to the nanosecond: when the engine applied it, or when "
            "it came to pass (effective, expire, reservation_expired); entries are in this order",
            examples=["2025-01-01T00:00:00.000000042Z"],
        ),
    ]
    type: EntryType
    account_id: Annotated[str, msgspec.Meta(description="the block, or overdraft, that moved")]
    account_kind: AccountKind
    amount: Annotated[
        int, msgspec.Meta(description="signed: + into the wallet (or back to it), - out of it")
    ]
    operation_id: Annotated[
        str,
        msgspec.Meta(
            description="the operation (for a refund, the refunded debit; for effective and "
            "expire, the block)"
        ),
    ]
    available_after: Annotated[
        int,
        msgspec.Meta(
            description="the wallet's `available` just after this entry, as GET "
            "/v1/wallets/{id} reports it: after the last entry, the wallet's `available` now"
        ),
    ]
    held_after: Annotated[
        int, msgspec.Meta(description="the wallet's `held` just after this entry, likewise")
    ]
    overdraft_used_after: Annotated[
        int,
        msgspec.Meta(description="the wallet's `overdraft_used` just after this entry, likewise"),
    ]
    dimensions: Annotated[
        dict[str, str],
        msgspec.Meta(
            description="the dimensions of the spend it belongs to, as it was sent (a settle, "
            "release or reservation_expired: its reservation's; a refund: its debit's); {} "
            "for none and for entries that are no spend's"
        ),
    ] = msgspec.field(default_factory=dict)


class EntriesOut(Out):
    entries: list[EntryOut]
    next_cursor: Annotated[
        str | None, msgspec.Meta(description="opaque: pass it back as `cursor`; null: the end")
    ]


# -- grants ---------------------------------------------------------------------------------------


class Category(enum.StrEnum):
    PAID = "paid"
    PROMOTIONAL = "promotional"


class GrantSource(enum.StrEnum):
    ADMIN = "admin"
    PURCHASE = "purchase"
    PLAN_ALLOCATION = "plan_allocation"
    ROLLOVER = "rollover"


class RolloverIn(Strict):
    """What of a block rolls over at its expiry: carried = min(max_credits, max(min_credits,
    remaining)) credits, into new blocks (source `rollover`) that expire at `expires_at` (after
    the block's own expires_at). Up to what was left moves out of the block, at its cost basis
    per credit; what min_credits adds beyond that is a promotional block."""

    max_credits: int
    expires_at: TIME
    min_credits: int = 0


class GrantIn(Strict):
    wallet_id: ID
    amount: AMOUNT
    category: Category
    consideration_minor: AMOUNT0 = 0
    currency: Annotated[str, msgspec.Meta(pattern=CURRENCY_PATTERN)] | None = None
    exchange_rate: EXCHANGE_RATE | None = None
    priority: Annotated[int, msgspec.Meta(ge=-1000, le=1000)] = 0
    effective_at: TIME | None = None
    expires_at: TIME | None = None
    source: GrantSource = GrantSource.ADMIN
    reason: REASON | None = None
    external_ref: REF | None = None
    rollover: RolloverIn | None = None


class GrantOut(Out):
    id: str
    wallet_id: str
    amount: int
    repaid_overdraft: int


class RolloverState(enum.StrEnum):
    DUE = "due"  # not decided yet (the block has not expired, or the pass has not run)
    PENDING = "pending"  # its new blocks are written, the ledger not yet moved
    DONE = "done"
    REFUSED = "refused"  # the block had less left than decided (voided meanwhile): nothing moved


class RolloverOut(Out):
    max_credits: int
    min_credits: int
    expires_at: dt.datetime
    state: RolloverState


class GrantBlockOut(Out):
    """A credit block as it was issued, and its state as a spend sees it now (upcoming before
    its effective_at, expired from its expires_at, voided once voided; a grant whose issue an
    operator abandoned reads voided). No balances: see GrantDetailOut."""

    id: str
    wallet_id: str
    credit_type: str
    amount: int
    category: Category
    priority: int
    effective_at: dt.datetime
    expires_at: dt.datetime | None
    consideration_minor: int
    currency: str | None
    # Units of the service's functional currency per unit of `currency` at receipt: "1" in the
    # functional currency; null when not given for another currency, and for promotional blocks.
    exchange_rate: str | None
    source: GrantSource
    reason: str | None
    external_ref: str | None
    state: GrantState
    actor: str
    created_at: dt.datetime
    # A rollover block's source block; the block's rollover policy and where it stands.
    source_grant_id: str | None
    rollover: RolloverOut | None


class GrantDetailOut(GrantBlockOut):
    """A block as issued, with its figures from the ledger: the fields of GrantBalanceOut, as
    GET /v1/grants/{id} has always answered them (`grant_id` equals `id`; `state` is the
    ledger's, as in GrantBalanceOut)."""

    grant_id: str
    granted: int
    available: int
    upcoming: int
    held: int
    consumed: int
    expired: int
    voided: int
    refunded: int
    repaid: int
    rolled_over: int = 0


class GrantQuery(ListQuery):
    """`state`: as a spend sees the block now; `expires_before`: blocks whose expiry is
    strictly before that time (never-expiring ones are not)."""

    wallet_id: ID | None = None
    state: GrantState | None = None
    category: Category | None = None
    expires_before: TIME | None = None


class GrantPage(Page):
    items: list[GrantBlockOut]


class VoidIn(Strict):
    """A void of a grant: of all that is left of it (`amount` left out), or of exactly `amount`
    of the credits it has available now (the grant stays active)."""

    amount: AMOUNT | None = None
    reason: REASON | None = None


class VoidOut(Out):
    grant_id: str
    voided: int


class GrantExpiryIn(Strict):
    """A grant's new expiry: `expires_at` (required; null: it never expires), after now and
    after its effective_at."""

    expires_at: TIME | None
    reason: REASON | None = None


class GrantExpiryOut(Out):
    grant_id: str
    expires_at: dt.datetime | None  # the new expiry (null: never)
    previous_expires_at: dt.datetime | None


class GrantRefundIn(Strict):
    """A refund in money of a paid block's unused credits: `amount` credits (all that is
    available now when left out) and the money given back, `refund_minor` (required), in
    minor units of the block's currency."""

    refund_minor: AMOUNT0
    amount: AMOUNT | None = None
    reason: REASON | None = None


class GrantRefundOut(Out):
    id: str  # the refund's operation id: its transfer's id and its refund_out entry's
    grant_id: str
    refunded: int  # credits taken out of the block
    refund_minor: int
    currency: str


# -- spending -------------------------------------------------------------------------------------


class Usage(Strict):
    feature: FEATURE
    quantity: AMOUNT


class SpendIn(Strict):
    """Names a resource (its spend path follows) or a wallet, and an amount or a usage."""

    credit_type: CODE
    resource_id: ID | None = None
    wallet_id: ID | None = None
    amount: AMOUNT | None = None
    usage: Usage | None = None
    dimensions: DIMENSIONS | None = None


class ReserveIn(SpendIn, kw_only=True):
    timeout_s: TIMEOUT_S = 3600


# When the service was delivered: the accounting date of a debit or a settle (its legs'
# business effective time, the instant its spend path and price are taken at), not the time
# the ledger recorded it. At most 5 minutes after the service's now, at most 35 days before it
# (422 occurred_at_out_of_range); absent, the time of recording.
OCCURRED_AT = Annotated[
    dt.datetime,
    msgspec.Meta(
        tz=True,
        description="RFC 3339 with a UTC offset: when the service was delivered, the "
        "accounting date of the spend; at most 5 minutes after the service's now and at most "
        "35 days before it (422 occurred_at_out_of_range). Absent: the time of recording.",
        examples=["2027-01-31T23:59:00Z"],
    ),
]


class DebitIn(SpendIn, kw_only=True):
    occurred_at: OCCURRED_AT | None = None


class FundingOut(Out):
    account_id: str
    kind: str
    amount: int


class DebitOut(Out):
    id: str
    amount: int
    funded_by: list[FundingOut]


class BatchDebitIn(DebitIn, kw_only=True):
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class BatchIn(Strict):
    debits: Annotated[list[BatchDebitIn], msgspec.Meta(min_length=1, max_length=1000)]


class BatchErrorOut(Out):
    """Why one debit of a batch was refused: the code and detail its own call would answer."""

    code: str
    detail: str | None = None


class BatchResultOut(Out):
    idempotency_key: str
    status: int
    debit: DebitOut | None = None
    error: BatchErrorOut | None = None
    # The debit's key had been used before: this is its first outcome, answered again (as
    # `Idempotency-Hit: true` says of a single debit).
    replayed: bool = False


class BatchOut(Out):
    results: list[BatchResultOut]


class RefundIn(Strict):
    amount: AMOUNT
    reason: REASON | None = None


class RefundOut(Out):
    id: str
    debit_id: str
    amount: int
    restored: list[FundingOut]


class ReservationOut(Out):
    id: str
    amount: int
    timeout_s: int
    funded_by: list[FundingOut]
    status: str = "held"


class ReservationStatus(enum.StrEnum):
    HELD = "held"
    SETTLED = "settled"
    RELEASED = "released"
    EXPIRED = "expired"


class ReservationQuery(ListQuery, kw_only=True):
    """A wallet's reservations, oldest first, read from the ledger. A page may hold fewer than
    `limit` items (a status filter examines a bounded number of reservations per page): go on
    while `next_cursor` is not null."""

    wallet_id: ID
    status: ReservationStatus | None = None


class ReservationPage(Page):
    items: list[ReservationOut]


class Overage(enum.StrEnum):
    """What a settle does with what it asks beyond the reservation (the overage): `reject`
    collects all of it from the wallet's spend path, or refuses the whole settle (402
    `insufficient_credits`, the reservation still held); `cap` (the default) collects what the
    spend path has and reports the rest as uncollected; `overdraft` collects all of it, the
    wallet owing what its blocks and overdraft headroom could not give."""

    REJECT = "reject"
    CAP = "cap"
    OVERDRAFT = "overdraft"


class SettleIn(Strict, omit_defaults=True):
    # Fields at their defaults are not sent: a settle without occurred_at is the body a
    # server from before occurred_at accepts.
    amount: AMOUNT0 | None = None
    usage: Usage | None = None
    overage: Overage = Overage.CAP
    occurred_at: OCCURRED_AT | None = None


class ClockAdvanceIn(Strict):
    """Where a test clock goes: to an instant (`to`), or `seconds` on from where it stands;
    exactly one. Never back."""

    to: TIME | None = None
    seconds: Annotated[int, msgspec.Meta(ge=0, le=400 * 86_400)] | None = None


class ClockOut(Out):
    now: Annotated[
        str,
        msgspec.Meta(
            description="RFC 3339, UTC, to the nanosecond: the instant the test clock stands at",
            examples=["2025-01-15T00:00:00.000000000Z"],
        ),
    ]
    # Blocks whose expiry the advance passed, swept to breakage by it (0 on a read).
    swept_blocks: int = 0


class SettleOut(Out):
    reservation_id: str
    id: str
    requested: int
    collected: int
    released: int
    overage: int
    overage_collected: int
    overage_uncollected: int
    policy: str
    fallback_debit: bool


class ReleaseOut(Out):
    reservation_id: str
    id: str
    released: int


class BudgetHeadroomOut(Out):
    budget_id: str
    resource_id: str
    cap: int
    used: int
    headroom: int
    blocking: bool


class CheckOut(Out):
    allowed: bool
    reason: str | None
    amount: int
    available: int
    reserved: int
    overdraft_headroom: int | None
    budgets: list[BudgetHeadroomOut]
    would_fund: list[FundingOut]


# -- budgets and prices ---------------------------------------------------------------------------


class Period(enum.StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    LIFETIME = "lifetime"


class BudgetIn(Strict):
    resource_id: ID
    credit_type: CODE
    period: Period
    cap: AMOUNT


class BudgetOut(Out):
    id: str
    resource_id: str
    credit_type: str
    period: str
    cap: int
    used: int | None = None
    headroom: int | None = None
    active: bool = True  # false once removed: it no longer limits any spend


class BudgetPatchIn(Strict):
    cap: AMOUNT


class BudgetQuery(ListQuery):
    """`active`: true (the default) lists budgets in force, false removed ones."""

    resource_id: ID | None = None
    credit_type: CODE | None = None
    active: bool = True


class BudgetPage(Page):
    items: list[BudgetOut]


class PriceIn(Strict):
    """A new price of a feature from `effective_at` (default now; never in the past): the
    price before it stays in force until then, and stays readable."""

    feature: FEATURE
    credit_type: CODE
    credits_per_unit: AMOUNT0
    effective_at: TIME | None = None


class PriceOut(Out):
    id: str
    feature: str
    credit_type: str
    credits_per_unit: int
    effective_at: dt.datetime
    created_at: dt.datetime


class PriceQuery(ListQuery):
    """Prices in the order they take effect: with `feature` and `credit_type`, that price's
    history."""

    feature: FEATURE | None = None
    credit_type: CODE | None = None


class PricePage(Page):
    items: list[PriceOut]


# -- plans and subscriptions ----------------------------------------------------------------------


class PlanPeriod(enum.StrEnum):
    """The unit of a plan's allocation period; months and years keep the subscription's day
    (the last day of a shorter month)."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


PERIOD_COUNT = Annotated[int, msgspec.Meta(ge=1, le=1000)]


class PlanRolloverIn(Strict):
    """At the allocation's expiry, min(max_credits, max(min_credits, remaining)) roll over into
    a new block that expires at the end of the next period; the rest expires."""

    max_credits: AMOUNT0
    min_credits: AMOUNT0 = 0


class PlanAllocationIn(Strict):
    """`amount` credits every `period_count` `period`s, expiring at the end of `expiry_periods`
    periods (1: its own period's end). A paid allocation has a `currency`, and its
    `consideration_minor` is what one allocation costs (its cost basis)."""

    credit_type: CODE
    amount: AMOUNT
    period: PlanPeriod
    category: Category
    period_count: PERIOD_COUNT = 1
    consideration_minor: AMOUNT0 = 0
    currency: Annotated[str, msgspec.Meta(pattern=CURRENCY_PATTERN)] | None = None
    priority: Annotated[int, msgspec.Meta(ge=-1000, le=1000)] = 0
    expiry_periods: PERIOD_COUNT = 1
    rollover: PlanRolloverIn | None = None


class PlanIn(Strict):
    """A plan: one allocation per credit type. `prorate`: a change of plan to this one in the
    middle of a period grants or voids the difference times the fraction of the period left
    (else the whole difference)."""

    code: CODE
    name: NAME
    allocations: Annotated[list[PlanAllocationIn], msgspec.Meta(min_length=1, max_length=16)]
    prorate: bool = False


class PlanRolloverOut(Out):
    min_credits: int
    max_credits: int


class PlanAllocationOut(Out):
    id: str
    credit_type: str
    amount: int
    period: PlanPeriod
    period_count: int
    category: Category
    consideration_minor: int
    currency: str | None
    priority: int
    expiry_periods: int
    rollover: PlanRolloverOut | None


class PlanOut(Out):
    id: str
    code: str
    name: str
    prorate: bool
    allocations: list[PlanAllocationOut]
    created_at: dt.datetime


class PlanQuery(ListQuery):
    pass


class PlanPage(Page):
    items: list[PlanOut]


class SubscriptionState(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    CANCELLED = "cancelled"


class SubscriptionIn(Strict):
    """`start` (default now) anchors every period: a start on the 31st renews on the last day
    of shorter months."""

    resource_id: ID
    plan_id: ID
    start: TIME | None = None


class ChangePlanIn(Strict):
    plan_id: ID


class AllocationOut(Out):
    """One allocation of a subscription: `kind` period (the period's own, seq 0) or change
    (the adjustment of the seq-th change of plan: `amount` granted, or `voided` from the
    block `void_grant_id`). `state` pending until its block is issued."""

    id: str
    credit_type: str
    plan_allocation_id: str
    kind: str
    period_index: int
    seq: int
    period_start: dt.datetime
    period_end: dt.datetime
    effective_at: dt.datetime
    expires_at: dt.datetime
    amount: int
    grant_id: str | None
    voided: int
    void_grant_id: str | None
    state: str


class SubscriptionOut(Out):
    id: str
    resource_id: str
    plan_id: str
    state: SubscriptionState
    start: dt.datetime
    created_at: dt.datetime
    paused_at: dt.datetime | None
    cancelled_at: dt.datetime | None
    # The start of the next period to allocate (null: none, paused or cancelled).
    next_allocation_at: dt.datetime | None
    # The latest allocations (at most 100), oldest first.
    allocations: list[AllocationOut] = []


class SubscriptionQuery(ListQuery):
    """Every filter given: the subscriptions of `resource_id`, of `plan_id`, in `state`."""

    resource_id: ID | None = None
    plan_id: ID | None = None
    state: SubscriptionState | None = None


class SubscriptionPage(Page):
    """Subscriptions without their allocations (`allocations` is empty: GET one for them)."""

    items: list[SubscriptionOut]


class PriceAtQuery(Strict):
    """The price in force at `at` (default now)."""

    feature: FEATURE
    credit_type: CODE
    at: TIME | None = None


# -- usage ----------------------------------------------------------------------------------------


class UsageBucket(enum.StrEnum):
    """Calendar buckets in UTC; a week starts on Monday 00:00, a month on the 1st."""

    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


USAGE_GROUP_BY = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=1024,
        pattern=LINE_PATTERN,
        description="fields to group by, comma-separated, in the order of the CSV's columns: "
        "resource, wallet, customer, credit_type, and any dimension's name (`dimension:NAME` "
        "for a dimension named like one of those)",
        examples=["resource,feature,model"],
    ),
]
USAGE_DIMENSION_PATTERN = r"^[^:\x00-\x1f\x7f]{1,64}:[^\x00-\x1f\x7f]{0,256}$"
USAGE_DIMENSION = Annotated[
    str,
    msgspec.Meta(
        max_length=64 + 1 + 256,
        pattern=USAGE_DIMENSION_PATTERN,
        description="NAME:VALUE, split at the first colon (a name holding a colon cannot be "
        "filtered on)",
        examples=["feature:chat"],
    ),
]


class UsageQuery(ListQuery, kw_only=True):
    """Usage over [`from`, `to`), both on whole UTC hours, in `bucket`s (at most 1,000 of
    them), with every filter given: `resource_id` is the resource's whole subtree; `dimension`
    (repeatable) keeps the spends whose dimension NAME is VALUE (any of the values given for
    one name, for every name given)."""

    from_: TIME = msgspec.field(name="from")
    to: TIME
    bucket: UsageBucket = UsageBucket.DAY
    group_by: USAGE_GROUP_BY | None = None
    customer_id: ID | None = None
    resource_id: ID | None = None
    wallet_id: ID | None = None
    credit_type: CODE | None = None
    dimension: Annotated[list[USAGE_DIMENSION], msgspec.Meta(max_length=16)] | None = None


_INTEGER_TEXT = r"^-?[0-9]+$"
_DECIMAL_TEXT = r"^-?[0-9]+(\.[0-9]+)?$"


class UsageRowOut(Out):
    """What was consumed in one bucket by one group, in one credit type and one currency. A
    builtin field not grouped by is null; `dimensions` has a value for each dimension grouped
    by (null where the spends carried none)."""

    bucket_start: Annotated[
        dt.datetime, msgspec.Meta(description="the bucket's start (UTC); the first and last "
                                  "buckets count only the part inside the range")
    ]  # fmt: skip
    customer_id: str | None
    resource_id: str | None
    wallet_id: str | None
    credit_type: str
    dimensions: dict[str, str | None]
    currency: Annotated[
        str | None,
        msgspec.Meta(description="the blocks' currency; null: credits without a cost basis "
                     "(promotional blocks, overdraft)"),
    ]  # fmt: skip
    credits: Annotated[
        str,
        msgspec.Meta(
            pattern=_INTEGER_TEXT,
            description="credits consumed, in the credit type's minor unit, as an integer in "
            "a string (sums can pass 2^63); negative where refunds exceeded consumption",
            examples=["1500"],
        ),
    ]
    value_minor: Annotated[
        str,
        msgspec.Meta(
            pattern=_DECIMAL_TEXT,
            description="their value at each block's cost basis, in minor units of "
            "`currency`, as exact decimal text (a slice of a block carries a fraction of a cent)",
            examples=["1500", "33.333333333"],
        ),
    ]
    entries: Annotated[int, msgspec.Meta(description="ledger entries added up in this row")]


class UsageProjectionOut(Out):
    """Where the projection stood when the answer was read: it includes every transfer up to
    `watermark_ts` and nothing after."""

    watermark_ts: Annotated[
        int,
        msgspec.Meta(
            description="the engine timestamp (ns) of the last transfer included; 0: none yet"
        ),
    ]
    lag_s: Annotated[
        float | None,
        msgspec.Meta(
            description="how far behind the engine the answer may be, in seconds (null: "
            "nothing projected yet)"
        ),
    ]


class UsagePage(Page):
    items: list[UsageRowOut]
    projection: UsageProjectionOut


# -- keys -----------------------------------------------------------------------------------------


class Scope(enum.StrEnum):
    RUNTIME = "runtime"
    ADMIN = "admin"
    FINANCE = "finance"


class Problem(Out):
    """RFC 9457 problem details, with the stable `code`."""

    type: str
    title: str
    status: int
    code: str
    detail: str | None = None


# -- finance: reports, periods, breakage policies ------------------------------------------------

MONTH_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])$"
MONTH = Annotated[
    str, msgspec.Meta(pattern=MONTH_PATTERN, description="a calendar month in UTC, YYYY-MM")
]


class ReportName(enum.StrEnum):
    """The finance reports (finance/README.md lists their columns)."""

    JOURNAL_LINES = "journal-lines"
    SUMMARY_JOURNAL = "summary-journal"
    ROLLFORWARD = "rollforward"
    REVENUE = "revenue"
    AGING = "aging"
    BLOCKS = "blocks"
    PROMOTIONAL_MEMO = "promotional-memo"
    RECONCILIATION = "reconciliation"


class ReportLayout(enum.StrEnum):
    """The summary journal's columns: generic, or NetSuite's or QuickBooks Online's journal
    entry import; the other reports are generic only."""

    GENERIC = "generic"
    NETSUITE = "netsuite"
    QBO = "qbo"


class ReportFormat(enum.StrEnum):
    JSON = "json"
    CSV = "csv"


class ReportQuery(Strict, kw_only=True):
    """One report of one period, optionally of one customer."""

    period: MONTH
    format: ReportFormat = ReportFormat.JSON
    layout: ReportLayout = ReportLayout.GENERIC
    customer_id: ID | None = None


class ReportControlOut(Out):
    """The report's control: its rows, its totals (per currency; per credit type for credits),
    and the SHA-256 (hex) of the CSV form of the same report."""

    rows: int
    totals: dict[str, dict[str, str]]
    sha256: str


class ReportOut(Out):
    """A report as rows of text in the order of `columns` (money in major units with the
    currency's fixed decimals, times in ISO-8601 UTC, an empty string for none).
    `provisional`: the period is open, its rows may still change."""

    report: ReportName
    period: MONTH
    layout: ReportLayout
    customer_id: str | None
    provisional: bool
    columns: list[str]
    rows: list[list[str]]
    control: ReportControlOut


class PeriodState(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    LOCKED = "locked"


class PeriodOut(Out):
    """A month: open (no close yet), closed (with the checks it passed) or locked."""

    period: MONTH
    state: PeriodState
    closed_at: dt.datetime | None = None
    closed_by: str | None = None
    locked_at: dt.datetime | None = None
    locked_by: str | None = None
    checks: dict[str, Any] | None = None


class PeriodList(Out):
    items: list[PeriodOut]


class BreakageMethod(enum.StrEnum):
    REMOTE = "remote"
    PROPORTIONAL = "proportional"


BREAKAGE_RATE = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^0(\.[0-9]{1,10})?$",
        description="the expected unused share of a product's paid credits, a decimal string "
        "in [0, 1) (0 for the remote method)",
    ),
]


class BreakagePolicyIn(Strict, kw_only=True):
    """How a product's paid blocks that take effect from `effective_from` recognize breakage:
    `remote` (at expiry, the default without a policy) or `proportional` at `rate` as
    credits are used."""

    credit_type: CODE
    method: BreakageMethod
    rate: BREAKAGE_RATE = "0"
    effective_from: TIME


class BreakagePolicyOut(Out):
    credit_type: str
    method: BreakageMethod
    rate: str
    effective_from: dt.datetime


# -- alerts and automatic top-ups -------------------------------------------------------------

PERCENT = Annotated[int, msgspec.Meta(ge=1, le=100, description="a percent of the cap")]
PERCENT_OF_ALLOCATION = Annotated[
    int,
    msgspec.Meta(
        ge=1, le=1000, description="a percent of the wallet's last plan allocation (1..1000)"
    ),
]
CURRENCY = Annotated[str, msgspec.Meta(pattern=CURRENCY_PATTERN, examples=["USD"])]


class WalletThresholdIn(Strict):
    """A wallet's threshold: `balance.low` fires once each time its available credits fall
    below `amount`, or below `percent_of_allocation` percent of its last plan allocation (give
    one of the two)."""

    amount: AMOUNT | None = None
    percent_of_allocation: PERCENT_OF_ALLOCATION | None = None


class BudgetThresholdIn(Strict):
    """A budget's threshold: `budget.threshold_reached` fires once per period when its usage
    reaches `percent` of the cap."""

    percent: PERCENT


class ThresholdOut(Out):
    id: str
    created_at: dt.datetime
    wallet_id: str | None = None
    budget_id: str | None = None
    amount: int | None = None
    percent_of_allocation: int | None = None
    percent: int | None = None


class ThresholdList(Out):
    items: list[ThresholdOut]


class TopUpRuleIn(Strict):
    """When the wallet's available credits fall below `threshold`, issue a paid grant of
    `amount` credits for `consideration_minor` of `currency` (once per crossing, at most
    `daily_max` a UTC day), and send `top_up.issued`."""

    threshold: AMOUNT
    amount: AMOUNT
    consideration_minor: AMOUNT0
    currency: CURRENCY
    priority: Annotated[int, msgspec.Meta(ge=-1000, le=1000)] = 0
    expires_in_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None
    daily_max: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1


class TopUpRuleOut(Out):
    wallet_id: str
    threshold: int
    amount: int
    consideration_minor: int
    currency: str
    priority: int
    daily_max: int
    enabled: bool
    updated_at: dt.datetime
    expires_in_days: int | None = None


class TopUpOut(Out):
    """One crossing of a wallet's rule: `pending` (its grant being issued), `issued` (with
    `grant_id`), `capped` (the day's maximum was reached: no grant), or `refused` (the grant was
    refused, for good: `refusal` says why)."""

    id: str
    wallet_id: str
    crossing: int
    state: str
    threshold: int
    amount: int
    consideration_minor: int
    currency: str
    crossed_at: dt.datetime
    grant_id: str | None = None
    expires_at: dt.datetime | None = None
    issued_at: dt.datetime | None = None
    refusal: str | None = None


class TopUpPage(Page):
    items: list[TopUpOut]


# -- webhooks and events --------------------------------------------------------------------------

# An event type (`balance.low`, ...): the service refuses one it does not send with 422
# `unknown_event_type` (its list: ledger/README.md, "Events").
EVENT_TYPE = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=64,
        pattern=r"^[a-z][a-z_]*\.[a-z][a-z_]*$",
        examples=["balance.low"],
    ),
]
# An absolute http(s) URL (the service checks the scheme and host: 422 `webhook_url_invalid`).
WEBHOOK_URL = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=2048, pattern=LINE_PATTERN, examples=["https://example.com/hooks"]
    ),
]


class WebhookEndpointIn(Strict):
    """An endpoint events are POSTed to, signed (Standard Webhooks). `event_types` empty: every
    type; `customer_id`: only that customer's events."""

    url: WEBHOOK_URL
    description: Annotated[str, msgspec.Meta(max_length=500, pattern=LINE_PATTERN)] = ""
    event_types: Annotated[list[EVENT_TYPE], msgspec.Meta(max_length=32)] = msgspec.field(
        default_factory=list
    )
    customer_id: ID | None = None


class WebhookEndpointOut(Out):
    id: str
    url: str
    description: str
    event_types: list[str]
    customer_id: str | None
    enabled: bool
    created_at: dt.datetime
    updated_at: dt.datetime
    # Until when the secret a rotation replaced still signs (a second signature); null: none.
    previous_secret_until: dt.datetime | None = None


class WebhookEndpointSecretOut(WebhookEndpointOut, kw_only=True):
    """An endpoint with its signing secret (`whsec_...`): answered when it is made or rotated,
    never again: keep it."""

    secret: str


class WebhookEndpointQuery(ListQuery):
    enabled: bool | None = None
    customer_id: ID | None = None


class WebhookEndpointPage(Page):
    items: list[WebhookEndpointOut]


class WebhookReplayIn(Strict, kw_only=True):
    """Deliver again, as new deliveries: one event (`event_id`), or every event the endpoint
    wants that occurred in [`from`, `to`) (at most 31 days and 1000 events)."""

    event_id: ID | None = None
    from_: TIME | None = msgspec.field(default=None, name="from")
    to: TIME | None = None


class WebhookReplayOut(Out):
    endpoint_id: str
    deliveries: int
    event_ids: list[str]


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookAttemptOut(Out):
    attempt: int
    at: dt.datetime
    status_code: int | None  # null: no answer (`error` says why)
    duration_ms: int
    error: str | None
    response_excerpt: str | None


class WebhookDeliveryOut(Out):
    id: str
    event_id: str
    endpoint_id: str
    replay: int  # 0: the first delivery; n: the n-th replay
    state: DeliveryState
    attempts: int
    next_attempt_at: dt.datetime | None
    last_status: int | None
    last_error: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    attempt_log: list[WebhookAttemptOut]


class WebhookDeliveryQuery(ListQuery):
    state: DeliveryState | None = None
    event_id: ID | None = None


class WebhookDeliveryPage(Page):
    items: list[WebhookDeliveryOut]


class EventOut(Out):
    """An event of the outbox: the body a webhook delivers, as it is delivered."""

    id: str
    type: str
    created_at: dt.datetime
    occurred_at: dt.datetime
    customer_id: str | None
    wallet_id: str | None
    data: dict[str, Any]


class EventQuery(ListQuery, kw_only=True):
    """Events, oldest first: of a `type`, a wallet, a customer, that occurred in [from, to)."""

    type: EVENT_TYPE | None = None
    wallet_id: ID | None = None
    customer_id: ID | None = None
    from_: TIME | None = msgspec.field(default=None, name="from")
    to: TIME | None = None


class EventPage(Page):
    items: list[EventOut]
