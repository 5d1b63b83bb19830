"""The process that makes a coordinator snapshot: ``python -m services.runtime.coordinator_snapshotter``.

In: one JSON line on its standard input (log and read-model URLs, topic, partition, position,
priority). Out: one JSON line (the position it went on from, the position, the chain value there,
the body's size), then the body; ``services.runtime.coordinator_snapshots.make`` stores it. It only
reads the log and the snapshots table. It runs at the lowest CPU priority (Linux ``SCHED_IDLE``:
only when a CPU is otherwise idle; elsewhere niced), so under load the service keeps the CPUs;
at normal priority when a start waits for it (priority "normal"). A module of its own so that
``coordinator_snapshots`` is imported once (not also as ``__main__``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import orjson

from events import open_log
from services.runtime.coordinator_snapshots import CoordinatorSnapshots, fold
from services.runtime.snapshots import SnapshotStore

# Where SCHED_IDLE is not available: the niceness (a share of a busy CPU of about a tenth).
NICE = 10


def lowest_priority() -> str:
    """Put this process at the lowest CPU priority there is; which one it got."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):
        os.nice(NICE)
        return f"nice {NICE}"


async def _main(config: dict[str, Any]) -> None:
    event_log = open_log(config["broker"])
    store = SnapshotStore(config["database"], readonly=True)
    await event_log.start()
    try:
        await store.start()
        position = int(config["position"])
        start, body, chain = await fold(event_log, CoordinatorSnapshots(store), config["topic"],
                                        int(config["partition"]), position)
        head = {"from": start, "position": position, "chain": None if chain is None else chain.hex(),
                "size": len(body)}
        sys.stdout.buffer.write(orjson.dumps(head) + b"\n" + body)
        sys.stdout.buffer.flush()
    finally:
        await store.close()
        await event_log.close()


if __name__ == "__main__":
    _config = orjson.loads(sys.stdin.buffer.readline())
    if _config.get("priority") != "normal":  # "normal": a start waits for this snapshot
        lowest_priority()
    logging.basicConfig(level=logging.WARNING,
                        format="coordinator snapshot: %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(_config))
