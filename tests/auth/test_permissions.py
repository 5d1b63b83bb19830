"""The permission tables themselves: every command is classified, and the agent role's own
commands are made in its name (pure: no server)."""

from __future__ import annotations

import pytest

from contracts import REGISTRY, Command
from contracts import commands as c
from services.http.permissions import (
    COMMAND_PERMISSIONS,
    ROLE_PERMISSIONS,
    SELF_SCOPED,
    Forbidden,
    Principal,
    authorize_command,
)

# Commands only the service's own loops issue: they need ``system`` (admins), never a role's own.
REACTORS = {"AssignTask", "FireTimer", "MarkTaskUnassignable", "NoteTaskWaiting", "DecideScaling",
            "AwaitSignal", "FailWorkflowStep", "RecordDeliveryFailure", "ReceiveExternalEvent",
            "RecordWebhookMappingFailure"}
AGENT = Principal("token", "tok1", "agent", "a1")


def test_every_command_needs_a_named_permission_or_is_the_reactors() -> None:
    commands = {contract.name for contract in REGISTRY.contracts("command")}
    assert set(COMMAND_PERMISSIONS) <= commands, set(COMMAND_PERMISSIONS) - commands
    unclassified = commands - set(COMMAND_PERMISSIONS) - REACTORS
    assert unclassified == set(), f"classify these commands in services.http.permissions: {unclassified}"
    every = set().union(*ROLE_PERMISSIONS.values())
    assert set(COMMAND_PERMISSIONS.values()) <= every


def test_the_agent_roles_own_commands_all_name_their_agent() -> None:
    for name, permission in COMMAND_PERMISSIONS.items():
        if permission in SELF_SCOPED:
            assert "agent_id" in REGISTRY[name].model.model_fields, name


def test_an_agents_report_is_made_in_its_name() -> None:
    cmd, generated = authorize_command(AGENT, c.CompleteTask(task_id="t"))
    assert cmd == c.CompleteTask(task_id="t", agent_id="a1") and generated is None
    cmd, _ = authorize_command(AGENT, c.DeferTask(task_id="t", delay_s=5))
    assert isinstance(cmd, c.DeferTask) and cmd.agent_id == "a1"
    # An id the API made up is replaced by the agent's own, and is then part of the request.
    cmd, generated = authorize_command(AGENT, c.RegisterAgent(agent_id="made-up", name="n"), "agent_id")
    assert isinstance(cmd, c.RegisterAgent) and cmd.agent_id == "a1" and generated is None
    same = c.RecordCost(cost_id="x", agent_id="a1", model="m")
    assert authorize_command(AGENT, same, "cost_id") == (same, "cost_id")


@pytest.mark.parametrize("cmd", [
    c.StartTask(task_id="t", agent_id="a2"),
    c.AgentHeartbeat(agent_id="a2"),
    c.RegisterAgent(agent_id="a2", name="n"),
    c.RecordCost(cost_id="x", agent_id="a2", model="m"),
])
def test_an_agent_may_not_act_for_another(cmd: Command) -> None:
    with pytest.raises(Forbidden, match="may not act for agent 'a2'"):
        authorize_command(AGENT, cmd)
    operator = Principal("token", "tok2", "operator")
    assert authorize_command(operator, cmd) == (cmd, None)  # an operator may


def test_actors_say_who_acted() -> None:
    assert AGENT.actor == "agent:a1"
    assert Principal("jwt", "alice", "operator").actor == "jwt:alice"
    assert Principal("token", "tok3", "admin").actor == "token:tok3"
