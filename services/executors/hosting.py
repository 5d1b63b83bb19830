"""Executors inside a running service: ``agentbus serve --executors FILE`` and the executors that
workflows declare (``agents:``), hosted beside the service for as long as it runs.

This module must never decide anything: it only starts and stops an ``ExecutorHost`` on the
service's own log, topics and envelope cache, its runs' progress going to the service's hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from events.cache import EnvelopeCache
from services.executors.files import load_executors
from services.executors.host import ExecutorHost
from services.runtime.hub import publish_progress
from services.runtime.service import Service
from services.runtime.settings import Settings

log = logging.getLogger("agentbus.executors")
READY_TIMEOUT_S = 60.0


def wants_host(settings: Settings) -> bool:
    """Whether a server with these settings hosts executors at all."""
    return settings.executors is not None or hosts_workflow_agents(settings)


def hosts_workflow_agents(settings: Settings) -> bool:
    if settings.workflow_agents is not None:
        return settings.workflow_agents
    return not settings.kafka


@contextlib.asynccontextmanager
async def hosted_executors(service: Service, settings: Settings) -> AsyncIterator[ExecutorHost | None]:
    """Run the executors these settings ask for on ``service`` until the block ends."""
    if not wants_host(settings):
        yield None
        return
    configs = load_executors(settings.executors).agents if settings.executors is not None else ()
    cache = getattr(service, "cache", None)

    def publish(task_id: str, **progress: Any) -> int:
        # The hub is looked up per message: the server starts it after the executors, and a
        # process without the HTTP API has none (then nothing is published).
        return publish_progress(service, task_id, **progress)

    host = ExecutorHost(service.log, configs, topics=service.topics,
                        cache=cache if isinstance(cache, EnvelopeCache) else EnvelopeCache(),
                        workflow_agents=hosts_workflow_agents(settings), group="executors",
                        publish=publish, guard=(settings.data_dir,))
    task = asyncio.create_task(host.run(), name="executors")
    ready = asyncio.create_task(host.ready.wait())
    await asyncio.wait([task, ready], timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # the executors could not start: raise why
    if not ready.done():
        ready.cancel()
        task.cancel()
        raise TimeoutError(f"the executors were not ready within {READY_TIMEOUT_S} s")
    try:
        yield host
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
