"""Audit: what the log held at a moment, and why things happened.

``as_of`` rebuilds a pool's read models up to a position or a time (``PointInTime`` keeps the last
few) so the live endpoints' queries answer what they answered then; ``history`` lists the events
about a task with the command, the coordinator's decision and the timer behind each. They only
read the log (and, for a rebuild, write a private read model of their own); nothing here decides.
``backup`` copies a running deployment, verifies its copies and restores them into a new data
directory. ``checkpoints`` signs the events topic's chain heads (Ed25519; the key never enters the
log) and ``verify`` recomputes the chain over a log or an export file and checks the checkpoints a
key signed.
"""

from services.audit.as_of import (
    AsOf,
    AsOfBeyondEnd,
    AsOfError,
    AsOfTooFar,
    LogAsOf,
    PointInTime,
    parse_as_of,
    resolve,
)
from services.audit.backup import BackupError, create_backup, list_backups, verify_backup
from services.audit.checkpoints import AuditKeyError, key_id, load_private_key, load_public_key
from services.audit.history import task_history
from services.audit.restore import restore_backup
from services.audit.verify import AuditReport, verify_export_audit, verify_log_audit

__all__ = [
    "AsOf",
    "AsOfBeyondEnd",
    "AsOfError",
    "AsOfTooFar",
    "AuditKeyError",
    "AuditReport",
    "BackupError",
    "LogAsOf",
    "PointInTime",
    "create_backup",
    "key_id",
    "list_backups",
    "load_private_key",
    "load_public_key",
    "parse_as_of",
    "resolve",
    "restore_backup",
    "task_history",
    "verify_backup",
    "verify_export_audit",
    "verify_log_audit",
]
