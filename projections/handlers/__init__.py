"""How each event changes the read models: one handler per event type, by family, in one table.

``HANDLERS`` maps an event type to its ``Entry``: the handler, which changes the batch's rows in
place (``projections.batch``), and the stored rows it reads (``projections.loading``), declared
together on the handler. Adding an event is adding one decorated function. Handlers trust the
decider: an event that contradicts the rows raises ``Batch.fail``. They never do I/O, never read
a clock and never write anything not derived from the event and the rows.
"""

from __future__ import annotations

from typing import Any

from projections.handlers import (
    access,
    agents,
    coordination,
    costs,
    prices,
    resources,
    subscriptions,
    tasks,
    webhooks,
    workflows,
)
from projections.handlers.registry import Entry, Handler, Registry, merge

HANDLERS: dict[type[Any], Entry] = merge(
    agents.handlers, tasks.handlers, resources.handlers, costs.handlers, prices.handlers,
    coordination.handlers, workflows.handlers, access.handlers, subscriptions.handlers,
    webhooks.handlers,
)

__all__ = ["HANDLERS", "Entry", "Handler", "Registry"]
