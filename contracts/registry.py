"""The schema registry: type name -> model, current schema version, and upcasters for old versions.

Pure: maps names and dicts to models; never reads or writes anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from contracts import commands, event_types
from contracts.base import Kind, Payload

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class UnknownType(KeyError):
    """The type name is not in the registry."""


@dataclass(frozen=True, slots=True)
class Contract:
    """One registered type."""

    name: str
    model: type[Payload]
    kind: Kind
    version: int

    @property
    def dataschema(self) -> str:
        return f"urn:agentbus:schema:{self.name}:{self.version}"


@dataclass
class Registry:
    """Type name -> contract, plus upcasters keyed by (name, from_version)."""

    _by_name: dict[str, Contract] = field(default_factory=dict)
    _upcasters: dict[tuple[str, int], Upcaster] = field(default_factory=dict)

    def register(self, model: type[Payload], version: int = 1) -> None:
        name = model.__name__
        if name in self._by_name:
            raise ValueError(f"type {name!r} registered twice")
        self._by_name[name] = Contract(name, model, model.message_kind, version)

    def upcaster(self, name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register a function turning version ``from_version`` data into ``from_version + 1``."""

        def deco(fn: Upcaster) -> Upcaster:
            self._upcasters[(name, from_version)] = fn
            return fn

        return deco

    def get(self, name: str) -> Contract | None:
        return self._by_name.get(name)

    def __getitem__(self, name: str) -> Contract:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownType(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def contracts(self, kind: Kind | None = None) -> Iterable[Contract]:
        return (c for c in self._by_name.values() if kind is None or c.kind == kind)

    def upcast(self, name: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
        """Bring ``data`` written at ``version`` up to the current version of ``name``."""
        current = self[name].version
        if version > current:
            raise ValueError(f"{name} schema version {version} is newer than supported {current}")
        while version < current:
            step = self._upcasters.get((name, version))
            if step is None:
                raise ValueError(f"no upcaster for {name} from version {version}")
            data = step(data)
            version += 1
        return data

    def parse(self, name: str, data: dict[str, Any], version: int | None = None) -> Payload:
        """Validate ``data`` as ``name`` (upcasting from ``version`` first when it is older)."""
        contract = self[name]
        if version is not None and version != contract.version:
            data = self.upcast(name, version, data)
        return contract.model.model_validate(data)

    def json_schemas(self) -> dict[str, dict[str, Any]]:
        """One JSON Schema per type, with the version and kind recorded."""
        out: dict[str, dict[str, Any]] = {}
        for c in self._by_name.values():
            schema = c.model.model_json_schema()
            schema["$id"] = c.dataschema
            schema["x-agentbus-kind"] = c.kind
            schema["x-agentbus-version"] = c.version
            out[c.name] = schema
        return out


REGISTRY = Registry()
for _model in commands.ALL:
    REGISTRY.register(_model)
for _event in event_types.ALL:
    REGISTRY.register(_event, version=2 if _event is event_types.CostRecorded else 1)


@REGISTRY.upcaster("CostRecorded", from_version=1)
def _cost_recorded_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """v1 called the token counts ``tokens_in``/``tokens_out`` and had no pricing flag."""
    out = {k: v for k, v in data.items() if k not in ("tokens_in", "tokens_out")}
    out["input_tokens"] = data.get("tokens_in", 0)
    out["output_tokens"] = data.get("tokens_out", 0)
    out.setdefault("priced_from_table", False)
    return out
