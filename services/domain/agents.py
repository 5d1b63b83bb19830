"""Command handlers for agents: joining, heartbeats, leaving; and what follows when an agent leaves
or trips its circuit breaker.

Pure: handlers read the state and return events (or raise ``Rejected``); they never change the
state, do no I/O and read no clock.
"""

from __future__ import annotations

from contracts import Payload, Reason
from contracts import commands as c
from contracts import event_types as e
from services.domain.decision import (
    DeciderConfig,
    Decision,
    Rejected,
    agent_of,
    circuit_timer,
    dead_timer,
    heartbeat_timer,
    timeout_timer,
)
from services.domain.resources import released
from services.domain.state import AgentState, PoolState


def register(state: PoolState, cmd: c.RegisterAgent, config: DeciderConfig) -> list[Payload]:
    """A new agent, or a deregistered one back, while the pool is below its maximum of agents."""
    existing = state.agents.get(cmd.agent_id)
    if existing is not None and existing.active:
        raise Rejected(Reason.AGENT_EXISTS, f"agent {cmd.agent_id!r} is already registered",
                       agent_id=cmd.agent_id)
    if state.max_agents is not None and state.active_agents() >= state.max_agents:
        raise Rejected(Reason.RESOURCE_LIMIT_EXCEEDED,
                       f"the pool has its maximum of {state.max_agents} agents",
                       agent_id=cmd.agent_id, over=["agents"], max_agents=state.max_agents)
    out = Decision(state)
    out.append(e.AgentRegistered(**cmd.model_dump()))
    # Liveness is watched from registration on: an agent that never heartbeats is marked
    # unhealthy after one timeout, like one that stopped; each heartbeat re-arms the timer.
    out.schedule(heartbeat_timer(cmd.agent_id), "heartbeat", cmd.heartbeat_timeout_s, agent_id=cmd.agent_id)
    return out


def heartbeat(state: PoolState, cmd: c.AgentHeartbeat, config: DeciderConfig) -> list[Payload]:
    """A heartbeat heals an unhealthy agent and re-arms its liveness timer."""
    agent = agent_of(state, cmd.agent_id)
    out = Decision(state)
    out.append(e.AgentHeartbeatReceived(**cmd.model_dump()))
    if not agent.healthy:
        out.append(e.AgentMarkedHealthy(agent_id=agent.agent_id))
        out.cancel(dead_timer(agent.agent_id), "heartbeat received")
    out.schedule(heartbeat_timer(agent.agent_id), "heartbeat", agent.heartbeat_timeout_s,
                 agent_id=agent.agent_id)
    return out


def deregister(state: PoolState, cmd: c.DeregisterAgent, config: DeciderConfig) -> list[Payload]:
    """An active agent leaves the pool."""
    agent = agent_of(state, cmd.agent_id)
    out = Decision(state)
    leave(state, agent, out, "agent deregistered")
    out.append(e.AgentDeregistered(agent_id=cmd.agent_id, reason=cmd.reason))
    return out


def take_back(agent: AgentState, out: Decision, event: type[e.TaskRequeued] | type[e.TaskReassigned],
              reason: str) -> None:
    """Every task the agent holds goes back to the queue (sorted, so replay is stable)."""
    for task_id in sorted(agent.tasks):
        out.append(event(task_id=task_id, agent_id=agent.agent_id, reason=reason))
        out.cancel(timeout_timer(task_id), reason)


def leave(state: PoolState, agent: AgentState, out: Decision, reason: str) -> None:
    """An agent leaves the pool: tasks back to the queue, allocations released, timers cancelled."""
    take_back(agent, out, e.TaskRequeued, reason)
    out += [released(state.allocations[a], reason) for a in sorted(agent.allocations)]
    for timer in (heartbeat_timer, dead_timer, circuit_timer):
        out.cancel(timer(agent.agent_id), reason)


def breaker_failure(state: PoolState, agent_id: str, out: Decision) -> None:
    """A failed run counts against the agent's breaker, which opens at its threshold: the agent's
    own (``RegisterAgent.breaker_threshold``), else the pool policy's; open for the agent's own
    cooldown, else the pool's."""
    agent = state.agents.get(agent_id)
    if agent is None or not agent.active or agent.breaker == "open":
        return
    threshold = agent.breaker_threshold
    if threshold is None:
        threshold = state.policy.breaker_threshold
    if threshold is None:
        return
    failures = agent.failures + 1
    if agent.breaker == "half_open" or failures >= threshold:
        own = agent.breaker_cooldown_s
        cooldown = state.policy.breaker_cooldown_s if own is None else own
        out.append(e.CircuitOpened(agent_id=agent_id, failures=failures, cooldown_s=cooldown))
        out.schedule(circuit_timer(agent_id), "circuit", cooldown, agent_id=agent_id)
