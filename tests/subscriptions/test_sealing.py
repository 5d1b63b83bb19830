"""Sealing: a secret the log keeps opens only with the deployment's key, for what it was sealed for."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from services.runtime.sealing import KEY_FILE, Sealer, SealError, new_key, sealer_for

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_a_sealed_secret_opens_for_its_context_only() -> None:
    sealer = Sealer.from_text(new_key())
    sealed = sealer.seal(SECRET, context="subscription:a")
    assert SECRET not in sealed and SECRET.removeprefix("whsec_") not in sealed
    assert sealer.open(sealed, context="subscription:a") == SECRET
    # Deterministic: a retried request seals to the same command.
    assert sealer.seal(SECRET, context="subscription:a") == sealed
    assert sealer.seal(SECRET, context="subscription:b") != sealed
    with pytest.raises(SealError, match="does not open for 'subscription:b'"):
        sealer.open(sealed, context="subscription:b")


def test_an_altered_text_or_another_key_does_not_open_and_says_which_key() -> None:
    one, two = Sealer.from_text(new_key()), Sealer.from_text(new_key())
    sealed = one.seal(SECRET, context="c")
    head, body = sealed.rsplit(":", 1)
    flipped = body[:5] + ("A" if body[5] != "A" else "B") + body[6:]
    with pytest.raises(SealError, match="does not open"):
        one.open(f"{head}:{flipped}", context="c")
    other_key = f"sealed with key {one.key_id}, but this process has key {two.key_id}"
    with pytest.raises(SealError, match=other_key):
        two.open(sealed, context="c")
    with pytest.raises(SealError, match="not a sealed secret"):
        one.open(SECRET, context="c")


def test_without_a_configured_key_one_is_made_once_in_the_data_dir_readable_by_its_owner_only(
        tmp_path: Path) -> None:
    first = sealer_for(None, tmp_path / "data")
    path = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = sealer_for(None, tmp_path / "data")
    assert again.key_id == first.key_id
    assert again.open(first.seal(SECRET, context="c"), context="c") == SECRET
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]  # no temporary file left behind


def test_a_configured_key_wins_and_a_malformed_one_is_refused(tmp_path: Path) -> None:
    key = new_key()
    assert sealer_for(key, tmp_path).key_id == Sealer.from_text(key).key_id
    assert not (tmp_path / KEY_FILE).exists()
    with pytest.raises(SealError, match="AGENTBUS_SECRET_KEY must be 64 bytes"):
        sealer_for("c2hvcnQ=", tmp_path)
