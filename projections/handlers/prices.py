"""Prices: each pool's own prices, as its last ``PricesSet`` left them.

The row holds what the event holds (the models the pool prices over the built-in table, its
default and strictness); the built-in table is code, added by the read that lists the effective
prices. One row per pool, replaced whole, so nothing is read first.
"""

from __future__ import annotations

from contracts import Envelope
from contracts import event_types as ev
from projections.batch import Batch
from projections.handlers.registry import Registry

handlers = Registry()


@handlers.on(ev.PricesSet)
def _prices_set(b: Batch, env: Envelope, d: ev.PricesSet) -> None:
    b.prices.put(
        (env.pool,),
        {
            "pool": env.pool,
            "models": {name: price.model_dump() for name, price in d.models.items()},
            "default_price": None if d.default is None else d.default.model_dump(),
            "strict": d.strict,
            "updated_at": env.time,
        },
    )
