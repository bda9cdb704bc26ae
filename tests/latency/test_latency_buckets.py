"""Latency buckets (db/latency.py, the maths in db/latency_report.py, targets in db/slo.py): percentiles against
numbers worked out by hand and against numpy, the filters, the bulk paths against the per-exchange one, goodput
bounds, breaches, and concurrent upserts on PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import delete, func, select

from db import Database, DbConfig, flags
from db import chat as chat_q
from db import latency as latency_q
from db import slo as slo_q
from db.latency_report import (
    BIN_VALUES,
    MAX_RELATIVE_ERROR,
    RECORDED_STATUSES,
    MetricsQuery,
    MetricsReport,
    SloTarget,
    add_keys,
    bin_index,
    bin_indices,
    bucket_seconds_for,
    decode_hist,
    encode_hist,
)
from db.safety import FindingRecord
from db.tables import LatencyBucket

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
ERR = MAX_RELATIVE_ERROR


@pytest.fixture
def db(ctx) -> Database:
    return ctx.db


def _record(db: Database, when: datetime, version: str = "v1", *, status: str = "ok", synthetic: bool = False,
            prompt_action: str | None = None, output_action: str | None = None,
            overhead: dict[str, float] | None = None, **timings: float) -> None:
    with db.session() as s:
        latency_q.record_exchange(s, minute=when, model_version=version, synthetic=synthetic, status=status,
                                  prompt_action=prompt_action, output_action=output_action, timings=timings,
                                  overhead=overhead or {})


def _report(db: Database, since: datetime, until: datetime = NOW, slos=(), **kwargs) -> MetricsReport:
    with db.session(readonly=True) as s:
        return latency_q.bucket_report(s, MetricsQuery(since=since, until=until, now=until, **kwargs), slos)


def _exact(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q * 100, method="inverted_cdf"))


def _total(report: MetricsReport, version: str | None) -> dict:
    (row,) = [t for t in report.totals if t["model_version"] == version]
    return row


# --- bins -------------------------------------------------------------------------------------------------------


def test_every_value_is_read_back_within_the_stated_error():
    values = np.geomspace(0.01, 3_000_000.0, 20_000)
    read = BIN_VALUES[bin_indices(values)]
    assert np.max(np.abs(read - values) / values) <= ERR + 1e-12
    assert ERR == pytest.approx(0.0247, abs=1e-4)
    # The scalar and the vectorised binning agree, and bins never go backwards.
    assert [bin_index(v) for v in values[::997]] == list(bin_indices(values[::997]))
    assert np.all(np.diff(bin_indices(values)) >= 0)
    assert bin_index(0.0) == 0 and bin_index(-3.0) == 0 and list(bin_indices([np.nan])) == [-1]


def test_a_histogram_round_trips_and_adding_keys_merges_them():
    blob = encode_hist([3, 700], [2, 5])
    assert len(blob) == 12
    merged = add_keys(blob, [700, 5, 1200])
    keys, counts = decode_hist(merged)
    assert keys.tolist() == [3, 5, 700, 1200] and counts.tolist() == [2, 1, 6, 1]


# --- hand-worked ------------------------------------------------------------------------------------------------


def test_percentiles_means_and_rates_against_a_hand_worked_minute(db):
    minute = NOW - timedelta(minutes=5)
    for i, (ttft, e2e) in enumerate([(10, 100), (20, 200), (30, 300), (40, 400)]):
        _record(db, minute + timedelta(seconds=i), ttft_ms=ttft, e2e_ms=e2e, output_tokens=60, prompt_tokens=7,
                prompt_action="allow", output_action="flag" if i == 0 else "allow", overhead={"store_ms": 2.0})
    _record(db, minute, status="error", prompt_action="redact")
    _record(db, minute, status="blocked", prompt_action="block")
    report = _report(db, NOW - timedelta(hours=1))
    assert report.bucket_s == 60 and report.resolution_s == 60
    (row,) = report.series
    assert row["bucket_start"] == minute and row["requests"] == 6
    assert (row["ok"], row["error"], row["blocked"]) == (4, 1, 1)
    # Nearest rank over 10, 20, 30, 40: p50 is the 2nd value, p90/p95/p99 the 4th.
    assert row["ttft_ms_p50"] == pytest.approx(20, rel=ERR)
    assert row["ttft_ms_p95"] == pytest.approx(40, rel=ERR) and row["ttft_ms_p99"] == pytest.approx(40, rel=ERR)
    assert row["e2e_ms_p50"] == pytest.approx(200, rel=ERR)
    assert row["ttft_ms_mean"] == 25.0 and row["e2e_ms_mean"] == 250.0  # means are exact (sums)
    assert row["ttft_ms_n"] == 4 and row["itl_ms_n"] == 0 and row["itl_ms_p50"] is None
    assert row["store_ms_mean"] == 2.0 and row["scan_before_ms_n"] == 0
    assert row["output_tokens"] == 240 and row["prompt_tokens"] == 28
    assert row["output_tokens_per_s"] == pytest.approx(4.0)  # 240 tokens over the 60-second bucket
    assert row["requests_per_s"] == pytest.approx(0.1)
    # Flagged = the policy flagged or blocked a side: the flagged answer and the blocked prompt (not the redaction).
    assert row["error_rate"] == pytest.approx(1 / 6) and row["flag_rate"] == pytest.approx(2 / 6)
    assert (row["flagged"], row["prompt_flagged"], row["output_flagged"]) == (2, 1, 1)
    assert row["prompt_flag_rate"] == pytest.approx(1 / 6) and row["output_flag_rate"] == pytest.approx(1 / 6)
    assert row["block_rate"] == pytest.approx(1 / 6) and row["abort_rate"] == 0.0


def test_an_empty_range_gives_an_empty_report(db):
    _record(db, NOW - timedelta(days=3), ttft_ms=10)
    report = _report(db, NOW - timedelta(hours=1), slos=[SloTarget("ttft_ms", "p95", 5)])
    assert report.empty and report.series == [] and report.totals == [] and report.breaches == []
    assert report.goodput == [] and report.versions == ()


def test_one_request_is_every_percentile(db):
    _record(db, NOW - timedelta(minutes=1), ttft_ms=123.0, itl_ms=7.5, e2e_ms=900.0, queue_ms=0.0)
    total = _total(_report(db, NOW - timedelta(minutes=15)), None)
    for stat in ("p50", "p90", "p95", "p99"):
        assert total[f"ttft_ms_{stat}"] == pytest.approx(123.0, rel=ERR)
        assert total[f"itl_ms_{stat}"] == pytest.approx(7.5, rel=ERR)
        assert total[f"queue_ms_{stat}"] < 0.01  # zero lands in the first bin (under 0.01 ms)
    assert total["requests"] == 1 and total["error_rate"] == 0.0


def test_versions_are_split_and_added_up(db):
    when = NOW - timedelta(minutes=3)
    for ttft in (10, 20, 30):
        _record(db, when, "v1", ttft_ms=ttft, output_tokens=10)
    _record(db, when, "v2", ttft_ms=500, output_tokens=5)
    report = _report(db, NOW - timedelta(hours=1))
    assert report.versions == ("v1", "v2")
    assert [(r["model_version"], r["requests"]) for r in report.series] == [("v1", 3), ("v2", 1)]
    assert _total(report, "v1")["ttft_ms_p99"] == pytest.approx(30, rel=ERR)
    assert _total(report, "v2")["ttft_ms_p50"] == pytest.approx(500, rel=ERR)
    everything = _total(report, None)
    assert everything["requests"] == 4 and everything["output_tokens"] == 35
    assert everything["ttft_ms_p50"] == pytest.approx(20, rel=ERR)
    only_v2 = _report(db, NOW - timedelta(hours=1), versions=("v2",))
    assert only_v2.versions == ("v2",) and _total(only_v2, None)["requests"] == 1


def test_synthetic_traffic_is_left_out_unless_asked_for(db):
    when = NOW - timedelta(minutes=2)
    _record(db, when, ttft_ms=10)
    _record(db, when, ttft_ms=1000, synthetic=True)
    _record(db, when, ttft_ms=2000, synthetic=True)
    assert _total(_report(db, NOW - timedelta(hours=1)), None)["requests"] == 1  # the default: real traffic
    synthetic = _total(_report(db, NOW - timedelta(hours=1), synthetic=True), None)
    assert synthetic["requests"] == 2 and synthetic["ttft_ms_p50"] == pytest.approx(1000, rel=ERR)
    assert _total(_report(db, NOW - timedelta(hours=1), synthetic=None), None)["requests"] == 3


def test_the_status_filter_is_exact(db):
    when = NOW - timedelta(minutes=2)
    _record(db, when, ttft_ms=10)
    _record(db, when, status="aborted", ttft_ms=50)
    _record(db, when, status="interrupted")
    only = _total(_report(db, NOW - timedelta(hours=1), statuses=("aborted", "interrupted")), None)
    assert only["requests"] == 2 and only["abort_rate"] == 1.0 and only["ttft_ms_p50"] == pytest.approx(50, rel=ERR)


def test_bucket_percentiles_agree_with_numpy_within_the_stated_error(db):
    rng = np.random.default_rng(7)
    n = 3000
    offsets = rng.uniform(0, 3 * 3600, n)  # the last three hours
    ttft = np.exp(rng.normal(np.log(150), 0.8, n))
    e2e = ttft + np.exp(rng.normal(np.log(2000), 0.5, n))
    with db.session() as s:
        for off, t, e in zip(offsets, ttft, e2e, strict=True):
            latency_q.record_exchange(s, minute=NOW - timedelta(seconds=float(off)), model_version="v1",
                                      synthetic=False, status="ok", timings={"ttft_ms": t, "e2e_ms": e},
                                      overhead={})
    # 3 hours: minute rows, 1-minute buckets; 7 days: hour rows, 1-hour buckets. Both must agree with numpy.
    for since, bucket_s in ((NOW - timedelta(hours=3), 60), (NOW - timedelta(days=7), 3600)):
        report = _report(db, since)
        assert report.bucket_s == bucket_s
        total = _total(report, None)
        assert total["requests"] == n
        for q, stat in ((0.5, "p50"), (0.9, "p90"), (0.95, "p95"), (0.99, "p99")):
            for name, values in (("ttft_ms", ttft), ("e2e_ms", e2e)):
                exact = _exact(values, q)
                assert abs(total[f"{name}_{stat}"] - exact) / exact <= ERR + 1e-9, (name, stat, bucket_s)
        starts = np.floor((NOW.timestamp() - offsets) / bucket_s) * bucket_s
        for row in report.series[::7]:
            in_bucket = ttft[starts == row["bucket_start"].timestamp()]
            assert row["requests"] == len(in_bucket)
            exact = _exact(in_bucket, 0.95)
            assert abs(row["ttft_ms_p95"] - exact) / exact <= ERR + 1e-9


def test_ranges_pick_their_bucket_length():
    cases = {timedelta(minutes=15): 60, timedelta(hours=3): 60, timedelta(hours=6): 300, timedelta(days=1): 900,
             timedelta(days=7): 3600, timedelta(days=30): 21600, timedelta(days=90): 86400,
             timedelta(days=400): 2 * 86400}
    for span, bucket_s in cases.items():
        assert bucket_seconds_for(NOW - span, NOW) == bucket_s, span
    query = MetricsQuery(since=datetime(2026, 11, 26, 8, 7, 30, tzinfo=UTC), until=NOW)
    assert query.start == datetime(2026, 11, 26, 8, 7, tzinfo=UTC) and query.end == NOW  # widened to minutes


def test_the_last_bucket_counts_only_the_time_that_has_passed(db):
    now = NOW + timedelta(seconds=30)  # half-way through the 09:00 minute
    _record(db, NOW, output_tokens=60)
    with db.session(readonly=True) as s:
        report = latency_q.bucket_report(s, MetricsQuery(since=now - timedelta(minutes=15), until=now, now=now))
    (row,) = report.series
    assert row["covered_s"] == 30.0 and row["output_tokens_per_s"] == pytest.approx(2.0)


# --- targets ----------------------------------------------------------------------------------------------------


def test_breaches_and_compliance(db):
    _record(db, NOW - timedelta(minutes=10), ttft_ms=100)
    _record(db, NOW - timedelta(minutes=5), ttft_ms=900)
    _record(db, NOW - timedelta(minutes=5), status="error")
    slos = [SloTarget("ttft_ms", "p95", 500.0), SloTarget("error_rate", "rate", 0.01)]
    report = _report(db, NOW - timedelta(hours=1), slos=slos)
    assert [(b.bucket_start, b.metric) for b in report.breaches] == [
        (NOW - timedelta(minutes=5), "error_rate"), (NOW - timedelta(minutes=5), "ttft_ms")]
    breach = [b for b in report.breaches if b.metric == "ttft_ms"][0]
    assert breach.measured == pytest.approx(900, rel=ERR) and breach.requests == 2
    overall = {(c.metric, c.model_version): c for c in report.compliance}
    assert overall[("ttft_ms", None)].met is False and overall[("error_rate", None)].measured == pytest.approx(1 / 3)


def test_goodput_is_exact_with_one_latency_target_and_bounds_the_truth_with_two(db):
    rng = np.random.default_rng(3)
    n = 400
    ttft = np.exp(rng.normal(np.log(200), 0.7, n))
    e2e = np.exp(rng.normal(np.log(3000), 0.6, n))
    statuses = rng.choice(["ok", "ok", "ok", "ok", "error", "blocked"], n)
    with db.session() as s:
        for t, e, status in zip(ttft, e2e, statuses, strict=True):
            timings = {} if status == "blocked" else {"ttft_ms": t, "e2e_ms": e}
            latency_q.record_exchange(s, minute=NOW - timedelta(minutes=30), model_version="v1", synthetic=False,
                                      status=str(status), prompt_action="block" if status == "blocked" else "allow",
                                      timings=timings, overhead={})
    ok = statuses == "ok"
    reached = int((statuses != "blocked").sum())
    # Thresholds in the middle of a bin's gap, far from any value: the one-target figure is exact.
    one = [SloTarget("ttft_ms", "p95", 250.0), SloTarget("error_rate", "rate", 0.05)]
    (g,) = [g for g in _report(db, NOW - timedelta(hours=1), slos=one).goodput if g.model_version is None]
    truth = int((ok & (ttft <= 250.0)).sum())
    assert g.exact and g.reached_model == reached
    assert g.good_low <= truth <= g.good_high and g.good_high - g.good_low <= int(
        (ok & (np.abs(ttft - 250.0) / 250.0 <= 0.05)).sum())
    two = [SloTarget("ttft_ms", "p95", 250.0), SloTarget("e2e_ms", "p99", 3500.0)]
    (g2,) = [g for g in _report(db, NOW - timedelta(hours=1), slos=two).goodput if g.model_version is None]
    truth2 = int((ok & (ttft <= 250.0) & (e2e <= 3500.0)).sum())
    assert not g2.exact and g2.good_low <= truth2 <= g2.good_high
    assert g2.share_high == pytest.approx(g2.good_high / reached)


# --- bulk paths -------------------------------------------------------------------------------------------------


def _bucket_rows(db: Database) -> dict:
    with db.session(readonly=True) as s:
        rows = s.scalars(select(LatencyBucket)).all()
        return {(r.resolution_s, r.bucket_start, r.model_version, r.synthetic, r.status):
                (r.requests, r.flagged, r.prompt_flagged, r.output_flagged, r.blocked, r.prompt_tokens, r.output_tokens, round(r.ttft_sum_ms, 6),
                 round(r.store_sum_ms, 6), decode_hist(r.hist)[0].tolist(), decode_hist(r.hist)[1].tolist())
                for r in rows}


def _sample(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "epoch": NOW.timestamp() - rng.uniform(0, 2 * 86400, n), "version": rng.choice(["a", "b"], n),
        "status": rng.choice(RECORDED_STATUSES, n), "synthetic": rng.random(n) < 0.2,
        "prompt_action": rng.choice(["allow", "allow", "flag", "redact", "block"], n),
        "output_action": rng.choice(["allow", "allow", "allow", "flag", "block", None], n),
        "ttft": np.where(rng.random(n) < 0.9, rng.uniform(1, 900, n), np.nan), "store": rng.uniform(0.5, 9, n),
        "tokens": rng.integers(1, 300, n).astype(float),
    }


def test_bulk_loading_builds_the_same_rows_as_recording_each_exchange(ctx, tmp_path, migrated_db_file):
    import shutil

    data = _sample(300, 11)
    with ctx.db.session() as s:
        for i in range(300):
            ttft = data["ttft"][i]
            latency_q.record_exchange(s, minute=datetime.fromtimestamp(data["epoch"][i], UTC),
                                      model_version=str(data["version"][i]), synthetic=bool(data["synthetic"][i]),
                                      status=str(data["status"][i]), prompt_action=data["prompt_action"][i],
                                      output_action=data["output_action"][i],
                                      timings={"ttft_ms": None if np.isnan(ttft) else ttft,
                                       "output_tokens": data["tokens"][i]},
                              overhead={"store_ms": data["store"][i]})
    shutil.copy(migrated_db_file, tmp_path / "bulk.db")
    bulk = Database(DbConfig(f"sqlite:///{tmp_path / 'bulk.db'}"))
    try:
        with bulk.session() as s:
            inserted = latency_q.load_exchange_batch(s, latency_q.ExchangeBatch(
                epoch_s=data["epoch"], model_version=list(data["version"]), synthetic=data["synthetic"],
                status=list(data["status"]),
                prompt_flagged=np.array([flags.action_flags(a) for a in data["prompt_action"]]),
                output_flagged=np.array([flags.action_flags(a) for a in data["output_action"]]),
                blocked=np.array([flags.is_blocked(st, p, o) for st, p, o in zip(
                    data["status"], data["prompt_action"], data["output_action"], strict=True)]),
                prompt_tokens=np.full(300, np.nan), output_tokens=data["tokens"],
                values={"ttft_ms": data["ttft"], "store_ms": data["store"]}))
        one_by_one = _bucket_rows(ctx.db)
        assert inserted == len(one_by_one) > 50
        assert _bucket_rows(bulk) == one_by_one
    finally:
        bulk.dispose()


def test_rebuilding_from_exchanges_matches_recording_them_as_they_finish(ctx, make_user):
    user = make_user("olivia", "operator")
    with ctx.db.session() as s:
        conv = chat_q.create_conversation(s, user_id=user.user_id, actor=user.username)
        for i, (status, ttft, output_action) in enumerate([("ok", 10.0, "flag"), ("ok", 35.0, "allow"),
                                                           ("error", None, None), ("aborted", 80.0, "allow"),
                                                           ("blocked", None, None), ("ok", 12.0, "redact")]):
            # Every exchange has a finding (a toxicity score under its threshold): a finding is not a flag.
            ex = chat_q.store_turn(s, chat_q.TurnRecord(
                conversation_id=conv.id, user_id=user.user_id, actor=user.username, model_version="v1",
                prompt="p", status=status, created_at=NOW - timedelta(minutes=90 * i + 1),
                prompt_action="block" if status == "blocked" else "allow", output_action=output_action,
                findings=(FindingRecord("prompt", "detoxify", "insult", 0.01, "allow"),),
                timings=chat_q.ExchangeTimings(ttft_ms=ttft, e2e_ms=ttft and ttft * 10, output_tokens=3)))
        s.flush()
    with ctx.db.session() as s:
        s.execute(delete(LatencyBucket))
        for ex in s.scalars(select(chat_q.Exchange)):
            latency_q.record_exchange_row(s, ex)
    as_recorded = _bucket_rows(ctx.db)
    with ctx.db.session() as s:
        assert latency_q.rebuild_buckets(s) == 6
    assert _bucket_rows(ctx.db) == as_recorded
    total = _total(_report(ctx.db, NOW - timedelta(days=1)), None)
    assert (total["requests"], total["ok"], total["error"], total["blocked"]) == (6, 3, 1, 1)
    assert total["block_rate"] == pytest.approx(1 / 6)
    assert (total["flagged"], total["prompt_flagged"], total["output_flagged"]) == (2, 1, 1)


def test_a_pending_exchange_is_not_recorded(db):
    with pytest.raises(ValueError, match="status"), db.session() as s:
        latency_q.record_exchange(s, minute=NOW, model_version="v1", synthetic=False, status="pending", timings={},
                                  overhead={})


def test_slos_are_stored_one_per_metric_and_statistic(db):
    with db.session() as s:
        first, previous = slo_q.set_slo(s, metric="ttft_ms", stat="p95", threshold=500.0, set_by_id=None)
        assert previous is None
        again, previous = slo_q.set_slo(s, metric="ttft_ms", stat="p95", threshold=400.0, set_by_id=None)
        assert previous == 500.0 and again.id == first.id
        with pytest.raises(ValueError):
            slo_q.set_slo(s, metric="error_rate", stat="p95", threshold=0.1, set_by_id=None)
        with pytest.raises(ValueError):
            slo_q.set_slo(s, metric="error_rate", stat="rate", threshold=2.0, set_by_id=None)
    with db.session(readonly=True) as s:
        assert [(x.metric, x.stat, x.threshold) for x in slo_q.list_slos(s)] == [("ttft_ms", "p95", 400.0)]


# --- PostgreSQL ---------------------------------------------------------------------------------------------------



@pytest.fixture
def pg(pg_db: Database) -> Database:
    return pg_db


def test_concurrent_upserts_on_postgresql_lose_nothing(pg):
    threads, each = 8, 25
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(each):
                _record(pg, NOW - timedelta(seconds=1 + i % 3), "v1", ttft_ms=10.0 + k + i, output_tokens=2)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    total = _total(_report(pg, NOW - timedelta(hours=1)), None)
    assert total["requests"] == threads * each and total["ttft_ms_n"] == threads * each
    assert total["output_tokens"] == 2 * threads * each
    with pg.session(readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(LatencyBucket)) == 2  # one minute row, one hour row
    values = [10.0 + k + i for k in range(threads) for i in range(each)]
    assert total["ttft_ms_p95"] == pytest.approx(_exact(values, 0.95), rel=ERR)


def test_rebuild_user_filter_and_slos_on_postgresql(pg):
    from db.users import create_user

    _record(pg, NOW - timedelta(minutes=1), ttft_ms=42.0)
    with pg.session() as s:
        slo_q.set_slo(s, metric="ttft_ms", stat="p50", threshold=40.0, set_by_id=None)
        assert latency_q.rebuild_buckets(s) == 0  # no exchanges: the buckets are rebuilt empty
    assert _report(pg, NOW - timedelta(hours=1)).empty
    with pg.session() as s:
        user = create_user(s, "pat", None, ["operator"])
        conv = chat_q.create_conversation(s, user_id=user.id, actor="pat")
        for ttft in (30.0, 60.0):
            chat_q.store_turn(s, chat_q.TurnRecord(conversation_id=conv.id, user_id=user.id, actor="pat",
                                                   model_version="v1", prompt="p",
                                                   created_at=NOW - timedelta(minutes=3),
                                                   timings=chat_q.ExchangeTimings(ttft_ms=ttft)))
        user_id = user.id
    with pg.session() as s:
        assert latency_q.rebuild_buckets(s) == 2
    slos = [SloTarget("ttft_ms", "p50", 40.0)]
    report = _report(pg, NOW - timedelta(hours=1), slos=slos)
    assert _total(report, None)["requests"] == 2 and _total(report, None)["ttft_ms_p50"] == pytest.approx(30, rel=ERR)
    with pg.session(readonly=True) as s:
        raw = latency_q.raw_report(s, MetricsQuery(since=NOW - timedelta(hours=1), until=NOW, now=NOW),
                                   user_id=user_id, slos=slos)
    assert raw.source == "exchanges" and _total(raw, None)["ttft_ms_p99"] == pytest.approx(60, rel=ERR)
    assert [(g.good_low, g.good_high) for g in raw.goodput] == [(1, 1), (1, 1)]


def test_the_report_maths_holds_no_sql():
    """db/latency_report.py is arithmetic on arrays; every query of the buckets is in db/latency.py."""
    import ast
    from pathlib import Path

    import db.latency_report

    tree = ast.parse(Path(db.latency_report.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert sorted(m for m in imported if m.split(".")[0] in ("sqlalchemy", "db")) == ["db.tables"]
    assert "Session" not in Path(db.latency_report.__file__).read_text()
