"""Signed audit checkpoints: made by `agentbus audit checkpoint` (or the service, periodically),
recorded by the real decider, checked by `agentbus audit verify --key` and GET /v1/audit/verify.

The one thing only a checkpoint can catch: a history rewritten with its chain recomputed passes a
plain verification, and fails at the checkpoint with the key. So does a log cut short, and a
checkpoint that was altered or signed by another key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from contracts import SYSTEM_POOL, Reason
from contracts import commands as c
from contracts import event_types as e
from contracts.commands import AuditHead
from events import partition_for
from services.audit.checkpoints import canonical, key_id, load_private_key, load_public_key, sign
from services.executors.standins.serving import serving
from services.http.app import create_app
from services.runtime.embedded import Runner
from services.runtime.ingest import command_envelope
from services.runtime.settings import ENV_PREFIX, Settings
from tests.audit.test_chain_verify import (
    cli,
    one_byte_changed,
    pool_in,
    rewrite,
    rows,
    verify_json,
    write_history,
)
from tests.auth.conftest import deployment
from tests.gwt import given

CHAIN = "ab" * 32
SIGNATURE = base64.b64encode(bytes(64)).decode()


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings and the CLI read AGENTBUS_*; a developer's shell must not leak into the tests."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) and not name.startswith(f"{ENV_PREFIX}TEST_"):
            monkeypatch.delenv(name)


def keys(directory: Path) -> tuple[Path, Path]:
    """A key pair made by `agentbus audit keygen`."""
    result = cli("audit", "keygen", "--out", str(directory))
    assert result.exit_code == 0, result.output
    return directory / "audit-key.pem", directory / "audit-key.pub.pem"


@contextlib.contextmanager
def service(data: Path, **settings: Any) -> Iterator[httpx.Client]:
    """The embedded service on ``data``, served on a real socket, and a client of it."""
    app = create_app(settings=Settings(data_dir=data, **settings))
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def checkpoint(data: Path, key: Path) -> dict[str, Any]:
    """`agentbus audit checkpoint`: the event the running service recorded."""
    result = cli("audit", "checkpoint", "--data-dir", str(data), "--key", str(key))
    assert result.exit_code == 0, result.output
    event: dict[str, Any] = orjson.loads(result.stdout)
    assert event["type"] == "AuditCheckpointRecorded", event
    return event


def settle(data: Path, quiet: float = 0.5, timeout: float = 20.0) -> None:
    """Until the service's events stop growing (the coordinator's reactions to a write included)."""
    query = 'SELECT "partition", MAX("offset") FROM records WHERE topic = \'events\' GROUP BY "partition"'
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the log never settled"
        with sqlite3.connect(data / "log.db") as conn:
            now = sorted(conn.execute(query))
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.05)


# -- the decider -----------------------------------------------------------------------------------


def _cmd(**heads: AuditHead) -> c.RecordAuditCheckpoint:
    return c.RecordAuditCheckpoint(topic="events", heads=heads, key_id="0f" * 16, signature=SIGNATURE)


def test_the_decider_records_a_checkpoint_as_signed_in_the_system_pool_only() -> None:
    head = AuditHead(position=7, chain=CHAIN)
    cmd = _cmd(**{"0": head, "1": AuditHead(position=0, chain="0" * 64)})
    given(pool=SYSTEM_POOL).when(cmd).then(e.AuditCheckpointRecorded(
        topic="events", heads=cmd.heads, key_id=cmd.key_id, algorithm="ed25519", signature=SIGNATURE))
    given().when(_cmd(**{"0": head})).rejects(Reason.NOT_SYSTEM_POOL, key_id="0f" * 16, pool="default")


@pytest.mark.parametrize("keys_", [("1",), ("0", "2"), ("00",), ("0", "x"), ("-1",), ("0", "1", "1 ")])
def test_the_decider_wants_one_head_per_partition_numbered_from_0(keys_: tuple[str, ...]) -> None:
    cmd = _cmd(**{k: AuditHead(position=1, chain=CHAIN) for k in keys_})
    given(pool=SYSTEM_POOL).when(cmd).rejects(Reason.INVALID_COMMAND, key_id="0f" * 16)


@pytest.mark.parametrize(("field", "value"), [("key_id", "0f" * 15), ("key_id", "0F" * 16),
                                               ("signature", "A" * 87 + "="), ("topic", "a b"),
                                               ("heads", {}), ("algorithm", "rsa")])
def test_a_checkpoint_of_the_wrong_shape_is_refused_before_the_log(field: str, value: Any) -> None:
    good = {"topic": "events", "heads": {"0": {"position": 1, "chain": CHAIN}}, "key_id": "0f" * 16,
            "signature": SIGNATURE}
    c.RecordAuditCheckpoint.model_validate(good)
    with pytest.raises(ValueError, match=field):
        c.RecordAuditCheckpoint.model_validate({**good, field: value})
    with pytest.raises(ValueError, match="chain"):
        c.RecordAuditCheckpoint.model_validate({**good, "heads": {"0": {"position": 1, "chain": "ab"}}})


# -- keys ------------------------------------------------------------------------------------------


def test_keygen_writes_a_pair_the_private_key_readable_by_its_owner_only(tmp_path: Path) -> None:
    private, public = keys(tmp_path / "k")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = load_private_key(str(private))
    assert key_id(load_public_key(str(public))) == key_id(key)
    again = cli("audit", "keygen", "--out", str(tmp_path / "k"))
    assert again.exit_code == 1 and "never overwrites" in again.output
    assert load_private_key(str(private)).private_bytes_raw() == key.private_bytes_raw()
    # A signature covers exactly the canonical bytes: sorted keys, no spaces.
    cmd = sign(key, "events", {"0": AuditHead(position=3, chain=CHAIN)})
    doc = canonical("events", cmd.heads, cmd.key_id)
    assert doc == orjson.dumps({"heads": {"0": {"chain": CHAIN, "position": 3}}, "key_id": cmd.key_id,
                                "topic": "events"})
    key.public_key().verify(base64.b64decode(cmd.signature), doc)


def test_a_bad_key_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    private, public = keys(tmp_path / "k")
    data = tmp_path / "data"
    asyncio.run(write_history(data, per_pool=2))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    for args, message in [
        (("verify", "--key", str(tmp_path / "absent.pem")), "no such file"),
        (("verify", "--key", str(garbage)), "not a PEM public key"),
        (("verify", "--key", str(rsa_key)), "not Ed25519"),
        (("verify", "--key", str(tmp_path)), "is a directory"),
        (("checkpoint", "--key", str(public)), "not a PEM private key"),
        (("checkpoint", "--key", str(garbage)), "not a PEM private key"),
        (("checkpoint", "--key", str(rsa_key)), "not Ed25519"),
    ]:
        result = cli("audit", *args, "--data-dir", str(data))
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, (args, result.output)
    none = cli("audit", "checkpoint", "--data-dir", str(data))
    assert none.exit_code == 2 and "AGENTBUS_AUDIT_KEY" in none.output
    # The private key's text is never echoed back, even when it is the thing that is wrong.
    assert "MC4CAQAw" in private.read_text()
    pem = private.read_text().replace("MC4CAQAw", "MC4CAQA")
    result = cli("audit", "checkpoint", "--data-dir", str(data), "--key", pem)
    assert result.exit_code == 1 and "not a PEM private key" in result.output
    assert pem.strip().splitlines()[1] not in result.output


# -- signing and verifying -------------------------------------------------------------------------


def test_a_checkpoint_verifies_with_its_key_and_fails_with_another(tmp_path: Path) -> None:
    private, public = keys(tmp_path / "k")
    _, other = keys(tmp_path / "other")
    data = tmp_path / "data"
    with service(data) as client:
        for i in range(5):
            assert client.post("/v1/tasks", params={"wait": "true"},
                               json={"task_id": f"t{i}", "type": "x"}).status_code == 201
        nothing = cli("audit", "verify", "--data-dir", str(data), "--key", str(public))
        assert nothing.exit_code == 1 and "no checkpoint signed by this key" in nothing.output
        settle(data)
        event = checkpoint(data, private)
    signer = key_id(load_public_key(str(public)))
    assert event["pool"] == SYSTEM_POOL and event["data"]["key_id"] == signer
    assert event["data"]["heads"]["0"]["position"] == event["position"]  # signed just before it
    # The heads are the log's: the stored chain value of the record just below each position.
    records = rows(data / "log.db", 0)
    assert event["data"]["heads"]["0"]["chain"] == records[event["position"] - 1][4].hex()
    ok = cli("audit", "verify", "--data-dir", str(data), "--key", str(public))
    assert ok.exit_code == 0, ok.output
    assert f"checkpoints signed by key {signer}: 1 verified of 1 found" in ok.output
    # The private key verifies too (its public half), and never reached the log.
    assert cli("audit", "verify", "--data-dir", str(data), "--key", str(private)).exit_code == 0
    assert private.read_bytes().splitlines()[1] not in (data / "log.db").read_bytes()
    code, report = verify_json("--data-dir", str(data), "--key", str(other))
    assert code == 1
    assert f"signed by key {signer}, not by key {key_id(load_public_key(str(other)))}" in \
        report["failure"]["reason"]
    assert (report["failure"]["partition"], report["failure"]["offset"]) == (0, event["position"])


def test_a_history_rewritten_with_its_chain_recomputed_fails_at_the_checkpoint(tmp_path: Path) -> None:
    private, public = keys(tmp_path / "k")
    data = tmp_path / "data"
    with service(data) as client:
        for i in range(6):
            assert client.post("/v1/tasks", params={"wait": "true"},
                               json={"task_id": f"t{i}", "type": "x"}).status_code == 201
        event = checkpoint(data, private)
        assert client.post("/v1/tasks", params={"wait": "true"},
                           json={"task_id": "after", "type": "x"}).status_code == 201
    db = data / "log.db"
    position = event["data"]["heads"]["0"]["position"]
    signed = event["data"]["heads"]["0"]["chain"]
    at = position // 2
    rewrite(db, 0, at, one_byte_changed(rows(db, 0)[at][1]))
    plain = cli("audit", "verify", "--data-dir", str(data))
    assert plain.exit_code == 0, plain.output  # the chain alone cannot tell
    code, report = verify_json("--data-dir", str(data), "--key", str(public))
    assert code == 1 and report["mismatch"] is None
    failure = report["failure"]
    assert (failure["partition"], failure["offset"]) == (0, position - 1)
    assert failure["expected"] == signed and failure["found"] == rows(db, 0)[position - 1][4].hex() != signed
    assert "was rewritten" in failure["reason"]
    text = cli("audit", "verify", "--data-dir", str(data), "--key", str(public))
    assert f"FAILED at events[0]@{position - 1}" in text.output and f"expected: {signed}" in text.output


def test_an_altered_checkpoint_fails_its_signature(tmp_path: Path) -> None:
    private, public = keys(tmp_path / "k")
    data = tmp_path / "data"
    with service(data) as client:
        assert client.post("/v1/tasks", params={"wait": "true"},
                           json={"task_id": "t", "type": "x"}).status_code == 201
        event = checkpoint(data, private)
    db = data / "log.db"
    stored = rows(db, 0)[event["position"]][1]
    # Moving the signed position back, chain recomputed: the signature no longer covers it.
    position = event["data"]["heads"]["0"]["position"]
    altered = stored.replace(f'"position":{position},'.encode(), f'"position":{position - 1},'.encode())
    assert altered != stored
    rewrite(db, 0, event["position"], altered)
    assert cli("audit", "verify", "--data-dir", str(data)).exit_code == 0
    code, report = verify_json("--data-dir", str(data), "--key", str(public))
    assert code == 1 and "its signature does not verify" in report["failure"]["reason"]
    assert (report["failure"]["partition"], report["failure"]["offset"]) == (0, event["position"])


def test_a_log_cut_short_fails_at_the_checkpoint(tmp_path: Path) -> None:
    private, public = keys(tmp_path / "k")
    data = tmp_path / "data"
    other = 1 - partition_for(SYSTEM_POOL, 2)
    pool = pool_in(other, 2)
    with service(data, partitions=2) as client:
        for i in range(4):
            assert client.post("/v1/tasks", params={"wait": "true", "pool": pool},
                               json={"task_id": f"t{i}", "type": "x"}).status_code == 201
        event = checkpoint(data, private)
    db = data / "log.db"
    end = event["data"]["heads"][str(other)]["position"]
    assert 0 < end <= len(rows(db, other))
    with sqlite3.connect(db) as conn:  # the other partition cut back to below what was signed
        conn.execute('DELETE FROM records WHERE topic = \'events\' AND "partition" = ? AND "offset" >= ?',
                     (other, end - 1))
    assert cli("audit", "verify", "--data-dir", str(data)).exit_code == 0  # the chain alone cannot tell
    code, report = verify_json("--data-dir", str(data), "--key", str(public))
    assert code == 1
    failure = report["failure"]
    assert (failure["partition"], failure["offset"]) == (other, end - 1) and failure["found"] is None
    assert "records were removed from the end" in failure["reason"]


def test_an_export_carries_its_checkpoints(tmp_path: Path) -> None:
    private, public = keys(tmp_path / "k")
    _, other = keys(tmp_path / "other")
    data = tmp_path / "data"
    with service(data) as client:
        assert client.post("/v1/tasks", params={"wait": "true"},
                           json={"task_id": "t", "type": "x"}).status_code == 201
        checkpoint(data, private)
    export = tmp_path / "events.ndjson.lz4"
    assert cli("events", "export", str(export), "--data-dir", str(data)).exit_code == 0
    ok = cli("audit", "verify", "--file", str(export), "--key", str(public))
    assert ok.exit_code == 0 and "1 verified of 1 found" in ok.output, ok.output
    code, report = verify_json("--file", str(export), "--key", str(other))
    assert code == 1 and "not by key" in report["failure"]["reason"]


def test_the_service_checkpoints_periodically_when_the_log_moved(tmp_path: Path) -> None:
    private, public = keys(tmp_path / "k")
    data = tmp_path / "data"

    async def go() -> tuple[int, int]:
        # AGENTBUS_AUDIT_KEY may be the PEM itself.
        runner = Runner(Settings(data_dir=data, audit_key=private.read_text(), audit_checkpoint_every_s=0.2))
        await runner.start()
        try:
            await runner.ready()
            for i in range(3):
                await runner.submit(command_envelope(c.SubmitTask(task_id=f"t{i}", type="x")))
            # Once the log stops moving, so do the checkpoints: a tick that finds only the last
            # checkpoint after the heads it signed appends nothing (else this never settles).
            first = await _settled(runner, 0)
            await runner.submit(command_envelope(c.SubmitTask(task_id="more", type="x")))
            return first, await _settled(runner, first)
        finally:
            await runner.stop()

    first, moved = asyncio.run(go())
    assert first >= 1 and moved > first
    ok = cli("audit", "verify", "--data-dir", str(data), "--key", str(public))
    assert ok.exit_code == 0 and f"{moved} verified of {moved} found" in ok.output, ok.output

    bad = Settings(data_dir=tmp_path / "bad", audit_key=str(tmp_path / "absent.pem"),
                   audit_checkpoint_every_s=1)

    async def refused() -> None:
        runner = Runner(bad)
        try:
            await runner.start()
        finally:
            await runner.stop()

    with pytest.raises(ValueError, match="AGENTBUS_AUDIT_KEY: no such file"):
        asyncio.run(refused())


async def _recorded(runner: Runner) -> list[Any]:
    recs = await runner.log.read("events", 0, 0, 10_000)
    return [r for r in recs if b'"type":"AuditCheckpointRecorded"' in r.value]


async def _settled(runner: Runner, before: int, quiet: float = 1.0, timeout: float = 20.0) -> int:
    """The number of checkpoints on the log once it is more than ``before`` and stays the same for
    ``quiet`` seconds (five periods)."""
    deadline = time.monotonic() + timeout
    count, since = len(await _recorded(runner)), time.monotonic()
    while count <= before or time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"the checkpoints never settled ({count} after {before})"
        await asyncio.sleep(0.05)
        now = len(await _recorded(runner))
        if now != count:
            count, since = now, time.monotonic()
    return count


def test_http_verify_checks_the_checkpoints_with_the_servers_public_key(tmp_path: Path) -> None:
    private, public = keys(tmp_path / "k")
    _, other = keys(tmp_path / "other")
    signer = key_id(load_public_key(str(public)))
    with deployment(tmp_path, audit_public_key=str(public)) as dep:
        admin, reader, operator = dep.token("admin"), dep.token("reader"), dep.token("operator")
        with dep.client(reader) as client:
            # With a key, as with `verify --key`, a log no checkpoint vouches for is not verified.
            body = client.get("/v1/audit/verify").json()
            assert body["ok"] is False and body["mismatch"] is None and body["checkpoints"]["found"] == 0
            assert "no checkpoint signed by this key" in body["failure"]["reason"]
        result = cli("audit", "checkpoint", "--data-dir", str(dep.data), "--key", str(private))
        assert result.exit_code == 0, result.output
        with dep.client(reader) as client:
            body = client.get("/v1/audit/verify").json()
            assert body["ok"] is True, body
            assert body["checkpoints"]["key_id"] == signer and body["checkpoints"]["verified"] == 1
            assert client.get("/v1/audit/verify", params={"key_id": signer}).json()["ok"] is True
            wrong = client.get("/v1/audit/verify", params={"key_id": key_id(load_public_key(str(other)))})
            assert wrong.status_code == 422 and f"checks the signatures of key {signer} only" in wrong.text
        # Recording one takes the admin role: the key is not the server's, but the command is.
        cmd = sign(load_private_key(str(private)), "events", {"0": AuditHead(position=0, chain="0" * 64)})
        body = {"type": "RecordAuditCheckpoint", "pool": SYSTEM_POOL, "data": cmd.model_dump()}
        with dep.client(operator) as client:
            denied = client.post("/v1/commands", json=body)
            assert denied.status_code == 403 and "audit:checkpoint" in denied.text
        with dep.client(admin) as client:
            assert client.post("/v1/commands", params={"wait": "true"}, json=body).status_code in (200, 201)
            body = client.get("/v1/audit/verify").json()
            assert body["ok"] is True and body["checkpoints"]["verified"] == 2
    # Its key, misconfigured, is a 503 saying so (the chain is not answered as verified).
    with deployment(tmp_path / "second", audit_public_key=str(tmp_path / "absent.pem")) as dep, \
            dep.client(dep.token("reader")) as client:
        resp = client.get("/v1/audit/verify")
        assert resp.status_code == 503 and "AGENTBUS_AUDIT_PUBLIC_KEY: no such file" in resp.text


def test_a_checkpoint_of_the_empty_positions_before_any_record_is_genesis(tmp_path: Path) -> None:
    """Position 0 covers nothing: its chain is the chain's start, 32 zero bytes."""
    private, public = keys(tmp_path / "k")
    data = tmp_path / "data"
    with service(data, partitions=2):
        event = checkpoint(data, private)
    empty = str(1 - partition_for(SYSTEM_POOL, 2))
    assert event["data"]["heads"][empty] == {"position": 0, "chain": "0" * 64}
    assert cli("audit", "verify", "--data-dir", str(data), "--key", str(public)).exit_code == 0
    # An export has no line of the empty partition; its head still checks (the chain's start).
    export = tmp_path / "events.ndjson.lz4"
    assert cli("events", "export", str(export), "--data-dir", str(data)).exit_code == 0
    result = cli("audit", "verify", "--file", str(export), "--key", str(public))
    assert result.exit_code == 0 and "1 verified of 1 found" in result.output, result.output
