"""What leaves the API in bulk: the pool's events from the log, and the assignment audit trail as
JSON, CSV (one row per candidate) or XML.

This module must never write anything, never parse input into XML (it only builds documents, so
there is no XXE surface), and never change what a record says: it renders, it does not summarise.
"""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET  # builds only (never parses input): no XXE surface
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from events.codec import envelope_dict, from_record
from projections import queries
from services.http.bodies import MAX_ID
from services.http.deps import MAX_POSITION, After, LogRead, ModelRead
from services.http.read_schemas import Assignment, EventsPage, Items
from services.http.reads import READ_RESPONSES
from services.http.responses import json_response

__all__ = ["EVENTS_SCAN_CAP", "assignments_csv", "assignments_xml", "router"]

# /v1/events stops scanning after this many records per request, so a filter that matches
# nothing cannot make one request read the whole log; the client continues from next_after.
EVENTS_SCAN_CAP = 50_000

ExportFormat = Literal["json", "csv", "xml"]
CSV_TYPE = "text/csv; charset=utf-8"
XML_TYPE = "application/xml"

router = APIRouter(tags=["reads"], responses=READ_RESPONSES)


@router.get("/v1/events", summary="The pool's events from the log", response_model=EventsPage)
async def list_events(
    read: LogRead,
    after: Annotated[int, Query(ge=-1, le=MAX_POSITION - 1,
                                description="Exclusive position to read after.")] = -1,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    type: Annotated[str | None, Query(max_length=200)] = None,
    subject: Annotated[str | None, Query(max_length=MAX_ID)] = None,
) -> Response:
    service, pool = read.service, read.pool
    partition = service.partition_of(pool)
    items: list[dict[str, Any]] = []
    offset, scanned, next_after = after + 1, 0, after
    # Pools share partitions and filters skip records: scan on until the page is full.
    while len(items) < limit and scanned < EVENTS_SCAN_CAP:
        batch = await service.log.read(service.topics.events, partition, offset, max(limit, 500))
        if not batch:
            break
        for rec in batch:
            next_after = rec.offset
            scanned += 1
            if rec.key != pool:  # the record key is the pool: skip other pools without decoding
                continue
            env = from_record(rec)
            if (type is None or env.type == type) and (subject is None or env.subject == subject):
                items.append({"position": rec.offset, "partition": partition, **envelope_dict(env)})
                if len(items) >= limit:
                    break
        offset = batch[-1].offset + 1
    return json_response({"items": items, "next_after": next_after})


@router.get("/v1/audit/assignments", summary="Assignment audit trail (JSON, CSV or XML)",
            response_model=Items[Assignment],  # type: ignore[valid-type]
            responses={200: {"content": {CSV_TYPE: {"schema": {"type": "string"}},
                                         XML_TYPE: {"schema": {"type": "string"}}}}})
async def audit_assignments(
    read: ModelRead,
    task_id: Annotated[str | None, Query(max_length=MAX_ID)] = None,
    agent_id: Annotated[str | None, Query(max_length=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: After = None,
    format: Annotated[ExportFormat, Query(
        description="json (default); csv: one row per candidate; xml: <assignments>.")] = "json",
) -> Response:
    items = await queries.assignments(read.service.store, read.pool, task_id=task_id, agent_id=agent_id,
                                      limit=limit, after=after)
    if format == "csv":
        return _download(assignments_csv(items), CSV_TYPE, "assignments.csv")
    if format == "xml":
        return _download(assignments_xml(items, read.pool), XML_TYPE, "assignments.xml")
    return json_response({"items": items})


def _download(content: str | bytes, media_type: str, filename: str) -> Response:
    return Response(content, media_type=media_type,
                    headers={"content-disposition": f'inline; filename="{filename}"'})


# --- the audit as CSV and XML -------------------------------------------------------------------

# Per assignment, then per candidate; score components follow as component_<name> columns.
_ASSIGNMENT_COLUMNS = ("pool", "position", "task_id", "agent_id", "attempt", "strategy", "eligible",
                       "considered", "decision_us", "capability_gap", "preferred", "skipped", "assigned_at",
                       "event_id")
_CANDIDATE_COLUMNS = ("candidate_rank", "candidate_agent_id", "candidate_chosen", "candidate_score",
                      "candidate_load", "candidate_capacity", "candidate_capability_match")
# Characters XML 1.0 cannot carry even escaped (ids are client-chosen strings).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ";".join(str(v) for v in value)
    if isinstance(value, dict):
        return ";".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def assignments_csv(items: list[dict[str, Any]]) -> str:
    """One row per candidate (a row with empty candidate columns when there were none)."""
    components = sorted({name for item in items for cand in item.get("candidates") or ()
                         for name in (cand.get("components") or {})})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([*_ASSIGNMENT_COLUMNS, *_CANDIDATE_COLUMNS, *(f"component_{c}" for c in components)])
    for item in items:
        head = [_cell(item.get(col)) for col in _ASSIGNMENT_COLUMNS]
        candidates = item.get("candidates") or []
        if not candidates:
            writer.writerow(head + [""] * (len(_CANDIDATE_COLUMNS) + len(components)))
        for rank, cand in enumerate(candidates, 1):
            parts = cand.get("components") or {}
            chosen = str(cand.get("agent_id") == item.get("agent_id")).lower()
            writer.writerow([
                *head, rank, _cell(cand.get("agent_id")), chosen,
                _cell(cand.get("score")), _cell(cand.get("load")), _cell(cand.get("capacity")),
                _cell(cand.get("capability_match")), *(_cell(parts.get(c)) for c in components),
            ])
    return out.getvalue()


def _xml_text(value: Any) -> str:
    return _NOT_XML.sub("\ufffd", _cell(value))


def assignments_xml(items: list[dict[str, Any]], pool: str) -> bytes:
    """``<assignments><assignment ...><candidate ...><component .../></candidate></assignment>``."""
    root = ET.Element("assignments", pool=_xml_text(pool), count=str(len(items)))
    for item in items:
        attrs = {col: _xml_text(item.get(col)) for col in _ASSIGNMENT_COLUMNS
                 if col not in ("capability_gap", "preferred", "skipped") and item.get(col) is not None}
        node = ET.SubElement(root, "assignment", attrs)
        for name, key in (("capability_gap", "capability_gap"), ("preferred", "preferred")):
            values = item.get(key) or []
            if values:
                group = ET.SubElement(node, name)
                for cap in values:
                    ET.SubElement(group, "capability").text = _xml_text(cap)
        for reason, count in (item.get("skipped") or {}).items():
            ET.SubElement(node, "skipped", reason=_xml_text(reason), count=_xml_text(count))
        for rank, cand in enumerate(item.get("candidates") or [], 1):
            c_attrs = {"rank": str(rank),
                       "chosen": str(cand.get("agent_id") == item.get("agent_id")).lower(),
                       **{k: _xml_text(cand.get(k)) for k in ("agent_id", "score", "load", "capacity",
                                                              "capability_match") if cand.get(k) is not None}}
            c_node = ET.SubElement(node, "candidate", c_attrs)
            for name, value in (cand.get("components") or {}).items():
                ET.SubElement(c_node, "component", name=_xml_text(name), value=_xml_text(value))
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))
