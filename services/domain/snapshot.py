"""Decider snapshots: a partition's pool states and outcome index as bytes, and back, exactly.

A restart rebuilds every pool's ``PoolState`` by replaying the events partition from offset 0; a
snapshot lets it start from a position instead and replay only the tail. That is only sound if
the state it decodes is EXACTLY the state replay would have built, so the codec is not written
field by field: it is derived from the type hints of the state's dataclasses and pydantic models
(``_codec``), and a field added to any of them is written and read with no change here. A type it
cannot round-trip exactly (an untagged union of records, a pydantic model with private or extra
attributes, a derived dataclass field that takes part in equality) refuses to compile, at import.

The body is data only, nothing in a snapshot can run code (unlike pickle), lz4-compressed: a
mark and the length of a JSON header (12 bytes), the header (orjson), then the outcome index's columns as
binary sections (``_columns``). The header names ``FORMAT`` and a digest of the state's schema
(every field's name and type, recursively) and holds the state as JSON, except for what grows
with every command ever decided: the outcome index (its ids one per line, its offsets and counts
as arrays of 64-bit integers, its few digests by position) and each pool's ``seen`` (the same ids
again), written as runs of positions in the index's ids (``_seen_runs``). A body of another format
or schema, or one that cannot be read, raises ``SnapshotError`` and the caller replays from an
older snapshot or from offset 0. Bump ``FORMAT`` when ``evolve`` changes what a history rebuilds
into (the schema digest cannot see that); older snapshots are then ignored once and replaced.

Values typed ``Any`` (task data, parameters, signals) hold event JSON and are kept as JSON, as
the log keeps them. The encoding is positional (a dataclass is the list of its fields in order),
which the schema digest guards.

Pure: no I/O, no clock. The caller reads and writes the bytes (``services.runtime.snapshots``).
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import gc
import hashlib
import math
import operator
import struct
import sys
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import lz4.frame
import orjson
from pydantic import BaseModel

from services.domain.capabilities import capability_set
from services.domain.state import PoolState

__all__ = ["FORMAT", "DeciderSnapshot", "OpenCommand", "OutcomeColumns", "SnapshotError", "decode", "dump",
           "encode", "pack", "schema_digest"]

# The snapshot format. Bump it when the encoding changes or when ``evolve`` changes what a
# history rebuilds into: snapshots of another format are ignored (replayed from an older one or 0).
# 2: the outcome index by column (``OutcomeColumns``).
# 3: a JSON header and binary sections: the index's columns, and each pool's ``seen`` as runs of
# positions in its ids. At 1,006,000 events (a million commands): a body of 20.9 MB against 45.4,
# decoded in 1.16-1.20 s against 1.41-1.47 and put into the outcome index in 0.38 s against 0.46-0.50.
FORMAT = 3


class SnapshotError(ValueError):
    """A snapshot that cannot be used: another format or state schema, or a body that does not decode."""


@dataclass(slots=True)
class OpenCommand:
    """The command whose events end the covered range, its outcome not recorded yet (replay records a
    command's outcome when the next command's first event is read)."""

    command_id: str | None = None
    first: int = 0  # offset of its first event
    events: int = 0
    digest: str | None = None


@dataclass(slots=True)
class OutcomeColumns:
    """A partition's outcome index, command id -> (offset of its first event, events, digest), as
    four lists read at the same index. Flat lists of strings and numbers decode several times faster
    than as many small records: the index has an entry per command ever decided, most of a large
    snapshot's body (``OutcomeColumns.of`` and ``items`` convert)."""

    ids: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    digests: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.offsets) == len(self.counts) == len(self.digests):
            raise SnapshotError(f"the outcome columns differ in length ({len(self.ids)} ids, "
                                f"{len(self.offsets)} offsets, {len(self.counts)} counts, "
                                f"{len(self.digests)} digests)")

    @classmethod
    def of(cls, index: Iterable[tuple[str, tuple[int, int, str | None]]]) -> OutcomeColumns:
        """The columns of (command id, (offset, events, digest)) pairs."""
        out = cls()
        ids, offsets, counts, digests = (out.ids.append, out.offsets.append, out.counts.append,
                                         out.digests.append)
        for cid, (offset, count, digest) in index:
            ids(cid)
            offsets(offset)
            counts(count)
            digests(digest)
        return out

    def items(self) -> Iterator[tuple[str, tuple[int, int, str | None]]]:
        return zip(self.ids, zip(self.offsets, self.counts, self.digests, strict=True), strict=True)


@dataclass(slots=True)
class DeciderSnapshot:
    """A decider's state after every event of its partition below ``position``."""

    partition: int
    position: int  # the next events offset to replay
    states: dict[str, PoolState]
    outcomes: OutcomeColumns = field(default_factory=OutcomeColumns)  # this partition's outcome index
    open: OpenCommand = field(default_factory=OpenCommand)


# -- the type-driven codec ---------------------------------------------------------------------------

_Conv = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Codec:
    """How one type is written and read. ``enc``/``dec`` None: the value is its own JSON (a string,
    number, bool, None, JSON value, or a tuple orjson writes as an array and nothing converts back)."""

    name: str  # canonical description: the schema digest is computed from it
    enc: _Conv | None = None
    dec: _Conv | None = None
    # Of ``X | None`` whose X converts: X's decoder (a record's decoder calls it inline, see ``_construct``).
    dec_some: _Conv | None = None


_CACHE: dict[Any, _Codec] = {}
_BUILDING: set[Any] = set()
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _codec(tp: Any) -> _Codec:
    """The codec of the type hint ``tp`` (cached; raises TypeError for what it cannot round-trip)."""
    try:
        return _CACHE[tp]
    except KeyError:
        pass
    except TypeError:  # an unhashable hint
        raise TypeError(f"the snapshot codec cannot hash the type {tp!r}") from None
    if tp in _BUILDING:
        raise TypeError(f"recursive type {tp!r}: the snapshot codec does not write cycles")
    _BUILDING.add(tp)
    try:
        built = _build(tp)
    finally:
        _BUILDING.discard(tp)
    _CACHE[tp] = built
    return built


def _build(tp: Any) -> _Codec:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _codec(args[0])
    if tp is Any:
        return _Codec("any")
    if tp is type(None) or tp is None:
        return _Codec("none")
    if tp in (str, int, bool):
        return _Codec(tp.__name__)
    if tp is float:
        return _Codec("float", _float_enc, _float_dec)
    if origin is typing.Literal:
        if not all(isinstance(a, str | int | bool) for a in args):
            raise TypeError(f"the snapshot codec writes literals of str, int and bool only, not {tp!r}")
        return _Codec(f"literal[{','.join(repr(a) for a in args)}]")
    if origin in (typing.Union, types.UnionType):
        return _union(tp, args)
    if origin in (set, frozenset):
        return _collection(origin, _codec(args[0]))
    if origin is list:
        return _list(_codec(args[0]))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _var_tuple(_codec(args[0]))
        return _fixed_tuple([_codec(a) for a in args])
    if origin in (dict, Mapping):
        return _mapping(args[0], _codec(args[0]), _codec(args[1]))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return _model(tp)
    raise TypeError(f"the snapshot codec cannot round-trip {tp!r}; teach services.domain.snapshot._build")


def _float_enc(v: Any) -> Any:
    if v - v == 0:  # finite (int or float); orjson would write inf and nan as null
        return v
    return "nan" if v != v else ("inf" if v > 0 else "-inf")


def _float_dec(v: Any) -> Any:
    return _NON_FINITE[v] if type(v) is str else v


def _union(tp: Any, args: tuple[Any, ...]) -> _Codec:
    members = [a for a in args if a is not type(None)]
    if len(members) == len(args) - 1 and len(members) == 1:  # X | None
        inner = _codec(members[0])
        name = f"optional[{inner.name}]"
        if inner.enc is None and inner.dec is None:
            return _Codec(name)
        enc, dec = inner.enc, inner.dec
        return _Codec(
            name,
            None if enc is None else (lambda v: None if v is None else enc(v)),
            None if dec is None else (lambda v: None if v is None else dec(v)),
            dec,
        )
    # Scalars of distinct JSON types read back as themselves; anything else would need a tag.
    codecs = [_codec(a) for a in args]
    if all(c.name in ("str", "int", "bool", "none") for c in codecs):
        return _Codec(f"union[{','.join(c.name for c in codecs)}]")
    raise TypeError(f"the snapshot codec cannot tell the members of {tp!r} apart in JSON")


def _collection(kind: type, item: _Codec) -> _Codec:
    enc, dec = item.enc, item.dec
    if kind is frozenset and item.name == "str":
        read: Any = capability_set  # shared, as ``evolve`` shares them (capability sets)
    else:
        read = kind if dec is None else (lambda v: kind(dec(x) for x in v))
    write = list if enc is None else (lambda v: [enc(x) for x in v])
    return _Codec(f"{kind.__name__}[{item.name}]", write, read)


def _list(item: _Codec) -> _Codec:
    enc, dec = item.enc, item.dec
    return _Codec(
        f"list[{item.name}]",
        None if enc is None else (lambda v: [enc(x) for x in v]),
        None if dec is None else (lambda v: [dec(x) for x in v]),
    )


def _var_tuple(item: _Codec) -> _Codec:
    enc, dec = item.enc, item.dec
    return _Codec(
        f"tuple[{item.name},...]",
        None if enc is None else (lambda v: [enc(x) for x in v]),
        tuple if dec is None else (lambda v: tuple(dec(x) for x in v)),
    )


def _fixed_tuple(items: list[_Codec]) -> _Codec:
    n = len(items)
    name = f"tuple[{','.join(c.name for c in items)}]"
    encs = [(i, c.enc) for i, c in enumerate(items) if c.enc is not None]
    decs = [(i, c.dec) for i, c in enumerate(items) if c.dec is not None]

    def enc(v: Any) -> Any:
        out = list(v)
        for i, f in encs:
            out[i] = f(out[i])
        return out

    def dec(v: Any) -> Any:
        if len(v) != n:
            raise SnapshotError(f"expected {n} items for {name}, found {len(v)}")
        out = list(v)
        for i, f in decs:
            out[i] = f(out[i])
        return tuple(out)

    # Items that are their own JSON: the array only becomes a tuple (the schema digest guards its length).
    return _Codec(name, enc if encs else None, dec if decs else tuple)


def _mapping(key_tp: Any, key: _Codec, value: _Codec) -> _Codec:
    name = f"dict[{key.name},{value.name}]"
    venc, vdec = value.enc, value.dec
    if key_tp is str:  # a JSON object
        return _Codec(
            name,
            None if venc is None else (lambda v: {k: venc(x) for k, x in v.items()}),
            None if vdec is None else (lambda v: {k: vdec(x) for k, x in v.items()}),
        )
    # Other keys (tuples, numbers): a list of [key, value] pairs.
    kenc = key.enc or (lambda k: k)
    kdec = key.dec or (lambda k: k)
    venc_ = venc or (lambda x: x)
    vdec_ = vdec or (lambda x: x)
    return _Codec(
        name,
        lambda v: [[kenc(k), venc_(x)] for k, x in v.items()],
        lambda v: {kdec(k): vdec_(x) for k, x in v},
    )


def _record(owner: type, names: list[str], codecs: list[_Codec], kind: str) -> tuple[str, Any, Any]:
    """The name and the (positional) row encoder and decoder of a record with these fields."""
    name = f"{kind}:{owner.__module__}.{owner.__qualname__}{{" + ",".join(
        f"{n}:{c.name}" for n, c in zip(names, codecs, strict=True)) + "}"
    n = len(names)
    get = operator.attrgetter(*names) if n > 1 else (lambda o: (getattr(o, names[0]),) if n else ())
    encs = [(i, c.enc) for i, c in enumerate(codecs) if c.enc is not None]
    decs = [(i, c.dec) for i, c in enumerate(codecs) if c.dec is not None]

    def enc_row(obj: Any) -> Any:
        if type(obj) is not owner:  # equality compares classes: a subclass would not come back equal
            raise SnapshotError(f"a {type(obj).__qualname__} where the state declares {owner.__qualname__}")
        if not encs:
            return get(obj)
        row = list(get(obj))
        for i, f in encs:
            row[i] = f(row[i])
        return row

    def dec_row(row: Any) -> list[Any]:
        if len(row) != n:
            raise SnapshotError(f"expected {n} fields for {owner.__qualname__}, found {len(row)}")
        for i, f in decs:
            row[i] = f(row[i])
        return row  # type: ignore[no-any-return]

    return name, enc_row, dec_row


def _dataclass(cls: type) -> _Codec:
    hints = typing.get_type_hints(cls)
    names: list[str] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            # Rebuilt by __init__/__post_init__ from the other fields: only derived data may be.
            if f.compare:
                raise TypeError(f"{cls.__qualname__}.{f.name} is not an __init__ field but takes part in "
                                "equality: the snapshot codec cannot restore it")
            continue
        names.append(f.name)
    codecs = [_codec(hints[n]) for n in names]
    name, enc_row, _ = _record(cls, names, codecs, "dataclass")
    return _Codec(name, enc_row, _construct(cls, codecs))


def _construct(cls: type, codecs: list[_Codec]) -> _Conv:
    """The decoder of a dataclass's row, compiled (as ``dataclasses`` compiles ``__init__``): one
    call that converts each field where it must and builds the instance, rather than a loop over
    the fields per row. A snapshot's rows are mostly records (a task, an agent, a timer), a
    quarter of a million at 1,000,000 events: 0.94-0.96 us a task with the loop, 0.75 compiled."""
    n = len(codecs)
    scope: dict[str, Any] = {"cls": cls, "SnapshotError": SnapshotError}
    args = []
    for i, c in enumerate(codecs):
        if c.dec_some is not None:
            scope[f"d{i}"] = c.dec_some
            args.append(f"None if r[{i}] is None else d{i}(r[{i}])")
        elif c.dec is not None:
            scope[f"d{i}"] = c.dec
            args.append(f"d{i}(r[{i}])")
        else:
            args.append(f"r[{i}]")
    scope["wrong"] = f"expected {n} fields for {cls.__qualname__}, found "
    source = (f"def dec(r):\n"
              f"    if len(r) != {n}:\n"
              f"        raise SnapshotError(wrong + str(len(r)))\n"
              f"    return cls({', '.join(args)})\n")
    exec(source, scope)  # the source is built above from field positions only
    return scope["dec"]  # type: ignore[no-any-return]


def _model(cls: type[BaseModel]) -> _Codec:
    if cls.__private_attributes__:
        raise TypeError(f"{cls.__qualname__} has private attributes: the snapshot codec cannot restore them")
    if cls.model_config.get("extra") == "allow":
        raise TypeError(f"{cls.__qualname__} allows extra fields: the snapshot codec cannot restore them")
    names = list(cls.model_fields)
    codecs = [_codec(info.annotation) for info in cls.model_fields.values()]
    name, enc_row, dec_row = _record(cls, names, codecs, "model")
    bit = {n: 1 << i for i, n in enumerate(names)}

    # [fields..., the fields set as a bit mask]: model_fields_set is part of what model_dump
    # (exclude_unset) and the model's copy give, so it comes back too.
    def enc(obj: Any) -> Any:
        row = list(enc_row(obj))
        row.append(sum(bit[n] for n in obj.model_fields_set))
        return row

    def dec(row: Any) -> Any:
        mask = row[-1]
        values = dec_row(row[:-1])
        fields_set = {n for n in names if mask & bit[n]}
        return cls.model_construct(fields_set, **dict(zip(names, values, strict=True)))

    return _Codec(name, enc, dec)


_SNAPSHOT = _codec(DeciderSnapshot)
_SCHEMA = hashlib.sha256(_SNAPSHOT.name.encode()).hexdigest()[:32]


def schema_digest() -> str:
    """The digest of the snapshot's schema (every field's name and type); a body of another is refused."""
    return _SCHEMA


# -- bytes -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """No cyclic garbage collection while a snapshot is written or read.

    Both build hundreds of thousands of acyclic containers next to a large live state, and each
    few hundred allocations would start a collection that walks it (measured on a 44,000-event
    state: decode 0.13-0.18 s without, 0.30-0.65 s with the default thresholds). Nothing built
    here can form a cycle, so there is nothing for a collection to find.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()



# Where the outcome index sits in a DeciderSnapshot's row, and ``seen`` in a PoolState's.
_OUTCOMES_AT = [f.name for f in dataclasses.fields(DeciderSnapshot) if f.init].index("outcomes")
_SEEN_AT = [f.name for f in dataclasses.fields(PoolState) if f.init].index("seen")
# A body begins with a mark no JSON text begins with (formats 2 and older were JSON alone), then
# the length of its JSON header.
_MARK = b"\x00abs"
_HEADER_LENGTH = struct.Struct("<4sQ")
_INT64 = 8
_SWAP = sys.byteorder != "little"  # the sections' integers are little-endian on every machine


def dump(snapshot: DeciderSnapshot) -> bytes:
    """The snapshot's bytes, uncompressed: a copy, so the state may change once it returns.

    The part that must run where the state is owned (it reads every object); ``pack`` may run
    elsewhere (another thread)."""
    assert _SNAPSHOT.enc is not None
    cols = snapshot.outcomes
    try:
        with _no_collection():
            # Each pool without its seen ids (written as runs below, not listed first and then
            # replaced): a shallow copy, the other fields are the state's own objects.
            states = {pool: dataclasses.replace(state, seen=set()) for pool, state in snapshot.states.items()}
            tree = _SNAPSHOT.enc(DeciderSnapshot(snapshot.partition, snapshot.position, states,
                                                 OutcomeColumns(), snapshot.open))
            tree[_OUTCOMES_AT] = None
            for pool, row in tree[2].items():
                row[_SEEN_AT] = _seen_runs(snapshot.states[pool].seen, cols.ids)
            meta, sections = _columns(cols)
            header = orjson.dumps({"format": FORMAT, "schema": _SCHEMA, "snapshot": tree, "columns": meta})
            return b"".join([_HEADER_LENGTH.pack(_MARK, len(header)), header, *sections])
    except SnapshotError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:  # orjson or array: a value they cannot hold
        raise SnapshotError(f"the state cannot be written as a snapshot: {exc}") from exc


def _seen_runs(seen: set[str], ids: list[str]) -> list[list[Any]]:
    """A pool's ``seen`` as ``[runs, others]``: ``runs`` flat (start, length, start, length, ...)
    over the places in the index's ``ids`` of the ids it holds (as decided: long runs), ``others``
    those the index does not hold (the command whose outcome is still open), sorted."""
    # One byte per id of the index, 1 where the pool saw it: the runs are then found by searching
    # bytes, not by looking each id up (a million lookups in a random order take 0.7 s).
    held = bytes(map(seen.__contains__, ids))
    runs: list[int] = []
    start = held.find(1)
    while start >= 0:
        end = held.find(0, start)
        if end < 0:
            end = len(held)
        runs += (start, end - start)
        start = held.find(1, end)
    return [runs, sorted(seen.difference(ids))]


def _columns(cols: OutcomeColumns) -> tuple[dict[str, Any], list[bytes]]:
    """The outcome index as the header's part (how many, how its ids are written, its digests by
    position) and the binary sections: the ids one per line (UTF-8), then the offsets and the counts
    as little-endian signed 64-bit integers. Ids a line cannot hold (a newline in a client's key) go
    in the header as a JSON list instead."""
    n = len(cols.ids)
    meta: dict[str, Any] = {"n": n, "digests": [[i, d] for i, d in enumerate(cols.digests) if d is not None]}
    lines = "\n".join(cols.ids)
    ids = b""
    if n and lines.count("\n") != n - 1:
        meta["ids"] = cols.ids
    else:
        try:
            ids = lines.encode()
        except UnicodeEncodeError:  # a lone surrogate: orjson refuses it with the header, by name
            meta["ids"] = cols.ids
    meta["ids_bytes"] = len(ids)
    offsets, counts = array.array("q", cols.offsets), array.array("q", cols.counts)
    if _SWAP:
        offsets.byteswap()
        counts.byteswap()
    return meta, [ids, offsets.tobytes(), counts.tobytes()]


def pack(raw: bytes) -> bytes:
    """The stored body of ``dump``'s bytes: lz4-compressed."""
    return bytes(lz4.frame.compress(raw))


def encode(snapshot: DeciderSnapshot) -> bytes:
    """The stored body of ``snapshot``: ``pack(dump(snapshot))``."""
    return pack(dump(snapshot))


def decode(body: bytes) -> DeciderSnapshot:
    """The snapshot of a stored body. Raises ``SnapshotError`` saying why it cannot be used."""
    with _no_collection():
        return _decode(body)


def _decode(body: bytes) -> DeciderSnapshot:
    try:
        raw = lz4.frame.decompress(body)
    except (RuntimeError, ValueError, TypeError, EOFError) as exc:
        raise SnapshotError(f"the body is not lz4-compressed: {exc}") from exc
    data, sections = _header(raw)
    if type(data) is not dict:
        raise SnapshotError("the body is not a snapshot (no header)")
    if data.get("format") != FORMAT:
        raise SnapshotError(f"snapshot format {data.get('format')!r}, this version reads {FORMAT}")
    if data.get("schema") != _SCHEMA:
        raise SnapshotError(f"snapshot of another state schema ({data.get('schema')!r}, this version's is "
                            f"{_SCHEMA}): the state's fields changed since it was written")
    assert _SNAPSHOT.dec is not None
    try:
        tree = data["snapshot"]
        columns = _read_columns(data["columns"], sections)
        # Put back what the sections hold; a tree of another shape is named by the codec below.
        if type(tree) is list and len(tree) > _OUTCOMES_AT:
            tree[_OUTCOMES_AT] = list(columns)
            for row in tree[2].values() if type(tree[2]) is dict else ():
                if type(row) is list and len(row) > _SEEN_AT:
                    row[_SEEN_AT] = _read_seen(row[_SEEN_AT], columns[0])
        out = _SNAPSHOT.dec(tree)
    except SnapshotError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise SnapshotError(f"the snapshot does not decode: {exc!r}") from exc
    if type(out) is not DeciderSnapshot:  # pragma: no cover - the codec builds the declared type
        raise SnapshotError("the body is not a decider snapshot")
    return out


def _header(raw: bytes) -> tuple[Any, memoryview]:
    """The JSON header and the sections after it. A body of format 2 or older is JSON alone: its
    header is the whole (and its format is named in the refusal)."""
    try:
        if raw[:1] == b"{":
            return orjson.loads(raw), memoryview(b"")
        if len(raw) < _HEADER_LENGTH.size or raw[:len(_MARK)] != _MARK:
            raise SnapshotError("the body is not a snapshot (no header)")
        _, n = _HEADER_LENGTH.unpack_from(raw)
        end = _HEADER_LENGTH.size + n
        if end > len(raw):
            raise SnapshotError(f"the body is cut short: a header of {n} bytes in {len(raw)}")
        view = memoryview(raw)
        return orjson.loads(view[_HEADER_LENGTH.size:end]), view[end:]
    except orjson.JSONDecodeError as exc:
        raise SnapshotError(f"the body's header is not JSON: {exc}") from exc


def _read_columns(meta: dict[str, Any], sections: memoryview,
                  ) -> tuple[list[str], list[int], list[int], list[str | None]]:
    n, size = meta["n"], meta["ids_bytes"]
    if type(n) is not int or type(size) is not int or n < 0 or size < 0:
        raise SnapshotError("the outcome columns' sizes are not counts")
    if len(sections) != size + 2 * n * _INT64:
        raise SnapshotError(f"the outcome columns take {len(sections)} bytes, not the "
                            f"{size + 2 * n * _INT64} {n} entries need")
    if "ids" in meta:
        ids = meta["ids"]
        if type(ids) is not list or not all(type(x) is str for x in ids):
            raise SnapshotError("the outcome ids are not a list of strings")
    else:
        ids = str(sections[:size], "utf-8").split("\n") if n else []
    if len(ids) != n:
        raise SnapshotError(f"{len(ids)} outcome ids where the header says {n}")
    columns = []
    for start in (size, size + n * _INT64):
        column = array.array("q")
        column.frombytes(sections[start:start + n * _INT64])
        if _SWAP:
            column.byteswap()
        columns.append(column.tolist())
    digests: list[str | None] = [None] * n
    for i, digest in meta["digests"]:
        if type(i) is not int or not 0 <= i < n or type(digest) is not str:
            raise SnapshotError(f"an outcome digest at {i!r} of {n}")
        digests[i] = digest
    return ids, columns[0], columns[1], digests


def _read_seen(value: Any, ids: list[str]) -> list[str]:
    """A pool's ``seen`` from ``_seen_runs``'s form."""
    runs, others = value
    if type(runs) is not list or len(runs) % 2 or type(others) is not list:
        raise SnapshotError("a pool's seen command ids are not runs and ids")
    n = len(ids)
    out: list[str] = []
    for k in range(0, len(runs), 2):
        start, length = runs[k], runs[k + 1]
        if type(start) is not int or type(length) is not int or start < 0 or length < 1 or start + length > n:
            raise SnapshotError(f"a run of seen command ids ({start!r}, {length!r}) outside the {n} "
                                "outcome ids")
        out += ids[start:start + length]
    if not all(type(x) is str for x in others):
        raise SnapshotError("a pool's other seen command ids are not strings")
    out += others
    return out
