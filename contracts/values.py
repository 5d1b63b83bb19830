"""The value types commands are built from: ids, text, capabilities and free-form JSON.

Each type accepts only what every part of agentbus can store and read back: the JSON codec
(orjson, which refuses lone surrogates and integers beyond 64 bits), the SQLite log and read
models (signed 64-bit integers), PostgreSQL (no NUL character in text; ``integer`` columns hold
32 bits) and Kafka. A value outside them is refused where it enters, naming the field, instead
of being appended as a record nothing can read.

Events keep lenient types (``LooseId``, ``LooseCapabilities``) so that a log written by an older
version always reads; what the decider appends is checked by ``contracts.roundtrip`` instead.

Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

__all__ = [
    "INT32_MAX",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_CAPABILITIES",
    "MAX_CAPABILITY_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_JSON_DEPTH",
    "MAX_JSON_VALUES",
    "Capabilities",
    "Capability",
    "Id",
    "JSONObject",
    "JSONValue",
    "Key",
    "LooseCapabilities",
    "LooseId",
    "Name",
    "Text",
    "id_problem",
    "json_problem",
    "text_problem",
]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # SQLite INTEGER, PostgreSQL bigint, orjson (signed)
INT32_MAX = 2**31 - 1  # PostgreSQL integer: counts that land in such a read-model column
MAX_ID_LENGTH = 200  # the read models' id columns are VARCHAR(200)
MAX_CAPABILITY_LENGTH = 100
MAX_CAPABILITIES = 100
# Free-form JSON: nesting deeper than this, or more values than this in one field, is refused
# (orjson itself stops at 255 levels; the HTTP body limit bounds the bytes).
MAX_JSON_DEPTH = 32
MAX_JSON_VALUES = 100_000

# NUL: PostgreSQL text refuses it. Lone surrogates: not UTF-8, so no JSON encoder writes them.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Control characters (C0, DEL, C1) and lone surrogates: never part of an id or a name.
_NOT_IN_NAME = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text everywhere (NUL, lone surrogate), or None."""
    if value.isascii():  # O(1) in CPython: the common case costs one lookup
        return "must not contain the NUL character (\\u0000)" if "\x00" in value else None
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return "must not contain the NUL character (\\u0000)"
    return f"must be valid Unicode (lone surrogate \\u{ord(found.group()):04x} at {found.start()})"


def _text(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise PydanticCustomError("text_unstorable", problem)
    return value


def _name_problem(value: str) -> str | None:
    found = _NOT_IN_NAME.search(value)
    if found is not None:
        ch = ord(found.group())
        what = "a lone surrogate" if 0xD800 <= ch <= 0xDFFF else "a control character"
        return f"must not contain {what} (\\u{ch:04x} at {found.start()})"
    if value != value.strip():
        return "must not start or end with whitespace"
    return None


def _name(value: str) -> str:
    problem = _name_problem(value)
    if problem is not None:
        raise PydanticCustomError("name_invalid", problem)
    return value


def id_problem(value: str) -> str | None:
    """What makes ``value`` no id (its length aside), or None: the rules of ``Id``."""
    problem = _name_problem(value)
    if problem is None and "/" in value:
        problem = "must not contain '/' (an id is one segment of a URL path)"
    if problem is None and value in (".", ".."):
        problem = "must not be '.' or '..' (URL clients rewrite such path segments)"
    return problem


def _id(value: str) -> str:
    problem = id_problem(value)
    if problem is not None:
        raise PydanticCustomError("id_invalid", problem)
    return value


# Any text a command carries (names, reasons, errors): no NUL, no lone surrogate.
Text = Annotated[str, AfterValidator(_text)]

# An id the client chooses (or the server generates): one URL path segment, as typed.
Id = Annotated[
    str,
    Field(min_length=1, max_length=MAX_ID_LENGTH,
          description=f"1 to {MAX_ID_LENGTH} characters; no '/', no control characters, no leading or "
                      "trailing whitespace, not '.' or '..'."),
    AfterValidator(_id),
]

# An id that may contain '/', as model names do ("meta-llama/Llama-3.1-70B"): never in a URL path.
Key = Annotated[
    str,
    Field(min_length=1, max_length=MAX_ID_LENGTH,
          description=f"1 to {MAX_ID_LENGTH} characters; no control characters, no leading or trailing "
                      "whitespace."),
    AfterValidator(_name),
]

# A short name (an agent kind, a capability): non-empty, trimmed, no control characters.
Name = Annotated[str, Field(min_length=1), AfterValidator(_name)]

Capability = Annotated[str, Field(min_length=1, max_length=MAX_CAPABILITY_LENGTH), AfterValidator(_name)]


def _capabilities(value: tuple[str, ...]) -> tuple[str, ...]:
    # One call for the whole tuple rather than one per item: this runs for every task submitted.
    for i, item in enumerate(value):
        if not 1 <= len(item) <= MAX_CAPABILITY_LENGTH:
            problem: str | None = f"must be 1 to {MAX_CAPABILITY_LENGTH} characters"
        else:
            problem = _name_problem(item)
        if problem is not None:
            raise PydanticCustomError("capability_invalid", "item {index} ({item}) {problem}",
                                      {"index": i, "item": repr(item[:50]), "problem": problem})
    return value


# Capabilities are matched by exact equality, so a padded or empty one is refused, not trimmed:
# silently changing what a client sent would make " text" match "text" in one place and not another.
# (A lone string instead of a list is explained by the API's 422 rendering, services.http.errors.)
Capabilities = Annotated[
    tuple[str, ...],
    Field(max_length=MAX_CAPABILITIES,
          description=f"At most {MAX_CAPABILITIES} capabilities of 1 to {MAX_CAPABILITY_LENGTH} characters "
                      "each; no control characters, no leading or trailing whitespace."),
    AfterValidator(_capabilities),
]

# What events declare: lenient, so that any log ever written reads back.
LooseId = str
LooseCapabilities = tuple[str, ...]


# --- free-form JSON -------------------------------------------------------------------------------


class _Bad(Exception):
    """A value that is not storable JSON; ``path`` is filled in on the way out."""

    def __init__(self, problem: str, *path: str | int) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str | int] = list(path)


def _leaf(value: Any) -> Any:
    """A value that is neither str, int, float, bool, None, dict nor list: a subclass of one (an
    enum is written as its value) or no JSON at all."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        value = str(value)
        problem = text_problem(value)
    elif isinstance(value, int):
        value = int(value)
        problem = None if INT64_MIN <= value <= INT64_MAX else _BIG
    elif isinstance(value, float):
        value = float(value)
        problem = None if math.isfinite(value) else _NONFINITE
    else:
        problem = f"{type(value).__name__} is not a JSON value"
    if problem is not None:
        raise _Bad(problem)
    return value


_BIG = "integers must be within the signed 64-bit range (-2**63 to 2**63-1)"
_NONFINITE = "numbers must be finite (no NaN or infinity)"


def _container(value: dict[str, Any] | list[Any], depth: int, budget: list[int]) -> Any:
    """``value`` (a dict or list) as storable JSON; raises _Bad.

    The hot path of every command with free-form data, so leaves are checked inline (a call per
    container, not per value) and a copy is made only when a tuple or an enum must be replaced.
    """
    if depth <= 0:
        raise _Bad(f"nesting deeper than {MAX_JSON_DEPTH} levels")
    budget[0] -= len(value)
    if budget[0] < 0:
        raise _Bad(f"more than {MAX_JSON_VALUES} values")
    is_dict = type(value) is dict
    pairs: Any = value.items() if is_dict else enumerate(value)  # type: ignore[union-attr]
    out: Any = None
    for key, item in pairs:
        if is_dict:
            if type(key) is not str:
                raise _Bad(f"object keys must be strings, not {type(key).__name__}")
            if not key.isascii() or "\x00" in key:
                problem = text_problem(key)
                if problem is not None:
                    raise _Bad(f"key {problem}", key)
        t = type(item)
        new = item
        if t is str:
            if not item.isascii() or "\x00" in item:
                problem = text_problem(item)
                if problem is not None:
                    raise _Bad(problem, key)
        elif t is int:
            if not INT64_MIN <= item <= INT64_MAX:
                raise _Bad(_BIG, key)
        elif t is float:
            if item - item != 0.0:  # inf - inf and nan - nan are nan: finite without a call
                raise _Bad(_NONFINITE, key)
        elif t is dict or t is list or t is tuple:
            try:
                new = _container(item if t is not tuple else list(item), depth - 1, budget)
            except _Bad as exc:
                exc.path.append(key)
                raise
        elif item is not None and t is not bool:
            try:
                new = _leaf(item)
            except _Bad as exc:
                exc.path.append(key)
                raise
        if new is not item:
            if out is None:
                out = dict(value) if is_dict else list(value)
            out[key] = new
    return value if out is None else out


def _check(value: Any, depth: int = MAX_JSON_DEPTH, values: int = MAX_JSON_VALUES) -> Any:
    """``value`` as storable JSON (tuples become lists, enums their values); raises _Bad."""
    t = type(value)
    if t is dict or t is list:
        return _container(value, depth, [values])
    if t is tuple:
        return _container(list(value), depth, [values])
    if value is None or t is bool:
        return value
    return _leaf(value) if t is not str else _leaf_text(value)


def _leaf_text(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise _Bad(problem)
    return value


def _where(path: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in reversed(path)).lstrip(".")


def json_problem(
    value: Any, *, depth: int = MAX_JSON_DEPTH, values: int = MAX_JSON_VALUES
) -> tuple[str, str] | None:
    """(where, why) ``value`` is not storable JSON within ``depth`` levels and ``values`` values,
    ``where`` a dotted path ('' at the top), or None."""
    try:
        _check(value, depth, values)
    except _Bad as exc:
        return _where(exc.path), exc.problem
    return None


def _json(value: Any) -> Any:
    try:
        return _check(value)
    except _Bad as exc:
        where = _where(exc.path)
        raise PydanticCustomError(
            "json_unstorable", "{where}{problem}",
            {"where": f"at {where}: " if where else "", "problem": exc.problem},
        ) from None


_JSON_RULES = (f"Any JSON: integers within the signed 64-bit range, finite numbers, text without NUL, "
               f"at most {MAX_JSON_DEPTH} levels deep and {MAX_JSON_VALUES} values.")

# A free-form JSON object (task data, results, metadata) every store can hold and read back.
JSONObject = Annotated[dict[str, Any], AfterValidator(_json), Field(description=_JSON_RULES)]
# One free-form JSON value.
JSONValue = Annotated[Any, AfterValidator(_json), Field(description=_JSON_RULES)]
