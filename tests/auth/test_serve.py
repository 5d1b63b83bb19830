"""Secure by default: ``agentbus serve`` (a real process) refuses a non-loopback address without
authentication configured, runs open on loopback saying so, and requires tokens with
``--auth required``; the CLI's client commands send ``AGENTBUS_TOKEN``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from services.cli import main
from services.executors.standins.serving import free_port
from tests.auth.conftest import Deployment, deployment

REPO = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}, **extra}


def _agentbus(*args: str, env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=REPO, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


@contextmanager
def _serving(stderr: Path, *args: str) -> Iterator[str]:
    """``agentbus serve`` in a process of its own, its stderr into the file ``stderr``."""
    port = free_port()
    with stderr.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--port", str(port), *args],
                                cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, stderr.read_text()
            try:
                if httpx.get(f"{url}/v1/health", timeout=2).json().get("deciders_ready"):
                    break
            except (httpx.TransportError, ValueError):
                pass
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_refuses_a_public_address_without_auth_and_says_how_to_fix_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = _agentbus("serve", "--host", "0.0.0.0", "--port", str(free_port()), "--data-dir", str(data))
    assert result.returncode == 1
    message = result.stderr
    assert "refusing to listen on 0.0.0.0 without authentication" in message
    assert "agentbus tokens create --role admin" in message
    assert "--auth required" in message and "--auth off" in message
    assert not data.exists()  # refused before anything was opened


def test_serve_on_loopback_without_auth_runs_open_and_says_so(tmp_path: Path) -> None:
    stderr = tmp_path / "serve.err"
    with _serving(stderr, "--data-dir", str(tmp_path / "data")) as url:
        assert httpx.get(f"{url}/v1/agents").status_code == 200
        assert httpx.post(f"{url}/v1/tasks", json={"type": "x"}).status_code == 202
    said = stderr.read_text()
    assert "agentbus: authentication is off: open to local processes on 127.0.0.1 only" in said


def test_the_first_admin_token_then_serve_with_auth_on_a_public_address(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    created = _agentbus("tokens", "create", "--role", "admin", "--wait", "0", "--data-dir", data)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    public = ("--host", "0.0.0.0", "--auth", "required", "--data-dir", data)
    with _serving(tmp_path / "serve.err", *public) as url:
        assert httpx.get(f"{url}/v1/agents").status_code == 401
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/v1/agents", headers={"Authorization": f"Bearer {token}"}).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        reachable = socket.gethostbyname(socket.gethostname())
        if reachable != "127.0.0.1":  # listening beyond loopback, and guarded there too
            assert httpx.get(url.replace("127.0.0.1", reachable) + "/v1/agents").status_code == 401


def test_serve_refuses_a_jwt_secret_too_short_to_be_safe(tmp_path: Path) -> None:
    result = _agentbus("serve", "--auth", "required", "--port", str(free_port()), "--data-dir",
                       str(tmp_path / "data"), env=_env(AGENTBUS_JWT_SECRET="short"))
    assert result.returncode == 1
    assert ("cannot verify JWTs: the JWT secret (AGENTBUS_JWT_SECRET) must be at least 32 bytes"
            in result.stderr)


@pytest.fixture
def dep(tmp_path: Path) -> Iterator[Deployment]:
    with deployment(tmp_path) as d:
        yield d


def test_client_commands_send_agentbus_token(dep: Deployment) -> None:
    operator = dep.token("operator")
    runner = CliRunner()
    args = ["agent", "register", "worker", "--id", "w1", "--url", dep.url]
    refused = runner.invoke(main, args, env={"AGENTBUS_TOKEN": None})
    assert refused.exit_code == 1 and "HTTP 401" in refused.stderr
    done = runner.invoke(main, args, env={"AGENTBUS_TOKEN": operator})
    assert done.exit_code == 0, done.output
    listed = runner.invoke(main, ["agent", "list", "--url", dep.url], env={"AGENTBUS_TOKEN": operator})
    assert listed.exit_code == 0 and '"w1"' in listed.stdout
    definition = dep.data.parent / "flow.yaml"
    definition.write_text("name: flow\ntasks:\n  - name: a\n")
    ran = runner.invoke(main, ["workflow", "run", str(definition), "--url", dep.url],
                        env={"AGENTBUS_TOKEN": operator})
    assert ran.exit_code == 0, ran.output
