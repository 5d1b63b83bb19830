"""The webhook reactor on its own (pure): what it issues for a delivery, with derived ids, the same on
every replay; nothing for deliveries a rebuild folds in; definitions as stored when the delivery
came."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from contracts import Envelope
from contracts import commands as c
from contracts import event_types as e
from contracts.webhooks import MappingRule
from contracts.workflows import WorkflowDefinition
from services.webhooks.reactor import WebhookReactor, failure_id, rule_id, trigger_id

T0 = datetime(2025, 1, 1, tzinfo=UTC)
DEPLOY = {"name": "deploy", "trigger": {"webhook": "gh", "event": "push"},
          "inputs": {"event": {"type": "object"}}, "tasks": [{"name": "build"}]}
RULES = [
    {"on": "push", "command": "SubmitTask", "data": {"task_id": "t-{{ payload.after }}", "type": "build"}},
    {"on": "push", "workflow": "deploy", "inputs": {"event": {"$jmespath": "@"}}},
    {"on": "push", "command": "SubmitTask", "data": {"task_id": "{{ payload.missing }}", "type": "x"}},
]


def env(pool: str, payload: Any, command_id: str) -> Envelope:
    return Envelope.trusted(id=command_id + "-e", type=type(payload).__name__, time=T0, pool=pool,
                            commandid=command_id, correlationid=command_id, data=payload)


def stored(definition: dict[str, Any]) -> Envelope:
    snapshot = WorkflowDefinition.model_validate(definition).model_dump(mode="json")
    event = e.WorkflowDefinitionRegistered(name=snapshot["name"], version=snapshot["version"],
                                           definition=snapshot, digest="d")
    return env("default", event, f"def-{snapshot['name']}-{snapshot['version']}")


def delivery(webhook_id: str, rules: list[dict[str, Any]] = RULES) -> Envelope:
    event = e.ExternalEventReceived(source="gh", webhook_id=webhook_id, event_type="push",
                                    payload={"ref": "refs/heads/main", "after": "abc"}, received_at=T0,
                                    rules=tuple(MappingRule.model_validate(r).model_dump(mode="json")
                                                for r in rules))
    return env("default", event, f"webhook:gh:{webhook_id}")


def live(*history: Envelope) -> WebhookReactor:
    reactor = WebhookReactor()
    for x in history:
        reactor.observe(x)
    reactor.live = True
    return reactor


def test_a_delivery_gives_its_rules_triggers_and_failures_with_derived_ids() -> None:
    reactor = live(stored(DEPLOY))
    reactor.observe(delivery("d1"))
    out = reactor.schedule()
    assert [a.command_id for a in out] == [rule_id("gh", "d1", 0), rule_id("gh", "d1", 1),
                                          failure_id("gh", "d1", 2), trigger_id("gh", "d1", "deploy")]
    assert {a.pool for a in out} == {"default"} and {a.correlation for a in out} == {"webhook:gh:d1"}
    task, run, failure, triggered = (a.command for a in out)
    assert isinstance(task, c.SubmitTask) and task.task_id == "t-abc"
    assert isinstance(run, c.StartWorkflow)
    assert run.inputs == {"event": {"ref": "refs/heads/main", "after": "abc"}}
    assert isinstance(failure, c.RecordWebhookMappingFailure) and failure.rule == 2
    assert "missing" in failure.error
    assert isinstance(triggered, c.StartWorkflow) and triggered.inputs == run.inputs
    assert triggered.workflow_id != run.workflow_id  # a rule's run and the trigger's are two runs
    assert reactor.schedule() == []  # issued once


def test_the_same_history_gives_the_same_commands() -> None:
    first, second = live(stored(DEPLOY)), live(stored(DEPLOY))
    for reactor in (first, second):
        reactor.observe(delivery("d1"))
    assert first.schedule() == second.schedule()


def test_deliveries_folded_in_by_a_rebuild_are_not_mapped_again() -> None:
    reactor = WebhookReactor()
    for x in (stored(DEPLOY), delivery("d1")):
        reactor.observe(x)
    reactor.live = True
    assert reactor.schedule() == []
    reactor.observe(delivery("d2"))
    assert {a.command_id for a in reactor.schedule()} >= {rule_id("gh", "d2", 0)}


def test_definitions_are_those_stored_when_the_delivery_came() -> None:
    reactor = live()
    reactor.observe(delivery("d1"))  # no definition yet: the rule fails, nothing is triggered
    early = reactor.schedule()
    assert [a.command_id for a in early] == [rule_id("gh", "d1", 0), failure_id("gh", "d1", 1),
                                            failure_id("gh", "d1", 2)]
    reactor.observe(stored(DEPLOY))
    untriggered = {**DEPLOY, "version": "2.0.0", "trigger": None}
    reactor.observe(stored({k: v for k, v in untriggered.items() if v is not None}))
    reactor.observe(delivery("d2", RULES[:1]))
    # The latest version has no trigger: only the rule.
    assert [a.command_id for a in reactor.schedule()] == [rule_id("gh", "d2", 0)]


def test_a_trigger_for_another_source_or_event_does_not_fire() -> None:
    other = {**DEPLOY, "name": "other", "trigger": {"webhook": "gh", "event": "release"}}
    anything = {**DEPLOY, "name": "any", "trigger": {"webhook": "gh"}}
    elsewhere = {**DEPLOY, "name": "elsewhere", "trigger": {"webhook": "gitlab", "event": "push"}}
    reactor = live(*(stored(d) for d in (other, anything, elsewhere)))
    reactor.observe(delivery("d1", []))
    assert [a.command_id for a in reactor.schedule()] == [trigger_id("gh", "d1", "any")]
