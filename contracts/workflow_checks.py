"""The checks behind ``contracts.workflows.definition_problems`` and ``input_problems``.

A definition's steps form a graph (each step points at the steps it ``depends_on``). The checks
find every problem at once and locate each one as a path into the document the user wrote
(``("tasks", 2, "depends_on", 0)``), so an API can list them all: duplicate names, dependencies
on no step or on the step itself, cycles (each named once), templates that do not parse or read
something a step cannot see when it runs. Linear in the size of the definition: ancestors are
computed once, in one pass over the strongly connected components.

Pure: no I/O. ``contracts.workflows`` imports this module lazily (its models are only types here).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from contracts.templates import Path, TemplateProblem, references, template_strings

if TYPE_CHECKING:
    from contracts.workflows import Problem, WorkflowDefinition

__all__ = ["STEP_FIELDS", "run_input_problems", "structural_problems", "type_matches"]

# What a template may read of an upstream step: ``tasks.<step>.<field>``.
STEP_FIELDS = ("result", "error", "status")

# An input's declared type -> the Python types of the JSON values it accepts (bool apart: see
# ``type_matches``).
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def type_matches(declared: str, value: Any) -> bool:
    """Whether ``value`` is of the input type ``declared`` (``true`` is no number, as in JSON)."""
    if isinstance(value, bool):
        return declared == "boolean"
    return isinstance(value, _TYPES[declared])


def structural_problems(defn: WorkflowDefinition) -> list[Problem]:
    """Every structural problem of ``defn``, located (see ``definition_problems``)."""
    from contracts.workflows import Problem

    problems: list[Problem] = []
    first: dict[str, int] = {}  # a name -> the index of the first step so called
    for i, step in enumerate(defn.tasks):
        if step.name in first:
            problems.append(Problem(loc=("tasks", i, "name"), type="duplicate_step",
                                    msg=f"duplicate step name {step.name!r} "
                                        f"(also tasks[{first[step.name]}])"))
        else:
            first[step.name] = i

    # depends_on[i]: the steps step i waits for, as indexes (unknown names and itself left out).
    depends_on: list[list[int]] = []
    for i, step in enumerate(defn.tasks):
        edges: list[int] = []
        for j, dep in enumerate(step.depends_on):
            if dep == step.name:
                problems.append(Problem(loc=("tasks", i, "depends_on", j), type="unknown_dependency",
                                        msg=f"{step.name} depends on itself"))
            elif dep not in first:
                problems.append(Problem(loc=("tasks", i, "depends_on", j), type="unknown_dependency",
                                        msg=f"depends_on names no step: {dep!r}"))
            else:
                edges.append(first[dep])
        depends_on.append(edges)

    components = _components(depends_on)
    for component in components:
        if len(component) > 1:
            cycle = _cycle(component, depends_on)
            names = " -> ".join(defn.tasks[k].name for k in cycle)
            problems.append(Problem(loc=("tasks", cycle[0], "depends_on"), type="cycle",
                                    msg=f"cycle: {names}"))
    upstream = _upstream(components, depends_on)

    for i, step in enumerate(defn.tasks):
        for at, text in template_strings(step.parameters):
            loc = ("tasks", i, "parameters", *at)
            try:
                paths = references(text)
            except TemplateProblem as exc:
                problems.append(Problem(loc=loc, msg=str(exc), type="template_syntax"))
                continue
            for path in paths:
                for msg in _reference_problems(path, defn, i, first, upstream[i]):
                    problems.append(Problem(loc=loc, msg=msg, type="template_reference"))

    for name, spec in defn.inputs.items():
        if spec.default is not None and not type_matches(spec.type, spec.default):
            problems.append(Problem(loc=("inputs", name, "default"), type="input_type",
                                    msg=f"default of input {name} is not of type {spec.type}"))
    return problems


def _reference_problems(path: Path, defn: WorkflowDefinition, i: int, first: dict[str, int],
                        upstream: int) -> list[str]:
    """What is wrong with step ``i`` reading ``path`` (``upstream``: a bit per upstream step)."""
    dotted = ".".join(path)
    root = path[0]
    if root == "inputs":
        if len(path) > 1 and path[1] not in defn.inputs:
            return [f"template reads {dotted}, but no input {path[1]} is declared in inputs"]
        return []
    if root != "tasks":
        return [f"template reads {dotted}: templates read only inputs.<name> and "
                f"tasks.<step>.{'|'.join(STEP_FIELDS)}"]
    if len(path) == 1:
        return [f"template reads {dotted} without naming a step: write tasks.<step>.result"]
    me, name = defn.tasks[i].name, path[1]
    out: list[str] = []
    if name not in first:
        out.append(f"template reads tasks.{name}, which is not a step")
    elif name == me:
        out.append(f"template reads tasks.{name}, the step's own outcome (a step reads only steps "
                   "upstream of it)")
    elif not (upstream >> first[name]) & 1:
        out.append(f"template reads tasks.{name}, which is not upstream of {me} (add it to depends_on)")
    if len(path) > 2 and path[2] not in STEP_FIELDS:
        out.append(f"template reads {dotted}: a step offers only {', '.join(STEP_FIELDS)}")
    return out


def _components(edges: list[list[int]]) -> list[list[int]]:
    """The strongly connected components of the graph ``edges``, each listed after every
    component it reaches (Tarjan's algorithm, without recursion: 500 steps make a deep chain)."""
    index = [-1] * len(edges)
    low = [0] * len(edges)
    on_stack = [False] * len(edges)
    stack: list[int] = []
    out: list[list[int]] = []
    counter = 0
    for root in range(len(edges)):
        if index[root] != -1:
            continue
        work = [(root, 0)]
        while work:
            v, n = work[-1]
            if n == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack[v] = True
            if n < len(edges[v]):
                work[-1] = (v, n + 1)
                w = edges[v][n]
                if index[w] == -1:
                    work.append((w, 0))
                elif on_stack[w]:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                component: list[int] = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    component.append(w)
                    if w == v:
                        break
                out.append(sorted(component))
    return out


def _cycle(component: list[int], edges: list[list[int]]) -> list[int]:
    """A shortest cycle through the first step of ``component`` (a strongly connected set of more
    than one step), as the steps along it, that step first and last."""
    start, members = component[0], set(component)
    parent: dict[int, int] = {start: start}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in edges[v]:
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if w in members and w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError("a strongly connected component of several steps has a cycle")


def _upstream(components: list[list[int]], edges: list[list[int]]) -> list[int]:
    """For each step, a bit per step upstream of it (a transitive dependency). Steps on one cycle
    are upstream of each other (the cycle is reported; its members are not reported again)."""
    up = [0] * len(edges)
    for component in components:  # dependencies first
        mask = 0
        members = set(component)
        for v in component:
            for w in edges[v]:
                if w not in members:
                    mask |= up[w] | (1 << w)
        if len(component) > 1:
            for v in component:
                mask |= 1 << v
        for v in component:
            up[v] = mask
    return up


def run_input_problems(defn: WorkflowDefinition, inputs: dict[str, Any]) -> list[Problem]:
    """Problems of the ``inputs`` a run of ``defn`` is started with (see ``input_problems``).
    A null value counts as not given."""
    from contracts.workflows import Problem

    problems: list[Problem] = []
    for name, spec in defn.inputs.items():
        value = inputs.get(name)
        if value is None:
            if spec.required and spec.default is None:
                problems.append(Problem(loc=("inputs", name), type="missing_input",
                                        msg=f"input {name} is required"))
        elif not type_matches(spec.type, value):
            problems.append(Problem(loc=("inputs", name), type="input_type",
                                    msg=f"input {name} must be of type {spec.type}, "
                                        f"not {_json_type(value)}"))
    for name in inputs:
        if name not in defn.inputs:
            problems.append(Problem(loc=("inputs", name), type="unknown_input",
                                    msg=f"no input {name} is declared"))
    return problems


def _json_type(value: Any) -> str:
    for name, types in (("boolean", (bool,)), ("integer", (int,)), *_TYPES.items()):
        if isinstance(value, types):
            return name
    return type(value).__name__
