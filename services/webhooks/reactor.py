"""The webhook reactor: turns each verified delivery (``ExternalEventReceived``) into commands.

It rides the coordinator driver (``services.runtime.coordinator``), so it runs on the embedded
runner and on Kafka workers, per events partition, and its commands are appended with the
partition's events offset in one transaction. For each delivery it issues, in its pool:

- per rule the delivery carries (the source's rules for its event type, ``contracts.webhooks``),
  the rule's command, or the start of the latest stored version of the rule's workflow;
- the start of every stored definition of the pool (latest version) whose ``trigger`` names the
  delivery's source and event type, with the payload as its input ``event``;
- for a rule or trigger that gives no valid command, a ``RecordWebhookMappingFailure`` saying why.

Command ids are derived from (source, webhook id, rule or definition), so a command issued twice
is dropped by the decider. A delivery is mapped once: the history a rebuild folds in was mapped
before its offset was committed (with the commands, atomically), so only deliveries observed
live are mapped. Templates and expressions see the delivery only (``services.webhooks.mapping``).

Deterministic and pure: no I/O, no clock; the driver feeds events in and appends what comes out.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from contracts import Command, Envelope
from contracts import commands as c
from contracts import event_types as e
from contracts.webhooks import MappingRule
from services.webhooks.mapping import (
    MappingProblem,
    applies,
    digest,
    rule_command,
    trigger_command,
    triggered,
)
from services.workflows.reactor import Assignment

__all__ = ["ACTOR", "SOURCE", "WebhookReactor", "failure_id", "rule_id", "trigger_id"]

SOURCE = "urn:agentbus:webhooks"
ACTOR = "webhooks"


# Derived command ids: a source name has no ':', and each suffix is read from the last ':', so two
# deliveries or two rules never share one. At most 200 characters (a webhook id is at most 100).
def rule_id(source: str, webhook_id: str, index: int) -> str:
    return f"webhook.rule:{source}:{webhook_id}:{index}"


def trigger_id(source: str, webhook_id: str, name: str) -> str:
    return f"webhook.trigger:{source}:{webhook_id}:{digest(name)}"


def failure_id(source: str, webhook_id: str, what: int | str) -> str:
    which = what if isinstance(what, int) else f"wf-{digest(what)}"
    return f"webhook.failed:{source}:{webhook_id}:{which}"


class WebhookReactor:
    """Maps the deliveries of the pools of the partitions it reads."""

    def __init__(self) -> None:
        # pool -> definition name -> the snapshot of its latest stored version
        self.definitions: dict[str, dict[str, dict[str, Any]]] = {}
        self.out: list[Assignment] = []
        # False while a rebuild folds history in: those deliveries were mapped already.
        self.live = False

    def observe(self, env: Envelope) -> None:
        ev = env.data
        if type(ev) is e.WorkflowDefinitionRegistered:
            self.definitions.setdefault(env.pool, {})[ev.name] = ev.definition
        elif type(ev) is e.ExternalEventReceived and self.live:
            self._map(env, ev)

    def schedule(self) -> list[Assignment]:
        """The commands the deliveries observed since the last call give."""
        out, self.out = self.out, []
        return out

    def _map(self, env: Envelope, ev: e.ExternalEventReceived) -> None:
        pool, source, wid = env.pool, ev.source, ev.webhook_id
        definitions = self.definitions.get(pool, {})
        correlation = env.commandid or env.id
        for index, raw in enumerate(ev.rules):
            try:
                rule = MappingRule.model_validate(raw)
            except ValidationError as exc:
                self._fail(env, ev, index, None, f"rule {index} is not a rule this version reads: {exc}")
                continue
            try:
                if not applies(rule, ev.payload):
                    continue
                cmd = rule_command(ev, index, rule, definitions)
            except MappingProblem as exc:
                self._fail(env, ev, index, rule.workflow, f"rule {index} ({rule.on}): {exc}")
                continue
            self._issue(pool, rule_id(source, wid, index), cmd, correlation)
        for name in triggered(ev, definitions):
            try:
                cmd = trigger_command(ev, name, definitions[name])
            except MappingProblem as exc:
                self._fail(env, ev, name, name, f"trigger of workflow {name!r}: {exc}")
                continue
            self._issue(pool, trigger_id(source, wid, name), cmd, correlation)

    def _issue(self, pool: str, command_id: str, cmd: Command, correlation: str) -> None:
        self.out.append(Assignment(pool, command_id, cmd, correlation))

    def _fail(self, env: Envelope, ev: e.ExternalEventReceived, what: int | str, workflow: str | None,
              error: str) -> None:
        cmd = c.RecordWebhookMappingFailure(source=ev.source, webhook_id=ev.webhook_id,
                                            rule=what if isinstance(what, int) else None,
                                            workflow=workflow, error=error[:10_000])
        self._issue(env.pool, failure_id(ev.source, ev.webhook_id, what), cmd, env.commandid or env.id)
