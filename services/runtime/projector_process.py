"""The embedded projector in a process of its own, so the read models are written on a second CPU.

In one process the projector's apply (Python code holding the interpreter lock for most of a
batch) took turns with the deciders, the coordinator and the API. Here the runner starts
``python -m services.runtime.projector_process`` and talks to it over its standard streams:

- in: one JSON line (the log and read-model URLs, the partitions, the linger), then a line
  ``<partition>`` each time this process commits events there (a nudge: the child looks at the
  log file at once rather than at its next poll);
- out: a line ``<partition> <next offset>`` per partition at its start and after each batch the
  child committed, which wakes this process's readers waiting for a position
  (``ProjectionStore.advanced``), and ``ready`` once it follows the log (the runner's readiness
  waits for it).

The child runs the same ``ProjectorLoop`` as the in-process projector: each batch's rows and its
position commit in one transaction, so nothing about exactly-once changes. It decodes the events
from the log (no shared envelope cache). It ends when its standard input closes: when the runner
stops, and when the runner dies, even by ``kill -9``. If the child dies, the runner fails loudly,
as it does when an in-process projector fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

import orjson

from events.sqlite import SqliteLog
from projections import ProjectionStore, Projector
from projections.store import MAIN_PROJECTOR
from services.runtime.memory import GC_THRESHOLDS, keep_large_blocks_apart
from services.runtime.projector import ProjectorLoop
from services.runtime.topics import EVENTS

# How long a stop waits for the child to finish its batch and exit before it is killed.
STOP_GRACE_S = 5.0
# After a nudge, commits within this long share the next one (at most the linger). A nudged child
# reads to the end and lingers before it waits again, so a nudge per commit (one pipe write and a
# wake of the child each) bought nothing: with one per commit they took a tenth of the service's
# loop in ``agentbus bench --executor http`` (py-spy), at most 200 a second a partition with this.
NUDGE_GAP_S = 0.005

log = logging.getLogger("agentbus.projector")


class ProjectorProcessFailed(RuntimeError):
    """The projector process exited while the runner was running."""


@dataclass
class ProjectorProcess:
    """Runs the projector in a child process and relays positions and nudges (see the module)."""

    log: SqliteLog
    store: ProjectionStore
    broker: str
    database: str
    partitions: int
    linger_ms: int
    pid: int | None = field(default=None, init=False)
    # Set once the child has opened the log and the read models and follows them (the runner's
    # readiness waits for it, so a service that answers has its read models moving).
    ready: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    async def run(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        self.pid = proc.pid
        assert proc.stdin is not None and proc.stdout is not None
        nudges: list[asyncio.Task[None]] = []
        try:
            config = {"broker": self.broker, "database": self.database, "partitions": self.partitions,
                      "linger_ms": self.linger_ms}
            proc.stdin.write(orjson.dumps(config) + b"\n")
            nudges = [asyncio.create_task(self._nudge(proc.stdin, p), name=f"projector nudge[{p}]")
                      for p in range(self.partitions)]
            while line := await proc.stdout.readline():
                if line == b"ready\n":
                    self.ready.set()
                    continue
                partition, end = (int(x) for x in line.split())
                self.store.advanced(MAIN_PROJECTOR, EVENTS, partition, end)
            code = await proc.wait()
            raise ProjectorProcessFailed(
                f"the projector process (pid {proc.pid}) exited with code {code}; its error is in the "
                "log above. The read models stop following the log until the service restarts.")
        finally:
            for t in nudges:
                t.cancel()
            await _end(proc)

    async def _nudge(self, stdin: asyncio.StreamWriter, partition: int) -> None:
        """Tell the child each time this process commits events in ``partition``."""
        offset = await self.log.end_offset(EVENTS, partition)
        line = b"%d\n" % partition
        gap = min(NUDGE_GAP_S, self.linger_ms / 1000)
        while True:
            if await self.log.wait(EVENTS, partition, offset, timeout=60.0):
                # No query on this hot path: the writer's own end (past ``offset`` unless the append
                # was another process's, when the next record is enough).
                offset = max(offset + 1, self.log.committed_end(EVENTS, partition))
                stdin.write(line)
                await stdin.drain()
                if gap > 0:
                    # Never lost, only shared: a commit meanwhile is past ``offset``, so the wait
                    # above returns at once for it after the gap.
                    await asyncio.sleep(gap)


async def _end(proc: asyncio.subprocess.Process) -> None:
    """Close the child's input (it finishes its batch and exits), then kill it if it lingers."""
    if proc.stdin is not None:
        proc.stdin.close()
    if proc.returncode is not None:
        return
    try:
        await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
    except TimeoutError:
        log.warning("the projector process (pid %s) did not exit in %.0f s: killed", proc.pid, STOP_GRACE_S)
        proc.kill()
        await proc.wait()


class _ReportingStore(ProjectionStore):
    """The child's store: every committed position also goes to the runner, on standard output."""

    orphaned = False  # the runner is gone (its end of the pipe closed); our input ends soon too

    def advanced(self, projector: str, topic: str, partition: int, next_offset: int) -> None:
        super().advanced(projector, topic, partition, next_offset)
        if projector == MAIN_PROJECTOR and topic == EVENTS:
            self.report(b"%d %d\n" % (partition, next_offset))

    def report(self, line: bytes) -> None:
        if self.orphaned:
            return
        try:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            self.orphaned = True


async def _child() -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    first = await stdin.readline()
    if not first:
        return  # the runner went away before it said anything
    config: dict[str, Any] = orjson.loads(first)
    events_log = SqliteLog(config["broker"])
    store = _ReportingStore(config["database"])
    await events_log.start()
    try:
        await store.start()
        for p in range(int(config["partitions"])):
            store.advanced(MAIN_PROJECTOR, EVENTS, p, await store.read_position(MAIN_PROJECTOR, EVENTS, p))
        store.report(b"ready\n")
        projector = ProjectorLoop(events_log, Projector(store), int(config["partitions"]),
                                  linger_s=int(config["linger_ms"]) / 1000)
        work = asyncio.create_task(projector.run(), name="projector")
        nudges = asyncio.create_task(_follow_nudges(stdin, events_log), name="nudges")
        # SIGTERM (e.g. to the whole process group) stops us as the end of our input does.
        loop.add_signal_handler(signal.SIGTERM, nudges.cancel)
        try:
            await asyncio.wait([work, nudges], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (work, nudges):
                t.cancel()
            await asyncio.gather(work, nudges, return_exceptions=True)
        if not work.cancelled() and work.exception() is not None:
            raise work.exception()  # type: ignore[misc]
    finally:
        await store.close()
        await events_log.close()


async def _follow_nudges(stdin: asyncio.StreamReader, events_log: SqliteLog) -> None:
    """Until the runner closes our input: wake the log's waiters on each partition it names."""
    while line := await stdin.readline():
        with contextlib.suppress(ValueError):
            events_log.nudge(EVENTS, int(line))


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the runner stops us (by closing our
    # input) once it has stopped what feeds us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING,
                        format="projector process: %(levelname)s %(name)s: %(message)s")
    gc.set_threshold(*GC_THRESHOLDS)  # as the runner's (services.runtime.embedded.tune_gc)
    keep_large_blocks_apart()  # as the runner does (services.runtime.memory)
    asyncio.run(_child())


if __name__ == "__main__":
    main()
