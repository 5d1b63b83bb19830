"""An executor whose calls run in worker processes of their own (configuration ``processes: N``).

A call to the outside world is mostly interpreter work on the host's side (``httpx2`` building the
request and parsing the response, an SDK's models): in the host's process it shares one core with
the log, the decider and the coordinator. ``processes: N`` starts N worker processes, each running
the same executor (the same class and configuration, its own connection pool), and hands each call
to one of them over a pipe: the host then spends a few tens of microseconds per call on the hand-off
instead of the call itself, and the calls use the other cores.

What stays the same: the worker resolves the configuration's secret references itself, from the
environment and files it inherits (a resolved secret never crosses the pipe, and a missing one
fails ``start``, named, as in-process); a call's outcome, idempotency key and time limit are the
executor's own; a cancelled call is cancelled in the worker; progress (an ``ai_agent``'s text
deltas) is carried back to the call's sink.

A worker that dies (killed, out of memory) is started again, and the calls it held are made again
in the new one, each with its own ``Idempotency-Key`` (the same attempt of the same task): to the
outside world that is a crash between the call and its report, which the key makes safe. A call
whose worker dies ``REDO_AFTER_DEATH + 1`` times in a row (a request that kills it, say) fails as a
retryable ``executor_error``, and the task's retry policy decides, as for any failure: its next
attempt has a key of its own.

The protocol: one JSON object per line. Parent to worker: the configuration first, then
``{"id": n, "call": {...}}`` or ``{"cancel": n}``. Worker to parent: ``{"started": true}`` or
``{"error": "..."}`` once, then ``{"id": n, "outcome": {...}}`` or ``{"id": n, "progress": {...}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import logging
import os
import sys
from typing import Any

import orjson
from pydantic import TypeAdapter

from contracts.executors import ExecutorConfig
from services.executors.base import INTERNAL, Call, Executor, Outcome, Progress, Usage
from services.runtime.memory import GC_THRESHOLDS

__all__ = ["MAX_LINE", "WorkerExecutor", "WorkerStartError"]

log = logging.getLogger("agentbus.executors")

# The longest line either side reads: a result is at most MAX_RESULT_BYTES (256 KiB) as JSON, a
# call's parameters at most what a task holds; this leaves room for both and their escaping.
MAX_LINE = 8 * 1024 * 1024
START_TIMEOUT_S = 60.0  # a worker that has not said it started by then is stopped
STOP_TIMEOUT_S = 10.0  # a worker asked to stop (stdin closed) is killed after this long
# A call the worker has not answered this long after its own time limit is failed here.
GRACE_S = 10.0
# A call whose worker process died under it is made again (same key) in a new one this many times.
REDO_AFTER_DEATH = 2
_CONFIG: TypeAdapter[ExecutorConfig] = TypeAdapter(ExecutorConfig)


class WorkerStartError(RuntimeError):
    """The worker process did not start the executor (its message says why, e.g. a missing secret)."""


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    # Field by field: ``dataclasses.asdict`` deep-copies the result on its way to orjson (6% of a
    # worker's time in the executor benchmark's profile).
    usage = outcome.usage
    return {"ok": outcome.ok, "result": outcome.result, "error": outcome.error,
            "error_code": outcome.error_code, "retryable": outcome.retryable,
            "retry_after_s": outcome.retry_after_s,
            "usage": None if usage is None else {"model": usage.model, "input_tokens": usage.input_tokens,
                                                 "output_tokens": usage.output_tokens}}


def _outcome_of(data: dict[str, Any]) -> Outcome:
    usage = data.get("usage")
    return Outcome(ok=data["ok"], result=data["result"], error=data["error"], error_code=data["error_code"],
                   retryable=data["retryable"], retry_after_s=data["retry_after_s"],
                   usage=Usage(**usage) if usage is not None else None)


def _died(why: str) -> Outcome:
    return Outcome.failure(f"the executor's worker process {why}", INTERNAL, retryable=True)


class _WorkerDied(Exception):
    """The worker process holding a call ended before it answered (the call is made again)."""


class _Worker:
    """One worker process and the calls it holds."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.calls: dict[int, tuple[asyncio.Future[Outcome], Progress | None]] = {}
        self.reader: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and self.reader is not None and not self.reader.done()

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(message) + b"\n")

    async def read(self) -> None:
        """Settle each call as its outcome arrives; on the worker's end fail what it still held."""
        assert self.proc.stdout is not None
        why = "exited"
        try:
            while line := await self.proc.stdout.readline():
                message = orjson.loads(line)
                held = self.calls.get(message["id"])
                if held is None:
                    continue  # cancelled here before the worker answered
                future, progress = held
                if "outcome" in message:
                    del self.calls[message["id"]]
                    if not future.done():
                        future.set_result(_outcome_of(message["outcome"]))
                elif progress is not None:
                    with contextlib.suppress(Exception):  # progress is a courtesy (base.Progress)
                        progress(**message["progress"])
        except (ValueError, KeyError, TypeError) as exc:  # not our protocol: treat as dead
            why = f"sent an unreadable line ({type(exc).__name__})"
            self.proc.kill()
        finally:
            code = await self.proc.wait()
            for future, _ in self.calls.values():
                if not future.done():
                    future.set_exception(_WorkerDied(f"{why} (exit status {code}) during the call"))
            self.calls.clear()


class WorkerExecutor:
    """``config``'s executor run in ``config.processes`` worker processes (see the module doc)."""

    def __init__(self, config: ExecutorConfig) -> None:
        self.name = config.name
        self.config = config
        self._workers: list[_Worker | None] = [None] * max(1, config.processes)
        self._starting = asyncio.Lock()
        self._ids = itertools.count(1)

    async def start(self) -> None:
        """Start every worker; the first that cannot start the executor raises WorkerStartError."""
        for i in range(len(self._workers)):
            await self._worker(i)

    async def _spawn(self) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.executors.processes",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=MAX_LINE)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(orjson.dumps(self.config.model_dump(mode="json")) + b"\n")
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                line = await proc.stdout.readline()
            answer = orjson.loads(line) if line else {"error": f"exited with status {await proc.wait()}"}
        except (TimeoutError, ValueError) as exc:
            proc.kill()
            await proc.wait()
            raise WorkerStartError(f"{self.name}: the worker process did not start "
                                   f"({type(exc).__name__})") from None
        if "error" in answer:
            await proc.wait()
            raise WorkerStartError(f"{self.name}: {answer['error']}")
        worker = _Worker(proc)
        worker.reader = asyncio.create_task(worker.read(), name=f"executors:{self.name}:worker")
        return worker

    async def _worker(self, i: int) -> _Worker:
        worker = self._workers[i]
        if worker is not None and worker.alive:
            return worker
        async with self._starting:
            worker = self._workers[i]
            if worker is None or not worker.alive:
                if worker is not None:
                    log.warning("executor %s: worker process %d ended (status %s); starting another",
                                self.name, i, worker.proc.returncode)
                worker = self._workers[i] = await self._spawn()
            return worker

    def _held(self, i: int) -> int:
        worker = self._workers[i]
        return 0 if worker is None else len(worker.calls)

    async def call(self, call: Call) -> Outcome:
        """``call`` in a worker; made again in a new worker (same key) if its worker dies under it."""
        for deaths in itertools.count(1):
            try:
                return await self._call(call)
            except _WorkerDied as exc:
                if deaths > REDO_AFTER_DEATH:
                    return _died(f"{exc}, {deaths} times in a row")
                log.warning("executor %s: the worker process %s; calling again in a new one with the "
                            "same Idempotency-Key", self.name, exc)
        raise AssertionError("unreachable")

    async def _call(self, call: Call) -> Outcome:
        # The worker holding the fewest calls (the first, on a tie).
        i = min(range(len(self._workers)), key=self._held)
        try:
            worker = await self._worker(i)
        except WorkerStartError as exc:
            return Outcome.failure(str(exc), INTERNAL, retryable=True)
        n = next(self._ids)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        worker.calls[n] = (future, call.progress)
        limit = (call.timeout_s if call.timeout_s is not None else self.config.timeout) + GRACE_S
        try:
            worker.send({"id": n, "call": {
                "task_id": call.task_id, "attempt": call.attempt, "action": call.action,
                "parameters": call.parameters, "idempotency_key": call.idempotency_key,
                "timeout_s": call.timeout_s, "task_type": call.task_type,
                "progress": call.progress is not None}})
            async with asyncio.timeout(limit):
                return await future
        except TimeoutError:
            self._drop(worker, n)
            return _died(f"did not answer within {limit:g} s")
        except (ConnectionError, RuntimeError):  # the pipe closed under the write: it is ending
            return await future
        except asyncio.CancelledError:
            self._drop(worker, n)
            raise
        finally:
            worker.calls.pop(n, None)

    @staticmethod
    def _drop(worker: _Worker, n: int) -> None:
        """Stop waiting for call ``n`` and have the worker cancel it (freeing its slot)."""
        if worker.calls.pop(n, None) is not None and worker.alive:
            with contextlib.suppress(ConnectionError, RuntimeError):
                worker.send({"cancel": n})

    async def close(self) -> None:
        """Close each worker's stdin (it closes its executor and exits); kill one that does not."""
        workers, self._workers = self._workers, [None] * len(self._workers)
        for worker in workers:
            if worker is None:
                continue
            assert worker.proc.stdin is not None
            with contextlib.suppress(ConnectionError, RuntimeError):
                worker.proc.stdin.close()
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await worker.proc.wait()
            except TimeoutError:
                worker.proc.kill()
            if worker.reader is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.reader


# -- the worker process ---------------------------------------------------------------------------


async def _serve() -> int:
    from services.executors.factory import build_in_process

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    # The protocol keeps the pipe to itself: whatever a library prints goes to standard error.
    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, channel)
    out = asyncio.StreamWriter(transport, protocol, reader, loop)

    def send(message: dict[str, Any]) -> None:
        out.write(orjson.dumps(message) + b"\n")

    first = await reader.readline()
    try:
        executor: Executor = build_in_process(_CONFIG.validate_json(first))
        await executor.start()
    except Exception as exc:  # says why (a SecretError names the missing reference, never a value)
        send({"error": str(exc) or type(exc).__name__})
        await out.drain()
        return 1
    send({"started": True})
    # As the service's processes (``services.runtime.embedded.tune_gc``): a call allocates
    # hundreds of short-lived objects, so young collections every 700 allocations ran several
    # times a call; what the start built (modules, the client) stays out of full collections.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    running: dict[int, asyncio.Task[None]] = {}

    async def run(n: int, spec: dict[str, Any]) -> None:
        def progress(**kw: Any) -> None:
            send({"id": n, "progress": kw})

        call = Call(task_id=spec["task_id"], attempt=spec["attempt"], action=spec["action"],
                    parameters=spec["parameters"], idempotency_key=spec["idempotency_key"],
                    timeout_s=spec["timeout_s"], task_type=spec["task_type"],
                    progress=progress if spec["progress"] else None)
        try:
            outcome = await executor.call(call)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # a bug of ours, as the host reports it in-process
            outcome = Outcome.bug(exc)
        send({"id": n, "outcome": _outcome_json(outcome)})

    try:
        while line := await reader.readline():
            message = orjson.loads(line)
            if "cancel" in message:
                task = running.get(message["cancel"])
                if task is not None:
                    task.cancel()
                continue
            n = message["id"]
            task = running[n] = asyncio.create_task(run(n, message["call"]))
            task.add_done_callback(functools.partial(_forget, running, n))
    finally:
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        await executor.close()
        with contextlib.suppress(ConnectionError):
            await out.drain()
    return 0


def _forget(running: dict[int, asyncio.Task[None]], n: int, _task: asyncio.Task[None]) -> None:
    running.pop(n, None)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        import uvloop
    except ImportError:  # the service's loop where it is installed, as uvicorn's "auto"
        return asyncio.run(_serve())
    return uvloop.run(_serve())


if __name__ == "__main__":
    sys.exit(main())
