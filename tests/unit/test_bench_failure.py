"""A benchmark run that fails stops what it started, so ``agentbus bench`` reports the error and
exits instead of waiting forever for the connections' threads."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import services.bench.scenario as scenario
from services.bench.scenario import run_on
from services.cli.common import load_settings


def test_a_run_that_fails_midway_stops_its_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def refused(*args: object, **kwargs: object) -> None:
        raise RuntimeError("registration refused")

    monkeypatch.setattr(scenario, "_register", refused)
    settings = load_settings(data_dir=tmp_path)
    before = set(threading.enumerate())
    run = scenario.bench_inprocess(settings, agents=2, tasks=2, rate=100.0, paced_seconds=0.1)
    with pytest.raises(RuntimeError, match="registration refused"):
        run_on("asyncio", run)
    left = [t for t in threading.enumerate() if t not in before and not t.daemon]
    for thread in left:
        thread.join(5)
    assert [t.name for t in left if t.is_alive()] == []
