"""Workflow documents as clients send them: JSON or YAML read as JSON would be, and every problem
of a definition and its inputs, located in the document.

A key written twice in one mapping is refused, with the line and column of both: parsers keep the
last one without a word, so a second ``tasks:`` would silently replace the first.

Pure: no I/O. Serves ``POST /v1/workflows`` (``services.http.workflow_writes``) and ``agentbus
workflow validate``, so both list the same problems the same way.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, NoReturn

import orjson
import yaml
from pydantic import ValidationError, model_validator
from yaml.constructor import ConstructorError

from contracts.workflows import (
    MAX_STEPS,
    InputSpec,
    StepDefinition,
    WorkflowDefinition,
    definition_problems,
    input_problems,
)
from services.http.errors import YAMLDecodeError, error_item, field_errors

__all__ = ["Checked", "check_definition", "inputs_problems", "load_document"]

Loc = tuple[str | int, ...]

# YAML aliases (``*name``) repeat a value without repeating its text: a document of a few KB can
# stand for billions of values. A document may stand for at most this many values per byte sent
# (plus a fixed allowance), far more than any definition that shares a retry policy or two.
EXPANSION_PER_BYTE = 8
EXPANSION_BASE = 10_000


# --- reading a document: JSON or YAML -------------------------------------------------------------


_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """YAML's safe loader, reading only what JSON can say: text keys, each once per mapping, no
    dates, sets or binary."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # The keys as written: the parent merges ``<<: *alias`` into node.value, and a key written
        # here may override a merged one (that is what a merge is for).
        written = [key_node for key_node, _ in node.value if key_node.tag != _MERGE]
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                hint = " (YAML reads yes/no/on/off as booleans)" if isinstance(key, bool) else ""
                raise ConstructorError(None, None, f"the key {key_node.value!r} is not text{hint}: quote it",
                                       key_node.start_mark)
        first: dict[Any, yaml.Mark] = {}
        for key_node in written:
            key = self.construct_object(key_node, deep=deep)
            if key in first:
                mark = first[key]
                raise ConstructorError(None, None, f"duplicate key {key!r} (first at line {mark.line + 1}, "
                                       f"column {mark.column + 1}): write each key once",
                                       key_node.start_mark)
            first[key] = key_node.start_mark
        return mapping


def _not_json(loader: _Loader, node: yaml.Node) -> NoReturn:
    raise ConstructorError(None, None, f"{node.tag} values have no JSON form: write text instead",
                           node.start_mark)


# A date stays the text it was written as (JSON has no dates); explicit tags JSON cannot hold are refused.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag in ("timestamp", "binary", "set", "omap", "pairs"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _not_json)


def _expanded_within(value: Any, budget: int) -> bool:
    """Whether ``value``, with every shared (aliased) part counted each time it appears, has at
    most ``budget`` values. Stops counting once past it."""
    stack = [value]
    while stack:
        budget -= 1
        if budget < 0:
            return False
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _yaml_error(text: str, msg: str, mark: Any) -> YAMLDecodeError:
    if mark is None:
        return YAMLDecodeError(msg, text, 0, 1, 1)
    return YAMLDecodeError(msg, text, min(mark.index, len(text)), mark.line + 1, mark.column + 1)


# A JSON string, and the tokens that give a JSON text its structure. Valid JSON has no '"' outside
# its strings, so scanning from the start finds every string whole.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]:]', re.DOTALL)


def _key_count(value: Any) -> int:
    """How many keys the objects in the JSON ``value`` hold, all told."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def _duplicate_key(raw: bytes) -> tuple[str, int, int] | None:
    """The first key written twice in one object of the valid JSON ``raw``: (key, byte offset of
    the second, of the first); None when there is none."""
    objects: list[dict[str, int] | None] = []  # the keys of each open object (None: an array)
    string: re.Match[bytes] | None = None
    for token in _JSON_TOKEN.finditer(raw):
        text = token.group()
        if text in (b"{", b"["):
            objects.append({} if text == b"{" else None)
        elif text in (b"}", b"]"):
            objects.pop()
        elif text != b":":
            string = token
        elif string is not None and objects and objects[-1] is not None:
            key, seen = orjson.loads(string.group()), objects[-1]
            if key in seen:
                return key, string.start(), seen[key]
            seen[key] = string.start()
    return None


def _json(raw: bytes | str) -> Any:
    """``raw`` read by orjson; a JSONDecodeError at the second of a key written twice in one object."""
    value = orjson.loads(raw)
    refuse_duplicate_keys(raw, value)
    return value


def refuse_duplicate_keys(raw: bytes | str, value: Any) -> None:
    """Raise a JSONDecodeError at the second of a key written twice in one object of ``raw``, the
    JSON text ``value`` was read from (a parser keeps the last silently)."""
    data = raw.encode() if isinstance(raw, str) else raw
    # Every ':' outside the strings is one key; fewer distinct keys than that means one was written
    # twice, and only then is the text scanned for where. For a 500-step document of 99 KB, orjson
    # reads it in 0.9 ms and the count takes 2.2 ms; json.loads with an object_pairs_hook that
    # refuses a duplicate would take 2.9 ms (and read NaN and big integers unlike orjson).
    if _JSON_STRING.sub(b"", data).count(b":") == _key_count(value):
        return
    found = _duplicate_key(data)
    if found is None:
        return
    key, at, first = found
    text = data.decode("utf-8")
    pos, first_pos = len(data[:at].decode("utf-8")), len(data[:first].decode("utf-8"))
    line = text.count("\n", 0, first_pos) + 1
    column = first_pos - text.rfind("\n", 0, first_pos)
    raise json.JSONDecodeError(f"duplicate key {key!r} (first at line {line}, column {column}): write each "
                               "key once", text, pos)


def load_document(raw: bytes | str, *, as_yaml: bool) -> Any:
    """The document in ``raw``: YAML when ``as_yaml`` (read as JSON would be: text keys, dates kept
    as text), else JSON. Raises a JSONDecodeError (YAMLDecodeError for YAML) naming the line and
    column of what does not parse, or of a key written twice in one mapping."""
    if not as_yaml:
        return _json(raw)
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise YAMLDecodeError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", "", 0, 1, 1) from None
    try:
        value = yaml.load(text, Loader=_Loader)  # a safe loader
    except yaml.MarkedYAMLError as exc:
        what = exc.problem or "does not parse"
        if exc.context and exc.context_mark is not None and exc.problem_mark is not None:
            where = exc.context_mark
            what = f"{what}, {exc.context} that starts at line {where.line + 1}, column {where.column + 1}"
        raise _yaml_error(text, what, exc.problem_mark or exc.context_mark) from None
    except yaml.YAMLError as exc:
        raise _yaml_error(text, str(exc), None) from None
    except RecursionError:
        raise _yaml_error(text, "nested too deeply", None) from None
    if not _expanded_within(value, EXPANSION_BASE + EXPANSION_PER_BYTE * len(text)):
        raise _yaml_error(text, "the document's aliases (*name) expand to too many values", None)
    return value


# --- every problem of a definition (pure) ---------------------------------------------------------


class _FieldsOnly(WorkflowDefinition):
    """A definition checked field by field, without the structural checks (run separately, so
    that every structural problem is listed with its own location)."""

    @model_validator(mode="after")
    def _sound(self) -> _FieldsOnly:
        return self


@dataclasses.dataclass(frozen=True)
class Checked:
    """What checking a definition document found."""

    definition: WorkflowDefinition | None  # None when it has problems
    problems: list[dict[str, Any]]  # 422 items, located under the prefix asked for
    # What could be read of it, for the checks that need a definition (inputs, agents): with the
    # steps and inputs that broke a field rule built as far as they could be.
    readable: WorkflowDefinition | None = None
    broken_steps: frozenset[int] = frozenset()
    broken_inputs: frozenset[str] = frozenset()


def _value_at(doc: Any, loc: Loc) -> Any:
    for key in loc:
        if isinstance(doc, dict) and key in doc:
            doc = doc[key]
        elif isinstance(doc, list) and isinstance(key, int) and 0 <= key < len(doc):
            doc = doc[key]
        else:
            return None
    return doc


def _rough_step(raw: Any, index: int) -> StepDefinition:
    """As much of a step that broke a field rule as its structure needs: name, dependencies,
    parameters. A name that is no text becomes ``tasks[i]``, which no step can be called."""
    raw = raw if isinstance(raw, dict) else {}
    name = raw.get("name")
    deps_ = raw.get("depends_on")
    params = raw.get("parameters")
    return StepDefinition.model_construct(
        name=name if isinstance(name, str) else f"tasks[{index}]",
        depends_on=tuple(deps_) if isinstance(deps_, list) and all(isinstance(d, str) for d in deps_) else (),
        parameters=params if isinstance(params, dict) else {})


def _readable(doc: dict[str, Any]) -> tuple[WorkflowDefinition | None, frozenset[int], frozenset[str]]:
    """The structure of a definition that broke a field rule: each step and input validated on
    its own, those that break a rule built roughly (see ``Checked``)."""
    tasks = doc.get("tasks")
    if not isinstance(tasks, list) or not tasks or len(tasks) > MAX_STEPS:
        return None, frozenset(), frozenset()
    steps: list[StepDefinition] = []
    broken: set[int] = set()
    for i, raw in enumerate(tasks):
        try:
            steps.append(StepDefinition.model_validate(raw))
        except ValidationError:
            steps.append(_rough_step(raw, i))
            broken.add(i)
    inputs: dict[str, InputSpec] = {}
    broken_inputs: set[str] = set()
    raw_inputs = doc.get("inputs")
    if isinstance(raw_inputs, dict):
        for name, spec in raw_inputs.items():
            try:
                inputs[name] = InputSpec.model_validate(spec)
            except ValidationError:
                inputs[name] = InputSpec.model_construct()
                broken_inputs.add(name)
    # Only the structure is read from it (definition_problems): the name is not.
    defn = WorkflowDefinition.model_construct(name="", tasks=tuple(steps), inputs=inputs)
    return defn, frozenset(broken), frozenset(broken_inputs)


def check_definition(doc: Any, prefix: Loc = ()) -> Checked:
    """Every problem of the definition document ``doc``, as 422 items located under ``prefix``:
    its field errors first, then its structural problems (found on what could be read of it even
    when some fields are wrong)."""
    if not isinstance(doc, dict):
        what = "null" if doc is None else type(doc).__name__
        return Checked(None, [error_item(prefix, "model_type", "a workflow definition is a mapping of name, "
                                         f"tasks and the other keys of the format, not {what}", doc)])
    try:
        fields_only = _FieldsOnly.model_validate(doc)
    except ValidationError as exc:
        # A step that breaks a rule is left out of the tuple pydantic counts, which then also reports
        # the steps as too few: said of steps that are there, that would only mislead.
        problems = [p for p in field_errors(exc, prefix)
                    if not (p["type"] == "too_short" and tuple(p["loc"]) == (*prefix, "tasks")
                            and isinstance(doc.get("tasks"), list) and doc["tasks"])]
        readable, broken_steps, broken_inputs = _readable(doc)
    else:
        problems = []
        readable, broken_steps, broken_inputs = fields_only, frozenset(), frozenset()
    if readable is not None:
        for p in definition_problems(readable):
            problems.append(error_item((*prefix, *p.loc), p.type, p.msg, _value_at(doc, p.loc)))
    if problems:
        return Checked(None, problems, readable, broken_steps, broken_inputs)
    defn = WorkflowDefinition.model_construct(_fields_set=fields_only.model_fields_set, **dict(fields_only))
    return Checked(defn, [], defn)


def inputs_problems(checked: Checked, inputs: dict[str, Any], prefix: Loc) -> list[dict[str, Any]]:
    """Problems of a run's ``inputs`` for the definition checked, located under ``prefix``
    (``("inputs", name)`` below it); inputs whose declaration is itself wrong are not judged."""
    if checked.readable is None:
        return []
    return [error_item((*prefix, *p.loc), p.type, p.msg, inputs.get(str(p.loc[-1])))
            for p in input_problems(checked.readable, inputs)
            if p.loc[-1] not in checked.broken_inputs]
