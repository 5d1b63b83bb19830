"""The envelope cache and the outcome index are shared by every part of a process that is given
them, even while they are still empty (both have a length, so an empty one is falsy: a part that
took ``given or a_new_one`` kept a private, empty copy that nothing ever filled, and read back from
the log every record the others had cached)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from contracts import commands as c
from events.cache import EnvelopeCache
from events.sqlite import SqliteLog
from services.runtime.deliveries import Deliveries
from services.runtime.embedded import Runner
from services.runtime.ingest import command_envelope
from services.runtime.outcomes import Outcomes
from services.runtime.sealing import Sealer
from services.runtime.settings import Settings


def test_deliveries_and_their_book_use_the_cache_they_are_given_even_an_empty_one(tmp_path: Path) -> None:
    cache = EnvelopeCache()
    assert len(cache) == 0
    deliveries = Deliveries(SqliteLog(f"sqlite:///{tmp_path / 'log.db'}"), lambda: Sealer(b"k" * 32),
                            partitions=1, topic="events", commands="commands", cache=cache)
    assert deliveries.cache is cache
    assert deliveries.book.cache is cache


def test_a_cluster_service_shares_its_cache_with_its_worker_and_a_worker_keeps_what_it_is_given(
        tmp_path: Path) -> None:
    from services.runtime.cluster import ClusterService, FaustWorker  # pulls in Faust

    # Built, never started: no broker is needed to see what they hold.
    settings = Settings(broker="kafka://127.0.0.1:9", database=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    service = ClusterService(settings)
    cache, outcomes = EnvelopeCache(), Outcomes()
    worker = FaustWorker(settings, cache=cache, outcomes=outcomes)
    try:
        assert service.worker is not None
        assert service.worker.cache is service.cache
        assert worker.cache is cache
        assert worker.outcomes is outcomes
    finally:
        for built in (service.worker, worker):
            if built is not None:
                built._datadir.cleanup()  # what stop() removes; these never started


async def test_a_live_embedded_runner_does_not_read_back_what_it_appended(tmp_path: Path) -> None:
    """Every follower of the log in the runner (deciders, coordinator, timers, the deliveries'
    subscription book) takes this process's appends from the cache: after start, commands
    submitted and decided here cause no read of the log file (the book alone read every commit
    back before, over 40 reads for these 40 commands)."""
    runner = Runner(Settings(data_dir=tmp_path))
    reads: list[tuple[Any, ...]] = []
    read = runner.log.read

    async def counted(*args: Any, **kwargs: Any) -> Any:
        got = await read(*args, **kwargs)
        if got:
            reads.append(args)
        return got

    runner.log.read = counted  # type: ignore[method-assign]
    await runner.start()
    try:
        await runner.ready()
        assert runner.deliveries is not None and runner.deliveries.cache is runner.cache
        await asyncio.wait_for(runner.deliveries.book.ready.wait(), 10)
        before = len(reads)
        for i in range(40):
            env = command_envelope(c.SubmitTask(task_id=f"t{i}", type="demo"))
            partition, offset, _ = await runner.submit(env)
            assert await runner.wait_decided(partition, offset, 10) is not None
        assert reads[before:] == [], "records this process appended were read back from the log"
    finally:
        await runner.stop()
