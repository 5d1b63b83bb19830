"""The services the point-in-time and history tests read: one per runtime (embedded, cluster).

Each module gets its own cluster services and event loop (module scope), as tests/api's modules
share theirs per package.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from services.audit.backup import MANIFEST
from services.runtime.service import Service
from tests.api.runtimes import ClusterServices, embedded


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster_services(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ClusterServices]:
    services = ClusterServices(tmp_path_factory.mktemp("cluster"))
    try:
        yield services
    finally:
        await services.close()


@pytest_asyncio.fixture(loop_scope="module")
async def service(request: pytest.FixtureRequest, tmp_path: Path,
                  cluster_services: ClusterServices) -> AsyncIterator[Service]:
    """A started service of the runtime the test is parametrized with (``embedded`` or cluster)."""
    opened = embedded(tmp_path) if request.param == "embedded" else cluster_services.take()
    async with opened as runtime:
        yield runtime


def rewrite_manifest(path: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    """Apply ``change`` to the manifest of the backup at ``path`` (as someone editing it would)."""
    raw = orjson.loads((path / MANIFEST).read_bytes())
    change(raw)
    (path / MANIFEST).write_bytes(orjson.dumps(raw))


def rehash(path: Path, name: str) -> None:
    """Make the manifest's hash and size of the backup's file ``name`` match the file again."""

    def fix(raw: dict[str, Any]) -> None:
        for f in raw["files"]:
            if f["name"] == name:
                f["sha256"] = hashlib.sha256((path / name).read_bytes()).hexdigest()
                f["size"] = (path / name).stat().st_size

    rewrite_manifest(path, fix)
