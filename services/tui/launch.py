"""The two ways ``agentbus top`` runs: the terminal UI, and plain text tables.

Each takes the server's URL, the pool and the request headers (the token), and raises ``ApiError``
for what the user must be told (the server cannot be reached, the token is refused); the command
(``services.cli.top``) turns that into its one-line failure. Textual is imported only when the
terminal UI starts, and rich only when tables are printed, so other commands do not pay for them.

This module must never hold the UI's logic: it makes the first read and hands over.
"""

from __future__ import annotations

import asyncio
from typing import TextIO

from services.tui.source import Snapshot, Source

__all__ = ["print_tables", "run_terminal"]


async def _first(url: str, pool: str, headers: dict[str, str], status_filter: str, limit: int) -> Snapshot:
    async with Source(url, pool, headers) as source:
        return await source.snapshot(status_filter, limit)


def run_terminal(url: str, pool: str, headers: dict[str, str], *, interval: float, status_filter: str,
                 filter_text: str, limit: int) -> None:
    """Read the panes once (ApiError if that fails: nothing to show), then run the terminal UI until
    the user quits. Later failures are shown in the UI, never raised."""
    first = asyncio.run(_first(url, pool, headers, status_filter, limit))
    from services.tui.app import TopApp

    TopApp(url=url, pool=pool, headers=headers, interval=interval, status_filter=status_filter,
           filter_text=filter_text, limit=limit, first=first).run()


def print_tables(url: str, pool: str, headers: dict[str, str], out: TextIO, err: TextIO, *, interval: float,
                 once: bool, status_filter: str, filter_text: str, limit: int) -> None:
    """Print the tables to ``out`` once, or every ``interval`` seconds until interrupted (see
    ``services.tui.plain.run_plain`` for what raises and what is retried)."""
    from services.tui.plain import run_plain

    asyncio.run(run_plain(lambda: Source(url, pool, headers), out, err, status_filter=status_filter,
                          filter_text=filter_text, limit=limit, interval=interval, once=once))
