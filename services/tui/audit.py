"""The task audit screen of ``agentbus top``: one task's history timeline (every event about it, each
with the command, decision or timer that caused it) and its assignment audit (each assignment's
candidates, their scores and score components, and why the chosen agent won).

It reads ``GET /v1/tasks/{id}``, ``/v1/tasks/{id}/history`` and ``/v1/audit/assignments?task_id=``,
and again shortly after the app sees a new event about the task (``stale``).

This module must never write to the server; a failed read is shown on the screen, never raised.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Header, Static

from services.tui.source import ApiError, Source, TaskAudit
from services.tui.views import (
    CANDIDATE_COLUMNS,
    TIMELINE_COLUMNS,
    assignment_summary,
    candidate_rows,
    cells,
    task_header,
    task_row_behind,
    timeline_rows,
    visible,
)

__all__ = ["AuditScreen"]

# New events about the task are read this long after the first of them.
RELOAD_AFTER_S = 0.3
# Reads again, RELOAD_AFTER_S apart, while the task's row lags its history (then shows it as it is).
CATCH_UP_READS = 10


class AuditScreen(Screen[None]):
    """One task's history and assignment audit (see the module docstring)."""

    CSS = """
    #audit-body { height: 1fr; }
    #task, .why { padding: 0 1; margin: 1 0 0 0; }
    #audit-error { padding: 0 1; background: $error 40%; display: none; }
    #audit-error.shown { display: block; }
    #timeline, .candidates { height: auto; max-height: 24; border: round $primary 50%; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("backspace", "app.pop_screen", "Back", show=False),
        Binding("r", "reload", "Reload"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, source: Source, task_id: str) -> None:
        super().__init__()
        self.source, self.task_id = source, task_id
        self.audit: TaskAudit | None = None
        self.error: ApiError | None = None
        self.loads = 0
        self._pending = False
        self._catch_up = 0

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="audit-error", markup=False)
        with VerticalScroll(id="audit-body"):
            yield Static(f"task {self.task_id}: reading…", id="task", markup=False)
            timeline = DataTable[Text](id="timeline", cursor_type="row", zebra_stripes=True)
            timeline.border_title = "history"
            yield timeline
            yield Static("assignments: none yet", id="assignments-title", classes="why", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"audit of task {self.task_id}"
        self.query_one("#timeline", DataTable).add_columns(*TIMELINE_COLUMNS)
        self.action_reload()

    def action_reload(self) -> None:
        self.run_worker(self._load(), group="audit", exclusive=True, exit_on_error=False)

    def stale(self) -> None:
        """A new event about the task arrived: read the audit again shortly."""
        if not self._pending:
            self._pending = True
            self.run_worker(self._later(), group="audit-later", exit_on_error=False)

    async def _later(self) -> None:
        await asyncio.sleep(RELOAD_AFTER_S)
        self._pending = False
        await self._load()

    async def _load(self) -> None:
        try:
            self.audit = await self.source.audit(self.task_id)
            self.error = None
        except ApiError as exc:
            self.error = exc
        self.loads += 1
        await self._show()
        if self.audit is not None and task_row_behind(self.audit.task, self.audit.history):
            if self._catch_up < CATCH_UP_READS:
                self._catch_up += 1
                self.stale()
        else:
            self._catch_up = 0

    async def _show(self) -> None:
        banner = self.query_one("#audit-error", Static)
        banner.update("" if self.error is None else f"cannot read the audit: {self.error}")
        banner.set_class(self.error is not None, "shown")
        audit = self.audit
        if audit is None:
            return
        complete = "" if audit.complete else " (more events follow: the read stopped short of the end)"
        self.query_one("#task", Static).update(task_header(audit.task))
        timeline = self.query_one("#timeline", DataTable)
        timeline.clear()
        for row in timeline_rows(audit.history):
            timeline.add_row(*cells(row), key=row.key)
        timeline.border_title = f"history: {len(audit.history)} events{complete}"
        body = self.query_one("#audit-body", VerticalScroll)
        await body.query(".assignment").remove()
        title = self.query_one("#assignments-title", Static)
        title.update(f"assignments: {len(audit.assignments) or 'none yet'}")
        widgets: list[Widget] = []
        for i, assignment in enumerate(audit.assignments):
            widgets.append(Static(assignment_summary(assignment), classes="why assignment", markup=False))
            table = DataTable[Text](id=f"candidates-{i}", classes="candidates assignment", cursor_type="row")
            table.border_title = Text(visible(f"candidates of attempt {assignment.get('attempt')}"))
            table.add_columns(*CANDIDATE_COLUMNS)
            for row in candidate_rows(assignment):
                table.add_row(*cells(row), key=row.key)
            widgets.append(table)
        if widgets:
            await body.mount_all(widgets)

    def text(self) -> str:
        """Everything the screen says, as plain text (what a reader sees, for logs and tests)."""
        parts = [str(self.query_one("#task", Static).content),
                 str(self.query_one("#audit-error", Static).content)]
        for table in self.query(DataTable):
            parts.append(str(table.border_title or ""))
            parts += [" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]
        parts += [str(s.content) for s in self.query(".why").results(Static)]
        return "\n".join(parts)
