"""Latency and traffic metrics: buckets written with each finished exchange, and the queries behind the dashboards.

Design (issue 12): the dashboards never read exchanges. Each finished exchange adds itself, in the transaction that
stores it, to two pre-aggregated rows of ``latency_buckets``: its minute and its hour (``BUCKET_RESOLUTIONS``),
keyed by (resolution, bucket start, model version, synthetic, final status). A row holds counters (requests; flagged
= the policy flagged or blocked the prompt or the answer, as ``db.flags`` defines it, and the two directions
``prompt_flagged``/``output_flagged``; blocked = a prompt or answer blocked), token sums, the sum of each latency (for means), and the
histograms of every latency metric as one compact array (``hist``: sorted ``(key, count)`` pairs, 6 bytes each,
key = metric index * 512 + bin). Ranges up to a day read minute rows; longer ones read hour rows, so the work a
page does depends on the number of buckets shown, not on the number of exchanges: a 30-day range reads about
2,200 hour rows whether it held 10,000 or 10,000,000 exchanges.

Measured before choosing (SQLite, 30 days x 3 versions x 7 metrics, one row per histogram bin instead of arrays:
1.9 million bin rows): summing the bins for 7 days took 0.40 s and for 30 days 1.75 s, before anything else the page
does. With arrays, ``llm-console bench dashboard`` (1,000,000 exchanges) computes the whole page in about 0.1 s for
7 days and 0.25 s for 30 days on a quiet 2-core machine. Writing arrays costs two statements per exchange instead of
one: an upsert that adds the counters and returns the stored histograms (``RETURNING``), and an update of the
histograms when the rows existed; about 0.4 ms per exchange on SQLite.

Histogram bins are log-spaced: bin 0 holds values under ``BIN_BASE_MS`` (0.01 ms); bin i >= 1 holds
[0.01 ms * 1.05^(i-1), 0.01 ms * 1.05^i); the last bin (about 2 hours and more) is open-ended. A percentile is the
nearest-rank one (the smallest value with at least q of the values at or under it, numpy's ``inverted_cdf``), read as
the geometric middle of the bin the ranked value fell in: its relative error is at most sqrt(1.05) - 1 = 2.47 %
(``MAX_RELATIVE_ERROR``; below 0.01 ms the absolute error is under 0.01 ms). Means are exact (from the sums).

Percentiles are exact per bucket and across buckets (histograms add up), so every aggregation of the page (per
bucket, per version, the whole range) comes from the same rows. The final status is part of the key, so the status
filter is exact too. A user filter cannot use the buckets (the user is not part of the key: it would multiply the
rows by the number of users); :func:`raw_report` reads that user's exchanges instead (indexed by user, newest first,
at most ``RAW_ROW_CAP`` rows; the page says so), and has no console-overhead figures (they are not stored on
exchanges).

Goodput (share of the requests that reached the model which met every target) is computed per version from the
same histograms: a request meets the targets when it finished ``ok`` and each latency that has a target is at or
under it (the strictest threshold when one metric has several). Histograms are per metric, so with targets on two
or more latency metrics the joint share is not known exactly: :func:`summarize` gives bounds, the upper one the
smallest per-metric share, the lower one Bonferroni's (1 - the sum of the per-metric misses). With targets on at
most one latency metric (plus any rate targets) it is exact, up to the one bin that straddles the threshold (that
bin's requests are counted as meeting in the upper bound and as missing in the lower one). Flag and block rates are
about content, not service: they are checked as targets (breaches) but are not part of a request's goodput.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import Table, TextualSelect, bindparam, delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from db import flags
from db.tables import BUCKET_RESOLUTIONS, SLO_STATS, Exchange, LatencyBucket, Slo
from db.types import utcnow

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# ---- what is measured --------------------------------------------------------------------------------------------

# The engine's times for a request (vLLM's RequestStateStats, in milliseconds), and the console's own overhead.
ENGINE_METRICS: tuple[str, ...] = ("ttft_ms", "itl_ms", "e2e_ms", "queue_ms")
OVERHEAD_METRICS: tuple[str, ...] = ("scan_before_ms", "scan_after_ms", "store_ms")
METRICS: tuple[str, ...] = ENGINE_METRICS + OVERHEAD_METRICS
SUM_COLUMNS: dict[str, str] = {m: f"{m.removesuffix('_ms')}_sum_ms" for m in METRICS}
# Every final status (``pending`` is not final: it is recorded when the exchange completes or is interrupted).
RECORDED_STATUSES: tuple[str, ...] = ("ok", "error", "aborted", "blocked", "interrupted")
RATE_METRICS: tuple[str, ...] = ("error_rate", "abort_rate", "flag_rate", "block_rate")
PERCENTILES: dict[str, float] = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}
# Which SLOs may be set: a percentile of an engine latency, or a rate.
SLO_METRICS: dict[str, tuple[str, ...]] = {
    **{m: tuple(PERCENTILES) for m in ENGINE_METRICS},
    **{m: ("rate",) for m in RATE_METRICS},
}
assert set(PERCENTILES) | {"rate"} == set(SLO_STATS)

# ---- histogram bins ----------------------------------------------------------------------------------------------

BIN_BASE_MS = 0.01
BIN_RATIO = 1.05
N_BINS = 420  # 0.01 ms * 1.05^419 is about 2.1 hours: the last bin is open-ended
BIN_STRIDE = 512  # key = metric index * BIN_STRIDE + bin (fits the uint16 key)
MAX_RELATIVE_ERROR = math.sqrt(BIN_RATIO) - 1.0  # 0.0247: a percentile read from the bins is within 2.47 %
_LOG_RATIO = math.log(BIN_RATIO)
HIST_DTYPE = np.dtype([("k", "<u2"), ("c", "<u4")])

_I = np.arange(BIN_STRIDE, dtype=np.float64)
# The value a bin stands for (its geometric middle), and its edges; keys past N_BINS are never used.
BIN_VALUES: FloatArray = np.where(_I == 0, BIN_BASE_MS / 2, BIN_BASE_MS * BIN_RATIO ** (_I - 0.5))
BIN_LOWER: FloatArray = np.where(_I == 0, 0.0, BIN_BASE_MS * BIN_RATIO ** (_I - 1))
BIN_UPPER: FloatArray = np.where(_I >= N_BINS - 1, np.inf, BIN_BASE_MS * BIN_RATIO**_I)


def bin_index(value_ms: float) -> int:
    """The histogram bin of one value in milliseconds (values under 0.01 ms, and negative ones, go to bin 0)."""
    if not math.isfinite(value_ms):
        raise ValueError(f"not a finite time: {value_ms!r}")
    if value_ms < BIN_BASE_MS:
        return 0
    return min(N_BINS - 1, math.floor(math.log(value_ms / BIN_BASE_MS) / _LOG_RATIO) + 1)


def bin_indices(values_ms: npt.ArrayLike) -> IntArray:
    """:func:`bin_index` of many values; -1 where a value is missing (NaN) or not finite."""
    v = np.asarray(values_ms, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = np.floor(np.log(np.maximum(v, BIN_BASE_MS) / BIN_BASE_MS) / _LOG_RATIO) + 1
    idx = np.where(v < BIN_BASE_MS, 0.0, np.minimum(raw, N_BINS - 1))
    return cast(IntArray, np.where(np.isfinite(v), idx, -1).astype(np.int64))


def encode_hist(keys: npt.ArrayLike, counts: npt.ArrayLike) -> bytes:
    """A histogram as stored: ``(key, count)`` pairs, keys ascending and unique, 6 bytes per pair."""
    k = np.asarray(keys)
    out = np.empty(len(k), dtype=HIST_DTYPE)
    out["k"] = k
    out["c"] = np.asarray(counts)
    return out.tobytes()


def decode_hist(blob: bytes) -> tuple[IntArray, IntArray]:
    """The keys and counts of a stored histogram."""
    pairs = np.frombuffer(blob, dtype=HIST_DTYPE)
    return pairs["k"].astype(np.int64), pairs["c"].astype(np.int64)


def _add_keys(blob: bytes, keys: Sequence[int]) -> bytes:
    """``blob`` with one more count at each of ``keys`` (unique: one per metric)."""
    old = np.frombuffer(blob, dtype=HIST_DTYPE)
    new = np.array(sorted(keys), dtype=np.uint16)
    pos = np.searchsorted(old["k"], new)
    hit = pos < len(old)
    hit[hit] = old["k"][pos[hit]] == new[hit]
    out = old.copy()
    out["c"][pos[hit]] += 1
    if not hit.all():
        added = np.zeros(int((~hit).sum()), dtype=HIST_DTYPE)
        added["k"] = new[~hit]
        added["c"] = 1
        out = np.insert(out, pos[~hit], added)
    return out.tobytes()


# ---- time ----------------------------------------------------------------------------------------------------------


def floor_time(ts: datetime, seconds: int) -> datetime:
    """``ts`` rounded down to a multiple of ``seconds`` since the Unix epoch (UTC), e.g. its minute."""
    if ts.tzinfo is None:
        raise ValueError(f"naive datetime {ts!r}: pass a timezone-aware datetime")
    return datetime.fromtimestamp(math.floor(ts.timestamp() / seconds) * seconds, UTC)


def ceil_time(ts: datetime, seconds: int) -> datetime:
    """``ts`` rounded up to a multiple of ``seconds`` since the Unix epoch (UTC)."""
    floored = floor_time(ts, seconds)
    return floored if floored == ts else floored + timedelta(seconds=seconds)


# Range length -> bucket length: about 15 to 200 points on a chart, and hour rows for every range over a day.
_BUCKET_STEPS: tuple[tuple[timedelta, int], ...] = (
    (timedelta(hours=3), 60),
    (timedelta(hours=6), 300),
    (timedelta(hours=24), 900),
    (timedelta(days=8), 3600),
    (timedelta(days=31), 6 * 3600),
    (timedelta(days=92), 86400),
)
MAX_BUCKETS = 200


def bucket_seconds_for(since: datetime, until: datetime) -> int:
    """The bucket length for a range: 1 minute up to 3 hours, 5 minutes up to 6 hours, 15 minutes up to a day,
    1 hour up to 8 days, 6 hours up to 31 days, 1 day up to 92 days, then whole days for at most 200 buckets."""
    span = until - since - timedelta(seconds=1)  # slack: "the last 24 hours, this instant included" is a day
    for limit, seconds in _BUCKET_STEPS:
        if span <= limit:
            return seconds
    return 86400 * math.ceil(span.total_seconds() / 86400 / MAX_BUCKETS)


def resolution_for(bucket_s: int) -> int:
    """Which stored rows a bucket length is summed from: hour rows when it is whole hours, else minute rows."""
    return 3600 if bucket_s % 3600 == 0 else 60


# ---- writing -------------------------------------------------------------------------------------------------------

_TABLE = cast(Table, LatencyBucket.__table__)
_PK = ("resolution_s", "bucket_start", "model_version", "synthetic", "status")
_ADDED = ("requests", "flagged", "blocked", "prompt_tokens", "output_tokens", "prompt_flagged", "output_flagged",
          *SUM_COLUMNS.values())
_UPDATE_HIST = (
    update(_TABLE)
    .where(_TABLE.c.resolution_s == bindparam("b_res"), _TABLE.c.bucket_start == bindparam("b_start"),
           _TABLE.c.model_version == bindparam("b_version"), _TABLE.c.synthetic == bindparam("b_synthetic"),
           _TABLE.c.status == bindparam("b_status"))
    .values(hist=bindparam("b_hist"))
)


def _finite(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(cast(float, value))
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _count(value: object) -> int:
    number = _finite(value)
    return max(0, int(number)) if number is not None else 0


_ROW_COLUMNS = (*_PK, *_ADDED, "hist")


def _build_upsert() -> TextualSelect:
    # Plain SQL (the same on SQLite and PostgreSQL), built once: SQLAlchemy compiles an insert().values([...])
    # .on_conflict_do_update() anew at every execution, which alone cost several milliseconds per exchange.
    # Every name in it is one of this module's constants.
    rows = ", ".join("(" + ", ".join(f":r{i}_{c}" for c in _ROW_COLUMNS) + ")"
                     for i in range(len(BUCKET_RESOLUTIONS)))
    sql = (f"INSERT INTO latency_buckets ({', '.join(_ROW_COLUMNS)}) VALUES {rows} "  # noqa: S608
           f"ON CONFLICT ({', '.join(_PK)}) DO UPDATE SET "
           + ", ".join(f"{c} = latency_buckets.{c} + excluded.{c}" for c in _ADDED)
           + " RETURNING resolution_s, bucket_start, requests, hist")
    params = [bindparam(f"r{i}_{c}", type_=_TABLE.c[c].type)
              for i in range(len(BUCKET_RESOLUTIONS)) for c in _ROW_COLUMNS]
    return text(sql).bindparams(*params).columns(
        _TABLE.c.resolution_s, _TABLE.c.bucket_start, _TABLE.c.requests, _TABLE.c.hist)


_UPSERT = _build_upsert()


def record_exchange(
    session: Session,
    *,
    minute: datetime,
    model_version: str,
    synthetic: bool,
    status: str,
    prompt_action: str | None = None,
    output_action: str | None = None,
    timings: Mapping[str, Any],
    overhead: Mapping[str, Any],
) -> None:
    """Add one finished exchange to its minute's and hour's bucket, in the caller's transaction.

    ``minute``: the exchange's ``created_at`` (rounded down here). ``status``: its final status (not ``pending``).
    ``prompt_action``/``output_action``: the policy's actions (``allow``, ``flag``, ``redact``, ``block``, None),
    from which ``db.flags`` says whether it was flagged (each way) and blocked. ``timings``: the
    engine's figures (keys of ``db.chat.ExchangeTimings``: ``ttft_ms``, ``itl_ms``, ``e2e_ms``, ``queue_ms``,
    ``prompt_tokens``, ``output_tokens``; others are ignored). ``overhead``: the console's own milliseconds,
    ``scan_before_ms`` (prompt and system prompt scan), ``scan_after_ms`` (answer scan), ``store_ms`` (storing the
    turn). A missing or None figure is simply not counted (the page says "not recorded").

    One statement inserts or adds to both rows and returns their histograms; a row that existed gets its histogram
    rewritten (a second statement). On PostgreSQL the upsert locks the rows until the commit, so concurrent
    exchanges of the same minute and version add up correctly.
    """
    if status not in RECORDED_STATUSES:
        raise ValueError(f"status must be one of {RECORDED_STATUSES}, got {status!r}")
    keys: list[int] = []
    sums: dict[str, float] = {}
    for i, metric in enumerate(METRICS):
        value = _finite((timings if metric in ENGINE_METRICS else overhead).get(metric))
        sums[SUM_COLUMNS[metric]] = max(value, 0.0) if value is not None else 0.0
        if value is not None:
            keys.append(i * BIN_STRIDE + bin_index(value))
    prompt_flagged, output_flagged = flags.action_flags(prompt_action), flags.action_flags(output_action)
    common = {"model_version": model_version, "synthetic": bool(synthetic), "status": status, "requests": 1,
              "flagged": int(prompt_flagged or output_flagged),
              "blocked": int(flags.is_blocked(status, prompt_action, output_action)),
              "prompt_flagged": int(prompt_flagged), "output_flagged": int(output_flagged),
              "prompt_tokens": _count(timings.get("prompt_tokens")),
              "output_tokens": _count(timings.get("output_tokens")), **sums,
              "hist": encode_hist(keys, [1] * len(keys))}
    params: dict[str, Any] = {}
    for i, res in enumerate(BUCKET_RESOLUTIONS):
        row = {"resolution_s": res, "bucket_start": floor_time(minute, res), **common}
        params.update({f"r{i}_{c}": row[c] for c in _ROW_COLUMNS})
    # Through the session's connection (Core): the ORM layer adds nothing here but time.
    connection = session.connection()
    existed = [row for row in connection.execute(_UPSERT, params) if row.requests > 1]
    if existed and keys:
        connection.execute(_UPDATE_HIST, [
            {"b_res": row.resolution_s, "b_start": row.bucket_start, "b_version": model_version,
             "b_synthetic": bool(synthetic), "b_status": status, "b_hist": _add_keys(row.hist, keys)}
            for row in existed
        ])


def record_exchange_row(session: Session, exchange: Exchange, *, overhead: Mapping[str, Any] | None = None) -> None:
    """:func:`record_exchange` for a stored (flushed) exchange row, with its policy actions."""
    record_exchange(
        session, minute=exchange.created_at, model_version=exchange.model_version, synthetic=exchange.synthetic,
        status=exchange.status, prompt_action=exchange.prompt_action, output_action=exchange.output_action,
        timings={m: getattr(exchange, m) for m in (*ENGINE_METRICS, "prompt_tokens", "output_tokens")},
        overhead=overhead or {},
    )


@dataclass(frozen=True)
class ExchangeBatch:
    """Finished exchanges as columns (one entry per exchange), for :func:`load_exchange_batch`.

    ``values`` maps a metric of :data:`METRICS` to milliseconds (NaN where absent); a metric left out is absent for
    every exchange. Token counts are NaN where unknown. ``prompt_flagged``/``output_flagged``: the policy flagged or
    blocked that side (``db.flags.action_flags``); the exchange is flagged when either is.
    """

    epoch_s: FloatArray
    model_version: Sequence[str]
    synthetic: npt.NDArray[np.bool_]
    status: Sequence[str]
    prompt_flagged: npt.NDArray[np.bool_]
    output_flagged: npt.NDArray[np.bool_]
    blocked: npt.NDArray[np.bool_]
    prompt_tokens: FloatArray
    output_tokens: FloatArray
    values: Mapping[str, FloatArray]

    def __len__(self) -> int:
        return len(self.epoch_s)

    @property
    def flagged(self) -> npt.NDArray[np.bool_]:
        return np.asarray(self.prompt_flagged, np.bool_) | np.asarray(self.output_flagged, np.bool_)


def _entries(batch: ExchangeBatch) -> tuple[IntArray, IntArray]:
    """(exchange index, histogram key) for every value present."""
    rows: list[IntArray] = []
    keys: list[IntArray] = []
    for i, metric in enumerate(METRICS):
        values = batch.values.get(metric)
        if values is None:
            continue
        bins = bin_indices(values)
        present = np.flatnonzero(bins >= 0)
        rows.append(present.astype(np.int64))
        keys.append(i * BIN_STRIDE + bins[present])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows), np.concatenate(keys)


def _codes(values: Sequence[str]) -> tuple[list[str], IntArray]:
    names, codes = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
    return [str(n) for n in names], codes.astype(np.int64).reshape(-1)


def load_exchange_batch(session: Session, batch: ExchangeBatch) -> int:
    """Insert the buckets of many exchanges at once (the rebuild and the benchmark's seeding).

    Aggregates with numpy and inserts each bucket row once: the buckets must not exist yet (a row that does makes
    the insert fail). Returns the number of rows inserted.
    """
    n = len(batch)
    if n == 0:
        return 0
    versions, version_code = _codes(batch.model_version)
    status_code = np.array([RECORDED_STATUSES.index(s) for s in batch.status], dtype=np.int64)
    if len(versions) >= 4096:
        raise ValueError("more than 4095 model versions in one batch")
    entry_row, entry_key = _entries(batch)
    sums = {SUM_COLUMNS[m]: np.nan_to_num(np.maximum(np.asarray(batch.values[m], np.float64), 0.0), nan=0.0)
            if m in batch.values else np.zeros(n) for m in METRICS}
    counters = {
        "requests": np.ones(n),
        "flagged": np.asarray(batch.flagged, np.float64),
        "blocked": np.asarray(batch.blocked, np.float64),
        "prompt_tokens": np.nan_to_num(np.maximum(np.asarray(batch.prompt_tokens, np.float64), 0.0), nan=0.0),
        "output_tokens": np.nan_to_num(np.maximum(np.asarray(batch.output_tokens, np.float64), 0.0), nan=0.0),
        "prompt_flagged": np.asarray(batch.prompt_flagged, np.float64),
        "output_flagged": np.asarray(batch.output_flagged, np.float64),
    }
    synthetic = np.asarray(batch.synthetic, np.int64)
    inserted = 0
    for res in BUCKET_RESOLUTIONS:
        start = np.floor(np.asarray(batch.epoch_s, np.float64) / res).astype(np.int64)
        rowkey = ((start * 4096 + version_code) * 2 + synthetic) * 8 + status_code
        keys, row_of = np.unique(rowkey, return_inverse=True)
        row_of = row_of.reshape(-1)
        m = len(keys)
        agg = {name: np.bincount(row_of, weights=col, minlength=m) for name, col in {**counters, **sums}.items()}
        combined, counts = np.unique(row_of[entry_row] * 4096 + entry_key, return_counts=True)
        owner = combined // 4096
        pairs = np.empty(len(combined), dtype=HIST_DTYPE)
        pairs["k"] = combined % 4096
        pairs["c"] = counts
        packed = pairs.tobytes()
        ends = np.cumsum(np.bincount(owner, minlength=m)) * HIST_DTYPE.itemsize
        begins = np.concatenate(([0], ends[:-1]))
        rows = []
        for j in range(m):
            key = int(keys[j])
            rows.append({
                "resolution_s": res,
                "bucket_start": datetime.fromtimestamp((key >> 16) * res, UTC),
                "model_version": versions[(key >> 4) & 4095],
                "synthetic": bool((key >> 3) & 1),
                "status": RECORDED_STATUSES[key & 7],
                **{name: int(agg[name][j]) for name in counters},
                **{name: float(agg[name][j]) for name in sums},
                "hist": packed[int(begins[j]):int(ends[j])],
            })
        for chunk in range(0, len(rows), 20_000):
            session.execute(insert(_TABLE), rows[chunk:chunk + 20_000])
        inserted += m
    return inserted


_EXCHANGE_COLUMNS = (Exchange.created_at, Exchange.model_version, Exchange.synthetic, Exchange.status,
                     Exchange.prompt_action, Exchange.output_action, Exchange.prompt_tokens, Exchange.output_tokens,
                     *(getattr(Exchange, m) for m in ENGINE_METRICS))


def _batch_from_rows(rows: Sequence[Any]) -> ExchangeBatch:
    def floats(index: int) -> FloatArray:
        return np.array([r[index] if r[index] is not None else np.nan for r in rows], dtype=np.float64)

    return ExchangeBatch(
        epoch_s=np.array([r[0].timestamp() for r in rows], dtype=np.float64),
        model_version=[r[1] for r in rows],
        synthetic=np.array([bool(r[2]) for r in rows], dtype=np.bool_),
        status=[r[3] for r in rows],
        prompt_flagged=np.array([flags.action_flags(r[4]) for r in rows], dtype=np.bool_),
        output_flagged=np.array([flags.action_flags(r[5]) for r in rows], dtype=np.bool_),
        blocked=np.array([flags.is_blocked(r[3], r[4], r[5]) for r in rows], dtype=np.bool_),
        prompt_tokens=floats(6),
        output_tokens=floats(7),
        values={m: floats(8 + i) for i, m in enumerate(ENGINE_METRICS)},
    )


def rebuild_buckets(session: Session, *, chunk: timedelta = timedelta(days=1)) -> int:
    """Rebuild every bucket from the exchanges table (not ``pending`` ones); returns the exchanges counted.

    For ``llm-console metrics rebuild`` (e.g. after upgrading a database that already held exchanges). Runs in the
    caller's write transaction, day by day (days hold whole minutes and hours, so no bucket spans two chunks).
    The console's overhead figures are not stored on exchanges: a rebuild loses those already recorded.
    On PostgreSQL the table is locked first, so exchanges finishing meanwhile wait and then add to the new rows.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("LOCK TABLE latency_buckets IN EXCLUSIVE MODE"))
    session.execute(delete(_TABLE))
    finished = Exchange.status != "pending"
    span = session.execute(select(func.min(Exchange.created_at), func.max(Exchange.created_at))
                           .where(finished)).one()
    first: datetime | None = span[0]
    last: datetime | None = span[1]
    if first is None or last is None:
        return 0
    counted = 0
    start = floor_time(first, 86400)
    while start <= last:
        end = start + chunk
        rows = session.execute(select(*_EXCHANGE_COLUMNS)
                               .where(finished, Exchange.created_at >= start, Exchange.created_at < end)).all()
        if rows:
            load_exchange_batch(session, _batch_from_rows(rows))
            counted += len(rows)
        start = end
    return counted


# ---- reading -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SloTarget:
    """A target: ``metric`` of :data:`SLO_METRICS`, ``stat`` p50..p99 or ``rate``, threshold in ms or a fraction."""

    metric: str
    stat: str
    threshold: float

    @property
    def is_rate(self) -> bool:
        return self.stat == "rate"


@dataclass(frozen=True)
class MetricsQuery:
    """A range and filters. ``synthetic``: False = real traffic only (the default), True = synthetic only, None =
    both. Empty ``versions``/``statuses`` mean all. ``now`` bounds the last bucket's length for per-second rates."""

    since: datetime
    until: datetime
    bucket_s: int | None = None  # None: follows the range (bucket_seconds_for)
    versions: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    synthetic: bool | None = False
    now: datetime | None = None

    @property
    def bucket(self) -> int:
        return self.bucket_s or bucket_seconds_for(self.since, self.until)

    @property
    def start(self) -> datetime:
        """The range's start, widened to a whole bucket."""
        return floor_time(self.since, self.bucket)

    @property
    def end(self) -> datetime:
        """The range's end, widened to a whole bucket."""
        return ceil_time(self.until, self.bucket)


@dataclass(frozen=True)
class Breach:
    """A bucket in which a version missed a target."""

    bucket_start: datetime
    model_version: str
    metric: str
    stat: str
    threshold: float
    measured: float
    requests: int


@dataclass(frozen=True)
class Goodput:
    """Requests (of those that reached the model) that met every target, as bounds; equal bounds when exact."""

    model_version: str | None  # None: every version together
    reached_model: int
    good_low: int
    good_high: int
    exact: bool

    @property
    def share_low(self) -> float | None:
        return self.good_low / self.reached_model if self.reached_model else None

    @property
    def share_high(self) -> float | None:
        return self.good_high / self.reached_model if self.reached_model else None


@dataclass(frozen=True)
class Compliance:
    """A target against the whole range, per version (None: every version together)."""

    model_version: str | None
    metric: str
    stat: str
    threshold: float
    measured: float | None
    met: bool | None  # None: nothing measured


Columns = dict[str, npt.NDArray[Any]]
# Columns holding counts (whole numbers), and the ones that are not figures.
_INT_COLUMNS = frozenset({"requests", *RECORDED_STATUSES, "flagged", "prompt_flagged", "output_flagged",
                          "blocked_any", "prompt_tokens", "output_tokens", *(f"{m}_n" for m in METRICS)})


def _rows(columns: Columns) -> list[dict[str, Any]]:
    """Columns as one dict per row: NaN becomes None, counts become ints."""
    names = list(columns)
    out = []
    for values in zip(*(columns[n].tolist() for n in names), strict=True):
        row: dict[str, Any] = {}
        for name, value in zip(names, values, strict=True):
            if isinstance(value, float) and math.isnan(value):
                value = None
            elif name in _INT_COLUMNS and value is not None:
                value = int(value)
            row[name] = value
        out.append(row)
    return out


@dataclass(frozen=True)
class MetricsReport:
    """Everything the dashboards show for a range, as columns (numpy arrays, NaN where there is no value).

    ``series_columns``: one entry per bucket and version with traffic (``bucket_start``, ``bucket_epoch``,
    ``model_version``); ``totals_columns``: one per version and one for every version together (``model_version``
    None). Each holds counts, per-second rates (averaged over the part of the bucket that has passed), status rates
    (fractions) and, per metric of :data:`METRICS`, ``<metric>_p50/_p90/_p95/_p99/_mean`` (ms) and ``<metric>_n``
    (how many values). ``series`` and ``totals`` give the same as one dict per row (None for NaN).
    """

    start: datetime
    end: datetime
    bucket_s: int
    resolution_s: int
    versions: tuple[str, ...]
    series_columns: Columns
    totals_columns: Columns
    goodput: list[Goodput]
    breaches: list[Breach]
    compliance: list[Compliance]
    source: str  # "buckets" or "exchanges"
    rows_read: int
    capped: bool = False

    @property
    def series(self) -> list[dict[str, Any]]:
        return _rows(self.series_columns)

    @property
    def totals(self) -> list[dict[str, Any]]:
        return _rows(self.totals_columns)

    @property
    def empty(self) -> bool:
        return len(self.series_columns.get("requests", ())) == 0


@dataclass
class _Frame:
    """Rows to summarise, as columns (bucket rows, or exchanges for the user filter)."""

    epoch_s: IntArray
    version: list[str]
    status: list[str]
    counts: FloatArray  # (rows, 7): _COUNT_COLUMNS
    sums: FloatArray  # (rows, metrics)
    entry_row: IntArray
    entry_key: IntArray
    entry_count: FloatArray


_COUNT_COLUMNS = ("requests", "flagged", "blocked", "prompt_tokens", "output_tokens", "prompt_flagged",
                  "output_flagged")
_N_COUNTS = len(_COUNT_COLUMNS)


def _empty_frame() -> _Frame:
    return _Frame(np.zeros(0, np.int64), [], [], np.zeros((0, _N_COUNTS)), np.zeros((0, len(METRICS))),
                  np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))


def _bucket_rows(session: Session, query: MetricsQuery) -> _Frame:
    res = resolution_for(query.bucket)
    t = _TABLE.c
    stmt = select(t.bucket_start, t.model_version, t.status, *(t[c] for c in _COUNT_COLUMNS),
                  *(t[SUM_COLUMNS[m]] for m in METRICS), t.hist).where(
        t.resolution_s == res, t.bucket_start >= query.start, t.bucket_start < query.end)
    if query.synthetic is not None:
        stmt = stmt.where(t.synthetic == query.synthetic)
    if query.versions:
        stmt = stmt.where(t.model_version.in_(query.versions))
    if query.statuses:
        stmt = stmt.where(t.status.in_(query.statuses))
    rows = session.execute(stmt).all()
    if not rows:
        return _empty_frame()
    blobs = [r[-1] for r in rows]
    pairs = np.frombuffer(b"".join(blobs), dtype=HIST_DTYPE)
    lengths = np.array([len(b) // HIST_DTYPE.itemsize for b in blobs], dtype=np.int64)
    numbers = np.array([r[3:-1] for r in rows], dtype=np.float64)
    return _Frame(
        epoch_s=np.array([int(r[0].timestamp()) for r in rows], dtype=np.int64),
        version=[r[1] for r in rows],
        status=[r[2] for r in rows],
        counts=numbers[:, :_N_COUNTS],
        sums=numbers[:, _N_COUNTS:],
        entry_row=np.repeat(np.arange(len(rows), dtype=np.int64), lengths),
        entry_key=pairs["k"].astype(np.int64),
        entry_count=pairs["c"].astype(np.float64),
    )


def bucket_report(session: Session, query: MetricsQuery, slos: Sequence[SloTarget] = ()) -> MetricsReport:
    """The dashboards' figures for ``query`` from the buckets (minute rows up to a day's range, else hour rows)."""
    frame = _bucket_rows(session, query)
    return summarize(frame, query, slos, source="buckets", rows_read=len(frame.version))


RAW_ROW_CAP = 50_000


def raw_report(session: Session, query: MetricsQuery, *, user_id: int, slos: Sequence[SloTarget] = (),
               cap: int = RAW_ROW_CAP) -> MetricsReport:
    """The same figures for one user's requests, from their exchanges (the buckets do not know users).

    Reads the newest ``cap`` finished exchanges of the user in the range (``capped`` says when there were more);
    indexed by user. No console-overhead figures (they are not stored on exchanges).
    """
    stmt = (select(*_EXCHANGE_COLUMNS)
            .where(Exchange.user_id == user_id, Exchange.status != "pending",
                   Exchange.created_at >= query.start, Exchange.created_at < query.end)
            .order_by(Exchange.created_at.desc()).limit(cap + 1))
    if query.synthetic is not None:
        stmt = stmt.where(Exchange.synthetic == query.synthetic)
    if query.versions:
        stmt = stmt.where(Exchange.model_version.in_(query.versions))
    if query.statuses:
        stmt = stmt.where(Exchange.status.in_(query.statuses))
    rows = session.execute(stmt).all()
    capped = len(rows) > cap
    rows = rows[:cap]
    if not rows:
        return summarize(_empty_frame(), query, slos, source="exchanges", rows_read=0)
    batch = _batch_from_rows(rows)
    entry_row, entry_key = _entries(batch)
    counts = np.column_stack([np.ones(len(rows)), batch.flagged, batch.blocked,
                              np.nan_to_num(batch.prompt_tokens), np.nan_to_num(batch.output_tokens),
                              batch.prompt_flagged, batch.output_flagged])
    sums = np.column_stack([np.nan_to_num(batch.values[m]) if m in batch.values else np.zeros(len(rows))
                            for m in METRICS])
    frame = _Frame(batch.epoch_s.astype(np.int64), list(batch.model_version), list(batch.status), counts, sums,
                   entry_row, entry_key, np.ones(len(entry_row)))
    return summarize(frame, query, slos, source="exchanges", rows_read=len(rows), capped=capped)


def _percentiles(hist: FloatArray) -> dict[str, FloatArray]:
    """Nearest-rank percentiles (bin values, NaN without values) and counts of histograms on the last axis."""
    cum = np.cumsum(hist, axis=-1)
    n = cum[..., -1]
    out: dict[str, FloatArray] = {"n": n}
    for name, q in PERCENTILES.items():
        rank = np.maximum(1.0, np.ceil(q * n - 1e-9))
        idx = np.minimum((cum < rank[..., None]).sum(axis=-1), hist.shape[-1] - 1)
        out[name] = np.where(n > 0, BIN_VALUES[idx], np.nan)
    return out


def _figure_columns(counts: FloatArray, status_counts: FloatArray, sums: FloatArray,
                    pct: Mapping[str, FloatArray], covered_s: FloatArray) -> Columns:
    """The figures of groups (buckets, or versions over the range): one entry per row of the (rows, ...) inputs."""
    requests = counts[:, 0]
    nan = np.full(len(requests), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_request = requests > 0
        passed = covered_s > 0
        cols: Columns = {
            "requests": requests, **{st: status_counts[:, i] for i, st in enumerate(RECORDED_STATUSES)},
            "flagged": counts[:, 1], "blocked_any": counts[:, 2], "prompt_tokens": counts[:, 3],
            "output_tokens": counts[:, 4], "covered_s": covered_s,
            "requests_per_s": np.where(passed, requests / covered_s, nan),
            "output_tokens_per_s": np.where(passed, counts[:, 4] / covered_s, nan),
            "error_rate": np.where(per_request, status_counts[:, 1] / requests, nan),
            "abort_rate": np.where(per_request, (status_counts[:, 2] + status_counts[:, 4]) / requests, nan),
            "flag_rate": np.where(per_request, counts[:, 1] / requests, nan),
            "prompt_flagged": counts[:, 5], "output_flagged": counts[:, 6],
            "prompt_flag_rate": np.where(per_request, counts[:, 5] / requests, nan),
            "output_flag_rate": np.where(per_request, counts[:, 6] / requests, nan),
            "block_rate": np.where(per_request, counts[:, 2] / requests, nan),
        }
        for i, metric in enumerate(METRICS):
            n = pct["n"][:, i]
            cols[f"{metric}_n"] = n
            cols[f"{metric}_mean"] = np.where(n > 0, sums[:, i] / n, nan)
            for name in PERCENTILES:
                cols[f"{metric}_{name}"] = pct[name][:, i]
    return cols


def _measured(columns: Columns, slo: SloTarget) -> FloatArray:
    return cast(FloatArray, columns[slo.metric if slo.is_rate else f"{slo.metric}_{slo.stat}"])


def _goodput(version: str | None, ok_hist: FloatArray, status_counts: FloatArray,
             slos: Sequence[SloTarget]) -> Goodput:
    reached = int(status_counts.sum() - status_counts[RECORDED_STATUSES.index("blocked")])
    n_ok = int(status_counts[RECORDED_STATUSES.index("ok")])
    targets: dict[str, float] = {}
    for slo in slos:
        if not slo.is_rate and slo.metric in METRICS:
            targets[slo.metric] = min(slo.threshold, targets.get(slo.metric, math.inf))
    low_sum, high = 0, n_ok
    for metric, threshold in targets.items():
        counts = ok_hist[METRICS.index(metric)]  # as wide as the bins in use
        maybe_over = int(counts[BIN_UPPER[:len(counts)] > threshold].sum())
        surely_over = int(counts[BIN_LOWER[:len(counts)] > threshold].sum())
        low_sum += n_ok - maybe_over
        high = min(high, n_ok - surely_over)
    low = max(0, low_sum - (len(targets) - 1) * n_ok) if targets else n_ok
    return Goodput(version, reached, low, high, exact=len(targets) <= 1)


def _concat(parts: list[Columns]) -> Columns:
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]} if parts else {}


def _weighted_count(x: IntArray, *, weights: FloatArray, minlength: int) -> FloatArray:
    return cast(FloatArray, np.bincount(x, weights=weights, minlength=minlength).astype(np.float64))


def summarize(frame: _Frame, query: MetricsQuery, slos: Sequence[SloTarget] = (), *, source: str,
              rows_read: int, capped: bool = False) -> MetricsReport:
    """Sum the rows into buckets of ``query.bucket`` seconds per version, and per version over the range."""
    bucket_s = query.bucket
    t0 = int(query.start.timestamp())
    n_buckets = max(1, (int(query.end.timestamp()) - t0) // bucket_s)
    limit = (query.now or query.end).timestamp()
    starts = t0 + bucket_s * np.arange(n_buckets, dtype=np.int64)
    covered = np.clip(np.minimum(starts + bucket_s, limit) - starts, 0, bucket_s).astype(np.float64)
    versions = tuple(sorted(set(frame.version)))
    report_args: dict[str, Any] = {"start": query.start, "end": query.end, "bucket_s": bucket_s,
                                   "resolution_s": resolution_for(bucket_s), "versions": versions, "source": source,
                                   "rows_read": rows_read, "capped": capped}
    if not versions:
        return MetricsReport(series_columns={}, totals_columns={}, goodput=[], breaches=[], compliance=[],
                             **report_args)
    n_metrics, n_status = len(METRICS), len(RECORDED_STATUSES)
    b = np.clip((frame.epoch_s - t0) // bucket_s, 0, n_buckets - 1)
    v_index = {v: i for i, v in enumerate(versions)}
    v = np.array([v_index[x] for x in frame.version], dtype=np.int64)
    s_index = {st: i for i, st in enumerate(RECORDED_STATUSES)}
    s = np.array([s_index[x] for x in frame.status], dtype=np.int64)
    # Dense histograms only as wide as the highest bin in use, with the key made compact (metric * width + bin).
    entry_bin = frame.entry_key % BIN_STRIDE
    width = int(entry_bin.max()) + 1 if len(entry_bin) else 1
    entry_key = (frame.entry_key // BIN_STRIDE) * width + entry_bin
    entry_ok = s[frame.entry_row] == s_index["ok"]
    series_parts: list[Columns] = []
    total_counts, total_status, total_sums, total_hists, ok_hists = [], [], [], [], []
    for vi, version in enumerate(versions):
        rows = v == vi
        rb = b[rows]
        counts = np.stack([_weighted_count(rb, weights=frame.counts[rows, c], minlength=n_buckets)
                           for c in range(_N_COUNTS)], axis=1)
        sums = np.stack([_weighted_count(rb, weights=frame.sums[rows, m], minlength=n_buckets)
                         for m in range(n_metrics)], axis=1)
        status_counts = _weighted_count(rb * n_status + s[rows], weights=frame.counts[rows, 0],
                                    minlength=n_buckets * n_status).reshape(n_buckets, n_status)
        entries = rows[frame.entry_row]
        er = frame.entry_row[entries]
        hist = _weighted_count(b[er] * (n_metrics * width) + entry_key[entries], weights=frame.entry_count[entries],
                           minlength=n_buckets * n_metrics * width).reshape(n_buckets, n_metrics, width)
        ok_entries = entries & entry_ok
        ok_hists.append(_weighted_count(entry_key[ok_entries], weights=frame.entry_count[ok_entries],
                                    minlength=n_metrics * width).reshape(n_metrics, width))
        used = np.flatnonzero(counts[:, 0] > 0)
        part = _figure_columns(counts[used], status_counts[used], sums[used], _percentiles(hist[used]),
                               covered[used])
        series_parts.append({"bucket_epoch": starts[used],
                             "bucket_start": np.array([datetime.fromtimestamp(int(t), UTC) for t in starts[used]],
                                                      dtype=object),
                             "model_version": np.array([version] * len(used), dtype=object), **part})
        total_counts.append(counts.sum(axis=0))
        total_status.append(status_counts.sum(axis=0))
        total_sums.append(sums.sum(axis=0))
        total_hists.append(hist.sum(axis=0))
    # One row per version, then every version together.
    t_counts = np.vstack([*total_counts, np.sum(total_counts, axis=0)])
    t_status = np.vstack([*total_status, np.sum(total_status, axis=0)])
    t_sums = np.vstack([*total_sums, np.sum(total_sums, axis=0)])
    t_hist = np.stack([*total_hists, np.sum(total_hists, axis=0)])
    totals = {"model_version": np.array([*versions, None], dtype=object),
              **_figure_columns(t_counts, t_status, t_sums, _percentiles(t_hist),
                                np.full(len(versions) + 1, float(covered.sum())))}
    series = _concat(series_parts)
    order = np.lexsort((series["model_version"].astype(str), series["bucket_epoch"]))
    series = {name: col[order] for name, col in series.items()}
    goodput = []
    if slos:
        goodput = [_goodput(version, ok_hists[i], total_status[i], slos) for i, version in enumerate(versions)]
        goodput.append(_goodput(None, np.sum(ok_hists, axis=0), t_status[-1], slos))
    breaches = []
    for slo in slos:
        measured = _measured(series, slo)
        with np.errstate(invalid="ignore"):
            missed = np.flatnonzero(measured > slo.threshold)
        breaches += [Breach(series["bucket_start"][i], series["model_version"][i], slo.metric, slo.stat,
                            slo.threshold, float(measured[i]), int(series["requests"][i])) for i in missed]
    breaches.sort(key=lambda x: (x.bucket_start, x.model_version, x.metric, x.stat))
    compliance = []
    for slo in slos:
        measured = _measured(totals, slo)
        everyone: list[str | None] = [*versions, None]
        for i, who in enumerate(everyone):
            value = None if math.isnan(measured[i]) else float(measured[i])
            compliance.append(Compliance(who, slo.metric, slo.stat, slo.threshold, value,
                                         None if value is None else value <= slo.threshold))
    return MetricsReport(series_columns=series, totals_columns=totals, goodput=goodput, breaches=breaches,
                         compliance=compliance, **report_args)


def bucket_versions(session: Session) -> list[str]:
    """Every model version with traffic in the buckets (from the hour rows: one per hour and version)."""
    stmt = select(_TABLE.c.model_version).where(_TABLE.c.resolution_s == 3600).distinct().order_by(
        _TABLE.c.model_version)
    return [str(v) for v in session.scalars(stmt)]


# ---- service-level objectives ------------------------------------------------------------------------------------


def list_slos(session: Session) -> list[Slo]:
    """Every target, by metric and statistic."""
    return list(session.scalars(select(Slo).order_by(Slo.metric, Slo.stat)))


def check_slo(metric: str, stat: str, threshold: float) -> None:
    """Raise ValueError unless ``metric``/``stat`` may be a target and ``threshold`` fits it."""
    if stat not in SLO_METRICS.get(metric, ()):
        raise ValueError(f"no target can be set on {metric!r} {stat!r}")
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError("a threshold is a finite number, 0 or more")
    if stat == "rate" and threshold > 1:
        raise ValueError("a rate threshold is a fraction between 0 and 1")


def set_slo(session: Session, *, metric: str, stat: str, threshold: float, set_by_id: int | None,
            now: datetime | None = None) -> tuple[Slo, float | None]:
    """Set (or replace) the target for ``metric``/``stat``; returns it and the threshold it replaced, if any."""
    check_slo(metric, stat, threshold)
    slo = session.scalars(select(Slo).where(Slo.metric == metric, Slo.stat == stat).with_for_update()).first()
    previous = slo.threshold if slo is not None else None
    if slo is None:
        slo = Slo(metric=metric, stat=stat)
        session.add(slo)
    slo.threshold = float(threshold)
    slo.set_by_id = set_by_id
    slo.set_at = now or utcnow()
    session.flush()
    return slo, previous


def delete_slo(session: Session, slo_id: int) -> Slo | None:
    """Remove a target; returns it (detached values still readable), or None if there was none."""
    slo = session.get(Slo, slo_id, with_for_update=True)
    if slo is not None:
        session.delete(slo)
        session.flush()
    return slo


def slo_targets(slos: Sequence[Slo]) -> list[SloTarget]:
    return [SloTarget(s.metric, s.stat, s.threshold) for s in slos]
