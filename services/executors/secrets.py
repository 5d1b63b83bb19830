"""Secret references resolved in the executor process, and scrubbed from whatever it reports.

A configuration holds ``${env:NAME}`` (an environment variable of this process) or
``${file:PATH}`` (a file's UTF-8 text, trailing newlines dropped; ``~`` expands, a relative path
is relative to the working directory) where a credential goes (``contracts.executors``). An
executor resolves them in ``start``; one that cannot be resolved raises ``SecretError`` naming the
reference and the configuration field. ``Redactor`` replaces resolved secrets wherever they could
surface in a result or an error text (a target that echoes the request's headers, an exception).

Must never log, print or put in an exception message a resolved value: only the reference and
the field it stands in.

A configuration that came through the API rather than from the deployment's own files (a
workflow's ``agents:``, ``POST /v1/agents/test``) is started under ``guarded``: its references may
not name agentbus's own configuration, the ``AGENTBUS_*`` variables and the files of the data
directory (the sealing key, a JWT secret). Otherwise whoever may run a workflow (an operator) could
have the server send its secrets to an endpoint of their choosing, and mint an admin's token.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from contracts.executors import SECRET_REFERENCE

__all__ = ["GUARDED_ENV_PREFIX", "REDACTED", "Redactor", "SecretError", "guarded", "resolve",
           "resolve_values"]

REDACTED = "[redacted]"
# Shorter resolved values are not scrubbed: replacing every "abc" in a result would mangle it,
# and a credential that short is no secret anyway.
MIN_REDACTED_LENGTH = 6


GUARDED_ENV_PREFIX = "AGENTBUS_"
# The data directories a guarded configuration may not read files from; None: not guarded.
_GUARDED: contextvars.ContextVar[tuple[Path, ...] | None] = contextvars.ContextVar(
    "agentbus_guarded_references", default=None)


class SecretError(ValueError):
    """A reference that cannot be resolved: the message names it and the field, never a value."""


@contextlib.contextmanager
def guarded(data_dirs: Iterable[Path]) -> Iterator[None]:
    """Resolve references (in this context) as for a configuration that came through the API: none
    may name an ``AGENTBUS_*`` variable or a file inside ``data_dirs`` (see the module doc)."""
    token = _GUARDED.set(tuple(Path(d).expanduser().resolve() for d in data_dirs))
    try:
        yield
    finally:
        _GUARDED.reset(token)


def _refuse_guarded(kind: str, target: str, reference: str, field: str) -> None:
    dirs = _GUARDED.get()
    if dirs is None:
        return
    if kind == "env" and target.upper().startswith(GUARDED_ENV_PREFIX):
        raise SecretError(f"{field}: {reference} is agentbus's own configuration, which an executor "
                          "of a workflow or a trial may not reference")
    if kind == "file":
        real = Path(target).expanduser().resolve()
        if any(real == d or real.is_relative_to(d) for d in dirs):
            raise SecretError(f"{field}: {reference} is in agentbus's data directory, which an executor "
                              "of a workflow or a trial may not reference")


def _one(kind: str, target: str, field: str, environ: Mapping[str, str]) -> str:
    reference = f"${{{kind}:{target}}}"
    _refuse_guarded(kind, target, reference, field)
    if kind == "env":
        if target not in environ:
            raise SecretError(f"{field}: {reference} is not set in the executor's environment")
        return environ[target]
    path = Path(target).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"{field}: {reference} is not UTF-8 text") from None
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise SecretError(f"{field}: {reference} cannot be read ({why})") from None
    return text.rstrip("\r\n")


def resolve(text: str, field: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every reference in it replaced by its value (text without references is
    returned as it is). ``field`` names the configuration field for errors, e.g.
    ``search_api.authentication.token``."""
    env = os.environ if environ is None else environ
    return SECRET_REFERENCE.sub(lambda m: _one(m.group(1), m.group(2), field, env), text)


def resolve_values(values: Mapping[str, str], field: str,
                   environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each value of a header or environment mapping resolved (``field.NAME`` in errors)."""
    return {name: resolve(value, f"{field}.{name}", environ) for name, value in values.items()}


class Redactor:
    """Replaces known secret values in text and JSON values with ``[redacted]``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        kept = sorted({s for s in secrets if len(s) >= MIN_REDACTED_LENGTH}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, kept))) if kept else None

    def text(self, value: str) -> str:
        """``value`` with every secret replaced."""
        return value if self._pattern is None else self._pattern.sub(REDACTED, value)

    def json(self, value: Any) -> Any:
        """A JSON value with every secret in its strings (and keys) replaced."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k): self.json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.json(v) for v in value]
        return value
