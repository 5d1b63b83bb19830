"""A service's stop is bounded: every step shares one deadline and is abandoned past it; a start in
progress can be cancelled by a stop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from services.runtime.embedded import Runner
from services.runtime.service import StartCancelled, Starting, StopDeadline
from services.runtime.settings import Settings


async def test_steps_share_one_deadline_and_a_hung_one_is_abandoned() -> None:
    deadline = StopDeadline(0.3)
    started = time.monotonic()
    assert not await deadline.step("a hung step", asyncio.Event().wait())
    assert await deadline.step("a quick step", asyncio.sleep(0))  # still gets its last chance
    assert not await deadline.step("a failing step", _boom())
    assert not await deadline.step("a step that swallows its cancellation", _deaf(), at_most=0.1)
    assert time.monotonic() - started < 1.0


async def _boom() -> None:
    raise OSError("broker gone")


async def _deaf() -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:  # as some libraries' stop() does
        return


async def test_a_start_cancelled_by_a_stop_says_so_and_a_later_start_is_refused() -> None:
    starting = Starting()

    async def start() -> None:
        with starting.running():
            await asyncio.Event().wait()

    task = asyncio.create_task(start())
    await asyncio.sleep(0)
    starting.cancel()
    with pytest.raises(StartCancelled):
        await task
    with pytest.raises(StartCancelled):
        await start()


async def test_the_embedded_runner_stops_in_time_when_its_log_hangs(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.runtime.service.STOP_TIMEOUT_S", 0.5)
    runner = Runner(Settings(data_dir=tmp_path))
    await runner.start()
    await runner.ready()
    close = runner.log.close

    async def hung_close() -> None:
        await asyncio.Event().wait()

    runner.log.close = hung_close  # type: ignore[method-assign]
    started = time.monotonic()
    await runner.stop()
    assert time.monotonic() - started < 2.0
    await close()
