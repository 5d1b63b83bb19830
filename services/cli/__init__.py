"""The ``agentbus`` command line: run the service, talk to a running one, operate its log.

It must never decide or project anything itself: it calls the runtime, the HTTP API,
``events.export`` and ``projections.rebuild``, so the CLI and the service cannot disagree.
"""

import gc

# Imported with the cyclic collector off. Importing the CLI (the HTTP app, the runtime and their
# models) leaves about 180,000 objects the collector tracks and frees almost nothing; with the
# collector on it ran about 400 times during the import, each walking the young objects again and
# now and then all of them: about 8% of every command's start (medians of six pairs here: 2.23 s
# against 2.05 s).
_collecting = gc.isenabled()
gc.disable()
try:
    from services.cli.main import main
finally:
    if _collecting:
        gc.enable()

__all__ = ["main"]
