"""Model prices: the built-in table, and a pool's prices (that table with the pool's own changes).

A ``RecordCost`` without ``cost_usd`` is priced from its pool's ``Prices``, which live in the
decider's state and change only by ``PricesSet`` events (``SetPrices`` commands): who changed a
price and when is in the log, and replay never depends on a file or a setting that changed since.
The ``CostRecorded`` carries the computed cost, so a later change of the built-in table changes
new costs only.

A model name is matched case-insensitively: the whole name, then the name after its last ``/``
(``openai/gpt-4o``), then its longest known prefix ending before a ``-``, ``:``, ``@`` or ``_``
(``gpt-4-0613`` is ``gpt-4``, ``claude-3-5-sonnet-20241022`` is ``claude-3-5-sonnet``). A model
in no table is priced at the pool's default price unless the pool is strict.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from contracts import event_types as e
from contracts.commands import ModelPrice
from contracts.money import nanos_to_usd, to_nanos

# List prices as of 2025-11-01, USD per 1K input and output tokens (providers quote per 1M tokens:
# these are those numbers / 1,000), standard tier, short prompts, no caching or batch discount.
# Open-weight models: a typical serverless price (Together AI, Groq, Fireworks, the maker's API);
# hosts differ, so a pool that knows its own should set it (``agentbus prices set``).
BUILTIN_PRICES: Mapping[str, tuple[float, float]] = {
    # OpenAI
    "gpt-4": (0.03, 0.06),
    "gpt-4-32k": (0.06, 0.12),
    "gpt-4-turbo": (0.01, 0.03),
    "gpt-4-turbo-preview": (0.01, 0.03),
    "gpt-4-1106-preview": (0.01, 0.03),
    "gpt-4-0125-preview": (0.01, 0.03),
    "gpt-4-vision-preview": (0.01, 0.03),
    "gpt-3.5-turbo": (0.0005, 0.0015),
    "gpt-3.5-turbo-instruct": (0.0015, 0.002),
    "gpt-4o": (0.0025, 0.01),
    "gpt-4o-mini": (0.00015, 0.0006),
    "chatgpt-4o-latest": (0.005, 0.015),
    "gpt-4.1": (0.002, 0.008),
    "gpt-4.1-mini": (0.0004, 0.0016),
    "gpt-4.1-nano": (0.0001, 0.0004),
    "gpt-4.5-preview": (0.075, 0.15),
    "gpt-5": (0.00125, 0.01),
    "gpt-5-mini": (0.00025, 0.002),
    "gpt-5-nano": (0.00005, 0.0004),
    "o1": (0.015, 0.06),
    "o1-preview": (0.015, 0.06),
    "o1-mini": (0.0011, 0.0044),
    "o1-pro": (0.15, 0.6),
    "o3": (0.002, 0.008),
    "o3-mini": (0.0011, 0.0044),
    "o3-pro": (0.02, 0.08),
    "o4-mini": (0.0011, 0.0044),
    "text-embedding-3-small": (0.00002, 0.0),
    "text-embedding-3-large": (0.00013, 0.0),
    "text-embedding-ada-002": (0.0001, 0.0),
    # Anthropic (both spellings of the 3.x names are in use)
    "claude-3-haiku": (0.00025, 0.00125),
    "claude-3-sonnet": (0.003, 0.015),
    "claude-3-opus": (0.015, 0.075),
    "claude-3-5-sonnet": (0.003, 0.015),
    "claude-3.5-sonnet": (0.003, 0.015),
    "claude-3-5-haiku": (0.0008, 0.004),
    "claude-3.5-haiku": (0.0008, 0.004),
    "claude-haiku-3.5": (0.0008, 0.004),
    "claude-3-7-sonnet": (0.003, 0.015),
    "claude-3.7-sonnet": (0.003, 0.015),
    "claude-sonnet-4": (0.003, 0.015),
    "claude-sonnet-4-5": (0.003, 0.015),
    "claude-opus-4": (0.015, 0.075),
    "claude-opus-4-1": (0.015, 0.075),
    "claude-opus-4-5": (0.005, 0.025),
    "claude-haiku-4-5": (0.001, 0.005),
    "claude-2": (0.008, 0.024),
    "claude-instant-1": (0.0008, 0.0024),
    # Google (Gemini API, prompts up to 128K/200K tokens)
    "gemini-1.0-pro": (0.0005, 0.0015),
    "gemini-1.5-pro": (0.00125, 0.005),
    "gemini-1.5-flash": (0.000075, 0.0003),
    "gemini-1.5-flash-8b": (0.0000375, 0.00015),
    "gemini-2.0-flash": (0.0001, 0.0004),
    "gemini-2.0-flash-lite": (0.000075, 0.0003),
    "gemini-2.5-pro": (0.00125, 0.01),
    "gemini-2.5-flash": (0.0003, 0.0025),
    "gemini-2.5-flash-lite": (0.0001, 0.0004),
    "gemini-3-pro-preview": (0.002, 0.012),
    # Meta Llama
    "llama-3-8b": (0.0002, 0.0002),
    "llama-3-70b": (0.00088, 0.00088),
    "llama-3.1-8b": (0.00018, 0.00018),
    "llama-3.1-70b": (0.00088, 0.00088),
    "llama-3.1-405b": (0.0035, 0.0035),
    "llama-3.2-1b": (0.00006, 0.00006),
    "llama-3.2-3b": (0.00006, 0.00006),
    "llama-3.2-11b": (0.00018, 0.00018),
    "llama-3.2-90b": (0.0012, 0.0012),
    "llama-3.3-70b": (0.00088, 0.00088),
    "llama-4-scout": (0.00018, 0.00059),
    "llama-4-maverick": (0.00027, 0.00085),
    # Mistral AI
    "mistral-7b": (0.00025, 0.00025),
    "open-mistral-7b": (0.00025, 0.00025),
    "mistral-nemo": (0.00015, 0.00015),
    "mistral-small": (0.0001, 0.0003),
    "mistral-medium": (0.0004, 0.002),
    "mistral-large": (0.002, 0.006),
    "ministral-8b": (0.0001, 0.0001),
    "codestral": (0.0003, 0.0009),
    "mixtral-8x7b": (0.0007, 0.0007),
    "open-mixtral-8x7b": (0.0007, 0.0007),
    "mixtral-8x22b": (0.002, 0.006),
    "open-mixtral-8x22b": (0.002, 0.006),
    # DeepSeek (its own API's names too)
    "deepseek-v3": (0.00027, 0.0011),
    "deepseek-chat": (0.00027, 0.0011),
    "deepseek-r1": (0.00055, 0.00219),
    "deepseek-reasoner": (0.00055, 0.00219),
    # Qwen (Alibaba Cloud's names, and the open weights as hosted)
    "qwen-turbo": (0.00005, 0.0002),
    "qwen-plus": (0.0004, 0.0012),
    "qwen-max": (0.0016, 0.0064),
    "qwen2.5-7b": (0.0003, 0.0003),
    "qwen2.5-72b": (0.0012, 0.0012),
    "qwen-2.5-7b": (0.0003, 0.0003),
    "qwen-2.5-72b": (0.0012, 0.0012),
    "qwen2.5-coder-32b": (0.0008, 0.0008),
    "qwq-32b": (0.0012, 0.0012),
    # Cohere
    "command-r": (0.00015, 0.0006),
    "command-r-plus": (0.0025, 0.01),
}
# Hugging Face names of the Llama models: meta-llama/Meta-Llama-3.1-70B-Instruct and the like.
BUILTIN_PRICES = {
    **BUILTIN_PRICES,
    **{f"meta-{name}": price for name, price in BUILTIN_PRICES.items() if name.startswith("llama-")},
}

# The price of a model found in no table, until a pool sets its own: that of a large model
# (gpt-4-turbo), above most current ones on purpose, so that costs of a model nobody priced trip
# budgets early rather than late. A strict pool rejects such costs (UNKNOWN_MODEL_PRICE) instead.
BUILTIN_DEFAULT = ModelPrice(input_per_1k=0.01, output_per_1k=0.03)

SEPARATORS = frozenset("-:@_")

Price = tuple[int, int]  # nano-dollars per 1,000 input and output tokens


def nanos(price: ModelPrice) -> Price:
    """``price`` in nano-dollars per 1K tokens."""
    return to_nanos(price.input_per_1k), to_nanos(price.output_per_1k)


def quantized(price: ModelPrice) -> ModelPrice:
    """``price`` rounded to the nano-dollar per 1K tokens, as the pool keeps it."""
    p_in, p_out = nanos(price)
    return ModelPrice(input_per_1k=nanos_to_usd(p_in), output_per_1k=nanos_to_usd(p_out))


def model_key(name: str) -> str:
    """How a model name is kept and compared: trimmed, in lower case."""
    return name.strip().lower()


_BUILTIN_NANOS: dict[str, Price] = {
    model_key(name): (to_nanos(p_in), to_nanos(p_out)) for name, (p_in, p_out) in BUILTIN_PRICES.items()
}


def cost_micros(input_tokens: int, output_tokens: int, price: Price) -> int:
    """What a call costs at ``price``, in micro-dollars rounded half up (exact integer arithmetic)."""
    return (input_tokens * price[0] + output_tokens * price[1] + 500_000) // 1_000_000


@dataclass(frozen=True, slots=True)
class Prices:
    """A pool's prices: the built-in table with the pool's own ``models`` over it, its ``default``
    (None: the built-in default) and whether a model in no table is rejected (``strict``)."""

    models: Mapping[str, ModelPrice] = field(default_factory=dict)
    default: ModelPrice | None = None
    strict: bool = False
    # The built-in table with the pool's models over it, in nano-dollars (derived, not compared).
    table: Mapping[str, Price] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        table = _BUILTIN_NANOS
        if self.models:
            table = {**table, **{model_key(name): nanos(p) for name, p in self.models.items()}}
        object.__setattr__(self, "table", table)

    @classmethod
    def of(cls, ev: e.PricesSet) -> Prices:
        """The prices a ``PricesSet`` sets."""
        return cls(ev.models, ev.default, ev.strict)

    def match(self, model: str) -> str | None:
        """The table's name for ``model`` (see the module docstring), or None."""
        table = self.table
        name = model_key(model)
        if name in table:
            return name
        name = name.rsplit("/", 1)[-1]
        if name in table:
            return name
        for i in range(len(name) - 1, 0, -1):
            if name[i] in SEPARATORS and name[:i] in table:
                return name[:i]
        return None

    def price_of(self, model: str) -> Price | None:
        """What ``model`` costs per 1K tokens: its table price, else the default unless strict."""
        name = self.match(model)
        if name is not None:
            return self.table[name]
        if self.strict:
            return None
        return nanos(self.default or BUILTIN_DEFAULT)

    def listing(self) -> dict[str, Any]:
        """The effective prices as JSON: every model (built-in or the pool's), the default, strict."""
        own = {model_key(name) for name in self.models}
        models = {
            name: {"input_per_1k": nanos_to_usd(p_in), "output_per_1k": nanos_to_usd(p_out),
                   "source": "pool" if name in own else "built-in"}
            for name, (p_in, p_out) in sorted(self.table.items())
        }
        default = self.default or BUILTIN_DEFAULT
        return {
            "models": models,
            "default": {**default.model_dump(), "source": "built-in" if self.default is None else "pool"},
            "strict": self.strict,
        }


BUILTIN = Prices()
