"""``agentbus bench --executor``: a small run reports each raw client and each ratio; the report says
when its paced rate is close to what the executor completes saturated, where the paced latency is
queueing rather than what a call costs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from contracts import event_types as e
from services.bench.executors import QUEUEING_LOAD, _Watch, bench_executor, queueing_note
from services.bench.scenario import run_on
from services.cli.common import load_settings


def test_a_paced_rate_near_or_over_saturation_is_called_out() -> None:
    assert queueing_note(0.5) is None
    assert queueing_note(QUEUEING_LOAD - 0.01) is None
    near = queueing_note(QUEUEING_LOAD)
    assert near is not None and "80% of this run's saturated rate" in near
    over = queueing_note(1.198)
    assert over is not None and "120%" in over and "queue" in over


def test_a_small_run_reports_both_raw_clients_and_each_ratio(tmp_path: Path) -> None:
    """The run, small: the raw rate of the executor's own client (httpx2) and of httpx, beside tasks
    through the executor calling in the host's process and in a worker process, every task done."""
    settings = load_settings(data_dir=tmp_path)
    result = run_on("served", bench_executor(settings, 60, rate=50.0, paced_seconds=0.4, processes=1))
    assert result["raw_calls_per_s"] > 0 and result["raw_httpx_calls_per_s"] > 0
    assert 0 < result["raw_p50_ms"] <= result["raw_p99_ms"]
    assert 0 < result["raw_httpx_p50_ms"] <= result["raw_httpx_p99_ms"]
    assert [r["processes"] for r in result["runs"]] == [0, 1]
    for run in result["runs"]:
        assert run["failed"] == 0 and run["tasks_per_s"] > 0
        assert run["ratio_to_raw"] == round(run["tasks_per_s"] / result["raw_calls_per_s"], 3)
        assert run["ratio_to_raw_httpx"] == round(run["tasks_per_s"] / result["raw_httpx_calls_per_s"], 3)
        assert 0 < run["added_p50_ms"] <= run["added_p99_ms"]


async def test_tasks_that_end_before_the_wait_begins_are_counted() -> None:
    """Under load the first tasks complete while the last are still being submitted: the watch
    notes every end, so waiting for all of them afterwards returns (it waited for ever before)."""
    watch = _Watch()
    watch.saw([e.TaskCompleted(task_id="t1", agent_id="a"), e.TaskFailed(task_id="t2", agent_id="a",
                                                                         error="no", attempt=1)], 1.0)
    await asyncio.wait_for(watch.until(["t1", "t2"]), 1.0)
    assert watch.failed == 1
    waiting = asyncio.create_task(watch.until(["t1", "t3"], timeout=5.0))
    await asyncio.sleep(0)
    assert not waiting.done()
    watch.saw([e.TaskCompleted(task_id="t3", agent_id="a"), e.TaskCompleted(task_id="t3", agent_id="b")], 2.0)
    await asyncio.wait_for(waiting, 1.0)
    assert watch.done_at == {"t1": 1.0, "t2": 1.0, "t3": 2.0}
