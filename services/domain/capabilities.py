"""Capability inference and capability scores: which capabilities a task's data asks for, and how
well an agent's capabilities fit a task.

Pure functions over task data and capability sets; the decider uses ``infer`` at submission (so
the inferred capabilities are on the log) and the coordinator the scores. Never does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from contracts.commands import InferenceRule

# The built-in rules, used while a pool's policy leaves ``inference_rules`` unset.
DEFAULT_RULES: tuple[InferenceRule, ...] = (
    InferenceRule(key="data_source", equals="postgresql", capability="postgresql_optimization"),
    InferenceRule(key="volume", equals="large", capability="high_throughput"),
    InferenceRule(key="real_time", equals=True, capability="low_latency"),
)

_MISSING = object()

# Shared capability sets. A fleet asks for few distinct sets, while every task and agent keeps
# one (twice: in the decider's state and in the coordinator's view), and each frozenset costs
# 216 bytes however small: at 50,000 tasks, 43 MB of copies of a handful of sets. Bounded, so
# clients naming ever new sets cannot grow it without end; past the bound a set is not shared.
_SETS: dict[frozenset[str], frozenset[str]] = {}
_SETS_MAX = 4096


def capability_set(values: Iterable[str]) -> frozenset[str]:
    """``frozenset(values)``, the same object for equal sets (while fewer than 4,096 are kept)."""
    made = frozenset(values)
    kept = _SETS.get(made)
    if kept is not None:
        return kept
    if len(_SETS) < _SETS_MAX:
        _SETS[made] = made
    return made


def _lookup(data: Mapping[str, Any], key: str) -> Any:
    value: Any = data
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _equal(value: Any, wanted: Any) -> bool:
    if isinstance(value, str) and isinstance(wanted, str):
        return value.casefold() == wanted.casefold()
    if isinstance(value, bool) or isinstance(wanted, bool):  # True must not equal 1
        return type(value) is type(wanted) and value == wanted
    return bool(value == wanted)


def infer(
    data: Mapping[str, Any], rules: Iterable[InferenceRule], required: Iterable[str] = ()
) -> tuple[str, ...]:
    """Capabilities the rules derive from ``data``, sorted, without those already required."""
    have = set(required)
    out = {
        rule.capability
        for rule in rules
        if rule.capability not in have
        and (value := _lookup(data, rule.key)) is not _MISSING
        and _equal(value, rule.equals)
    }
    return tuple(sorted(out))


def capability_match(required: frozenset[str], caps: frozenset[str]) -> float:
    """Share of the required capabilities the agent has (1.0 when nothing is required)."""
    if not required:
        return 1.0
    return len(required & caps) / len(required)


def specialization(required: frozenset[str], preferred: frozenset[str], caps: frozenset[str]) -> float:
    """How specifically the agent fits: the share of preferred (inferred) capabilities it has;
    without preferences, how much of what it can do the task uses (a focused agent scores 1)."""
    if preferred:
        return len(preferred & caps) / len(preferred)
    if not caps:
        return 1.0
    return len(required & caps) / len(caps)
