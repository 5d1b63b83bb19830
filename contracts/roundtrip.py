"""Whether a command or event reads back as written: the check made before anything is appended.

A payload passes when pydantic's JSON encoder (the one ``events.codec`` uses) writes it, orjson
reads the bytes back into values every store can hold (text without NUL, integers within signed
64 bits: SQLite, PostgreSQL and orjson all take them), and the registry parses those values into
a payload equal to the original. The decider runs it on every event it is about to append and
ingest on every command, so no record on the log is one that replay, a projector or another
tool cannot read.

Pure: no I/O, and no import of ``events``: the bytes checked are those the codec would write.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from contracts.base import Payload
from contracts.registry import REGISTRY, Registry
from contracts.values import INT64_MAX, INT64_MIN, MAX_JSON_DEPTH, text_problem

__all__ = ["Unreadable", "check", "full_check", "locate"]

# A payload nests free-form JSON (itself at most MAX_JSON_DEPTH deep) a few models down.
_DEPTH = MAX_JSON_DEPTH + 8


class Unreadable(ValueError):
    """A payload that would not read back as written: which type, which field, and why."""

    def __init__(self, type_name: str, where: str, problem: str) -> None:
        self.type_name, self.where, self.problem = type_name, where, problem
        super().__init__(f"{type_name}{'.' + where if where else ''}: {problem}")


def check(payload: Payload, registry: Registry = REGISTRY) -> None:
    """Return if ``payload`` encodes, is storable everywhere and decodes back equal; else raise
    Unreadable naming the type and the field.

    The cheap way first: a payload built by its own (validating) constructor whose values are all
    JSON's own (text, integers, floats, booleans, null, lists, tuples, string-keyed objects,
    nested payload models) reads back equal exactly when its text is valid Unicode without NUL,
    its integers fit signed 64 bits and its floats are finite, which one walk over the values
    checks. A tuple in a free-form field reads back as a list: the commands' JSON types make
    lists of them. A value of any other type (a Decimal, a datetime...) takes the full way:
    encode, decode and compare, as ``full_check``. Measured on the decider: the walk costs a
    fraction of encode+decode+compare (see the module's tests and the bench notes).
    """
    try:
        simple = _walk(payload, _DEPTH)
    except _Bad as exc:
        raise Unreadable(type(payload).__name__, _where(exc.path), exc.problem) from None
    if not simple:
        full_check(payload, registry)


def full_check(payload: Payload, registry: Registry = REGISTRY) -> None:
    """``check`` the long way: encode as the codec does, read back, compare."""
    name = type(payload).__name__
    # Integers past 64 bits read back as floats that may compare equal: found before encoding.
    found = locate(payload)
    if found is not None:
        raise Unreadable(name, *found)
    try:
        raw = payload.__pydantic_serializer__.to_json(payload)
    except PydanticSerializationError as exc:
        raise Unreadable(name, "", f"cannot be written as JSON: {exc}") from None
    obj = orjson.loads(raw)
    try:
        back = registry.parse(name, obj)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise Unreadable(name, where, f"would not read back: {err['msg']}") from None
    if back != payload:
        for field in type(payload).model_fields:
            if getattr(back, field) != getattr(payload, field):
                raise Unreadable(name, field, f"would read back as {getattr(back, field)!r}, "
                                              f"not {getattr(payload, field)!r}")
        raise Unreadable(name, "", "would not read back equal")


class _Bad(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str | int] = []


def _where(path: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in reversed(path)).lstrip(".")


_MODELS: dict[type, bool] = {}


def _is_model(t: type) -> bool:
    # isinstance against BaseModel goes through ABCMeta, slow on the hot path: cached per type.
    known = _MODELS.get(t)
    if known is None:
        known = _MODELS[t] = issubclass(t, BaseModel)
    return known


_BIG = "integers must be within the signed 64-bit range (-2**63 to 2**63-1)"
_NONFINITE = "numbers must be finite (no NaN or infinity)"


def _walk(value: Any, depth: int) -> bool:
    """Raise _Bad for a value no store reads back; False when a value is not JSON's own type (the
    caller then checks the long way). One call per container; leaves are checked inline."""
    if depth <= 0:
        raise _Bad("nested too deeply")
    t = type(value)
    if t is dict:
        pairs: Any = value.items()
    elif t is list or t is tuple:
        pairs = enumerate(value)
    else:  # a model (the caller checked)
        pairs = value.__dict__.items()
    simple = True
    for key, item in pairs:
        t = type(item)
        if t is str:
            if not item.isascii() or "\x00" in item:
                problem = text_problem(item)
                if problem is not None:
                    bad = _Bad(problem)
                    bad.path.append(key)
                    raise bad
        elif t is int:
            if not INT64_MIN <= item <= INT64_MAX:
                bad = _Bad(_BIG)
                bad.path.append(key)
                raise bad
        elif t is float:
            if item - item != 0.0:  # inf - inf and nan - nan are nan
                bad = _Bad(_NONFINITE)
                bad.path.append(key)
                raise bad
        elif item is None or t is bool:
            pass
        elif t is dict or t is list or t is tuple or _is_model(t):
            if t is dict and not all(type(k) is str for k in item):
                return False
            try:
                simple = _walk(item, depth - 1) and simple
            except _Bad as exc:
                exc.path.append(key)
                raise
        else:
            return False  # an enum, a Decimal...: the long way decides
        if type(key) is str and (not key.isascii() or "\x00" in key):
            problem = text_problem(key)
            if problem is not None:
                bad = _Bad(f"key {problem}")
                bad.path.append(key)
                raise bad
    return simple


def locate(value: Any, where: str = "") -> tuple[str, str] | None:
    """(where, why) the first text, integer or float inside a payload that no store holds as
    written, or None. Values of other types are left to the encoder."""
    if isinstance(value, BaseModel):
        for field in type(value).model_fields:
            found = locate(getattr(value, field), f"{where}.{field}" if where else field)
            if found is not None:
                return found
        return None
    if isinstance(value, str):
        problem = text_problem(value)
        return None if problem is None else (where, problem)
    if isinstance(value, dict):
        for key, item in value.items():
            found = locate(key, where) or locate(item, f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = locate(item, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    if type(value) is int and not INT64_MIN <= value <= INT64_MAX:
        return where, _BIG
    if type(value) is float and not math.isfinite(value):
        return where, _NONFINITE
    return None
