"""An OpenAI-compatible chat completions server that answers from its input alone.

``POST /v1/chat/completions`` echoes the last user message (``"echo: <text>"``) with token usage
counted as one token per four characters, calls a tool when tools are offered and the prompt says
``[tool]`` / ``[tool:NAME]`` (or ``tool_choice`` requires one), streams as server-sent events
with ``stream: true`` (``chat.completion.chunk`` lines, the text word by word, ending
``data: [DONE]``; a last chunk without choices carries the usage, which OpenAI sends only when
``stream_options.include_usage`` asks for it: ``GET /_requests`` shows whether a client asked),
and fails on demand: ``[429]``, ``[429:0.2]``, ``[500]``, ``[503]``, ``[400]``, ``[slow:S]`` (see
``_faults``). ``GET /v1/models`` lists the model it claims to be; ``GET /_counts`` and
``GET /_requests`` say what it was asked.

Real OpenAI client code talks to it over TCP (``serving(create_app())``): tests, the benchmark
and the examples use it instead of a provider. Never for production traffic, and never a model.
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

MODEL = "standin-chat"
ARGUMENT_PIECE = 16  # characters of a tool call's arguments per streamed chunk
PATH = "/v1/chat/completions"

_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_api_key", 403: "permission_denied",
                404: "not_found", 422: "invalid_request_error", 429: "rate_limit_exceeded",
                503: "service_unavailable"}


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """The part of a chat completions request the stand-in reads; the rest is accepted as is."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[_Message] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": kind}},
                        status_code=status, headers=headers)


def _tool_to_call(body: ChatRequest, asked: str | None) -> dict[str, Any] | None:
    """The function tool to call, or None for a text answer; raises ValueError for a named tool
    that was not offered."""
    if not body.tools or body.tool_choice == "none":
        return None
    functions: list[dict[str, Any]] = [t["function"] for t in body.tools
                                       if t.get("type") == "function" and "function" in t]
    choice = body.tool_choice
    if isinstance(choice, dict):
        asked = str(choice.get("function", {}).get("name", ""))
    elif choice == "required" and asked is None:
        asked = ""
    if asked is None or not functions:
        return None
    for function in functions:
        if asked in ("", function.get("name")):
            return function
    raise ValueError(f"tool {asked!r} is not among the tools offered")


def _completion(body: ChatRequest) -> dict[str, Any]:
    """The completion for ``body``; raises ValueError for a named tool that was not offered."""
    last_user = next((m for m in reversed(body.messages) if m.role == "user"), body.messages[-1])
    asked = plain(text_of(last_user.content))
    all_text = "\n".join(text_of(m.content) for m in body.messages)
    function = _tool_to_call(body, directives(all_text).tool)
    limit = body.max_completion_tokens or body.max_tokens
    message: dict[str, Any] = {"role": "assistant", "content": None}
    if function is not None:
        arguments = json.dumps(arguments_for(function.get("parameters"), asked))
        call_id = "call_" + hashlib.sha256(f"{function['name']}\n{asked}".encode()).hexdigest()[:24]
        message["tool_calls"] = [{"id": call_id, "type": "function",
                                  "function": {"name": function["name"], "arguments": arguments}}]
        finish, produced = "tool_calls", tokens(arguments)
    else:
        content = f"echo: {asked}"
        finish = "stop"
        if limit is not None and tokens(content) > limit:
            content, finish = content[: limit * 4], "length"
        message["content"], produced = content, tokens(content)
    digest = hashlib.sha256(all_text.encode()).hexdigest()[:24]
    prompt_tokens = tokens(all_text)
    return {
        "id": f"chatcmpl-{digest}", "object": "chat.completion", "created": 0, "model": body.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": produced,
                  "total_tokens": prompt_tokens + produced},
    }


def _chunks(completion: dict[str, Any]) -> AsyncIterator[bytes]:
    """``completion`` as OpenAI streams it: chat.completion.chunk events with the role, then the
    content word by word (or each tool call: its id and name, then its arguments in pieces), the
    finish reason, a chunk with the usage and no choices (``"usage": null`` on the others), then
    ``[DONE]``."""
    base = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint")}
    choice = completion["choices"][0]
    message = choice["message"]

    def event(delta: dict[str, Any], finish: str | None = None, usage: Any = None,
              choices: bool = True) -> bytes:
        data = {**base, "object": "chat.completion.chunk", "usage": usage,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
                if choices else []}
        return f"data: {json.dumps(data)}\n\n".encode()

    async def generate() -> AsyncIterator[bytes]:
        calls = message.get("tool_calls") or []
        if calls:
            for i, call in enumerate(calls):
                head = {"index": i, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}
                start = {"role": "assistant", "content": None, "refusal": None} if i == 0 else {}
                yield event({**start, "tool_calls": [head]})
                arguments = call["function"]["arguments"]
                for at in range(0, len(arguments), ARGUMENT_PIECE):
                    piece = arguments[at:at + ARGUMENT_PIECE]
                    yield event({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
        else:
            yield event({"role": "assistant", "content": "", "refusal": None})
            words = (message["content"] or "").split(" ")
            for i, word in enumerate(words):
                yield event({"content": word if i == 0 else " " + word})
        yield event({}, choice["finish_reason"])
        yield event({}, usage=completion["usage"], choices=False)
        yield b"data: [DONE]\n\n"

    return generate()


def create_app(*, api_key: str | None = None) -> FastAPI:
    """The stand-in. With ``api_key``, a request without ``Authorization: Bearer <api_key>`` is
    answered 401, as the provider would."""
    app = FastAPI(title="OpenAI-compatible stand-in", docs_url=None, redoc_url=None)
    journal = Journal()
    install_journal(app, journal)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        journal.note(request.url.path, 400)
        return _error(400, f"invalid request: {exc.errors()[:3]}")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        journal.note("/v1/models", 200)
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                            "owned_by": "agentbus"}]}

    @app.post(PATH)
    async def chat_completions(body: ChatRequest, request: Request) -> Response:
        dumped = body.model_dump(mode="json", exclude_unset=True)
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            journal.note(PATH, 401, dumped)
            return _error(401, "Incorrect API key provided.")
        wanted = directives("\n".join(text_of(m.content) for m in body.messages))
        if wanted.slow:
            await pause(wanted.slow, request.is_disconnected)
        if wanted.status is not None:
            journal.note(PATH, wanted.status, dumped)
            return _error(wanted.status, f"stand-in failure {wanted.status} on demand",
                          wanted.retry_headers())
        try:
            completion = _completion(body)
        except ValueError as exc:
            journal.note(PATH, 400, dumped)
            return _error(400, str(exc))
        journal.note(PATH, 200, dumped)
        if body.stream:
            return StreamingResponse(_chunks(completion), media_type="text/event-stream")
        return JSONResponse(completion)

    return app
