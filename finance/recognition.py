"""Revenue recognition per credit block: pure arithmetic, no I/O (finance/README.md).

Invariants:
- Cumulative rounding per block (ACCOUNTING.md "Rounding"): with consideration C and G credits,
  `value(D) = round_half_away_from_zero(C * D / G)` in minor units, where D is the credits that
  have left the block by any route (consumption, expiry, void, refund), net of credits restored
  to it. Every movement posts `value(D2) - value(D1)`, so whatever the number and size of the
  slices, the 2100 lines of a block that is used up sum to C exactly.
- Proportional breakage (a policy per product) recognizes, as credits are used, the breakage
  expected of the block: the accrual stands at `T = min(round(C * r / (1 - r) * U / G),
  C - value(D))` (U: credits used, r: the policy's rate), never below 0. Every movement posts
  the change of T too, and T is 0 once nothing is left, so the block still sums to C.
- Every draft balances (debits = credits) in the block's currency and, when its rate of receipt
  is known, in the functional currency: the functional amounts are the same cumulative rule
  applied to C at that rate, never remeasured.
- Promotional blocks post nothing: their movements are memo rows only (ACCOUNTING.md).
"""

from __future__ import annotations

import enum
from fractions import Fraction
from typing import Final

import msgspec

# The default chart of accounts (ACCOUNTING.md); exports map these to an ERP's codes.
CASH: Final = "1010"
RECEIVABLE: Final = "1100"
CONTRACT_LIABILITY: Final = "2100"
REVENUE_USAGE: Final = "4000"
REVENUE_BREAKAGE: Final = "4050"
CONTRA_REVENUE: Final = "4900"
# Where a rollover's value passes from the source block's liability to its rollover block's:
# each block's journal balances through it, and the two journals of a rollover net it to 0.
ROLLOVER_CLEARING: Final = "2190"
LIABILITY_TO_USAGE: Final = (CONTRACT_LIABILITY, REVENUE_USAGE)
LIABILITY_TO_BREAKAGE: Final = (CONTRACT_LIABILITY, REVENUE_BREAKAGE)
ACCOUNTS: Final = {
    CASH: "Cash clearing",
    RECEIVABLE: "Accounts receivable",
    CONTRACT_LIABILITY: "Contract liability, prepaid credits",
    REVENUE_USAGE: "Revenue, credit usage",
    REVENUE_BREAKAGE: "Revenue, breakage",
    CONTRA_REVENUE: "Contra revenue, refunds",
    ROLLOVER_CLEARING: "Contract liability, rollover clearing",
}


class Route(enum.StrEnum):
    """How credits moved on a block, as finance sees it."""

    GRANT = "grant"  # the block's funding
    USAGE = "usage"  # consumed: a debit, a settle, an overdraft repaid from the block
    RESTORE = "restore"  # consumed credits given back (a usage refund, a correction)
    EXPIRE = "expire"
    VOID = "void"
    REFUND = "refund"  # unused credits refunded in money
    ROLLOVER_OUT = "rollover_out"  # moved to the block's rollover block at its expiry
    ROLLOVER_IN = "rollover_in"  # a rollover block's funding: its consideration came with it


class Terms(msgspec.Struct, frozen=True):
    """What a block was bought for: fixed at its grant, never remeasured."""

    credits: int  # G
    consideration_minor: int  # C, minor units of `currency`
    paid: bool
    # C in minor units of the functional currency at the rate of receipt (None: no rate known).
    functional_consideration: Fraction | None = None
    breakage_rate: Fraction = Fraction(0)  # 0: the remote method (breakage at expiry)

    def __post_init__(self) -> None:
        assert self.credits > 0 and self.consideration_minor >= 0
        assert 0 <= self.breakage_rate < 1


class State(msgspec.Struct, frozen=True):
    """Where a block's recognition stands."""

    credits_out: int = 0  # D: credits that left the block, net of restored ones
    credits_used: int = 0  # U: credits consumed, net of restored ones
    value_out_minor: int = 0  # value(D)
    accrued_minor: int = 0  # T: proportional breakage recognized ahead of expiry
    functional_out_minor: int | None = None
    functional_accrued_minor: int | None = None


class Line(msgspec.Struct, frozen=True):
    account: str
    debit_minor: int
    credit_minor: int
    functional_debit_minor: int | None
    functional_credit_minor: int | None


class Draft(msgspec.Struct, frozen=True):
    """A journal to post: its kind, the credits behind it and its balanced lines."""

    kind: str  # purchase | usage | breakage | refund | correction | rollover
    credits: int
    lines: tuple[Line, ...]
    reason: str


def opening(terms: Terms) -> State:
    """A block's state at its grant: nothing has left it."""
    known = terms.functional_consideration is not None
    return State(
        functional_out_minor=0 if known else None, functional_accrued_minor=0 if known else None
    )


def round_half_away(value: Fraction) -> int:
    """The integer nearest `value`, halves away from zero (ACCOUNTING.md's rounding rule)."""
    if value >= 0:
        return int(value + Fraction(1, 2))  # int() truncates, i.e. floors a nonnegative value
    return -int(-value + Fraction(1, 2))


def value_of(consideration: Fraction | int, credits_out: int, credits: int) -> int:
    """value(D): the consideration of the first D of G credits, in minor units."""
    assert 0 <= credits_out <= credits, (credits_out, credits)
    if isinstance(consideration, int) or consideration.denominator == 1:
        # Integers only (the common case, and the hot one): floor(x + 1/2) for x >= 0.
        numerator = int(consideration) * credits_out
        return (2 * numerator + credits) // (2 * credits)
    return round_half_away(consideration * credits_out / credits)


def accrual_of(
    consideration: Fraction | int, terms: Terms, credits_used: int, credits_out: int
) -> int:
    """T: proportional breakage recognized once U credits are used and D have left."""
    rate = terms.breakage_rate
    if rate == 0:
        return 0
    expected = round_half_away(
        Fraction(consideration) * rate / (1 - rate) * credits_used / terms.credits
    )
    headroom = Fraction(consideration) - value_of(consideration, credits_out, terms.credits)
    return max(0, min(expected, int(headroom)))


def _pair(
    debit_account: str, credit_account: str, amount: int, functional: int | None
) -> tuple[Line, ...]:
    """Two lines moving `amount` (signed: a negative amount swaps the sides)."""
    if amount < 0 or (amount == 0 and functional is not None and functional < 0):
        return _pair(
            credit_account, debit_account, -amount, None if functional is None else -functional
        )
    f_debit, f_credit = _sides(functional)
    return (
        Line(debit_account, amount, 0, f_debit, f_credit),
        Line(credit_account, 0, amount, f_credit, f_debit),
    )


def _sides(functional: int | None) -> tuple[int | None, int | None]:
    """(debit, credit) functional amounts of a debit line carrying `functional` (signed)."""
    if functional is None:
        return None, None
    return (functional, 0) if functional >= 0 else (0, -functional)


def apply(
    terms: Terms, state: State, route: Route, credits: int, *, refund_minor: int | None = None
) -> tuple[list[Draft], State]:
    """The journals a movement of `credits` (> 0) on a block posts, and the block's new state.

    A grant posts the purchase; every other route moves D (and U for usage and restores) and
    posts the change of value(D), with the change of the proportional accrual. `refund_minor`
    is the money returned for a refund (None: the value of the credits)."""
    assert credits > 0, credits
    if route is Route.GRANT:
        return _purchase(terms, credits), opening(terms)
    if route is Route.ROLLOVER_IN:
        return _rolled_in(terms, credits), opening(terms)
    used = {Route.USAGE: credits, Route.RESTORE: -credits}.get(route, 0)
    out = -credits if route is Route.RESTORE else credits
    new = _moved(terms, state, state.credits_out + out, state.credits_used + used)
    if not terms.paid:
        return [], new
    value = new.value_out_minor - state.value_out_minor
    functional = _delta(new.functional_out_minor, state.functional_out_minor)
    accrual = new.accrued_minor - state.accrued_minor
    f_accrual = _delta(new.functional_accrued_minor, state.functional_accrued_minor)
    drafts: list[Draft] = []
    if route is Route.USAGE:
        drafts.append(_draft("usage", credits, LIABILITY_TO_USAGE, value, functional, "usage"))
    elif route is Route.RESTORE:
        drafts.append(
            _draft("correction", credits, LIABILITY_TO_USAGE, value, functional, "restored")
        )
    elif route in (Route.EXPIRE, Route.VOID):
        # What the accrual had recognized ahead of expiry is part of this breakage: post the net.
        value, accrual = value + accrual, 0
        functional = _sum(functional, f_accrual)
        f_accrual = None if f_accrual is None else 0
        drafts.append(
            _draft("breakage", credits, LIABILITY_TO_BREAKAGE, value, functional, route.value)
        )
    elif route is Route.ROLLOVER_OUT:
        # Neither revenue nor breakage: the value of the credits taken, value(D2) - value(D1),
        # leaves for the rollover block (born with exactly that consideration). What the
        # proportional accrual had recognized beyond what is left is given back below.
        drafts.append(
            _draft(
                "rollover",
                credits,
                (CONTRACT_LIABILITY, ROLLOVER_CLEARING),
                value,
                functional,
                "rollover",
            )
        )
    else:
        drafts.append(_refund(terms, credits, value, functional, refund_minor))
    if accrual or f_accrual:
        drafts.append(
            _draft(
                "breakage", 0, LIABILITY_TO_BREAKAGE, accrual, f_accrual, "proportional breakage"
            )
        )
    return [d for d in drafts if d.lines], new


def _sum(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def _delta(new: int | None, old: int | None) -> int | None:
    return None if new is None or old is None else new - old


def _draft(
    kind: str,
    credits: int,
    accounts: tuple[str, str],
    amount: int,
    functional: int | None,
    reason: str,
) -> Draft:
    """Dr accounts[0] / Cr accounts[1] `amount` (sides swapped when it is negative); nothing
    when it moves nothing."""
    if amount == 0 and not functional:
        return Draft(kind, credits, (), reason)
    return Draft(kind, credits, _pair(*accounts, amount, functional), reason)


def _moved(terms: Terms, state: State, credits_out: int, credits_used: int) -> State:
    f_consideration = terms.functional_consideration
    return State(
        credits_out=credits_out,
        credits_used=credits_used,
        value_out_minor=value_of(terms.consideration_minor, credits_out, terms.credits),
        accrued_minor=accrual_of(terms.consideration_minor, terms, credits_used, credits_out),
        functional_out_minor=(
            None
            if f_consideration is None
            else value_of(f_consideration, credits_out, terms.credits)
        ),
        functional_accrued_minor=(
            None
            if f_consideration is None
            else accrual_of(f_consideration, terms, credits_used, credits_out)
        ),
    )


def _purchase(terms: Terms, credits: int) -> list[Draft]:
    if not terms.paid or terms.consideration_minor == 0:
        return []
    functional = (
        None
        if terms.functional_consideration is None
        else round_half_away(terms.functional_consideration)
    )
    return [
        _draft(
            "purchase",
            credits,
            (CASH, CONTRACT_LIABILITY),
            terms.consideration_minor,
            functional,
            "purchase",
        )
    ]


def _rolled_in(terms: Terms, credits: int) -> list[Draft]:
    """A rollover block's funding: Dr 2190 / Cr 2100 its consideration, the value its source
    gave up (the source's journal credits 2190 the same amount)."""
    if not terms.paid or terms.consideration_minor == 0:
        return []
    functional = (
        None
        if terms.functional_consideration is None
        else round_half_away(terms.functional_consideration)
    )
    return [
        _draft(
            "rollover",
            credits,
            (ROLLOVER_CLEARING, CONTRACT_LIABILITY),
            terms.consideration_minor,
            functional,
            "rollover",
        )
    ]


def _refund(
    terms: Terms, credits: int, value: int, functional: int | None, refund_minor: int | None
) -> Draft:
    """Dr 2100 U / Cr 1010 R; the difference to contra revenue (R > U) or breakage (R < U)."""
    cash = value if refund_minor is None else refund_minor
    f_cash = None
    if functional is not None and terms.functional_consideration is not None:
        rate = terms.functional_consideration / max(terms.consideration_minor, 1)
        f_cash = functional if refund_minor is None else round_half_away(cash * rate)
    lines: list[Line] = []
    if value or functional:
        f_debit, f_credit = _sides(functional)
        lines.append(Line(CONTRACT_LIABILITY, max(value, 0), max(-value, 0), f_debit, f_credit))
    if cash:
        f_credit, f_debit = _sides(f_cash)
        lines.append(Line(CASH, 0, cash, f_debit, f_credit))
    difference = cash - value
    f_difference = None if f_cash is None or functional is None else f_cash - functional
    if difference or f_difference:
        account = CONTRA_REVENUE if difference > 0 else REVENUE_BREAKAGE
        f_debit, f_credit = _sides(f_difference)
        lines.append(Line(account, max(difference, 0), max(-difference, 0), f_debit, f_credit))
    return Draft("refund", credits, tuple(lines), "refund of unused credits")


def balanced(draft: Draft) -> bool:
    """Debits equal credits, in the block's currency and (when known) the functional one."""
    debit = sum(line.debit_minor for line in draft.lines)
    credit = sum(line.credit_minor for line in draft.lines)
    f_debit = sum(line.functional_debit_minor or 0 for line in draft.lines)
    f_credit = sum(line.functional_credit_minor or 0 for line in draft.lines)
    return debit == credit and f_debit == f_credit and len(draft.lines) >= 2
