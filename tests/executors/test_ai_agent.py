"""The ai_agent executor through the official OpenAI and Anthropic SDKs, against the stand-in
servers on real local ports: what it sends, what it returns, how it classifies failures."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import openai
import pytest

from contracts.executors import AiAgentConfig
from services.coordination.ratelimit import estimate_tokens
from services.executors.ai_agent import DEFAULT_MAX_TOKENS, AiAgentExecutor, retry_after_s
from services.executors.base import BAD_REQUEST, CONNECTION, PROVIDER, TIMEOUT, Usage
from services.executors.secrets import SecretError
from services.executors.standins import openai_compat
from services.executors.standins.serving import free_port, serving
from tests.executors.conftest import get_json, make_call

TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "Find a word.",
    "parameters": {"type": "object",
                   "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}}},
}}]


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def config(provider: str, base_url: str, **extra: Any) -> AiAgentConfig:
    return AiAgentConfig.model_validate({"name": f"{provider}-agent", "type": "ai_agent",
                                         "provider": provider, "base_url": base_url,
                                         "model": "standin-model", **extra})


async def executors(provider: str, base_url: str) -> AsyncIterator[Callable[..., Any]]:
    """A maker of started executors for ``provider`` at ``base_url``, closing them at the end."""
    made: list[AiAgentExecutor] = []

    async def make(**extra: Any) -> AiAgentExecutor:
        made.append(executor := AiAgentExecutor(config(provider, base_url, **extra)))
        await executor.start()
        return executor

    yield make
    for executor in made:
        await executor.close()


@pytest.fixture
async def openai_agent(openai_url: str) -> AsyncIterator[Callable[..., Any]]:
    async for make in executors("openai", f"{openai_url}/v1"):
        yield make


@pytest.fixture
async def anthropic_agent(anthropic_url: str) -> AsyncIterator[Callable[..., Any]]:
    async for make in executors("anthropic", anthropic_url):
        yield make


async def last_request(url: str) -> dict[str, Any]:
    requests = await get_json(f"{url}/_requests")
    return requests[-1]  # type: ignore[no-any-return]


async def answered(url: str) -> int:
    """Requests the stand-in at ``url`` has answered so far."""
    return (await get_json(f"{url}/_counts"))["total"]  # type: ignore[no-any-return]


# -- OpenAI ------------------------------------------------------------------------------------


async def test_openai_answers_with_content_and_usage(openai_agent: Any, openai_url: str) -> None:
    executor = await openai_agent()
    outcome = await executor.call(make_call({"prompt": "hello there"}))
    assert outcome.ok, outcome
    assert outcome.result == {"content": "echo: hello there", "finish_reason": "stop", "tool_calls": [],
                              "usage": {"input_tokens": tokens("hello there"),
                                        "output_tokens": tokens("echo: hello there")},
                              "model": "standin-model"}
    assert outcome.usage == Usage("standin-model", tokens("hello there"), tokens("echo: hello there"))
    sent = await last_request(openai_url)
    assert sent["messages"] == [{"role": "user", "content": "hello there"}]
    assert sent["model"] == "standin-model"


async def test_openai_messages_are_sent_as_given(openai_agent: Any, openai_url: str) -> None:
    executor = await openai_agent()
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "second"},
                {"role": "user", "content": "third"}]
    outcome = await executor.call(make_call({"messages": messages}))
    assert outcome.ok and outcome.result["content"] == "echo: third"
    assert (await last_request(openai_url))["messages"] == messages


async def test_openai_defaults_fill_what_the_task_does_not_give(openai_agent: Any, openai_url: str) -> None:
    executor = await openai_agent(defaults={"temperature": 0.3, "max_tokens": 50, "top_p": 0.9,
                                            "system": "Be brief."})
    assert (await executor.call(make_call({"prompt": "hi"}))).ok
    sent = await last_request(openai_url)
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    # A compatible server (base_url set) is sent max_tokens, the name every such server knows.
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.3, 0.9, 50)
    assert (await executor.call(make_call({"prompt": "hi", "temperature": 1.5, "system": "Be long.",
                                           "max_tokens": 7}))).ok
    sent = await last_request(openai_url)
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (1.5, 0.9, 7)
    assert sent["messages"][0] == {"role": "system", "content": "Be long."}


async def test_openai_without_defaults_sends_no_sampling_settings(openai_agent: Any, openai_url: str) -> None:
    executor = await openai_agent()
    assert (await executor.call(make_call({"prompt": "hi"}))).ok
    sent = await last_request(openai_url)
    assert not {"temperature", "top_p", "max_tokens", "max_completion_tokens", "tools"} & set(sent)


async def test_max_tokens_cuts_the_answer(openai_agent: Any) -> None:
    executor = await openai_agent()
    outcome = await executor.call(make_call({"prompt": "a rather long prompt to echo back", "max_tokens": 2}))
    assert outcome.ok
    assert outcome.result["finish_reason"] == "length" and outcome.result["content"] == "echo: a "


async def test_the_prompt_template_is_rendered_from_the_parameters(openai_agent: Any,
                                                                    openai_url: str) -> None:
    executor = await openai_agent(prompt="Summarize {{ text }} in {{ words }} words ({{ parameters.lang }}).")
    outcome = await executor.call(make_call({"text": "the log", "words": 5, "lang": "en"}))
    assert outcome.ok, outcome
    expected = "Summarize the log in 5 words (en)."
    assert (await last_request(openai_url))["messages"] == [{"role": "user", "content": expected}]
    assert outcome.result["content"] == f"echo: {expected}"


async def test_a_template_reading_a_missing_parameter_is_a_bad_request(openai_agent: Any,
                                                                        openai_url: str) -> None:
    executor = await openai_agent(prompt="Summarize {{ text }}.")
    before = await answered(openai_url)
    outcome = await executor.call(make_call({"other": 1}))
    assert (outcome.ok, outcome.error_code, outcome.retryable) == (False, BAD_REQUEST, False)
    assert "text" in (outcome.error or "")
    assert await answered(openai_url) == before


@pytest.mark.parametrize("parameters", [
    {}, {"prompt": "  "}, {"prompt": 3}, {"messages": []}, {"messages": [{"content": "no role"}]},
    {"prompt": "x", "temperature": "hot"}, {"prompt": "x", "max_tokens": 0},
    {"prompt": "x", "tools": [{"name": "f"}]}, {"prompt": "x", "tool_choice": "sometimes"},
])
async def test_parameters_that_make_no_request_are_bad_requests(openai_agent: Any, openai_url: str,
                                                                parameters: dict[str, Any]) -> None:
    executor = await openai_agent()
    before = await answered(openai_url)
    outcome = await executor.call(make_call(parameters))
    assert (outcome.ok, outcome.error_code, outcome.retryable) == (False, BAD_REQUEST, False)
    assert await answered(openai_url) == before


async def test_openai_tool_calls_come_back_with_decoded_arguments(openai_agent: Any, openai_url: str) -> None:
    executor = await openai_agent()
    outcome = await executor.call(make_call({"prompt": "find cats [tool]", "tools": TOOLS}))
    assert outcome.ok, outcome
    [call] = outcome.result["tool_calls"]
    assert call["name"] == "lookup" and call["id"].startswith("call_")
    assert call["arguments"] == {"query": "find cats", "limit": 2}
    assert outcome.result["finish_reason"] == "tool_calls" and outcome.result["content"] is None
    assert (await last_request(openai_url))["tools"] == TOOLS


async def test_openai_tool_choice_is_passed_on(openai_agent: Any, openai_url: str) -> None:
    executor = await openai_agent()
    choice = {"type": "function", "function": {"name": "lookup"}}
    outcome = await executor.call(make_call({"prompt": "no directive here", "tools": TOOLS,
                                             "tool_choice": choice}))
    assert outcome.ok and outcome.result["tool_calls"][0]["name"] == "lookup"
    assert (await last_request(openai_url))["tool_choice"] == choice


@pytest.mark.parametrize(("directive", "seconds"), [("[429]", 1.0), ("[429:0.2]", 0.2), ("[503]", 1.0)])
async def test_rate_limits_and_overload_defer_by_the_servers_retry_after(
        openai_agent: Any, directive: str, seconds: float) -> None:
    executor = await openai_agent()
    outcome = await executor.call(make_call({"prompt": f"hi {directive}"}))
    assert not outcome.ok and outcome.retryable
    assert outcome.retry_after_s == pytest.approx(seconds)
    assert outcome.error_code == f"{PROVIDER}:{directive[1:4]}"


async def test_a_server_error_is_retryable(openai_agent: Any) -> None:
    executor = await openai_agent()
    outcome = await executor.call(make_call({"prompt": "[500]"}))
    assert (outcome.ok, outcome.error_code, outcome.retryable, outcome.retry_after_s) == (
        False, f"{PROVIDER}:500", True, None)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_a_refused_request_is_not_retried(openai_agent: Any, status: int) -> None:
    executor = await openai_agent()
    outcome = await executor.call(make_call({"prompt": f"[{status}]"}))
    assert (outcome.ok, outcome.error_code, outcome.retryable, outcome.retry_after_s) == (
        False, f"{PROVIDER}:{status}", False, None)
    assert outcome.error and "on demand" in outcome.error


async def test_a_slow_model_times_out_at_the_tasks_limit(openai_agent: Any) -> None:
    executor = await openai_agent()
    began = time.monotonic()
    outcome = await executor.call(make_call({"prompt": "[slow:3]"}, timeout_s=0.3))
    assert (outcome.ok, outcome.error_code, outcome.retryable) == (False, TIMEOUT, True)
    assert time.monotonic() - began < 2.0


async def test_the_configs_timeout_applies_when_the_task_has_none(openai_agent: Any) -> None:
    executor = await openai_agent(timeout=0.3)
    outcome = await executor.call(make_call({"prompt": "[slow:3]"}))
    assert (outcome.error_code, outcome.retryable) == (TIMEOUT, True)


async def test_an_unreachable_server_is_a_retryable_connection_error() -> None:
    executor = AiAgentExecutor(config("openai", f"http://127.0.0.1:{free_port()}/v1"))
    await executor.start()
    try:
        outcome = await executor.call(make_call({"prompt": "hi"}))
    finally:
        await executor.close()
    assert (outcome.ok, outcome.error_code, outcome.retryable) == (False, CONNECTION, True)


async def test_usage_is_reported_on_a_failure_after_the_provider_answered(openai_agent: Any) -> None:
    executor = await openai_agent()
    outcome = await executor.call(make_call({"prompt": "nul \x00 inside"}))  # echoed back: not storable
    assert (outcome.ok, outcome.error_code, outcome.retryable) == (False, PROVIDER, False)
    assert outcome.usage == Usage("standin-model", tokens("nul \x00 inside"), tokens("echo: nul \x00 inside"))


async def test_the_api_key_reference_is_resolved_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(openai_compat.create_app(api_key="sk-standin-0123456789")) as url:
        executor = AiAgentExecutor(config("openai", f"{url}/v1", api_key="${env:STANDIN_KEY}"))
        with pytest.raises(SecretError, match="STANDIN_KEY"):
            await executor.start()
        monkeypatch.setenv("STANDIN_KEY", "sk-standin-0123456789")
        await executor.start()
        try:
            assert (await executor.call(make_call({"prompt": "hi"}))).ok
        finally:
            await executor.close()


async def test_without_an_api_key_the_processes_own_key_is_never_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-this-process-only")
    with serving(openai_compat.create_app(api_key="sk-this-process-only")) as url:
        executor = AiAgentExecutor(config("openai", f"{url}/v1"))
        await executor.start()
        try:
            outcome = await executor.call(make_call({"prompt": "hi"}))
        finally:
            await executor.close()
    assert (outcome.error_code, outcome.retryable) == (f"{PROVIDER}:401", False)


async def test_the_openai_standin_streams_chunks_and_a_final_usage_chunk(openai_url: str) -> None:
    client = openai.AsyncOpenAI(api_key="k", base_url=f"{openai_url}/v1", max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "a b c"}], stream=True)
        chunks = [chunk async for chunk in stream]
    finally:
        await client.close()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: a b c"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == tokens("echo: a b c")
    assert (await get_json(f"{openai_url}/v1/models"))["data"][0]["id"] == openai_compat.MODEL


# -- Anthropic ---------------------------------------------------------------------------------


async def test_anthropic_answers_with_content_and_usage(anthropic_agent: Any, anthropic_url: str) -> None:
    executor = await anthropic_agent(defaults={"system": "Be brief."})
    outcome = await executor.call(make_call({"prompt": "hello"}))
    assert outcome.ok, outcome
    read = tokens("Be brief.\nhello")
    assert outcome.result == {"content": "echo: hello", "finish_reason": "end_turn", "tool_calls": [],
                              "usage": {"input_tokens": read, "output_tokens": tokens("echo: hello")},
                              "model": "standin-model"}
    assert outcome.usage == Usage("standin-model", read, tokens("echo: hello"))
    sent = await last_request(anthropic_url)
    assert sent["system"] == "Be brief." and sent["messages"] == [{"role": "user", "content": "hello"}]
    assert sent["max_tokens"] == DEFAULT_MAX_TOKENS and "temperature" not in sent


async def test_anthropic_takes_system_messages_apart_and_defaults(anthropic_agent: Any,
                                                                   anthropic_url: str) -> None:
    executor = await anthropic_agent(defaults={"temperature": 0.2, "max_tokens": 64})
    messages = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "one"},
                {"role": "assistant", "content": "two"}, {"role": "user", "content": "three"}]
    outcome = await executor.call(make_call({"messages": messages, "top_p": 0.5}))
    assert outcome.ok and outcome.result["content"] == "echo: three"
    sent = await last_request(anthropic_url)
    assert sent["system"] == "Answer in French." and sent["messages"] == messages[1:]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (64, 0.2, 0.5)


async def test_anthropic_gets_tools_in_its_own_format(anthropic_agent: Any, anthropic_url: str) -> None:
    executor = await anthropic_agent()
    outcome = await executor.call(make_call({"prompt": "find dogs", "tools": TOOLS,
                                             "tool_choice": "required"}))
    assert outcome.ok, outcome
    [call] = outcome.result["tool_calls"]
    assert call["name"] == "lookup" and call["id"].startswith("toolu_")
    assert call["arguments"] == {"query": "find dogs", "limit": 2}
    assert outcome.result["finish_reason"] == "tool_use"
    sent = await last_request(anthropic_url)
    assert sent["tools"] == [{"name": "lookup", "description": "Find a word.",
                              "input_schema": TOOLS[0]["function"]["parameters"]}]  # type: ignore[index]
    assert sent["tool_choice"] == {"type": "any"}


@pytest.mark.parametrize(("directive", "seconds"), [("[529]", 1.0), ("[529:0.25]", 0.25), ("[429]", 1.0)])
async def test_anthropic_overload_and_rate_limits_defer(anthropic_agent: Any, directive: str,
                                                         seconds: float) -> None:
    executor = await anthropic_agent()
    outcome = await executor.call(make_call({"prompt": directive}))
    assert not outcome.ok and outcome.retry_after_s == pytest.approx(seconds)
    assert outcome.error_code == f"{PROVIDER}:{directive[1:4]}"
    if directive.startswith("[529"):
        assert outcome.error and "overloaded_error" in outcome.error


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (400, False), (401, False)])
async def test_anthropic_errors_are_classified(anthropic_agent: Any, status: int, retryable: bool) -> None:
    executor = await anthropic_agent()
    outcome = await executor.call(make_call({"prompt": f"[{status}]"}))
    assert (outcome.ok, outcome.error_code, outcome.retryable, outcome.retry_after_s) == (
        False, f"{PROVIDER}:{status}", retryable, None)


async def test_anthropic_times_out(anthropic_agent: Any) -> None:
    executor = await anthropic_agent()
    outcome = await executor.call(make_call({"prompt": "[slow:3]"}, timeout_s=0.3))
    assert (outcome.error_code, outcome.retryable) == (TIMEOUT, True)


async def test_anthropic_has_no_tool_role(anthropic_agent: Any, anthropic_url: str) -> None:
    executor = await anthropic_agent()
    before = await answered(anthropic_url)
    tool_result = {"role": "tool", "content": "x", "tool_call_id": "1"}
    outcome = await executor.call(make_call({"messages": [tool_result]}))
    assert (outcome.error_code, outcome.retryable) == (BAD_REQUEST, False)
    assert await answered(anthropic_url) == before


async def test_the_anthropic_standin_streams_the_messages_events(anthropic_url: str) -> None:
    client = anthropic.AsyncAnthropic(api_key="k", base_url=anthropic_url, max_retries=0)
    try:
        stream = await client.messages.create(model="m", max_tokens=100, stream=True,
                                              messages=[{"role": "user", "content": "x y"}])
        events = [event async for event in stream]
    finally:
        await client.close()
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    text = "".join(e.delta.text for e in events
                   if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert text == "echo: x y"


# -- what the coordinator reserves -------------------------------------------------------------


def test_estimate_tokens_counts_prompt_characters_and_the_answers_room() -> None:
    assert estimate_tokens({"prompt": "x" * 10}, 100) == 3 + 100
    assert estimate_tokens({"prompt": "x" * 8, "max_tokens": 20}, 100) == 2 + 20
    messages = [{"role": "user", "content": "abcd"},
                {"role": "user", "content": [{"type": "text", "text": "efgh"}, {"type": "image_url"}]}]
    assert estimate_tokens({"messages": messages, "system": "ij"}, 0) == math.ceil(10 / 4)
    assert estimate_tokens({}, 50) == 50


@pytest.mark.parametrize("parameters", [{"messages": "nope"}, {"messages": [1, None]}, {"prompt": 5},
                                        {"max_tokens": True, "prompt": "abcd"}, {"max_tokens": -3}])
def test_estimate_tokens_never_raises_on_malformed_parameters(parameters: dict[str, Any]) -> None:
    assert estimate_tokens(parameters, 10) >= 10


def test_retry_after_prefers_milliseconds_then_seconds_then_a_date() -> None:
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after_s({}, default=1.5) == 1.5
    assert retry_after_s({"retry-after": "soon"}, default=1.5) == 1.5
