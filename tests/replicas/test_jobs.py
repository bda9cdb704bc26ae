"""Leases on periodic jobs (db/jobs.py, PeriodicTask's ``job=``): one round per interval across console replicas.

On SQLite (one file, several Database objects racing from threads) and on PostgreSQL (several processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from console.services.periodic import PeriodicTask
from db import Database, DbConfig, jobs

T0 = datetime(2026, 12, 6, 23, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def row(db: Database, name: str):  # noqa: ANN201 - db.tables.JobRun | None
    with db.session(readonly=True) as s:
        return jobs.job_run(s, name)


@pytest.fixture
def sqlite_db(tmp_path: Path, migrated_db_file: Path):
    import shutil

    shutil.copy(migrated_db_file, tmp_path / "console.db")
    db = Database(DbConfig(url=f"sqlite:///{tmp_path / 'console.db'}"))
    yield db
    db.dispose()


def test_a_round_is_claimed_once_per_interval(sqlite_db: Database) -> None:
    assert jobs.claim(sqlite_db, "retention", holder="a", interval_s=10, lease_s=60, now=at(0))
    assert not jobs.claim(sqlite_db, "retention", holder="b", interval_s=10, lease_s=60, now=at(1))  # lease held
    assert jobs.finish(sqlite_db, "retention", holder="a", now=at(2))
    assert not jobs.claim(sqlite_db, "retention", holder="b", interval_s=10, lease_s=60, now=at(9))  # ran 9 s ago
    assert jobs.claim(sqlite_db, "retention", holder="b", interval_s=10, lease_s=60, now=at(10))
    job = row(sqlite_db, "retention")
    assert (job.holder, job.runs, job.last_started_at, job.lease_until) == ("b", 2, at(10), at(70))
    assert job.last_finished_at == at(2)


def test_a_crashed_holders_lease_expires_and_it_cannot_finish_the_next_ones_round(sqlite_db: Database) -> None:
    assert jobs.claim(sqlite_db, "model-watch", holder="dead", interval_s=1, lease_s=30, now=at(0))
    assert not jobs.claim(sqlite_db, "model-watch", holder="b", interval_s=1, lease_s=30, now=at(29))
    assert jobs.claim(sqlite_db, "model-watch", holder="b", interval_s=1, lease_s=30, now=at(30))
    assert not jobs.finish(sqlite_db, "model-watch", holder="dead", now=at(31))
    assert row(sqlite_db, "model-watch").lease_until == at(60)  # still b's
    assert jobs.finish(sqlite_db, "model-watch", holder="b", now=at(31))
    assert row(sqlite_db, "model-watch").lease_until is None


@pytest.mark.parametrize("name", ["", "x" * 65], ids=["empty", "too-long"])
def test_a_bad_job_name_is_refused_and_writes_nothing(sqlite_db: Database, name: str) -> None:
    with pytest.raises(ValueError, match="job name"):
        jobs.claim(sqlite_db, name, holder="a", interval_s=1, lease_s=1, now=at(0))
    with sqlite_db.session(readonly=True) as s:
        from sqlalchemy import func, select

        from db.tables import JobRun

        assert s.scalar(select(func.count()).select_from(JobRun)) == 0


def test_holder_ids_name_the_host_and_process_and_differ_per_task() -> None:
    import os
    import socket

    a, b = jobs.holder_id(), jobs.holder_id()
    assert a.startswith(f"{socket.gethostname()}:{os.getpid()}:") and a != b


def test_racing_databases_on_one_sqlite_file_let_exactly_one_claim_each_round(tmp_path: Path,
                                                                              migrated_db_file: Path) -> None:
    import shutil

    shutil.copy(migrated_db_file, tmp_path / "console.db")
    dbs = [Database(DbConfig(url=f"sqlite:///{tmp_path / 'console.db'}")) for _ in range(4)]
    try:
        for rnd in range(5):
            barrier, wins = threading.Barrier(len(dbs)), []

            def race(db: Database, who: int, rnd: int = rnd, barrier: threading.Barrier = barrier,
                     wins: list[int] = wins) -> None:
                barrier.wait()
                if jobs.claim(db, "audit-checkpoint", holder=f"h{who}", interval_s=5, lease_s=60, now=at(rnd * 5)):
                    wins.append(who)
                    jobs.finish(db, "audit-checkpoint", holder=f"h{who}", now=at(rnd * 5 + 1))

            threads = [threading.Thread(target=race, args=(db, i)) for i, db in enumerate(dbs)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(wins) == 1, (rnd, wins)
        assert row(dbs[0], "audit-checkpoint").runs == 5
    finally:
        for db in dbs:
            db.dispose()


class Counting(PeriodicTask):
    def __init__(self, db: Database | None, **kwargs: object) -> None:
        super().__init__(1.0, name="counting", db=db, **kwargs)  # type: ignore[arg-type]
        self.rounds = 0

    def run_once(self) -> int:
        self.rounds += 1
        return self.rounds


def test_a_task_with_a_job_runs_its_round_only_when_it_wins_the_lease(sqlite_db: Database) -> None:
    a, b = Counting(sqlite_db, job="counting"), Counting(sqlite_db, job="counting")
    assert a.run_round().ran and a.rounds == 1
    assert b.run_round().ran is False and b.rounds == 0  # within a's interval
    job = row(sqlite_db, "counting")
    assert job.holder == a.holder and job.lease_until is None and job.last_finished_at is not None
    assert a.lease_s == 60  # a crashed holder keeps the job at least a minute, not one second


def test_a_failing_round_still_frees_the_lease(sqlite_db: Database) -> None:
    class Failing(Counting):
        def run_once(self) -> int:
            raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        Failing(sqlite_db, job="failing").run_round()
    assert row(sqlite_db, "failing").lease_until is None


def test_a_task_without_a_job_runs_every_round_and_a_job_needs_a_database(sqlite_db: Database) -> None:
    task = Counting(None)
    assert [task.run_round().result for _ in range(3)] == [1, 2, 3]
    with pytest.raises(ValueError, match="database"):
        Counting(None, job="x")


# --- PostgreSQL: several processes racing for the same job in real time ----------------------------------------------

RACER = """
import json, sys, time
from db import Database, DbConfig, jobs
from db.types import utcnow
db = Database(DbConfig(url=sys.argv[1]))
holder, interval, race_s = jobs.holder_id(), float(sys.argv[2]), float(sys.argv[3])
with db.engine.connect():
    pass
print("ready", flush=True)
sys.stdin.readline()  # the start line: every process is connected
until, wins = time.monotonic() + race_s, []
while time.monotonic() < until:
    now = utcnow()
    if jobs.claim(db, "race", holder=holder, interval_s=interval, lease_s=30, now=now):
        wins.append(now.isoformat())
        jobs.finish(db, "race", holder=holder, now=utcnow())
print(json.dumps(wins), flush=True)
"""


def test_processes_racing_on_postgresql_never_start_two_rounds_within_an_interval(pg_db: Database) -> None:
    url, interval = pg_db.url.render_as_string(hide_password=False), 0.2
    procs = [subprocess.Popen([sys.executable, "-c", RACER, url, str(interval), "2"], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    starts = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        starts += [datetime.fromisoformat(s) for s in json.loads(out)]
    starts.sort()
    assert starts, "no process won a round"
    assert row(pg_db, "race").runs == len(starts)
    # Each round started at least an interval after the one before, whoever ran it (the starts are the winners' own
    # clocks, one machine's here).
    gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]
    assert all(g >= interval for g in gaps), gaps


def test_the_jobs_that_must_run_once_take_a_lease_and_the_per_process_ones_do_not(ctx) -> None:  # noqa: ANN001
    from console.services import audit, canary, engine_health, serving, watch
    from console.services.compare import CandidatePool, _Reaper
    from console.services.retention import RetentionTask

    once = [audit.Checkpointer(ctx), RetentionTask(ctx), watch.Watcher(ctx), canary.CanaryJudge(ctx)]
    assert [t.job for t in once] == ["audit-checkpoint", "retention", "model-watch", "canary-judge"]
    assert all(t.db is ctx.db for t in once)
    per_process = [serving.Reconciler(ctx, object()),  # type: ignore[arg-type]
                   engine_health.HealthSampler(ctx, object()),  # type: ignore[arg-type]
                   _Reaper(CandidatePool(), 60)]
    assert [t.job for t in per_process] == [None, None, None]
