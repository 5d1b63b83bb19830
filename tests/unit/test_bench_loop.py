"""``agentbus bench --loop``: the in-process runtime is measured on the event loop `agentbus serve`
runs on (uvloop, a dependency) unless the standard library's is asked for."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from services.bench.scenario import loop_name, run_on


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_served_is_uvloop_and_asyncio_is_the_standard_loop() -> None:
    assert run_on("served", _loop_type()) is uvloop.Loop
    assert loop_name("served").startswith("uvloop ")
    assert issubclass(run_on("asyncio", _loop_type()), asyncio.BaseEventLoop)
    assert not issubclass(run_on("asyncio", _loop_type()), uvloop.Loop)
    assert loop_name("asyncio") == "asyncio"


def test_an_unknown_loop_is_refused_by_name() -> None:
    main = _loop_type()
    with pytest.raises(ValueError, match="unknown event loop 'trio'"):
        run_on("trio", main)
    main.close()
