"""The process that stores a coordinator snapshot: ``python -m services.runtime.coordinator_snapshotter``,
one JSON line on its standard input (log and read-model URLs, topic, partition, position); it
prints one line (the new row, the position it started from) and exits. It runs niced: under load
the service's processes keep the CPUs. See
``services.runtime.coordinator_snapshots``; a module of its own so that the one it runs is
imported once (as itself, not as ``__main__`` beside it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import orjson

from events import open_log
from services.runtime.coordinator_snapshots import CoordinatorSnapshots, snapshot
from services.runtime.snapshots import SnapshotStore

# The process's niceness: a share of a CPU the service is using of about a tenth.
NICE = 10


async def _main(config: dict[str, Any]) -> None:
    event_log = open_log(config["broker"])
    store = SnapshotStore(config["database"])
    await event_log.start()
    try:
        await store.start()
        start, row = await snapshot(event_log, CoordinatorSnapshots(store), config["topic"],
                                    int(config["partition"]), int(config["position"]))
        said = {"id": row, "from": start, "position": int(config["position"])}
        print(orjson.dumps(said).decode(), flush=True)
    finally:
        await store.close()
        await event_log.close()


if __name__ == "__main__":
    # Folding the events in again is work the service can wait for: under load it keeps its CPUs.
    os.nice(NICE)
    logging.basicConfig(level=logging.WARNING,
                        format="coordinator snapshot: %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(orjson.loads(sys.stdin.buffer.readline())))
