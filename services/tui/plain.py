"""``agentbus top`` without a terminal: the agents, the queue and the workflows as plain text
tables, printed once (``--once``) or again every ``--interval`` seconds, for scripts, logs and pipes.

The rows are ``services.tui.views``'s, the same the terminal UI shows; rich lays them out as
borderless columns (``kubectl get`` style), without colour or escape codes, so ``grep`` and
``awk`` read them. The control characters a row's text may hold are already written as escapes
there (``views.visible``): whatever an agent's name says, a row stays one line and the terminal
is never told to do anything.

This module must never read from the terminal or draw on it: it only writes text to a stream.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Sequence
from typing import TextIO

from rich.console import Console
from rich.table import Table

from services.tui.source import ApiError, Snapshot, Source
from services.tui.views import (
    AGENT_COLUMNS,
    QUEUE_COLUMNS,
    WORKFLOW_COLUMNS,
    Row,
    agent_rows,
    matches,
    task_rows,
    visible,
    workflow_rows,
)

__all__ = ["print_snapshot", "run_plain"]

# Wide enough that a row is one line in a log file; a narrower table takes only what it needs.
WIDTH = 250


def _table(title: str, columns: Sequence[str], rows: list[Row]) -> Table:
    table = Table(*columns, title=title, title_justify="left", box=None, show_edge=False, pad_edge=False,
                  title_style="", header_style="")
    for row in rows:
        table.add_row(*row.cells)
    if not rows:
        table.add_row("(none)", *[""] * (len(columns) - 1))
    return table


def _shown(rows: list[Row], text: str) -> list[Row]:
    return [r for r in rows if matches(r.cells, text)]


def print_snapshot(snap: Snapshot, out: TextIO, *, url: str, pool: str, filter_text: str = "") -> None:
    """Write the three tables of ``snap`` (rows narrowed to ``filter_text``) to ``out``."""
    text = io.StringIO()
    console = Console(file=text, width=WIDTH, color_system=None, force_terminal=False, highlight=False,
                      emoji=False, markup=False, soft_wrap=False)
    now = snap.taken_at
    agents = _shown(agent_rows(snap.agents, now), filter_text)
    tasks = _shown(task_rows(snap.tasks, now), filter_text)
    runs = _shown(workflow_rows(snap.workflows), filter_text)
    narrowed = f", filter {filter_text!r}" if filter_text.strip() else ""
    queue = snap.status.get("queue") or {}
    spend = float(snap.status.get("total_cost_usd") or 0)
    console.print(visible(f"agentbus top  {url}  pool {pool}  {now:%Y-%m-%d %H:%M:%S} UTC  queue depth "
                          f"{queue.get('depth', 0)}  spend ${spend:.4f}"))
    console.print()
    console.print(_table(f"AGENTS ({len(agents)} shown of {len(snap.agents)} registered{narrowed})",
                         AGENT_COLUMNS, agents))
    console.print()
    console.print(_table(f"QUEUE: {snap.status_filter} ({len(tasks)} shown of {snap.tasks_total}{narrowed})",
                         QUEUE_COLUMNS, tasks))
    console.print()
    console.print(_table(f"WORKFLOWS ({len(runs)} shown of {snap.workflows_total}{narrowed})",
                         WORKFLOW_COLUMNS, runs))
    # rich pads every line to the table's width; a script reads lines without the padding.
    out.write("".join(f"{line.rstrip()}\n" for line in text.getvalue().splitlines()))
    out.flush()


async def run_plain(make_source: Callable[[], Source], out: TextIO, err: TextIO, *, status_filter: str,
                    filter_text: str, limit: int, interval: float, once: bool) -> None:
    """Print the tables once, or every ``interval`` seconds until interrupted. ApiError out of
    ``--once``, or for a token the server refuses (no later try will do better); otherwise a
    failed read is reported on ``err`` and tried again at the next interval."""
    async with make_source() as source:
        while True:
            try:
                snap = await source.snapshot(status_filter, limit)
            except ApiError as exc:
                if once or exc.auth:
                    raise
                err.write(f"agentbus: {exc} (trying again in {interval:g} s)\n")
                err.flush()
            else:
                print_snapshot(snap, out, url=source.url, pool=source.pool, filter_text=filter_text)
                if once:
                    return
                out.write(f"\n{'-' * 40} next in {interval:g} s\n\n")
                out.flush()
            await asyncio.sleep(interval)
