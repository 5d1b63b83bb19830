"""What ``agentbus top`` shows, as rows of text: the agents, the queue, the workflows, the event tail
and a task's audit, each turned from the API's JSON into cells.

The terminal UI and the plain text tables render the same rows, so both say the same thing and the
rules (which tasks a status filter takes, what a filter matches, how a wait is worded) are tested
once, without a terminal.

Every text a row, line or header shows is ``visible``: names, types and errors come from whoever
writes to the bus, and a control character in one must reach the terminal as something a reader
sees, never as a colour, a cursor move, a window title or a line break.

This module must never do I/O or read a clock: the time to measure ages from is passed in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.text import Text

__all__ = [
    "AGENT_COLUMNS",
    "CANDIDATE_COLUMNS",
    "OPEN_STATUSES",
    "QUEUE_COLUMNS",
    "STATUS_FILTERS",
    "TIMELINE_COLUMNS",
    "WORKFLOW_COLUMNS",
    "Row",
    "agent_rows",
    "assignment_summary",
    "candidate_rows",
    "cells",
    "event_line",
    "matches",
    "next_status",
    "relevant",
    "statuses_of",
    "task_header",
    "task_row_behind",
    "task_rows",
    "timeline_rows",
    "visible",
    "waiting_text",
    "workflow_rows",
]

AGENT_COLUMNS = ("agent", "name", "kind", "status", "load/slots", "circuit", "capabilities", "heartbeat")
QUEUE_COLUMNS = ("task", "type", "status", "prio", "agent", "tries", "age", "waiting")
WORKFLOW_COLUMNS = ("workflow", "name", "status", "progress", "done/failed/skipped", "cost", "runs for")
TIMELINE_COLUMNS = ("pos", "time", "event", "caused by", "details")
CANDIDATE_COLUMNS = ("", "agent", "score", "load", "capacity", "match", "components")

# The queue pane's status filter, in the order a key cycles through it. "open" is every task not yet
# ended, the queue proper: waiting (queued, retrying) and held by an agent (assigned, running).
OPEN_STATUSES = ("queued", "retrying", "assigned", "running")
STATUS_FILTERS = ("open", *OPEN_STATUSES, "completed", "failed", "cancelled", "all")

# Events that change what the panes show (an agent, a task, a workflow or its cost): the panes are
# read again soon after one arrives. Timers, tokens, webhooks and the like change none of them.
_RELEVANT_PREFIXES = ("Agent", "Task", "Workflow", "Circuit")
_RELEVANT_TYPES = frozenset({"CostRecorded", "BudgetExceeded", "RateLimitSet", "PoolPolicySet"})
# Payload fields an event line leaves out: the subject says them already, or they are long.
_QUIET_FIELDS = frozenset({"audit", "definition", "inputs", "data", "result", "parameters", "metadata"})
_BAR = 10
# What a terminal acts on rather than shows: the C0 controls (ESC among them), DEL, the C1 controls
# (CSI and OSC in their one-byte forms) and the Unicode line and paragraph separators.
_UNSEEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


@dataclass(frozen=True, slots=True)
class Row:
    """One line of a pane: its key (the entity id) and its cells."""

    key: str
    cells: tuple[str, ...]


def visible(text: str) -> str:
    """``text`` with each character a terminal would act on written as its escape (ESC as
    ``\\x1b``, a newline as ``\\n``), so what it says shows on one line, as it is."""
    return _UNSEEN.sub(_escape, text)


def _escape(found: re.Match[str]) -> str:
    ch = found.group()
    code = ord(ch)
    return _SHORT.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def _row(key: str, *cells: str) -> Row:
    return Row(key, tuple(visible(cell) for cell in cells))


def cells(row: Row) -> list[Text]:
    """A row's cells for a Textual table, each shown as it is: a str cell is read as markup, so a
    name like ``[/bold]`` (whoever registers an agent chooses its name) would stop the app, and
    ``[link=...]`` would style itself and link where its author wants."""
    return [Text(cell) for cell in row.cells]


def statuses_of(choice: str) -> tuple[str, ...] | None:
    """The task statuses a status filter shows; None for all of them."""
    if choice == "all":
        return None
    if choice == "open":
        return OPEN_STATUSES
    return (choice,)


def next_status(choice: str) -> str:
    """The status filter after ``choice`` (the key that cycles it wraps around)."""
    i = STATUS_FILTERS.index(choice) if choice in STATUS_FILTERS else -1
    return STATUS_FILTERS[(i + 1) % len(STATUS_FILTERS)]


def matches(cells: Iterable[str], text: str) -> bool:
    """Whether a row shows every word of ``text`` somewhere in its cells (case does not matter)."""
    words = text.lower().split()
    if not words:
        return True
    line = " ".join(cells).lower()
    return all(w in line for w in words)


def relevant(event_type: str) -> bool:
    """Whether an event of this type changes what the agents, queue or workflows pane shows."""
    return event_type.startswith(_RELEVANT_PREFIXES) or event_type in _RELEVANT_TYPES


# --- cells ----------------------------------------------------------------------------------------


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _clock(value: Any) -> str:
    """HH:MM:SS of an RFC 3339 time (UTC, as the API gives it); empty when there is none."""
    moment = _time(value)
    return "" if moment is None else moment.strftime("%H:%M:%S")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
    return f"{seconds // 86400:.0f}d{seconds % 86400 // 3600:02.0f}h"


def _age(value: Any, now: datetime) -> str:
    moment = _time(value)
    return "" if moment is None else _duration((now - moment).total_seconds())


def _number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") if value else "0"
    return str(value)


def _scalar(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_scalar(v) for v in value)
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    return str(value)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


# --- the panes ------------------------------------------------------------------------------------


def agent_rows(agents: Sequence[Mapping[str, Any]], now: datetime) -> list[Row]:
    """The agents pane: status (with health), tasks held of its slots, breaker, last heartbeat."""
    rows = []
    for a in agents:
        status = str(a.get("status", ""))
        if a.get("healthy") is False and status != "deregistered":
            status = f"unhealthy ({a.get('unhealthy_reason') or 'no heartbeat'})"
        circuit = str(a.get("circuit") or "")
        if circuit != "closed" and a.get("circuit_until"):
            circuit = f"{circuit} until {_clock(a.get('circuit_until'))}"
        rows.append(_row(
            str(a["agent_id"]),
            str(a["agent_id"]), str(a.get("name", "")), str(a.get("kind", "")), status,
            f"{a.get('load', 0)}/{a.get('capacity', 0)}", circuit,
            ",".join(str(c) for c in a.get("capabilities") or ()),
            _age(a.get("last_heartbeat_at") or a.get("registered_at"), now),
        ))
    return rows


def waiting_text(reason: Mapping[str, Any] | None) -> str:
    """Why a task waits, in words: the code, then its details (``until`` as a clock time)."""
    if not reason:
        return ""
    code = str(reason.get("code", "waiting"))
    details = []
    for name, value in reason.items():
        if name in ("code", "since") or value is None or value == []:
            continue
        shown = _clock(value) if name == "until" else _scalar(value)
        details.append(f"{name}={shown}")
    return code if not details else f"{code} ({', '.join(details)})"


def task_rows(tasks: Sequence[Mapping[str, Any]], now: datetime) -> list[Row]:
    """The queue pane: a task's type, status, priority, agent, runs so far, age and why it waits."""
    rows = []
    for t in tasks:
        status = str(t.get("status", ""))
        if status == "retrying" and t.get("next_attempt_at"):
            status = f"retrying at {_clock(t.get('next_attempt_at'))}"
        rows.append(_row(
            str(t["task_id"]),
            str(t["task_id"]), str(t.get("type", "")), status, str(t.get("priority", "")),
            str(t.get("agent_id") or ""), str(t.get("attempts", 0)), _age(t.get("submitted_at"), now),
            waiting_text(t.get("waiting_reason")) or str(t.get("error") or ""),
        ))
    return rows


def _bar(done: int, total: int) -> str:
    if total <= 0:
        return "░" * _BAR + "   -"
    filled = round(_BAR * min(done, total) / total)
    return "█" * filled + "░" * (_BAR - filled) + f" {100 * done // total:3d}%"


def workflow_rows(runs: Sequence[Mapping[str, Any]]) -> list[Row]:
    """The workflows pane: each run's status, a bar of its ended steps, its counts, cost and time."""
    rows = []
    for w in runs:
        total = int(w.get("total_tasks") or 0)
        completed, failed = int(w.get("completed_tasks") or 0), int(w.get("failed_tasks") or 0)
        skipped = int(w.get("skipped_tasks") or 0)
        seconds = w.get("execution_time")
        rows.append(_row(
            str(w["execution_id"]),
            str(w["execution_id"]), f"{w.get('name', '')}@{w.get('version', '')}", str(w.get("status", "")),
            _bar(completed + failed + skipped, total), f"{completed}/{failed}/{skipped} of {total}",
            f"${float(w.get('cost_usd') or 0):.4f}",
            "" if seconds is None else _duration(float(seconds)),
        ))
    return rows


# --- the event tail -------------------------------------------------------------------------------


def _facts(data: Mapping[str, Any], skip: str | None) -> str:
    parts = []
    for name, value in data.items():
        if name in _QUIET_FIELDS or isinstance(value, dict) or value is None or value == [] or value == skip:
            continue
        parts.append(f"{name}={_scalar(value)}")
    return " ".join(parts)


def event_line(message: Mapping[str, Any]) -> str:
    """One line of the tail for an ``event`` message of the stream: time, position, type, subject,
    then the payload's short fields."""
    event = message.get("event") or {}
    subject = event.get("subject")
    data = event.get("data")
    facts = _facts(data, subject) if isinstance(data, dict) else ""
    line = (f"{_clock(event.get('time'))} {message.get('position', ''):>6} {event.get('type', '?'):<22} "
            f"{subject or '-'} {facts}")
    return _clip(visible(line).rstrip(), 240)


# --- a task's audit -------------------------------------------------------------------------------


def task_header(task: Mapping[str, Any]) -> str:
    """The task's facts above its audit: type, status, agent, runs, and why it waits or failed."""
    parts = [f"task {task.get('task_id')}", f"type {task.get('type')}", f"status {task.get('status')}",
             f"priority {task.get('priority')}", f"attempts {task.get('attempts', 0)}"]
    if task.get("agent_id"):
        parts.append(f"agent {task['agent_id']}")
    needs = task.get("required_capabilities") or []
    if needs:
        parts.append(f"requires {','.join(map(str, needs))}")
    waiting = waiting_text(task.get("waiting_reason"))
    if waiting:
        parts.append(f"waiting: {waiting}")
    if task.get("error"):
        parts.append(f"error: {task['error']}")
    return visible(" | ".join(parts))


def task_row_behind(task: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the task's row has yet to take in an event of its history: the read models follow the
    log a moment later, so a read right after an event can find the row one step behind it."""
    last = task.get("last_seq")
    if not isinstance(last, int):
        return False
    return any(isinstance(e.get("sequence"), int) and e["sequence"] > last
               and e.get("subject") == task.get("task_id") and str(e.get("type", "")).startswith("Task")
               for e in history)


def _cause(cause: Mapping[str, Any] | None) -> str:
    """Who or what made an event: the timer that fired, the coordinator's choice, the command."""
    if not cause:
        return ""
    timer, decision, command = cause.get("timer"), cause.get("decision"), cause.get("command")
    said = []
    if timer:
        said.append(f"timer {timer.get('kind')}")
    if decision:
        said.append(f"coordinator chose {decision.get('agent_id')}")
    if command:
        who = command.get("actor") or command.get("source") or ""
        said.append(f"{command.get('type') or 'command'}{f' by {who}' if who else ''}")
    return "; ".join(said)


def timeline_rows(history: Sequence[Mapping[str, Any]]) -> list[Row]:
    """A task's history, one row per event, with its cause."""
    rows = []
    for e in history:
        data = e.get("data")
        rows.append(_row(
            f"{e.get('partition', 0)}:{e.get('position')}",
            str(e.get("position", "")), _clock(e.get("time")), str(e.get("type", "")), _cause(e.get("cause")),
            _clip(visible(_facts(data, e.get("subject"))) if isinstance(data, dict) else "", 120),
        ))
    return rows


def _ranked(candidates: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(candidates, key=lambda c: -float(c.get("score") or 0.0))


def candidate_rows(assignment: Mapping[str, Any]) -> list[Row]:
    """The agents an assignment weighed, best score first; the chosen one is marked ``>``."""
    chosen = assignment.get("agent_id")
    rows = []
    for c in _ranked(assignment.get("candidates") or []):
        components = c.get("components") or {}
        rows.append(_row(
            str(c.get("agent_id")),
            ">" if c.get("agent_id") == chosen else "", str(c.get("agent_id")), _number(c.get("score")),
            _number(c.get("load")), _number(c.get("capacity")), _number(c.get("capability_match")),
            " ".join(f"{k}={_number(v)}" for k, v in components.items()),
        ))
    return rows


def assignment_summary(assignment: Mapping[str, Any]) -> str:
    """Why this agent: the strategy, where the chosen agent ranked by score, and the field it beat."""
    chosen = assignment.get("agent_id")
    ranked = _ranked(assignment.get("candidates") or [])
    lines = [f"attempt {assignment.get('attempt')} at {_clock(assignment.get('assigned_at'))} "
             f"(position {assignment.get('position')}): assigned to {chosen} by "
             f"{assignment.get('strategy') or 'the pool strategy'}"]
    ids = [c.get("agent_id") for c in ranked]
    if chosen in ids:
        rank = ids.index(chosen)
        score = _number(ranked[rank].get("score"))
        if rank == 0:
            runner_up = ""
            if len(ranked) > 1:
                second, their = ranked[1].get("agent_id"), _number(ranked[1].get("score"))
                runner_up = f", tied with {second}" if their == score else f"; next {second} at {their}"
            lines.append(f"why: the best score, {score}, of {len(ranked)} candidate(s){runner_up}")
        else:
            lines.append(f"why: score {score}, rank {rank + 1} of {len(ranked)}: the strategy "
                         f"{assignment.get('strategy') or ''} does not pick by score alone")
    elif ranked:
        lines.append(f"why: not among the {len(ranked)} candidate(s) weighed (pinned or preferred)")
    counts = [f"{name} {assignment.get(name)}" for name in ("eligible", "considered")
              if assignment.get(name) is not None]
    if assignment.get("decision_us") is not None:
        counts.append(f"decided in {_number(assignment.get('decision_us'), 1)} µs")
    for name in ("capability_gap", "preferred"):
        if assignment.get(name):
            counts.append(f"{name.replace('_', ' ')}: {','.join(map(str, assignment[name]))}")
    skipped = assignment.get("skipped") or {}
    if skipped:
        counts.append("skipped: " + ", ".join(f"{k} {v}" for k, v in skipped.items()))
    if counts:
        lines.append("; ".join(counts))
    return "\n".join(visible(line) for line in lines)
