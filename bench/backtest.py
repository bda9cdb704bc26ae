"""Benchmark of a policy backtest: replay 100,000 stored exchanges (about 1.3 million findings) through the shipped
policy and a proposed one, through the real service call an admin's "propose" makes.

Seeds a temporary SQLite file with bulk inserts over the last 30 days: every exchange has the offline toxicity
Detoxify's six scores on its prompt and its answer (as Detoxify stores them: every label, low scores mostly), one in
six a personal-data finding, one in fifty a system prompt's findings. Then times
:func:`console.services.policy_changes.propose` (validation, the replay, storing the request and its audit event)
over 30 days, and, in a second run under ``tracemalloc``, the replay's peak Python memory.
"""

from __future__ import annotations

import random
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from bench.store import throwaway_store
from console.services import backtest as backtest_svc
from console.services import policy_changes
from console.services.access import Principal
from console.services.context import AppContext
from db import safety as safety_q
from db.database import Database
from db.tables import Conversation, Exchange, Finding, User, UserRole
from engine.safety.policy import DEFAULT_POLICY_PATH, Policy

TARGET_S = 60.0
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
DAYS = 30
TOX_LABELS = ("toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack")
PII = ("EMAIL_ADDRESS", "PHONE_NUMBER", "PERSON", "CREDIT_CARD", "LOCATION")
CHUNK = 10_000


def proposed_policy(current: str) -> str:
    """The shipped policy with Detoxify's toxicity threshold lowered from 0.5 to 0.3 (a realistic change)."""
    old = "[toxicity.thresholds.detoxify]\ntoxicity = 0.5"
    if old not in current:
        raise RuntimeError(f"the shipped policy no longer has {old!r}; update the bench")
    return current.replace(old, "[toxicity.thresholds.detoxify]\ntoxicity = 0.3").replace(
        'version = "', 'version = "bench-lower-', 1)


def _score(rng: random.Random) -> float:
    # Mostly near 0 (mean 0.024), one in thirty anywhere: how toxicity scores spread on support traffic.
    return round(rng.random() if rng.random() < 1 / 30 else rng.betavariate(0.5, 20), 4)


def _seed(db: Database, exchanges: int, rng: random.Random) -> int:
    findings_n = 0
    with db.engine.begin() as conn:
        conn.execute(insert(User), [{"id": i, "username": f"user{i}", "disabled": False, "failed_login_count": 0,
                                     "created_at": NOW, "updated_at": NOW} for i in (1, 2, 3)])
        conn.execute(insert(UserRole), [{"user_id": 1, "role": "operator"}, {"user_id": 2, "role": "admin"},
                                        {"user_id": 3, "role": "admin"}])
        conn.execute(insert(Conversation), [{"id": 1, "user_id": 1, "title": "", "created_at": NOW,
                                             "updated_at": NOW}])
        for first in range(1, exchanges + 1, CHUNK):
            rows, found = [], []
            for n in range(first, min(first + CHUNK, exchanges + 1)):
                created = NOW - timedelta(seconds=rng.randint(1, DAYS * 86400 - 1))
                rows.append({"id": n, "conversation_id": 1, "user_id": 1, "model_version": "demo-v1",
                             "prompt": "Where is my order <EMAIL_ADDRESS>?", "response": "It ships tomorrow.",
                             "sampling": {}, "status": "ok", "created_at": created, "finished_at": created,
                             "prompt_action": "allow", "output_action": "allow", "review_status": "none",
                             "policy_version": 1})
                for direction in ("prompt", "output"):
                    for label in TOX_LABELS:
                        found.append({"exchange_id": n, "direction": direction, "detector": "detoxify",
                                      "label": label, "score": _score(rng), "action": "allow"})
                if rng.random() < 1 / 6:
                    found.append({"exchange_id": n, "direction": "prompt", "detector": "presidio",
                                  "label": rng.choice(PII), "score": round(rng.uniform(0.35, 1.0), 4),
                                  "start": 0, "end": 5, "action": "redact"})
                if rng.random() < 1 / 50:
                    for label in TOX_LABELS:
                        found.append({"exchange_id": n, "direction": "prompt", "detector": "system prompt/detoxify",
                                      "label": label, "score": _score(rng), "action": "allow"})
            conn.execute(insert(Exchange), rows)
            conn.execute(insert(Finding), found)
            findings_n += len(found)
    with db.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    return findings_n


def run_backtest_bench(*, exchanges: int = 100_000, data_dir: Path | None = None) -> dict[str, Any]:
    """Seed ``exchanges`` and time one backtested proposal over them; see the module docs."""
    with throwaway_store(data_dir) as (settings, db):
        t0 = time.perf_counter()
        findings = _seed(db, exchanges, random.Random(25))
        seed_s = time.perf_counter() - t0
        current = DEFAULT_POLICY_PATH.read_text(encoding="utf-8")
        with db.session() as s:
            safety_q.store_policy_version(s, current, None, actor="bench")
        proposed = proposed_policy(current)
        ctx = AppContext(settings, db, clock=lambda: NOW)
        admin = Principal(2, "user2", frozenset({"admin"}))
        t0 = time.perf_counter()
        view = policy_changes.propose(ctx, admin, proposed, "bench: lower the prompt's toxicity threshold", DAYS)
        propose_s = time.perf_counter() - t0
        tracemalloc.start()
        with db.session(readonly=True) as s:
            replay = backtest_svc.run(s, Policy.from_toml(current), Policy.from_toml(proposed), days=DAYS,
                                      now=NOW)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    bt = view.backtest
    assert replay.exchanges == bt["exchanges"] and replay.changed == bt["changed"]
    return {
        "exchanges": bt["exchanges"],
        "findings": findings,
        "days": DAYS,
        "seed_s": round(seed_s, 2),
        "backtest_100k_s" if exchanges == 100_000 else "backtest_s": round(propose_s, 2),
        "replay_s": bt["seconds"],
        "exchanges_per_s": round(bt["exchanges"] / propose_s),
        "findings_per_s": round(findings / propose_s),
        "peak_mib": round(peak / 2**20, 1),
        "items_per_day_before": round(bt["items_before"] / DAYS, 1),
        "items_per_day_after": round(bt["items_after"] / DAYS, 1),
        "changed": bt["changed"],
        "target_s": TARGET_S,
        "ok": propose_s < TARGET_S,
    }
