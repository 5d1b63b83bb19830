"""Topics of the Kafka log: creating them with explicit partitions, and their partition counts.

A topic is created with the partition count and retention the caller asks for and the URL's
replication factor; an existing topic keeps its partitions and config. A partition count is
cached on first sight: routing by key must not change under a running process.

This module must never change an existing topic (no partition increase, no config change).
"""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import errors as kerr  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

from events.kafka.clients import start_or_close
from events.kafka.url import KafkaURL
from events.log import LogError, UnknownTopic

# How long a topic may take to show a leader for every partition.
TOPIC_READY_TIMEOUT_S = 30

_UNKNOWN_TOPIC = kerr.UnknownTopicOrPartitionError.errno
_TOPIC_EXISTS = kerr.TopicAlreadyExistsError.errno


class TopicAdmin:
    """The admin client of one log, and the partition counts it has seen."""

    def __init__(self, settings: KafkaURL) -> None:
        self.settings = settings
        self.client: AIOKafkaAdminClient | None = None
        self.counts: dict[str, int] = {}

    async def start(self) -> None:
        """Connect the admin client."""
        client = AIOKafkaAdminClient(**self.settings.client_options())
        await start_or_close(client.start(), client.close)
        self.client = client

    async def close(self) -> None:
        """Disconnect; the cached counts stay (a topic's partitions never shrink)."""
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    def _client(self) -> AIOKafkaAdminClient:
        assert self.client is not None, "the log checks it is started first"
        return self.client

    async def ensure(self, topic: str, partitions: int, retention_ms: int | None) -> None:
        """Create ``topic`` if absent, then wait until the broker shows a leader for each partition."""
        configs = {} if retention_ms is None else {"retention.ms": str(retention_ms)}
        new = NewTopic(topic, partitions, self.settings.replication_factor, topic_configs=configs)
        try:
            response = await self._client().create_topics([new])
        except kerr.KafkaError as exc:
            raise LogError(f"cannot create topic {topic!r} on {self.settings.servers}: {exc!r}") from exc
        for name, code, *rest in response.topic_errors:
            if code not in (0, _TOPIC_EXISTS):
                detail = rest[0] if rest else ""
                raise LogError(f"cannot create topic {name!r}: {kerr.for_code(code).__name__} {detail}")
        # Creation is asynchronous on the broker: wait until metadata shows every partition.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TOPIC_READY_TIMEOUT_S
        while True:
            try:
                n = await self.describe(topic)
            except UnknownTopic:  # the broker's metadata cache lags the controller
                n = None
            if n is not None:
                self.counts[topic] = n
                return
            if loop.time() > deadline:
                raise LogError(f"topic {topic!r} was created but its metadata never appeared")
            await asyncio.sleep(0.05)

    async def count(self, topic: str) -> int:
        """Partition count of an existing topic, once each has a leader; cached from then on."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TOPIC_READY_TIMEOUT_S
        while (found := await self.describe(topic)) is None:
            if loop.time() > deadline:
                raise LogError(f"topic {topic!r} has partitions without a leader")
            await asyncio.sleep(0.05)
        self.counts[topic] = found
        return found

    async def describe(self, topic: str) -> int | None:
        """Partition count with a leader for each, None while not ready; raises UnknownTopic."""
        try:
            [meta] = await self._client().describe_topics([topic])
        except kerr.KafkaError as exc:
            raise LogError(f"cannot describe topic {topic!r} on {self.settings.servers}: {exc!r}") from exc
        code = meta["error_code"]
        if code == _UNKNOWN_TOPIC:
            raise UnknownTopic(topic)
        parts = meta["partitions"]
        if code != 0 or not parts or any(p["error_code"] != 0 or p["leader"] < 0 for p in parts):
            return None
        return len(parts)
