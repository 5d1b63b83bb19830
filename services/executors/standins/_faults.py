"""What the model stand-ins share: the directives a prompt may carry to ask for a failure or a
tool call, a deterministic token count, and the record of what a server was asked.

A stand-in answers from its input alone, so a test can say what it expects without a model:

- ``[NNN]`` (a status from 400 to 599): answer that status with the API's error body;
  ``[NNN:S]`` also says "retry after S seconds" (``retry-after-ms`` and a whole-second
  ``Retry-After``); 429, 503 and 529 carry ``Retry-After: 1`` when no S is given.
- ``[slow:S]``: wait S seconds before answering (stopping early when the client goes away).
- ``[tool]`` / ``[tool:NAME]``: answer with a call of the first (or the named) tool offered.

Never a model: nothing here generates text, it only echoes. Never for production traffic.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

# Statuses that say "come back later" and so carry a Retry-After even when the prompt gives none.
DEFERRING = frozenset({429, 503, 529})
REQUESTS_KEPT = 100  # request bodies GET /_requests shows, newest last

_STATUS = re.compile(r"\[([45]\d\d)(?::(\d+(?:\.\d+)?))?\]")
_SLOW = re.compile(r"\[slow:(\d+(?:\.\d+)?)\]")
_TOOL = re.compile(r"\[tool(?::([A-Za-z0-9_.-]+))?\]")
_ANY = re.compile(rf"{_STATUS.pattern}|{_SLOW.pattern}|{_TOOL.pattern}")


@dataclass(frozen=True, slots=True)
class Directives:
    """What the text of a request asks of the stand-in."""

    status: int | None = None
    retry_after: float | None = None  # seconds, from ``[NNN:S]``
    slow: float = 0.0
    tool: str | None = None  # "" for the first tool offered; None when no tool call is asked

    def retry_headers(self) -> dict[str, str]:
        """The headers that tell a client when to come back, for a deferring answer."""
        if self.retry_after is not None:
            return {"retry-after-ms": str(round(self.retry_after * 1000)),
                    "retry-after": str(max(1, math.ceil(self.retry_after)))}
        return {"retry-after": "1"} if self.status in DEFERRING else {}


def directives(text: str) -> Directives:
    """The directives in ``text`` (the first of each kind counts)."""
    status = _STATUS.search(text)
    slow = _SLOW.search(text)
    tool = _TOOL.search(text)
    return Directives(
        status=int(status.group(1)) if status else None,
        retry_after=float(status.group(2)) if status and status.group(2) else None,
        slow=float(slow.group(1)) if slow else 0.0,
        tool=(tool.group(1) or "") if tool else None,
    )


def plain(text: str) -> str:
    """``text`` without its directives, spaces collapsed."""
    return " ".join(_ANY.sub(" ", text).split())


def tokens(text: str) -> int:
    """A deterministic token count: one token per four characters, rounded up."""
    return math.ceil(len(text) / 4)


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts/blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content
                         if isinstance(part, dict) and part.get("type") == "text")
    return ""


def arguments_for(schema: Any, text: str) -> dict[str, Any]:
    """Arguments for a tool whose JSON Schema is ``schema``, made from ``text``: each property gets
    the text, its word count, ``true``, its words, or an empty object, by its type."""
    words = text.split()
    by_type: dict[str, Any] = {"string": text, "integer": len(words), "number": float(len(words)),
                               "boolean": True, "array": words, "object": {}}
    properties = schema.get("properties", {}) if isinstance(schema, dict) else {}
    return {name: by_type.get(str(prop.get("type"))) if isinstance(prop, dict) else None
            for name, prop in properties.items()}


async def pause(seconds: float, gone: Callable[[], Awaitable[bool]]) -> None:
    """Wait ``seconds``, or less when ``gone()`` says the client has hung up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        await asyncio.sleep(min(left, 0.05))
        if await gone():
            return


class Journal:
    """How many requests a stand-in answered, by path and status, and the last bodies it got."""

    def __init__(self) -> None:
        self.by_path: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.requests: deque[dict[str, Any]] = deque(maxlen=REQUESTS_KEPT)

    def note(self, path: str, status: int, body: dict[str, Any] | None = None) -> None:
        """Count one answered request (and keep its body)."""
        self.by_path[path] += 1
        self.by_status[status] += 1
        if body is not None:
            self.requests.append(body)

    def counts(self) -> dict[str, Any]:
        return {"total": sum(self.by_path.values()), "by_path": dict(self.by_path),
                "by_status": {str(k): v for k, v in sorted(self.by_status.items())}}


def install_journal(app: FastAPI, journal: Journal) -> None:
    """``GET /_counts`` (requests answered, by path and status) and ``GET /_requests`` (the last
    request bodies, oldest first): what tests read to see what a client sent."""

    @app.get("/_counts", include_in_schema=False)
    async def counts() -> dict[str, Any]:
        return journal.counts()

    @app.get("/_requests", include_in_schema=False)
    async def requests() -> list[dict[str, Any]]:
        return list(journal.requests)
