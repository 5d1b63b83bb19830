"""Every command input is bounded: a value at a bound is accepted, one beyond it is refused naming
the field; floats are finite, integers fit 64 bits, ids fit a URL path, free-form JSON is storable."""

from __future__ import annotations

import math
import types
import typing
from enum import StrEnum
from typing import Any

import annotated_types as at
import pytest
from pydantic import BaseModel, ValidationError

from contracts import commands as c
from contracts.base import Model
from contracts.values import INT64_MAX, INT64_MIN, MAX_CAPABILITIES, MAX_JSON_DEPTH, MAX_JSON_VALUES

# The smallest valid instance of each command (fields not given take their defaults).
BASE: dict[type[BaseModel], dict[str, Any]] = {
    c.RegisterAgent: {"agent_id": "a", "name": "n"},
    c.AgentHeartbeat: {"agent_id": "a"},
    c.DeregisterAgent: {"agent_id": "a"},
    c.SubmitTask: {"task_id": "t", "type": "x"},
    c.AssignTask: {"task_id": "t", "agent_id": "a"},
    c.StartTask: {"task_id": "t"},
    c.CompleteTask: {"task_id": "t"},
    c.FailTask: {"task_id": "t"},
    c.CancelTask: {"task_id": "t"},
    c.SetResourceLimits: {"max_cpu_cores": 1, "max_memory_mb": 1, "max_disk_mb": 1, "max_network_mbps": 1},
    c.AllocateResources: {"allocation_id": "al", "agent_id": "a"},
    c.ReleaseResources: {"allocation_id": "al"},
    c.RecordCost: {"cost_id": "c", "agent_id": "a", "model": "m"},
    c.SetBudget: {"limit_usd": 1},
    c.SetPoolPolicy: {},
    c.FireTimer: {"timer_id": "heartbeat:a", "generation": 1},
    c.MarkTaskUnassignable: {"task_id": "t"},
    c.DeferTask: {"task_id": "t"},
    c.SetRateLimit: {"scope_id": "a"},
    c.SetScalingPolicy: {"agent_kind": "k", "max_agents": 100_000},
    c.DecideScaling: {"agent_kind": "k", "from_agents": 0, "to_agents": 1, "reason": "r"},
    c.SetPrices: {},
    c.NoteTaskWaiting: {"task_id": "t", "code": "no_capable_agent"},
    c.StartWorkflow: {"workflow_id": "w", "definition": {"name": "n", "tasks": [{"name": "a"}]}},
    c.CancelWorkflow: {"workflow_id": "w"},
    c.SignalWorkflow: {"workflow_id": "w", "name": "approve"},
    c.AwaitSignal: {"workflow_id": "w", "step": "approve"},
    c.FailWorkflowStep: {"workflow_id": "w", "step": "a", "error": "e"},
    c.RegisterWorkflowDefinition: {"definition": {"name": "n", "tasks": [{"name": "a"}]}},
    c.IssueApiToken: {"token_id": "t", "role": "reader", "secret_hash": "0" * 64},
    c.RevokeApiToken: {"token_id": "t"},
    c.SetSubscription: {"name": "s", "url": "http://r.example/h", "channels": ["events"], "start": "earliest",
                        "secret": "sealed:v1:0123abcd:AAAA"},
    c.DeleteSubscription: {"name": "s"},
    c.SetWebhookSource: {"source": "s", "scheme": "github", "secret": "sealed:v1:0123abcd:AAAA"},
    c.DeleteWebhookSource: {"source": "s"},
    c.ReceiveExternalEvent: {"source": "s", "webhook_id": "w", "event_type": "e", "payload": {},
                             "received_at": "2025-01-01T00:00:00Z"},
    c.RecordWebhookMappingFailure: {"source": "s", "webhook_id": "w", "error": "e"},
    c.RecordDeliveryFailure: {"name": "s", "incarnation": 1, "event_id": "e", "event_type": "T",
                              "partition": 0, "position": 0, "attempts": 1, "last_error": ""},
    c.RecordAuditCheckpoint: {"topic": "events", "heads": {"0": {"position": 0, "chain": "0" * 64}},
                              "key_id": "0" * 32, "signature": "A" * 86 + "=="},
    c.ModelPrice: {"input_per_1k": 0, "output_per_1k": 0},
    c.RetryPolicy: {},
    c.ScoreWeights: {},
    c.PerformanceWeights: {},
    c.Candidate: {"agent_id": "a", "score": 0, "load": 0, "capacity": 1},
    c.SelectionAudit: {"strategy": "least_loaded"},
}
COMMANDS = [m for m in c.ALL if m in BASE]
MODELS = list(BASE)


def test_every_command_has_a_base() -> None:
    # A command added later must come with its smallest instance, so its bounds are tested too.
    missing = [m.__name__ for m in c.ALL if m not in BASE]
    assert missing == []


def _numeric_fields(model: type[BaseModel]) -> list[tuple[str, type, list[Any]]]:
    out = []
    for name, info in model.model_fields.items():
        args = [info.annotation]
        if typing.get_origin(info.annotation) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(info.annotation) if a is not type(None)]
        for tp in args:
            if tp in (int, float):
                out.append((name, tp, list(info.metadata)))
    return out


def _bound(metadata: list[Any], *kinds: type) -> Any:
    for m in metadata:
        if isinstance(m, kinds):
            return next(getattr(m, a) for a in ("le", "lt", "ge", "gt") if hasattr(m, a))
    return None


CASES = [(model, name, tp, meta) for model in MODELS for name, tp, meta in _numeric_fields(model)]


def _ids(case: tuple[Any, ...]) -> str:
    return f"{case[0].__name__}.{case[1]}"


def _refused(model: type[BaseModel], field: str, value: Any) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        model.model_validate({**BASE[model], field: value})
    locs = [err["loc"] for err in caught.value.errors()]
    assert any(loc and loc[0] == field for loc in locs), locs
    return caught.value


@pytest.mark.parametrize("case", CASES, ids=map(_ids, CASES))
def test_every_number_has_a_documented_upper_bound(case: tuple[Any, ...]) -> None:
    model, field, tp, meta = case
    upper = _bound(meta, at.Le, at.Lt)
    assert upper is not None, f"{model.__name__}.{field} has no upper bound"
    if tp is int:
        assert upper <= INT64_MAX


@pytest.mark.parametrize("case", CASES, ids=map(_ids, CASES))
def test_a_number_at_its_bound_is_accepted_and_beyond_it_refused(case: tuple[Any, ...]) -> None:
    model, field, tp, meta = case
    upper, lower = _bound(meta, at.Le), _bound(meta, at.Ge)
    if upper is not None:
        model.model_validate({**BASE[model], field: upper})
        _refused(model, field, upper + 1 if tp is int else math.nextafter(upper, math.inf))
    if lower is not None:
        model.model_validate({**BASE[model], field: lower})
        _refused(model, field, lower - 1 if tp is int else math.nextafter(lower, -math.inf))


@pytest.mark.parametrize("case", [x for x in CASES if x[2] is float], ids=_ids)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_floats_are_refused(case: tuple[Any, ...], value: float) -> None:
    _refused(case[0], case[1], value)


@pytest.mark.parametrize("case", [x for x in CASES if x[2] is int], ids=_ids)
def test_an_int_beyond_64_bits_is_refused(case: tuple[Any, ...]) -> None:
    _refused(case[0], case[1], 2**63)


def test_the_queue_threshold_that_bricked_the_projector_is_refused() -> None:
    err = _refused(c.SetScalingPolicy, "queue_threshold", 2**63)
    assert "less than or equal to 1000000" in str(err)
    c.SetScalingPolicy(agent_kind="k", queue_threshold=1_000_000)


def test_nested_metrics_and_scores_are_bounded() -> None:
    _refused(c.DecideScaling, "metrics", {"queue": 1e300})
    _refused(c.DecideScaling, "metrics", {"queue": math.inf})
    c.DecideScaling(agent_kind="k", from_agents=0, to_agents=1, reason="r", metrics={"queue": 1e15})
    _refused(c.SelectionAudit, "skipped", {"rate_limited": 2**31})
    _refused(c.Candidate, "components", {"x": 1e10})


# --- ids, names, capabilities ---------------------------------------------------------------------

ID_FIELDS = [(c.SubmitTask, "task_id"), (c.RegisterAgent, "agent_id"), (c.AllocateResources, "allocation_id"),
             (c.AssignTask, "agent_id"), (c.RecordCost, "cost_id"), (c.StartTask, "agent_id")]


@pytest.mark.parametrize(("model", "field"), ID_FIELDS, ids=lambda x: getattr(x, "__name__", x))
@pytest.mark.parametrize("bad", ["a/1", "", " a", "a ", "a\tb", "a\x00b", "a\nb", "a\x7fb", "a\x85b",
                                 ".", "..", "\ud800", "x" * 201])
def test_ids_a_url_cannot_carry_are_refused(model: type[BaseModel], field: str, bad: str) -> None:
    _refused(model, field, bad)


@pytest.mark.parametrize("good", ["a", "x" * 200, "task-1:2.3_é", "日本語", "\U0001f600", "a b", "a%2Fb",
                                  "..."])
def test_ids_within_the_rules_are_kept_as_sent(good: str) -> None:
    assert c.SubmitTask(task_id=good, type="x").task_id == good


def test_an_id_error_says_what_is_wrong() -> None:
    assert "'/'" in str(_refused(c.SubmitTask, "task_id", "a/1"))
    assert "whitespace" in str(_refused(c.SubmitTask, "task_id", " a"))
    assert "control character" in str(_refused(c.SubmitTask, "task_id", "a\x01"))


def test_a_model_name_may_hold_a_slash_where_it_is_no_path() -> None:
    limit = c.SetRateLimit(scope="model", scope_id="meta-llama/Llama-3.1-70B", requests_per_min=10)
    assert limit.scope_id == "meta-llama/Llama-3.1-70B"
    _refused(c.SetRateLimit, "scope_id", " gpt-4")


@pytest.mark.parametrize("bad", [[""], [" text"], ["text "], ["a\x00"], ["x" * 101]])
def test_capabilities_must_be_non_empty_and_trimmed(bad: list[str]) -> None:
    _refused(c.RegisterAgent, "capabilities", bad)
    _refused(c.SubmitTask, "required_capabilities", bad)


def test_capabilities_count_is_bounded() -> None:
    c.RegisterAgent(agent_id="a", name="n", capabilities=tuple(f"c{i}" for i in range(MAX_CAPABILITIES)))
    _refused(c.RegisterAgent, "capabilities", [f"c{i}" for i in range(MAX_CAPABILITIES + 1)])


def test_a_string_for_capabilities_is_refused() -> None:
    _refused(c.RegisterAgent, "capabilities", "text")


@pytest.mark.parametrize(("model", "field"), [(c.SubmitTask, "type"), (c.RegisterAgent, "name"),
                                              (c.FailTask, "error"), (c.CancelTask, "reason"),
                                              (c.DecideScaling, "reason"), (c.RegisterAgent, "kind")])
@pytest.mark.parametrize("bad", ["a\x00b", "a\udc80"])
def test_text_without_nul_or_lone_surrogates(model: type[BaseModel], field: str, bad: str) -> None:
    _refused(model, field, bad)


def test_an_unknown_strategy_is_refused_listing_the_names() -> None:
    err = str(_refused(c.SubmitTask, "strategy", "fast"))
    for name in c.STRATEGIES:
        assert name in err
    assert c.SubmitTask(task_id="t", type="x").strategy is None
    assert c.SubmitTask(task_id="t", type="x", strategy="weighted").strategy == "weighted"


# --- free-form JSON -------------------------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.mark.parametrize("bad", [
    {"n": 2**63}, {"n": INT64_MIN - 1}, {"n": 2**70}, {"x": math.inf}, {"x": [1, {"y": math.nan}]},
    {"s": "a\x00"}, {"a\x00": 1}, {"s": "\ud800"}, {"s": {1, 2}}, {"s": b"bytes"}, {"k": {1: 2}},
    _nested(MAX_JSON_DEPTH + 1), {"many": list(range(MAX_JSON_VALUES + 1))},
], ids=lambda v: repr(v)[:30])
@pytest.mark.parametrize(("model", "field"), [(c.SubmitTask, "data"), (c.CompleteTask, "result"),
                                              (c.RegisterAgent, "metadata")])
def test_free_form_json_must_be_storable(model: type[BaseModel], field: str, bad: dict[str, Any]) -> None:
    _refused(model, field, bad)


def test_a_json_error_names_the_place_inside_the_field() -> None:
    err = _refused(c.SubmitTask, "data", {"a": [0, {"b": 2**64}]})
    assert "at a[1].b" in str(err) and "64-bit" in str(err)


class Color(StrEnum):
    RED = "red"


def test_free_form_json_at_its_limits_is_kept() -> None:
    data = {"max": INT64_MAX, "min": INT64_MIN, "tiny": 5e-324, "huge": 1.7976931348623157e308,
            "astral": "\U0001f600", "empty": "", "deep": _nested(MAX_JSON_DEPTH - 1), "null": None}
    assert c.SubmitTask(task_id="t", type="x", data=data).data == data


def test_tuples_and_enums_become_json() -> None:
    task = c.SubmitTask(task_id="t", type="x", data={"pair": (1, (2, 3)), "color": Color.RED})
    assert task.data == {"pair": [1, [2, 3]], "color": "red"}
    assert type(task.data["pair"]) is list and type(task.data["color"]) is str


def test_every_model_refuses_nan() -> None:
    assert Model.model_config.get("allow_inf_nan") is False
