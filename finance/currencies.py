"""Minor units of currencies (ISO 4217): how many decimals a currency's minor unit has.

Amounts are integers in minor units everywhere (a grant's `consideration_minor`); exports print
them in major units with this many decimals. The table is ISO 4217's (the list of currencies
whose minor unit is not 2 decimals). Babel's `get_currency_precision` was considered: it
returns CLDR's display digits, which differ from ISO 4217 for some currencies (HUF and IDR are 0
there, 2 in ISO 4217), and a minor unit must mean what the payment that funded the block meant.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Final

_EXPONENTS: Final = {
    **dict.fromkeys(
        [
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ],
        0,
    ),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
    **dict.fromkeys(["CLF", "UYW"], 4),
}
EXPONENT_DEFAULT: Final = 2


def exponent(currency: str) -> int:
    """Decimals of the currency's minor unit (ISO 4217; 2 unless the table says otherwise)."""
    return _EXPONENTS.get(currency, EXPONENT_DEFAULT)


def major(amount_minor: int, currency: str) -> str:
    """An amount in minor units as major units with the currency's fixed decimals ('-12.30')."""
    places = exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    units, cents = divmod(abs(amount_minor), 10**places)
    return f"{sign}{units}.{cents:0{places}d}" if places else f"{sign}{units}"


def functional_consideration(
    consideration_minor: int, currency: str, rate: Fraction, functional_currency: str
) -> Fraction:
    """A consideration in minor units of the functional currency at `rate` (functional units
    per unit of `currency`), unrounded: the cumulative rule rounds it."""
    scale = Fraction(10) ** (exponent(functional_currency) - exponent(currency))
    return consideration_minor * rate * scale
