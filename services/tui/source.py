"""Where ``agentbus top`` reads its panes from: the public HTTP API of a running server.

One ``Source`` per event loop (an ``httpx.AsyncClient`` belongs to the loop that opened it) reads a
``Snapshot`` (agents, the queue under a status filter, workflow runs, the pool's counts) and a
task's ``TaskAudit`` (its history with causes, and the coordinator's assignment audit). Whatever
goes wrong is an ``ApiError`` whose message is what the user reads: the same words as the other
client commands (``cannot reach agentbus at URL: ...``, ``HTTP 401: ...``), with what to do about
a missing token or a role too weak.

This module must never write: it sends GET requests only, and shows nothing the API does not give.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from services.tui.views import OPEN_STATUSES, statuses_of

__all__ = ["ApiError", "Snapshot", "Source", "TaskAudit", "reason"]

# Short: a refresh that hangs would freeze the panes; the next refresh tries again.
TIMEOUT_S = 10.0
# Pages of a task's history read at most (each up to the server's own page); the audit says so.
MAX_HISTORY_PAGES = 20
_HINTS = {
    401: "set AGENTBUS_TOKEN (or --token) to an API token (`agentbus tokens create`) or a JWT the "
         "server accepts",
    403: "the token's role may not read this: use a token of a role that may (reader or above)",
}


class ApiError(Exception):
    """What went wrong talking to the server, worded for the user; ``status`` is the HTTP status
    (None when the server could not be reached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def auth(self) -> bool:
        """The token is missing, unknown or too weak: trying again will not help."""
        return self.status in (401, 403)


def reason(payload: Any) -> str:
    """The server's reason, from a rejection, a validation error or any other answer (worded as the
    other client commands word it)."""
    if isinstance(payload, dict):
        if "code" in payload:
            return f"{payload['code']}: {payload.get('message', '')}"
        detail = payload.get("detail")
        if isinstance(detail, list):
            return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
        if detail is not None:
            return str(detail)
    return str(payload)[:500]


def http_error(status: int, payload: Any) -> ApiError:
    """``HTTP <status>: <reason>``, and for 401/403 what to do about it."""
    hint = _HINTS.get(status)
    return ApiError(f"HTTP {status}: {reason(payload)}" + (f" ({hint})" if hint else ""), status)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The panes' data at one moment, as the API answered it (the agents still registered)."""

    agents: list[dict[str, Any]]
    tasks: list[dict[str, Any]]
    tasks_total: int
    workflows: list[dict[str, Any]]
    workflows_total: int
    status: dict[str, Any]
    status_filter: str
    taken_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class TaskAudit:
    """A task, every event about it with its cause, and each assignment with the coordinator's
    reasoning."""

    task: dict[str, Any]
    history: list[dict[str, Any]]
    complete: bool
    assignments: list[dict[str, Any]]


class Source:
    """Reads the panes of one pool from the server at ``url``, sending ``headers`` (the token)."""

    def __init__(self, url: str, pool: str, headers: dict[str, str], *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url, self.pool = url.rstrip("/"), pool
        self._client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=TIMEOUT_S,
                                         transport=transport)

    async def __aenter__(self) -> Source:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(self, path: str, **params: Any) -> Any:
        """The JSON answer of ``GET path`` in the pool; ApiError when there is none."""
        query = {"pool": self.pool, **{k: v for k, v in params.items() if v is not None}}
        try:
            resp = await self._client.get(path, params=query)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach agentbus at {self.url}: {exc or type(exc).__name__}") from None
        try:
            payload: Any = resp.json()
        except ValueError:
            payload = resp.text
        if resp.status_code >= 400:
            raise http_error(resp.status_code, payload)
        return payload

    async def snapshot(self, status_filter: str = "open", limit: int = 200) -> Snapshot:
        """Agents, the queue under ``status_filter`` (at most ``limit`` tasks per status) and the
        newest ``limit`` workflow runs, read at once."""
        statuses = statuses_of(status_filter)
        agents, runs, status, *pages = await asyncio.gather(
            self.get("/v1/agents"),
            self.get("/v1/workflows", page_size=limit),
            self.get("/v1/system/status"),
            *(self._tasks(s, limit) for s in (statuses or (None,))),
        )
        # A task that changed status between two of the reads shows once, as first read.
        first: dict[str, dict[str, Any]] = {}
        for items, _ in pages:
            for t in items:
                first.setdefault(str(t["task_id"]), t)
        tasks = list(first.values())
        registered = [a for a in agents["items"] if a.get("status") != "deregistered"]
        return Snapshot(agents=registered, tasks=tasks, tasks_total=sum(n for _, n in pages),
                        workflows=list(runs["workflows"]), workflows_total=int(runs["total"]),
                        status=dict(status), status_filter=status_filter)

    async def _tasks(self, status: str | None, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Tasks of one status (None: any) and how many there are. Waiting and held tasks from the
        head of the queue (the first submitted go first); ended ones, and any, newest first."""
        first = await self.get("/v1/tasks", status=status, page_size=limit)
        total = int(first["total"])
        if status in OPEN_STATUSES or total <= limit:
            items = list(first["items"])
            return (items if status in OPEN_STATUSES else items[::-1]), total
        # The newest `limit`: rows total-limit .. total-1 span the page holding the first and the next.
        page = (total - limit) // limit + 1
        pages = await asyncio.gather(*(self.get("/v1/tasks", status=status, page_size=limit, page=p)
                                       for p in (page, page + 1)))
        items = [t for p in pages for t in p["items"]][-limit:]
        return items[::-1], total

    async def audit(self, task_id: str) -> TaskAudit:
        """The task, its history (up to ``MAX_HISTORY_PAGES`` pages) and its assignment audit."""
        path = f"/v1/tasks/{quote(task_id, safe='')}"
        task, assignments = await asyncio.gather(
            self.get(path), self.get("/v1/audit/assignments", task_id=task_id, limit=1000))
        events: list[dict[str, Any]] = []
        after: int | None = None
        complete = False
        for _ in range(MAX_HISTORY_PAGES):
            page = await self.get(f"{path}/history", after=after)
            events.extend(page["events"])
            complete = bool(page["complete"])
            if complete or page["next_after"] == after:
                break
            after = int(page["next_after"])
        return TaskAudit(task=dict(task), history=events, complete=complete,
                         assignments=list(assignments["items"]))
