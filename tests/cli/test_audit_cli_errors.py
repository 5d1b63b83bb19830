"""What the commands that work on a deployment's log say when they are pointed at the wrong place,
and that they leave nothing behind: a data directory that does not exist, a log URL no adapter
takes, a backup that cannot be made, a log with a corrupt record under `agentbus serve`.

Every command is the real one (`services.cli.main` in this process, or `agentbus serve` as a process)
on real files; an exception escaping a command (a traceback for the user) fails the test.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from services.cli.common import DEPLOYMENT, settings_options
from services.runtime.settings import Settings
from tests.cli.conftest import invoke


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# -- a data directory that is not there ------------------------------------------------------------


@pytest.mark.parametrize("args", [("audit", "verify"), ("audit", "checkpoint", "--key", "k.pem"),
                                  ("backup", "create", "nightly")])
def test_a_command_on_a_missing_data_dir_says_so_and_creates_nothing(tmp_path: Path,
                                                                    args: tuple[str, ...]) -> None:
    typo = tmp_path / "agentbus-dta"
    result = invoke(*args, "--data-dir", str(typo))
    assert result.exit_code == 1, result.output
    assert f"no log at {typo}/log.db: is --data-dir right?" in result.output
    assert not typo.exists() and _tree(tmp_path) == []


def test_a_missing_log_named_by_broker_names_the_broker(tmp_path: Path) -> None:
    result = invoke("audit", "verify", "--broker", f"sqlite:///{tmp_path}/elsewhere/log.db")
    assert result.exit_code == 1 and "is --broker right?" in result.output
    assert _tree(tmp_path) == []


def test_any_command_can_ask_for_an_existing_log(tmp_path: Path) -> None:
    """The flag a read-only command's decorator takes: checked before the command runs at all."""
    ran: list[Settings] = []

    @click.command()
    @settings_options(*DEPLOYMENT, existing_log=True)
    def reads(settings: Settings) -> None:
        ran.append(settings)

    result = CliRunner().invoke(reads, ["--data-dir", str(tmp_path / "nope")], catch_exceptions=False)
    assert result.exit_code == 1 and ran == [] and _tree(tmp_path) == []


def test_audit_verify_of_an_export_file_needs_no_log(history: tuple[Path, Any], tmp_path: Path) -> None:
    data, _ = history
    export = tmp_path / "events.lz4"
    assert invoke("events", "export", str(export), "--data-dir", str(data)).exit_code == 0
    result = invoke("audit", "verify", "--file", str(export), "--data-dir", str(tmp_path / "none"))
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "none").exists()


def test_a_backup_that_cannot_be_made_leaves_no_folder(history: tuple[Path, Any], tmp_path: Path) -> None:
    data, _ = history
    no_read_models = tmp_path / "half"
    no_read_models.mkdir()
    (no_read_models / "log.db").write_bytes((data / "log.db").read_bytes())
    result = invoke("backup", "create", "b1", "--data-dir", str(no_read_models))
    assert result.exit_code == 1 and "no read-model database" in result.output
    assert _tree(no_read_models) == ["log.db"]
    # A log file that is not SQLite fails after the backup's folders were made: they go again.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "read.db").write_bytes((data / "read.db").read_bytes())
    (broken / "log.db").write_bytes(b"not a database" * 1000)
    target = tmp_path / "safe" / "nightly"
    result = invoke("backup", "create", "b1", "--data-dir", str(broken), "--to", str(target))
    assert result.exit_code == 1 and "the copy failed" in result.output, result.output
    assert not (tmp_path / "safe").exists() and not (broken / "backups").exists()


# -- a log URL no adapter takes --------------------------------------------------------------------


@pytest.mark.parametrize("args", [("audit", "verify"), ("audit", "checkpoint", "--key", "k.pem"),
                                  ("events", "export", "out.lz4"), ("events", "tail"), ("replay",),
                                  ("projections", "rebuild"), ("backup", "create", "b1")])
@pytest.mark.parametrize("url", ["foo://bar", "sqlite://two-slashes.db"])
def test_an_unsupported_log_url_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 args: tuple[str, ...], url: str) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(*args, "--broker", url)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--broker' / AGENTBUS_BROKER" in result.output
    assert ("use one of sqlite://, kafka://" if url.startswith("foo") else "three slashes") in result.output
    assert _tree(tmp_path) == []


# -- RFC 3339 times in lower case ------------------------------------------------------------------


def test_replay_until_takes_a_time_in_lower_case(history: tuple[Path, Any]) -> None:
    data, _ = history
    upper = invoke("replay", "--data-dir", str(data), "--until", "2999-01-01T00:00:00Z", "--json")
    lower = invoke("replay", "--data-dir", str(data), "--until", "2999-01-01t00:00:00z", "--json")
    assert upper.exit_code == 0, upper.output
    assert lower.exit_code == 0, lower.output
    strip = ("seconds", "events_per_s")
    assert [line for line in lower.output.split(",") if not line.startswith(tuple(f'"{k}"' for k in strip))] \
        == [line for line in upper.output.split(",") if not line.startswith(tuple(f'"{k}"' for k in strip))]


# -- serve on a log with a corrupt record ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_serve_on_a_corrupt_log_prints_the_failure_once_without_tracebacks(history: tuple[Path, Any]) -> None:
    data, _ = history
    with sqlite3.connect(data / "log.db") as db:
        db.execute("""UPDATE records SET crc = crc + 1 WHERE topic = 'events' AND "offset" = 0""")
    env = {"PATH": "/usr/bin:/bin", "AGENTBUS_DATA": str(data)}
    done = subprocess.run([sys.executable, "-m", "services.cli", "serve", "--port", str(_free_port())],
                          env=env, capture_output=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "Traceback" not in err, err
    assert err.count("corrupt record at events[0]@0") == 1, err
    assert "agentbus: the service stopped: corrupt record at events[0]@0" in err
