"""What the promotion and watch-window tests share: versions with canned evaluation reports, a stub engine host at
the reconciler's seam and scripted traffic (the ``team`` and ``switched`` fixtures are in tests/models/conftest.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from console.services.access import Principal
from db import audit as audit_q
from db import chat as chat_q
from db import model_versions as versions_q
from db.tables import AuditEvent, Evaluation
from db.types import utcnow
from engine.types import HostStatus, ModelSpec


def canned_report(name: str, **changes: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "suite": "support", "version": name, "n": 40, "topic_accuracy": 0.80, "decline_rate": 0.9,
        "flag_rate": {"toxicity": 0.05}, "flag_rate_any": 0.05,
        "bias_gap": {"answer_gap": 0.1, "toxicity_gap": 0.02, "flag_gap": 0.0, "worst_pairs": []},
        "latency": {"ttft_p50_ms": 20.0, "ttft_p95_ms": 40.0, "e2e_p50_ms": 200.0, "e2e_p95_ms": 400.0},
        "tokens_per_s": 50.0, "errors": 0,
        # Timed against v1 (production in these tests) in the same run: +2 ms, 95% CI -3..+6 ms, 40 pairs.
        "latency_comparison": {"baseline_version": "v1", "candidate_version": name, "n": 40,
                               "candidate_ttft_p95_ms": 42.0, "baseline_ttft_p95_ms": 40.0, "diff_ms": 2.0,
                               "ci_low_ms": -3.0, "ci_high_ms": 6.0, "confidence": 0.95, "method": "paired",
                               "error": None},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(report.get(key), dict):
            report[key] = {**report[key], **value}
        else:
            report[key] = value
    return report


def register_version(ctx, name: str) -> int:  # noqa: ANN001
    with ctx.db.session() as s:
        return versions_q.register_model_version(s, name=name, source=f"/models/{name}", actor="test").id


def evaluate(ctx, name: str, **changes: Any) -> int:  # noqa: ANN001
    with ctx.db.session() as s:
        version = versions_q.get_model_version_by_name(s, name)
        assert version is not None
        row = Evaluation(version_id=version.id, suite="support", suite_sha256="0" * 64, n_prompts=40, status="done",
                         progress=1.0, report=canned_report(name, **changes), finished_at=utcnow())
        s.add(row)
        s.flush()
        return row.id


def production(ctx) -> str | None:  # noqa: ANN001
    with ctx.db.session() as s:
        version = versions_q.version_for_alias(s, "production")
        return None if version is None else version.name


def events(ctx, action: str) -> list[AuditEvent]:  # noqa: ANN001
    with ctx.db.session() as s:
        return list(audit_q.iter_events(s, action=action))


class StubHost:
    """The engine host's seam the reconciler uses: status() and switch(); switching only changes the name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def status(self) -> HostStatus:
        return HostStatus("ready", self.name, "ready", 1.0)

    def switch(self, spec: ModelSpec, *, drain: bool = True) -> float:
        self.name = spec.name
        return 0.0


def traffic(ctx, user: Principal, version: str, start, count: int, *, ttft: float,  # noqa: ANN001
             errors: int = 0, flagged: int = 0, synthetic: bool = False, prompt_action: str = "allow",
             step_s: float = 10) -> None:
    with ctx.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=user.user_id, actor=user.username, title="t")
        for i in range(count):
            status = "error" if i < errors else "blocked" if prompt_action == "block" else "ok"
            chat_q.store_turn(s, chat_q.TurnRecord(
                conversation_id=conv.id, user_id=user.user_id, actor=user.username, model_version=version,
                prompt="p", response="r", status=status, created_at=start + timedelta(seconds=step_s * i),
                prompt_action=prompt_action, output_action=None if prompt_action == "block" else
                "flag" if i >= count - flagged else "allow",
                timings=chat_q.ExchangeTimings(ttft_ms=None if status == "error" else ttft + i, e2e_ms=10 * ttft),
                synthetic=synthetic,
            ))
