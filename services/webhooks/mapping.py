"""How one delivery is turned into commands: a mapping rule's values resolved over its payload.

A rule's ``data`` (or ``inputs``) is JSON in which a string holding ``{{ templates }}`` is rendered
over ``{"payload": ..., "event": {"source", "type", "id", "received_at"}}`` in the sandbox of
``contracts.templates``, and an object ``{"$jmespath": "expr"}`` is replaced by the expression's
value over the payload. Each value is resolved once, from what the sender wrote: a value a
template or an expression yields is never read as a template again, so a payload cannot smuggle
one in.

Pure and deterministic: the same delivery and rule give the same command on every replay; no
I/O, no clock (``received_at`` comes from the event).
"""

from __future__ import annotations

import hashlib
from typing import Any

import jmespath  # type: ignore[import-untyped]
from jmespath.exceptions import JMESPathError  # type: ignore[import-untyped]
from pydantic import ValidationError

from contracts import REGISTRY, Command, roundtrip
from contracts import commands as c
from contracts import event_types as e
from contracts.roundtrip import Unreadable
from contracts.templates import TemplateProblem, has_template, render
from contracts.webhooks import JMESPATH_KEY, MappingRule, WorkflowTrigger
from contracts.workflows import WorkflowDefinition

__all__ = ["MappingProblem", "applies", "resolve", "rule_command", "trigger_command", "triggered"]


class MappingProblem(ValueError):
    """A rule or trigger that does not give a command for this delivery; the message says why."""


def context(ev: e.ExternalEventReceived) -> dict[str, Any]:
    """What templates read: the payload, and the delivery's source, type, id and time."""
    return {"payload": ev.payload, "event": {"source": ev.source, "type": ev.event_type, "id": ev.webhook_id,
                                             "received_at": ev.received_at.isoformat()}}


def _search(expression: str, payload: dict[str, Any]) -> Any:
    try:
        return jmespath.search(expression, payload)
    except JMESPathError as exc:
        raise MappingProblem(f"JMESPath {expression!r}: {str(exc).splitlines()[0]}") from None


def resolve(value: Any, ctx: dict[str, Any]) -> Any:
    """``value`` with its templates rendered and its ``$jmespath`` objects replaced, over ``ctx``."""
    if isinstance(value, str):
        if not has_template(value):
            return value
        try:
            return render(value, ctx)
        except TemplateProblem as exc:
            raise MappingProblem(str(exc)) from None
    if isinstance(value, dict):
        if JMESPATH_KEY in value and len(value) == 1:
            return _search(value[JMESPATH_KEY], ctx["payload"])
        return {key: resolve(item, ctx) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, ctx) for item in value]
    return value


def applies(rule: MappingRule, payload: dict[str, Any]) -> bool:
    """Whether ``rule`` applies to ``payload``: its ``when`` is absent or JMESPath-true there."""
    if rule.when is None:
        return True
    found = _search(rule.when, payload)
    return found not in (None, False, "", [], {})  # JMESPath's false values


def _checked(cmd: Command) -> Command:
    try:
        roundtrip.check(cmd)
    except Unreadable as exc:
        raise MappingProblem(f"the command would not read back: {exc}") from None
    return cmd


def _invalid(exc: ValidationError, what: str) -> MappingProblem:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    return MappingProblem(f"{what} is invalid ({where}: {err['msg']})" if where else f"{what} is invalid "
                          f"({err['msg']})")


def digest(*parts: str, size: int = 16) -> str:
    """A short, stable digest of ``parts``: derived ids that fit the envelope's 200 characters."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:size]


def _start(name: str, snapshot: dict[str, Any], workflow_id: str, inputs: dict[str, Any]) -> Command:
    try:
        definition = WorkflowDefinition.model_validate(snapshot)
        return _checked(c.StartWorkflow(workflow_id=workflow_id, definition=definition, inputs=inputs))
    except ValidationError as exc:
        raise _invalid(exc, f"the start of workflow {name!r}") from None


def rule_command(ev: e.ExternalEventReceived, index: int, rule: MappingRule,
                 definitions: dict[str, dict[str, Any]]) -> Command:
    """The command rule ``index`` of ``ev`` gives (``definitions``: the pool's stored definitions
    by name, their latest version); raises MappingProblem."""
    ctx = context(ev)
    if rule.command is not None:
        data = resolve(rule.data, ctx)
        contract = REGISTRY.get(rule.command)
        if contract is None or contract.kind != "command":
            raise MappingProblem(f"{rule.command!r} is no command of this version of agentbus")
        try:
            cmd = contract.model.model_validate(data)
            assert isinstance(cmd, Command)
            return _checked(cmd)
        except ValidationError as exc:
            raise _invalid(exc, rule.command) from None
    assert rule.workflow is not None
    snapshot = definitions.get(rule.workflow)
    if snapshot is None:
        raise MappingProblem(f"no workflow definition {rule.workflow!r} is stored in this pool")
    inputs = resolve(rule.inputs, ctx)
    workflow_id = f"{rule.workflow}-{digest(ev.source, ev.webhook_id)}-{index}"
    return _start(rule.workflow, snapshot, workflow_id, inputs)


def triggered(ev: e.ExternalEventReceived, definitions: dict[str, dict[str, Any]]) -> list[str]:
    """The names of the stored definitions (latest versions) whose trigger ``ev`` fires, sorted."""
    names = []
    for name, snapshot in definitions.items():
        raw = snapshot.get("trigger")
        if raw is None:
            continue
        try:
            trigger = WorkflowTrigger.model_validate(raw)
        except ValidationError:
            continue  # not a trigger this version reads: nothing to fire
        if trigger.webhook == ev.source and trigger.event in (None, ev.event_type):
            names.append(name)
    return sorted(names)


def trigger_command(ev: e.ExternalEventReceived, name: str, snapshot: dict[str, Any]) -> Command:
    """The start of definition ``name`` that ``ev`` triggers: the payload is its input ``event``
    when it declares one; raises MappingProblem."""
    declared = snapshot.get("inputs") or {}
    inputs = {"event": ev.payload} if "event" in declared else {}
    return _start(name, snapshot, f"{name}-{digest(ev.source, ev.webhook_id)}", inputs)
