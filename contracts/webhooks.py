"""Inbound webhooks: a source's name, scheme and sealed secret, and the mapping of what it sends.

A source (``PUT /v1/webhooks/{source}``) delivers into one pool. Each verified delivery becomes an
``ExternalEventReceived`` in that pool, carrying the rules of the source's mapping that apply to
its event type; the webhook reactor turns each rule into a command (``command`` with ``data``) or
a run of a stored workflow definition (``workflow`` with ``inputs``), and starts every stored
definition of the pool whose ``trigger`` names the source and event.

Values in ``data`` and ``inputs`` are resolved over the delivery: a string holding
``{{ templates }}`` (``contracts.templates``, reading ``payload`` and ``event``), or an object
``{"$jmespath": "<expression>"}`` replaced by the expression's value over the payload.

Pure: models and rules about them; no I/O. A secret is never held here in clear: the contract
only accepts it sealed (``SealedWebhookSecret``, encrypted with the deployment's key).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

import jmespath  # type: ignore[import-untyped]
from jmespath.exceptions import JMESPathError  # type: ignore[import-untyped]
from pydantic import AfterValidator, Field, TypeAdapter, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from contracts.base import Model
from contracts.templates import TemplateProblem, parameter_references
from contracts.values import JSONObject, Text

__all__ = [
    "JMESPATH_KEY",
    "MAX_RULES",
    "MAX_WEBHOOK_ID",
    "TEMPLATE_ROOTS",
    "JMESPath",
    "MappingRule",
    "SealedWebhookSecret",
    "SourceName",
    "WebhookMapping",
    "WebhookScheme",
    "WorkflowTrigger",
    "trigger_problem",
]

WebhookScheme = Literal["standard", "github"]
# A source's name is one URL path segment and part of derived command ids: no ':' in it.
SourceName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
                                  description="Letters, digits, '_', '.', '-' (at most 64).")]
# A webhook-id (Standard Webhooks) or X-GitHub-Delivery: with the source it makes the delivery's
# command id, which the envelope caps at 200 characters.
MAX_WEBHOOK_ID = 100
MAX_RULES = 50
# A secret sealed with the deployment's key (services.runtime.sealing): refused in any other form,
# so a command carrying a secret in clear is a 422 wherever it comes from, never an event.
SealedWebhookSecret = Annotated[str, Field(min_length=1, max_length=1000,
                                           pattern=r"^sealed:v1:[0-9a-f]{8}:[A-Za-z0-9_-]+={0,2}$",
                                           description="The secret sealed with the deployment's key "
                                                       "(sealed:v1:...); never the secret itself.")]
# The names a mapping's templates read: the delivery's JSON and what is known about it.
TEMPLATE_ROOTS = frozenset({"payload", "event"})
# An object with this one key is replaced by its JMESPath expression's value over the payload.
JMESPATH_KEY = "$jmespath"


def _compiles(expression: str) -> str:
    try:
        jmespath.compile(expression)
    except JMESPathError as exc:
        problem = str(exc).replace("\n", " ")
        raise PydanticCustomError("jmespath_invalid", "not a JMESPath expression: {problem}",
                                  {"problem": problem}) from None
    return expression


JMESPath = Annotated[str, Field(min_length=1, max_length=1000,
                                description="A JMESPath expression over the payload (jmespath.org)."),
                     AfterValidator(_compiles)]


def _expressions(value: Any, at: tuple[str | int, ...]) -> list[tuple[tuple[str | int, ...], Any]]:
    """Every ``{"$jmespath": ...}`` of the JSON ``value`` (its expression, or None when the object
    has other keys too), with where it is."""
    found: list[tuple[tuple[str | int, ...], Any]] = []
    if isinstance(value, dict):
        if JMESPATH_KEY in value:
            found.append((at, value[JMESPATH_KEY] if len(value) == 1 else None))
        else:
            for key, item in value.items():
                found += _expressions(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _expressions(item, (*at, index))
    return found


def _values_problem(value: dict[str, Any], field: str) -> str | None:
    """Why the templates and JMESPath expressions of ``value`` cannot be resolved, or None."""
    for at, expression in _expressions(value, ()):
        where = ".".join(map(str, (field, *at)))
        if not isinstance(expression, str):
            return f"{where}: an object with {JMESPATH_KEY!r} has that one key, a JMESPath expression"
        try:
            jmespath.compile(expression)
        except JMESPathError as exc:
            return f"{where}: not a JMESPath expression: {str(exc).splitlines()[0]}"
    try:
        for at, path in parameter_references(value):
            if path[0] not in TEMPLATE_ROOTS:
                where = ".".join(map(str, (field, *at)))
                return f"{where}: a template reads payload or event, not {path[0]!r}"
    except TemplateProblem as exc:
        return f"{field}: {exc}"
    return None


@functools.cache
def _workflow_names() -> TypeAdapter[str]:
    from contracts.workflows import WorkflowName  # the workflows module imports our trigger

    return TypeAdapter(WorkflowName)


def _workflow_name_problem(name: str) -> bool:
    try:
        _workflow_names().validate_python(name)
    except ValidationError:
        return True
    return False


# Commands a mapping may not issue: those that configure or feed webhooks themselves.
_NOT_MAPPED = frozenset({"SetWebhookSource", "DeleteWebhookSource", "ReceiveExternalEvent",
                         "RecordWebhookMappingFailure"})


class MappingRule(Model):
    """What one kind of delivery does: a command, or a run of a stored workflow definition."""

    on: Text = Field(min_length=1, max_length=200,
                     description="The event type it applies to ('*': every event of the source).")
    when: JMESPath | None = Field(None, description="Applies only when this expression over the payload "
                                                    "is true (JMESPath truthiness).")
    command: Text | None = Field(None, min_length=1, max_length=200,
                                 description="The command to issue, by type name (e.g. SubmitTask).")
    data: JSONObject = Field(default_factory=dict, description="The command's payload; strings may hold "
                             "{{ templates }} over payload and event, and an object {\"$jmespath\": "
                             "\"expr\"} is replaced by the expression's value over the payload.")
    workflow: Text | None = Field(None, min_length=1, max_length=100,
                                  description="Start the latest stored version of this workflow "
                                              "definition (of the source's pool).")
    inputs: JSONObject = Field(default_factory=dict,
                               description="The run's inputs (with workflow), resolved as data is.")

    @model_validator(mode="after")
    def _one_action(self) -> MappingRule:
        if (self.command is None) == (self.workflow is None):
            raise ValueError("a rule has either command (with data) or workflow (with inputs)")
        if self.command is not None:
            from contracts.registry import REGISTRY  # the registry imports the commands, which import us

            known = REGISTRY.get(self.command)
            if known is None or known.kind != "command" or self.command in _NOT_MAPPED:
                raise ValueError(f"command {self.command!r} is not a command a mapping can issue")
            if self.inputs:
                raise ValueError("inputs go with workflow; a command takes data")
        else:
            if _workflow_name_problem(self.workflow or ""):
                raise ValueError(f"workflow {self.workflow!r} is not a workflow definition's name")
            if self.data:
                raise ValueError("data goes with command; a workflow takes inputs")
        problem = _values_problem(self.data, "data") or _values_problem(self.inputs, "inputs")
        if problem is not None:
            raise ValueError(problem)
        return self


class WebhookMapping(Model):
    """How a source's deliveries become commands: their event type, and the rules per type."""

    event_type: JMESPath = Field("type", description="Standard Webhooks: where the payload names its "
                                                     "event type (GitHub: the X-GitHub-Event header).")
    rules: tuple[MappingRule, ...] = Field(default=(), max_length=MAX_RULES)

    def matching(self, event_type: str) -> tuple[MappingRule, ...]:
        """The rules that apply to deliveries of ``event_type``, in order."""
        return tuple(r for r in self.rules if r.on in (event_type, "*"))


class WorkflowTrigger(Model):
    """A stored workflow definition starts when its pool receives this source's event."""

    webhook: SourceName = Field(description="The webhook source (PUT /v1/webhooks/{source}).")
    event: Text | None = Field(None, min_length=1, max_length=200,
                               description="The event type (absent: every event of the source).")


def trigger_problem(trigger: WorkflowTrigger | None, inputs: dict[str, Any]) -> str | None:
    """Why a definition with ``trigger`` and ``inputs`` (name -> InputSpec) cannot be started by it,
    or None. A triggered run gets one input, ``event`` (the payload): it must be an object if
    declared, and no other input may be required without a default."""
    if trigger is None:
        return None
    event = inputs.get("event")
    if event is not None and event.type != "object":
        return "trigger: the input 'event' receives the payload, an object; declare it type: object"
    needed = [name for name, spec in inputs.items()
              if name != "event" and spec.required and spec.default is None]
    if needed:
        return (f"trigger: a triggered run gets only the input 'event'; {', '.join(needed)} must not be "
                "required")
    return None
