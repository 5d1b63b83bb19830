"""Who may do what: roles, the permission of every route of the API, and of every command.

``PERMISSIONS`` names the permission each route needs, keyed by (method, route path) as the app
declares it (``WS`` for a WebSocket route, ``*`` for a mounted app); ``ROLE_PERMISSIONS`` what each
role holds. A write is checked twice: its route, then the command it appends
(``authorize_command``), so ``POST /v1/commands`` is no way around a route's permission. The
agent role holds some permissions for itself only (``SELF_SCOPED``): a command naming another
agent is refused, and a task report is made in its own name so that the decider refuses it
unless that agent holds the task (``WRONG_AGENT``).

Pure: no I/O. A route or a command missing from these tables needs ``system``, which only admins
hold (fail closed); the tests walk ``app.routes`` so that none is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from contracts import Command
from contracts.commands import ROLES

__all__ = [
    "COMMAND_PERMISSIONS",
    "OPEN",
    "PERMISSIONS",
    "ROLES",
    "ROLE_PERMISSIONS",
    "SELF_SCOPED",
    "SIGNED",
    "Forbidden",
    "Principal",
    "authorize_command",
    "command_permission",
    "missing",
]

# Routes anyone may call, and routes that authenticate their caller themselves (a signature).
OPEN: Final = "open"
SIGNED: Final = "signed"

READ = "read"
# What the agent role may do for itself only; operators and admins for anyone.
SELF_SCOPED: frozenset[str] = frozenset({
    "agents:register", "agents:heartbeat", "tasks:report", "tasks:progress", "costs:record",
})
_AGENT = frozenset({READ, "commands:send", *SELF_SCOPED})
_OPERATOR = _AGENT | {"tasks:submit", "tasks:manage", "agents:manage", "pools:manage", "workflows:run",
                      "subscriptions:manage", "executors:test"}
_ADMIN = _OPERATOR | {"tokens:manage", "webhooks:manage", "audit:checkpoint", "system"}
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "reader": frozenset({READ}),
    "agent": _AGENT,
    "operator": _OPERATOR,
    "admin": _ADMIN,
}
assert set(ROLE_PERMISSIONS) == set(ROLES)

_READS = ("/v1/agents", "/v1/agents/{agent_id}", "/v1/agents/{agent_id}/performance", "/v1/tasks",
          "/v1/tasks/{task_id}", "/v1/resources", "/v1/costs/summary", "/v1/audit/rejections",
          "/v1/scaling/policies", "/v1/scaling/decisions", "/v1/metrics/load-balancing", "/v1/capacity",
          "/v1/timers", "/v1/workflows", "/v1/workflows/{workflow_id}", "/v1/workflows/{workflow_id}/status",
          "/v1/workflow-definitions", "/v1/workflow-definitions/{name}", "/v1/system/status", "/v1/budgets",
          "/v1/prices", "/v1/events", "/v1/audit/assignments", "/v1/events/stream", "/v1/events/export",
          "/metrics", "/v1/audit/verify", "/v1/tasks/{task_id}/history", "/v1/auth/me")

PERMISSIONS: dict[tuple[str, str], str] = {
    # The documentation and the health check: open, so a load balancer and a browser need nothing.
    ("GET", "/openapi.json"): OPEN,
    ("*", "/docs/assets"): OPEN,
    ("GET", "/docs"): OPEN,
    ("GET", "/docs/oauth2-redirect"): OPEN,
    ("GET", "/redoc"): OPEN,
    ("GET", "/v1/health"): OPEN,
    # The dashboard's page and assets (no data: it reads the API with the user's own token).
    ("*", "/ui"): OPEN,
    ("GET", "/"): OPEN,
    **{("GET", path): READ for path in _READS},
    ("WS", "/ws/v1/events"): READ,
    # Writes: the route's permission, then the command's (``authorize_command``).
    ("POST", "/v1/agents"): "agents:register",
    ("POST", "/v1/agents/{agent_id}/heartbeat"): "agents:heartbeat",
    ("DELETE", "/v1/agents/{agent_id}"): "agents:manage",
    ("POST", "/v1/agents/test"): "executors:test",
    ("POST", "/v1/tasks"): "tasks:submit",
    ("POST", "/v1/tasks/{task_id}/start"): "tasks:report",
    ("POST", "/v1/tasks/{task_id}/complete"): "tasks:report",
    ("POST", "/v1/tasks/{task_id}/fail"): "tasks:report",
    ("POST", "/v1/tasks/{task_id}/cancel"): "tasks:manage",
    ("POST", "/v1/tasks/{task_id}/progress"): "tasks:progress",
    ("PUT", "/v1/resources/limits"): "pools:manage",
    ("POST", "/v1/resources/allocations"): "agents:manage",
    ("DELETE", "/v1/resources/allocations/{allocation_id}"): "agents:manage",
    ("POST", "/v1/costs"): "costs:record",
    ("PUT", "/v1/budgets"): "pools:manage",
    ("PUT", "/v1/pools/policy"): "pools:manage",
    ("PUT", "/v1/rate-limits"): "pools:manage",
    ("PUT", "/v1/scaling/policies"): "pools:manage",
    ("PUT", "/v1/prices"): "pools:manage",
    ("POST", "/v1/commands"): "commands:send",
    ("POST", "/v1/workflows"): "workflows:run",
    ("DELETE", "/v1/workflows/{workflow_id}"): "workflows:run",
    ("POST", "/v1/workflows/{workflow_id}/signals/{name}"): "workflows:run",
    ("PUT", "/v1/workflow-definitions/{name}"): "workflows:run",
    ("GET", "/v1/tokens"): "tokens:manage",
    ("POST", "/v1/tokens"): "tokens:manage",
    ("DELETE", "/v1/tokens/{token_id}"): "tokens:manage",
    # Inbound webhooks carry their sender's signature, checked by the webhook route itself.
    ("POST", "/v1/webhooks/{source}"): SIGNED,
    ("GET", "/v1/webhooks"): "webhooks:manage",
    ("GET", "/v1/webhooks/{source}"): "webhooks:manage",
    ("PUT", "/v1/webhooks/{source}"): "webhooks:manage",
    ("DELETE", "/v1/webhooks/{source}"): "webhooks:manage",
    ("GET", "/v1/subscriptions"): "subscriptions:manage",
    ("GET", "/v1/subscriptions/{name}"): "subscriptions:manage",
    ("PUT", "/v1/subscriptions/{name}"): "subscriptions:manage",
    ("DELETE", "/v1/subscriptions/{name}"): "subscriptions:manage",
    ("GET", "/v1/subscriptions/{name}/failures"): "subscriptions:manage",
}

# The permission each command needs, whichever route appends it, by type name. Commands the
# service's own reactors issue (assignments, timers, scaling decisions, delivery failures...)
# are not in it: ``system``.
_COMMANDS: dict[str, tuple[str, ...]] = {
    "agents:register": ("RegisterAgent",),
    "agents:heartbeat": ("AgentHeartbeat",),
    "agents:manage": ("DeregisterAgent", "AllocateResources", "ReleaseResources"),
    "tasks:submit": ("SubmitTask",),
    "tasks:report": ("StartTask", "CompleteTask", "FailTask", "DeferTask"),
    "tasks:manage": ("CancelTask",),
    "costs:record": ("RecordCost",),
    "pools:manage": ("SetResourceLimits", "SetBudget", "SetPoolPolicy", "SetRateLimit", "SetScalingPolicy",
                     "SetPrices"),
    "workflows:run": ("StartWorkflow", "CancelWorkflow", "SignalWorkflow", "RegisterWorkflowDefinition"),
    "subscriptions:manage": ("SetSubscription", "DeleteSubscription"),
    "tokens:manage": ("IssueApiToken", "RevokeApiToken"),
    "webhooks:manage": ("SetWebhookSource", "DeleteWebhookSource"),
    # Signed with a key the server never holds: the CLI signs, an admin appends.
    "audit:checkpoint": ("RecordAuditCheckpoint",),
}
COMMAND_PERMISSIONS: dict[str, str] = {
    command: permission for permission, commands in _COMMANDS.items() for command in commands
}
# The field naming the agent a self-scoped command is about.
_AGENT_FIELD = "agent_id"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an API token (``kind`` "token") or a JWT's subject ("jwt"), with its role."""

    kind: str
    id: str
    role: str
    agent_id: str | None = None

    @property
    def permissions(self) -> frozenset[str]:
        return ROLE_PERMISSIONS.get(self.role, frozenset())

    @property
    def actor(self) -> str:
        """The envelope's ``actor`` of what this principal appends."""
        if self.role == "agent" and self.agent_id is not None:
            return f"agent:{self.agent_id}"
        return f"{self.kind}:{self.id}"

    def lacks(self, permission: str) -> bool:
        return permission not in self.permissions


class Forbidden(Exception):
    """The principal may not do this: answered 403 naming the permission."""

    def __init__(self, permission: str, message: str) -> None:
        super().__init__(message)
        self.permission = permission


def command_permission(cmd: Command) -> str:
    """The permission appending ``cmd`` needs (``system`` for the reactors' own commands)."""
    return COMMAND_PERMISSIONS.get(type(cmd).__name__, "system")


def missing(principal: Principal, permission: str) -> Forbidden:
    """The refusal of ``permission`` to ``principal``."""
    return Forbidden(permission, f"the {principal.role} role lacks the permission {permission!r}")


def authorize_command(principal: Principal, cmd: Command,
                      generated: str | None = None) -> tuple[Command, str | None]:
    """``cmd`` as ``principal`` may append it, and the field the API made up (``generated``).

    Raises ``Forbidden`` when the role lacks the command's permission, or, for the agent role, when
    the command names another agent. An agent's own task report is made in its name (the decider
    then refuses it unless the agent holds the task); an agent registering without an id
    registers as itself.
    """
    permission = command_permission(cmd)
    if principal.lacks(permission):
        raise missing(principal, permission)
    if principal.role != "agent" or permission not in SELF_SCOPED:
        return cmd, generated
    own = principal.agent_id
    named: Any = getattr(cmd, _AGENT_FIELD)
    if generated == _AGENT_FIELD or named is None:
        return cmd.model_copy(update={_AGENT_FIELD: own}), None if generated == _AGENT_FIELD else generated
    if named != own:
        raise Forbidden(permission, f"an agent token of {own!r} may not act for agent {named!r}")
    return cmd, generated
