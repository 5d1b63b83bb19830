"""agentbus read models: SQLAlchemy tables, the projector, queries and rebuild.

Depends on ``contracts`` and ``events`` only; never imports ``services``.
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
