"""The OpenAPI document tells the truth: every write names each response it can give, with its
schema and the contract's bounds, and the API, driven by inputs generated from the document,
never answers 5xx and never answers anything the document does not describe."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import services.http.deps
from contracts import REGISTRY
from services.http.app import create_app
from services.http.writes import CREATED, ENDPOINTS
from services.runtime.settings import Settings

# Generated inputs per operation: enough to cross every documented response, quick enough to run
# on every change.
EXAMPLES = 10
WRITES = [(spec.method.lower(), spec.path, spec.command) for spec in ENDPOINTS] + [
    ("delete", "/v1/agents/{agent_id}", "DeregisterAgent"),
    ("delete", "/v1/resources/allocations/{allocation_id}", "ReleaseResources"),
    ("post", "/v1/commands", None),
]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app(settings=Settings(data_dir=Path("unused"))).openapi()


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return document["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else schema


def _response_schema(document: dict[str, Any], operation: dict[str, Any], status: int) -> dict[str, Any]:
    response = operation["responses"][str(status)]
    return _resolve(document, response["content"]["application/json"]["schema"])


@pytest.mark.parametrize(("method", "path", "command"), WRITES)
def test_every_write_documents_each_response_with_its_schema(
    document: dict[str, Any], method: str, path: str, command: str | None
) -> None:
    operation = document["paths"][path][method]
    accepted = _response_schema(document, operation, 202)
    assert {"command_id", "status", "partition", "position", "duplicate"} <= set(accepted["properties"])
    for status in (404, 409):
        rejection = _response_schema(document, operation, status)
        assert {"code", "message", "details", "events"} <= set(rejection["properties"])
    applied = {201} if command in CREATED else {200, 201} if command is None else {200}
    for status in applied:
        assert "events" in _response_schema(document, operation, status)["properties"]
    invalid = _response_schema(document, operation, 422)
    assert invalid["properties"]["detail"]["type"] == "array"
    for status in (413, 503):
        assert _response_schema(document, operation, status)["properties"]["detail"]["type"] == "string"


def test_numeric_bounds_come_from_the_contract(document: dict[str, Any]) -> None:
    body = document["paths"]["/v1/tasks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    priority = REGISTRY["SubmitTask"].model.model_fields["priority"]
    bounds = {type(m).__name__: m for m in priority.metadata}
    assert body["properties"]["priority"]["minimum"] == bounds["Ge"].ge == 1
    assert body["properties"]["priority"]["maximum"] == bounds["Le"].le == 10
    timeout = body["properties"]["timeout_s"]["anyOf"][0]
    assert timeout["exclusiveMinimum"] == 0 and timeout["maximum"] == 7 * 86_400
    # Nested models keep theirs: a task's retry policy.
    retry = document["components"]["schemas"]["RetryPolicy"]["properties"]
    assert retry["max_attempts"]["minimum"] == 1 and retry["max_attempts"]["maximum"] == 100
    policy = document["paths"]["/v1/scaling/policies"]["put"]["requestBody"]["content"]["application/json"]
    assert policy["schema"]["properties"]["target_utilization"]["exclusiveMinimum"] == 0


def test_reads_document_their_answers(document: dict[str, Any]) -> None:
    agent = _response_schema(document, document["paths"]["/v1/agents/{agent_id}"]["get"], 200)
    assert {"agent_id", "capacity", "status", "registered_at"} <= set(agent["properties"])
    tasks = document["paths"]["/v1/tasks"]["get"]
    page = _response_schema(document, tasks, 200)
    assert {"items", "page", "page_size", "total"} <= set(page["properties"])
    for status in (422, 503, 504):
        assert str(status) in tasks["responses"]
    assert "404" in document["paths"]["/v1/tasks/{task_id}"]["get"]["responses"]
    audit = document["paths"]["/v1/audit/assignments"]["get"]["responses"]["200"]["content"]
    assert {"application/json", "text/csv; charset=utf-8", "application/xml"} <= set(audit)


# Found by the property test below: positions past 64 bits reached the database driver and
# answered 500 (OverflowError); they are refused as input now.
@pytest.mark.parametrize(("path", "params"), [
    ("/v1/audit/rejections", {"after": 2**63}),
    ("/v1/audit/rejections", {"after": -(2**63) - 1}),
    ("/v1/scaling/decisions", {"after": 2**63}),
    ("/v1/audit/assignments", {"after": 2**63}),
    ("/v1/events", {"after": 2**63 - 1}),
    ("/v1/tasks", {"page": 2**62}),
    ("/v1/agents", {"min_position": 2**63}),
])
async def test_positions_past_64_bits_are_refused_not_a_crash(tmp_path: Path, path: str,
                                                             params: dict[str, int]) -> None:
    app = create_app(settings=Settings(data_dir=tmp_path))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            resp = await c.get(path, params=params)
            assert resp.status_code == 422, resp.text
            [err] = resp.json()["detail"]
            assert err["loc"] == ["query", next(iter(params))]
            largest = {k: 2**63 - 2 if path == "/v1/events" else 2**63 - 1 for k in params if k == "after"}
            if largest:
                assert (await c.get(path, params=largest)).status_code == 200


# --- the API against its document ---------------------------------------------------------------

# 504 is what a read answers when min_position is not reached in time: documented, and expected
# for the positions generated here. Any other 5xx is a failure.
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "504"]}}})
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
OPERATIONS = [(method.upper(), path) for path, methods in create_app(
    settings=Settings(data_dir=Path("unused"))).openapi()["paths"].items() for method in methods]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The document of an app on its own embedded runner, loaded over ASGI: the app's lifespan starts
    the runner on the loop that serves the requests. One runner for every operation, so reads see
    what earlier writes left."""
    with pytest.MonkeyPatch.context() as patch:
        # Module-scoped, so set up before conftest's autouse _no_env: keep a shell's settings out too.
        for name in list(os.environ):
            if name.startswith("AGENTBUS_") and not name.startswith("AGENTBUS_TEST_"):
                patch.delenv(name)
        # Generated reads ask for positions nobody wrote: answer 504 quickly.
        patch.setattr(services.http.deps, "READ_WAIT_S", 0.05)
        app = create_app(settings=Settings(data_dir=tmp_path_factory.mktemp("api")))
        try:
            yield schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
        finally:
            asgi.shutdown_lifespans()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_response_is_documented_and_none_is_a_server_error(api_schema: Any, method: str,
                                                                 path: str) -> None:
    operation = api_schema[path][method]
    # Valid inputs and invalid ones (which must be refused with a documented 4xx, never a crash).
    cases = operation.as_strategy() | operation.as_strategy(
        generation_mode=schemathesis.GenerationMode.NEGATIVE)

    @given(case=cases)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def conforms(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS)

    conforms()
