"""Base classes for the public language: every command and event payload is a frozen model.

Must never do I/O: contracts are data and rules about data only.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

Kind = Literal["command", "event"]


class Model(BaseModel):
    """A frozen, strict model: unknown fields are errors, values never change after creation."""

    # No NaN or infinity in any float field: JSON has no such numbers (they would be written as
    # null and never read back as what was meant).
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Payload(Model):
    """A command or event body, chosen by the envelope's ``type`` through the registry."""

    # Name of the field whose value becomes the envelope ``subject`` (the entity it is about).
    subject_field: ClassVar[str | None] = None
    # "command" or "event": set by ``Command`` and ``Event``.
    message_kind: ClassVar[Kind]

    def subject(self) -> str | None:
        """The id of the entity this payload is about, if any."""
        if self.subject_field is None:
            return None
        value: Any = getattr(self, self.subject_field)
        return None if value is None else str(value)


class Command(Payload):
    """An intent; the decider accepts it (emitting events) or rejects it."""

    message_kind: ClassVar[Kind] = "command"


class Event(Payload):
    """A fact that happened; immutable once on the log."""

    message_kind: ClassVar[Kind] = "event"
