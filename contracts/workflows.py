"""Workflow definitions: the YAML/JSON users write, validated, with every problem located.

A definition is a DAG of steps (``tasks``): each is a task for an agent (by capabilities or pinned
with ``agent_name``) or a ``signal`` that waits for ``POST /v1/workflows/{id}/signals/{name}``.
``definition_problems`` finds what pydantic's field checks cannot: unknown or duplicate names,
cycles, templates that read a step that is not upstream. ``input_problems`` checks the inputs a
run is started with. Both answer located problems (a path and a message), so an API can list
every one of them at once.

Pure: data and rules about data; no I/O.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from contracts.base import Model
from contracts.envelope import derived_id
from contracts.executors import ExecutorConfig
from contracts.money import MAX_LIMIT_USD
from contracts.scheduling import RetryConfig, Strategy
from contracts.values import Capabilities, Id, JSONObject, Text
from contracts.webhooks import WorkflowTrigger, trigger_problem

# A step's name is an identifier: templates read ``tasks.<name>.result`` by it, and a step's task
# id is ``<workflow id>.<name>``.
MAX_STEP_NAME = 64
StepName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_STEP_NAME,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="A letter or '_', then letters, digits or '_' (at most 64).",
    ),
]
WorkflowName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
        description="Letters, digits, '_', '.', '-' (at most 100).",
    ),
]
Version = Annotated[str, Field(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")]
# A workflow id leaves room for ``.<step name>`` in the 200 characters of a task id.
MAX_WORKFLOW_ID = 120
MAX_STEPS = 500
MAX_INPUTS = 100
MAX_WORKFLOW_AGENTS = 20
MAX_WORKFLOW_SECONDS = 30 * 86_400.0  # a global timeout of at most 30 days
MAX_SIGNAL_SECONDS = 30 * 86_400.0

FailureStrategy = Literal["stop_on_first_failure", "continue_on_failure", "partial_completion_allowed"]
WorkflowStatus = Literal[
    "queued", "running", "completed", "partially_completed", "failed", "cancelled", "timed_out"
]
FINAL_STATUSES: frozenset[str] = frozenset(
    {"completed", "partially_completed", "failed", "cancelled", "timed_out"}
)
# A step: ``pending`` until its dependencies are done; then its task's status (``queued``,
# ``assigned``, ``running``, ``retrying``) or, for a signal, ``waiting``; it ends ``completed``,
# ``failed``, ``cancelled`` or ``skipped``.
StepStatus = Literal[
    "pending",
    "queued",
    "assigned",
    "running",
    "retrying",
    "waiting",
    "completed",
    "failed",
    "cancelled",
    "skipped",
]
InputType = Literal["string", "number", "integer", "boolean", "object", "array"]

class InputSpec(Model):
    """One input a run must (or may) be given."""

    type: InputType = "string"
    required: bool = False
    default: Any = None
    description: Text | None = Field(default=None, max_length=2000)


class StepDefinition(Model):
    """One step of a workflow: a task for an agent, or a signal to wait for."""

    name: StepName
    type: Literal["task", "signal"] = "task"
    description: Text | None = Field(default=None, max_length=2000)
    depends_on: tuple[StepName, ...] = Field(default=(), max_length=MAX_STEPS)
    # -- task steps
    action: Text | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="What the agent is asked to do; the task's type (default: the step name).",
    )
    required_capabilities: Capabilities = ()
    agent_name: Id | None = Field(default=None, description="Pin the step to this agent (its id or name).")
    parameters: JSONObject = Field(
        default_factory=dict, description="Passed to the agent; strings may hold {{ templates }}."
    )
    priority: int = Field(default=5, ge=1, le=10)
    strategy: Strategy | None = None
    retry_config: RetryConfig | None = None
    continue_on_failure: bool = Field(
        default=False,
        description="A failure of this step neither fails the workflow nor "
        "stops its dependents (its error is theirs to read).",
    )
    # -- both: seconds a run (a task) or the wait (a signal) may take
    timeout: float | None = Field(default=None, gt=0, le=MAX_SIGNAL_SECONDS)

    @model_validator(mode="after")
    def _kind_fields(self) -> StepDefinition:
        if self.type == "signal":
            task_only = [
                f
                for f in ("action", "agent_name", "retry_config", "strategy")
                if getattr(self, f) is not None
            ]
            task_only += [f for f in ("required_capabilities", "parameters") if getattr(self, f)]
            if task_only:
                raise ValueError(f"a signal step takes no {', '.join(task_only)}")
        elif self.timeout is not None and self.timeout > 7 * 86_400:
            raise ValueError("a task step's timeout is at most 604800 seconds (7 days)")
        return self


class WorkflowDefinition(Model):
    """A workflow: its steps and how they run together."""

    name: WorkflowName
    version: Version = "1.0.0"
    description: Text | None = Field(default=None, max_length=10_000)
    parallel_execution: bool = Field(default=True, description="Run independent steps at once.")
    max_parallel: int = Field(
        default=10, ge=1, le=MAX_STEPS, description="At most this many steps of one run in flight."
    )
    failure_strategy: FailureStrategy = "stop_on_first_failure"
    global_timeout: float | None = Field(
        default=None, gt=0, le=MAX_WORKFLOW_SECONDS, description="Seconds the whole run may take."
    )
    cost_budget: float | None = Field(
        default=None,
        ge=0,
        le=MAX_LIMIT_USD,
        description="USD; once spent, no new step starts (BUDGET_EXCEEDED).",
    )
    inputs: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=MAX_STEP_NAME)], InputSpec
    ] = Field(default_factory=dict, max_length=MAX_INPUTS)
    tasks: tuple[StepDefinition, ...] = Field(min_length=1, max_length=MAX_STEPS)
    agents: tuple[ExecutorConfig, ...] = Field(
        default=(),
        max_length=MAX_WORKFLOW_AGENTS,
        description="Executors this workflow brings (same format as an executors file): hosted by the "
        "server while the workflow runs; steps reach them by capabilities or agent_name.",
    )
    # Left out of the snapshot when absent, so definitions stored without one keep their digest.
    trigger: WorkflowTrigger | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="Start a run when the definition's pool receives this webhook source's event "
        "(the payload is the input 'event').",
    )

    @model_validator(mode="after")
    def _sound(self) -> WorkflowDefinition:
        problems = definition_problems(self)
        if problems:
            raise ValueError("; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems[:10]))
        return self

    @model_validator(mode="after")
    def _no_worker_processes(self) -> WorkflowDefinition:
        for i, agent in enumerate(self.agents):
            if agent.processes:
                raise ValueError(f"agents.{i}.processes: worker processes are chosen where executors are "
                                 "deployed (an executors file for agentbus serve or agentbus executor run), "
                                 "not by a workflow")
        return self

    @model_validator(mode="after")
    def _triggerable(self) -> WorkflowDefinition:
        problem = trigger_problem(self.trigger, self.inputs)
        if problem is not None:
            raise ValueError(problem)
        return self

    def step(self, name: str) -> StepDefinition:
        """The step called ``name`` (KeyError when there is none)."""
        for s in self.tasks:
            if s.name == name:
                return s
        raise KeyError(name)


class Problem(Model):
    """One thing wrong with a definition or a run's inputs, at ``loc`` (a path into the document)."""

    loc: tuple[str | int, ...]
    msg: str
    type: str = "workflow_invalid"


def definition_problems(defn: WorkflowDefinition) -> list[Problem]:
    """Every structural problem of ``defn``, located: duplicate step names, ``depends_on`` naming
    no step or the step itself, cycles (named, e.g. ``a -> b -> a``), templates in ``parameters``
    that do not parse, that read something other than ``inputs.<declared input>`` or
    ``tasks.<name>.result|error|status`` of a step upstream (a transitive dependency).
    An empty list: the definition is sound."""
    from contracts.workflow_checks import structural_problems

    return structural_problems(defn)


def input_problems(defn: WorkflowDefinition, inputs: dict[str, Any]) -> list[Problem]:
    """Problems of ``inputs`` for a run of ``defn``: a required input missing, an undeclared one,
    a value not of its declared type. Located under ``("inputs", name)``."""
    from contracts.workflow_checks import run_input_problems

    return run_input_problems(defn, inputs)


def with_defaults(defn: WorkflowDefinition, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` with each declared input's default filled in where it was not given: absent, or
    null, which ``input_problems`` counts as not given (so a template never reads a null the
    definition has a default for). An input without a default stays as it was sent."""
    out = dict(inputs)
    for name, spec in defn.inputs.items():
        if out.get(name) is None and spec.default is not None:
            out[name] = spec.default
    return out


def step_task_id(workflow_id: str, step: str) -> str:
    """The id of the task that runs ``step`` of ``workflow_id``."""
    return f"{workflow_id}.{step}"


def step_command_id(workflow_id: str, step: str, attempt: int = 1) -> str:
    """The command id of a step's submission: the same on every replay, so a restart never submits
    a step twice."""
    return derived_id("wf", workflow_id, step, attempt)


__all__ = [
    "FINAL_STATUSES",
    "MAX_WORKFLOW_ID",
    "FailureStrategy",
    "InputSpec",
    "Problem",
    "RetryConfig",
    "StepDefinition",
    "StepName",
    "StepStatus",
    "WorkflowDefinition",
    "WorkflowStatus",
    "definition_problems",
    "input_problems",
    "step_command_id",
    "step_task_id",
    "with_defaults",
]
