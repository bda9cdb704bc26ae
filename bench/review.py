"""Benchmark of the review queue at scale: first page with filters applied, and "take next", over 100,000 items.

Seeds a temporary SQLite file with bulk inserts (no audit events for the seed rows: they would only slow the
seeding, the queue's reads never touch the audit table), then times the real service calls a reviewer's clicks
make, authorisation and audit writes included.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from bench.store import throwaway_store
from console.services import review as review_svc
from console.services.access import Principal
from console.services.context import AppContext
from db.database import Database
from db.review.queue import QueueFilter
from db.tables import Conversation, Exchange, Finding, ReviewItem, User, UserRole

logger = logging.getLogger(__name__)

TARGET_MS = 200.0
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
LABELS = {
    "presidio": ("EMAIL_ADDRESS", "PHONE_NUMBER", "PERSON", "CREDIT_CARD"),
    "detoxify": ("toxicity", "insult", "threat", "identity_attack"),
}
MODELS = ("demo-v1", "demo-v2")
# What a reviewer working one cause would set: one recognizer's label, a score band, a model, the last month.
BENCH_FILTER = QueueFilter(
    statuses=("open", "claimed"), detector="presidio", label="EMAIL_ADDRESS", min_score=0.5, max_score=1.0,
    model_version="demo-v2", created_from=NOW - timedelta(days=30), created_to=NOW,
)


def _seed(db: Database, items: int, rng: random.Random) -> Principal:
    operators = 20
    with db.engine.begin() as conn:
        conn.execute(insert(User), [
            {"id": i, "username": f"user{i}", "disabled": False, "failed_login_count": 0,
             "created_at": NOW, "updated_at": NOW} for i in range(1, operators + 2)
        ])
        conn.execute(insert(UserRole), [{"user_id": i, "role": "operator"} for i in range(1, operators + 1)]
                     + [{"user_id": operators + 1, "role": "reviewer"}])
        conn.execute(insert(Conversation), [
            {"id": i, "user_id": i, "title": "", "created_at": NOW, "updated_at": NOW} for i in range(1, operators + 1)
        ])
        exchanges, findings, queue = [], [], []
        for n in range(1, items + 1):
            user = rng.randint(1, operators)
            created = NOW - timedelta(minutes=rng.randint(0, 60 * 24 * 60))
            exchanges.append({
                "id": n, "conversation_id": user, "user_id": user, "model_version": rng.choice(MODELS),
                "prompt": "my mail is <EMAIL_ADDRESS>", "response": "noted", "sampling": {}, "status": "ok",
                "created_at": created, "finished_at": created, "prompt_action": "flag", "review_status": "pending",
            })
            for _ in range(rng.choice((1, 1, 2))):
                detector = rng.choice(tuple(LABELS))
                findings.append({
                    "exchange_id": n, "direction": rng.choice(("prompt", "output")), "detector": detector,
                    "label": rng.choice(LABELS[detector]), "score": round(rng.random(), 3), "action": "flag",
                })
            state = rng.random()
            status = "open" if state < 0.80 else "claimed" if state < 0.85 else "decided" if state < 0.97 else "escalated"
            severity = rng.choice((0, 1, 1, 2, 2, 3))
            queue.append({
                "id": n, "exchange_id": n, "reason": "flagged", "direction": "prompt", "severity": severity,
                "status": status, "due_at": created + timedelta(hours=(168, 72, 24, 4)[severity]),
                "claimed_by_id": rng.randint(1, operators) if status == "claimed" else None,
                "claim_expires_at": NOW + timedelta(minutes=rng.choice((-30, 10))) if status == "claimed" else None,
                "created_at": created,
            })
        conn.execute(insert(Exchange), exchanges)
        conn.execute(insert(Finding), findings)
        conn.execute(insert(ReviewItem), queue)
    with db.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    return Principal(operators + 1, f"user{operators + 1}", frozenset({"reviewer"}))


def time_runs(fn: Callable[[], Any], runs: int) -> tuple[list[float], Any]:
    """Milliseconds of each of ``runs`` calls of ``fn``, and the last call's result (the dashboard bench uses it too)."""
    samples, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples, result


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def run_review_bench(*, items: int = 100_000, data_dir: Path | None = None, runs: int = 20) -> dict[str, Any]:
    """Seed ``items`` flagged items and time the first queue page (filters applied) and claiming the next item.

    Returns ``first_page_ms`` and ``claim_next_ms`` (medians) with p50/p95, the unfiltered first page for
    comparison, counts, the seeding time and the 200 ms target.
    """
    with throwaway_store(data_dir) as (settings, db):
        t0 = time.perf_counter()
        reviewer = _seed(db, items, random.Random(5))
        seed_s = time.perf_counter() - t0
        ctx = AppContext(settings, db, clock=lambda: NOW)
        review_svc.list_queue(ctx, reviewer, BENCH_FILTER)  # warm the connection pool and statement cache
        page_ms, page = time_runs(lambda: review_svc.list_queue(ctx, reviewer, BENCH_FILTER), runs)
        plain_ms, plain = time_runs(lambda: review_svc.list_queue(ctx, reviewer), runs)
        claim_ms, claimed = time_runs(lambda: review_svc.claim_next(ctx, reviewer, BENCH_FILTER), runs)
    result = {
        "items": items,
        "seed_s": round(seed_s, 2),
        "runs": runs,
        "filters": "open+claimed, presidio/EMAIL_ADDRESS, score 0.5-1.0, demo-v2, last 30 days",
        "first_page_ms": round(statistics.median(page_ms), 2),
        "first_page_p50_ms": _p(page_ms, 0.5),
        "first_page_p95_ms": _p(page_ms, 0.95),
        "first_page_rows": len(page.rows),
        "unfiltered_first_page_ms": round(statistics.median(plain_ms), 2),
        "unfiltered_first_page_rows": len(plain.rows),
        "claim_next_ms": round(statistics.median(claim_ms), 2),
        "claim_next_p50_ms": _p(claim_ms, 0.5),
        "claim_next_p95_ms": _p(claim_ms, 0.95),
        "claimed": claimed is not None,
        "open_items": page.summary.counts["open"],
        "overdue_items": page.summary.overdue,
        "target_ms": TARGET_MS,
    }
    result["within_target"] = result["first_page_p95_ms"] <= TARGET_MS and result["claim_next_p95_ms"] <= TARGET_MS
    logger.info("review bench: %s", result)
    return result
