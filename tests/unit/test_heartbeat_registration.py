"""Liveness is watched from registration: an agent that never sends a heartbeat is marked unhealthy
after its ``heartbeat_timeout_s`` and its tasks go to another agent, like one that stopped."""

from __future__ import annotations

from contracts import commands as c
from contracts import event_types as e
from tests.gwt import given
from tests.unit.fleet import World


def _armed(agent_id: str, timeout_s: float, generation: int) -> e.TimerScheduled:
    return e.TimerScheduled(timer_id=f"heartbeat:{agent_id}", kind="heartbeat", delay_s=timeout_s,
                            generation=generation, agent_id=agent_id)


def test_registering_arms_the_heartbeat_timer() -> None:
    given().when(c.RegisterAgent(agent_id="a", name="a", heartbeat_timeout_s=2)).then(
        e.AgentRegistered(agent_id="a", name="a", kind="generic", capacity=1, heartbeat_timeout_s=2),
        _armed("a", 2, 1),
    ).then_state(lambda s: s.timers["heartbeat:a"].generation == 1 and s.timer_seq == 1)


def test_registering_again_after_leaving_arms_it_again() -> None:
    given(
        e.AgentRegistered(agent_id="a", name="a", kind="generic", capacity=1, heartbeat_timeout_s=2),
        _armed("a", 2, 1),
        e.AgentDeregistered(agent_id="a"),
        e.TimerCancelled(timer_id="heartbeat:a", generation=1, reason="agent deregistered"),
    ).when(c.RegisterAgent(agent_id="a", name="a", heartbeat_timeout_s=5)).then(
        e.AgentRegistered(agent_id="a", name="a", kind="generic", capacity=1, heartbeat_timeout_s=5),
        _armed("a", 5, 2),
    )


def test_a_first_heartbeat_missed_marks_the_agent_unhealthy_and_takes_its_tasks_back() -> None:
    given(
        e.AgentRegistered(agent_id="a", name="a", kind="generic", capacity=1, heartbeat_timeout_s=2),
        _armed("a", 2, 1),
        e.TaskSubmitted(task_id="t", type="w", priority=5),
        e.TaskAssigned(task_id="t", agent_id="a", attempt=1),
    ).when(c.FireTimer(timer_id="heartbeat:a", generation=1)).then(
        e.TimerFired(timer_id="heartbeat:a", kind="heartbeat", generation=1, agent_id="a"),
        e.AgentMarkedUnhealthy(agent_id="a", reason="no heartbeat for 2.0s"),
        e.TaskReassigned(task_id="t", agent_id="a", reason="agent unhealthy: no heartbeat for 2.0s"),
        e.TimerScheduled(timer_id="dead:a", kind="agent_dead", delay_s=6.0, generation=2, agent_id="a"),
    ).then_state(lambda s: not s.agents["a"].healthy and s.tasks["t"].status == "queued")


def test_an_agent_that_never_heartbeats_loses_its_task_to_one_that_does() -> None:
    w = World()
    w.do(c.RegisterAgent(agent_id="a", name="a", heartbeat_timeout_s=2),
         c.SubmitTask(task_id="t", type="w"))
    assert w.state.tasks["t"].agent_id == "a"
    w.do(c.RegisterAgent(agent_id="b", name="b", heartbeat_timeout_s=60))
    w.advance(1.9)
    assert w.state.agents["a"].healthy and w.state.tasks["t"].agent_id == "a"
    w.advance(0.1)  # a never sent its first heartbeat: unhealthy, its task moves to b
    assert not w.state.agents["a"].healthy
    assert [(x.task_id, x.agent_id) for x in w.events(e.TaskReassigned)] == [("t", "a")]
    assert w.state.tasks["t"].agent_id == "b" and w.state.tasks["t"].attempts == 2
    # A heartbeat, even late, brings it back.
    w.do(c.AgentHeartbeat(agent_id="a"))
    assert w.state.agents["a"].healthy
