"""``agentbus top`` on a terminal: a Textual app with the pool's agents, queue, workflows and a live
event tail, a filter, a task status filter, and a task's audit a key away.

The panes are read from the HTTP API (``services.tui.source``): again soon after an event that
changes them arrives on the tail (``services.tui.stream``), a burst of events making one read, and
every ``interval`` seconds when none does. When the server goes away the panes keep what they
last showed and the status line says what is wrong and when the next try is; nothing is raised.

This module must never send a write to the server, nor show anything the API does not give.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Header, Input, RichLog, Static

from services.tui.audit import AuditScreen
from services.tui.source import ApiError, Snapshot, Source
from services.tui.stream import StreamState, Tail
from services.tui.views import (
    AGENT_COLUMNS,
    QUEUE_COLUMNS,
    WORKFLOW_COLUMNS,
    Row,
    agent_rows,
    cells,
    event_line,
    matches,
    next_status,
    relevant,
    task_rows,
    workflow_rows,
)

__all__ = ["QueueTable", "TopApp"]

# A burst of events is read once, this long after its first event ...
DEBOUNCE_S = 0.25
# ... and event-driven reads are at least this far apart, however busy the pool.
MIN_GAP_S = 1.0
TAIL_LINES = 1000
_PANE_ACTIONS = frozenset({"filter", "clear_filter", "cycle_status", "pause", "refresh"})


class QueueTable(DataTable[Text]):
    """The queue pane: Enter opens the highlighted task's audit."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "select_cursor", "Task audit")]


class TopApp(App[None]):
    """The pool at a glance, live (see the module docstring)."""

    TITLE = "agentbus top"
    CSS = """
    #status { height: 1; padding: 0 1; background: $boost; }
    #status.trouble { background: $error 40%; }
    #filter { display: none; height: 3; }
    #filter.shown { display: block; }
    DataTable, RichLog { border: round $primary 50%; border-title-color: $text; }
    DataTable:focus, RichLog:focus { border: round $accent; }
    #agents { height: 1fr; }
    #queue { height: 2fr; }
    #workflows { height: 1fr; }
    #tail { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("s", "cycle_status", "Task status"),
        Binding("p", "pause", "Pause tail"),
        Binding("r", "refresh", "Refresh"),
        Binding("tab", "focus_next", "Next pane", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, *, url: str, pool: str, headers: dict[str, str], interval: float = 5.0,
                 status_filter: str = "open", filter_text: str = "", limit: int = 200, backlog: int = 50,
                 first: Snapshot | None = None) -> None:
        super().__init__()
        self.url, self.pool, self.headers = url, pool, headers
        self.interval, self.limit, self.backlog = interval, limit, backlog
        self.status_filter, self.filter_text = status_filter, filter_text
        self.snapshot: Snapshot | None = first
        self.load_error: str | None = None
        self.loads = 0
        self.paused = False
        self.missed = 0
        self.tail_lines: deque[str] = deque(maxlen=TAIL_LINES)
        self.stream_state = StreamState(False, "connecting")
        self.source: Source | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self.sub_title = f"{url}  pool {pool}"

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="status", markup=False)
        yield Input(value=self.filter_text, placeholder="filter: words every shown row must contain "
                                                        "(Enter keeps it, Esc clears it)", id="filter")
        for table in (DataTable[Text](id="agents"), QueueTable(id="queue"), DataTable[Text](id="workflows")):
            table.cursor_type = "row"
            table.zebra_stripes = True
            yield table
        yield RichLog(id="tail", max_lines=TAIL_LINES, wrap=False, markup=False, highlight=False)
        yield Footer()

    def on_mount(self) -> None:
        for table_id, columns in (("agents", AGENT_COLUMNS), ("queue", QUEUE_COLUMNS),
                                  ("workflows", WORKFLOW_COLUMNS)):
            self.query_one(f"#{table_id}", DataTable).add_columns(*columns)
        if self.filter_text:
            self.query_one("#filter", Input).add_class("shown")
        self.source = Source(self.url, self.pool, self.headers)
        tail = Tail(self.url, self.pool, self.headers, on_event=self._on_event, on_state=self._on_state,
                    backlog=self.backlog)
        # Tasks of the app's own rather than Textual workers: on exit they are cancelled and awaited
        # (the WebSocket closed, the last read ended) before the HTTP client closes.
        self._tasks = [asyncio.create_task(tail.run(), name="agentbus-top-tail"),
                       asyncio.create_task(self._refresher(), name="agentbus-top-refresh")]
        self._render_panes()
        self._render_tail()
        self.query_one("#queue", DataTable).focus()

    async def on_unmount(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.source is not None:
            await self.source.aclose()

    # --- reading the panes ------------------------------------------------------------------------

    async def _refresher(self) -> None:
        """Read the panes now, then soon after relevant events, else every ``interval`` seconds."""
        last = -MIN_GAP_S
        while True:
            await self._load()
            last = time.monotonic()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            except TimeoutError:
                continue
            await asyncio.sleep(max(DEBOUNCE_S, last + MIN_GAP_S - time.monotonic()))

    async def _load(self) -> None:
        self._wake.clear()
        assert self.source is not None
        try:
            self.snapshot = await self.source.snapshot(self.status_filter, self.limit)
            self.load_error = None
        except ApiError as exc:
            self.load_error = str(exc)
        except Exception as exc:  # an answer of an unexpected shape: said, and tried again later
            self.load_error = f"unexpected answer: {type(exc).__name__}: {exc}"
        self.loads += 1
        self._render_panes()

    def _render_panes(self) -> None:
        snap = self.snapshot
        if snap is not None:
            now = snap.taken_at
            shown = f"{self.status_filter}, {snap.tasks_total} in all"
            self._fill("agents", agent_rows(snap.agents, now), "agents", len(snap.agents))
            self._fill("queue", task_rows(snap.tasks, now), f"queue: {shown}", len(snap.tasks))
            self._fill("workflows", workflow_rows(snap.workflows), "workflows", snap.workflows_total)
        self._render_status()

    def _fill(self, table_id: str, rows: Sequence[Row], title: str, total: int) -> None:
        """Show ``rows`` that pass the filter, keeping the highlighted row where it still is."""
        table = self.query_one(f"#{table_id}", DataTable)
        current = self.selected_key(table)
        table.clear()
        kept = [r for r in rows if matches(r.cells, self.filter_text)]
        for row in kept:
            table.add_row(*cells(row), key=row.key)
        if current is not None and any(r.key == current for r in kept):
            table.move_cursor(row=table.get_row_index(current), animate=False)
        table.border_title = f"{title} ({len(kept)} shown of {total})"

    @staticmethod
    def selected_key(table: DataTable[Any]) -> str | None:
        """The key of the highlighted row, if any."""
        if table.row_count == 0:
            return None
        value = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return None if value is None else str(value)

    def _render_status(self) -> None:
        status = self.query_one("#status", Static)
        parts = [self.stream_state.text]
        if self.load_error is not None:
            parts.append(f"panes not refreshed: {self.load_error}")
        elif self.snapshot is not None:
            parts.append(f"read {self.snapshot.taken_at:%H:%M:%S} UTC")
        parts.append(f"tasks: {self.status_filter}")
        if self.filter_text.strip():
            parts.append(f"filter: {self.filter_text.strip()!r}")
        if self.paused:
            parts.append(f"tail PAUSED ({self.missed} new)")
        status.update(" | ".join(parts))
        status.set_class(self.load_error is not None or not self.stream_state.live, "trouble")

    # --- the tail ---------------------------------------------------------------------------------

    def _on_state(self, state: StreamState) -> None:
        self.stream_state = state
        self._render_status()

    def _on_event(self, message: dict[str, Any]) -> None:
        event = message.get("event") or {}
        line = event_line(message)
        self.tail_lines.append(line)
        if self.paused:
            self.missed += 1
            self._render_status()
        elif matches([line], self.filter_text):
            self.query_one("#tail", RichLog).write(line)
        if relevant(str(event.get("type", ""))):
            self._wake.set()
        screen = self.screen
        if isinstance(screen, AuditScreen):
            data = event.get("data")
            about = data.get("task_id") if isinstance(data, dict) else None
            if screen.task_id in (event.get("subject"), about):
                screen.stale()

    def _render_tail(self) -> None:
        log = self.query_one("#tail", RichLog)
        log.clear()
        for line in self.tail_lines:
            if matches([line], self.filter_text):
                log.write(line)
        log.border_title = "events" + (" (paused)" if self.paused else "")

    # --- keys -------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The panes' keys act on the panes: hidden (and off) while a task's audit covers them."""
        if action in _PANE_ACTIONS and isinstance(self.screen, AuditScreen):
            return False
        return True

    def action_filter(self) -> None:
        """Show the filter input and type into it."""
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("shown")
        self.query_one("#queue", DataTable).focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, message: Input.Changed) -> None:
        self.filter_text = message.value
        self._render_panes()
        self._render_tail()

    @on(Input.Submitted, "#filter")
    def _filter_kept(self) -> None:
        box = self.query_one("#filter", Input)
        if not box.value.strip():
            box.remove_class("shown")
        self.query_one("#queue", DataTable).focus()

    def action_cycle_status(self) -> None:
        """The next task status filter; the queue is read again at once."""
        self.status_filter = next_status(self.status_filter)
        self._render_status()
        self._wake.set()

    def action_pause(self) -> None:
        """Hold the tail still (events are kept and shown on resume)."""
        self.paused = not self.paused
        if not self.paused:
            self.missed = 0
            self._render_tail()
        self.query_one("#tail", RichLog).border_title = "events" + (" (paused)" if self.paused else "")
        self._render_status()

    def action_refresh(self) -> None:
        self._wake.set()

    @on(DataTable.RowSelected, "#queue")
    def _open_audit(self, message: DataTable.RowSelected) -> None:
        if self.source is not None and message.row_key.value is not None:
            self.push_screen(AuditScreen(self.source, str(message.row_key.value)))
