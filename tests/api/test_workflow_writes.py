"""The workflow writes through the HTTP API: starting runs from JSON and YAML in each form, every
problem of a refused start listed and located, cancel and signal decided by the decider, and
named definitions stored once per version."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.runtime.service import Service
from tests.api.conftest import end_offsets

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
DIGEST_YAML = (EXAMPLES / "research_digest.yaml").read_text()
DIGEST = yaml.safe_load(DIGEST_YAML)
YAML = {"content-type": "application/yaml"}

# One small definition: a task, and a signal step waiting on it.
SMALL: dict[str, Any] = {
    "name": "small",
    "version": "1.0.0",
    "inputs": {"who": {"type": "string", "required": True}},
    "tasks": [
        {"name": "hello", "required_capabilities": ["nobody-has-this"],
         "parameters": {"to": "{{ inputs.who }}"}},
        {"name": "approve", "type": "signal", "depends_on": ["hello"]},
    ],
}


def detail(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 422, resp.text
    items = resp.json()["detail"]
    assert isinstance(items, list) and items
    return list(items)


def located(resp: httpx.Response) -> set[tuple[tuple[str | int, ...], str]]:
    return {(tuple(item["loc"]), item["type"]) for item in detail(resp)}


async def events_of(client: httpx.AsyncClient, subject: str) -> list[dict[str, Any]]:
    resp = await client.get("/v1/events", params={"subject": subject, "limit": 1000})
    assert resp.status_code == 200, resp.text
    return list(resp.json()["items"])


async def started(client: httpx.AsyncClient, execution_id: str) -> dict[str, Any]:
    [event] = [e for e in await events_of(client, execution_id) if e["type"] == "WorkflowStarted"]
    return dict(event["data"])


async def start(client: httpx.AsyncClient, body: dict[str, Any], **params: str) -> dict[str, Any]:
    resp = await client.post("/v1/workflows", params={"wait": "true", **params}, json=body)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def put_definition(client: httpx.AsyncClient, defn: dict[str, Any], **params: str) -> httpx.Response:
    return await client.put(f"/v1/workflow-definitions/{defn['name']}", params=params, json=defn)


# --- starting a run: the forms of the request ------------------------------------------------------


async def test_a_json_start_is_accepted_with_the_run_and_its_position(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/workflows", json={"definition": DIGEST, "inputs": {"topic": "rust"}})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert (body["name"], body["version"], body["status"], body["total_tasks"]) == (
        "research_digest", "1.0.0", "queued", 3)
    assert body["command_status"] == "accepted" and body["duplicate"] is False
    assert isinstance(body["position"], int) and body["position"] >= 0 and body["created_at"]
    # A time-ordered id was made up for the run, and the run is on the log under it.
    run_id = body["execution_id"]
    assert len(run_id) == 36 and run_id[14] == "7"
    seen: dict[str, Any] = {}
    for _ in range(200):
        found = [e for e in await events_of(client, run_id) if e["type"] == "WorkflowStarted"]
        if found:
            seen = found[0]["data"]
            break
    assert seen["inputs"] == {"topic": "rust"} and seen["total_tasks"] == 3
    assert seen["definition"]["tasks"][2]["depends_on"] == ["fetch_a", "fetch_b"]


async def test_wait_answers_the_started_run_and_its_events(client: httpx.AsyncClient) -> None:
    body = await start(client, {"definition": DIGEST, "inputs": {"topic": "rust"},
                                "execution_id": "digest-1"})
    assert body["execution_id"] == "digest-1" and body["command_status"] == "applied"
    types = [e["type"] for e in body["events"]]
    # The budget and the global timeout come with the start.
    assert types[0] == "WorkflowStarted" and "BudgetSet" in types and "TimerScheduled" in types
    assert body["created_at"] == body["events"][0]["time"]


@pytest.mark.parametrize("content_type", ["application/yaml", "application/x-yaml",
                                          "application/yaml; charset=utf-8"])
async def test_a_yaml_start_document(client: httpx.AsyncClient, content_type: str) -> None:
    doc = yaml.safe_dump({"definition": DIGEST, "inputs": {"topic": "go"}, "execution_id": "y1"})
    resp = await client.post("/v1/workflows", params={"wait": "true"}, content=doc,
                             headers={"content-type": content_type})
    assert resp.status_code == 201, resp.text
    data = await started(client, "y1")
    assert data["inputs"] == {"topic": "go"} and data["definition"]["cost_budget"] == 2.5


async def test_the_definition_file_itself_with_inputs_in_the_query(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/workflows", content=DIGEST_YAML, headers=YAML, params={
        "inputs": json.dumps({"topic": "zig"}), "execution_id": "from-file", "wait": "true"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["execution_id"] == "from-file"
    data = await started(client, "from-file")
    assert data["name"] == "research_digest" and data["inputs"] == {"topic": "zig"}
    # The same document as JSON is the same definition.
    resp = await client.post("/v1/workflows", json=DIGEST, params={
        "inputs": json.dumps({"topic": "zig"}), "execution_id": "from-json", "wait": "true"})
    assert resp.status_code == 201, resp.text
    assert (await started(client, "from-json"))["definition"] == data["definition"]


async def test_yaml_dates_stay_text_and_aliases_are_read(client: httpx.AsyncClient) -> None:
    doc = """
name: dated
retry: &retry {max_attempts: 2, initial_delay: 0.5}
tasks:
  - {name: a, parameters: {since: 2024-05-01}, retry_config: *retry}
  - {name: b, retry_config: *retry}
"""
    # "retry" is no field of a definition: refused, and located.
    assert located(await client.post("/v1/workflows", content=doc, headers=YAML)) == {
        (("body", "retry"), "extra_forbidden")}
    doc = doc.replace("retry: &retry", "description: &retry")
    assert located(await client.post("/v1/workflows", content=doc, headers=YAML)) == {
        (("body", "description"), "string_type")}
    doc = doc.replace("description: &retry {max_attempts: 2, initial_delay: 0.5}\n", "").replace(
        "retry_config: *retry}", "retry_config: &r {max_attempts: 2, initial_delay: 0.5}}", 1).replace(
        "retry_config: *retry}", "retry_config: *r}")
    resp = await client.post("/v1/workflows", content=doc, headers=YAML,
                             params={"wait": "true", "execution_id": "dated-1"})
    assert resp.status_code == 201, resp.text
    steps = (await started(client, "dated-1"))["definition"]["tasks"]
    assert steps[0]["parameters"] == {"since": "2024-05-01"}
    assert steps[0]["retry_config"]["max_attempts"] == steps[1]["retry_config"]["max_attempts"] == 2


async def test_a_retry_with_the_same_key_answers_the_first_run(client: httpx.AsyncClient) -> None:
    body = {"definition": DIGEST, "inputs": {"topic": "rust"}}
    first = await client.post("/v1/workflows", json=body, headers={"Idempotency-Key": "start-once"})
    again = await client.post("/v1/workflows", json=body, headers={"Idempotency-Key": "start-once"})
    assert first.status_code == again.status_code == 202, again.text
    # The first request made up the run's id; the retry is answered with that run, not a new id.
    assert again.json()["duplicate"] is True
    assert again.json()["execution_id"] == first.json()["execution_id"]
    other = await client.post("/v1/workflows", json={**body, "inputs": {"topic": "go"}},
                              headers={"Idempotency-Key": "start-once"})
    [err] = detail(other)
    assert err["type"] == "idempotency_key_reused"


async def test_a_run_id_is_used_once(client: httpx.AsyncClient) -> None:
    await start(client, {"definition": SMALL, "inputs": {"who": "x"}, "execution_id": "once"})
    resp = await client.post("/v1/workflows", params={"wait": "true"},
                             json={"definition": SMALL, "inputs": {"who": "y"}, "execution_id": "once"})
    assert resp.status_code == 409 and resp.json()["code"] == "WORKFLOW_EXISTS"


# --- stored definitions ---------------------------------------------------------------------------


async def test_a_stored_definition_starts_by_name_latest_or_pinned_version(client: httpx.AsyncClient) -> None:
    v1 = {**SMALL, "version": "1.0.0"}
    v2 = {**copy.deepcopy(SMALL), "version": "2.0.0", "description": "second"}
    assert (await put_definition(client, v1)).status_code == 201
    assert (await put_definition(client, v2)).status_code == 201
    # No wait between the PUT and the start: the start finds what was stored.
    latest = await start(client, {"definition": "small", "inputs": {"who": "a"}, "execution_id": "s-latest"})
    assert latest["version"] == "2.0.0"
    pinned = await start(client, {"definition": "small", "version": "1.0.0", "inputs": {"who": "a"},
                                  "execution_id": "s-pinned"})
    assert pinned["version"] == "1.0.0"
    assert (await started(client, "s-pinned"))["definition"]["description"] is None
    # A stored definition's inputs are checked as any other's.
    assert located(await client.post("/v1/workflows", json={"definition": "small"})) == {
        (("body", "inputs", "who"), "missing_input")}


@pytest.mark.parametrize("ask", [{"definition": "never_stored"},
                                 {"definition": "small", "version": "9.9.9"}])
async def test_an_unknown_stored_definition_is_404(client: httpx.AsyncClient, service: Service,
                                                   ask: dict[str, Any]) -> None:
    assert (await put_definition(client, SMALL)).status_code == 201
    before = await end_offsets(service)
    resp = await client.post("/v1/workflows", json={**ask, "inputs": {"who": "a"}})
    assert resp.status_code == 404, resp.text
    message = resp.json()["detail"]
    assert ask["definition"] in message and "PUT /v1/workflow-definitions/" in message
    if "version" in ask:
        assert "9.9.9" in message
    assert await end_offsets(service) == before


# --- every problem, located -----------------------------------------------------------------------


async def test_every_problem_of_a_start_is_listed_with_its_location(client: httpx.AsyncClient,
                                                                    service: Service) -> None:
    await client.post("/v1/agents", params={"wait": "true"},
                      json={"agent_id": "known-id", "name": "known-name", "capabilities": ["x"]})
    defn = {
        "name": "broken",
        "max_parallel": 0,                                                         # field error
        "inputs": {"topic": {"type": "string", "required": True}, "n": {"type": "integer"}},
        "tasks": [
            {"name": "a", "priority": 11, "agent_name": "known-name"},            # 0: field error
            {"name": "a"},                                                         # 1: duplicate
            {"name": "b", "depends_on": ["ghost"], "agent_name": "nobody"},       # 2: dependency, agent
            {"name": "c", "depends_on": ["d"], "agent_name": "known-id"},         # 3: cycle c -> d -> c
            {"name": "d", "depends_on": ["c"],
             "parameters": {"q": "{{ tasks.b.result }}"}},                        # 4: b is not upstream
        ],
    }
    before = await end_offsets(service)
    resp = await client.post("/v1/workflows", json={"definition": defn, "inputs": {"n": "three", "extra": 1}})
    items = detail(resp)
    d = ("body", "definition")
    assert {(tuple(i["loc"]), i["type"]) for i in items} == {
        ((*d, "max_parallel"), "greater_than_equal"),
        ((*d, "tasks", 0, "priority"), "less_than_equal"),
        ((*d, "tasks", 1, "name"), "duplicate_step"),
        ((*d, "tasks", 2, "depends_on", 0), "unknown_dependency"),
        ((*d, "tasks", 3, "depends_on"), "cycle"),
        ((*d, "tasks", 4, "parameters", "q"), "template_reference"),
        (("body", "inputs", "topic"), "missing_input"),
        (("body", "inputs", "n"), "input_type"),
        (("body", "inputs", "extra"), "unknown_input"),
        ((*d, "tasks", 2, "agent_name"), "unknown_agent"),
    }
    # Field errors first, then the definition's structure, its inputs, its agents.
    kinds = [i["type"] for i in items]
    assert kinds.index("less_than_equal") < kinds.index("duplicate_step") < kinds.index("missing_input") \
        < kinds.index("unknown_agent")
    msgs = {tuple(i["loc"]): i["msg"] for i in items}
    assert "cycle: c -> d -> c" in msgs[(*d, "tasks", 3, "depends_on")]
    assert "not upstream of d" in msgs[(*d, "tasks", 4, "parameters", "q")]
    assert "'ghost'" in msgs[(*d, "tasks", 2, "depends_on", 0)]
    assert "'nobody'" in msgs[(*d, "tasks", 2, "agent_name")]
    assert {i["input"] for i in items if i["type"] in ("unknown_dependency", "unknown_agent")} == {"ghost",
                                                                                                 "nobody"}
    assert await end_offsets(service) == before


async def test_a_deregistered_agent_is_no_agent_to_pin(client: httpx.AsyncClient) -> None:
    await client.post("/v1/agents", params={"wait": "true"}, json={"agent_id": "gone", "name": "gone"})
    defn = {"name": "pinned", "tasks": [{"name": "a", "agent_name": "gone"}]}
    resp = await client.post("/v1/workflows", params={"wait": "true"}, json={"definition": defn})
    assert resp.status_code == 201, resp.text
    await client.delete("/v1/agents/gone", params={"wait": "true"})
    assert located(await client.post("/v1/workflows", json={"definition": defn})) == {
        (("body", "definition", "tasks", 0, "agent_name"), "unknown_agent")}


@pytest.mark.http_layer
class TestRefusedStarts:
    async def test_problems_of_the_file_form_are_located_in_the_file_and_the_query(
            self, client: httpx.AsyncClient, service: Service) -> None:
        before = await end_offsets(service)
        doc = DIGEST_YAML.replace("depends_on: [fetch_a, fetch_b]", "depends_on: [fetch_a, fetch_c]")
        resp = await client.post("/v1/workflows", content=doc, headers=YAML,
                                 params={"inputs": json.dumps({"topic": 5}), "execution_id": "x" * 121})
        assert located(resp) == {
            (("query", "execution_id"), "too_long"),
            (("body", "tasks", 2, "depends_on", 1), "unknown_dependency"),
            (("query", "inputs", "topic"), "input_type"),
        }
        [err] = detail(await client.post("/v1/workflows", content=DIGEST_YAML, headers=YAML,
                                         params={"inputs": "{topic"}))
        assert err["loc"] == ["query", "inputs"] and err["type"] == "json_invalid"
        assert await end_offsets(service) == before

    async def test_the_body_and_query_forms_do_not_mix(self, client: httpx.AsyncClient) -> None:
        resp = await client.post("/v1/workflows", json={"definition": DIGEST, "inputs": {"topic": "a"},
                                                        "colour": "red", "version": "1.0.0"},
                                 params={"inputs": "{}"})
        assert located(resp) == {
            (("query", "inputs"), "value_error"),
            (("body", "colour"), "extra_forbidden"),
            (("body", "version"), "value_error"),
        }

    @pytest.mark.parametrize(("body", "loc", "kind"), [
        ({"definition": 5}, ("body", "definition"), "definition_type"),
        ({"definition": "no spaces allowed"}, ("body", "definition"), "string_pattern_mismatch"),
        ({"definition": DIGEST, "inputs": [1]}, ("body", "inputs"), "dict_type"),
        ({"definition": DIGEST, "inputs": {"topic": "a"}, "execution_id": "a/b"}, ("body", "execution_id"),
         "id_invalid"),
        ({"definition": DIGEST, "inputs": {"topic": "a"}, "execution_id": "x" * 121},
         ("body", "execution_id"), "too_long"),
        ({"definition": {"name": "w", "tasks": []}}, ("body", "definition", "tasks"), "too_short"),
        ({"definition": {"name": "w", "tasks": [{"name": "s", "type": "signal", "action": "x"}]}},
         ("body", "definition", "tasks", 0), "value_error"),
    ])
    async def test_one_problem(self, client: httpx.AsyncClient, body: dict[str, Any], loc: tuple[Any, ...],
                               kind: str) -> None:
        assert (loc, kind) in located(await client.post("/v1/workflows", json=body))

    async def test_templates_are_checked_when_other_fields_are_wrong(self, client: httpx.AsyncClient) -> None:
        defn = {"name": "w", "inputs": {"a": {"type": "colour"}}, "tasks": [
            {"name": "s1", "priority": "high", "parameters": {"x": "{{ inputs.nope }}"}},
            {"name": "s2", "depends_on": ["s1", "s9"], "parameters": {"y": "{{ tasks.s1.result }}"}},
            {"name": 7}]}
        assert located(await client.post("/v1/workflows", json={"definition": defn, "inputs": {"a": 1}})) == {
            (("body", "definition", "inputs", "a", "type"), "literal_error"),
            (("body", "definition", "tasks", 0, "priority"), "int_parsing"),
            (("body", "definition", "tasks", 2, "name"), "string_type"),
            (("body", "definition", "tasks", 0, "parameters", "x"), "template_reference"),
            (("body", "definition", "tasks", 1, "depends_on", 1), "unknown_dependency"),
        }

    @pytest.mark.parametrize(("raw", "line", "column"), [
        ("name: w\ntasks: [\n  {name: a}\n", 4, 1),
        ("name: w\ntasks:\n  - name: a\n   depends_on: [b]\n", 4, 4),
        ('name: "w\n', 2, 1),
    ])
    async def test_malformed_yaml_names_line_and_column(self, client: httpx.AsyncClient, service: Service,
                                                        raw: str, line: int, column: int) -> None:
        before = await end_offsets(service)
        [err] = detail(await client.post("/v1/workflows", content=raw, headers=YAML))
        assert err["type"] == "yaml_invalid" and err["loc"][0] == "body"
        assert err["msg"].startswith("YAML error: ") and f"(line {line}, column {column})" in err["msg"]
        assert await end_offsets(service) == before

    async def test_malformed_json_names_line_and_column(self, client: httpx.AsyncClient) -> None:
        [err] = detail(await client.post("/v1/workflows", content=b'{\n "definition": {,}\n}',
                                         headers={"content-type": "application/json"}))
        assert err["type"] == "json_invalid" and "(line 2, column 17)" in err["msg"]

    @pytest.mark.parametrize(("raw", "says"), [
        ("on: 1\nname: w\n", "YAML reads yes/no/on/off as booleans"),
        ("name: !!binary aGk=\n", "no JSON form"),
        ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
         "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
         "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
         "aliases"),
    ])
    async def test_yaml_that_json_cannot_say_is_refused(self, client: httpx.AsyncClient, raw: str,
                                                        says: str) -> None:
        [err] = detail(await client.post("/v1/workflows", content=raw, headers=YAML))
        assert err["type"] == "yaml_invalid" and says in err["msg"]

    @pytest.mark.parametrize("raw", ["- a\n- b\n", "just text\n", "~\n"])
    async def test_yaml_that_is_not_an_object(self, client: httpx.AsyncClient, raw: str) -> None:
        [err] = detail(await client.post("/v1/workflows", content=raw, headers=YAML))
        assert err["loc"] == ["body"] and err["type"] == "dict_type"

    async def test_a_yaml_key_written_twice_is_refused_with_its_line(self, client: httpx.AsyncClient,
                                                                     service: Service) -> None:
        before = await end_offsets(service)
        raw = "name: dup\ntasks:\n  - {name: a}\ntasks:\n  - {name: b}\n"
        for resp in (await client.post("/v1/workflows", content=raw, headers=YAML),
                     await client.put("/v1/workflow-definitions/dup", content=raw, headers=YAML)):
            [err] = detail(resp)
            assert err["type"] == "yaml_invalid" and "duplicate key 'tasks'" in err["msg"]
            assert "(first at line 2, column 1)" in err["msg"] and "(line 4, column 1)" in err["msg"]
        assert await end_offsets(service) == before

    async def test_a_json_key_written_twice_is_refused_with_its_place(self, client: httpx.AsyncClient,
                                                                      service: Service) -> None:
        before = await end_offsets(service)
        definition = '{"name": "dup", "tasks": [{"name": "a"}], "tasks": [{"name": "b"}]}'
        for resp in (await client.post("/v1/workflows", content=f'{{"definition": {definition}}}'),
                     await client.put("/v1/workflow-definitions/dup", content=definition)):
            assert resp.status_code in (400, 422), resp.text
            assert "duplicate key 'tasks'" in resp.text and "first at line 1" in resp.text, resp.text
        assert await end_offsets(service) == before


# --- cancel and signal ----------------------------------------------------------------------------


async def test_cancel_ends_the_run_once(client: httpx.AsyncClient) -> None:
    await start(client, {"definition": SMALL, "inputs": {"who": "x"}, "execution_id": "c1"})
    resp = await client.delete("/v1/workflows/c1", params={"reason": "changed my mind"})
    assert resp.status_code == 202 and resp.json()["status"] == "accepted"
    assert isinstance(resp.json()["position"], int)
    again = await client.delete("/v1/workflows/c1", params={"wait": "true"})
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "INVALID_WORKFLOW_STATE" and "cancelled" in again.json()["message"]
    [ended] = [e for e in await events_of(client, "c1") if e["type"] == "WorkflowEnded"]
    assert ended["data"]["status"] == "cancelled" and ended["data"]["reason"] == "changed my mind"


async def test_cancel_with_wait_answers_its_events(client: httpx.AsyncClient) -> None:
    await start(client, {"definition": SMALL, "inputs": {"who": "x"}, "execution_id": "c2"})
    resp = await client.delete("/v1/workflows/c2", params={"wait": "true"})
    assert resp.status_code == 200 and resp.json()["status"] == "applied"
    assert "WorkflowEnded" in [e["type"] for e in resp.json()["events"]]


async def test_an_unknown_run_is_404(client: httpx.AsyncClient) -> None:
    for resp in (await client.delete("/v1/workflows/nope", params={"wait": "true"}),
                 await client.post("/v1/workflows/nope/signals/approve", params={"wait": "true"})):
        assert resp.status_code == 404, resp.text
        assert resp.json()["code"] == "UNKNOWN_WORKFLOW"


async def test_signals_reach_signal_steps_once(client: httpx.AsyncClient) -> None:
    await start(client, {"definition": SMALL, "inputs": {"who": "x"}, "execution_id": "s1"})
    # No such step, or a step that is no signal: the path names nothing.
    for name in ("nothing", "hello"):
        resp = await client.post(f"/v1/workflows/s1/signals/{name}", params={"wait": "true"}, json={})
        assert resp.status_code == 404, resp.text
        assert resp.json()["code"] == "UNKNOWN_STEP"
    # Early (the step does not wait yet): kept, the step completes with it once it waits.
    resp = await client.post("/v1/workflows/s1/signals/approve", params={"wait": "true"},
                             json={"data": {"approver": "ana"}})
    assert resp.status_code == 200, resp.text
    [signalled] = [e for e in resp.json()["events"] if e["type"] == "WorkflowSignalled"]
    assert signalled["data"] == {"workflow_id": "s1", "step": "approve", "data": {"approver": "ana"}}
    again = await client.post("/v1/workflows/s1/signals/approve", params={"wait": "true"})
    assert again.status_code == 409 and again.json()["code"] == "INVALID_WORKFLOW_STATE"


async def test_a_signal_without_wait_and_in_yaml(client: httpx.AsyncClient) -> None:
    await start(client, {"definition": SMALL, "inputs": {"who": "x"}, "execution_id": "s2"})
    resp = await client.post("/v1/workflows/s2/signals/approve", content="data: {approver: bo}\n",
                             headers=YAML)
    assert resp.status_code == 202 and resp.json()["status"] == "accepted"
    found: list[dict[str, Any]] = []
    for _ in range(200):
        found = [e for e in await events_of(client, "s2") if e["type"] == "WorkflowSignalled"]
        if found:
            break
    assert found[0]["data"]["data"] == {"approver": "bo"}


@pytest.mark.http_layer
async def test_bad_signals_are_refused(client: httpx.AsyncClient, service: Service) -> None:
    before = await end_offsets(service)
    assert located(await client.post("/v1/workflows/s1/signals/not-a-name")) == {
        (("path", "name"), "string_pattern_mismatch")}
    assert located(await client.post("/v1/workflows/s1/signals/ok", json={"data": [1], "x": 1})) == {
        (("body", "data"), "dict_type"), (("body", "x"), "extra_forbidden")}
    assert await end_offsets(service) == before


# --- named definitions ----------------------------------------------------------------------------


async def test_a_definition_version_is_stored_once(client: httpx.AsyncClient) -> None:
    created = await put_definition(client, SMALL)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["status"], body["name"], body["version"]) == ("applied", "small", "1.0.0")
    assert len(body["digest"]) == 64
    assert [e["type"] for e in body["events"]] == ["WorkflowDefinitionRegistered"]
    # The same content again, here as YAML: nothing changes.
    same = await client.put("/v1/workflow-definitions/small", content=yaml.safe_dump(SMALL), headers=YAML)
    assert same.status_code == 200, same.text
    assert same.json()["status"] == "unchanged" and same.json()["events"] == []
    # Other content under the same version: refused, a version never changes.
    changed = await put_definition(client, {**SMALL, "description": "edited"})
    assert changed.status_code == 409 and changed.json()["code"] == "DEFINITION_EXISTS"
    newer = await put_definition(client, {**SMALL, "description": "edited", "version": "1.0.1"})
    assert newer.status_code == 201


async def test_a_definition_may_leave_its_name_to_the_path(client: httpx.AsyncClient) -> None:
    defn = {k: v for k, v in SMALL.items() if k != "name"}
    resp = await client.put("/v1/workflow-definitions/nameless", json=defn)
    assert resp.status_code == 201 and resp.json()["name"] == "nameless"


async def test_a_definition_without_wait_is_accepted(client: httpx.AsyncClient) -> None:
    resp = await put_definition(client, SMALL, wait="false")
    assert resp.status_code == 202 and resp.json()["status"] == "accepted"


@pytest.mark.http_layer
async def test_a_refused_definition_lists_its_problems(client: httpx.AsyncClient, service: Service) -> None:
    before = await end_offsets(service)
    [err] = detail(await client.put("/v1/workflow-definitions/other", json=SMALL))
    assert err["loc"] == ["body", "name"] and "differs from the path's 'other'" in err["msg"]
    # Listed with the definition's own problems.
    assert located(await client.put("/v1/workflow-definitions/other", json={**SMALL, "max_parallel": 0})) == {
        (("body", "name"), "value_error"), (("body", "max_parallel"), "greater_than_equal")}
    broken = {**SMALL, "tasks": [{"name": "a", "depends_on": ["b"]}, {"name": "b", "depends_on": ["a"]},
                                 {"name": "c", "timeout": -1}]}
    assert located(await put_definition(client, broken)) == {
        (("body", "tasks", 2, "timeout"), "greater_than"), (("body", "tasks", 0, "depends_on"), "cycle")}
    assert located(await client.put("/v1/workflow-definitions/bad name", json=SMALL)) == {
        (("path", "name"), "string_pattern_mismatch")}
    assert await end_offsets(service) == before
