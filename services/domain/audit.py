"""Command handler for signed audit checkpoints, which live in the pool ``contracts.SYSTEM_POOL``.

A checkpoint pins the events topic's hash chain (``events.chain``): one head per partition, and
an Ed25519 signature over them. The decider holds no key, so it checks the checkpoint's shape
only (one head per partition, numbered 0..n-1 without gaps; the contract bounds the hex, the
counts and the signature's length); whether the signature is good, and whether the heads are the
log's, is for whoever verifies the log with the public key (``services.audit``). The command names
its key by id only, a digest of the public key, so nothing here could check the signature: one that
does not verify is recorded, and verifiers ignore it and report it (``services.audit.verify``).

Pure: no I/O, no clock, no key. A checkpoint changes no state the decider checks.
"""

from __future__ import annotations

from contracts import SYSTEM_POOL, Payload, Reason
from contracts import event_types as e
from contracts.system_commands import RecordAuditCheckpoint
from services.domain.decision import DeciderConfig, Rejected
from services.domain.state import PoolState

__all__ = ["record_checkpoint"]


def record_checkpoint(state: PoolState, cmd: RecordAuditCheckpoint, config: DeciderConfig) -> list[Payload]:
    """The checkpoint, as signed, once its heads name every partition exactly once."""
    if state.pool != SYSTEM_POOL:
        # Verifiers look for checkpoints in the _system pool's partition only.
        raise Rejected(Reason.NOT_SYSTEM_POOL,
                       f"audit checkpoints live in the {SYSTEM_POOL!r} pool, not in {state.pool!r}",
                       key_id=cmd.key_id, pool=state.pool)
    expected = [str(p) for p in range(len(cmd.heads))]
    if sorted(cmd.heads, key=_order) != expected:
        bad = sorted(set(cmd.heads) - set(expected), key=_order)[:5]
        raise Rejected(Reason.INVALID_COMMAND,
                       f"heads must be keyed by partition numbers 0..{len(cmd.heads) - 1}, one each; "
                       f"unexpected keys: {', '.join(map(repr, bad))}", key_id=cmd.key_id)
    return [e.AuditCheckpointRecorded(topic=cmd.topic, heads=dict(cmd.heads), key_id=cmd.key_id,
                                      algorithm=cmd.algorithm, signature=cmd.signature)]


def _order(key: str) -> tuple[int, str]:
    # Numbers first in numeric order ("10" after "9"), anything else after them.
    return (int(key), "") if key.isdecimal() and key.isascii() else (1 << 62, key)
