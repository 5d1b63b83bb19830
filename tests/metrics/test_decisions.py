"""The deciders' counts: a batch counts once its events are durable, never before, and a repeated
command id counts as a duplicate (a Kafka producer's retry; SQLite refuses it at append)."""

from __future__ import annotations

from pathlib import Path

from contracts import commands as c
from events import StoredRecord, open_log
from services.domain.decider import DeciderConfig
from services.runtime.decider import PartitionDecider
from services.runtime.ingest import command_envelope
from services.runtime.metrics import REGISTRY
from services.runtime.outcomes import Outcomes
from services.runtime.topics import COMMANDS, EVENTS


def total(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_batch_counts_once_durable_and_a_repeat_as_a_duplicate(tmp_path: Path) -> None:
    log = open_log(f"sqlite:///{tmp_path}/log.db")
    await log.start()
    try:
        await log.ensure_topic(COMMANDS, 1)
        await log.ensure_topic(EVENTS, 1)
        task_type = f"type-{tmp_path.name}"
        submit = command_envelope(c.SubmitTask(task_id="t1", type=task_type), command_id="cmd-1")
        accepted = dict(type="SubmitTask", outcome="accepted")
        duplicate = dict(type="SubmitTask", outcome="duplicate")
        invalid = dict(type="invalid", code="INVALID_COMMAND")
        before = {k: total("agentbus_commands_total", **v) for k, v in
                  (("accepted", accepted), ("duplicate", duplicate))}
        before_invalid = total("agentbus_command_rejections_total", **invalid)
        before_events = total("agentbus_events_total", type="TaskSubmitted")

        # Decided but never appended: not counted.
        PartitionDecider(log, 0, Outcomes(), DeciderConfig()).decide_one(submit)
        assert total("agentbus_commands_total", **accepted) == before["accepted"]

        d = PartitionDecider(log, 0, Outcomes(), DeciderConfig())
        bad = StoredRecord(topic=COMMANDS, partition=0, offset=2, key="default", value=b"{not json",
                           id="bad-1", headers=(), timestamp_ms=0)
        await d.process([(0, submit), (1, submit), (2, bad)])
        assert total("agentbus_commands_total", **accepted) == before["accepted"] + 1
        assert total("agentbus_commands_total", **duplicate) == before["duplicate"] + 1
        assert total("agentbus_command_rejections_total", **invalid) == before_invalid + 1
        assert total("agentbus_events_total", type="TaskSubmitted") == before_events + 1
    finally:
        await log.close()
