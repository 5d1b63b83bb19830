"""The log fixture, parameterized over every backend: contract tests are written once.

Add a backend by adding its name to BACKENDS and a factory to FACTORIES. A factory returns an
unstarted log for a fresh, isolated namespace; the fixture starts and closes it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from events import EventLog, open_log


def _sqlite(tmp_path: Path) -> EventLog:
    return open_log(f"sqlite:///{tmp_path / 'log.db'}")


# A "kafka" factory will skip locally with a message and fail in CI when no broker answers.
FACTORIES: dict[str, Callable[[Path], EventLog]] = {"sqlite": _sqlite}
BACKENDS = list(FACTORIES)


@pytest.fixture(params=BACKENDS)
async def log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventLog]:
    """A started, empty log of each backend."""
    instance = FACTORIES[request.param](tmp_path)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.close()


@pytest.fixture
def topic() -> str:
    """A topic name unique to the test, so shared brokers need no cleanup between tests."""
    return f"t-{uuid.uuid4().hex[:12]}"
