"""Kafka-specific behaviour of the log: plain Kafka records, transactions, fencing, topic config.

Needs a broker (``deploy/kafka/up.sh``, ``AGENTBUS_TEST_KAFKA=kafka://127.0.0.1:9092``); without
one these skip locally and fail in CI, like the kafka cases of the contract tests.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import orjson
import pytest
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from contracts import Envelope, new_id, utcnow
from contracts.event_types import TaskSubmitted
from events import (
    Commit,
    CorruptRecord,
    EventLog,
    LogError,
    Record,
    TransactionalLog,
    open_log,
    partition_for,
)
from events.codec import encode, from_record, to_record
from events.kafka import KafkaLog, parse_url
from events.kafka.transaction import RETRY_BACKOFF_MS, new_producer

KAFKA_ENV = "AGENTBUS_TEST_KAFKA"
LZ4 = 3  # Kafka's record batch compression codec id


def unavailable(why: str) -> NoReturn:
    hint = f"Kafka not running: start it with deploy/kafka/up.sh and set {KAFKA_ENV}=kafka://127.0.0.1:9092"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{hint} ({why})", pytrace=False)
    pytest.skip(f"{hint} ({why})")


@pytest.fixture
def url() -> str:
    value = os.environ.get(KAFKA_ENV, "").strip()
    if not value:
        unavailable(f"{KAFKA_ENV} is not set")
    return value


@pytest.fixture
def bootstrap(url: str) -> str:
    return ",".join(parse_url(url).bootstrap)


@pytest.fixture
def topic() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def admin(bootstrap: str, topic: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await client.start()
    except Exception as exc:
        unavailable(repr(exc))
    try:
        yield client
    finally:
        names = [t for t in await client.list_topics() if t == topic or t.startswith(f"{topic}-")]
        if names:
            await client.delete_topics(names)
        await client.close()


@pytest.fixture
async def make_log(url: str, admin: AIOKafkaAdminClient) -> AsyncIterator[Callable[..., Any]]:
    """Start KafkaLogs for the test (``query`` is appended to the URL); closes them after."""
    logs: list[KafkaLog] = []

    async def make(query: str = "") -> KafkaLog:
        sep = "&" if "?" in url else "?"
        log = KafkaLog(f"{url}{sep}{query or f'client_id=unit-{uuid.uuid4().hex[:12]}'}")
        await log.start()
        logs.append(log)
        return log

    yield make
    for log in logs:
        await log.close()


def event(i: int, pool: str) -> Envelope:
    data = TaskSubmitted(task_id=f"task-{i}", type="build", priority=i % 3)
    return Envelope(id=new_id(), type="TaskSubmitted", time=utcnow(), pool=pool, data=data)


async def plain_consumer(bootstrap: str, tp: TopicPartition, isolation: str) -> list[Any]:
    """Every record of ``tp`` as any Kafka client sees it."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[Any] = []
        while await consumer.position(tp) < end:
            out.extend((await consumer.getmany(tp, timeout_ms=500)).get(tp, []))
        return out
    finally:
        await consumer.stop()


def test_urls_parse_hosts_and_options() -> None:
    one = parse_url("kafka://127.0.0.1:9092")
    assert one.bootstrap == ("127.0.0.1:9092",) and one.replication_factor == 1
    assert one.transactional_id.startswith("agentbus-")  # random: never fences another process
    many = parse_url("kafka://a:9092,b:9093/?client_id=worker-3&transactional_id_prefix=ab"
                     "&replication_factor=3")
    assert many.bootstrap == ("a:9092", "b:9093")
    assert (many.client_id, many.transactional_id, many.replication_factor) == ("worker-3", "ab-worker-3", 3)
    assert parse_url("kafka://a:1?transactional_id=exact").transactional_id == "exact"
    assert isinstance(open_log("kafka://a:9092"), KafkaLog)
    assert KafkaLog.dedupes_ids is False
    for bad in ("kafka://", "kafka://host", "sqlite:///x.db", "kafka://a:1?acks=1",
                "kafka://a:1?replication_factor=0"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_kafka_is_a_transactional_log_that_does_not_dedupe_ids() -> None:
    log = open_log("kafka://a:9092")
    assert isinstance(log, KafkaLog) and isinstance(log, EventLog)
    assert isinstance(log, TransactionalLog)  # extra=, claim() and release()
    assert log.dedupes_ids is False


async def test_transactional_producers_retry_after_a_short_backoff() -> None:
    # A verifying broker answers a produce that follows a transaction's end too closely with a
    # retriable error: the next try comes after RETRY_BACKOFF_MS, not aiokafka's 100 ms.
    producer = new_producer(parse_url("kafka://127.0.0.1:1"), "agentbus-test", 60_000)
    try:
        assert RETRY_BACKOFF_MS == 20
        assert producer._sender._retry_backoff == RETRY_BACKOFF_MS / 1000
        assert producer.client._retry_backoff == RETRY_BACKOFF_MS / 1000
    finally:
        await producer.stop()


async def test_an_unreachable_broker_is_a_clear_log_error() -> None:
    log = KafkaLog("kafka://127.0.0.1:1")
    with pytest.raises(LogError, match=r"kafka://127\.0\.0\.1:1"):
        await log.start()
    await log.close()  # never started: a no-op


@pytest.mark.kafka
async def test_records_are_plain_lz4_kafka_records_keyed_by_pool(
    make_log: Callable[..., Any], bootstrap: str, topic: str
) -> None:
    log = await make_log()
    await log.ensure_topic(topic, 3)
    envs = [event(i, pool) for i, pool in enumerate(["default", "gpu", "default", "edge"] * 5)]
    positions = await log.append(topic, [to_record(e) for e in envs])
    p = partition_for("gpu", 3)
    pairs = list(zip(envs, positions, strict=True))
    assert all(a.partition == partition_for(e.pool, 3) for e, a in pairs)
    expected = [(e, a) for e, a in pairs if a.partition == p]
    assert expected

    seen = await plain_consumer(bootstrap, TopicPartition(topic, p), "read_committed")
    assert [r.offset for r in seen] == [a.offset for _, a in expected]
    for r, (env, _) in zip(seen, expected, strict=True):
        assert r.key == env.pool.encode()
        assert r.value == encode(env)  # the CloudEvents JSON, byte for byte
        assert orjson.loads(r.value)["specversion"] == "1.0"
        assert dict(r.headers) == {"ce_type": b"TaskSubmitted", "ce_id": env.id.encode()}
    stored = await log.read(topic, p, 0)
    assert [from_record(s) for s in stored] == [e for e, _ in expected]
    assert [s.id for s in stored] == [e.id for e, _ in expected]

    # The batches on the broker are lz4-compressed by Kafka itself.
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        cluster = await client.fetch_all_metadata()
        node = cluster.leader_for_partition(TopicPartition(topic, p))
        response = await client.send(node, FetchRequest(0, 1, 1 << 20, 1, [(topic, [(p, 0, 1 << 20)])]))
        raw = response.topics[0][1][0][-1]
        batch = MemoryRecords(raw).next_batch()
        assert batch is not None and batch.compression_type == LZ4
    finally:
        await client.close()


@pytest.mark.kafka
async def test_an_id_without_a_ce_id_header_travels_in_one(
    make_log: Callable[..., Any], bootstrap: str, topic: str
) -> None:
    log = await make_log()
    await log.ensure_topic(topic, 1)
    [a] = await log.append(topic, [Record("default", b"{}", id="evt-1", headers=(("x", b"1"),))])
    [seen] = await plain_consumer(bootstrap, TopicPartition(topic, 0), "read_committed")
    assert list(seen.headers) == [("x", b"1"), ("ce_id", b"evt-1")]
    [stored] = await log.read(topic, 0, a.offset)
    assert stored.id == "evt-1" and stored.headers == (("x", b"1"), ("ce_id", b"evt-1"))


@pytest.mark.kafka
async def test_an_aborted_transaction_leaves_no_records_and_no_offset(
    make_log: Callable[..., Any], bootstrap: str, topic: str
) -> None:
    # The client accepts 4 MiB requests; the broker (message.max.bytes ~1 MiB) rejects the batch
    # with the big record, after the small one was already written: the adapter must abort.
    log = await make_log(f"client_id=unit-{uuid.uuid4().hex[:12]}&max_request_size=4194304")
    source = f"{topic}-in"
    await log.ensure_topic(topic, 2)
    await log.ensure_topic(source, 1)
    await log.commit("proc", source, 0, 3)
    big = os.urandom(2 << 20)  # incompressible
    with pytest.raises(LogError):
        await log.append(
            topic, [Record("a", b"small", id="s"), Record("b", big)], partition=0,
            commit=Commit("proc", source, 0, 99),
        )
    assert await log.read(topic, 0, 0) == []
    assert await log.committed("proc", source, 0) == 3
    # The small record did reach the log, inside the aborted transaction.
    uncommitted = await plain_consumer(bootstrap, TopicPartition(topic, 0), "read_uncommitted")
    assert [r.value for r in uncommitted] == [b"small"]
    assert await plain_consumer(bootstrap, TopicPartition(topic, 0), "read_committed") == []

    # The writer recovers, and a bad record in a shared (group-committed) transaction only fails
    # its own caller.
    good, bad = await asyncio.gather(
        log.append(topic, [Record("a", b"good")], partition=0, commit=Commit("proc", source, 0, 4)),
        log.append(topic, [Record("b", big)], partition=0),
        return_exceptions=True,
    )
    assert isinstance(bad, LogError) and not isinstance(good, BaseException)
    assert good[0].offset > uncommitted[0].offset
    assert [(r.value, r.offset) for r in await log.read(topic, 0, 0)] == [(b"good", good[0].offset)]
    assert await log.committed("proc", source, 0) == 4


@pytest.mark.kafka
async def test_a_restarted_writer_carries_on_and_fences_the_old_one(
    make_log: Callable[..., Any], topic: str
) -> None:
    identity = f"client_id=unit-{uuid.uuid4().hex[:12]}"
    first = await make_log(identity)
    await first.ensure_topic(topic, 1)
    a = await first.append(topic, [Record("k", b"1"), Record("k", b"2")])
    await first.close()
    await first.start()  # the same instance restarts
    b = await first.append(topic, [Record("k", b"3")])

    # A second process with the same transactional.id takes over; the first is now a zombie.
    second = await make_log(identity)
    c = await second.append(topic, [Record("k", b"4")], partition=0,
                            expected_offset=await second.end_offset(topic, 0))
    with pytest.raises(LogError, match="fenced"):
        await first.append(topic, [Record("k", b"zombie")])
    offsets = [x.offset for x in a + b + c]
    assert offsets == sorted(offsets)
    stored = await second.read(topic, 0, 0)
    assert [(r.offset, r.value) for r in stored] == list(zip(offsets, [b"1", b"2", b"3", b"4"], strict=True))


@pytest.mark.kafka
async def test_wait_and_subscribe_see_appends_from_another_instance(
    make_log: Callable[..., Any], topic: str
) -> None:
    writer, reader = await make_log(), await make_log()
    await writer.ensure_topic(topic, 1)
    waiter = asyncio.create_task(reader.wait(topic, 0, 0, timeout=10))
    batches = reader.subscribe(topic, 0, 0)
    first = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0.2)
    [a] = await writer.append(topic, [Record("k", b"x")])
    assert await asyncio.wait_for(waiter, 3) is True
    got = await asyncio.wait_for(first, 3)
    assert [(r.offset, r.value) for r in got] == [(a.offset, b"x")]
    await batches.aclose()


@pytest.mark.kafka
async def test_ensure_topic_sets_partitions_and_infinite_retention(
    make_log: Callable[..., Any], admin: AIOKafkaAdminClient, topic: str
) -> None:
    log = await make_log()
    await log.ensure_topic(topic, 3, retention_ms=-1)
    await log.ensure_topic(topic, 3, retention_ms=-1)  # idempotent
    other = f"{topic}-default"
    await log.ensure_topic(other, 2)
    assert (await log.partitions(topic), await log.partitions(other)) == (3, 2)

    async def retention(name: str) -> str:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        [(_, _, _, _, entries)] = response.resources
        return {e[0]: e[1] for e in entries}["retention.ms"]

    assert await retention(topic) == "-1"
    assert await retention(other) == "604800000"  # the broker's default, untouched


@pytest.mark.kafka
async def test_a_record_without_a_key_is_corrupt_naming_its_position(
    make_log: Callable[..., Any], bootstrap: str, topic: str
) -> None:
    log = await make_log()
    await log.ensure_topic(topic, 1)
    [good] = await log.append(topic, [Record("k", b"{}")])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, b"{}", partition=0)  # no key: not ours
    finally:
        await producer.stop()
    with pytest.raises(CorruptRecord) as caught:
        await log.read(topic, 0, 0)
    assert (caught.value.topic, caught.value.partition, caught.value.offset) == (topic, 0, meta.offset)
    assert "no key" in caught.value.reason
    assert [r.offset for r in await log.read(topic, 0, 0, limit=1)] == [good.offset]


@pytest.mark.kafka
async def test_partition_writers_chain_their_records_across_fencing_and_aborts(
    make_log: Callable[..., Any], topic: str
) -> None:
    from events.chain import GENESIS, chain_at, link, verify_log

    source = f"{topic}-src"
    identity = f"client_id=unit-{uuid.uuid4().hex[:12]}&max_request_size=4194304"
    first = await make_log(identity)
    await first.ensure_topic(topic, 1)
    await first.ensure_topic(source, 1)
    assert isinstance(first, TransactionalLog)
    first.chain(topic)
    await first.claim("proc", source, 0)
    await first.append(topic, [Record("k", b"1"), Record("k", b"2")], partition=0,
                       commit=Commit("proc", source, 0, 1))
    # A record the broker refuses aborts its transaction: the head must not move with it.
    with pytest.raises(LogError):
        await first.append(topic, [Record("k", b"3"), Record("k", os.urandom(2 << 20))], partition=0,
                           commit=Commit("proc", source, 0, 2))
    await first.append(topic, [Record("k", b"3")], partition=0, commit=Commit("proc", source, 0, 3))

    # Another process takes the partition over (fencing the first): it reads the head back.
    second = await make_log(identity)
    second.chain(topic)
    await second.claim("proc", source, 0)
    await second.append(topic, [Record("k", b"4")], partition=0, commit=Commit("proc", source, 0, 4))
    with pytest.raises(LogError, match="fenced"):
        await first.append(topic, [Record("k", b"zombie")], partition=0, commit=Commit("proc", source, 0, 5))

    stored = await second.read(topic, 0, 0)
    assert [r.value for r in stored] == [b"1", b"2", b"3", b"4"]
    expected, prev = [], GENESIS
    for r in stored:
        prev = link(prev, r.value)
        expected.append(prev)
    assert [r.chain for r in stored] == expected
    assert all(name != "agentbus-chain" for r in stored for name, _ in r.headers)
    report = await verify_log(second, topic)
    assert report.ok and report.records == 4 and report.heads == {0: expected[-1].hex()}
    assert await chain_at(second, topic, 0, await second.end_offset(topic, 0)) == expected[-1]
    assert await chain_at(second, topic, 0, stored[2].offset) == expected[1]
    # The main writer (shared by many processes) writes no chain: verify names that record.
    await second.append(topic, [Record("k", b"unchained")])
    bad = await verify_log(second, topic)
    assert bad.mismatch is not None and "no chain" in bad.mismatch.reason


class _SlowProxy:
    """A TCP relay to the broker that holds each of the broker's answers ``delay`` seconds, and
    notes when the client sent its ``nth`` request and when the client closed its side."""

    def __init__(self, host: str, port: int, delay: float, nth: int) -> None:
        self.host, self.port, self.delay, self.nth = host, port, delay, nth
        self.asked = asyncio.Event()
        self.closed_by_client = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)

        async def to_broker() -> None:
            requests = 0
            while True:
                try:
                    head = await reader.readexactly(4)  # Kafka frames: a 4-byte size, then the request
                    body = await reader.readexactly(int.from_bytes(head, "big"))
                except asyncio.IncompleteReadError:
                    break
                up_writer.write(head + body)
                requests += 1
                if requests == self.nth:
                    self.asked.set()
            self.closed_by_client.set()
            up_writer.close()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                await asyncio.sleep(self.delay)
                if not writer.is_closing():
                    writer.write(data)

        try:
            await asyncio.gather(to_broker(), to_client())
        except (ConnectionError, OSError):
            self.closed_by_client.set()
        finally:
            writer.close()
            up_writer.close()


async def test_a_consumer_stopped_while_it_bootstraps_closes_the_bootstrap_connection(bootstrap: str) -> None:
    # aiokafka's bootstrap connection asks for the API versions (closed by aiokafka itself if that
    # is cut short), then for the metadata, before it is kept or closed: a stop landing then must
    # still close that socket (else a ResourceWarning surfaces at some later garbage collection).
    from events.kafka.clients import start_or_close
    from events.kafka.reader import read_committed_consumer

    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    proxy = _SlowProxy(host, int(port), delay=1.0, nth=2)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    try:
        consumer = read_committed_consumer(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", 100)
        starting = asyncio.create_task(start_or_close(consumer.start(), consumer.stop))
        await asyncio.wait_for(proxy.asked.wait(), 10)  # the metadata request is out, its answer held
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        # Closed by the client as the stop went through (the relay reads the end a moment later).
        await asyncio.wait_for(proxy.closed_by_client.wait(), 1.0)
    finally:
        server.close()
        await server.wait_closed()
