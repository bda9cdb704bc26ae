"""Benchmark of the Latency page at scale: 1,000,000 exchanges over 30 days and 3 model versions.

Seeds a temporary SQLite file: users, conversations and the exchanges themselves with Core executemany inserts (no
audit events for the seed rows; the page never reads them), and their latency buckets in bulk with
``db.latency.load_exchange_batch``, the same aggregation ``llm-console metrics rebuild`` uses, fed the same columns
as the exchanges plus the console-overhead figures (exchanges do not store those). Every minute has traffic of all
three versions (the most bucket rows a range can have), 5 % of it synthetic.

Then times what one render of the page computes (the services it calls, access checks included: the targets, the
versions, ``console.services.latency.overview`` with switch markers, every series, totals, goodput and breaches;
not the engine-health section, which reads its own table) for the last 7 days and the last 30 days, with three
targets set, and the cost the bookkeeping adds to storing one exchange: transactions that store an exchange and its
audit event, with and without ``record_exchange``, in back-to-back pairs in one run (the median of the pairs'
differences; the medians of each side and the bookkeeping call timed alone are reported too).
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

import numpy as np
from sqlalchemy import insert

from bench.review import time_runs
from bench.store import throwaway_store
from console.services import latency as latency_svc
from console.services import slo as slo_svc
from console.services.access import Principal
from console.services.context import AppContext
from db import latency as latency_q
from db import latency_report
from db.audit import append_event
from db.database import Database
from db.tables import Conversation, Exchange, Finding, User, UserRole

logger = logging.getLogger(__name__)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
DAYS = 30
VERSIONS = ("support-demo-v1", "support-demo-v2", "support-demo-v3")
STATUSES = ("ok", "error", "aborted", "blocked", "interrupted")
STATUS_SHARES = (0.94, 0.02, 0.02, 0.015, 0.005)
USERS = 50
TARGETS = {"seven_day_ms": 1000.0, "thirty_day_ms": 2000.0, "store_overhead_ms": 1.0}
SLOS = (("ttft_ms", "p95", 400.0), ("e2e_ms", "p99", 8000.0), ("error_rate", "rate", 0.03))


def _lognormal(rng: np.random.Generator, median_ms: float, sigma: float, n: int) -> np.ndarray[Any, Any]:
    return np.asarray(np.exp(rng.normal(np.log(median_ms), sigma, n)), dtype=np.float64)


def _columns(rows: int, seed: int) -> dict[str, Any]:
    """The exchanges as columns: times, versions, statuses, engine and console timings."""
    rng = np.random.default_rng(seed)
    epoch = NOW.timestamp() - rng.random(rows) * DAYS * 86400
    version = rng.integers(0, len(VERSIONS), rows)
    status = rng.choice(len(STATUSES), size=rows, p=STATUS_SHARES)
    tokens = rng.integers(1, 400, rows).astype(np.float64)
    ttft = _lognormal(rng, 120.0, 0.6, rows) * (1 + 0.15 * version)
    itl = _lognormal(rng, 25.0, 0.3, rows)
    e2e = ttft + itl * (tokens - 1)
    queue = _lognormal(rng, 4.0, 1.0, rows)
    blocked = status == STATUSES.index("blocked")
    answered = ~blocked
    nan = np.full(rows, np.nan)
    return {
        "epoch": epoch, "version": version, "status": status, "synthetic": rng.random(rows) < 0.05,
        "flagged": rng.random(rows) < 0.03, "blocked": blocked | (rng.random(rows) < 0.005),
        "prompt_tokens": rng.integers(5, 800, rows).astype(np.float64),
        "output_tokens": np.where(answered, tokens, nan),
        "ttft_ms": np.where(answered, ttft, nan), "itl_ms": np.where(answered & (tokens > 1), itl, nan),
        "e2e_ms": np.where(answered, e2e, nan), "queue_ms": np.where(answered, queue, nan),
        "scan_before_ms": _lognormal(rng, 12.0, 0.5, rows), "scan_after_ms": np.where(answered, _lognormal(
            rng, 18.0, 0.5, rows), nan), "store_ms": _lognormal(rng, 3.0, 0.4, rows),
    }


def _none(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _seed(db: Database, rows: int) -> tuple[Principal, int]:
    cols = _columns(rows, 12)
    with db.engine.begin() as conn:
        conn.execute(insert(User), [{"id": i, "username": f"user{i}", "disabled": False, "failed_login_count": 0,
                                     "created_at": NOW, "updated_at": NOW} for i in range(1, USERS + 2)])
        conn.execute(insert(UserRole), [{"user_id": i, "role": "operator"} for i in range(1, USERS + 1)]
                     + [{"user_id": USERS + 1, "role": "admin"}])
        conn.execute(insert(Conversation), [{"id": i, "user_id": i, "title": "", "created_at": NOW,
                                             "updated_at": NOW} for i in range(1, USERS + 1)])
        chunk = 50_000
        for lo in range(0, rows, chunk):
            batch = []
            for n in range(lo, min(rows, lo + chunk)):
                user = n % USERS + 1
                created = datetime.fromtimestamp(float(cols["epoch"][n]), UTC)
                status = STATUSES[int(cols["status"][n])]
                batch.append({
                    "id": n + 1, "conversation_id": user, "user_id": user,
                    "model_version": VERSIONS[int(cols["version"][n])], "prompt": "p", "response": "r",
                    "sampling": {}, "status": status, "created_at": created, "finished_at": created,
                    "prompt_action": "block" if status == "blocked" else "flag" if cols["flagged"][n] else "allow",
                    "output_action": "block" if cols["blocked"][n] and status != "blocked" else None,
                    "synthetic": bool(cols["synthetic"][n]),
                    "prompt_tokens": int(cols["prompt_tokens"][n]), "output_tokens": _none(cols["output_tokens"][n]),
                    "ttft_ms": _none(cols["ttft_ms"][n]), "itl_ms": _none(cols["itl_ms"][n]),
                    "e2e_ms": _none(cols["e2e_ms"][n]), "queue_ms": _none(cols["queue_ms"][n]),
                })
            conn.execute(insert(Exchange), batch)
        flagged = np.flatnonzero(cols["flagged"]) + 1
        conn.execute(insert(Finding), [{"exchange_id": int(i), "direction": "prompt", "detector": "presidio",
                                        "label": "EMAIL_ADDRESS", "score": 0.9, "action": "flag"} for i in flagged])
    with db.session() as s:
        loaded = latency_q.load_exchange_batch(s, latency_q.ExchangeBatch(
            epoch_s=cols["epoch"], model_version=[VERSIONS[i] for i in cols["version"]],
            synthetic=cols["synthetic"], status=[STATUSES[i] for i in cols["status"]],
            # The same actions as the exchanges seeded above (db.flags: flagged = flag or block, prompt or output).
            prompt_flagged=cols["flagged"] | (cols["status"] == STATUSES.index("blocked")),
            output_flagged=cols["blocked"] & (cols["status"] != STATUSES.index("blocked")),
            blocked=cols["blocked"] | (cols["status"] == STATUSES.index("blocked")),
            prompt_tokens=cols["prompt_tokens"], output_tokens=cols["output_tokens"],
            values={m: cols[m] for m in latency_report.METRICS}))
        # Two switches, as the reconciler records them (stamped now: markers are looked up, whether or not in range).
        for old, new in (VERSIONS[:2], VERSIONS[1:]):
            append_event(s, actor="system", action="model.switch", object_type="model_version", object_id=new,
                         details={"from": old, "to": new, "seconds": 4.2})
    with db.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    return Principal(USERS + 1, f"user{USERS + 1}", frozenset({"admin"})), loaded


def _page(ctx: AppContext, admin: Principal, flt: latency_svc.LatencyFilter) -> Callable[[], Any]:
    """The service calls one render of the Latency page makes for its latency part (targets, versions, the report).
    The page's engine-health section reads another table (``engine_health``), not seeded here."""

    def render() -> latency_svc.LatencyOverview:
        slo_svc.list_slos(ctx, admin)
        latency_svc.known_versions(ctx, admin)
        return latency_svc.overview(ctx, admin, flt)

    return render


def _store_overhead(db: Database, samples: int) -> dict[str, float]:
    """Median cost of a transaction storing one exchange and its audit event, without and with the bookkeeping."""
    rng = random.Random(3)
    without: list[float] = []
    with_: list[float] = []
    bookkeeping: list[float] = []

    def store(record: bool) -> None:
        minute = NOW - timedelta(seconds=rng.randint(0, 3000))
        version = rng.choice(VERSIONS)
        timings = {"ttft_ms": rng.uniform(50, 400), "itl_ms": rng.uniform(10, 60), "e2e_ms": rng.uniform(500, 9000),
                   "queue_ms": rng.uniform(0, 20), "prompt_tokens": 40, "output_tokens": 120}
        start = time.perf_counter()
        with db.session() as s:
            exchange = Exchange(conversation_id=1, user_id=1, model_version=version, prompt="p", response="r",
                                sampling={}, status="ok", created_at=minute, finished_at=minute, **timings)
            s.add(exchange)
            s.flush()
            append_event(s, actor="user1", actor_id=1, action="chat.exchange", object_type="exchange",
                         object_id=exchange.id, details={"status": "ok", "model_version": version, **timings})
            if record:
                t0 = time.perf_counter()
                latency_q.record_exchange(s, minute=minute, model_version=version, synthetic=False, status="ok",
                                          prompt_action="allow", output_action="allow", timings=timings,
                                          overhead={"scan_before_ms": 11.0, "scan_after_ms": 17.0, "store_ms": 2.5})
                bookkeeping.append((time.perf_counter() - t0) * 1000)
        (with_ if record else without).append((time.perf_counter() - start) * 1000)

    for n in range(20):  # warm up both paths
        store(n % 2 == 0)
    without.clear()
    with_.clear()
    bookkeeping.clear()
    for n in range(samples):  # pairs, in alternating order
        store(n % 2 == 1)
        store(n % 2 == 0)
    # Each pair ran back to back: the median of the pairs' differences is less sensitive to the machine's other load
    # (which makes single transactions bimodal on a busy machine) than the difference of the two medians.
    return {
        "store_ms_without": round(statistics.median(without), 3),
        "store_ms_with": round(statistics.median(with_), 3),
        "store_overhead_ms": round(statistics.median(w - o for w, o in zip(with_, without, strict=True)), 3),
        "store_overhead_of_medians_ms": round(statistics.median(with_) - statistics.median(without), 3),
        "record_exchange_ms": round(statistics.median(bookkeeping), 3),
    }


def run_latency_bench(*, rows: int = 1_000_000, data_dir: Path | None = None, runs: int = 5,
                        store_samples: int = 300) -> dict[str, Any]:
    """Seed ``rows`` exchanges and time the page's computations for 7 and 30 days, and the store overhead.

    Returns ``seven_day_ms`` and ``thirty_day_ms`` (medians of ``runs``, after one first run reported apart),
    ``store_overhead_ms`` (median with minus median without), the seeding times, row counts and the targets.
    """
    with throwaway_store(data_dir) as (settings, db):
        t0 = time.perf_counter()
        admin, bucket_rows = _seed(db, rows)
        seed_s = time.perf_counter() - t0
        ctx = AppContext(settings, db, clock=lambda: NOW)
        for metric, stat, threshold in SLOS:
            slo_svc.set_slo(ctx, admin, metric, stat, threshold)
        results: dict[str, Any] = {}
        for key, window in (("seven_day", "last 7 days"), ("thirty_day", "last 30 days")):
            page = _page(ctx, admin, latency_svc.LatencyFilter(range=window))
            first, _ = time_runs(page, 1)
            samples, report = time_runs(page, runs)
            results[f"{key}_ms"] = round(statistics.median(samples), 1)
            results[f"{key}_first_ms"] = round(first[0], 1)
            results[f"{key}_requests"] = int(report.totals["requests"].iloc[-1])
            results[f"{key}_buckets"] = int(report.series["bucket_start"].nunique())
            results[f"{key}_breaches"] = len(report.breaches)
        user_ms, user_report = time_runs(_page(ctx, admin, latency_svc.LatencyFilter(range="last 7 days",
                                                                                     user="user7")), runs)
        results["user_filter_seven_day_ms"] = round(statistics.median(user_ms), 1)
        results["user_filter_seven_day_rows"] = user_report.rows_read
        store = _store_overhead(db, store_samples)
    result: dict[str, Any] = {
        "rows": rows, "days": DAYS, "versions": len(VERSIONS), "bucket_rows": bucket_rows,
        "seed_s": round(seed_s, 1), "runs": runs, **results, **store, "store_samples": store_samples,
        "targets_ms": TARGETS,
    }
    result["within_target"] = all(result[k] <= v for k, v in TARGETS.items())
    logger.info("latency bench: %s", result)
    return result
