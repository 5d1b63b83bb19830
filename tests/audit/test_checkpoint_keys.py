"""Which checkpoints `agentbus audit verify --key` (and GET /v1/audit/verify) checks, and which it only
lists: after a key rotation each key vouches for its own checkpoints; a checkpoint appended with a
signature that does not verify is ignored and reported, never a failure the log keeps for ever; and a
check `--from` an offset past the last checkpoint still finds the one below it.

Every log is written by the real service on a real SQLite file; the checkpoints are made by
`agentbus audit checkpoint` with keys from `agentbus audit keygen`, or posted as commands over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import pytest

from contracts import SYSTEM_POOL
from events import open_log
from services.audit.checkpoints import key_id, load_private_key, load_public_key, read_heads, sign
from services.runtime.settings import ENV_PREFIX
from tests.audit.test_chain_verify import cli, rows, verify_json
from tests.audit.test_checkpoints import checkpoint, keys, service, settle
from tests.auth.conftest import deployment

JUNK = base64.b64encode(bytes(64)).decode()


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings and the CLI read AGENTBUS_*; a developer's shell must not leak into the tests."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) and not name.startswith(f"{ENV_PREFIX}TEST_"):
            monkeypatch.delenv(name)


def _tasks(client: object, *ids: str) -> None:
    for task_id in ids:
        resp = client.post("/v1/tasks", params={"wait": "true"},  # type: ignore[attr-defined]
                           json={"task_id": task_id, "type": "x"})
        assert resp.status_code == 201, resp.text


def test_after_a_key_rotation_each_key_verifies_its_own_checkpoints(tmp_path: Path) -> None:
    old_private, old_public = keys(tmp_path / "old")
    new_private, new_public = keys(tmp_path / "new")
    _, unused = keys(tmp_path / "unused")
    old_id, new_id = key_id(load_public_key(str(old_public))), key_id(load_public_key(str(new_public)))
    data = tmp_path / "data"
    with service(data) as client:
        _tasks(client, "t0", "t1")
        settle(data)
        first = checkpoint(data, old_private)
        _tasks(client, "t2")
        settle(data)
        second = checkpoint(data, new_private)
    for public, own, other, at in ((old_public, old_id, new_id, second), (new_public, new_id, old_id, first)):
        code, report = verify_json("--data-dir", str(data), "--key", str(public))
        assert code == 0 and report["ok"], report
        cps = report["checkpoints"]
        assert (cps["key_id"], cps["found"], cps["verified"]) == (own, 1, 1)
        assert cps["other_keys"] == {other: {"count": 1, "first": {"partition": 0, "offset": at["position"]},
                                             "last": {"partition": 0, "offset": at["position"]}}}
        text = cli("audit", "verify", "--data-dir", str(data), "--key", str(public))
        assert text.exit_code == 0, text.output
        assert f"1 signed by another key, {other}" in text.output and "ok: the chain verifies" in text.output
    # A key that signed none still fails, naming the checkpoints it found and whose they are.
    code, report = verify_json("--data-dir", str(data), "--key", str(unused))
    assert code == 1 and report["checkpoints"]["verified"] == 0
    reason = report["failure"]["reason"]
    assert "no checkpoint signed by this key" in reason and "2 signed by other keys" in reason
    assert (report["failure"]["partition"], report["failure"]["offset"]) == (0, first["position"])


def test_a_checkpoint_with_a_junk_signature_is_ignored_and_reported_not_a_failure_for_ever(
        tmp_path: Path) -> None:
    """The decider cannot check a signature (it holds no key, and the command names its key by id
    only), so a junk one reaches the log; the log cannot be edited, so it must not fail for ever."""
    private, public = keys(tmp_path / "k")
    signer = key_id(load_public_key(str(public)))
    with deployment(tmp_path, audit_public_key=str(public)) as dep:
        heads = {"0": {"position": 0, "chain": "0" * 64}}
        junk = {"type": "RecordAuditCheckpoint", "pool": SYSTEM_POOL,
                "data": {"topic": "events", "heads": heads, "key_id": signer, "signature": JUNK}}
        with dep.client(dep.token("admin")) as client:
            recorded = client.post("/v1/commands", params={"wait": "true"}, json=junk)
            assert recorded.status_code in (200, 201), recorded.text
            junk_at = recorded.json()["events"][0]["position"]
            body = client.get("/v1/audit/verify").json()
            # Nothing vouches for the log yet: not ok, and the failure says why.
            assert body["ok"] is False and body["checkpoints"]["found"] == 1
            assert "its signature does not verify" in body["failure"]["reason"]
        result = cli("audit", "checkpoint", "--data-dir", str(dep.data), "--key", str(private))
        assert result.exit_code == 0, result.output
        with dep.client(dep.token("reader")) as client:
            body = client.get("/v1/audit/verify").json()
        assert body["ok"] is True, body
        cps = body["checkpoints"]
        assert (cps["found"], cps["verified"], cps["ignored_count"]) == (2, 1, 1)
        assert cps["ignored"][0]["offset"] == junk_at
        assert "its signature does not verify" in cps["ignored"][0]["reason"]
    text = cli("audit", "verify", "--data-dir", str(dep.data), "--key", str(public))
    assert text.exit_code == 0, text.output
    assert f"ignored: the checkpoint at events[0]@{junk_at}: its signature does not verify" in text.output


def test_verify_from_past_the_last_checkpoint_checks_the_nearest_one_below(tmp_path: Path) -> None:
    private, public = keys(tmp_path / "k")
    _, other = keys(tmp_path / "other")
    data = tmp_path / "data"
    with service(data) as client:
        _tasks(client, "t0", "t1", "t2")
        settle(data)
        event = checkpoint(data, private)
        _tasks(client, "t3", "t4")
        settle(data)
    start = event["position"] + 3
    code, report = verify_json("--data-dir", str(data), "--key", str(public), "--from", str(start))
    assert code == 0 and report["ok"], report
    cps = report["checkpoints"]
    assert cps["verified"] == 1 and cps["below_from"] == {"partition": 0, "offset": event["position"]}
    assert cps["last"]["positions"] == {"0": event["data"]["heads"]["0"]["position"]}
    text = cli("audit", "verify", "--data-dir", str(data), "--key", str(public), "--from", str(start))
    assert text.exit_code == 0, text.output
    assert f"the nearest below it, at events[0]@{event['position']}, was checked" in text.output
    # Another key has none, above or below.
    code, report = verify_json("--data-dir", str(data), "--key", str(other), "--from", str(start))
    assert code == 1 and "no checkpoint signed by this key" in report["failure"]["reason"]


def test_a_checkpoint_below_from_still_catches_a_rewritten_stored_chain(tmp_path: Path) -> None:
    """Below --from the chain is taken as stored; the checkpoint found there pins what was stored."""
    private, public = keys(tmp_path / "k")
    data = tmp_path / "data"
    with service(data) as client:
        _tasks(client, "t0", "t1")
        settle(data)

        async def signed_over_another_chain() -> dict[str, object]:
            # A checkpoint whose head does not match the log: what a stored chain rewritten after
            # the signature looks like to a verifier.
            log = open_log(f"sqlite:///{data}/log.db")
            await log.start()
            try:
                heads = await read_heads(log, "events")
            finally:
                await log.close()
            heads["0"] = heads["0"].model_copy(update={"chain": "ab" * 32})
            return sign(load_private_key(str(private)), "events", heads).model_dump()

        body = {"type": "RecordAuditCheckpoint", "pool": SYSTEM_POOL,
                "data": asyncio.run(signed_over_another_chain())}
        recorded = client.post("/v1/commands", params={"wait": "true"}, json=body)
        assert recorded.status_code in (200, 201), recorded.text
        _tasks(client, "t2")
        settle(data)
    position = recorded.json()["events"][0]["position"]
    assert len(rows(data / "log.db", 0)) > position + 2
    code, report = verify_json("--data-dir", str(data), "--key", str(public), "--from", str(position + 2))
    assert code == 1 and "was rewritten" in report["failure"]["reason"], report
