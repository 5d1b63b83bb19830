"""Trying an executor configuration once without registering it: ``POST /v1/agents/test`` and
``agentbus executor test``.

The executor is started (its secret references resolved in this process), called once with the
given action and parameters, and closed. Nothing is appended to the log: a trial is not a task.
This module must never register an agent or write an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contracts import new_id
from contracts.executors import ExecutorConfig
from services.executors.base import INTERNAL, TIMEOUT, Call
from services.executors.factory import build_in_process
from services.executors.secrets import guarded

TRIAL_TIMEOUT_S = 30.0  # a trial is cut here, whatever the configuration's timeout


async def try_executor(config: ExecutorConfig, action: str | None, parameters: dict[str, Any],
                       guard: Sequence[Path] | None = None) -> dict[str, Any]:
    """``{agent_name, success, response_time, result, error, error_code, retryable, retry_after}``;
    ``response_time`` in seconds, start and close of the executor included. ``guard``: the data
    directories of a configuration that came through the API (``secrets.guarded``)."""
    began = time.perf_counter()
    executor = build_in_process(config)  # a trial is one call: never worker processes
    try:
        async with asyncio.timeout(TRIAL_TIMEOUT_S):
            with guarded(guard) if guard is not None else contextlib.nullcontext():
                await executor.start()
            key = f"agentbus-test-{new_id()}"
            outcome = await executor.call(Call(task_id=f"test-{new_id()}", attempt=1, action=action,
                                               parameters=parameters, idempotency_key=key))
    except TimeoutError:  # the trial's own limit, whatever the configuration's: as a call's timeout
        return _failed(config, began, f"no answer within {TRIAL_TIMEOUT_S:g} s (a trial's limit)", TIMEOUT,
                       retryable=True)
    except Exception as exc:  # a configuration that cannot start (a missing secret, say)
        return _failed(config, began, str(exc), INTERNAL, retryable=False)
    finally:
        await executor.close()
    usage = outcome.usage
    result = dict(outcome.result) if outcome.ok else (outcome.result or None)
    if usage is not None and isinstance(result, dict) and "usage" not in result:
        result["usage"] = {"model": usage.model, "input_tokens": usage.input_tokens,
                           "output_tokens": usage.output_tokens}
    return {"agent_name": config.name, "success": outcome.ok, "response_time": time.perf_counter() - began,
            "result": result, "error": outcome.error, "error_code": outcome.error_code,
            "retryable": None if outcome.ok else outcome.retryable, "retry_after": outcome.retry_after_s}


def _failed(config: ExecutorConfig, began: float, error: str, code: str, *,
            retryable: bool) -> dict[str, Any]:
    """The answer of a trial that ended before its call answered."""
    return {"agent_name": config.name, "success": False, "response_time": time.perf_counter() - began,
            "result": None, "error": error, "error_code": code, "retryable": retryable, "retry_after": None}
