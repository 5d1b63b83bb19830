"""The rules behind what ``agentbus top`` shows, without a terminal or a server: the status filter's
cycle, what a filter matches, how a wait, an event and an assignment are worded."""

from __future__ import annotations

from datetime import UTC, datetime

from services.tui.stream import socket_url
from services.tui.views import (
    STATUS_FILTERS,
    agent_rows,
    assignment_summary,
    candidate_rows,
    event_line,
    matches,
    next_status,
    relevant,
    statuses_of,
    task_rows,
    waiting_text,
    workflow_rows,
)

NOW = datetime(2025, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_the_status_key_cycles_every_filter_and_wraps() -> None:
    seen, choice = [], "open"
    for _ in STATUS_FILTERS:
        seen.append(choice)
        choice = next_status(choice)
    assert seen == list(STATUS_FILTERS) and choice == "open"
    assert statuses_of("open") == ("queued", "retrying", "assigned", "running")
    assert statuses_of("failed") == ("failed",) and statuses_of("all") is None


def test_a_filter_needs_every_word_in_any_cell_whatever_the_case() -> None:
    cells = ("t-17", "Summarize", "queued")
    assert matches(cells, "") and matches(cells, "  ")
    assert matches(cells, "summ QUEUED") and matches(cells, "t-1")
    assert not matches(cells, "summ running")


def test_only_events_about_agents_tasks_workflows_and_costs_call_for_a_read() -> None:
    assert all(relevant(t) for t in ("TaskSubmitted", "AgentHeartbeatReceived", "WorkflowEnded",
                                     "CircuitOpened", "CostRecorded"))
    assert not any(relevant(t) for t in ("TimerScheduled", "TimerFired", "ApiTokenIssued",
                                         "WebhookSourceSet"))


def test_waits_rows_and_events_in_words() -> None:
    reason = {"code": "retry_backoff", "since": "2025-05-01T11:59:00+00:00",
              "until": "2025-05-01T12:00:30+00:00", "attempt": 2, "agents": None}
    assert waiting_text(reason) == "retry_backoff (until=12:00:30, attempt=2)"
    assert waiting_text(None) == ""
    [row] = task_rows([{"task_id": "t1", "type": "x", "status": "retrying", "priority": 5, "agent_id": "a1",
                        "attempts": 2, "submitted_at": "2025-05-01T11:58:55+00:00",
                        "next_attempt_at": "2025-05-01T12:00:30+00:00", "waiting_reason": reason}], NOW)
    assert row.key == "t1"
    assert row.cells == ("t1", "x", "retrying at 12:00:30", "5", "a1", "2", "1m05s",
                         "retry_backoff (until=12:00:30, attempt=2)")
    [agent] = agent_rows([{"agent_id": "a1", "name": "one", "kind": "llm", "status": "unhealthy",
                           "healthy": False, "unhealthy_reason": "no heartbeat for 30s", "load": 1,
                           "capacity": 4, "circuit": "open", "circuit_until": "2025-05-01T12:01:00+00:00",
                           "capabilities": ["text", "code"], "registered_at": "2025-05-01T10:00:00+00:00",
                           "last_heartbeat_at": "2025-05-01T11:59:30+00:00"}], NOW)
    assert agent.cells == ("a1", "one", "llm", "unhealthy (no heartbeat for 30s)", "1/4",
                           "open until 12:01:00", "text,code", "30s")
    [run] = workflow_rows([{"execution_id": "w1", "name": "etl", "version": "2", "status": "running",
                            "total_tasks": 4, "completed_tasks": 2, "failed_tasks": 0, "skipped_tasks": 1,
                            "cost_usd": 0.5, "execution_time": 3700.0}])
    assert run.cells == ("w1", "etl@2", "running", "████████░░  75%", "2/0/1 of 4", "$0.5000", "1h01m")
    line = event_line({"type": "event", "partition": 0, "position": 42, "event": {
        "type": "TaskAssigned", "time": "2025-05-01T12:00:01+00:00", "subject": "t1",
        "data": {"task_id": "t1", "agent_id": "a1", "attempt": 1, "audit": {"candidates": []}}}})
    assert line.split() == ["12:00:01", "42", "TaskAssigned", "t1", "agent_id=a1", "attempt=1"]


def test_why_this_agent() -> None:
    assignment = {"position": 9, "agent_id": "a2", "attempt": 1, "strategy": "least_loaded",
                  "assigned_at": "2025-05-01T12:00:00+00:00", "eligible": 3, "considered": 3,
                  "decision_us": 41.5, "capability_gap": [], "preferred": ["gpu"], "skipped": {"busy": 1},
                  "candidates": [{"agent_id": "a1", "score": 0.5, "load": 1, "capacity": 2,
                                  "components": {"load": 0.5}},
                                 {"agent_id": "a2", "score": 0.9, "load": 0, "capacity": 2,
                                  "components": {"load": 1.0}}]}
    assert [r.cells[:3] for r in candidate_rows(assignment)] == [(">", "a2", "0.9"), ("", "a1", "0.5")]
    assert candidate_rows(assignment)[0].cells[-1] == "load=1"
    assert assignment_summary(assignment).splitlines() == [
        "attempt 1 at 12:00:00 (position 9): assigned to a2 by least_loaded",
        "why: the best score, 0.9, of 2 candidate(s); next a1 at 0.5",
        "eligible 3; considered 3; decided in 41.5 µs; preferred: gpu; skipped: busy 1"]
    assignment["agent_id"] = "a1"
    assert "why: score 0.5, rank 2 of 2" in assignment_summary(assignment)


def test_the_socket_lives_beside_the_api() -> None:
    assert socket_url("http://127.0.0.1:8080") == "ws://127.0.0.1:8080/ws/v1/events"
    assert socket_url("https://bus.example/api/") == "wss://bus.example/api/ws/v1/events"
