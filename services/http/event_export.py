"""``GET /v1/events/export``: the events topic as an lz4-frame NDJSON stream, the format of
``agentbus events export`` (one CloudEvent per line, each record's bytes as stored, partition then
offset order), so ``curl -s URL | lz4cat | jq`` reads it and ``agentbus events import`` takes it.

The log is read a page at a time and each page is compressed and sent before the next is read: a
response never holds more than one page, however long the log.

This module must never write anything, and never change a record: the lines are the records' bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import lz4.frame
from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from events.chain import GENESIS, chain_at
from events.codec import from_record, record_type
from events.export import ChainedLines
from events.log import StoredRecord
from services.http.deps import ServiceDep
from services.http.errors import error_item, invalid
from services.http.responses import Error, ValidationErrors, json_response
from services.runtime.channels import ChannelError, Cursor, parse_cursor
from services.runtime.service import Service

__all__ = ["EXPORT_PAGE", "LZ4_TYPE", "router"]

EXPORT_PAGE = 1000
LZ4_TYPE = "application/x-lz4"

router = APIRouter(tags=["reads"])

_POSITION = ("A position: an integer (the same in every partition) or <partition>:<position> pairs "
             "joined by commas, as the live streams' cursors.")


@router.get(
    "/v1/events/export",
    summary="The events as an lz4-frame NDJSON stream (`agentbus events export`'s format)",
    response_class=Response,
    responses={200: {"content": {LZ4_TYPE: {"schema": {"type": "string", "format": "binary"}}},
                     "description": "lz4 frame of NDJSON, one CloudEvent per line: `lz4cat | jq`."},
               409: {"model": Error, "description": "`after` is beyond the end of the log."},
               422: {"model": ValidationErrors, "description": "An invalid query parameter."},
               503: {"model": Error, "description": "The service is starting or cannot reach its log."}},
)
async def export_events(
    service: ServiceDep,
    after: Annotated[str | None, Query(max_length=10_000,
                                       description=f"Export events after this position. {_POSITION}")] = None,
    until: Annotated[str | None, Query(max_length=10_000, description=f"The last position exported "
                                       f"(default: the end when the request came). {_POSITION}")] = None,
    type: Annotated[list[str] | None, Query(description="Only events of these types (repeat it).")] = None,
) -> Response:
    topic = service.topics.events
    partitions = await service.log.partitions(topic)
    ends = {p: await service.log.end_offset(topic, p) - 1 for p in range(partitions)}
    first = _cursor(after, "after", partitions) if after is not None else dict.fromkeys(ends, -1)
    beyond = [p for p in ends if first[p] > ends[p]]
    if beyond:  # as the streams answer it: the log has not reached that position (restored, another log?)
        p = beyond[0]
        return json_response({"detail": f"after: position {first[p]} of partition {p} is beyond the end of "
                                        f"the log (its last position is {ends[p]})"}, 409)
    # A partition that until's pairs leave out is exported to its end, as with no until at all.
    last = _cursor(until, "until", partitions, missing=_TO_THE_END) if until is not None else ends
    last = {p: min(last[p], ends[p]) for p in ends}
    if type is not None and not all(type):
        invalid([error_item(("query", "type"), "value_error",
                            "an event type, e.g. TaskCompleted, not empty", "")])
    types = frozenset(type or ())
    return StreamingResponse(_frames(service, topic, first, last, types), media_type=LZ4_TYPE,
                             headers={"content-disposition": 'attachment; filename="events.ndjson.lz4"'})


_TO_THE_END = 2**63 - 1


def _cursor(value: str, name: str, partitions: int, missing: int = -1) -> Cursor:
    try:
        return parse_cursor(value, partitions, missing)
    except ChannelError as exc:
        invalid([error_item(("query", name), "value_error", str(exc), value)])


async def _frames(service: Service, topic: str, first: Cursor, last: Cursor,
                  types: frozenset[str]) -> AsyncIterator[bytes]:
    compressor = lz4.frame.LZ4FrameCompressor()
    yield compressor.begin()
    for p in sorted(last):
        offset, stop = first[p] + 1, last[p]
        if offset > stop:
            continue
        chained = ChainedLines(await chain_at(service.log, topic, p, offset) if offset else GENESIS)
        while offset <= stop:
            batch = await service.log.read(topic, p, offset, min(EXPORT_PAGE, stop - offset + 1))
            batch = [r for r in batch if r.offset <= stop]
            if not batch:
                break
            offset = batch[-1].offset + 1
            # Every record's line carries its chain value; a type filter leaves gaps, so only an
            # unfiltered export verifies as a whole.
            lines = chained.lines(batch)
            if types:
                lines = [line for r, line in zip(batch, lines, strict=True) if _type(r) in types]
            if lines:
                lines.append(b"")
                chunk = compressor.compress(b"\n".join(lines))
                if chunk:
                    yield chunk
    yield compressor.flush()


def _type(rec: StoredRecord) -> str:
    """The record's CloudEvents type: from its header when written by agentbus, else decoded."""
    kind = record_type(rec)
    return kind if kind is not None else from_record(rec).type
