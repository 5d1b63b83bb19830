"""Replay straight from stored JSON: the hot event types evolve without building pydantic models.

Rebuilding a partition's state is one ``evolve`` per stored event, and building each event's
envelope and validated payload cost about three quarters of it (measured on the bench's history:
about 29 us per event decoded against 6 us evolved). The events that make up most of a history
(submissions, assignments, completions, costs, timers, heartbeats) are evolved by handlers that
read a few plain fields, so for those ``replay_record`` hands the handler a view of exactly those
fields, read from the JSON object, each checked for its JSON type (a nested model only when
absent). Anything else (another type, an older schema version that needs its upcaster, a field of
the wrong type) answers False and the caller decodes the record in full, so every record still
decodes, or fails, exactly as before; the records replayed here were validated against their
contract when they were written.

``RAW_FIELDS`` names, per event type, the fields its handler reads; the fields' JSON types come
from the contract at import, and a field that is not a JSON scalar there refuses to import.
``tests/unit/test_histories.py`` replays every recorded history both ways and compares the states.
Pure: no I/O.
"""

from __future__ import annotations

import types
import typing
from collections import namedtuple
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from contracts import REGISTRY
from contracts import event_types as e
from services.domain.evolution import EVENT_HANDLERS, STATELESS_EVENTS, apply_event
from services.domain.state import PoolState

# Event type -> the fields its handler in ``services.domain.evolution`` reads.
RAW_FIELDS: dict[type[Any], tuple[str, ...]] = {
    e.TaskSubmitted: ("task_id", "type", "priority", "required_capabilities", "data", "strategy", "retry",
                      "timeout_s", "inferred_capabilities", "agent_id", "action", "parameters"),
    e.TaskAssigned: ("task_id", "agent_id", "attempt"),
    e.TaskStarted: ("task_id",),
    e.TaskCompleted: ("task_id", "agent_id"),
    e.TaskFailed: ("task_id", "agent_id", "retryable"),
    e.TaskRetryScheduled: ("task_id", "agent_id"),
    e.TaskCancelled: ("task_id",),
    e.TaskRequeued: ("task_id",),
    e.TaskReassigned: ("task_id",),
    e.CostRecorded: ("cost_id", "agent_id", "task_id", "cost_usd"),
    e.TimerScheduled: ("timer_id", "kind", "generation", "task_id", "agent_id", "attempt", "workflow_id",
                       "step"),
    e.TimerCancelled: ("timer_id", "generation"),
    e.TimerFired: ("timer_id", "generation"),
    e.AgentDeregistered: ("agent_id",),
    e.AgentMarkedUnhealthy: ("agent_id",),
    e.AgentMarkedHealthy: ("agent_id",),
    e.CircuitOpened: ("agent_id",),
    e.CircuitHalfOpened: ("agent_id",),
    e.CircuitClosed: ("agent_id",),
}

_MISSING = object()


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def _json_types(owner: str, name: str, annotation: Any) -> tuple[type, ...]:
    """The Python types orjson yields for a scalar field of this annotation (int passes as float)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _json_types(owner, name, typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        out: tuple[type, ...] = ()
        for arg in typing.get_args(annotation):
            out += (type(None),) if arg is type(None) else _json_types(owner, name, arg)
        return out
    if origin is typing.Literal and all(isinstance(a, str) for a in typing.get_args(annotation)):
        return (str,)
    if annotation in (str, int, bool):
        return (annotation,)
    if annotation is float:
        return (float, int)
    if origin is tuple and typing.get_args(annotation)[1:] == (Ellipsis,) \
            and typing.get_args(annotation)[0] is str:
        return (list,)  # capabilities: a JSON array of strings, a tuple once converted
    if origin is dict and typing.get_args(annotation)[0] is str:
        return (dict,)  # free-form JSON objects (task data, parameters), kept as parsed
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ()  # a nested model: only its absence (null) is replayed raw
    raise TypeError(f"{owner}.{name} is not a JSON scalar ({annotation!r}): it cannot be replayed raw")


class _Spec:
    __slots__ = ("handled", "kind", "version", "view")

    def __init__(self, kind: type[Any], names: tuple[str, ...]) -> None:
        contract = REGISTRY[kind.__name__]
        self.kind = kind
        self.version = contract.version
        self.handled = kind in EVENT_HANDLERS
        specs: list[tuple[str, tuple[type, ...], Any, Callable[[Any], Any] | None]] = []
        for name in names:
            info = kind.model_fields[name]  # a KeyError here: RAW_FIELDS names a field the type lacks
            # A field an older record lacks takes its default, as validation would give it.
            if info.default_factory is not None:
                default: Any = _Factory(info.default_factory)
            else:
                default = info.default if info.default is not PydanticUndefined else _MISSING
            types_ = _json_types(kind.__name__, name, info.annotation)
            convert = float if float in types_ else tuple if list in types_ else None
            specs.append((name, types_, default, convert))
        make: Callable[..., Any] = namedtuple(f"{kind.__name__}View", names)  # type: ignore[misc]
        self.view: Callable[[dict[str, Any]], Any] = _view_function(kind.__name__, tuple(specs), make)


def _view_function(owner: str, fields: tuple[tuple[str, tuple[type, ...], Any, Any], ...],
                   make: Callable[..., Any]) -> Callable[[dict[str, Any]], Any]:
    """``view(data)``: the handler's fields of an event's ``data``, or None when one is missing or
    not of its JSON type. Written out field by field for each event type and compiled once, at
    import, as ``namedtuple`` and ``dataclasses`` write their methods: the same checks as a loop
    over the (name, JSON types, default, conversion) of each field, in about half the time (the
    views were a fifth of a replay)."""
    # tuple.__new__ with the named tuple's class: its instance without the Python-level __new__.
    namespace: dict[str, Any] = {"cls": make, "_new": tuple.__new__, "_str_items": _str_items}
    lines = ["def view(data):"]
    for i, (name, types_, default, convert) in enumerate(fields):
        namespace[f"d{i}"], namespace[f"t{i}"] = default, types_
        lines.append(f"    v{i} = data.get({name!r}, d{i})")
        if isinstance(default, _Factory):  # never a parsed JSON value: the field was absent
            lines.append(f"    if v{i} is d{i}: v{i} = d{i}.make()")
        # A required field that is absent is _MISSING, whose type is in no field's types.
        lines.append(f"    if type(v{i}) not in t{i}: return None")
        if convert is float:
            lines.append(f"    if v{i} is not None: v{i} = float(v{i})")
        elif convert is tuple:
            lines.append(f"    if v{i} is not None:")
            lines.append(f"        v{i} = _str_items(v{i})")
            lines.append(f"        if v{i} is None: return None")
    lines.append(f"    return _new(cls, ({''.join(f'v{i}, ' for i in range(len(fields)))}))")
    exec(compile("\n".join(lines), f"<replay view of {owner}>", "exec"), namespace)
    view: Callable[[dict[str, Any]], Any] = namespace["view"]
    return view


def _str_items(items: list[Any]) -> tuple[str, ...] | None:
    """A JSON array of strings as a tuple; None when an item is not a string."""
    for item in items:
        if type(item) is not str:
            return None
    return tuple(items)


_SPECS: dict[str, _Spec] = {
    **{kind.__name__: _Spec(kind, names) for kind, names in RAW_FIELDS.items()},
    **{kind.__name__: _Spec(kind, ()) for kind in STATELESS_EVENTS},
}


_INT_OR_NONE, _STR_OR_NONE = (int, type(None)), (str, type(None))


def replay_record(state_of: Callable[[str], PoolState], obj: dict[str, Any]) -> bool:
    """Evolve the pool's state by the stored event ``obj`` (its parsed JSON) when its type can be
    replayed raw; False (nothing changed) when the caller must decode it in full."""
    spec = _SPECS.get(obj.get("type"))  # type: ignore[arg-type]
    if spec is None or obj.get("schemaversion", spec.version) != spec.version:
        return False
    pool, sequence, commandid = obj.get("pool"), obj.get("sequence"), obj.get("commandid")
    if type(pool) is not str or type(sequence) not in _INT_OR_NONE or type(commandid) not in _STR_OR_NONE:
        return False
    view = None
    if spec.handled:
        data = obj.get("data")
        if type(data) is not dict:
            return False
        view = spec.view(data)
        if view is None:
            return False
    apply_event(state_of(pool), spec.kind, view, sequence, commandid)
    return True
