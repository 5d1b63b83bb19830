"""The dashboard in a real browser against a real server: every page loads without a console error
and shows what the API holds, a task submitted over HTTP appears without a reload within a second,
the workflow graph turns steps green as they complete, cancel works from the page, errors show
as the API words them, and the event tail pauses and resumes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver as Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.ui.conftest import UI, Server, until

GREEN = "rgb(46, 157, 80)"  # --st-completed in the stylesheet


@dataclass
class World:
    """What the seeded server holds: an agent, a finished task, a waiting task, a run."""

    agent: str
    done: str
    waiting: str
    run: str


def finish(client: httpx.Client, task_id: str, agent: str | None = None, *, complete: bool = True) -> None:
    """Wait until ``task_id`` is assigned (to ``agent`` when given), start it, and complete it."""
    def assigned() -> bool:
        resp = client.get(f"/v1/tasks/{task_id}")
        if resp.status_code != 200:
            return False
        task = resp.json()
        return task["status"] == "assigned" and (agent is None or task["agent_id"] == agent)
    until(assigned, timeout=15)
    assert client.post(f"/v1/tasks/{task_id}/start", params={"wait": "true"}, json={}).status_code == 200
    if complete:
        resp = client.post(f"/v1/tasks/{task_id}/complete", params={"wait": "true"},
                           json={"result": {"summary": f"done: {task_id}"}})
        assert resp.status_code == 200, resp.text


def register(client: httpx.Client, agent_id: str, capabilities: list[str], capacity: int,
             name: str | None = None) -> None:
    resp = client.post("/v1/agents", params={"wait": "true"}, json={
        "agent_id": agent_id, "name": name or agent_id, "kind": "llm-worker", "capabilities": capabilities,
        "capacity": capacity, "heartbeat_timeout_s": 3600})
    assert resp.status_code == 201, resp.text


def start_run(client: httpx.Client, run: str, tasks: list[dict[str, Any]]) -> None:
    resp = client.post("/v1/workflows", params={"wait": "true"}, json={
        "execution_id": run,
        "definition": {"name": run.rsplit("-", 1)[0], "version": "1.0.0", "tasks": tasks}})
    assert resp.status_code == 201, resp.text


@pytest.fixture(scope="module")
def world(server: Server) -> Iterator[World]:
    """Agents with heartbeats, tasks done and waiting, costs, a budget, a run half way."""
    with server.client() as c:
        register(c, "writer-1", ["text", "summarize"], 3)
        register(c, "writer-2", ["text"], 2)
        for agent, cpu, load in (("writer-1", 37.5, 1.2), ("writer-2", 12.0, 0.4)):
            assert c.post(f"/v1/agents/{agent}/heartbeat", params={"wait": "true"},
                          json={"cpu": cpu, "load": load, "memory": 41.0}).status_code == 200
        for i in range(6):
            assert c.post("/v1/tasks", params={"wait": "true"}, json={
                "task_id": f"brief-{i}", "type": "summarize", "required_capabilities": ["text"],
                "priority": 3 + i % 4, "parameters": {"doc": f"report-{i}.pdf"}}).status_code == 201
        for i in range(6):
            finish(c, f"brief-{i}")
        for i, (model, agent) in enumerate((("gpt-4o", "writer-1"), ("claude-3-5-sonnet", "writer-2"),
                                            ("gpt-4o-mini", "writer-1"))):
            assert c.post("/v1/costs", params={"wait": "true"}, json={
                "agent_id": agent, "task_id": f"brief-{i}", "model": model, "input_tokens": 20_000 * (i + 1),
                "output_tokens": 3_000}).status_code == 201
        assert c.put("/v1/budgets", params={"wait": "true"}, json={
            "scope": "pool", "scope_id": "default", "limit_usd": 2.5}).status_code == 200
        assert c.post("/v1/tasks", params={"wait": "true"}, json={
            "task_id": "render-1", "type": "render", "required_capabilities": ["gpu"]}).status_code == 201
        start_run(c, "digest-1", [
            {"name": "fetch", "required_capabilities": ["summarize"]},
            {"name": "summarize", "required_capabilities": ["summarize"], "depends_on": ["fetch"]},
            {"name": "translate", "required_capabilities": ["summarize"], "depends_on": ["fetch"]},
            {"name": "approve", "type": "signal", "depends_on": ["summarize", "translate"]},
            {"name": "publish", "required_capabilities": ["summarize"], "depends_on": ["approve"]},
        ])
        finish(c, "digest-1.fetch")
        yield World(agent="writer-1", done="brief-0", waiting="render-1", run="digest-1")


@pytest.fixture
def ui(browser: Chrome, server: Server, tmp_path: Path) -> UI:
    return UI(browser, server.url, tmp_path)


def _count(driver: WebDriver, css: str) -> int:
    return len(driver.find_elements(By.CSS_SELECTOR, css))


def test_every_page_loads_without_a_console_error(ui: UI, world: World, tmp_path: Path) -> None:
    d = ui.driver
    ui.open("overview")
    ui.wait_ready()
    # Each page, and what it must show of the seeded server.
    pages: list[tuple[str, str, str]] = [
        ("overview", "overview", "#overview-cards [data-stat='agents'] .stat-value"),
        ("agents", "agents", f"tr[data-agent-id='{world.agent}']"),
        (f"agents/{world.agent}", "agent", "#performance"),
        ("tasks", "tasks", f"tr[data-task-id='{world.done}'][data-status='completed']"),
        (f"tasks/{world.done}", "task", "#timeline li[data-type='TaskCompleted']"),
        (f"tasks/{world.waiting}", "task-waiting", "#waiting-reason[data-code='no_capable_agent']"),
        ("workflows", "workflows", f"tr[data-run-id='{world.run}']"),
        (f"workflows/{world.run}", "workflow-run", "#dag [data-step=fetch][data-status=completed]"),
        ("costs", "costs", "#budgets tr[data-scope='pool']"),
        ("events?channels=pool/default/tasks&after=-1", "events", "#event-rows tr[data-type=TaskSubmitted]"),
    ]
    for route, name, shows in pages:
        if route != "overview":
            ui.go(route)
        ui.wait(lambda drv, css=shows: drv.find_elements(By.CSS_SELECTOR, css))  # type: ignore[misc]
        assert _count(d, "#view .error-box") == 0, f"{route}: {ui.text('#view .error-box')}"
        ui.screenshot(name, publish=name == "overview")
        assert ui.console() == [], f"console errors on #/{route}"
    # What the pages say matches the API.
    ui.go(f"tasks/{world.done}")
    assert _count(d, ".assignment") >= 1 and world.agent in ui.text(".assignment .why")
    assert _count(d, "#timeline li") >= 4  # submitted, assigned, started, completed (and a cost)
    ui.go("overview")
    ui.wait(lambda drv: ui.text("[data-stat='agents'] .stat-value") == "2")
    assert ui.text("[data-stat='queue'] .stat-value") != ""
    ui.go(f"workflows/{world.run}")
    assert _count(d, "#dag .dag-node") == 5 and _count(d, "#dag .dag-edge") == 5
    assert ui.console() == []
    for _, name, _ in pages:
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_a_task_submitted_over_http_appears_within_a_second(ui: UI, server: Server, world: World) -> None:
    ui.open("tasks")
    ui.wait_ready()
    with server.client() as c:
        started = time.monotonic()
        resp = c.post("/v1/tasks", json={"task_id": "fresh-1", "type": "summarize",
                                          "required_capabilities": ["text"]})
        assert resp.status_code == 202, resp.text
        ui.wait(lambda drv: drv.find_elements(By.CSS_SELECTOR, "tr[data-task-id='fresh-1']"),
                timeout=1.0, poll=0.01)
        took = time.monotonic() - started
    assert took < 1.0
    # Newest first, and the row is read from the API afterwards (its status moves on).
    assert ui.driver.execute_script(
        "return document.querySelector('#tasks-table tbody tr').dataset.taskId") == "fresh-1"
    ui.wait(lambda drv: drv.find_elements(By.CSS_SELECTOR, "tr[data-task-id='fresh-1']:not(.fresh)"))
    assert ui.console() == []


def _fill(driver: WebDriver, step: str) -> str:
    return str(driver.execute_script(
        "const n = document.querySelector(`#dag .dag-node[data-step='${arguments[0]}'] rect`);"
        "return n ? getComputedStyle(n).fill : '';", step))


def _status(driver: WebDriver, step: str) -> str | None:
    # Read in the page in one go: the graph is redrawn as events arrive, so a node found by one
    # WebDriver call may be gone by the next.
    status = driver.execute_script(
        "const n = document.querySelector(`#dag .dag-node[data-step='${arguments[0]}']`);"
        "return n ? n.dataset.status : null;", step)
    return None if status is None else str(status)


def test_the_graph_turns_steps_green_as_they_complete(ui: UI, server: Server, world: World) -> None:
    run = "green-1"
    steps = ["fetch", "summarize", "classify", "review", "publish"]
    with server.client() as c:
        register(c, "green-agent", ["green"], 3, name="Green worker")
        start_run(c, run, [
            {"name": "fetch", "required_capabilities": ["green"]},
            {"name": "summarize", "required_capabilities": ["green"], "depends_on": ["fetch"]},
            {"name": "classify", "required_capabilities": ["green"], "depends_on": ["fetch"]},
            {"name": "review", "required_capabilities": ["green"], "depends_on": ["summarize", "classify"]},
            {"name": "publish", "required_capabilities": ["green"], "depends_on": ["review"]},
        ])
        ui.open(f"workflows/{run}")
        ui.wait_ready()
        d = ui.driver
        assert [_status(d, s) for s in steps[1:]] == ["pending"] * 4
        assert _fill(d, "fetch") != GREEN

        def turns_green(step: str) -> None:
            ui.wait(lambda drv: _status(drv, step) == "completed" and _fill(drv, step) == GREEN, timeout=5)

        finish(c, f"{run}.fetch", "green-agent")
        turns_green("fetch")
        assert _status(d, "review") == "pending" and _fill(d, "review") != GREEN
        finish(c, f"{run}.summarize", "green-agent")
        finish(c, f"{run}.classify", "green-agent", complete=False)
        turns_green("summarize")
        ui.wait(lambda drv: _status(drv, "classify") == "running", timeout=5)
        assert _fill(d, "classify") != GREEN
        ui.screenshot("workflow", publish=True)
        assert c.post(f"/v1/tasks/{run}.classify/complete", params={"wait": "true"},
                      json={"result": {"label": "news"}}).status_code == 200
        turns_green("classify")
        for step in ("review", "publish"):
            finish(c, f"{run}.{step}", "green-agent")
            turns_green(step)
    ui.wait(lambda drv: ui.text("#view .page-head .badge") == "completed", timeout=5)
    assert all(_fill(d, s) == GREEN for s in steps)
    assert _count(d, "#dag .dag-edge.st-completed") == 5
    # Each step's agent by the name it registered with, linking to the agent's page by its id.
    agents = d.find_elements(By.CSS_SELECTOR, "#steps-table tbody tr a[href='#/agents/green-agent']")
    assert [a.text for a in agents] == ["Green worker"] * 5
    assert ui.console() == []


def test_cancel_from_the_page_cancels_the_run(ui: UI, server: Server, world: World) -> None:
    run = "stuck-1"
    with server.client() as c:
        start_run(c, run, [{"name": "wait_here", "required_capabilities": ["nobody-has-this"]},
                           {"name": "after", "depends_on": ["wait_here"]}])
        ui.open(f"workflows/{run}")
        ui.wait_ready()
        d = ui.driver
        ui.click("#cancel-run")
        ui.wait(lambda drv: drv.execute_script("return document.getElementById('confirm').open"))
        assert "Cancel run stuck-1?" in ui.text("#confirm-title")
        ui.click("#confirm-yes")
        until(lambda: c.get(f"/v1/workflows/{run}").json()["status"] == "cancelled", timeout=10)
    ui.wait(lambda drv: ui.text("#view .page-head .badge") == "cancelled", timeout=5)
    assert _status(d, "wait_here") == "cancelled" and _status(d, "after") == "skipped"
    assert _count(d, "#cancel-run") == 0  # an ended run has nothing to cancel
    assert ui.console() == []


def test_errors_show_as_the_api_words_them(ui: UI, world: World) -> None:
    ui.open("tasks/no-such-task")
    ui.wait_ready()
    d = ui.driver
    box = ui.wait(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#view .error-box[data-status='404']"))[0]
    assert "404 Not found" in box.text and "task 'no-such-task' not found" in box.text
    # The browser reports the refused request itself; nothing else went wrong.
    assert all(" 404 " in e["message"] and e["source"] == "network" for e in ui.console())
    ui.go("events?channels=nonsense:x", live=False)
    box = ui.wait(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#tail-problem .error-box"))[0]
    assert "unknown channel 'nonsense:x'" in box.text
    assert ui.console() == []
    assert _count(d, "#event-rows tr") == 0


def test_the_event_tail_pauses_and_resumes(ui: UI, server: Server, world: World) -> None:
    ui.open("events?channels=pool/default/type:TaskSubmitted")
    ui.wait_ready()
    d = ui.driver
    d.find_element(By.ID, "pause").click()
    with server.client() as c:
        assert c.post("/v1/tasks", json={"task_id": "paused-1", "type": "x"}).status_code == 202
    ui.wait(lambda drv: "1 waiting" in ui.text("#tail-status"))
    assert _count(d, "#event-rows tr") == 0
    d.find_element(By.ID, "pause").click()  # resume
    rows = ui.wait(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#event-rows tr[data-type=TaskSubmitted]"))
    assert "paused-1" in rows[0].text
    rows[0].click()  # opens the whole event
    assert '"task_id": "paused-1"' in ui.text("#event-rows tr.expanded")
    assert ui.console() == []
