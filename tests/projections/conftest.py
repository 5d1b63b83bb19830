"""The ``store`` fixture, parameterized once over every read-model backend (SQLite, PostgreSQL).

Every test taking ``store`` runs against both. PostgreSQL comes from AGENTBUS_TEST_DATABASE
(e.g. postgresql+asyncpg://agentbus@127.0.0.1:5433/agentbus_test); each test gets its own schema,
dropped afterwards, so tests never see each other's rows and may share the database with others.
Without a reachable server the PostgreSQL runs skip locally and fail in CI (CI=true).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NoReturn

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from projections import ProjectionStore

PG_ENV = "AGENTBUS_TEST_DATABASE"
PG_HINT = (
    "PostgreSQL not running: start it with deploy/postgres/up.sh and set "
    f"{PG_ENV}=postgresql+asyncpg://agentbus@127.0.0.1:5433/agentbus_test"
)


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI never skips the PostgreSQL tests)")
    pytest.skip(f"{PG_HINT} ({reason})")


async def _schema_engine_url() -> str:
    """The PostgreSQL URL to test against, after checking that it answers."""
    url = os.environ.get(PG_ENV)
    if not url:
        _unavailable(f"{PG_ENV} is not set")
    engine = create_async_engine(url, connect_args={"timeout": 5})
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any failure to connect means "not running" here
        _unavailable(f"cannot connect to {url}: {exc!r}")
    finally:
        await engine.dispose()
    return url


async def _drop_schema(url: str, schema: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ProjectionStore]:
    """A started, empty read-model store on each backend."""
    if request.param == "sqlite":
        instance = ProjectionStore(f"sqlite+aiosqlite:///{tmp_path / 'read.db'}")
        await instance.start()
        try:
            yield instance
        finally:
            await instance.close()
        return
    url = await _schema_engine_url()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    instance = ProjectionStore(url, schema=schema)
    try:
        await instance.start()
        yield instance
    finally:
        await instance.close()
        await _drop_schema(url, schema)


@pytest.fixture
async def second_store(store: ProjectionStore, tmp_path: Path) -> AsyncIterator[ProjectionStore]:
    """Another empty store on the same backend as ``store`` (e.g. the target of a rebuild)."""
    if store.dialect == "sqlite":
        other = ProjectionStore(f"sqlite+aiosqlite:///{tmp_path / 'read2.db'}")
        await other.start()
        try:
            yield other
        finally:
            await other.close()
        return
    schema = f"t_{uuid.uuid4().hex[:16]}"
    other = ProjectionStore(store.url, schema=schema)
    try:
        await other.start()
        yield other
    finally:
        await other.close()
        await _drop_schema(store.url, schema)
