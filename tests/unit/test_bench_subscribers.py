"""``agentbus bench --subscribers``, small: real WebSocket clients in a process of their own get
every event of the run, whichever way they ask for frames and read them, and subscribers to the
same channel are sent frames built once; the clients' latency sample is uniform and bounded."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.bench.fanout_client import _Sample
from services.bench.scenario import projector_cpu_s, run_on
from services.bench.subscribers import bench_subscribers
from services.cli.common import load_settings


@pytest.mark.parametrize(("compression", "parser"), [("lz4", "simdjson"), ("none", "orjson")])
def test_every_subscriber_gets_every_event(tmp_path: Path, compression: str, parser: str) -> None:
    settings = load_settings(data_dir=tmp_path)
    result = run_on("served", bench_subscribers(settings, 3, rate=400.0, seconds=1.0, processes=1,
                                                compression=compression, parser=parser, agents=10))
    assert result["events"] >= 400  # 100 tasks, 4 commands each, an event per command
    assert result["events_appended_per_s"] > 0
    assert result["complete_subscribers"] == 3 and result["lagged"] == 0
    assert result["delivered"] == 3 * result["events"]
    assert result["tasks_completed"] == 100
    assert result["compression"] == compression and result["parser"] == parser
    # Three subscribers to `events`, pulling the same messages: most frames are built once.
    assert result["frames_reused"] >= result["frames_built"]
    assert 0 < result["latency_p50_ms"] <= result["latency_p99_ms"] <= result["latency_max_ms"]
    assert result["events_per_frame"] >= 1
    # The projector's own process (on by default with more than one CPU) did the read models' work.
    assert result["projector_cpu_s"] is None or result["projector_cpu_s"] > 0


def test_a_projector_process_cpu_is_read_while_it_runs() -> None:
    # A process that spins for 0.5 s of CPU, then waits to be told to end.
    spin = ("import sys, time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\n"
            "print('spun', flush=True)\nsys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    service = SimpleNamespace(projector_process=proc)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "spun"
        used = projector_cpu_s(service)
        assert used is not None and 0.45 <= used < 5.0
        time.sleep(0.2)  # waiting costs nothing
        again = projector_cpu_s(service)
        assert again is not None and again - used < 0.1
    finally:
        proc.communicate("")
    assert projector_cpu_s(service) is None  # gone: nothing to read
    assert projector_cpu_s(SimpleNamespace(projector_process=None)) is None


def test_the_latency_sample_is_bounded_and_uniform() -> None:
    random.seed(7)
    sample = _Sample(1000)
    offered = 100_000
    for i in range(offered):
        if sample.skip:
            sample.skip -= 1
        else:
            sample.offer(0, i, 0.0, {"time": "2026-12-05T10:00:00+00:00"})
    positions = sorted(p for _, p, _, _ in sample.values)
    assert len(positions) == 1000 == len(set(positions))
    # Uniform over the whole run: about a tenth of the sample in each tenth of the positions.
    tenths = [sum(1 for p in positions if k * offered // 10 <= p < (k + 1) * offered // 10)
              for k in range(10)]
    assert all(60 <= n <= 140 for n in tenths), tenths


def test_the_simdjson_clients_without_pysimdjson_are_refused_saying_what_to_do(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from click.testing import CliRunner

    from services.cli import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "simdjson" else find_spec(name, *a))
    result = CliRunner().invoke(main, ["bench", "--subscribers", "2", "--subscriber-parser", "simdjson"])
    assert result.exit_code == 1
    assert "--subscriber-parser simdjson needs pysimdjson" in result.output
    assert "--subscriber-parser orjson" in result.output
