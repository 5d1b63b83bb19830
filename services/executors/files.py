"""Reading an executors file (YAML or JSON) into ``contracts.executors.ExecutorsFile``, with every
problem named by where it is: ``line 9: agents[0].authentication.token: ...``.

``parse_executors`` is pure. ``load_executors`` reads the one file its caller names, and nothing
else, so that the CLI, ``serve``, workflows and tests read a file the same way.
Must never print a value it refused (a literal secret may be among them): problems carry the
location and pydantic's message only. Never resolves a secret reference (the executors do, when
they start).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from contracts.executors import ExecutorsFile, ExecutorsFileError

__all__ = ["load_executors", "parse_executors"]

_SUFFIXES = (".yaml", ".yml", ".json")
_AGENT_TYPES = frozenset({"http_api", "ai_agent", "mcp_server"})
_AUTH_TYPES = frozenset({"bearer", "api_key", "basic"})


def load_executors(text_or_path: str | os.PathLike[str]) -> ExecutorsFile:
    """The executors file at a path (a ``Path``, or a one-line string ending in .yaml, .yml or
    .json), or in the text given."""
    if isinstance(text_or_path, os.PathLike) or (
            "\n" not in text_or_path and text_or_path.lower().endswith(_SUFFIXES)):
        path = Path(text_or_path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ExecutorsFileError(str(path), [f"cannot be read: {exc}"]) from None
        return parse_executors(text, str(path))
    return parse_executors(text_or_path)


def parse_executors(text: str, source: str = "<text>") -> ExecutorsFile:
    """The executors file in ``text``: JSON when it starts with '{', else YAML."""
    document = _document(text, source)
    if not isinstance(document, dict):
        raise ExecutorsFileError(source, ["the file must be a mapping with agents: [...]"])
    try:
        return ExecutorsFile.model_validate(document)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(len(e["loc"]) > 1 for e in errors):
            # pydantic also counts the agents that did validate against min_length: noise.
            errors = [e for e in errors if not (e["type"] == "too_short" and e["loc"] == ("agents",))]
        root = _yaml_root(text)
        problems = []
        for err in errors:
            loc = _document_loc(err["loc"])
            line = _line(root, loc)
            where = f"line {line}: " if line is not None else ""
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}{_dotted(loc) or '(top)'}: {msg}")
        raise ExecutorsFileError(source, problems) from None


def _document(text: str, source: str) -> Any:
    if text.lstrip().startswith("{"):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ExecutorsFileError(source, [f"line {exc.lineno}, column {exc.colno}: {exc.msg}"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = exc.problem or exc.context or "does not parse"
        raise ExecutorsFileError(source, [f"{where}{what}"]) from None
    except yaml.YAMLError as exc:
        raise ExecutorsFileError(source, [str(exc)]) from None


def _document_loc(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """A pydantic location as a path into the document: without the union tags pydantic adds
    (``agents.0.http_api.authentication.bearer.token`` is ``agents[0].authentication.token``)."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        before = loc[i - 1] if i else None
        if part in _AGENT_TYPES and isinstance(before, int) and loc[:1] == ("agents",) and i == 2:
            continue
        if part in _AUTH_TYPES and before == "authentication":
            continue
        out.append(part)
    return tuple(out)


def _dotted(loc: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _yaml_root(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None


def _line(node: yaml.Node | None, loc: tuple[str | int, ...]) -> int | None:
    """The 1-based line of the deepest part of ``loc`` found in the document's node tree."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line
