"""The services the point-in-time and history tests read: one per runtime (embedded, cluster).

Each module gets its own cluster services and event loop (module scope), as tests/api's modules
share theirs per package.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

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
