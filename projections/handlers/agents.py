"""Agent rows: registration, heartbeats, health and circuit breakers.

Each handler changes the agent row its event names, as the decider's ``evolve`` does; task
transitions that move an agent's load live with the tasks.
"""

from __future__ import annotations

from contracts import Envelope
from contracts import event_types as ev
from projections.batch import Batch, after
from projections.handlers.registry import Registry
from projections.loading import AGENT

handlers = Registry()


@handlers.on(ev.AgentRegistered, reads=(AGENT,))
def _agent_registered(b: Batch, env: Envelope, d: ev.AgentRegistered) -> None:
    key = (env.pool, d.agent_id)
    row = b.agents.rows.get(key)
    if row is not None and row["status"] != "deregistered":
        raise b.fail(f"agent {d.agent_id!r} is already registered")
    if row is None:
        row = {
            "pool": env.pool,
            "agent_id": d.agent_id,
            "load": 0,
            "last_heartbeat_at": None,
            "heartbeat": None,
            "tasks_completed": 0,
            "tasks_failed": 0,
        }
    # A deregistered agent registering again keeps its history counters (and load, which its
    # requeued tasks have brought back to 0).
    row.update(
        name=d.name,
        kind=d.kind,
        capabilities=list(d.capabilities),
        capacity=d.capacity,
        status="active",
        registered_at=env.time,
        deregistered_at=None,
        weight=d.weight,
        heartbeat_timeout_s=d.heartbeat_timeout_s,
        # Registering starts afresh, as in the decider: healthy, breaker closed.
        healthy=True,
        unhealthy_reason=None,
        health_changed_at=None,
        circuit="closed",
        circuit_changed_at=None,
        circuit_until=None,
        consecutive_failures=0,
    )
    b.agents.put(key, row)


@handlers.on(ev.AgentHeartbeatReceived, reads=(AGENT,))
def _agent_heartbeat(b: Batch, env: Envelope, d: ev.AgentHeartbeatReceived) -> None:
    row = b.agent(env.pool, d.agent_id)
    row["last_heartbeat_at"] = env.time
    row["heartbeat"] = {"load": d.load, "cpu": d.cpu, "memory": d.memory, "queue": d.queue}


@handlers.on(ev.AgentDeregistered, reads=(AGENT,))
def _agent_deregistered(b: Batch, env: Envelope, d: ev.AgentDeregistered) -> None:
    row = b.agent(env.pool, d.agent_id)
    row["status"] = "deregistered"
    row["deregistered_at"] = env.time


# --- health and circuit breakers ---


@handlers.on(ev.AgentMarkedUnhealthy, reads=(AGENT,))
def _agent_unhealthy(b: Batch, env: Envelope, d: ev.AgentMarkedUnhealthy) -> None:
    agent = b.agent(env.pool, d.agent_id)
    agent.update(healthy=False, unhealthy_reason=d.reason, health_changed_at=env.time)
    if agent["status"] == "active":
        agent["status"] = "unhealthy"


@handlers.on(ev.AgentMarkedHealthy, reads=(AGENT,))
def _agent_healthy(b: Batch, env: Envelope, d: ev.AgentMarkedHealthy) -> None:
    agent = b.agent(env.pool, d.agent_id)
    agent.update(healthy=True, unhealthy_reason=None, health_changed_at=env.time)
    if agent["status"] == "unhealthy":
        agent["status"] = "active"


@handlers.on(ev.CircuitOpened, reads=(AGENT,))
def _circuit_opened(b: Batch, env: Envelope, d: ev.CircuitOpened) -> None:
    b.agent(env.pool, d.agent_id).update(
        circuit="open", circuit_changed_at=env.time, circuit_until=after(env.time, d.cooldown_s)
    )


@handlers.on(ev.CircuitHalfOpened, reads=(AGENT,))
def _circuit_half_opened(b: Batch, env: Envelope, d: ev.CircuitHalfOpened) -> None:
    b.agent(env.pool, d.agent_id).update(
        circuit="half_open", circuit_changed_at=env.time, circuit_until=None
    )


@handlers.on(ev.CircuitClosed, reads=(AGENT,))
def _circuit_closed(b: Batch, env: Envelope, d: ev.CircuitClosed) -> None:
    b.agent(env.pool, d.agent_id).update(
        circuit="closed", circuit_changed_at=env.time, circuit_until=None, consecutive_failures=0
    )
