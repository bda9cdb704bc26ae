"""Latency and traffic of the Latency page, in the database: buckets written with each finished exchange, rebuilt
from the exchanges, and read back as the page's report (the maths is ``db.latency_report``; targets ``db.slo``).

Design (issue 12): the Latency page never reads exchanges. Each finished exchange adds itself, in the transaction that
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

A user filter cannot use the buckets (the user is not part of the key: it would multiply the rows by the number of
users); :func:`raw_report` reads that user's exchanges instead (indexed by user, newest first, at most
``RAW_ROW_CAP`` rows; the page says so), and has no console-overhead figures (they are not stored on exchanges).

Per vLLM server (server backends) the same: the server is not part of the key, so :func:`server_report` reads the
exchanges each server answered (``exchanges.engine_server``), server by server on the ``(engine_server,
created_at)`` index, at most ``SERVER_ROW_CAP`` per server. Measured on the benchmark's database (1,000,000
exchanges over 30 days): with no server traffic it costs about 1 ms whatever the range; with a third of them
answered by two servers, 0.18 s for a day and 0.4 s for 7 to 90 days (10,000 rows read per server), on the busy
shared 2-core machine.
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
from db.latency_report import (
    BIN_STRIDE,
    COUNT_COLUMNS,
    ENGINE_METRICS,
    HIST_DTYPE,
    METRICS,
    N_COUNTS,
    RECORDED_STATUSES,
    SUM_COLUMNS,
    BucketFrame,
    FloatArray,
    IntArray,
    MetricsQuery,
    MetricsReport,
    SloTarget,
    add_keys,
    bin_index,
    bin_indices,
    empty_frame,
    encode_hist,
    floor_time,
    resolution_for,
    summarize,
)
from db.tables import BUCKET_RESOLUTIONS, Exchange, LatencyBucket

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
             "b_synthetic": bool(synthetic), "b_status": status, "b_hist": add_keys(row.hist, keys)}
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


def _bucket_rows(session: Session, query: MetricsQuery) -> BucketFrame:
    res = resolution_for(query.bucket)
    t = _TABLE.c
    stmt = select(t.bucket_start, t.model_version, t.status, *(t[c] for c in COUNT_COLUMNS),
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
        return empty_frame()
    blobs = [r[-1] for r in rows]
    pairs = np.frombuffer(b"".join(blobs), dtype=HIST_DTYPE)
    lengths = np.array([len(b) // HIST_DTYPE.itemsize for b in blobs], dtype=np.int64)
    numbers = np.array([r[3:-1] for r in rows], dtype=np.float64)
    return BucketFrame(
        epoch_s=np.array([int(r[0].timestamp()) for r in rows], dtype=np.int64),
        version=[r[1] for r in rows],
        status=[r[2] for r in rows],
        counts=numbers[:, :N_COUNTS],
        sums=numbers[:, N_COUNTS:],
        entry_row=np.repeat(np.arange(len(rows), dtype=np.int64), lengths),
        entry_key=pairs["k"].astype(np.int64),
        entry_count=pairs["c"].astype(np.float64),
    )


def bucket_report(session: Session, query: MetricsQuery, slos: Sequence[SloTarget] = ()) -> MetricsReport:
    """The Latency page's figures for ``query`` from the buckets (minute rows up to a day's range, else hour rows)."""
    frame = _bucket_rows(session, query)
    return summarize(frame, query, slos, source="buckets", rows_read=len(frame.version))


RAW_ROW_CAP = 50_000


def _frame_of(rows: Sequence[Any]) -> tuple[BucketFrame, int]:
    """Exchange rows (``_EXCHANGE_COLUMNS``' shape; the second column is the group: version or server) as a frame."""
    batch = _batch_from_rows(rows)
    entry_row, entry_key = _entries(batch)
    counts = np.column_stack([np.ones(len(rows)), batch.flagged, batch.blocked,
                              np.nan_to_num(batch.prompt_tokens), np.nan_to_num(batch.output_tokens),
                              batch.prompt_flagged, batch.output_flagged])
    sums = np.column_stack([np.nan_to_num(batch.values[m]) if m in batch.values else np.zeros(len(rows))
                            for m in METRICS])
    frame = BucketFrame(batch.epoch_s.astype(np.int64), list(batch.model_version), list(batch.status), counts, sums,
                        entry_row, entry_key, np.ones(len(entry_row)))
    return frame, len(rows)


def _filtered(stmt: Any, query: MetricsQuery) -> Any:
    if query.synthetic is not None:
        stmt = stmt.where(Exchange.synthetic == query.synthetic)
    if query.versions:
        stmt = stmt.where(Exchange.model_version.in_(query.versions))
    if query.statuses:
        stmt = stmt.where(Exchange.status.in_(query.statuses))
    return stmt


def raw_report(session: Session, query: MetricsQuery, *, user_id: int, slos: Sequence[SloTarget] = (),
               cap: int = RAW_ROW_CAP) -> MetricsReport:
    """The same figures for one user's requests, from their exchanges (the buckets do not know users).

    Reads the newest ``cap`` finished exchanges of the user in the range (``capped`` says when there were more);
    indexed by user. No console-overhead figures (they are not stored on exchanges).
    """
    stmt = _filtered(select(*_EXCHANGE_COLUMNS)
                     .where(Exchange.user_id == user_id, Exchange.status != "pending",
                            Exchange.created_at >= query.start, Exchange.created_at < query.end)
                     .order_by(Exchange.created_at.desc()).limit(cap + 1), query)
    rows = session.execute(stmt).all()
    capped = len(rows) > cap
    rows = rows[:cap]
    if not rows:
        return summarize(empty_frame(), query, slos, source="exchanges", rows_read=0)
    frame, read = _frame_of(rows)
    return summarize(frame, query, slos, source="exchanges", rows_read=read, capped=capped)


SERVER_ROW_CAP = 10_000  # per server
MAX_SERVERS = 50
_SERVER_COLUMNS = (Exchange.created_at, Exchange.engine_server, *_EXCHANGE_COLUMNS[2:])


def servers_in_range(session: Session, since: datetime, until: datetime, *, limit: int = MAX_SERVERS) -> list[str]:
    """The vLLM servers (base URLs, sorted) that answered exchanges created in [since, until), at most ``limit``.

    Walks the distinct servers on the ``(engine_server, created_at)`` index, one seek per server: no exchange of
    the in-process engine is read, however many the range holds.
    """
    servers: list[str] = []
    last: str | None = None
    while len(servers) < limit:
        after = Exchange.engine_server.is_not(None) if last is None else Exchange.engine_server > last
        following = session.scalar(select(func.min(Exchange.engine_server)).where(after))
        if following is None:
            return servers
        last = str(following)
        hit = session.scalar(select(Exchange.id).where(Exchange.engine_server == last, Exchange.created_at >= since,
                                                       Exchange.created_at < until).limit(1))
        if hit is not None:
            servers.append(last)
    return servers


def server_report(session: Session, query: MetricsQuery, *, user_id: int | None = None,
                  cap: int = SERVER_ROW_CAP) -> MetricsReport:
    """Per vLLM server: the figures of the exchanges a server answered (``exchanges.engine_server``) in the range,
    with the same filters and maths as the page's, the server's base URL in place of the model version
    (``versions`` of the report are the servers; the totals' None row is every server together).

    Read from the exchanges (the buckets do not know servers), server by server on the ``(engine_server,
    created_at)`` index: each server's newest ``cap`` finished exchanges in the range (``capped`` says when a
    server had more). In-process exchanges (``engine_server`` NULL) are never read. ``user_id``: that user's only.
    """
    rows: list[Any] = []
    capped = False
    for server in servers_in_range(session, query.start, query.end):
        stmt = _filtered(select(*_SERVER_COLUMNS)
                         .where(Exchange.engine_server == server, Exchange.created_at >= query.start,
                                Exchange.created_at < query.end, Exchange.status != "pending")
                         .order_by(Exchange.created_at.desc()).limit(cap + 1), query)
        if user_id is not None:
            stmt = stmt.where(Exchange.user_id == user_id)
        found = session.execute(stmt).all()
        capped = capped or len(found) > cap
        rows += found[:cap]
    if not rows:
        return summarize(empty_frame(), query, source="exchanges", rows_read=0)
    frame, read = _frame_of(rows)
    return summarize(frame, query, source="exchanges", rows_read=read, capped=capped)


def bucket_versions(session: Session) -> list[str]:
    """Every model version with traffic in the buckets (from the hour rows: one per hour and version)."""
    stmt = select(_TABLE.c.model_version).where(_TABLE.c.resolution_s == 3600).distinct().order_by(
        _TABLE.c.model_version)
    return [str(v) for v in session.scalars(stmt)]
