"""Progress of hosted executors: inside ``agentbus serve --executors FILE`` (here: the app with its own
embedded service, served by a real uvicorn) a run tells the ``task:<id>`` and ``workflow:<run>``
subscribers that it started, the model's text as it is written (deltas from a streamed call to
the OpenAI and Anthropic stand-ins), and how it ended; the log holds only the result, which is
the one a plain call gives. A host with nowhere to publish (``agentbus executor run``) makes plain
calls."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from websockets.asyncio.client import ClientConnection

from contracts import commands as c
from contracts import event_types as e
from contracts.executors import AiAgentConfig, ExecutorsFile
from events.codec import from_record
from services.executors.ai_agent import AiAgentExecutor
from services.executors.base import PROVIDER, Call, Outcome
from services.executors.host import ExecutorHost
from services.executors.standins.serving import free_port, serving
from services.http.app import create_app
from services.runtime.ingest import command_envelope
from services.runtime.service import Service
from services.runtime.settings import Settings
from tests.api.runtimes import embedded
from tests.executors.conftest import get_json

WAIT_S = 10.0
PROMPT = "say how a stream of tokens reaches a screen"
TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "Find a word.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
}}]
# The task lifecycle a run writes; progress is none of it.
LIFECYCLE = {"TaskSubmitted", "TaskAssigned", "TaskStarted", "CostRecorded", "TaskCompleted", "TaskFailed"}


def agent(provider: str, openai_url: str, anthropic_url: str) -> dict[str, Any]:
    """An ai_agent executor on the ``provider`` stand-in, taking tasks that require ``provider``."""
    base = f"{openai_url}/v1" if provider == "openai" else anthropic_url
    return {"name": f"{provider}-writer", "type": "ai_agent", "provider": provider, "base_url": base,
            "model": "standin-model", "capabilities": [provider], "heartbeat_interval": 1.0}


def plain_executor(config: dict[str, Any]) -> AiAgentExecutor:
    return AiAgentExecutor(AiAgentConfig.model_validate(config))


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:  # the test runner keeps its signals
        yield


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[tuple[str, Service]]:
    """The app as ``agentbus serve`` runs it (its own service, hosted executors, the hub), on a
    local port in this loop; yields its address and its service."""
    app = create_app(settings=settings)
    port = free_port()
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                    timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(WAIT_S):
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server did not start")
            await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}", app.state.service
    finally:
        server.should_exit = True
        await task


async def subscribe(stack: contextlib.AsyncExitStack, base: str, channel: str) -> ClientConnection:
    ws = await stack.enter_async_context(websockets.connect(f"ws://{base}/ws/v1/events"))
    await ws.send(json.dumps({"type": "subscribe", "channels": [channel]}))
    assert json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))["type"] == "subscribed"
    return ws


async def until_ended(ws: ClientConnection, task_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The progress messages a subscriber got for ``task_id`` up to the event that ended it, and that
    event (a CloudEvent)."""
    progress: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT_S):
        while True:
            m = json.loads(await ws.recv())
            if m["type"] == "progress" and m["task_id"] == task_id:
                progress.append(m)
            elif m["type"] == "event" and m["event"]["type"] in ("TaskCompleted", "TaskFailed") \
                    and m["event"]["data"]["task_id"] == task_id:
                return progress, m["event"]


async def log_of(service: Service) -> list[dict[str, Any]]:
    """Every record of the events and commands topics, as stored."""
    out = []
    for topic in (service.topics.events, service.topics.commands):
        for p in range(await service.log.partitions(topic)):
            out += [json.loads(r.value) for r in await service.log.read(topic, p, 0, 100_000)]
    return out


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_hosted_agent_streams_its_answer_to_live_subscribers_and_logs_only_the_result(
        provider: str, tmp_path: Path, openai_url: str, anthropic_url: str) -> None:
    config = agent(provider, openai_url, anthropic_url)
    path = tmp_path / "executors.json"
    path.write_text(json.dumps({"agents": [config]}))
    model_url = openai_url if provider == "openai" else anthropic_url
    async with serve(Settings(data_dir=tmp_path / "data", executors=path)) as (base, service), \
            contextlib.AsyncExitStack() as stack, \
            httpx.AsyncClient(base_url=f"http://{base}", timeout=WAIT_S) as client:
        on_task = await subscribe(stack, base, "task:r1.answer")
        on_run = await subscribe(stack, base, "workflow:r1")
        resp = await client.post("/v1/tasks", json={"task_id": "r1.answer", "type": "chat",
                                                    "required_capabilities": [provider],
                                                    "parameters": {"prompt": PROMPT}})
        assert resp.status_code == 202, resp.text
        progress, completed = await until_ended(on_task, "r1.answer")
        assert completed["type"] == "TaskCompleted", completed
        result = completed["data"]["result"]

        # Started, the text as it was written, finished: the deltas add up to the recorded answer.
        assert progress[0]["message"] == "started" and progress[-1]["message"] == "finished"
        assert progress[0]["data"] == {"agent_id": f"{provider}-writer", "attempt": 1}
        deltas = [m["delta"] for m in progress if "delta" in m]
        assert deltas[0] == "echo:"  # the first token goes out at once
        assert "".join(deltas) == result["content"] == f"echo: {PROMPT}"
        assert all(m["workflow_id"] == "r1" and m["pool"] == "default" for m in progress)
        # The run's channel got the same, in the same order.
        on_run_progress, _ = await until_ended(on_run, "r1.answer")
        assert [(m.get("message"), m.get("delta")) for m in on_run_progress] == \
            [(m.get("message"), m.get("delta")) for m in progress]

        # It was a stream (OpenAI: asked for the usage too)...
        asked = (await get_json(f"{model_url}/_requests"))[-1]
        assert asked["stream"] is True
        if provider == "openai":
            assert asked["stream_options"] == {"include_usage": True}
        # ...and its result, usage and cost are those of a plain call of the same task.
        executor = plain_executor(config)
        await executor.start()
        try:
            plain = await executor.call(Call(task_id="r1.answer", attempt=1, action=None,
                                             parameters={"prompt": PROMPT}, idempotency_key="plain"))
        finally:
            await executor.close()
        assert "stream" not in (await get_json(f"{model_url}/_requests"))[-1]
        assert plain.ok and plain.usage is not None and plain.usage.output_tokens > 0
        assert result == plain.result

        # A run that fails says so, with why (subscribed first: progress is live only, and the run
        # may be over before a later subscription starts).
        on_failed = await subscribe(stack, base, "workflow:r2")
        resp = await client.post("/v1/tasks", json={"task_id": "r2.answer", "type": "chat",
                                                    "required_capabilities": [provider],
                                                    "parameters": {"prompt": "[400] no"}})
        assert resp.status_code == 202, resp.text
        failed_progress, failed = await until_ended(on_failed, "r2.answer")
        assert failed["type"] == "TaskFailed"
        assert [m["message"] for m in failed_progress][-1] == "failed"
        assert failed_progress[-1]["data"]["error_code"] == "provider_error:400"
        assert failed_progress[-1]["data"]["retryable"] is False

        # The log holds the lifecycle and the cost of the plain call; not one progress message.
        stored = await log_of(service)
        assert not [r for r in stored if "progress" in r["type"].lower()]
        mine = [r for r in stored if r["data"].get("task_id") == "r1.answer"]
        assert {r["type"] for r in mine} <= LIFECYCLE | {"SubmitTask", "AssignTask", "StartTask",
                                                         "RecordCost", "CompleteTask"}
        [cost] = [r["data"] for r in mine if r["type"] == "CostRecorded"]
        assert (cost["input_tokens"], cost["output_tokens"]) == \
            (plain.usage.input_tokens, plain.usage.output_tokens)
        # The answer's text is stored only as the result: in the CompleteTask command and its event.
        holding = [r["type"] for r in stored if "echo:" in json.dumps(r)]
        assert sorted(holding) == ["CompleteTask", "TaskCompleted"]


def outcome_view(outcome: Outcome) -> tuple[Any, ...]:
    usage = outcome.usage
    return (outcome.ok, outcome.result, outcome.error_code, outcome.retryable, outcome.retry_after_s,
            None if usage is None else (usage.model, usage.input_tokens, usage.output_tokens))


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize(("case", "parameters"), [
    ("text", {"prompt": "one two three four five"}),
    ("cut short", {"prompt": "a long enough answer to be cut", "max_tokens": 3}),
    ("tool call", {"prompt": "[tool] find streams", "tools": TOOLS}),
    ("client error", {"prompt": "[400] no"}),
    ("deferred", {"prompt": "[429:0.2] later"}),
])
async def test_a_streamed_call_ends_as_the_plain_call_does(
        provider: str, case: str, parameters: dict[str, Any], openai_url: str, anthropic_url: str) -> None:
    executor = plain_executor(agent(provider, openai_url, anthropic_url))
    await executor.start()
    published: list[dict[str, Any]] = []

    def progress(**message: Any) -> None:
        published.append(message)

    try:
        def call(sink: Any) -> Call:
            return Call(task_id="t1", attempt=1, action=None, parameters=parameters, idempotency_key="k1",
                        progress=sink)

        plain = await executor.call(call(None))
        streamed = await executor.call(call(progress))
    finally:
        await executor.close()
    assert outcome_view(streamed) == outcome_view(plain), case
    text = "".join(m["delta"] for m in published)
    assert all(set(m) == {"delta"} and m["delta"] for m in published)
    if plain.ok and plain.result["content"] is not None:
        assert text == plain.result["content"] and published
    else:
        assert text == ""  # a tool call or a failure writes no text
    if case == "tool call":
        [made] = streamed.result["tool_calls"]
        assert made["name"] == "lookup" and made["arguments"] == {"query": "find streams"}


async def test_a_host_with_nowhere_to_publish_makes_plain_calls(tmp_path: Path, openai_url: str,
                                                              anthropic_url: str) -> None:
    """``agentbus executor run`` builds its host this way: a client of the log, with no hub."""
    config = ExecutorsFile.model_validate({"agents": [agent("openai", openai_url, anthropic_url)]})
    async with embedded(tmp_path) as service:
        host = ExecutorHost(service.log, config.agents, topics=service.topics)
        running = asyncio.create_task(host.run())
        try:
            await asyncio.wait_for(host.ready.wait(), WAIT_S)
            await service.submit(command_envelope(c.SubmitTask(
                task_id="t1", type="chat", required_capabilities=("openai",), parameters={"prompt": "hi"})))
            async with asyncio.timeout(WAIT_S):
                while True:
                    recs = await service.log.read(service.topics.events, 0, 0, 100_000)
                    done = [x.data for x in map(from_record, recs) if isinstance(x.data, e.TaskCompleted)]
                    if done:
                        break
                    await asyncio.sleep(0.05)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    assert done[0].result["content"] == "echo: hi"
    asked = [r for r in await get_json(f"{openai_url}/_requests") if r["messages"][-1]["content"] == "hi"]
    assert asked and all("stream" not in r for r in asked)


def _breaking_app() -> FastAPI:
    """A server whose streams break off after the first words: OpenAI's error chunk, Anthropic's
    ``error`` event (both as the providers send them when a stream fails midway)."""
    app = FastAPI()
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "half an"},
                          "finish_reason": None}]}
    start = {"type": "message_start", "message": {
        "id": "m1", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 0}}}
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "half an"}}
    failure = {"type": "error", "error": {"type": "api_error", "message": "the model fell over"}}

    async def sse(lines: list[str]) -> AsyncIterator[bytes]:
        for line in lines:
            yield line.encode()

    @app.post("/v1/chat/completions")
    async def chat() -> StreamingResponse:
        lines = [f"data: {json.dumps(chunk)}\n\n",
                 f"data: {json.dumps({'error': failure['error']})}\n\n"]
        return StreamingResponse(sse(lines), media_type="text/event-stream")

    @app.post("/v1/messages")
    async def messages() -> StreamingResponse:
        lines = [f"event: {body['type']}\ndata: {json.dumps(body)}\n\n"
                 for body in (start, block, delta, failure)]
        return StreamingResponse(sse(lines), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def breaking_url() -> Iterator[str]:
    with serving(_breaking_app()) as url:
        yield url


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_stream_that_breaks_off_is_a_retryable_failure_after_what_it_wrote(
        provider: str, breaking_url: str) -> None:
    executor = plain_executor(agent(provider, breaking_url, breaking_url))
    await executor.start()
    published: list[dict[str, Any]] = []
    try:
        outcome = await executor.call(Call(task_id="t1", attempt=1, action=None, parameters={"prompt": "x"},
                                           idempotency_key="k1", progress=lambda **m: published.append(m)))
    finally:
        await executor.close()
    assert not outcome.ok and outcome.retryable and outcome.retry_after_s is None, outcome
    assert outcome.error_code == PROVIDER
    assert "stream broke off" in (outcome.error or "") and "the model fell over" in (outcome.error or "")
    assert published == [{"delta": "half an"}]
