"""The metrics server ``agentbus worker --metrics-port`` runs: prometheus_client's HTTP server in a
thread of its own, reading the scrape-time values on the event loop that owns the log. Here on an
embedded service (the worker itself needs Kafka: tests/metrics/test_worker.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from prometheus_client.core import Metric

from contracts import commands as c
from services.runtime.gauges import Gauges, service_sources
from services.runtime.ingest import command_envelope
from services.runtime.metrics import serve_metrics
from tests.api.runtimes import embedded
from tests.metrics.conftest import Scrape


def get(url: str) -> httpx.Response:
    """A scrape from another thread, as Prometheus makes it: the server must not need this loop free
    for anything but reading the values."""
    return httpx.get(url, timeout=15)


async def test_the_server_answers_counters_and_scrape_time_values_from_its_thread(tmp_path: Path) -> None:
    gauges = Gauges()
    async with embedded(tmp_path) as service:
        for i in range(3):
            await service.submit(command_envelope(c.SubmitTask(task_id=f"t{i}", type="work")))

        async def read() -> list[Metric]:
            return await gauges.read(service_sources(service))

        server = serve_metrics("127.0.0.1", 0, read)
        try:
            url = f"http://127.0.0.1:{server.port}/metrics"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:
                resp = await asyncio.to_thread(get, url)
                assert resp.status_code == 200
                s = Scrape(resp.text)
                if s.value("agentbus_tasks", pool="default", status="queued") == 3:
                    break
                assert loop.time() < deadline, resp.text
                await asyncio.sleep(0.05)
            assert s.value("agentbus_scrape_failed", part="lag") == 0
            for role in ("decider", "coordinator", "projector"):
                assert s.has("agentbus_lag_records", role=role, partition="0")
            assert s.value("agentbus_commands_total", type="SubmitTask", outcome="accepted") >= 3
            assert s.series("process_cpu_seconds_total")
        finally:
            await asyncio.to_thread(server.close)


async def test_a_part_that_cannot_be_read_is_flagged_and_the_rest_still_answers(tmp_path: Path) -> None:
    async with embedded(tmp_path) as service:
        sources = service_sources(service)
    # The service stopped: its log and read models are closed.

    async def read() -> list[Metric]:
        return await Gauges().read(sources)

    server = serve_metrics("127.0.0.1", 0, read)
    try:
        resp = await asyncio.to_thread(get, f"http://127.0.0.1:{server.port}/metrics")
    finally:
        await asyncio.to_thread(server.close)
    assert resp.status_code == 200
    s = Scrape(resp.text)
    assert s.value("agentbus_scrape_failed", part="lag") == 1
    assert s.value("agentbus_scrape_failed", part="read_models") == 1
    assert not s.series("agentbus_lag_records")
    assert s.series("process_cpu_seconds_total")



async def test_without_scrape_time_values_the_process_metrics_still_answer() -> None:
    # What `agentbus executor run --metrics-port` serves: its calls and the process, no deployment.
    server = serve_metrics("127.0.0.1", 0)
    try:
        resp = await asyncio.to_thread(get, f"http://127.0.0.1:{server.port}/")
    finally:
        await asyncio.to_thread(server.close)
    s = Scrape(resp.text)
    assert s.series("process_cpu_seconds_total")
    assert {f.name for f in s.families} >= {"agentbus_commands", "agentbus_executor_call_seconds"}
    assert not s.series("agentbus_scrape_failed")
