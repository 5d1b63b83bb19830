"""An Anthropic Messages API server that answers from its input alone.

``POST /v1/messages`` echoes the last user message (``"echo: <text>"``) as a text block, with
``usage.input_tokens``/``output_tokens`` counted as one token per four characters (the system
prompt included); answers with a ``tool_use`` block when tools are offered and the prompt says
``[tool]`` / ``[tool:NAME]`` (or ``tool_choice`` is ``any``/``tool``); streams the Messages
events with ``stream: true``; and fails on demand: ``[529]`` (``overloaded_error`` with
``retry-after``), ``[429]``, ``[500]``, ``[400]``, ``[slow:S]`` (see ``_faults``).
``GET /_counts`` and ``GET /_requests`` say what it was asked.

Real Anthropic client code talks to it over TCP (``serving(create_app())``): tests, the
benchmark and the examples use it instead of the provider. Never for production traffic, and
never a model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from services.executors.standins._faults import (
    Journal,
    arguments_for,
    directives,
    install_journal,
    pause,
    plain,
    text_of,
    tokens,
)

PATH = "/v1/messages"
INPUT_PIECE = 16  # characters of a tool call's input JSON per streamed delta

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                529: "overloaded_error"}


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]]


class MessagesRequest(BaseModel):
    """The part of a Messages request the stand-in reads; the rest is accepted as is."""

    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int = Field(ge=0)
    messages: list[_Message] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = _ERROR_TYPES.get(status, "api_error")
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message},
                         "request_id": None}, status_code=status, headers=headers)


def _tool_to_call(body: MessagesRequest, asked: str | None) -> dict[str, Any] | None:
    """The tool to call, or None for a text answer; raises ValueError for a named tool that was
    not offered."""
    choice = (body.tool_choice or {}).get("type", "auto")
    if not body.tools or choice == "none":
        return None
    if choice == "tool":
        asked = str((body.tool_choice or {}).get("name", ""))
    elif choice == "any" and asked is None:
        asked = ""
    if asked is None:
        return None
    for tool in body.tools:
        if asked in ("", tool.get("name")):
            return tool
    raise ValueError(f"tool {asked!r} is not among the tools offered")


def _message(body: MessagesRequest) -> dict[str, Any]:
    """The answer to ``body``; raises ValueError for a named tool that was not offered."""
    last_user = next((m for m in reversed(body.messages) if m.role == "user"), body.messages[-1])
    asked = plain(text_of(last_user.content))
    all_text = "\n".join([text_of(body.system), *(text_of(m.content) for m in body.messages)])
    tool = _tool_to_call(body, directives(all_text).tool)
    if tool is not None:
        arguments = arguments_for(tool.get("input_schema"), asked)
        tool_id = "toolu_" + hashlib.sha256(f"{tool['name']}\n{asked}".encode()).hexdigest()[:24]
        content: list[dict[str, Any]] = [{"type": "tool_use", "id": tool_id, "name": tool["name"],
                                          "input": arguments}]
        stop, produced = "tool_use", tokens(json.dumps(arguments))
    else:
        text, stop = f"echo: {asked}", "end_turn"
        if tokens(text) > body.max_tokens:
            text, stop = text[: body.max_tokens * 4], "max_tokens"
        content, produced = [{"type": "text", "text": text}], tokens(text)
    return {
        "id": "msg_" + hashlib.sha256(all_text.encode()).hexdigest()[:24], "type": "message",
        "role": "assistant", "model": body.model, "content": content, "stop_reason": stop,
        "stop_sequence": None, "usage": {"input_tokens": tokens(all_text), "output_tokens": produced},
    }


def _events(message: dict[str, Any]) -> AsyncIterator[bytes]:
    """``message`` as the Messages API streams it: message_start, a ping, per content block a
    content_block_start, its deltas (text word by word, a tool's input JSON in pieces) and a
    content_block_stop, then message_delta (stop reason, output tokens so far) and message_stop."""

    def event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()

    async def generate() -> AsyncIterator[bytes]:
        usage = message["usage"]
        yield event("message_start", {"message": {**message, "content": [], "stop_reason": None,
                                                  "usage": {**usage, "output_tokens": 0}}})
        yield event("ping", {})
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                yield event("content_block_start", {"index": index,
                                                    "content_block": {"type": "text", "text": ""}})
                for i, word in enumerate(block["text"].split(" ")):
                    yield event("content_block_delta", {"index": index, "delta": {
                        "type": "text_delta", "text": word if i == 0 else " " + word}})
            else:
                yield event("content_block_start", {"index": index, "content_block": {**block, "input": {}}})
                arguments = json.dumps(block["input"])
                for at in range(0, len(arguments), INPUT_PIECE):
                    yield event("content_block_delta", {"index": index, "delta": {
                        "type": "input_json_delta", "partial_json": arguments[at:at + INPUT_PIECE]}})
            yield event("content_block_stop", {"index": index})
        yield event("message_delta", {"delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                      "usage": {"output_tokens": usage["output_tokens"]}})
        yield event("message_stop", {})

    return generate()


def create_app(*, api_key: str | None = None) -> FastAPI:
    """The stand-in. With ``api_key``, a request without ``x-api-key: <api_key>`` is answered
    401, as the provider would."""
    app = FastAPI(title="Anthropic Messages stand-in", docs_url=None, redoc_url=None)
    journal = Journal()
    install_journal(app, journal)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        journal.note(request.url.path, 400)
        return _error(400, f"invalid request: {exc.errors()[:3]}")

    @app.post(PATH)
    async def messages(body: MessagesRequest, request: Request) -> Response:
        dumped = body.model_dump(mode="json", exclude_unset=True)
        if api_key is not None and request.headers.get("x-api-key") != api_key:
            journal.note(PATH, 401, dumped)
            return _error(401, "invalid x-api-key")
        text = "\n".join([text_of(body.system), *(text_of(m.content) for m in body.messages)])
        wanted = directives(text)
        if wanted.slow:
            await pause(wanted.slow, request.is_disconnected)
        if wanted.status is not None:
            journal.note(PATH, wanted.status, dumped)
            reason = "Overloaded" if wanted.status == 529 else f"stand-in failure {wanted.status} on demand"
            return _error(wanted.status, reason, wanted.retry_headers())
        try:
            message = _message(body)
        except ValueError as exc:
            journal.note(PATH, 400, dumped)
            return _error(400, str(exc))
        journal.note(PATH, 200, dumped)
        if body.stream:
            return StreamingResponse(_events(message), media_type="text/event-stream")
        return JSONResponse(message)

    return app
