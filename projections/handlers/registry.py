"""The handler table's entries: per event type, the function that applies it and the rows it reads.

A family module keeps a ``Registry`` and declares each handler with ``@handlers.on(EventType,
reads=(...))``, so what an event changes and what must be loaded for it sit together; the
package merges the families into the one table the projector dispatches on.

An event type has one handler. Another family may follow it with ``@handlers.also(EventType,
reads=(...))``: its function runs after the handler, on the rows the handler left (a workflow
step follows its task), so what the event means to that family stays in that family's module.
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
        self.followers: dict[type[Any], Entry] = {}

    def on(self, *kinds: type[Any], reads: tuple[Need, ...] = ()) -> Callable[[H], H]:
        """Declare the decorated function as the handler of ``kinds``, reading ``reads``."""

        def register(handle: H) -> H:
            for kind in kinds:
                if kind in self.entries:
                    raise ValueError(f"{kind.__name__} has two handlers")
                self.entries[kind] = Entry(handle, reads)
            return handle

        return register

    def also(self, *kinds: type[Any], reads: tuple[Need, ...] = ()) -> Callable[[H], H]:
        """Declare the decorated function to run after the handler of ``kinds`` (another
        family's), reading ``reads`` too."""

        def register(follow: H) -> H:
            for kind in kinds:
                if kind in self.followers:
                    raise ValueError(f"{kind.__name__} is followed twice by one family")
                self.followers[kind] = Entry(follow, reads)
            return follow

        return register


def _then(first: Handler, second: Handler) -> Handler:
    def both(b: Batch, env: Envelope, d: Any) -> None:
        first(b, env, d)
        second(b, env, d)

    return both


def merge(*families: Registry) -> dict[type[Any], Entry]:
    """One table of every family's entries, each followed by the followers declared for it; an
    event type handled twice is a mistake."""
    table: dict[type[Any], Entry] = {}
    for family in families:
        for kind, entry in family.entries.items():
            if kind in table:
                raise ValueError(f"{kind.__name__} has two handlers")
            table[kind] = entry
    for family in families:
        for kind, follower in family.followers.items():
            first = table.get(kind)
            if first is None:
                raise ValueError(f"{kind.__name__} is followed but has no handler")
            table[kind] = Entry(_then(first.handle, follower.handle), first.reads + follower.reads)
    return table
