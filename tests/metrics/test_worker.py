"""``agentbus worker --metrics-port`` on Kafka: a real worker process serves the commands it decided
and the deployment's lag per partition, which reads 0 once it has caught up (transaction markers,
which take offsets but hold no record, do not count)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
import pytest

from contracts import commands as c
from events import partition_for
from services.runtime.ingest import command_envelope
from services.runtime.service import open_service
from tests.cluster.conftest import free_port, private_namespace, service_settings
from tests.metrics.conftest import Scrape

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

WAIT_S = 120.0
ROLES = ("decider", "coordinator", "projector")


def caught_up(s: Scrape, partitions: int) -> bool:
    return all(s.has("agentbus_lag_records", role=role, partition=str(p))
               and s.value("agentbus_lag_records", role=role, partition=str(p)) == 0
               for role in ROLES for p in range(partitions))


async def test_a_worker_serves_its_decisions_and_the_lag_per_partition(tmp_path: Path) -> None:
    async with private_namespace(partitions=2) as cluster:
        port = free_port()
        log = tmp_path / "worker.log"
        worker = cluster.worker(log, AGENTBUS_METRICS_PORT=str(port))
        # Pools on both partitions.
        pools = [next(f"pool-{i}" for i in range(100) if partition_for(f"pool-{i}", 2) == p) for p in (0, 1)]
        api = open_service(service_settings(cluster, tmp_path / "api"), worker=False)
        await api.start()
        try:
            await api.ready()
            for pool in pools:
                for i in range(3):
                    await api.submit(command_envelope(c.SubmitTask(task_id=f"t{i}", type="work"), pool=pool))
            url = f"http://127.0.0.1:{port}/metrics"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_S
            s = None
            async with httpx.AsyncClient(timeout=15) as client:
                while True:
                    assert worker.poll() is None, log.read_text()[-4000:]
                    with contextlib.suppress(httpx.HTTPError):
                        resp = await client.get(url)
                        s = Scrape(resp.text)
                        queued = [s.value("agentbus_tasks", pool=pool, status="queued") for pool in pools]
                        if caught_up(s, 2) and queued == [3, 3]:
                            break
                    assert loop.time() < deadline, s.text if s is not None else log.read_text()[-4000:]
                    await asyncio.sleep(0.5)
        finally:
            await api.stop()
        # Decided in the worker process, so counted there.
        assert s is not None
        assert s.value("agentbus_commands_total", type="SubmitTask", outcome="accepted") == 6
        assert s.value("agentbus_events_total", type="TaskSubmitted") == 6
        assert s.value("agentbus_scrape_failed", part="lag") == 0
        for p in range(2):
            assert s.value("agentbus_log_end_offset", topic="commands", partition=str(p)) >= 3
