"""The embedded projector loop: a trickle of events is applied in fewer, larger transactions when
it lingers, and a backlog never waits for the linger.

Real parts: a SQLite log file and SQLite read models; the projector is counted, not replaced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from events import open_log
from events.codec import to_record
from projections import ProjectionStore, Projector
from services.runtime.projector import ProjectorLoop
from services.runtime.topics import EVENTS

from .history import Story


class _Counting(Projector):
    def __init__(self, store: ProjectionStore) -> None:
        super().__init__(store)
        self.batches: list[int] = []

    async def apply(self, topic: str, partition: int, batch: Sequence[tuple[int, object]]) -> int:
        self.batches.append(len(batch))
        return await super().apply(topic, partition, batch)  # type: ignore[arg-type]


async def _project(tmp_path: Path, linger_s: float, *, trickle: int, backlog: int = 0,
                   limit: int = 2000) -> tuple[list[int], int]:
    """Run a loop over ``backlog`` events already in the log, then ``trickle`` appended 5 ms apart;
    the batch sizes it applied and the position it reached."""
    story = Story()
    for i in range(backlog + trickle):
        story.register(f"a{i}")
    envs = story.envelopes
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}")
    store = ProjectionStore(f"sqlite+aiosqlite:///{tmp_path / 'read.db'}")
    await log.start()
    await store.start()
    projector = _Counting(store)
    try:
        await log.ensure_topic(EVENTS, 1)
        if backlog:
            await log.append(EVENTS, [to_record(e) for e in envs[:backlog]], partition=0)
        loop = asyncio.create_task(ProjectorLoop(log, projector, 1, linger_s=linger_s, limit=limit).run())
        try:
            for env in envs[backlog:]:
                await log.append(EVENTS, [to_record(env)], partition=0)
                await asyncio.sleep(0.005)
            reached = await store.wait_for_position(EVENTS, 0, len(envs) - 1, timeout=10)
            assert reached, f"the read models never caught up: applied {projector.batches}"
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
        return projector.batches, await store.read_position("read_models", EVENTS, 0)
    finally:
        await store.close()
        await log.close()


async def test_a_lingering_projector_applies_a_trickle_in_fewer_transactions(tmp_path: Path) -> None:
    eager, end = await _project(tmp_path / "eager", 0.0, trickle=80)
    assert end == 80 and sum(eager) == 80
    lingering, end = await _project(tmp_path / "lingering", 0.2, trickle=80)
    assert end == 80 and sum(lingering) == 80
    # 80 events over at least 0.4 s: a 0.2 s linger leaves a handful of batches, where applying
    # at once takes most events on their own.
    assert len(lingering) <= 10 and len(eager) > 20, (lingering, eager)


async def test_a_backlog_is_applied_in_full_batches_without_waiting_for_the_linger(tmp_path: Path) -> None:
    # A 60 s linger after a full batch would time the wait out (10 s): full batches go on at once.
    batches, end = await _project(tmp_path, 60.0, trickle=0, backlog=450, limit=100)
    assert end == 450
    assert batches == [100, 100, 100, 100, 50]
