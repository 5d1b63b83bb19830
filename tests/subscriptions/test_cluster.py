"""On Kafka, the workers deliver: each from the events partitions Faust assigned it, with positions
in the broker's consumer groups and dead letters decided like any command."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from events import partition_for
from services.http.app import create_app
from services.runtime.cluster import ClusterService
from tests.cluster.conftest import private_namespace, running_service
from tests.subscriptions.conftest import log_events, submit_tasks, subscribe
from tests.subscriptions.receiver import Receiver, until

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def test_a_kafka_worker_delivers_from_every_partition_it_owns(
        tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    got, url = receiver
    got.answer = lambda event: 500 if event["data"]["task_id"] == "bad" else 204
    pools = ("blue", "green")
    async with private_namespace(partitions=2) as cluster, running_service(cluster, tmp_path) as service:
        assert isinstance(service, ClusterService) and service.worker is not None
        deliveries = service.worker.deliveries
        assert deliveries is not None
        deliveries.backoff_s, deliveries.max_backoff_s = 0.01, 0.05
        assert {partition_for(pool, 2) for pool in pools} == {0, 1}  # one pool in each partition
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service=service)),
                                     base_url="http://agentbus", timeout=30) as client:
            made = await subscribe(client, "s", f"{url}/hook", ["type:TaskSubmitted"], max_attempts=2)
            for pool in pools:
                await submit_tasks(client, f"{pool}-1", f"{pool}-2", pool=pool)
            await submit_tasks(client, "bad", "after-bad", pool="blue")
            await until(lambda: len(got.delivered()) == 5, timeout=60, what="every good task")
            failures: list[dict[str, object]] = []
            for _ in range(300):
                seen = {"min_position": made["position"]}
                failures = (await client.get("/v1/subscriptions/s/failures", params=seen)).json()["items"]
                if failures:
                    break
                await asyncio.sleep(0.1)
            logged = {pool: [e["id"] for e in await log_events(client, pool=pool, type="TaskSubmitted")]
                      for pool in pools}
    for pool in pools:  # in log order within each partition (each pool's order)
        assert [i for i in got.ids() if i in logged[pool]] == [i for i in logged[pool] if i in got.ids()]
    assert sorted(e["data"]["task_id"] for e in got.delivered()) == [
        "after-bad", "blue-1", "blue-2", "green-1", "green-2"]
    [failure] = failures
    assert (failure["attempts"], failure["last_status"]) == (2, 500)
