"""agentbus on Kafka + PostgreSQL through the HTTP API, with an in-process Faust worker.

register -> submit -> the coordinator assigns -> complete -> costs; ``?wait=true`` answered from
the events stream (the outcome tracker); an idempotent repeat answers the first outcome and adds
no events; a command published by a plain Kafka client is processed like an HTTP one; malformed
and unknown records go to the dead-letter topic and processing continues.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from events import partition_for
from events.kafka import KafkaLog
from services.http.app import create_app
from services.runtime.cluster import ClusterService
from tests.cluster.conftest import Cluster, outcome_runs, read_topic, running_service

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
async def service(cluster: Cluster, tmp_path: Path) -> AsyncIterator[ClusterService]:
    async with running_service(cluster, tmp_path) as svc:
        assert isinstance(svc, ClusterService)
        yield svc


@pytest.fixture
async def client(service: ClusterService) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(service=service, settings=service.settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agentbus",
                                 timeout=60) as c:
        yield c


async def eventually(client: httpx.AsyncClient, path: str, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        resp = await client.get(path)
        body = resp.json()
        if resp.status_code == 200 and check(body):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never satisfied the check; last answer {body}")


async def test_the_readme_flow_on_kafka_and_postgres(client: httpx.AsyncClient, service: ClusterService,
                                                     cluster: Cluster) -> None:
    r = await client.post("/v1/agents?wait=true", json={"agent_id": "a1", "name": "summarizer",
                                                        "capabilities": ["text"], "capacity": 4})
    assert r.status_code == 201, r.text
    assert [e["type"] for e in r.json()["events"]] == ["AgentRegistered", "TimerScheduled"]
    r = await client.post("/v1/tasks?wait=true", json={"task_id": "t1", "type": "summarize", "priority": 7,
                                                       "required_capabilities": ["text"]})
    assert r.status_code == 201, r.text
    task = await eventually(client, "/v1/tasks/t1", lambda b: b["status"] == "assigned")
    assert task["agent_id"] == "a1"
    r = await client.post("/v1/tasks/t1/complete?wait=true")
    assert r.status_code == 200 and r.json()["events"][0]["type"] == "TaskCompleted", r.text
    cost = {"agent_id": "a1", "task_id": "t1", "model": "gpt-4o-mini", "input_tokens": 1200,
            "output_tokens": 300}
    first = await client.post("/v1/costs?wait=true", json=cost, headers={"Idempotency-Key": "cost-1"})
    assert first.status_code == 201, first.text
    again = await client.post("/v1/costs?wait=true", json=cost, headers={"Idempotency-Key": "cost-1"})
    assert again.status_code == 201 and again.json()["duplicate"] is True
    assert again.json()["events"] == first.json()["events"]
    summary = await eventually(client, "/v1/costs/summary", lambda b: b["total_usd"] > 0)
    assert summary["by_task"] == {"t1": pytest.approx(0.00036)}
    audit = (await client.get("/v1/audit/assignments")).json()["items"]
    assert [a["agent_id"] for a in audit] == ["a1"]
    rejected = await client.post("/v1/tasks/nope/complete?wait=true")
    assert rejected.status_code == 404 and rejected.json()["code"] == "UNKNOWN_TASK"

    # The repeat was answered from the known outcome: one outcome, whatever reached the log.
    await asyncio.sleep(1)
    runs = outcome_runs(await read_topic(service.log, cluster.events))
    [event] = first.json()["events"]
    assert runs["cost-1"] == [(event["partition"], event["position"], 1)]
    assert all(len(r) == 1 for r in runs.values()), runs


def _misrouted_pool(partitions: int) -> str:
    """A pool that Kafka's default (murmur2) partitioner puts elsewhere than agentbus (CRC-32) does."""
    from aiokafka.partitioner import DefaultPartitioner

    for i in range(1000):
        pool = f"pool-{i}"
        if DefaultPartitioner()(pool.encode(), list(range(partitions)), list(range(partitions))) != (
                partition_for(pool, partitions)):
            return pool
    raise AssertionError("no pool found")


# When each command id was first published: stamped as a publishing system would, now (an old time
# would make the agent's heartbeat timer overdue at once), and the same when a test rebuilds the bytes.
_SENT_AT: dict[str, str] = {}


def _command(type_: str, data: dict[str, Any], pool: str, cid: str) -> bytes:
    at = _SENT_AT.setdefault(cid, datetime.now(UTC).isoformat())
    return orjson.dumps({"specversion": "1.0", "id": cid, "source": "urn:other-system", "type": type_,
                         "time": at, "pool": pool, "data": data})


async def test_other_systems_publish_and_bad_records_go_to_the_dead_letter_topic(
    client: httpx.AsyncClient, service: ClusterService, cluster: Cluster
) -> None:
    pool = _misrouted_pool(service.partitions)
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap)  # a plain client, Kafka's partitioner
    await producer.start()
    try:
        sent = []
        for value in (
            _command("RegisterAgent", {"agent_id": "x1", "name": "x", "capabilities": ["c"]}, pool, "ext-1"),
            b"{not json",
            _command("LaunchRocket", {"target": "moon"}, pool, "ext-2"),
            _command("SubmitTask", {"task_id": "xt", "type": "t", "required_capabilities": ["c"]}, pool,
                     "ext-3"),
        ):
            sent.append(await producer.send_and_wait(cluster.commands, value, key=pool.encode()))
    finally:
        await producer.stop()
    # Processed like an HTTP command: the outcome is known, the task gets assigned.
    ref = await service.outcomes.wait("ext-3", 30)
    assert ref is not None and ref.partition == partition_for(pool, service.partitions)
    await eventually(client, f"/v1/tasks/xt?pool={pool}", lambda b: b["status"] == "assigned")
    ext1 = await service.outcomes.wait("ext-1", 5)
    assert ext1 is not None
    [(_, registered), (_, timer)] = await service.outcome_events(ext1)
    assert registered.type == "AgentRegistered" and registered.pool == pool
    assert timer.type == "TimerScheduled" and timer.pool == pool  # liveness watched from registration

    # The malformed and the unknown record are dead letters: the bytes as sent, why, and where from.
    consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap, isolation_level="read_committed",
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(cluster.dead_letters, p) for p in range(service.partitions)]
        consumer.assign(tps)
        letters: list[Any] = []
        deadline = time.monotonic() + 20
        while len(letters) < 2 and time.monotonic() < deadline:
            got = await consumer.getmany(timeout_ms=500)
            letters += [r for recs in got.values() for r in recs]
    finally:
        await consumer.stop()
    by_value = {r.value: dict(r.headers) for r in letters}
    assert set(by_value) == {b"{not json", _command("LaunchRocket", {"target": "moon"}, pool, "ext-2")}
    bad = by_value[b"{not json"]
    assert bad["agentbus_error"].startswith(b"INVALID_COMMAND: malformed JSON")
    assert bad["agentbus_source_topic"] == cluster.commands.encode()
    assert int(bad["agentbus_source_offset"]) == sent[1].offset
    assert int(bad["agentbus_source_partition"]) == sent[1].partition
    assert by_value[_command("LaunchRocket", {"target": "moon"}, pool, "ext-2")]["agentbus_error"].startswith(
        b"UNKNOWN_COMMAND")
    # Processing went on past them, and the decider's offset with it.
    assert isinstance(service.log, KafkaLog)
    committed = await service.log.committed(f"{cluster.app_id}-decider", cluster.commands, sent[2].partition)
    assert committed > sent[2].offset
    # The rejection events are kept as on the embedded runner (the audit trail sees them).
    rejections = (await client.get(f"/v1/audit/rejections?pool={pool}")).json()["items"]
    assert {r["code"] for r in rejections} >= {"UNKNOWN_COMMAND"}


async def test_a_command_id_is_decided_once_even_when_appended_twice(
    client: httpx.AsyncClient, service: ClusterService, cluster: Cluster
) -> None:
    cid = f"dup-{uuid.uuid4().hex[:8]}"
    body = {"agent_id": "d1", "name": "d", "capabilities": ["c"], "command_id": cid}
    answers = await asyncio.gather(*(client.post("/v1/agents?wait=true", json=body) for _ in range(5)))
    assert {a.status_code for a in answers} == {201}
    assert len({orjson.dumps(a.json()["events"]) for a in answers}) == 1
    await asyncio.sleep(1)
    runs = outcome_runs(await read_topic(service.log, cluster.events))
    assert len(runs[cid]) == 1 and runs[cid][0][2] == 2  # AgentRegistered + its heartbeat timer


async def test_records_of_an_aborted_transaction_are_never_decided(
    service: ClusterService, cluster: Cluster
) -> None:
    # Faust's consumer reads read_uncommitted with at_least_once; agentbus switches it to
    # read_committed. Without that, the aborted command below would be decided.
    async def send(cid: str, *, abort: bool = False) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, enable_idempotence=True,
                                    transactional_id=f"test-{uuid.uuid4().hex[:8]}")
        await producer.start()
        try:
            await producer.begin_transaction()
            value = _command("RegisterAgent", {"agent_id": cid, "name": "a"}, "default", cid)
            await producer.send_and_wait(cluster.commands, value, key=b"default",
                                         partition=service.partition_of("default"))
            await (producer.abort_transaction() if abort else producer.commit_transaction())
        finally:
            await producer.stop()

    await send("before")
    assert await service.outcomes.wait("before", 30) is not None
    await send("aborted", abort=True)
    await send("after")
    assert await service.outcomes.wait("after", 30) is not None
    runs = outcome_runs(await read_topic(service.log, cluster.events))
    assert "before" in runs and "after" in runs and "aborted" not in runs


async def test_durable_timers_fire_on_kafka(client: httpx.AsyncClient) -> None:
    """Heartbeat expiry and task timeouts are timers: the Faust worker fires them too."""
    r = await client.post("/v1/agents?wait=true", json={"agent_id": "a1", "name": "a",
                                                        "capabilities": ["text"], "capacity": 2,
                                                        "heartbeat_timeout_s": 1})
    assert r.status_code == 201, r.text
    assert (await client.post("/v1/agents/a1/heartbeat?wait=true", json={"load": 0.1})).status_code == 200
    r = await client.post("/v1/tasks?wait=true", json={"task_id": "tt", "type": "x", "timeout_s": 1,
                                                       "required_capabilities": ["text"]})
    assert r.status_code == 201, r.text

    def fired(body: Any) -> bool:
        types = {e["type"] for e in body["items"]}
        return {"AgentMarkedUnhealthy", "TimerFired"} <= types

    body = await eventually(client, "/v1/events?limit=1000", fired, timeout=60)
    types = [e["type"] for e in body["items"]]
    assert "AgentMarkedUnhealthy" in types
    # The next heartbeat makes the agent healthy again.
    assert (await client.post("/v1/agents/a1/heartbeat?wait=true", json={"load": 0.1})).status_code == 200
    await eventually(client, "/v1/events?limit=1000",
                     lambda b: "AgentMarkedHealthy" in {e["type"] for e in b["items"]}, timeout=30)
