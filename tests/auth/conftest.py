"""Authentication tests run against real servers: the app (auth required) served by uvicorn on a
local port, its own embedded runner on SQLite files, tokens made by the ``agentbus tokens`` CLI
straight on the deployment's log, and requests from real clients (httpx, websockets)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from fastapi import FastAPI

from services.cli import main
from services.executors.standins.serving import serving
from services.http.app import create_app
from services.runtime.settings import ENV_PREFIX, Settings
from tests.waiting import ready, until  # noqa: F401 (the auth tests import them from here)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings and the CLI read AGENTBUS_*; a developer's shell must not leak into the tests."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) and not name.startswith(f"{ENV_PREFIX}TEST_"):
            monkeypatch.delenv(name)


@dataclass
class Deployment:
    """A running server with authentication required, and the CLI pointed at its data directory."""

    data: Path
    url: str
    settings: Settings
    app: FastAPI | None = None

    def cli(self, *args: str) -> Result:
        """``agentbus <args> --data-dir <data>`` in this process (a clean environment)."""
        env = {name: None for name in os.environ if name.startswith(ENV_PREFIX)}
        return CliRunner().invoke(main, [*args, "--data-dir", str(self.data)], env=env,
                                  catch_exceptions=False)

    def token(self, role: str, agent_id: str | None = None, name: str | None = None) -> str:
        """A new API token, made with ``agentbus tokens create`` (which waits until it is usable)."""
        args = ["tokens", "create", "--role", role]
        args += ["--agent-id", agent_id] if agent_id else []
        args += ["--name", name] if name else []
        result = self.cli(*args)
        assert result.exit_code == 0, result.output
        lines = result.stdout.strip().splitlines()
        assert "status: applied" in lines, result.output
        return lines[-1]

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)


@contextlib.contextmanager
def deployment(root: Path, **overrides: Any) -> Iterator[Deployment]:
    """Serve the API with ``auth: required`` (and ``overrides``) on its own data directory."""
    settings = Settings(data_dir=root / "data", auth="required", **overrides)
    app = create_app(settings=settings)
    with serving(app) as url:
        ready(url)
        yield Deployment(root / "data", url, settings, app)



