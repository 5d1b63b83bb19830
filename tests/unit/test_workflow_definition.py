"""Workflow definitions: the YAML users write, every structural problem found and located, the
inputs a run is started with, and the sandboxed template language of step parameters."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts.templates import (
    MAX_REPEAT,
    TemplateProblem,
    _parse_jinja,
    _parse_simple,
    parameter_references,
    references,
    render,
)
from contracts.workflows import (
    InputSpec,
    StepDefinition,
    WorkflowDefinition,
    definition_problems,
    input_problems,
    with_defaults,
)

RESEARCH_DIGEST = """
name: research_digest
version: "1.0.0"
description: fetch two sources, summarise them, post the digest
parallel_execution: true
max_parallel: 5
failure_strategy: stop_on_first_failure
global_timeout: 300
cost_budget: 2.50
inputs: {topic: {type: string, required: true}}
tasks:
  - name: fetch_a
    required_capabilities: [http]
    action: fetch
    parameters: {url: "https://example.org/{{ inputs.topic }}"}
    timeout: 30
    retry_config: {max_attempts: 3, initial_delay: 0.5, max_delay: 30, exponential_base: 2, jitter: true}
  - name: fetch_b
    required_capabilities: [http]
    action: fetch
    continue_on_failure: true
  - name: combine
    required_capabilities: [llm]
    depends_on: [fetch_a, fetch_b]
    parameters: {text: "{{ tasks.fetch_a.result.body }}"}
    priority: 8
"""


def unchecked(tasks: list[dict[str, Any]],
              inputs: dict[str, dict[str, Any]] | None = None) -> WorkflowDefinition:
    """A definition built without its structural checks, so the checks themselves can be asked."""
    return WorkflowDefinition.model_construct(
        name="w", tasks=tuple(StepDefinition.model_validate(t) for t in tasks),
        inputs={k: InputSpec.model_validate(v) for k, v in (inputs or {}).items()})


def located(defn: WorkflowDefinition) -> set[tuple[tuple[str | int, ...], str]]:
    return {(p.loc, p.type) for p in definition_problems(defn)}


def chain(n: int) -> list[dict[str, Any]]:
    """Steps s0 <- s1 <- ... <- s(n-1), each reading the result of the one before."""
    return [{"name": "s0"}] + [
        {"name": f"s{i}", "depends_on": [f"s{i - 1}"],
         "parameters": {"x": f"{{{{ tasks.s{i - 1}.result }}}}"}}
        for i in range(1, n)]


CONTEXT: dict[str, Any] = {
    "inputs": {"topic": "rust", "n": 3, "tags": ["a", "b"], "missing_ok": None},
    "tasks": {
        "fetch_a": {"status": "completed", "result": {"body": "hello", "size": 5, "items": [1, 2]},
                    "error": None},
        "fetch_b": {"status": "failed", "result": None, "error": {"code": "TIMEOUT", "message": "slow"}},
    },
}


# -- the definition users write ---------------------------------------------------------------------

def test_the_documented_yaml_validates_with_no_problems() -> None:
    defn = WorkflowDefinition.model_validate(yaml.safe_load(RESEARCH_DIGEST))
    assert definition_problems(defn) == []
    assert [s.name for s in defn.tasks] == ["fetch_a", "fetch_b", "combine"]
    assert defn.step("combine").depends_on == ("fetch_a", "fetch_b")
    assert defn.cost_budget == 2.5 and defn.max_parallel == 5
    retry = defn.step("fetch_a").retry_config
    assert retry is not None and retry.policy().base_delay_s == 0.5
    assert parameter_references(defn.step("combine").parameters) == [
        (("text",), ("tasks", "fetch_a", "result", "body"))]
    assert input_problems(defn, {"topic": "rust"}) == []


def test_a_cycle_is_a_validation_error_that_names_it() -> None:
    doc = {"name": "w", "tasks": [{"name": "a", "depends_on": ["b"]}, {"name": "b", "depends_on": ["a"]}]}
    with pytest.raises(ValidationError) as err:
        WorkflowDefinition.model_validate(doc)
    assert "cycle: a -> b -> a" in str(err.value)


# -- every structural problem, located ---------------------------------------------------------------

def test_every_problem_of_one_definition_is_found_and_located() -> None:
    defn = unchecked([
        {"name": "a", "parameters": {"u": "{{ inputs.topic }}/{{ inputs.nope }}"}},       # 0
        {"name": "a"},                                                                   # 1 duplicate
        {"name": "b", "depends_on": ["a", "ghost", "b"]},                                # 2
        {"name": "c", "depends_on": ["a"], "parameters": {"q": [
            "x", "{{ tasks.a.result }}",             # fine: a is upstream
            "{{ tasks.b.result }}",                  # b is not upstream of c
            "{{ tasks.zz.result }}",                 # no such step
            "{{ tasks.a.output }}",                  # no such field
            "{{ secrets.key }}",                     # not inputs or tasks
            {"deep": "{{ tasks.c.status }}"},        # itself
            "{{ tasks.a.result",                     # does not parse
            "{% for x in y %}{{ x }}{% endfor %}",  # a statement
            "{{ tasks }}",                           # no step named
        ]}},                                                                             # 3
    ], inputs={"topic": {"type": "string"}})
    q = ("tasks", 3, "parameters", "q")
    assert located(defn) == {
        (("tasks", 0, "parameters", "u"), "template_reference"),
        (("tasks", 1, "name"), "duplicate_step"),
        (("tasks", 2, "depends_on", 1), "unknown_dependency"),
        (("tasks", 2, "depends_on", 2), "unknown_dependency"),
        ((*q, 2), "template_reference"),
        ((*q, 3), "template_reference"),
        ((*q, 4), "template_reference"),
        ((*q, 5), "template_reference"),
        ((*q, 6, "deep"), "template_reference"),
        ((*q, 7), "template_syntax"),
        ((*q, 8), "template_syntax"),
        ((*q, 9), "template_reference"),
    }
    msgs = {p.loc: p.msg for p in definition_problems(defn)}
    assert "inputs.nope" in msgs[("tasks", 0, "parameters", "u")]
    assert "'a'" in msgs[("tasks", 1, "name")] and "tasks[0]" in msgs[("tasks", 1, "name")]
    assert "'ghost'" in msgs[("tasks", 2, "depends_on", 1)]
    assert "itself" in msgs[("tasks", 2, "depends_on", 2)]
    assert msgs[(*q, 2)] == "template reads tasks.b, which is not upstream of c (add it to depends_on)"
    assert "not a step" in msgs[(*q, 3)]
    assert "result, error, status" in msgs[(*q, 4)]
    assert "secrets.key" in msgs[(*q, 5)]
    assert "statements" in msgs[(*q, 8)]


def test_a_template_reads_any_step_upstream_through_a_chain_of_dependencies() -> None:
    defn = unchecked([
        {"name": "a"},
        {"name": "b", "depends_on": ["a"]},
        {"name": "c", "depends_on": ["b"], "parameters": {
            "x": "{{ tasks.a.result.body|upper }} {{ tasks.b.status }} {{ tasks.a.error | tojson }}",
            "y": "{{ tasks['a']['result'] }}", "z": "{{ tasks.b }}"}},
        {"name": "d", "parameters": {"x": "{{ tasks.c.result }}"}},  # independent of c
    ])
    assert located(defn) == {(("tasks", 3, "parameters", "x"), "template_reference")}


def test_cycles_are_named_once_each_and_located_on_one_of_their_steps() -> None:
    defn = unchecked([
        {"name": "a", "depends_on": ["b"]},
        {"name": "b", "depends_on": ["a"]},
        {"name": "x", "depends_on": ["z"]},
        {"name": "y", "depends_on": ["x"]},
        {"name": "z", "depends_on": ["y", "a"]},
        {"name": "tail", "depends_on": ["z"]},  # downstream of a cycle, not on one
    ])
    cycles = [(p.loc, p.msg) for p in definition_problems(defn)]
    assert sorted(cycles) == [
        (("tasks", 0, "depends_on"), "cycle: a -> b -> a"),
        (("tasks", 2, "depends_on"), "cycle: x -> z -> y -> x"),
    ]
    assert {p.type for p in definition_problems(defn)} == {"cycle"}


def test_a_500_step_chain_validates_and_its_back_edge_is_one_named_cycle() -> None:
    steps = chain(500)
    steps[-1]["parameters"] = {"first": "{{ tasks.s0.result }}", "prev": "{{ tasks.s498.status | upper }}"}
    defn = WorkflowDefinition.model_validate({"name": "long", "tasks": steps})
    assert definition_problems(defn) == []

    steps[0] = {"name": "s0", "depends_on": ["s499"]}
    problems = definition_problems(unchecked(steps))
    assert [(p.loc, p.type) for p in problems] == [(("tasks", 0, "depends_on"), "cycle")]
    assert problems[0].msg == "cycle: " + " -> ".join(["s0", *(f"s{i}" for i in range(499, 0, -1)), "s0"])


def test_an_input_default_of_the_wrong_type_is_a_definition_problem() -> None:
    defn = unchecked([{"name": "a"}], inputs={"n": {"type": "integer", "default": "3"},
                                              "ok": {"type": "number", "default": 2}})
    assert located(defn) == {(("inputs", "n", "default"), "input_type")}


# -- the inputs of a run -----------------------------------------------------------------------------

def test_input_problems_are_located_by_input_name() -> None:
    defn = unchecked([{"name": "a"}], inputs={
        "topic": {"type": "string", "required": True},
        "limit": {"type": "integer", "required": True, "default": 10},
        "ratio": {"type": "number"}, "flag": {"type": "boolean"}, "opts": {"type": "object"},
        "items": {"type": "array"}})
    got = {(p.loc, p.type) for p in input_problems(defn, {
        "ratio": True, "flag": 1, "opts": [], "items": {}, "extra": 1})}
    assert got == {
        (("inputs", "topic"), "missing_input"),
        (("inputs", "ratio"), "input_type"),
        (("inputs", "flag"), "input_type"),
        (("inputs", "opts"), "input_type"),
        (("inputs", "items"), "input_type"),
        (("inputs", "extra"), "unknown_input"),
    }
    ok = {"topic": "t", "ratio": 1, "flag": False, "opts": {}, "items": []}
    assert input_problems(defn, ok) == []
    assert input_problems(defn, {**ok, "ratio": 0.5, "limit": 3}) == []
    assert [p.type for p in input_problems(defn, {**ok, "limit": 3.0})] == ["input_type"]
    assert with_defaults(defn, ok)["limit"] == 10


def test_a_null_input_counts_as_not_given_and_gets_its_default() -> None:
    defn = unchecked([{"name": "a"}], inputs={
        "who": {"type": "string", "required": True}, "depth": {"type": "integer", "default": 2},
        "limit": {"type": "integer", "required": True, "default": 10}, "note": {"type": "string"}})
    sent = {"who": "x", "depth": None, "limit": None, "note": None}
    assert input_problems(defn, sent) == []
    # Null is filled in like an absent input; one without a default stays as it was sent.
    assert with_defaults(defn, sent) == {"who": "x", "depth": 2, "limit": 10, "note": None}
    assert with_defaults(defn, {"who": "x"}) == {"who": "x", "depth": 2, "limit": 10}
    assert with_defaults(defn, {"who": "x", "depth": 0})["depth"] == 0  # a falsy value is a value


# -- what a template reads ----------------------------------------------------------------------------

def test_references_are_the_paths_read_in_order() -> None:
    assert references("x {{ tasks.fetch_a.result.body }} {{ inputs.topic|upper }}") == [
        ("tasks", "fetch_a", "result", "body"), ("inputs", "topic")]
    assert references("{{ tasks['a'].result[0].name }} {{ tasks[inputs.k].result }}") == [
        ("tasks", "a", "result"), ("tasks",), ("inputs", "k")]
    assert references("{{ dict(x=inputs.a) }} {{ inputs.a }} {{ 1 + 2 }}") == [("inputs", "a")]
    assert references("{{ (inputs.a | default(inputs.b)).c if tasks.x.status else 'n' }}") == [
        ("tasks", "x", "status"), ("inputs", "a"), ("inputs", "b")]
    assert references("no templates, {not even} this {% if %}") == []


@pytest.mark.parametrize("source, what", [
    ("{{ inputs.a", "does not parse"),
    ("{{ }}", "does not parse"),
    ("{{ inputs.a | no_such_filter }}", "no filter named 'no_such_filter'"),
    ("{{ inputs.a is no_such_test }}", "no test named 'no_such_test'"),
    ("{% set x = 1 %}{{ x }}", "statements"),
    ("{{ x }}{% raw %}{{ y }}{% endraw %}", "statements"),
])
def test_a_template_that_does_not_parse_or_uses_a_statement_is_refused(source: str, what: str) -> None:
    with pytest.raises(TemplateProblem, match=what):
        references(source)
    with pytest.raises(TemplateProblem, match=what):
        render({"p": source}, CONTEXT)


def test_parameter_references_locate_every_template_in_a_json_value() -> None:
    value = {"a": "{{ inputs.x }}", "b": [1, "plain", {"c": "{{ tasks.s.result }}-{{ inputs.y }}"}],
             "d": None}
    assert parameter_references(value) == [
        (("a",), ("inputs", "x")),
        (("b", 2, "c"), ("tasks", "s", "result")),
        (("b", 2, "c"), ("inputs", "y")),
    ]


_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
_FILTER = st.sampled_from(["upper", "tojson", "trim", "length", "nope", "not", "if"])


@given(
    parts=st.lists(st.tuples(st.text(alphabet="ab {}|%#-\n", max_size=4),
                             st.sampled_from(["inputs", "tasks"]),
                             st.lists(_NAME, max_size=3), st.lists(_FILTER, max_size=2),
                             st.sampled_from(["", " ", "  ", "\t"])), max_size=3),
    tail=st.text(alphabet="ab {}|%#-\n", max_size=4),
)
def test_the_quick_reading_of_simple_templates_agrees_with_jinja(
        parts: list[tuple[str, str, list[str], list[str], str]], tail: str) -> None:
    source = "".join(f"{text}{{{{{pad}{'.'.join([root, *attrs])}{''.join('|' + f for f in filters)}{pad}}}}}"
                     for text, root, attrs, filters, pad in parts) + tail
    quick = _parse_simple(source)
    if quick is None:
        return  # not simple: Jinja alone reads it
    assert quick == _parse_jinja(source)


# -- rendering ---------------------------------------------------------------------------------------

def test_a_string_that_is_one_expression_yields_its_native_value() -> None:
    out = render({"r": "{{ tasks.fetch_a.result }}", "n": " {{ inputs.n }}\n", "l": "{{ inputs.tags }}",
                  "none": "{{ tasks.fetch_b.result }}", "e": "{{- tasks.fetch_b.error.code -}}",
                  "sum": "{{ inputs.n + tasks.fetch_a.result.size }}"}, CONTEXT)
    assert out == {"r": {"body": "hello", "size": 5, "items": [1, 2]}, "n": 3, "l": ["a", "b"],
                   "none": None, "e": "TIMEOUT", "sum": 8}
    assert out["r"] is not CONTEXT["tasks"]["fetch_a"]["result"]  # a copy: the context stays untouched


def test_other_strings_render_to_text_with_filters() -> None:
    out = render([
        "https://example.org/{{ inputs.topic }}?n={{ inputs.n }}",
        "{{ inputs.topic | upper }}!",
        '{{ inputs.missing_ok | default("x", true) }}/{{ inputs.get("absent", "y") }}',
        "{{ tasks.fetch_a.result | tojson }}",
        "{{ tasks.fetch_b.status }}: {{ tasks.fetch_b.error.message }}\n",
        "{{ 'a' }}{{ 'b' }}",
    ], CONTEXT)
    assert out == ["https://example.org/rust?n=3", "RUST!", "x/y",
                   '{"body": "hello", "items": [1, 2], "size": 5}', "failed: slow\n", "ab"]
    assert type(out[3]) is str


def test_the_default_filter_fills_what_is_undefined() -> None:
    assert render('{{ inputs.absent | default("x") }}', CONTEXT) == "x"


@pytest.mark.parametrize("source, what", [
    ("{{ inputs.absent }}", "absent"),
    ("topic: {{ inputs.absent }}", "absent"),
    ("{{ tasks.fetch_a.result.body.nope.deeper }}", "nope"),
    ("{{ tasks.combine.result }}", "combine"),
    ("{{ secrets }}", "secrets"),
])
def test_an_undefined_name_or_attribute_is_a_template_problem_naming_the_template(
        source: str, what: str) -> None:
    with pytest.raises(TemplateProblem, match=what) as err:
        render({"p": [source]}, CONTEXT)
    assert repr(source) in str(err.value)


@pytest.mark.parametrize("source", [
    "{{ inputs.__class__ }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ inputs.topic.__class__.__base__.__subclasses__() }}",
    "x {{ inputs.topic.upper.__self__ }}",
    "{{ inputs.tags.append('z') }}",
    "{{ inputs.update({'topic': 'x'}) }}",
])
def test_the_sandbox_refuses_private_attributes_and_changes(source: str) -> None:
    with pytest.raises(TemplateProblem, match=r"unsafe|not safely callable"):
        render(source, CONTEXT)
    assert CONTEXT["inputs"]["tags"] == ["a", "b"] and CONTEXT["inputs"]["topic"] == "rust"


@pytest.mark.parametrize("source", ["{{ range(3) }}", "{{ lipsum() }}", "{{ cycler(1, 2) }}",
                                    "{{ joiner() }}", "{{ namespace() }}"])
def test_nothing_random_or_stateful_is_there(source: str) -> None:
    with pytest.raises(TemplateProblem, match="undefined"):
        render(source, CONTEXT)
    with pytest.raises(TemplateProblem, match="no filter named 'random'"):
        render("{{ inputs.tags | random }}", CONTEXT)


def test_a_template_cannot_make_huge_values() -> None:
    with pytest.raises(TemplateProblem, match=r"\*"):
        render(f"{{{{ 'ab' * {MAX_REPEAT} }}}}", CONTEXT)
    with pytest.raises(TemplateProblem, match=r"\*\*"):
        render("{{ 10 ** 100000 }}", CONTEXT)
    assert render("{{ 'ab' * 3 }} {{ 2 ** 10 }} {{ inputs.n * 2 }}", CONTEXT) == "ababab 1024 6"


def test_a_rendered_value_is_storable_json() -> None:
    context = {**CONTEXT, "inputs": {"when": dt.date(2024, 5, 1), "pair": (1, 2), "n": 3}}
    assert render({"d": "{{ inputs.when }}", "p": "{{ inputs.pair }}",
                   "s": "{{ tasks.fetch_a.result | dictsort }}", "k": "{{ {1: 'one'} }}"}, context) == {
        "d": "2024-05-01", "p": [1, 2], "s": [["body", "hello"], ["items", [1, 2]], ["size", 5]],
        "k": {"1": "one"}}
    with pytest.raises(TemplateProblem, match=r"'\{\{ 2 \*\* 70 \}\}'.*64-bit"):
        render("{{ 2 ** 70 }}", context)
    with pytest.raises(TemplateProblem, match=r"finite|NaN|nan"):
        render("{{ 'nan' | float }}", context)
    with pytest.raises(TemplateProblem, match="NUL"):
        render("{{ '\\x00' }}", context)


DICT_NAMES: dict[str, Any] = {
    "inputs": {"items": [1, 2], "values": "v", "keys": 0, "opts": {"a": 1}},
    "tasks": {
        "get": {"status": "completed", "result": {"body": {"hello": "hi", "update": "u"}}, "error": None},
        "keys": {"status": "completed", "result": {"items": "i", "values": [3]}, "error": None},
        "update": {"status": "failed", "result": None, "error": {"pop": "p"}},
    },
}


@pytest.mark.parametrize("source, value", [
    ("{{ tasks.get.result.body.hello }}", "hi"),
    ("{{ tasks.get.result.body.update }}", "u"),
    ("{{ tasks.keys.result.items }}", "i"),
    ("{{ tasks.keys.result.values }}", [3]),
    ("{{ tasks.update.error.pop }}", "p"),
    ("{{ tasks.update.status }}", "failed"),
    ("{{ inputs.items }}", [1, 2]),
    ("{{ inputs.values }}", "v"),
    ("{{ inputs.keys }}", 0),
    ("{{ inputs.items | length }} {{ inputs.values }}", "2 v"),
    ("{{ inputs.get('absent', 'd') }}", "d"),  # no key of that name: the method is still there
    ("{{ inputs.opts.keys() | list }}", ["a"]),
])
def test_a_key_named_like_a_dict_method_is_read_as_data(source: str, value: Any) -> None:
    assert render(source, DICT_NAMES) == value


@pytest.mark.parametrize("source, what", [
    ("{{ inputs.opts.items }}", "method or function"),
    ("x {{ inputs.opts.values }}", "method or function"),
    ("{{ {'k': inputs.opts.get} }}", "method or function"),
    ("{{ inputs.items | map('string') }}", r"generator.*\| list"),
    ("n: {{ inputs.items | select }}", r"generator.*\| list"),
])
def test_a_value_that_is_no_data_is_refused_never_stored_as_its_text(source: str, what: str) -> None:
    with pytest.raises(TemplateProblem, match=what) as err:
        render({"p": source}, DICT_NAMES)
    assert repr(source) in str(err.value) and "0x" not in str(err.value)


def test_rendering_is_the_same_every_time() -> None:
    params = {"a": "{{ tasks.fetch_a.result | tojson }}", "b": "{{ inputs.tags | join(',') }} {{ inputs.n }}"}
    assert render(params, CONTEXT) == render(params, CONTEXT) == {
        "a": '{"body": "hello", "items": [1, 2], "size": 5}', "b": "a,b 3"}


_JSON_TEXT = st.text().filter(lambda s: "{{" not in s)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | _JSON_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_JSON_TEXT, inner, max_size=4),
    max_leaves=20)


@given(_JSON)
def test_a_value_without_templates_renders_to_itself(value: Any) -> None:
    assert render(value, {}) == value
    assert parameter_references(value) == []
