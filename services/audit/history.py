"""A task's causation history: every event about it, in log order, each with what caused it.

An event is about a task when it names the task (``task_id``: its own events, its timers, costs
recorded against it) or rejects a command about it. For each one the chain is resolved from what
the log holds: the command that caused it (the event's ``causationid`` is the command's id; its
type, actor, source and position come from the commands topic), the coordinator's decision when
that command assigned the task (the ``TaskAssigned`` audit: candidates, scores, strategy), and the
timer when a timer fired it (the ``TimerFired`` of the same decision, with its ``TimerScheduled``).
A command's events are appended together, so "the same decision" is "the same command id".

The work is bounded. Events are read from the pool's partition only, starting shortly before the
task was submitted (records are found by their append time, which follows the time stamped at
ingest), at most ``SCAN_LIMIT`` records per call: ``complete`` is false when the partition goes
on, and ``next_after`` continues from there. A command is looked up the same way, near its own
time, within ``COMMAND_WINDOW`` records; one the commands topic no longer holds (or one a client
stamped with a time of its own) keeps what the event says (id, actor) and a null position.

This module must never write anything, and never interpret an event beyond naming its causes:
what the task's state was is the read models' answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import orjson

from contracts import REGISTRY, Envelope
from contracts import event_types as ev
from events import CorruptRecord, EventLog, StoredRecord
from events.codec import envelope_dict, from_record, record_type
from services.runtime.topics import Topics

__all__ = ["COMMAND_WINDOW", "SCAN_LIMIT", "about", "task_history"]

# Records of the events partition one call reads at most.
SCAN_LIMIT = 100_000
# Records of the commands partition read, from where a command's time points, to find it.
COMMAND_WINDOW = 20_000
# How much earlier than its stamped time a record may carry its append time (clocks of different
# processes, a batch appended late): the reads start this much before.
MARGIN_MS = 10_000
_PAGE = 1000
_TIMERS = frozenset({"TimerFired", "TimerScheduled"})


def about(env: Envelope, task_id: str) -> bool:
    """Whether ``env`` is about the task: it names it, or rejects a command about it."""
    data = env.data
    named = data.get("task_id") if isinstance(data, dict) else getattr(data, "task_id", None)
    if named == task_id:
        return True
    if isinstance(data, ev.CommandRejected) and env.subject == task_id:
        contract = REGISTRY.get(data.command_type)
        return contract is not None and contract.model.subject_field == "task_id"
    return False


async def task_history(log: EventLog, topics: Topics, partition: int, pool: str, task_id: str, *,
                       submitted_at: datetime | None = None, after: int | None = None) -> dict[str, Any]:
    """The task's events after ``after`` (default: from its submission) with their causes.

    ``submitted_at`` (the read model's) says where in the partition to start looking.
    """
    events = topics.events
    end = await log.end_offset(events, partition)
    if after is not None:
        scan = await _scan(log, events, partition, pool, task_id, after + 1, end)
    else:
        start = 0 if submitted_at is None else await _first_from(
            log, events, partition, _ms(submitted_at) - MARGIN_MS, end)
        scan = await _scan(log, events, partition, pool, task_id, start, end)
        if start > 0 and not scan.submitted:
            # Its submission lies before where its time pointed (a client's own time): from the start.
            scan = await _scan(log, events, partition, pool, task_id, 0, end)
    wanted = {env.causationid: env.time for _, env in scan.found if env.causationid is not None}
    commands = await _commands(log, topics.commands, partition, wanted)
    positions = {env.id: offset for offset, env in scan.found}
    items = [_item(offset, partition, env, scan, commands, positions) for offset, env in scan.found]
    return {"task_id": task_id, "pool": pool, "partition": partition, "events": items,
            "complete": scan.next >= end, "next_after": scan.next - 1}


class _Scan:
    """What one pass over the events partition found: the task's events and the causes nearby."""

    def __init__(self, start: int) -> None:
        self.found: list[tuple[int, Envelope]] = []
        self.submitted = False
        # By command id: the TimerFired and the task's TaskAssigned of that decision.
        self.fired: dict[str, tuple[int, Envelope]] = {}
        self.assigned: dict[str, tuple[int, Envelope]] = {}
        # By (timer id, generation): the arming.
        self.scheduled: dict[tuple[str, int], tuple[int, Envelope]] = {}
        self.next = start  # the first position not read


async def _scan(log: EventLog, topic: str, partition: int, pool: str, task_id: str, start: int,
                end: int) -> _Scan:
    out = _Scan(start)
    # The task id as it appears in an event's JSON: records that do not contain it are not decoded.
    needle = orjson.dumps(task_id)
    stop = min(end, start + SCAN_LIMIT)
    offset = start
    while offset < stop:
        page = await log.read(topic, partition, offset, min(_PAGE, stop - offset))
        if not page:
            offset = end  # nothing left to read (on Kafka the last offsets may be transaction markers)
            break
        records = [r for r in page if r.offset < stop]
        if not records:
            offset = stop
            break
        for rec in records:
            if rec.key == pool:
                _observe(out, rec, task_id, needle)
        offset = records[-1].offset + 1
    out.next = offset
    return out


def _observe(out: _Scan, rec: StoredRecord, task_id: str, needle: bytes) -> None:
    kind = record_type(rec)
    timer = kind is None or kind in _TIMERS
    if not timer and needle not in rec.value:
        return
    env = from_record(rec)
    data = env.data
    if isinstance(data, ev.TimerFired) and env.commandid is not None:
        out.fired[env.commandid] = (rec.offset, env)
    elif isinstance(data, ev.TimerScheduled):
        out.scheduled[(data.timer_id, data.generation)] = (rec.offset, env)
    if not about(env, task_id):
        return
    out.found.append((rec.offset, env))
    if isinstance(data, ev.TaskSubmitted):
        out.submitted = True
    elif isinstance(data, ev.TaskAssigned) and env.commandid is not None:
        out.assigned[env.commandid] = (rec.offset, env)


def _item(offset: int, partition: int, env: Envelope, scan: _Scan, commands: dict[str, tuple[int, Envelope]],
          positions: dict[str, int]) -> dict[str, Any]:
    cid = env.commandid
    return {"position": offset, "partition": partition, **envelope_dict(env), "cause": {
        "command": _command(env, commands, partition, positions),
        "decision": _decision(scan.assigned.get(cid)) if cid is not None else None,
        "timer": _timer(scan.fired.get(cid), scan) if cid is not None else None,
    }}


def _command(env: Envelope, commands: dict[str, tuple[int, Envelope]], partition: int,
             positions: dict[str, int]) -> dict[str, Any] | None:
    """The command that caused ``env``: from the commands topic, else what the event says of it."""
    cid = env.causationid
    if cid is None:
        return None
    found = commands.get(cid)
    if found is None:
        rejected = env.data.command_type if isinstance(env.data, ev.CommandRejected) else None
        return {"id": cid, "type": rejected, "time": env.time, "source": None, "actor": env.actor,
                "causationid": None, "correlationid": env.correlationid, "partition": partition,
                "position": None, "caused_by": None}
    offset, cmd = found
    cause = cmd.causationid
    return {"id": cid, "type": cmd.type, "time": cmd.time, "source": cmd.source, "actor": cmd.actor,
            "causationid": cause, "correlationid": cmd.correlationid, "partition": partition,
            "position": offset, "caused_by": None if cause is None else positions.get(cause)}


def _decision(assigned: tuple[int, Envelope] | None) -> dict[str, Any] | None:
    """The coordinator's reasoning for the assignment the event's decision made, if it made one."""
    if assigned is None:
        return None
    offset, env = assigned
    data = env.data
    assert isinstance(data, ev.TaskAssigned)
    audit = data.audit.model_dump(mode="json") if data.audit is not None else None
    return {"position": offset, "agent_id": data.agent_id, "attempt": data.attempt,
            "capability_gap": list(data.capability_gap), "audit": audit}


def _timer(fired: tuple[int, Envelope] | None, scan: _Scan) -> dict[str, Any] | None:
    """The timer whose firing made the event's decision, with its arming when it was read."""
    if fired is None:
        return None
    offset, env = fired
    data = env.data
    assert isinstance(data, ev.TimerFired)
    armed = scan.scheduled.get((data.timer_id, data.generation))
    scheduled = None
    if armed is not None:
        at, arming = armed
        plan = arming.data
        assert isinstance(plan, ev.TimerScheduled)
        scheduled = {"position": at, "time": arming.time, "delay_s": plan.delay_s,
                     "due_at": arming.time + timedelta(seconds=plan.delay_s),
                     "attempt": plan.attempt}
    return {"timer_id": data.timer_id, "kind": data.kind, "generation": data.generation, "position": offset,
            "fired_at": env.time, "task_id": data.task_id, "agent_id": data.agent_id, "scheduled": scheduled}


# --- finding records by time ----------------------------------------------------------------------


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def _first_from(log: EventLog, topic: str, partition: int, ms: int, end: int) -> int:
    """The first position below ``end`` whose record was appended at or after ``ms`` (``end`` if
    none): a binary search, as append times grow with positions."""
    lo, hi = 0, end
    while lo < hi:
        mid = (lo + hi) // 2
        records = await log.read(topic, partition, mid, 1)
        if not records or records[0].offset >= hi:
            hi = mid
        elif records[0].timestamp_ms < ms:
            lo = records[0].offset + 1
        else:
            hi = mid
    return lo


async def _commands(log: EventLog, topic: str, partition: int,
                    wanted: dict[str, datetime]) -> dict[str, tuple[int, Envelope]]:
    """The commands named in ``wanted`` (id -> time stamped), each looked for near its time."""
    found: dict[str, tuple[int, Envelope]] = {}
    if not wanted:
        return found
    end = await log.end_offset(topic, partition)
    for cid, at in sorted(wanted.items(), key=lambda item: item[1]):
        if cid in found:
            continue  # met while looking for an earlier one
        offset = await _first_from(log, topic, partition, _ms(at) - MARGIN_MS, end)
        stop = min(end, offset + COMMAND_WINDOW)
        while offset < stop and cid not in found:
            records = await log.read(topic, partition, offset, min(_PAGE, stop - offset))
            if not records:
                break
            _keep(found, wanted, records)
            offset = records[-1].offset + 1
    return found


def _keep(found: dict[str, tuple[int, Envelope]], wanted: dict[str, datetime],
          records: Iterable[StoredRecord]) -> None:
    for rec in records:
        if rec.id in wanted and rec.id not in found:
            try:
                found[rec.id] = (rec.offset, from_record(rec))
            except CorruptRecord:
                continue  # a malformed command (rejected as such): the event's own account stands
