"""FastAPI dependencies shared by the routers: the service, a write's options, a read's scope.

A read that passes ``min_position`` first waits (up to ``READ_WAIT_S``) until what it reads has
caught up with that events position, so a client reads its own writes; that rule lives here once,
in ``read_model_caught_up`` (reads of the read models) and ``log_caught_up`` (reads of the log).

Dependencies are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in its thread
pool, two thread hops per request that cut HTTP throughput several times over.

This module must never write anything, and never answer a read before the wait it was asked for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Query, Request

from services.http.bodies import MAX_ID
from services.runtime.service import Service

__all__ = [
    "DEFAULT_WAIT_S",
    "MAX_POSITION",
    "MAX_WAIT_S",
    "READ_WAIT_S",
    "After",
    "LogRead",
    "ModelRead",
    "ReadScope",
    "ServiceDep",
    "Write",
    "WriteOptions",
]

# Outcome waits are capped so a stuck decider cannot hold a connection for ever.
DEFAULT_WAIT_S = 10.0
MAX_WAIT_S = 60.0
# How long a read waits for ``min_position`` before answering 504.
READ_WAIT_S = 5.0
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


async def _write_options(
    wait: Annotated[bool, Query(description="Wait for the decider's outcome (events or rejection).")] = False,
    timeout: Annotated[float, Query(gt=0, le=MAX_WAIT_S, description="Seconds to wait with wait=true.")] = (
        DEFAULT_WAIT_S
    ),
    pool: Annotated[str | None, Query(min_length=1, max_length=MAX_ID,
                                      description="Pool, when the body does not name one.")] = None,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", min_length=1, max_length=MAX_ID,
        description="Command id; a repeat returns the first outcome.")] = None,
    actor: Annotated[str | None, Header(alias="X-Agentbus-Actor", max_length=MAX_ID)] = None,
    correlation_id: Annotated[str | None, Header(alias="X-Correlation-Id", max_length=MAX_ID)] = None,
) -> WriteOptions:
    return WriteOptions(wait, timeout, pool, idempotency_key, actor, correlation_id)


Write = Annotated[WriteOptions, Depends(_write_options)]


# --- reads --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadScope:
    """What a read reads: the service and the pool, caught up with the asked position."""

    service: Service
    pool: str


Pool = Annotated[str, Query(min_length=1, max_length=MAX_ID, description="The pool to read.")]
MinPosition = Annotated[int | None, Query(
    ge=-1, le=MAX_POSITION,
    description="Wait (up to 5 s) until what is read has reached this events position; 504 when it has not.")]
After = Annotated[int | None, Query(ge=-MAX_POSITION - 1, le=MAX_POSITION,
                                    description="Last position seen, for paging.")]
# Whether the source of a read has reached ``position`` of ``partition`` within ``timeout``.
Reached = Callable[[Service, int, int, float], Awaitable[bool]]


def caught_up(reached: Reached, source: str) -> Callable[..., Awaitable[ReadScope]]:
    """The dependency of a read from ``source``: the pool, after ``min_position`` is reached there."""

    async def dependency(service: ServiceDep, pool: Pool = "default",
                         min_position: MinPosition = None) -> ReadScope:
        if min_position is not None and min_position >= 0:
            # The module global, read on each call, so a test can shorten the wait.
            if not await reached(service, service.partition_of(pool), min_position, READ_WAIT_S):
                raise HTTPException(504, f"{source} has not reached position {min_position} yet")
        return ReadScope(service, pool)

    return dependency


async def _projected(service: Service, partition: int, position: int, timeout: float) -> bool:
    return await service.store.wait_for_position(service.topics.events, partition, position, timeout=timeout)


async def _appended(service: Service, partition: int, position: int, timeout: float) -> bool:
    return await service.log.wait(service.topics.events, partition, position, timeout)


read_model_caught_up = caught_up(_projected, "read model")
log_caught_up = caught_up(_appended, "log")

ModelRead = Annotated[ReadScope, Depends(read_model_caught_up)]
LogRead = Annotated[ReadScope, Depends(log_caught_up)]
