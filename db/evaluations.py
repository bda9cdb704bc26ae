"""Evaluations of model versions: queued, running (with progress), then done with a report or failed.

Every state change is an audit event in the same transaction (``model.evaluation_started`` when it is asked for,
``model.evaluation_running`` when a process takes it, ``model.evaluation_finished`` / ``model.evaluation_failed``
when it ends); progress updates are not audited. The finished event carries the SHA-256 of the stored report, so
a report edited afterwards no longer matches the audit chain.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.audit import append_event, canonical_json
from db.tables import Evaluation, ModelVersion
from db.types import utcnow

logger = logging.getLogger(__name__)

OBJECT_TYPE = "evaluation"
UNFINISHED = ("queued", "running")
MAX_ERROR_CHARS = 4000
# Figures of a report copied into the finished event (the full report stays in the row).
_SUMMARY_KEYS = ("n", "topic_accuracy", "decline_rate", "flag_rate_any", "errors", "tokens_per_s")


class EvaluationStateError(RuntimeError):
    """A state change that does not follow queued -> running -> done/failed (a bug in the caller)."""


def report_sha256(report: Mapping[str, Any]) -> str:
    """SHA-256 of a report's canonical JSON, as recorded in the finished event."""
    return hashlib.sha256(canonical_json(dict(report)).encode("utf-8")).hexdigest()


def _locked(session: Session, evaluation_id: int) -> Evaluation:
    evaluation = session.scalars(
        select(Evaluation).where(Evaluation.id == evaluation_id).with_for_update()
    ).one_or_none()
    if evaluation is None:
        raise LookupError(f"no evaluation with id {evaluation_id}")
    return evaluation


def _audit(session: Session, evaluation: Evaluation, action: str, actor: str, actor_id: int | None,
           details: Mapping[str, Any]) -> None:
    version = session.get(ModelVersion, evaluation.version_id)
    append_event(
        session, actor=actor, actor_id=actor_id, action=action, object_type=OBJECT_TYPE, object_id=evaluation.id,
        details={"version": version.name if version is not None else None, "version_id": evaluation.version_id,
                 "suite": evaluation.suite, "suite_sha256": evaluation.suite_sha256, **details},
    )


def create_evaluation(
    session: Session,
    *,
    version_id: int,
    suite: str,
    suite_sha256: str,
    n_prompts: int,
    actor: str,
    actor_id: int | None = None,
    runner: str | None = None,
) -> Evaluation:
    """Queue an evaluation of a version on a suite (``runner``: the process that will run it, host:pid);
    audited as ``model.evaluation_started``."""
    evaluation = Evaluation(
        version_id=version_id, suite=suite, suite_sha256=suite_sha256, n_prompts=n_prompts, status="queued",
        progress=0.0, runner=runner, created_by_id=actor_id, created_at=utcnow(),
    )
    session.add(evaluation)
    session.flush()
    _audit(session, evaluation, "model.evaluation_started", actor, actor_id,
           {"status": "queued", "n_prompts": n_prompts})
    return evaluation


def mark_running(session: Session, evaluation_id: int, *, runner: str, actor: str = "system") -> Evaluation:
    """A process took the queued evaluation (``runner`` names it: host:pid); audited."""
    evaluation = _locked(session, evaluation_id)
    if evaluation.status != "queued":
        raise EvaluationStateError(f"evaluation {evaluation_id} is {evaluation.status}, not queued")
    evaluation.status = "running"
    evaluation.runner = runner
    evaluation.started_at = utcnow()
    session.flush()
    _audit(session, evaluation, "model.evaluation_running", actor, None, {"status": "running", "runner": runner})
    return evaluation


def set_progress(session: Session, evaluation_id: int, progress: float) -> None:
    """Record how far a running evaluation got (0..1, never backwards); not audited."""
    value = min(max(float(progress), 0.0), 1.0)
    session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.status == "running", Evaluation.progress < value)
        .values(progress=value)
    )


def finish_evaluation(
    session: Session, evaluation_id: int, report: Mapping[str, Any], *, actor: str = "system"
) -> Evaluation:
    """Store the report of a running evaluation and mark it done (progress 1); audited with the report's hash."""
    evaluation = _locked(session, evaluation_id)
    if evaluation.status != "running":
        raise EvaluationStateError(f"evaluation {evaluation_id} is {evaluation.status}, not running")
    evaluation.status = "done"
    evaluation.progress = 1.0
    evaluation.report = dict(report)
    evaluation.finished_at = utcnow()
    session.flush()
    summary = {k: report.get(k) for k in _SUMMARY_KEYS if k in report}
    _audit(session, evaluation, "model.evaluation_finished", actor, None,
           {"status": "done", "report_sha256": report_sha256(report), **summary})
    return evaluation


def fail_evaluation(session: Session, evaluation_id: int, error: str, *, actor: str = "system") -> Evaluation:
    """Mark a queued or running evaluation failed with a reason; audited. A finished one is left alone."""
    evaluation = _locked(session, evaluation_id)
    if evaluation.status not in UNFINISHED:
        raise EvaluationStateError(f"evaluation {evaluation_id} is already {evaluation.status}")
    evaluation.status = "failed"
    evaluation.error = (error or "unknown error")[:MAX_ERROR_CHARS]
    evaluation.finished_at = utcnow()
    session.flush()
    _audit(session, evaluation, "model.evaluation_failed", actor, None,
           {"status": "failed", "error": evaluation.error[:500]})
    return evaluation


def get_evaluation(session: Session, evaluation_id: int) -> Evaluation | None:
    """The evaluation with this id, or None."""
    return session.get(Evaluation, evaluation_id)


def list_evaluations(session: Session, version_id: int, *, limit: int = 100) -> list[Evaluation]:
    """A version's evaluations, newest first."""
    stmt = (select(Evaluation).where(Evaluation.version_id == version_id)
            .order_by(Evaluation.created_at.desc(), Evaluation.id.desc()).limit(limit))
    return list(session.scalars(stmt))


def latest_done(session: Session, version_id: int, *, suite: str | None = None) -> Evaluation | None:
    """The newest finished (``done``) evaluation of a version, optionally of one suite."""
    stmt = select(Evaluation).where(Evaluation.version_id == version_id, Evaluation.status == "done")
    if suite is not None:
        stmt = stmt.where(Evaluation.suite == suite)
    return session.scalars(stmt.order_by(Evaluation.finished_at.desc(), Evaluation.id.desc()).limit(1)).first()


def list_unfinished(session: Session) -> list[Evaluation]:
    """Queued and running evaluations, oldest first."""
    stmt = select(Evaluation).where(Evaluation.status.in_(UNFINISHED)).order_by(Evaluation.id)
    return list(session.scalars(stmt))
