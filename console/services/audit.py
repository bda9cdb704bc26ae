"""The audit chain's trust, for the console: the signing key (created, checked at start-up, rotated), signed
checkpoints of the chain's head (on a schedule, at export and shutdown, on request) and verification of the chain
against them. The chain itself (append, hash, verify) is ``db.audit``; searching it is
``console.services.audit_search``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import ConsoleError, InvalidInput, StorageUnavailable
from console.services.periodic import PeriodicTask
from console.services.text import required_text
from db import audit as audit_q
from db import audit_verifications as verifications_q

logger = logging.getLogger(__name__)

# ---- the anchor: signed checkpoints ----

_ANCHORS: dict[tuple[Path, Path], audit_q.AuditAnchor] = {}
_ANCHOR_LOCK = threading.Lock()
MAX_ROTATION_REASON_CHARS = 2000


class AuditKeyMissing(StorageUnavailable):
    """The audit key file is gone while checkpoints signed with it exist: restore it or rotate the key."""


def _signed_key_ids(ctx: AppContext) -> set[str]:
    with ctx.db.session(readonly=True) as s:
        ids = {c.key_id for c in audit_q.stored_checkpoints(s)}
    path = ctx.settings.audit_checkpoint_file
    if path.exists():
        ids |= {c.key_id for c in audit_q.read_checkpoint_file(path)[0]}
    return ids


def anchor(ctx: AppContext) -> audit_q.AuditAnchor:
    """The anchor that signs this console's checkpoints.

    Its key file is created (owner-only) only while nothing was signed yet (a new installation). When checkpoints exist and the file is missing, :class:`AuditKeyMissing` says which file
    and how to go on: a silently new key would sign over the old ones, and verification would no longer check them.
    """
    key = (ctx.settings.audit_key_file, ctx.settings.audit_checkpoint_file)
    with _ANCHOR_LOCK:
        found = _ANCHORS.get(key)
        if found is None:
            created = not key[0].exists()
            if created:
                signed = _signed_key_ids(ctx)
                if signed:
                    raise AuditKeyMissing(
                        f"The audit key file {key[0]} is missing, but {len(signed)} key(s) signed the audit "
                        f"checkpoints ({', '.join(sorted(signed))}). Restore the file from your backup (chmod 600), "
                        "or start a new key with `llm-console audit rotate-key --reason TEXT` (recorded in the audit "
                        "log). The console does not start without it.")
            try:
                found = audit_q.AuditAnchor.load(*key)
            except (OSError, ValueError) as exc:
                raise StorageUnavailable(f"The audit key cannot be used: {exc}") from None
            _ANCHORS[key] = found
        return found


def check_key(ctx: AppContext) -> None:
    """At start-up: raise :class:`AuditKeyMissing` (or :class:`StorageUnavailable`) if the audit key cannot sign."""
    with _ANCHOR_LOCK:
        _ANCHORS.pop((ctx.settings.audit_key_file, ctx.settings.audit_checkpoint_file), None)  # look at the file now
    anchor(ctx)


@requires("audit.rotate_key")
def rotate_key(ctx: AppContext, actor: Principal, reason: str) -> dict[str, Any]:
    """Start a new audit key (``llm-console audit rotate-key``); the rotation is an ``audit.key_rotated`` event.

    The old key, when still there, is kept beside it so its checkpoints still verify; a lost one is recorded as
    lost. Returns the event's details."""
    text = required_text(reason, "the reason for the key rotation", MAX_ROTATION_REASON_CHARS, min_len=10)
    key = (ctx.settings.audit_key_file, ctx.settings.audit_checkpoint_file)
    with _ANCHOR_LOCK:
        try:
            new, details = audit_q.rotate_key(ctx.db, key[0], key[1], actor=actor.username, reason=text)
        except (OSError, ValueError) as exc:
            raise StorageUnavailable(f"The audit key cannot be rotated: {exc}") from None
        _ANCHORS[key] = new
    return details


def checkpoint(ctx: AppContext, reason: str) -> audit_q.Checkpoint:
    """Sign the chain's current head now (at export, shutdown, on the schedule, or when asked)."""
    try:
        return anchor(ctx).checkpoint(ctx.db, reason)
    except OperationalError:
        raise StorageUnavailable("The database is busy or unavailable; the checkpoint was not written.") from None


@requires("audit.verify")
def sign_checkpoint(ctx: AppContext, actor: Principal) -> audit_q.Checkpoint:
    """Sign the chain's head now, on request (``llm-console audit checkpoint``); the checkpoint names who asked."""
    return checkpoint(ctx, f"by {actor.username}")


class Checkpointer(PeriodicTask):
    """Signs a checkpoint every ``audit_checkpoint_seconds`` when the chain grew, and one more when it stops.

    With several console replicas, one of them signs each interval's checkpoint (the ``audit-checkpoint`` lease);
    each signs its own at shutdown, covering what it wrote last.
    """

    def __init__(self, ctx: AppContext) -> None:
        super().__init__(ctx.settings.audit_checkpoint_seconds, name="audit-checkpointer", job="audit-checkpoint",
                         db=ctx.db)
        self.ctx = ctx
        self.last_seq: int | None = None

    def run_once(self) -> audit_q.Checkpoint | None:
        audit_q.integrate_pending(self.ctx.db)  # the sweep: events no integrator took yet (batched sequencing)
        with self.ctx.db.session(readonly=True) as s:
            head = audit_q.head_seq(s)
        # Read every round: another replica may have signed since this one last did.
        self.last_seq = audit_q.last_checkpoint_seq(self.ctx.db)
        if head == self.last_seq:
            return None
        cp = checkpoint(self.ctx, "periodic")
        self.last_seq = cp.seq
        return cp

    def stop(self) -> None:
        super().stop()
        try:
            checkpoint(self.ctx, "shutdown")
        except ConsoleError:
            logger.exception("could not sign the audit checkpoint at shutdown")


@requires("audit.verify")
def checkpoints_file(ctx: AppContext, actor: Principal) -> bytes:
    """Every signed checkpoint as JSON Lines, after signing one for the chain as it is now; audited."""
    cp = checkpoint(ctx, "download")
    with ctx.db.session(readonly=True) as s:
        rows = [c.to_dict() for c in audit_q.stored_checkpoints(s)]
    with ctx.db.session() as s:
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="audit.checkpoints_download",
                             details={"checkpoints": len(rows), "head_seq": cp.seq})
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode("utf-8")


MANUAL_TRIGGERS = ("manual", "cli")


@requires("audit.verify")
def verify(ctx: AppContext, actor: Principal, checkpoint_files: Sequence[Path] = (), *,
           trigger: str = "manual") -> audit_q.ChainReport:
    """Verify the chain against the signed checkpoints (the database's, the checkpoint file's, and those in
    ``checkpoint_files``: copies kept elsewhere); the verdict is itself an audit event, and the run is recorded with
    the scheduled ones (``trigger``: ``manual`` from the Audit page, ``cli`` from ``llm-console audit verify``)."""
    if trigger not in MANUAL_TRIGGERS:
        raise InvalidInput(f"A verification asked for by someone is {' or '.join(MANUAL_TRIGGERS)}, not {trigger!r}.")
    for path in checkpoint_files:
        if not path.is_file():
            raise InvalidInput(f"{path} is not a file.")
    started, t0 = ctx.now(), time.perf_counter()
    try:
        report = audit_q.verify_chain(ctx.db, anchor(ctx), checkpoint_files)
    except OperationalError:
        raise StorageUnavailable("The database is busy or unavailable; try verifying again.") from None
    duration_ms = (time.perf_counter() - t0) * 1000.0
    with ctx.db.session() as s:
        run = verifications_q.record_run(s, trigger=trigger, started_at=started, duration_ms=duration_ms,
                                         ok=report.ok, checked=report.checked, kind=report.kind,
                                         first_bad_seq=report.first_bad_seq, reason=report.reason)
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="audit.verify",
                             details={"ok": report.ok, "checked": report.checked, "kind": report.kind,
                                      "first_bad_seq": report.first_bad_seq,
                                      "checkpoints_checked": report.checkpoints_checked,
                                      "anchored_seq": report.anchored_seq,
                                      "checkpoint_files": len(checkpoint_files), "trigger": trigger,
                                      "run_id": run.id, "duration_ms": round(duration_ms, 1)})
    return report
