"""FastAPI dependencies shared by the routers: the service, a write's options, a read's scope.

A read that passes ``min_position`` (the ``position`` a write answered: its command's offset on
the commands topic) first waits, up to ``READ_WAIT_S``, until the decider of the pool's partition
has decided that command and what the read reads (the read models, or the log) holds every event
appended until then; so a client reads its own writes. That rule lives here once, in
``caught_up``: ``read_model_caught_up`` for reads of the read models, ``log_caught_up`` for reads
of the log.

Dependencies are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in its thread
pool, two thread hops per request that cut HTTP throughput several times over.

This module must never write anything, and never answer a read before the wait it was asked for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Query, Request

from services.http.auth import principal_of
from services.http.bodies import MAX_ID, PoolName
from services.http.permissions import Principal
from services.runtime.service import Service

__all__ = [
    "BEYOND_END_GRACE_S",
    "DEFAULT_WAIT_S",
    "MAX_POSITION",
    "MAX_WAIT_S",
    "READ_WAIT_S",
    "After",
    "LogRead",
    "ModelRead",
    "PositionBeyondEnd",
    "ReadScope",
    "ServiceDep",
    "Write",
    "WriteOptions",
]

# A pool in a query: the rules of a pool in a body (it lands in text columns of the read models,
# and PostgreSQL refuses NUL, %00).
PoolText = PoolName

# Outcome waits are capped so a stuck decider cannot hold a connection for ever.
DEFAULT_WAIT_S = 10.0
MAX_WAIT_S = 60.0
# How long a read waits for ``min_position`` before answering 504.
READ_WAIT_S = 5.0
# A min_position at or past the end of the commands log is answered 409 after this long: time
# enough for a write acknowledged by another API process to become visible here (Kafka shows a
# committed transaction to other processes a few milliseconds late), short of a wait.
BEYOND_END_GRACE_S = 0.2
# Log positions are signed 64-bit integers (SQLite's INTEGER, Kafka's offsets); a larger number in
# a query would overflow the database driver, so it is refused as input instead.
MAX_POSITION = 2**63 - 1


async def _service(request: Request) -> Service:
    service: Service | None = getattr(request.app.state, "service", None)
    if service is None:
        raise HTTPException(503, "agentbus is starting")
    return service


ServiceDep = Annotated[Service, Depends(_service)]


# --- writes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteOptions:
    """Query and header options shared by every write."""

    wait: bool
    timeout: float
    pool: str | None
    idempotency_key: str | None
    actor: str | None
    correlation_id: str | None
    # Who is writing, when authentication is on: its role limits the commands it may append.
    principal: Principal | None = None


async def _write_options(
    request: Request,
    wait: Annotated[bool, Query(description="Wait for the decider's outcome (events or rejection).")] = False,
    timeout: Annotated[float, Query(gt=0, le=MAX_WAIT_S, description="Seconds to wait with wait=true.")] = (
        DEFAULT_WAIT_S
    ),
    pool: Annotated[PoolText | None, Query(min_length=1, max_length=MAX_ID,
                                      description="Pool, when the body does not name one.")] = None,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", min_length=1, max_length=MAX_ID,
        description="The command id (wins over the body's command_id). A retry with the same key and "
                    "the same request (type, pool, body) returns the first outcome and appends "
                    "nothing; the same key with another request is refused with 422 "
                    "(idempotency_key_reused). Keys are remembered for as long as the log keeps "
                    "the events (for ever), per deployment.")] = None,
    actor: Annotated[str | None, Header(alias="X-Agentbus-Actor", max_length=MAX_ID)] = None,
    correlation_id: Annotated[str | None, Header(alias="X-Correlation-Id", max_length=MAX_ID)] = None,
) -> WriteOptions:
    principal = principal_of(request)
    if principal is not None:  # authenticated: the actor is who the credential says, never a header
        actor = principal.actor
    return WriteOptions(wait, timeout, pool, idempotency_key, actor, correlation_id, principal)


Write = Annotated[WriteOptions, Depends(_write_options)]


# --- reads --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadScope:
    """What a read reads: the service and the pool, caught up with the asked position."""

    service: Service
    pool: str


class PositionBeyondEnd(Exception):
    """``min_position`` is at or past the end of the pool's commands partition: no write answered it."""

    def __init__(self, position: int, partition: int, end: int) -> None:
        super().__init__(f"min_position {position} is beyond the end of the commands log: partition "
                         f"{partition} ends at {end} (positions 0 to {end - 1} exist)")
        self.position, self.partition, self.end = position, partition, end


Pool = Annotated[PoolText, Query(min_length=1, max_length=MAX_ID, description="The pool to read.")]
MinPosition = Annotated[int | None, Query(
    ge=-1, le=MAX_POSITION,
    description="Read your own writes: the `position` a write answered (202, or with wait=true). The "
                "read first waits, up to 5 s, until the command at that position of the pool's "
                "partition is decided and what is read holds its outcome and every earlier one; "
                "504 when that takes longer. A position at or past the end of the commands log was "
                "never answered by a write: 409 at once, with the current end. -1 or absent: no "
                "wait.")]
After = Annotated[int | None, Query(ge=-MAX_POSITION - 1, le=MAX_POSITION,
                                    description="Last position seen, for paging.")]
# Whether the source of a read holds the events of ``partition`` up to ``offset`` (an events
# offset, -1 for none) within ``timeout``.
Reached = Callable[[Service, int, int, float], Awaitable[bool]]


def caught_up(reached: Reached, source: str) -> Callable[..., Awaitable[ReadScope]]:
    """The dependency of a read from ``source``: the pool, after ``min_position`` is reached there."""

    async def dependency(service: ServiceDep, pool: Pool = "default",
                         min_position: MinPosition = None) -> ReadScope:
        if min_position is not None and min_position >= 0:
            await _wait_for(service, service.partition_of(pool), min_position, reached, source)
        return ReadScope(service, pool)

    return dependency


async def _wait_for(service: Service, partition: int, position: int, reached: Reached, source: str) -> None:
    loop = asyncio.get_running_loop()
    # The module global, read on each call, so a test can shorten the wait.
    deadline = loop.time() + READ_WAIT_S
    commands = service.topics.commands
    end = await service.log.end_offset(commands, partition)
    if position >= end and not await service.log.wait(commands, partition, position, BEYOND_END_GRACE_S):
        raise PositionBeyondEnd(position, partition, await service.log.end_offset(commands, partition))
    last = await service.wait_decided(partition, position, max(deadline - loop.time(), 0.0))
    if last is None:
        raise HTTPException(504, f"the command at position {position} is not decided yet")
    if not await reached(service, partition, last, max(deadline - loop.time(), 0.0)):
        raise HTTPException(504, f"the {source} has not reached the outcome of position {position} yet")


async def _projected(service: Service, partition: int, offset: int, timeout: float) -> bool:
    return await service.store.wait_for_position(service.topics.events, partition, offset, timeout=timeout)


async def _in_log(service: Service, partition: int, offset: int, timeout: float) -> bool:
    # wait_decided returns once the events are readable from the log.
    return True


async def projected_so_far(service: Service, pool: str) -> None:
    """Wait, briefly (up to the read's wait each step), until the read models hold every decision
    made so far in ``pool``'s partition: a miss right after a write the client did not wait for is
    then not a false one. Never raises for a timeout: the read then answers what it finds."""
    partition = service.partition_of(pool)
    decided = await service.decided_position(partition)
    if decided < 0:
        return
    last = await service.wait_decided(partition, decided, READ_WAIT_S)
    if last is not None and last >= 0:
        await _projected(service, partition, last, READ_WAIT_S)


read_model_caught_up = caught_up(_projected, "read model")
log_caught_up = caught_up(_in_log, "log")

ModelRead = Annotated[ReadScope, Depends(read_model_caught_up)]
LogRead = Annotated[ReadScope, Depends(log_caught_up)]
