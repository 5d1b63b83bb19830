"""The template language of workflow step ``parameters``: ``{{ expressions }}`` with filters.

A step's parameters are JSON; any string in them may hold Jinja2 expressions that read the run's
``inputs`` and the outcome of upstream steps::

    {"url": "https://example.org/{{ inputs.topic }}", "text": "{{ tasks.fetch_a.result.body }}"}

``references`` and ``parameter_references`` say what a template reads, from its parsed syntax
tree, so a definition is checked before it runs. ``render`` resolves the templates of a JSON
value against a context ``{"inputs": {...}, "tasks": {step: {"status", "result", "error"}}}``
built by the caller. A string that is exactly one expression yields the expression's own value
(a dict stays a dict); any other string with templates renders to a string.

Templates run in Jinja2's immutable sandbox, never through ``eval``: no attribute starting with
``_``, no method that changes a value. They only allow ``{{ }}`` (no ``{% %}`` statements), and
see nothing that reads a clock or randomness, so rendering the same template over the same events
gives the same value on every replay. ``a.b`` reads the key ``b`` of a mapping before any
attribute of it: a step called ``get`` or an input called ``items`` is data, not a dict method.
A value that is no data (a method, an iterator) is refused, never stored as its text, which
would hold a memory address. Must never do I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from contracts.values import json_problem

__all__ = [
    "Location",
    "Path",
    "TemplateProblem",
    "has_template",
    "parameter_references",
    "references",
    "render",
    "template_strings",
]

# What a template reads: ("tasks", "fetch_a", "result", "body").
Path = tuple[str, ...]
# Where a string sits inside a JSON value: dict keys and list indexes, outermost first.
Location = tuple[str | int, ...]

# The most one ``*`` may repeat a string or list into, and the most bits a ``**`` may make: a
# template cannot make the process that renders it allocate gigabytes.
MAX_REPEAT = 1_000_000
MAX_POWER_BITS = 4096
# Compiled templates kept per process (each a few KB).
CACHE_SIZE = 2048


class TemplateProblem(ValueError):
    """A template that does not parse, uses a statement, or cannot be rendered over its context."""


class _NotData(ValueError):
    """A template's value that has no JSON or text form of its own (a method, an iterator)."""


def _not_data(value: Any) -> str | None:
    """Why ``value`` is no data a parameter can hold, or None when it is data (or undefined, which
    says itself what is missing when turned into text)."""
    if isinstance(value, Undefined):
        return None
    if isinstance(value, Iterator):  # a generator from ``map``, ``select``, ``reverse``...
        return f"yields a {type(value).__name__}, not a value (add '| list')"
    if callable(value):
        return f"yields a {type(value).__name__}: a method or function, not a value"
    kind: Any = type(value)
    if kind.__repr__ is object.__repr__ and kind.__str__ is object.__str__:
        return f"yields a {kind.__name__} object, which has no JSON or text form"
    return None


def _finalize(value: Any) -> Any:
    """Each expression's value in a text template: refused when its text would be an object's
    default form (with a memory address), which no replay would render the same."""
    why = _not_data(value)
    if why is not None:
        raise _NotData(why)
    return value


class _Environment(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, with bounds on the operators that can blow up in size, reading
    ``a.b`` as the key ``b`` of a mapping before any attribute of it."""

    intercepted_binops = frozenset({"*", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Jinja prefers attributes: ``tasks.get`` would be ``dict.get`` even with a step called
        # ``get``. Parameters read data, so a key wins; a missing key still reaches the sandbox's
        # checked attributes (``inputs.get('x', 1)`` keeps working).
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (LookupError, TypeError):
                pass
        return super().getattr(obj, attribute)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) \
                        and len(seq) * times > MAX_REPEAT:
                    raise SecurityError(f"'*' would make more than {MAX_REPEAT} items")
        elif isinstance(left, int) and isinstance(right, int) and right > 0 \
                and left.bit_length() * right > MAX_POWER_BITS:
            raise SecurityError(f"'**' would make a number of more than {MAX_POWER_BITS} bits")
        return super().call_binop(context, operator, left, right)


# keep_trailing_newline: a parameter's text is data; Jinja would otherwise drop its last "\n".
# (Jinja still writes any "\r\n" in the text around a template as "\n".)
_ENV = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True,
                    finalize=_finalize)
# Only pure helpers stay: ``range`` can make huge lists, ``lipsum`` and the ``random`` filter read
# randomness, the others are state for statements templates do not have.
for _name in ("range", "lipsum", "cycler", "joiner", "namespace"):
    del _ENV.globals[_name]
del _ENV.filters["random"]

# The common template, a dotted path into ``inputs`` or ``tasks`` and filters without arguments,
# in text with no other brace, is read without Jinja's parser: a 500-step chain, a template a
# step, validates in 12 ms instead of 130 ms (Jinja parses one such string in ~0.25 ms). Any other
# string goes to Jinja; a test checks both readings agree.
_SIMPLE = re.compile(r"\{\{[ \t]*((?:inputs|tasks)(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
                     r"((?:[ \t]*\|[ \t]*[A-Za-z_][A-Za-z0-9_]*)*)[ \t]*\}\}")
# A string that is exactly one expression (Jinja's "-" whitespace control allowed).
_ONE = re.compile(r"\s*\{\{-?(.*?)-?\}\}\s*", re.DOTALL)


@dataclass(frozen=True)
class _Parsed:
    references: tuple[Path, ...]
    expression: str | None  # the source of the one expression the whole string is, if it is one


def has_template(text: str) -> bool:
    """Whether ``text`` holds a template; any other string is plain text, never parsed."""
    return "{{" in text


def _show(source: str) -> str:
    return repr(source if len(source) <= 80 else source[:77] + "...")


@lru_cache(maxsize=CACHE_SIZE)
def _parse(source: str) -> _Parsed:
    return _parse_simple(source) or _parse_jinja(source)


def _parse_simple(source: str) -> _Parsed | None:
    """``source`` read by ``_SIMPLE``, or None when it is not that simple."""
    matches = list(_SIMPLE.finditer(source))
    text = _SIMPLE.sub("", source)
    if "{" in text or any(name.strip() not in _ENV.filters
                          for m in matches for name in m.group(2).split("|")[1:]):
        return None
    paths = tuple(dict.fromkeys(tuple(m.group(1).split(".")) for m in matches))
    alone = len(matches) == 1 and not text.strip()
    return _Parsed(paths, source.strip()[2:-2] if alone else None)


def _parse_jinja(source: str) -> _Parsed:
    try:
        if "{%" in source and any(token in ("block_begin", "raw_begin", "linestatement_begin")
                                  for _, token, _ in _ENV.lex(source)):
            raise TemplateProblem(f"template {_show(source)}: only {{{{ expressions }}}} are allowed, "
                                  "not {% statements %}")
        tree = _ENV.parse(source)
        for call in tree.find_all((nodes.Filter, nodes.Test)):
            known = _ENV.filters if isinstance(call, nodes.Filter) else _ENV.tests
            if call.name not in known:
                kind = "filter" if isinstance(call, nodes.Filter) else "test"
                raise TemplateSyntaxError(f"no {kind} named {call.name!r}", call.lineno)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template {_show(source)} does not parse: {exc.message} "
                              f"(line {exc.lineno})") from None
    found: list[Path] = []
    expressions: list[nodes.Node] = []
    for output in tree.body:
        for node in output.iter_child_nodes():
            if isinstance(node, nodes.TemplateData):
                if node.data.strip():
                    expressions.append(node)  # text next to the expression: not one expression
            else:
                expressions.append(node)
                _collect(node, found)
    one = _ONE.fullmatch(source)
    alone = one is not None and len(expressions) == 1 and not isinstance(expressions[0], nodes.TemplateData)
    return _Parsed(tuple(dict.fromkeys(found)), one.group(1) if alone and one else None)


def _collect(node: nodes.Node, found: list[Path]) -> None:
    """Append to ``found`` every context path read under ``node``, in the order they appear."""
    if isinstance(node, nodes.Getattr | nodes.Getitem | nodes.Name):
        steps: list[str] = []
        keys: list[nodes.Node] = []  # subscripts that are not constant names: read, not followed
        cur: nodes.Node = node
        while isinstance(cur, nodes.Getattr | nodes.Getitem):
            if isinstance(cur, nodes.Getattr):
                steps.append(cur.attr)
            elif isinstance(cur.arg, nodes.Const) and isinstance(cur.arg.value, str):
                steps.append(cur.arg.value)
            else:
                steps.clear()  # the path stops before ``[key]``
                keys.append(cur.arg)
            cur = cur.node
        if isinstance(cur, nodes.Name):
            if cur.name not in _ENV.globals:
                found.append((cur.name, *reversed(steps)))
            for key in reversed(keys):
                _collect(key, found)
            return
    for child in node.iter_child_nodes():
        _collect(child, found)


def references(source: str) -> list[Path]:
    """The paths ``source`` reads from its context, in order, each once: for
    ``"x {{ tasks.a.result.body }} {{ inputs.topic|upper }}"``, ``[("tasks", "a", "result", "body"),
    ("inputs", "topic")]``. A path stops at a subscript that is not a constant name (``tasks[k]``
    reads ``("tasks",)``). Raises TemplateProblem when ``source`` does not parse or uses a statement."""
    if not has_template(source):
        return []
    return list(_parse(source).references)


def template_strings(value: Any, at: Location = ()) -> Iterator[tuple[Location, str]]:
    """Every string of the JSON ``value`` that holds a template, with where it is."""
    if isinstance(value, str):
        if has_template(value):
            yield at, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from template_strings(item, (*at, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from template_strings(item, (*at, index))


def parameter_references(value: Any) -> list[tuple[Location, Path]]:
    """(where in ``value``, path read) for every template of every string of the JSON ``value``.
    Raises TemplateProblem at the first template that does not parse."""
    return [(at, path) for at, text in template_strings(value) for path in references(text)]


@lru_cache(maxsize=CACHE_SIZE)
def _compiled(source: str) -> Callable[[dict[str, Any]], Any]:
    expression = _parse(source).expression
    try:
        if expression is not None:
            native = _ENV.compile_expression(expression, undefined_to_none=False)
            return lambda context: native(**context)
        template = _ENV.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template {_show(source)} does not parse: {exc.message}") from None
    return lambda context: template.render(context)


def _render_text(source: str, context: dict[str, Any]) -> Any:
    try:
        value = _storable(_compiled(source)(context))
    except TemplateProblem:
        raise  # it names the template already
    except Exception as exc:  # a template is data: whatever stops it is the template's problem
        raise TemplateProblem(f"template {_show(source)}: {exc}") from None
    problem = json_problem(value)
    if problem is not None:
        where, why = problem
        raise TemplateProblem(f"template {_show(source)} yields a value that is not storable JSON"
                              f"{' at ' + where if where else ''}: {why}")
    return value


def _storable(value: Any) -> Any:
    """``value`` as JSON: dicts (with string keys), lists, text, numbers, booleans, null; any
    other value with a text of its own (a date) as that text. _NotData for a method, an
    iterator or an object without a text form: its text would hold a memory address."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return str(value)  # a ``Markup`` (from ``tojson``) becomes plain text
    if isinstance(value, dict):
        return {str(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    why = _not_data(value)
    if why is not None:
        raise _NotData(why)
    return str(value)  # an undefined value (StrictUndefined) raises here, saying what is undefined


def _render(value: Any, context: dict[str, Any]) -> tuple[Any, bool]:
    if isinstance(value, str):
        if not has_template(value):
            return value, False
        return _render_text(value, context), True
    if isinstance(value, dict):
        changed = False
        out: dict[Any, Any] = {}
        for key, item in value.items():
            out[key], c = _render(item, context)
            changed = changed or c
        return (out, True) if changed else (value, False)
    if isinstance(value, list):
        pairs = [_render(item, context) for item in value]
        if any(c for _, c in pairs):
            return [v for v, _ in pairs], True
        return value, False
    return value, False


def render(value: Any, context: dict[str, Any]) -> Any:
    """The JSON ``value`` with every template resolved over ``context``. A string that is exactly
    one ``{{ expression }}`` becomes the expression's value; any other string with templates
    becomes text; strings without ``{{`` (and a value without any) come back as they are.
    Raises TemplateProblem, naming the template, for a name or attribute that is not there, an
    access the sandbox refuses, a value that is no data (a method, an iterator), or a result that
    is not storable JSON."""
    out, changed = _render(value, context)
    if changed:
        problem = json_problem(out)
        if problem is not None:
            where, why = problem
            raise TemplateProblem(f"rendered value{' at ' + where if where else ''}: {why}")
    return out
