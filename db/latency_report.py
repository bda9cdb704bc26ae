"""The maths of the Latency page, with no SQL: which metrics are measured, their log-spaced histograms (encoded as
the compact arrays the buckets store), bucket sizes for a range, and the report (percentiles, rates, goodput, SLO
breaches and compliance) summed from bucket rows or from exchanges. ``db.latency`` reads and writes the rows.

Histogram bins are log-spaced: bin 0 holds values under ``BIN_BASE_MS`` (0.01 ms); bin i >= 1 holds
[0.01 ms * 1.05^(i-1), 0.01 ms * 1.05^i); the last bin (about 2 hours and more) is open-ended. A percentile is the
nearest-rank one (the smallest value with at least q of the values at or under it, numpy's ``inverted_cdf``), read as
the geometric middle of the bin the ranked value fell in: its relative error is at most sqrt(1.05) - 1 = 2.47 %
(``MAX_RELATIVE_ERROR``; below 0.01 ms the absolute error is under 0.01 ms). Means are exact (from the sums).

Percentiles are exact per bucket and across buckets (histograms add up), so every aggregation of the page (per
bucket, per version, the whole range) comes from the same rows.

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

from db.tables import SLO_STATS

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


def add_keys(blob: bytes, keys: Sequence[int]) -> bytes:
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


# ---- the report ----------------------------------------------------------------------------------------------------


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
    """Everything the Latency page shows for a range, as columns (numpy arrays, NaN where there is no value).

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
class BucketFrame:
    """Rows to summarise, as columns (bucket rows, or exchanges for the user filter)."""

    epoch_s: IntArray
    version: list[str]
    status: list[str]
    counts: FloatArray  # (rows, 7): COUNT_COLUMNS
    sums: FloatArray  # (rows, metrics)
    entry_row: IntArray
    entry_key: IntArray
    entry_count: FloatArray


COUNT_COLUMNS = ("requests", "flagged", "blocked", "prompt_tokens", "output_tokens", "prompt_flagged",
                 "output_flagged")
N_COUNTS = len(COUNT_COLUMNS)


def empty_frame() -> BucketFrame:
    return BucketFrame(np.zeros(0, np.int64), [], [], np.zeros((0, N_COUNTS)), np.zeros((0, len(METRICS))),
                       np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))


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


def summarize(frame: BucketFrame, query: MetricsQuery, slos: Sequence[SloTarget] = (), *, source: str,
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
                           for c in range(N_COUNTS)], axis=1)
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
