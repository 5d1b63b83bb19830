"""Money: the bounds every amount is held to, and the one conversion between USD and micro-dollars.

Amounts travel as JSON numbers in USD (``cost_usd``, ``limit_usd``, ``spent_usd``), rounded to the
micro-dollar (6 decimals). Every sum is kept as an integer number of micro-dollars, so ten costs
of 0.10 USD make exactly 1.00 USD and no total can overflow to infinity. The bounds keep every
amount and every total below 2**53 micro-dollars: each one converts between a float in USD and an
integer exactly, and fits a 64-bit column. Prices are kept to the nano-dollar per 1K tokens (USD
0.000001 per million), finer than any list price.

Pure: numbers in, numbers out.
"""

from __future__ import annotations

MICROS_PER_USD = 1_000_000
NANOS_PER_USD = 1_000_000_000

MAX_COST_USD = 1_000_000  # one recorded cost
MAX_TOKENS = 1_000_000_000  # input or output tokens of one recorded call
MAX_LIMIT_USD = 1_000_000_000  # a budget's limit
MAX_SPEND_USD = 1_000_000_000  # what the costs recorded in one pool may add up to, ever
MAX_PRICE_PER_1K_USD = 1_000  # a model's price per 1,000 input or output tokens
MAX_PRICED_MODELS = 1_000  # models a pool may price over the built-in table

MAX_COST_MICROS = MAX_COST_USD * MICROS_PER_USD
MAX_SPEND_MICROS = MAX_SPEND_USD * MICROS_PER_USD


def to_micros(usd: float) -> int:
    """``usd`` as a whole number of micro-dollars (nearest; a finite, bounded amount)."""
    return round(usd * MICROS_PER_USD)


def to_usd(micros: int) -> float:
    """``micros`` in USD: the float nearest the exact decimal (``to_micros`` gives ``micros`` back)."""
    return micros / MICROS_PER_USD


def to_nanos(usd: float) -> int:
    """A price in whole nano-dollars (nearest)."""
    return round(usd * NANOS_PER_USD)


def nanos_to_usd(nanos: int) -> float:
    """A price in nano-dollars, in USD."""
    return nanos / NANOS_PER_USD
