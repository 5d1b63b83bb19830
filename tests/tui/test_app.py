"""The terminal UI, headless (Textual's pilot), against a real server: the panes, the live tail, the
filter and the status filter, a task's audit, and what it does when the server goes away."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from textual.strip import Strip
from textual.widgets import DataTable, Input, RichLog, Static

from services.executors.standins.serving import free_port
from services.tui.app import TopApp
from services.tui.audit import AuditScreen
from tests.tui.conftest import (
    keys,
    register,
    rows,
    server,
    status_text,
    submit,
    tail_text,
    until,
    wait_status,
    write,
)

SIZE = (200, 60)


def top(url: str, **options: object) -> TopApp:
    # A long interval: whatever shows up within a test came because an event called for a read.
    return TopApp(url=url, pool="default", headers={}, interval=60, **options)  # type: ignore[arg-type]


async def test_panes_show_agents_and_tasks_and_follow_events(url: str) -> None:
    await asyncio.to_thread(register, url, "pa-1", 1)
    await asyncio.to_thread(submit, url, "pt-1")
    app = top(url)
    async with app.run_test(size=SIZE) as pilot:
        agents, queue = app.query_one("#agents", DataTable), app.query_one("#queue", DataTable)

        def row(table: DataTable[str], key: str) -> list[str]:
            return next((r for r in rows(table) if r[0] == key), [""] * 8)

        # The coordinator may assign pt-1 after the first read: its events bring the change.
        await until(pilot, lambda: row(agents, "pa-1")[4] == "1/1" and row(queue, "pt-1")[2] == "assigned",
                    what="pa-1 holding pt-1")
        assert row(agents, "pa-1")[1:6] == ["pa-1-name", "generic", "active", "1/1", "closed"]
        assert row(queue, "pt-1")[4] == "pa-1"

        # The interval is a minute: the new task shows because its events call for a read.
        await until(pilot, lambda: app.stream_state.live, what="the tail is live")
        reads = app.loads
        await asyncio.to_thread(submit, url, "pt-2")
        await until(pilot, lambda: "pt-2" in keys(queue), timeout=5, what="pt-2 in the queue")
        assert app.loads > reads
        await until(pilot, lambda: row(queue, "pt-2")[7].startswith("all_capable_agents_busy"),
                    what="pt-2 waiting for pa-1")
        assert row(queue, "pt-2")[2] == "queued"
        assert "queue: open" in str(queue.border_title)


async def test_the_tail_shows_new_events_live_and_pauses(url: str) -> None:
    app = top(url)
    async with app.run_test(size=SIZE) as pilot:
        log = app.query_one("#tail", RichLog)
        await until(pilot, lambda: app.stream_state.live, what="the tail is live")
        await asyncio.to_thread(submit, url, "tl-1", "nobody-has-this")
        line = await until(pilot, lambda: [ln for ln in tail_text(log).splitlines() if " tl-1 " in ln],
                           what="tl-1 in the tail")
        assert "TaskSubmitted" in line[0] and "type=summarize" in line[0]

        await pilot.press("p")
        assert app.paused and "PAUSED" in status_text(app.query_one("#status", Static))
        await asyncio.to_thread(submit, url, "tl-2", "nobody-has-this")
        await until(pilot, lambda: any(" tl-2 " in ln for ln in app.tail_lines), what="tl-2 received")
        assert " tl-2 " not in tail_text(log) and app.missed >= 1
        assert f"({app.missed} new)" in status_text(app.query_one("#status", Static))

        await pilot.press("p")
        await until(pilot, lambda: " tl-2 " in tail_text(log), what="tl-2 shown on resume")
        assert not app.paused


async def test_the_filter_and_the_status_key_narrow_the_queue(url: str) -> None:
    await asyncio.to_thread(register, url, "fa-1", 1, "filtering")
    await asyncio.to_thread(submit, url, "fq-held", "filtering")
    await asyncio.to_thread(submit, url, "fq-waiting", "filtering")
    await asyncio.to_thread(submit, url, "other-task", "nobody-has-this")
    await asyncio.to_thread(wait_status, url, "fq-held", "assigned")
    app = top(url)
    async with app.run_test(size=SIZE) as pilot:
        queue, agents = app.query_one("#queue", DataTable), app.query_one("#agents", DataTable)
        await until(pilot, lambda: {"fq-held", "fq-waiting", "other-task"} <= set(keys(queue)), what="tasks")

        await pilot.press("slash")
        box = app.query_one("#filter", Input)
        assert box.has_focus and box.display
        await pilot.press(*"fq")
        await until(pilot, lambda: set(keys(queue)) == {"fq-held", "fq-waiting"}, what="filter fq")
        await pilot.press(*" waiting")  # every word must match
        await until(pilot, lambda: keys(queue) == ["fq-waiting"], what="filter 'fq waiting'")
        assert keys(agents) == [] and "1 shown of" in str(queue.border_title)
        await pilot.press("enter")  # keeps the filter, back to the queue
        assert queue.has_focus and keys(queue) == ["fq-waiting"]
        await pilot.press("escape")  # clears it
        await until(pilot, lambda: {"fq-held", "fq-waiting"} <= set(keys(queue)), what="filter cleared")
        assert not box.display

        # s cycles the status filter: open -> queued, and the queue is read again at once.
        await pilot.press("s")
        assert app.status_filter == "queued"
        await until(pilot, lambda: "queue: queued" in str(queue.border_title), timeout=5, what="queued read")
        assert "fq-waiting" in keys(queue) and "fq-held" not in keys(queue)
        assert {r[2] for r in rows(queue)} == {"queued"}
        await pilot.press("s", "s")  # retrying, then assigned
        await until(pilot, lambda: "queue: assigned" in str(queue.border_title), timeout=5,
                    what="assigned read")
        assert "fq-held" in keys(queue) and "fq-waiting" not in keys(queue)


async def test_enter_on_a_task_opens_its_audit(url: str) -> None:
    await asyncio.to_thread(register, url, "aa-1", 2, "auditing")
    await asyncio.to_thread(register, url, "aa-2", 1, "auditing")
    await asyncio.to_thread(submit, url, "at-1", "auditing")
    await asyncio.to_thread(wait_status, url, "at-1", "assigned")
    app = top(url)
    async with app.run_test(size=SIZE) as pilot:
        queue = app.query_one("#queue", DataTable)
        await until(pilot, lambda: "at-1" in keys(queue), what="at-1 in the queue")
        queue.focus()
        queue.move_cursor(row=queue.get_row_index("at-1"))
        await pilot.press("enter")
        screen = await until(pilot, lambda: isinstance(app.screen, AuditScreen) and app.screen,
                             what="the audit screen")
        assert screen.task_id == "at-1"
        await until(pilot, lambda: screen.loads > 0, what="the audit read")
        text = screen.text()
        assert "task at-1" in text and "status assigned" in text
        assert "TaskSubmitted" in text and "SubmitTask by" in text
        assert "TaskAssigned" in text and "coordinator chose" in text
        candidates = rows(screen.query_one("#candidates-0", DataTable))
        assert sorted(r[1] for r in candidates) == ["aa-1", "aa-2"]
        [agent] = [r[1] for r in candidates if r[0] == ">"]
        assert f"assigned to {agent} by" in text and "why: " in text and "candidates of attempt 1" in text

        # The pane keys are off while the audit covers the panes.
        await pilot.press("s")
        assert app.status_filter == "open"

        # New events about the task reach the open audit.
        done = {"agent_id": agent, "result": {"ok": 1}}
        await asyncio.to_thread(write, url, "/v1/tasks/at-1/complete", done)
        await until(pilot, lambda: "TaskCompleted" in screen.text(), what="TaskCompleted in the audit")
        assert "status completed" in screen.text()

        await pilot.press("escape")
        assert not isinstance(app.screen, AuditScreen)


async def test_a_server_that_goes_away_is_reported_and_followed_back(tmp_path: Path) -> None:
    port, data = free_port(), tmp_path / "data"
    with contextlib.ExitStack() as running:
        url = running.enter_context(server(data, port))
        await asyncio.to_thread(register, url, "ra-1")
        app = top(url)
        async with app.run_test(size=SIZE) as pilot:
            agents, status = app.query_one("#agents", DataTable), app.query_one("#status", Static)
            await until(pilot, lambda: app.stream_state.live and "ra-1" in keys(agents), what="live")

            await asyncio.to_thread(running.close)
            await until(pilot, lambda: "reconnecting in" in status_text(status), what="reconnecting")
            assert "disconnected" in status_text(status) and status.has_class("trouble")
            await pilot.press("r")
            await until(pilot, lambda: "panes not refreshed: cannot reach agentbus at" in status_text(status),
                        what="the failed read")
            assert "ra-1" in keys(agents)  # what it last read stays on screen

            # The same server back on the same port: the tail resumes, the panes read again.
            await asyncio.to_thread(running.enter_context, server(data, port))
            await until(pilot, lambda: app.stream_state.live, timeout=15, what="live again")
            await asyncio.to_thread(submit, url, "rt-1")
            queue, log = app.query_one("#queue", DataTable), app.query_one("#tail", RichLog)
            await until(pilot, lambda: "rt-1" in keys(queue) and " rt-1 " in tail_text(log),
                        what="rt-1 after the restart")
            assert "panes not refreshed" not in status_text(status) and not status.has_class("trouble")
        await asyncio.to_thread(running.close)


# Names and types come from whoever writes to the bus: markup is shown as typed, never applied, and
# a terminal escape arrives as text a reader sees.
HOSTILE = {"mk-close": "[/bold] oops",
           "mk-link": "[bold red]RED[/bold red] [link=https://evil.example]click[/link]",
           "mk-escape": "\x1b[31mRED\x1b[0m\x1b]0;pwned-title\x07"}


def drawn(table: DataTable[Any]) -> list[Strip]:
    """The lines the table draws, as the terminal gets them (text and styles)."""
    return [table.render_line(y) for y in range(table.size.height)]


async def test_markup_and_escapes_in_names_are_shown_as_they_are(url: str) -> None:
    pool = "tui-hostile"
    for agent_id, name in HOSTILE.items():
        await asyncio.to_thread(write, url, "/v1/agents", {
            "agent_id": agent_id, "name": name, "capabilities": ["hostile"], "heartbeat_timeout_s": 600},
            pool=pool)
    await asyncio.to_thread(write, url, "/v1/tasks", {
        "task_id": "mk-task", "type": "\x1b[2J\x1b[Hcleared\nrow", "required_capabilities": ["nobody"]},
        pool=pool)
    app = TopApp(url=url, pool=pool, headers={}, interval=60)
    async with app.run_test(size=SIZE) as pilot:
        agents, queue = app.query_one("#agents", DataTable), app.query_one("#queue", DataTable)
        await until(pilot, lambda: set(keys(agents)) == set(HOSTILE) and keys(queue) == ["mk-task"],
                    what="the agents and the task")
        await pilot.pause()
        names = {r[0]: r[1] for r in rows(agents)}
        assert names == {"mk-close": "[/bold] oops", "mk-link": HOSTILE["mk-link"],
                         "mk-escape": "\\x1b[31mRED\\x1b[0m\\x1b]0;pwned-title\\x07"}
        assert rows(queue)[0][1] == "\\x1b[2J\\x1b[Hcleared\\nrow"
        lines = drawn(agents) + drawn(queue)
        text = "\n".join(line.text for line in lines)
        for shown in (*names.values(), "\\x1b[2J\\x1b[Hcleared\\nrow"):
            assert shown in text
        assert not any(ch in line.text for line in lines for ch in "\x1b\x07\n")
        assert not any(seg.style is not None and (seg.style.link or seg.style.bold)
                       for line in lines for seg in line if "RED" in seg.text or "click" in seg.text)
