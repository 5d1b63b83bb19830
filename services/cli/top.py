"""``agentbus top``: watch a pool live on a terminal, or print its tables where there is none.

On a terminal it runs the terminal UI of ``services.tui``; with ``--once``, ``--plain``, or when
stdout or stdin is not a terminal (a pipe, a file, a script) it prints plain text tables. It finds
the server and the token as the other client commands do (``services.cli.client``) and fails as
they do, with one line on stderr and exit status 1: ``cannot reach agentbus at URL: ...``, or
``HTTP 401: ...`` with what to do about the token.

This module must never hold the UI's logic: it reads the options and hands over to ``services.tui``.
"""

from __future__ import annotations

import sys

import click

from services.cli.common import bearer, fail, settings_options
from services.runtime.settings import Settings
from services.tui import STATUS_FILTERS, ApiError, print_tables, run_terminal

__all__ = ["top"]

FINDS_THE_SERVER = ("Talks to a running server: --url or AGENTBUS_URL; without them "
                    "http://AGENTBUS_HOST:AGENTBUS_PORT (default http://127.0.0.1:8080). The token is "
                    "--token, else AGENTBUS_TOKEN.")


@click.command(epilog=FINDS_THE_SERVER)
@click.option("--token", help="Bearer token to send (default: AGENTBUS_TOKEN, which, unlike a flag, other "
                              "users cannot read in the process list).")
@click.option("--interval", type=click.FloatRange(min=0.5), default=5.0, show_default=True,
              help="Seconds between reads of the tables when no event calls for one (terminal), or "
                   "between prints (plain text).")
@click.option("--once", is_flag=True, help="Print the tables once as plain text and exit.")
@click.option("--plain", is_flag=True, help="Plain text tables even on a terminal.")
@click.option("--status", "status_filter", type=click.Choice(STATUS_FILTERS), default="open",
              show_default=True, help="Tasks the queue shows (open: queued, retrying, assigned, running).")
@click.option("--filter", "filter_text", default="", help="Show only rows containing every word of this.")
@click.option("--limit", type=click.IntRange(1, 500), default=200, show_default=True,
              help="Most tasks per status, and most workflow runs, read.")
@settings_options("url", "pool")
def top(token: str | None, interval: float, once: bool, plain: bool, status_filter: str, filter_text: str,
        limit: int, settings: Settings) -> None:
    """Watch a pool live: agents, the queue, workflows and the event tail.

    Keys: / filter, s cycle the task status filter, Enter a task's audit, p pause the tail,
    r refresh, q quit. Without a terminal (or with --once / --plain), plain text tables instead.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else bearer(settings)
    try:
        if once or plain or not (sys.stdout.isatty() and sys.stdin.isatty()):
            print_tables(settings.url, settings.pool, headers, sys.stdout, sys.stderr, once=once,
                         interval=interval, status_filter=status_filter, filter_text=filter_text, limit=limit)
        else:
            run_terminal(settings.url, settings.pool, headers, interval=interval, status_filter=status_filter,
                         filter_text=filter_text, limit=limit)
    except ApiError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
