"""agentbus read models: SQLAlchemy tables, the projector, queries and rebuild.

``tables`` is the schema and ``store`` the database chosen by URL. ``projector`` applies event
batches: ``loading`` reads the rows a batch needs, ``handlers`` (one per event type, by family)
change them, ``batch`` holds them meanwhile and ``sql`` writes them back with the position.
``queries`` answers reads, ``rebuild`` replays the log, ``performance`` is the pure profile fold
the coordinator shares. Depends on ``contracts`` and ``events`` only; never imports ``services``.
"""

from projections import queries, tables
from projections.projector import ProjectionError, Projector
from projections.rebuild import rebuild
from projections.store import DEFAULT_URL, MAIN_PROJECTOR, ProjectionStore

__all__ = [
    "DEFAULT_URL",
    "MAIN_PROJECTOR",
    "ProjectionError",
    "ProjectionStore",
    "Projector",
    "queries",
    "rebuild",
    "tables",
]
