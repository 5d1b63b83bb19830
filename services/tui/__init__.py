"""``agentbus top``: a pool's agents, queue, workflows and live events on a terminal (Textual), or
as plain text tables without one. A client of the public HTTP API and the event WebSocket only;
the click command is ``services.cli.top``.

Public: ``run_terminal`` and ``print_tables`` (the two modes), ``ApiError`` (what they raise for the
user to read) and ``STATUS_FILTERS`` (the queue's status filters). The app, its screens, the
stream, the source and the views are private to the package.
"""

from services.tui.launch import print_tables, run_terminal
from services.tui.source import ApiError
from services.tui.views import STATUS_FILTERS

__all__ = ["STATUS_FILTERS", "ApiError", "print_tables", "run_terminal"]
