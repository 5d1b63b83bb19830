"""What every executor is: one call to the outside world per task run, and its classified outcome.

An executor (``http_api``, ``ai_agent``, ``mcp_server``) turns a ``Call`` (the task's action and
parameters, the run's idempotency key and time limit) into an ``Outcome``: a result, or an error
that says whether running it again could help (``retryable``), or a deferral (``retry_after_s``:
the target asked us to come back later; that spends no attempt). ``call`` never raises for what
the remote side did: timeouts, refused connections, error statuses and provider errors are all
outcomes, so the host reports every run as ``CompleteTask``, ``FailTask`` or ``DeferTask``.

A run may also say how it is going while it runs (``Call.progress``: a status line, LLM token
deltas): that goes to the task's live subscribers only and is never stored; only the outcome is.

The host (``services.executors.host``) does the rest: registration, heartbeats, reading
assignments from the log, reporting, costs. This module must never do I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

# Error codes an executor reports with FailTask (``error_code``); a target's own code may be added
# after a colon (e.g. ``http_status:404``).
TIMEOUT = "timeout"
CONNECTION = "connection_error"
HTTP_STATUS = "http_status"
BAD_REQUEST = "bad_request"  # the task's action/parameters cannot make a call (never retried)
PROVIDER = "provider_error"
TOOL = "tool_error"
INTERNAL = "executor_error"


class Progress(Protocol):
    """Where a run hands its progress (a status ``message``, a text ``delta`` to append to what it is
    writing, small JSON ``data``) for the task's live subscribers. Never stored, so a subscriber
    that joins late misses it; it must return at once and never raise (a run never waits on it)."""

    def __call__(self, *, message: str | None = None, delta: str | None = None,
                 data: dict[str, Any] | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class Call:
    """One run of one task, as the executor is asked to make it."""

    task_id: str
    attempt: int
    action: str | None
    parameters: dict[str, Any]
    # Stable for the task attempt: a repeat after a crash sends the same key.
    idempotency_key: str
    timeout_s: float | None = None  # the task's own limit; None: the executor's ``timeout``
    task_type: str = ""
    # None: nobody can watch this run live (a trial, a host beside no event streams), so an
    # executor need not produce progress (ai_agent then makes one plain call, not a stream).
    progress: Progress | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Usage:
    """What a model call consumed, as the provider reported it."""

    model: str
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended. Exactly one of: ``ok`` with ``result``; deferred (``retry_after_s`` set, not
    ok); failed (``error``, ``error_code``, ``retryable``)."""

    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_code: str | None = None
    retryable: bool = True
    retry_after_s: float | None = None
    usage: Usage | None = None

    @classmethod
    def success(cls, result: dict[str, Any], usage: Usage | None = None) -> Outcome:
        return cls(ok=True, result=result, usage=usage)

    @classmethod
    def failure(cls, error: str, code: str, *, retryable: bool, usage: Usage | None = None) -> Outcome:
        return cls(ok=False, error=error, error_code=code, retryable=retryable, usage=usage)

    @classmethod
    def bug(cls, exc: Exception) -> Outcome:
        """An executor raised (a bug of ours, not the target's answer): retryable ``executor_error``."""
        return cls.failure(f"executor error: {type(exc).__name__}: {exc}"[:2000], INTERNAL, retryable=True)

    @classmethod
    def later(cls, seconds: float, error: str, code: str) -> Outcome:
        """The target asked to be called again after ``seconds`` (429/503 Retry-After, overload)."""
        return cls(ok=False, error=error, error_code=code, retryable=True, retry_after_s=seconds)


class Executor(Protocol):
    """One configured executor. ``start`` opens pools/sessions, ``close`` releases them; ``call``
    may run up to the configuration's ``capacity`` times at once and never raises for remote
    failures (a bug of ours may still raise: the host reports it as a retryable ``executor_error``)."""

    name: str

    async def start(self) -> None: ...

    async def call(self, call: Call) -> Outcome: ...

    async def close(self) -> None: ...
