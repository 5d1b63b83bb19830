"""The ``ai_agent`` executor: one language-model call per task run, through the provider's SDK.

Providers: ``openai`` uses ``openai.AsyncOpenAI`` (OpenAI's chat completions API, or any server
that speaks it at ``base_url``: vLLM, Ollama, llama.cpp, the stand-in); ``anthropic`` uses
``anthropic.AsyncAnthropic`` (the Messages API). The official SDKs rather than hand-made HTTP:
they follow each API as it changes, and their errors carry the status, the body's error type and
the response headers (``Retry-After``, ``retry-after-ms``) the classification below reads. Their
own retries are off (``max_retries=0``): agentbus's retry policy decides whether and when a call
is made again, and a deferral (rate limit, overload) spends no attempt.

A task's ``parameters``: ``prompt`` (text) or ``messages`` (``[{role, content}]``, content in the
provider's own format), and optionally ``system``, ``temperature``, ``max_tokens``, ``top_p``,
``tools`` (OpenAI function tools, converted for Anthropic) and ``tool_choice`` (``auto``,
``none``, ``required`` or ``{"type": "function", "function": {"name": ...}}``). The config's
``defaults`` fill what the task does not give. A config ``prompt`` is a template rendered from
the parameters (each by its name, all as ``parameters``) into the prompt of a task that gives no
``messages``. Only what is given is sent: no sampling setting of our own. For Anthropic, system
messages join the ``system`` prompt, ``max_tokens`` defaults to ``DEFAULT_MAX_TOKENS`` (the API
requires one), and ``temperature``/``top_p`` travel as body fields (the SDK no longer names them).

Streaming: when the run has a progress sink (``Call.progress``: the host runs beside the live
streams), the call is made as a stream (OpenAI: ``stream=True`` with ``stream_options.include_usage``;
Anthropic: ``messages.stream``) and each text delta goes to the sink as it comes (the first at once,
later ones gathered for at most ``DELTA_INTERVAL_S``). The SDK's own accumulator assembles the
answer, so the result, the usage and the cost are those of the plain call. Without a sink, one
plain call. An OpenAI-compatible server that ignores ``include_usage`` reports no usage either way.

Result: ``{content, finish_reason, tool_calls: [{id, name, arguments}], usage: {input_tokens,
output_tokens}, model}``; ``Outcome.usage`` carries the same counts (on a failure too, when the
provider answered), which the host records as the run's cost.

Errors: 429 and overload (503, Anthropic's 529 ``overloaded_error``) defer the task by the
response's ``retry-after-ms`` or ``Retry-After`` (``DEFAULT_RETRY_AFTER_S`` when absent); 408,
409 and other 5xx are retryable; any other 4xx is not (``provider_error:<status>``); a timeout
and an unreachable server are retryable (``timeout``, ``connection_error``); parameters that
cannot make a request are ``bad_request``.

Must never report or log a resolved API key (error texts pass through ``Redactor``) and never
render a template outside the sandbox of ``contracts.templates``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import anthropic
import httpx2
import openai
from anthropic.types import Message, MessageParam, ToolChoiceParam, ToolUnionParam
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam, ChatCompletionToolUnionParam

from contracts.executors import AiAgentConfig
from contracts.templates import TemplateProblem, render
from contracts.values import json_problem
from services.executors.base import BAD_REQUEST, CONNECTION, PROVIDER, TIMEOUT, Call, Outcome, Progress, Usage
from services.executors.secrets import Redactor, resolve

__all__ = ["DEFAULT_MAX_TOKENS", "DEFAULT_RETRY_AFTER_S", "DELTA_INTERVAL_S", "AiAgentExecutor",
           "retry_after_s"]

# A deferral the provider did not time: long enough not to hammer a rate limit, short enough that
# a one-off 429 costs little. (OpenAI and Anthropic both send Retry-After on a 429 as a rule.)
DEFAULT_RETRY_AFTER_S = 2.0
# Anthropic requires max_tokens; when neither the task nor the config's defaults give one.
DEFAULT_MAX_TOKENS = 1024
MAX_ERROR_CHARS = 2000
# Text deltas that come closer together than this go to the progress sink as one: a model writes
# 50-100 tokens a second, a screen needs no more than 20 updates a second to look live.
DELTA_INTERVAL_S = 0.05
# Statuses after which the same request may well succeed (request timeout, conflict).
_RETRYABLE_4XX = frozenset({408, 409})
_DEFERRING = frozenset({429, 503, 529})

# The Anthropic SDK lets a connection that breaks in the middle of a stream raise httpx2's own error.
_TIMEOUTS = (openai.APITimeoutError, anthropic.APITimeoutError, httpx2.TimeoutException)
_CONNECTIONS = (openai.APIConnectionError, anthropic.APIConnectionError, httpx2.TransportError)
_STATUSES = (openai.APIStatusError, anthropic.APIStatusError)
# Raised as these exact classes (no subclass) for an error event in the middle of a stream.
_STREAM_ERRORS = (openai.APIError, anthropic.APIError)
_SDK_ERRORS = (openai.OpenAIError, anthropic.AnthropicError, httpx2.TransportError)
_ROLES = frozenset({"system", "user", "assistant", "tool"})
# What a client sends when the config names no key (a local server that needs none): the SDKs
# would otherwise read OPENAI_API_KEY / ANTHROPIC_API_KEY and send this process's key to it.
_NO_KEY = "no-key"


class _BadRequest(ValueError):
    """Task parameters that cannot make a request."""


@dataclass(slots=True)
class _Request:
    messages: list[dict[str, Any]]
    system: str | None
    sampling: dict[str, float] = field(default_factory=dict)  # temperature, top_p
    max_tokens: int | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | dict[str, Any] | None = None


def _option(p: Mapping[str, Any], name: str, default: Any, integer: bool = False) -> Any:
    value = p.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        raise _BadRequest(f"parameters.{name} must be {'an integer' if integer else 'a number'}")
    return value


def _prompt(config: AiAgentConfig, p: Mapping[str, Any]) -> str:
    if config.prompt is None:
        prompt = p.get("prompt")
    else:
        try:
            prompt = render(config.prompt, {**p, "parameters": dict(p)})
        except TemplateProblem as exc:
            raise _BadRequest(f"the prompt template cannot be rendered from the task's parameters: "
                              f"{exc}") from None
        if not isinstance(prompt, str):
            prompt = json.dumps(prompt)
    if not isinstance(prompt, str) or not prompt.strip():
        raise _BadRequest("parameters.prompt (text) or parameters.messages is required")
    return prompt


def _prepare(config: AiAgentConfig, p: Mapping[str, Any]) -> _Request:
    """What to ask the provider; raises _BadRequest."""
    messages = p.get("messages")
    if messages is None:
        messages = [{"role": "user", "content": _prompt(config, p)}]
    elif not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in _ROLES for m in messages):
        raise _BadRequest("parameters.messages must be a non-empty list of {role, content}, role one of "
                          + ", ".join(sorted(_ROLES)))
    system = p.get("system", config.defaults.system)
    if system is not None and not isinstance(system, str):
        raise _BadRequest("parameters.system must be text")
    sampling = {name: value for name in ("temperature", "top_p")
                if (value := _option(p, name, getattr(config.defaults, name))) is not None}
    max_tokens = _option(p, "max_tokens", config.defaults.max_tokens, integer=True)
    if max_tokens is not None and max_tokens < 1:
        raise _BadRequest("parameters.max_tokens must be at least 1")
    tools = p.get("tools") or []
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in tools):
        raise _BadRequest('parameters.tools must be a list of {"type": "function", "function": {name, '
                          "description, parameters}}")
    choice = p.get("tool_choice")
    if not (choice is None or choice in ("auto", "none", "required") or (
            isinstance(choice, dict) and isinstance(choice.get("function"), dict)
            and isinstance(choice["function"].get("name"), str))):
        raise _BadRequest('parameters.tool_choice must be "auto", "none", "required" or '
                          '{"type": "function", "function": {"name": ...}}')
    return _Request([dict(m) for m in messages], system, sampling, max_tokens, tools, choice)


def retry_after_s(headers: Mapping[str, str], default: float = DEFAULT_RETRY_AFTER_S) -> float:
    """Seconds a response asks to wait: ``retry-after-ms``, else ``Retry-After`` (seconds or an
    HTTP date), else ``default``."""
    try:
        ms = float(headers.get("retry-after-ms", "x"))
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000
    except ValueError:
        pass
    value = headers.get("retry-after")
    if value is None:
        return default
    try:
        seconds = float(value)
        return seconds if math.isfinite(seconds) and seconds >= 0 else default
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return default


def _error_detail(body: object) -> tuple[str | None, str | None]:
    """(type, message) of an API error body: Anthropic's ``{"error": {type, message}}``, or the
    inner object the OpenAI SDK keeps."""
    error = body.get("error", body) if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    kind, message = error.get("type"), error.get("message")
    return (kind if isinstance(kind, str) else None), (message if isinstance(message, str) else None)


def _finish(result: dict[str, Any], usage: Usage | None) -> Outcome:
    problem = json_problem(result)
    if problem is not None:
        where, why = problem
        return Outcome.failure(f"the provider's answer is not storable JSON at {where or 'the top'}: {why}",
                               PROVIDER, retryable=False, usage=usage)
    return Outcome.success(result, usage)


def _tool_call(call_id: str, name: str, arguments: Any, usage: Usage | None) -> dict[str, Any] | Outcome:
    """``{id, name, arguments}``, ``arguments`` a JSON object (decoded from OpenAI's text); a
    failure when the model wrote arguments that are no JSON object (a retry samples again)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            arguments = None
    if not isinstance(arguments, dict):
        return Outcome.failure(f"the model called tool {name!r} with arguments that are not a JSON object",
                               f"{PROVIDER}:invalid_tool_arguments", retryable=True, usage=usage)
    return {"id": call_id, "name": name, "arguments": arguments}


class _Deltas:
    """Text deltas on their way to a progress sink: the first at once (the answer shows as soon as it
    starts), later ones gathered for at most ``DELTA_INTERVAL_S`` (a message per token would cost
    the streams more than it shows)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._pending: list[str] = []
        self._loop = asyncio.get_running_loop()
        self._sent = -math.inf
        self._timer: asyncio.TimerHandle | None = None

    def add(self, text: str | None) -> None:
        if not text:
            return
        self._pending.append(text)
        wait = self._sent + DELTA_INTERVAL_S - self._loop.time()
        if wait <= 0:
            self.flush()
        elif self._timer is None:  # a pause in the model's writing holds back nothing it wrote
            self._timer = self._loop.call_later(wait, self.flush)

    def flush(self) -> None:
        """Hand on what is gathered (at the end of the stream, whatever its pace)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self._sent = self._loop.time()
            self._progress(delta=text)


class AiAgentExecutor:
    """Calls a language model for each task run (see the module docstring)."""

    def __init__(self, config: AiAgentConfig) -> None:
        self.name = config.name
        self.config = config
        self._openai: openai.AsyncOpenAI | None = None
        self._anthropic: anthropic.AsyncAnthropic | None = None
        self._redactor = Redactor()
        host = urlsplit(config.base_url).hostname if config.base_url else "api.openai.com"
        # OpenAI's own API wants max_completion_tokens (reasoning models refuse max_tokens);
        # compatible servers know max_tokens, and not all of them the newer name.
        self._max_tokens_name = "max_completion_tokens" if host == "api.openai.com" else "max_tokens"

    async def start(self) -> None:
        """Resolve the API key (a missing one raises, named) and open the provider's client."""
        config = self.config
        key = resolve(config.api_key, f"{config.name}.api_key") if config.api_key else _NO_KEY
        self._redactor = Redactor([key] if config.api_key else [])
        if config.provider == "openai":
            self._openai = openai.AsyncOpenAI(api_key=key, base_url=config.base_url, max_retries=0,
                                              timeout=config.timeout)
        else:
            self._anthropic = anthropic.AsyncAnthropic(api_key=key, base_url=config.base_url, max_retries=0,
                                                       timeout=config.timeout)

    async def close(self) -> None:
        for client in (self._openai, self._anthropic):
            if client is not None:
                await client.close()
        self._openai = self._anthropic = None

    async def call(self, call: Call) -> Outcome:
        try:
            request = _prepare(self.config, call.parameters)
        except _BadRequest as exc:
            return Outcome.failure(str(exc), BAD_REQUEST, retryable=False)
        timeout = call.timeout_s or self.config.timeout
        headers = {"Idempotency-Key": call.idempotency_key}
        try:
            async with asyncio.timeout(timeout):
                if self._openai is not None:
                    return await self._call_openai(self._openai, request, timeout, headers, call.progress)
                if self._anthropic is not None:
                    return await self._call_anthropic(self._anthropic, request, timeout, headers,
                                                      call.progress)
        except TimeoutError:
            return Outcome.failure(f"the model did not answer within {timeout} s", TIMEOUT, retryable=True)
        except _SDK_ERRORS as exc:
            return self._classify(exc, timeout)
        raise RuntimeError(f"executor {self.name} is not started")

    def _classify(self, exc: Exception, timeout: float) -> Outcome:
        if isinstance(exc, _TIMEOUTS):
            return Outcome.failure(f"the model did not answer within {timeout} s", TIMEOUT, retryable=True)
        text = self._redactor.text(str(exc))[:MAX_ERROR_CHARS]
        if isinstance(exc, _CONNECTIONS):
            cause = f" ({type(exc.__cause__).__name__})" if exc.__cause__ else ""
            return Outcome.failure(f"cannot reach the model's server{cause}: {text}", CONNECTION,
                                   retryable=True)
        if isinstance(exc, _STATUSES):
            status, code = exc.status_code, f"{PROVIDER}:{exc.status_code}"
            kind, message = _error_detail(exc.body)
            if message is not None:
                text = self._redactor.text(f"{status} {kind or 'error'}: {message}")[:MAX_ERROR_CHARS]
            if status in _DEFERRING or kind == "overloaded_error":
                return Outcome.later(retry_after_s(exc.response.headers), text, code)
            if status >= 400:
                return Outcome.failure(text, code, retryable=status >= 500 or status in _RETRYABLE_4XX)
            # Below 400: an error event in the middle of a stream the server had accepted.
        if isinstance(exc, _STATUSES) or type(exc) in _STREAM_ERRORS:
            return Outcome.failure(f"the model's stream broke off: {text}", PROVIDER, retryable=True)
        # The SDK refused before or after the exchange (its own checks): repeating changes nothing.
        return Outcome.failure(f"{type(exc).__name__}: {text}", PROVIDER, retryable=False)

    async def _call_openai(self, client: openai.AsyncOpenAI, r: _Request, timeout: float,
                           headers: dict[str, str], progress: Progress | None) -> Outcome:
        messages = ([{"role": "system", "content": r.system}] if r.system else []) + r.messages
        options: dict[str, Any] = dict(r.sampling)
        if r.max_tokens is not None:
            options[self._max_tokens_name] = r.max_tokens
        if r.tools:
            options["tools"] = cast("list[ChatCompletionToolUnionParam]", r.tools)
        if r.tool_choice is not None:
            options["tool_choice"] = r.tool_choice
        typed = cast("list[ChatCompletionMessageParam]", messages)
        if progress is None:
            response: ChatCompletion | None = await client.chat.completions.create(
                model=self.config.model, messages=typed, timeout=timeout, extra_headers=headers, **options)
        else:
            response = await self._stream_openai(client, typed, timeout, headers, options, progress)
        if response is None:
            return Outcome.failure("the model's stream ended before its first chunk", PROVIDER,
                                   retryable=True)
        model = response.model or self.config.model
        usage = Usage(model, response.usage.prompt_tokens, response.usage.completion_tokens) \
            if response.usage is not None else None
        if not response.choices:
            return Outcome.failure("the model's answer has no choices", PROVIDER, retryable=True, usage=usage)
        choice = response.choices[0]
        calls: list[dict[str, Any]] = []
        for tc in choice.message.tool_calls or ():
            name, arguments = (tc.function.name, tc.function.arguments) if tc.type == "function" \
                else (tc.custom.name, {"input": tc.custom.input})
            made = _tool_call(tc.id, name, arguments, usage)
            if isinstance(made, Outcome):
                return made
            calls.append(made)
        return _finish({"content": choice.message.content, "finish_reason": choice.finish_reason,
                        "tool_calls": calls, "usage": _usage_json(usage), "model": model}, usage)

    async def _stream_openai(self, client: openai.AsyncOpenAI, messages: list[ChatCompletionMessageParam],
                             timeout: float, headers: dict[str, str], options: dict[str, Any],
                             progress: Progress) -> ChatCompletion | None:
        """The completion, streamed: text deltas to ``progress``, the chunks assembled by the SDK's
        own accumulator; None when the stream had no chunk."""
        state: ChatCompletionStreamState[object] = ChatCompletionStreamState()
        deltas = _Deltas(progress)
        chunks = 0
        try:
            stream = await client.chat.completions.create(
                model=self.config.model, messages=messages, timeout=timeout, extra_headers=headers,
                stream=True, stream_options={"include_usage": True}, **options)
            async with stream:
                async for chunk in stream:
                    chunks += 1
                    state.handle_chunk(chunk)
                    for choice in chunk.choices:
                        if choice.index == 0:
                            deltas.add(choice.delta.content)
        finally:
            deltas.flush()
        return state.current_completion_snapshot if chunks else None

    async def _call_anthropic(self, client: anthropic.AsyncAnthropic, r: _Request, timeout: float,
                              headers: dict[str, str], progress: Progress | None) -> Outcome:
        # The Messages API takes the system prompt apart, and has no "system" (or "tool") role.
        system = [r.system] if r.system else []
        system += [m["content"] for m in r.messages
                   if m["role"] == "system" and isinstance(m.get("content"), str)]
        messages = [m for m in r.messages if m["role"] != "system"]
        if any(m["role"] == "tool" for m in messages):
            return Outcome.failure('the Messages API has no "tool" role: send tool results as a user '
                                   'message of tool_result blocks', BAD_REQUEST, retryable=False)
        options: dict[str, Any] = {}
        if system:
            options["system"] = "\n\n".join(system)
        if r.sampling:  # not among the SDK's arguments: the body carries them for models that take them
            options["extra_body"] = r.sampling
        if r.tools:
            options["tools"] = cast("list[ToolUnionParam]", [_anthropic_tool(t["function"]) for t in r.tools])
        if r.tool_choice is not None:
            options["tool_choice"] = _anthropic_choice(r.tool_choice)
        typed = cast("list[MessageParam]", messages)
        max_tokens = r.max_tokens or DEFAULT_MAX_TOKENS
        if progress is None:
            message: Message | None = await client.messages.create(
                model=self.config.model, max_tokens=max_tokens, messages=typed, timeout=timeout,
                extra_headers=headers, **options)
        else:
            message = await self._stream_anthropic(client, typed, max_tokens, timeout, headers, options,
                                                   progress)
        if message is None:
            return Outcome.failure("the model's stream ended before its message began", PROVIDER,
                                   retryable=True)
        u = message.usage
        # All input the call read: fresh, written to the prompt cache and read from it.
        read = u.input_tokens + (u.cache_creation_input_tokens or 0) + (u.cache_read_input_tokens or 0)
        usage = Usage(message.model or self.config.model, read, u.output_tokens)
        texts = [b.text for b in message.content if b.type == "text"]
        calls: list[dict[str, Any]] = []
        for block in message.content:
            if block.type == "tool_use":
                made = _tool_call(block.id, block.name, block.input, usage)
                if isinstance(made, Outcome):
                    return made
                calls.append(made)
        return _finish({"content": "".join(texts) if texts else None, "finish_reason": message.stop_reason,
                        "tool_calls": calls, "usage": _usage_json(usage), "model": usage.model}, usage)


    async def _stream_anthropic(self, client: anthropic.AsyncAnthropic, messages: list[MessageParam],
                                max_tokens: int, timeout: float, headers: dict[str, str],
                                options: dict[str, Any], progress: Progress) -> Message | None:
        """The message, streamed: text deltas to ``progress``, the events assembled by the SDK's
        own accumulator; None when the stream had no message_start."""
        deltas = _Deltas(progress)
        began = False
        try:
            async with client.messages.stream(model=self.config.model, max_tokens=max_tokens,
                                              messages=messages, timeout=timeout, extra_headers=headers,
                                              **options) as stream:
                async for event in stream:
                    if event.type == "text":
                        deltas.add(event.text)
                    elif event.type == "message_start":
                        began = True
                return await stream.get_final_message() if began else None
        finally:
            deltas.flush()


def _usage_json(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}


def _anthropic_tool(function: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI function tool as an Anthropic tool."""
    tool = {"name": function["name"],
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        tool["description"] = function["description"]
    return tool


def _anthropic_choice(choice: str | dict[str, Any]) -> ToolChoiceParam:
    """An OpenAI tool_choice as Anthropic's."""
    if isinstance(choice, dict):
        return {"type": "tool", "name": choice["function"]["name"]}
    if choice == "required":
        return {"type": "any"}
    return {"type": "none"} if choice == "none" else {"type": "auto"}
