"""agentbus contracts: the public language of commands, events and their envelope. No I/O."""

from contracts import commands, event_types, roundtrip, values
from contracts.base import Command, Event, Model, Payload
from contracts.envelope import DEFAULT_POOL, SYSTEM_POOL, Envelope, derived_id, new_id, utcnow
from contracts.registry import REGISTRY, Contract, Registry, UnknownType
from contracts.rejections import Reason

__all__ = [
    "DEFAULT_POOL",
    "REGISTRY",
    "SYSTEM_POOL",
    "Command",
    "Contract",
    "Envelope",
    "Event",
    "Model",
    "Payload",
    "Reason",
    "Registry",
    "UnknownType",
    "commands",
    "derived_id",
    "event_types",
    "new_id",
    "roundtrip",
    "utcnow",
    "values",
]
