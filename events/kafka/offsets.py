"""Consumer-group offsets of the Kafka log, spoken directly to each group's coordinator.

The log's groups are "simple" groups: no members, no rebalancing, generation -1. An offset is
committed either here (``EventLog.commit``) or inside a transaction (``send_offsets_to_transaction``
in ``events.kafka.writer``); both are read back with OffsetFetch. A coordinator that moved or is
still loading is looked up again and the request retried.

This module must never join a group: membership belongs to whoever runs the consumers (Faust).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka import AIOKafkaClient  # type: ignore[import-untyped]
from aiokafka import errors as kerr
from aiokafka.client import CoordinationType  # type: ignore[import-untyped]
from aiokafka.protocol.commit import OffsetCommitRequest, OffsetFetchRequest  # type: ignore[import-untyped]

from events.kafka.clients import start_or_close
from events.kafka.url import KafkaURL
from events.log import LogError

# Coordinator moved or is loading: look it up again and retry.
_RETRY_COORDINATOR = {14, 15, 16}  # COORDINATOR_LOAD_IN_PROGRESS, _NOT_AVAILABLE, NOT_COORDINATOR
_ATTEMPTS = 20


class GroupOffsets:
    """Commits and fetches consumer-group offsets through one bootstrapped client."""

    def __init__(self, settings: KafkaURL, url: str) -> None:
        self.settings, self.url = settings, url
        self.client: AIOKafkaClient | None = None
        self._coordinators: dict[str, int] = {}

    async def start(self) -> None:
        """Bootstrap the client."""
        client = AIOKafkaClient(**self.settings.client_options())
        await start_or_close(client.bootstrap(), client.close)
        self.client = client

    async def close(self) -> None:
        """Close the client."""
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def commit(self, group: str, topic: str, partition: int, offset: int) -> None:
        """Store the next offset ``group`` will read (a simple-group commit: generation -1)."""
        request = OffsetCommitRequest(
            group, OffsetCommitRequest.DEFAULT_GENERATION_ID, "",
            OffsetCommitRequest.DEFAULT_RETENTION_TIME, [(topic, [(partition, offset, "")])],
        )
        await self._request(group, request)

    async def fetch(self, group: str, topic: str, partition: int) -> int:
        """The broker's committed offset of ``group`` (-1 when it never committed)."""
        response = await self._request(group, OffsetFetchRequest(group, [(topic, [partition])]))
        for name, parts in response.topics:
            for p, offset, *_ in parts:
                if name == topic and p == partition:
                    return int(offset)
        return -1

    async def _request(self, group: str, request: Any) -> Any:
        client = self.client
        if client is None:
            raise RuntimeError(f"KafkaLog({self.url!r}) is not started: await log.start() first")
        for attempt in range(_ATTEMPTS):
            node = self._coordinators.get(group)
            try:
                if node is None:
                    node = self._coordinators[group] = await client.coordinator_lookup(
                        CoordinationType.GROUP, group
                    )
                response = await client.send(node, request)
            except (kerr.CoordinatorNotAvailableError, kerr.NotCoordinatorError,
                    kerr.CoordinatorLoadInProgressError, kerr.NodeNotReadyError,
                    kerr.KafkaConnectionError) as exc:
                self._coordinators.pop(group, None)
                if attempt == _ATTEMPTS - 1:
                    raise LogError(f"no group coordinator for {group!r}: {exc!r}") from exc
                await asyncio.sleep(0.1)
                continue
            # Per partition the error code is the last field (OffsetCommit and OffsetFetch alike).
            codes = {entry[-1] for _, parts in response.topics for entry in parts}
            codes.add(getattr(response, "error_code", 0))  # top-level only in some versions
            if codes & _RETRY_COORDINATOR:
                self._coordinators.pop(group, None)
                await asyncio.sleep(0.05)
                continue
            bad = codes - {0}
            if bad:
                names = ", ".join(kerr.for_code(c).__name__ for c in sorted(bad))
                raise LogError(f"offset request for group {group!r} failed: {names}")
            return response
        raise LogError(f"no group coordinator for {group!r} after retries")
