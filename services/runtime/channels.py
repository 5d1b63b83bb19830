"""Channels of the live streams, and positions (cursors) to resume them from.

A channel names a slice of the events: ``events`` (all), ``type:<EventType>``, ``tasks``,
``agents``, ``workflows`` (events about an entity of that kind), ``task:<id>``, ``agent:<id>``,
``workflow:<id>`` (events naming that entity). ``pool/<pool>/<channel>`` is the same channel in one
pool only (``pool/blue/tasks``, ``pool/blue/task:t-1``); the API refuses a pool with ``/`` and a
channel never has one, but a log written before may hold such a pool: the last ``/`` ends it. A
task event belongs to ``workflow:<id>`` when its task is a step of that run: step tasks are named
``<run id>.<step>``, and step names have no dot.

A cursor is the last position a client holds in each partition of the events topic. In JSON it is
an integer when the topic has one partition (the offset, as ``GET /v1/events`` pages with
``after``) and an object ``{"<partition>": offset}`` otherwise; as text (an SSE id, a query
parameter) it is the integer, or ``<partition>:<offset>`` pairs joined by commas. A partition a
cursor leaves out is read from its start.

This module must never do I/O: it names channels, matches events to them and reads cursors.
"""

from __future__ import annotations

import re
from typing import Any

from contracts import DEFAULT_POOL, SYSTEM_POOL, Envelope
from contracts.base import Payload

__all__ = [
    "MAX_CHANNEL_LENGTH",
    "Channel",
    "ChannelError",
    "Cursor",
    "channel_texts",
    "cursor_json",
    "cursor_text",
    "event_keys",
    "parse_channel",
    "parse_cursor",
    "progress_keys",
    "workflow_of_task",
]

# (pool or None for every pool, channel name such as "tasks" or "task:t-1")
Channel = tuple[str | None, str]
# partition -> last position the client holds (-1: nothing yet)
Cursor = dict[int, int]

MAX_CHANNEL_LENGTH = 1000
POOL_PREFIX = "pool/"
_NAMES = frozenset({"events", "tasks", "agents", "workflows"})
_ENTITIES = frozenset({"type", "task", "agent", "workflow"})
# The entity kind of an event, from the field its type declares as its subject.
_KINDS = {"task_id": "tasks", "agent_id": "agents", "workflow_id": "workflows"}
# Workflow step names (contracts.workflows): a step task's id is "<run id>.<step>".
_STEP = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ChannelError(ValueError):
    """A channel or cursor that cannot be read; the message says what is expected."""


def parse_channel(text: object) -> Channel:
    """The channel ``text`` names; ChannelError naming the accepted forms otherwise."""
    if not isinstance(text, str) or not text or len(text) > MAX_CHANNEL_LENGTH:
        raise ChannelError(f"a channel is a string of 1 to {MAX_CHANNEL_LENGTH} characters, not {text!r}")
    pool: str | None = None
    name = text
    if text.startswith(POOL_PREFIX):
        pool, _, name = text[len(POOL_PREFIX):].rpartition("/")
        if not pool:
            raise ChannelError(f"{text!r}: a pool channel is pool/<pool>/<channel>, e.g. pool/default/tasks")
    if name in _NAMES:
        return pool, name
    kind, sep, value = name.partition(":")
    if sep and kind in _ENTITIES and value and value.strip() == value:
        return pool, name
    raise ChannelError(f"unknown channel {text!r}: use events, tasks, agents, workflows, type:<EventType>, "
                       "task:<id>, agent:<id> or workflow:<id>, optionally as pool/<pool>/<channel>")


def _text(channel: Channel) -> str:
    pool, name = channel
    return name if pool is None else f"{POOL_PREFIX}{pool}/{name}"


def channel_texts(channels: set[Channel]) -> list[str]:
    """The channels as clients write them, sorted."""
    return sorted(_text(c) for c in channels)


def workflow_of_task(task_id: str) -> str | None:
    """The run a step task belongs to, read from its id ``<run id>.<step>``; None for other ids."""
    run, dot, step = task_id.rpartition(".")
    return run if dot and run and _STEP.fullmatch(step) else None


def _scoped(pool: str, names: list[str]) -> frozenset[Channel]:
    return frozenset([(None, n) for n in names] + [(pool, n) for n in names])


def event_keys(env: Envelope) -> frozenset[Channel]:
    """Every channel ``env`` is delivered on (in every pool, and in its own). The system pool's
    events (token hashes, sealed secrets, subscriptions) only on channels that name that pool."""
    names = ["events", f"type:{env.type}"]
    data = env.data
    if isinstance(data, Payload):
        kind = _KINDS.get(data.subject_field or "")
        if kind is not None:
            names.append(kind)
        fields: Any = data.__dict__
    else:  # a type this service does not know: its fields as sent
        fields = data
    task, agent, workflow = fields.get("task_id"), fields.get("agent_id"), fields.get("workflow_id")
    if isinstance(task, str):
        names.append(f"task:{task}")
        run = workflow_of_task(task)
        if run is not None:
            names.append(f"workflow:{run}")
    if isinstance(agent, str):
        names.append(f"agent:{agent}")
    if isinstance(workflow, str):
        names.append(f"workflow:{workflow}")
    if env.pool == SYSTEM_POOL:
        return frozenset((SYSTEM_POOL, n) for n in names)
    return _scoped(env.pool, names)


def progress_keys(pool: str | None, task_id: str, workflow_id: str | None) -> frozenset[Channel]:
    """The channels a task's progress reaches: the task's, and its workflow run's."""
    names = [f"task:{task_id}"]
    run = workflow_id or workflow_of_task(task_id)
    if run is not None:
        names.append(f"workflow:{run}")
    return _scoped(pool or DEFAULT_POOL, names)


# --- cursors --------------------------------------------------------------------------------------


def parse_cursor(value: object, partitions: int, missing: int = -1) -> Cursor:
    """A cursor from an integer, its text form, or a JSON object; ChannelError when malformed.
    A partition the pairs leave out is at ``missing`` (-1: before its first event)."""
    every = dict.fromkeys(range(partitions), missing)
    if isinstance(value, bool):
        raise ChannelError(f"a position is an integer, not {value!r}")
    if isinstance(value, int):
        return {p: _position(value) for p in every}
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"-?\d{1,19}", text):
            return {p: _position(int(text)) for p in every}
        pairs: list[tuple[object, object]] = []
        for part in text.split(","):
            p, colon, o = part.strip().partition(":")
            if not colon:
                raise ChannelError(f"{value!r}: a position is an integer or <partition>:<position> pairs "
                                   "joined by commas, e.g. 0:41,1:7")
            pairs.append((p, o))
        return _pairs(every, pairs, partitions)
    if isinstance(value, dict):
        return _pairs(every, list(value.items()), partitions)
    raise ChannelError(f"a position is an integer, a string such as 0:41,1:7, or an object such as "
                       f'{{"0": 41}}, not {value!r}')


def _pairs(every: Cursor, pairs: list[tuple[object, object]], partitions: int) -> Cursor:
    out = dict(every)
    for p, o in pairs:
        try:
            partition = int(str(p))
            offset = o if isinstance(o, int) and not isinstance(o, bool) else int(str(o))
        except ValueError:
            raise ChannelError(f"partition {p!r}: position {o!r} is not an integer") from None
        if not 0 <= partition < partitions:
            raise ChannelError(f"the events topic has partitions 0 to {partitions - 1}, not {partition}")
        out[partition] = _position(offset)
    return out


def _position(offset: int) -> int:
    if not -1 <= offset < 2**63 - 1:
        raise ChannelError(f"a position is -1 (nothing yet) or an offset of the log, not {offset}")
    return offset


def cursor_json(cursor: Cursor) -> int | dict[str, int]:
    """The cursor as JSON: the offset with one partition, else ``{"<partition>": offset}``."""
    if len(cursor) == 1:
        return next(iter(cursor.values()))
    return {str(p): o for p, o in sorted(cursor.items())}


def cursor_text(cursor: Cursor) -> str:
    """The cursor as text (an SSE id): the offset with one partition, else ``p:o`` pairs."""
    if len(cursor) == 1:
        return str(next(iter(cursor.values())))
    return ",".join(f"{p}:{o}" for p, o in sorted(cursor.items()))
