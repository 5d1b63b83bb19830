"""Reading workflow documents: a key written twice in one mapping, in YAML or JSON, is refused at
the line and column of its second occurrence, naming the first; everything else reads as before.
Checking one: each problem said once, in the format's words."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from services.http.errors import YAMLDecodeError
from services.http.workflow_documents import check_definition, load_document


@pytest.mark.parametrize(("raw", "key", "line", "column", "first"), [
    ('{"definition":{"name":"dj","tasks":[{"name":"a"}],"tasks":[{"name":"b"}]}}', "tasks", 1, 51, (1, 28)),
    ('{\n "name": "w",\n "tasks": [],\n "name": "v"\n}', "name", 4, 2, (2, 2)),
    ('{"tasks": [{"name": "a", "parameters": {"u": "x:y", "u" : 1}}]}', "u", 1, 53, (1, 41)),
    # Columns count characters, not bytes.
    ('{"\u00e9t\u00e9": 1,\n  "\u00e9t\u00e9": 2}', "\u00e9t\u00e9", 2, 3, (1, 2)),
    ('{"a\\"": 1, "a\\u0022": 2}', 'a"', 1, 12, (1, 2)),  # the same key, escaped two ways
])
def test_a_json_key_written_twice_is_refused_where_it_is(raw: str, key: str, line: int, column: int,
                                                         first: tuple[int, int]) -> None:
    for form in (raw, raw.encode()):
        with pytest.raises(json.JSONDecodeError) as err:
            load_document(form, as_yaml=False)
        assert (err.value.lineno, err.value.colno) == (line, column)
        assert err.value.msg.startswith(f"duplicate key {key!r} (first at line {first[0]}, "
                                        f"column {first[1]})")


@pytest.mark.parametrize("raw", [
    '{"a": "x:y", "b": {"a": 1, "c": [{"a": 1, "b": "\\\\"}, {"a": 2}]}, "d": "\\":"}',
    '{"url": "https://example.org/{{ inputs.topic }}", "x": {}, "y": []}',
    '[{"a": 1}, {"a": 2}]',
])
def test_json_with_the_same_key_in_different_objects_reads_as_orjson_reads_it(raw: str) -> None:
    assert load_document(raw, as_yaml=False) == orjson.loads(raw)


@pytest.mark.parametrize(("raw", "key", "line", "column", "first"), [
    ("name: w\ntasks: [{name: a}]\ntasks: [{name: b}]\n", "tasks", 3, 1, (2, 1)),
    ("name: w\ntasks:\n  - {name: a, name: b}\n", "name", 3, 15, (3, 6)),
    ("a: 1\n'a': 2\n", "a", 2, 1, (1, 1)),
])
def test_a_yaml_key_written_twice_is_refused_where_it_is(raw: str, key: str, line: int, column: int,
                                                         first: tuple[int, int]) -> None:
    with pytest.raises(YAMLDecodeError) as err:
        load_document(raw, as_yaml=True)
    assert (err.value.lineno, err.value.colno) == (line, column)
    assert err.value.msg.startswith(f"duplicate key {key!r} (first at line {first[0]}, column {first[1]})")


@pytest.mark.parametrize(("raw", "value"), [
    # A key written beside a merge overrides the merged one: that is what a merge is for.
    ("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  x: 3\n", {"base": {"x": 1, "y": 2}, "use": {"x": 3, "y": 2}}),
    ("a: {k: 1}\nb: {k: 1}\n", {"a": {"k": 1}, "b": {"k": 1}}),
])
def test_yaml_merges_and_the_same_key_in_different_mappings_are_read(raw: str, value: Any) -> None:
    assert load_document(raw, as_yaml=True) == value


def test_a_broken_step_is_not_also_reported_as_too_few_steps() -> None:
    doc = {"name": "w", "tasks": [{"name": "a"}, {"name": "b", "required_capabilites": ["x"]}]}
    problems = check_definition(doc, ("body", "definition")).problems
    assert [(tuple(p["loc"]), p["type"]) for p in problems] == [
        (("body", "definition", "tasks", 1, "required_capabilites"), "extra_forbidden")]
    # No steps at all is too few, as before.
    [empty] = check_definition({"name": "w", "tasks": []}).problems
    assert empty["type"] == "too_short" and tuple(empty["loc"]) == ("tasks",)


@pytest.mark.parametrize("doc", [None, [1], "name: w", 5])
def test_a_definition_that_is_no_mapping_says_so_in_the_formats_words(doc: object) -> None:
    [problem] = check_definition(doc, ("body", "definition")).problems
    assert problem["loc"] == ["body", "definition"]
    assert problem["msg"].startswith("a workflow definition is a mapping of name, tasks")
    assert "_FieldsOnly" not in problem["msg"]
