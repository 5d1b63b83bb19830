"""The ``agentbus`` command line: run the service, talk to a running one, operate its log.

It must never decide or project anything itself: it calls the runtime, the HTTP API,
``events.export`` and ``projections.rebuild``, so the CLI and the service cannot disagree.
"""

from services.cli.main import main

__all__ = ["main"]
