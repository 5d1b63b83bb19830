"""The handler table's entries: per event type, the function that applies it and the rows it reads.

A family module keeps a ``Registry`` and declares each handler with ``@handlers.on(EventType,
reads=(...))``, so what an event changes and what must be loaded for it sit together; the
package merges the families into the one table the projector dispatches on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from contracts import Envelope
from projections.batch import Batch
from projections.loading import Need

# (batch, envelope, payload) -> None, changing the batch's rows in place.
Handler = Callable[[Batch, Envelope, Any], None]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True, slots=True)
class Entry:
    """How one event type is projected: its handler and the stored rows it reads."""

    handle: Handler
    reads: tuple[Need, ...]


class Registry:
    """The entries of one family of handlers."""

    def __init__(self) -> None:
        self.entries: dict[type[Any], Entry] = {}

    def on(self, *kinds: type[Any], reads: tuple[Need, ...] = ()) -> Callable[[H], H]:
        """Declare the decorated function as the handler of ``kinds``, reading ``reads``."""

        def register(handle: H) -> H:
            for kind in kinds:
                if kind in self.entries:
                    raise ValueError(f"{kind.__name__} has two handlers")
                self.entries[kind] = Entry(handle, reads)
            return handle

        return register


def merge(*families: Registry) -> dict[type[Any], Entry]:
    """One table of every family's entries; an event type handled twice is a mistake."""
    table: dict[type[Any], Entry] = {}
    for family in families:
        for kind, entry in family.entries.items():
            if kind in table:
                raise ValueError(f"{kind.__name__} has two handlers")
            table[kind] = entry
    return table
