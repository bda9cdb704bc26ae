"""Two real console processes (`llm-console run`) on one real PostgreSQL database, as replicas behind a load balancer.

They share what docs/deployment.md says replicas share (the database URL, the audit key and checkpoints file) and
nothing else (each has its own data directory). No engine: a console with nothing to serve still runs its
periodic jobs and its cookie routes, which is what is under test here. Also several plain processes racing for the
same review item, and replicas migrating a new database at the same moment.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from console.services.access import Principal
from console.services.context import AppContext
from console.settings import Settings
from db import Database, DbConfig, jobs
from db import audit as audit_q
from db.tables import AuditCheckpoint, AuditEvent
from db.types import utcnow
from tests.conftest import POSTGRES_URL, STRONG_PASSWORD, postgres_database
from tests.e2e_support import chromium, cli, console_env, running_console, sign_in_with_cookie

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(not POSTGRES_URL, reason="set LLM_CONSOLE_TEST_POSTGRES_URL to run on PostgreSQL"),
]

ROOT = Path(__file__).resolve().parents[2]
INTERVAL_S = 1.0  # the periodic jobs' interval in both consoles
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin", "X-Requested-With": "llm-console"}


@dataclass
class Cluster:
    db: Database
    ctx: AppContext  # this test process, on the same database and shared files (it plays a third replica)
    urls: tuple[str, str]
    pids: tuple[int, int]
    started_at: datetime  # before either console started


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("replicas")
    with postgres_database() as db, ExitStack() as stack:
        shared = {"LLM_CONSOLE_DATABASE_URL": db.url.render_as_string(hide_password=False),
                  "LLM_CONSOLE_AUDIT_KEY_FILE": str(root / "audit.key"),
                  "LLM_CONSOLE_AUDIT_CHECKPOINT_FILE": str(root / "checkpoints.jsonl"),
                  "LLM_CONSOLE_ENGINE_AUTOSTART": "false", "LLM_CONSOLE_SAFETY_ENABLED": "false",
                  "LLM_CONSOLE_AUDIT_CHECKPOINT_SECONDS": str(INTERVAL_S),
                  "LLM_CONSOLE_RETENTION_CHECK_SECONDS": str(INTERVAL_S)}
        envs = [console_env(root / name, **shared) for name in ("a", "b")]
        for name in ("a", "b"):
            (root / name).mkdir()
        cli(envs[0], "init", "--skip-models")  # once for the installation: the first admin and the audit key
        cli(envs[0], "user", "add", "ana", "--role", "analyst", "--password-stdin", stdin=STRONG_PASSWORD + "\n")
        started_at = utcnow()
        urls, pids = [], []
        for env, name in zip(envs, ("a", "b"), strict=True):
            urls.append(stack.enter_context(running_console(env, root / name)))
            pids.append(_server_pid(urls[-1]))
        settings = Settings.from_env({k: v for k, v in envs[0].items() if k.startswith("LLM_CONSOLE_")}
                                     | {"LLM_CONSOLE_DATA_DIR": str(root / "tests")})
        yield Cluster(db, AppContext(settings, db), (urls[0], urls[1]), (pids[0], pids[1]), started_at)


def _server_pid(url: str) -> int:
    """The process listening on the console's port (`llm-console run` execs the server in its own process)."""
    import psutil

    port = int(url.rsplit(":", 1)[1])
    return next(c.pid for c in psutil.net_connections(kind="tcp")
                if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid)


def _principal(ctx: AppContext, username: str) -> Principal:
    from db import users as users_q

    with ctx.db.session(readonly=True) as s:
        user = users_q.get_user_by_username(s, username)
        assert user is not None
        return Principal(user.id, user.username, frozenset(user.roles), user.session_epoch)


def _signed_in_cookie(cluster: Cluster, replica: int) -> dict[str, str]:
    """Sign ana in (the ticket the sign-in page makes) and redeem the ticket on ``replica``: its session cookie."""
    from console.services import sessions

    ticket = sessions.start(cluster.ctx, _principal(cluster.ctx, "ana")).ticket
    response = httpx.post(f"{cluster.urls[replica]}/auth/session", data={"ticket": ticket}, headers=SAME_ORIGIN)
    assert response.status_code == 204, response.text
    name = sessions.cookie_name(True)  # __Host-: a console on localhost marks it Secure (a browser's secure context)
    return {name: response.cookies[name]}


def _download(cluster: Cluster, replica: int, cookies: dict[str, str]) -> httpx.Response:
    """Ask ``replica`` for an export that does not exist: 404 names it when the cookie's session is valid there."""
    return httpx.get(f"{cluster.urls[replica]}/exports/424242", cookies=cookies, headers=SAME_ORIGIN)


def test_a_session_cookie_from_one_replica_is_valid_on_the_other_until_it_ends_on_either(cluster: Cluster) -> None:
    cookies = _signed_in_cookie(cluster, 0)
    for replica in (0, 1):
        answer = _download(cluster, replica, cookies)
        assert (answer.status_code, answer.text) == (404, "There is no export #424242 of yours to download.")
    bogus = _download(cluster, 1, {name: "x" * 43 for name in cookies})
    assert bogus.status_code == 403 and "no longer valid" in bogus.text
    assert httpx.post(f"{cluster.urls[1]}/auth/logout", cookies=cookies, headers=SAME_ORIGIN).status_code == 204
    ended = _download(cluster, 0, cookies)  # signed out on B: refused on A too
    assert (ended.status_code, ended.text) == (403, "You are signed out.")


@pytest.mark.e2e
def test_a_browser_signed_in_on_one_replica_opens_the_other_signed_in(cluster: Cluster) -> None:
    """A new tab the load balancer sends to another replica: the session cookie (host-only, so the browser sends it
    to both consoles on localhost) signs it in there, with no second sign-in."""
    nav = "[data-testid='stSidebarNav']"
    with chromium() as browser:
        context = browser.new_context()
        page = context.new_page()
        sign_in_with_cookie(page, cluster.urls[0], "ana")
        page.locator(nav).wait_for(timeout=60_000)
        other = context.new_page()  # a new tab in the same browser, on the other replica
        other.goto(cluster.urls[1])
        other.locator(nav).wait_for(timeout=60_000)
        assert other.get_by_role("textbox", name="Password").count() == 0


def test_audit_appends_from_both_replicas_at_once_keep_one_valid_chain(cluster: Cluster) -> None:
    per_replica = 6
    cookies = [[_signed_in_cookie(cluster, r) for _ in range(per_replica)] for r in (0, 1)]
    with cluster.db.session(readonly=True) as s:
        before = s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "auth.session_end"))
    barrier, failures = threading.Barrier(2), []

    def sign_out_all(replica: int) -> None:  # each sign-out appends auth.session_end in that replica's process
        barrier.wait()
        with httpx.Client(headers=SAME_ORIGIN) as client:
            for c in cookies[replica]:
                client.cookies = httpx.Cookies(c)
                if client.post(f"{cluster.urls[replica]}/auth/logout").status_code != 204:
                    failures.append(replica)

    threads = [threading.Thread(target=sign_out_all, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures
    with cluster.db.session(readonly=True) as s:
        after = s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "auth.session_end"))
    assert after - before == 2 * per_replica
    from console.services import audit

    with cluster.db.session(readonly=True) as s:
        signed = s.scalar(select(func.count()).select_from(AuditCheckpoint)) or 0
    report = audit_q.verify_chain(cluster.db, audit.anchor(cluster.ctx))
    assert report.ok, report
    assert report.checkpoints_checked >= signed  # the replicas' checkpoints, signed with the one shared key, verify


def test_each_periodic_job_runs_once_per_interval_across_both_replicas(cluster: Cluster) -> None:
    def periodic() -> int:
        with cluster.db.session(readonly=True) as s:
            return s.scalar(select(func.count()).select_from(AuditCheckpoint)
                            .where(AuditCheckpoint.reason == "periodic")) or 0

    # The chain grows all the time (a stream of events from this process), so every round has a checkpoint to sign.
    deadline, first = time.monotonic() + 120, periodic()
    while periodic() < first + 4 and time.monotonic() < deadline:
        with cluster.db.session() as s:
            audit_q.append_event(s, actor="system", actor_id=None, action="test.tick", details={})
        time.sleep(0.05)
    # In this order (the replicas go on meanwhile): checkpoints signed so far, then the rounds claimed so far (at
    # least one per checkpoint), then the time (after every round counted).
    signed = periodic()
    with cluster.db.session(readonly=True) as s:
        rows = {name: jobs.job_run(s, name) for name in ("audit-checkpoint", "retention")}
    most = (utcnow() - cluster.started_at).total_seconds() / INTERVAL_S + 1  # one round per interval, whoever ran it
    assert signed >= first + 4, "the replicas signed no periodic checkpoints"
    for name, job in rows.items():
        assert job is not None and 1 <= job.runs <= most, (name, job and job.runs, most)
        assert int(job.holder.split(":")[1]) in cluster.pids, job.holder  # hostname:pid:random of a replica
    # Every periodic checkpoint was signed inside a round the lease gave out (not once per replica).
    assert signed <= rows["audit-checkpoint"].runs


# --- plain processes on one database ----------------------------------------------------------------------------------

CLAIMER = """
import sys
from console.services import review
from console.services.access import Principal
from console.services.context import AppContext
from console.services.review import ClaimLost
from console.settings import Settings
from db import Database, DbConfig
url, data, user_id, username = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
items = [int(i) for i in sys.argv[5].split(",")]
ctx = AppContext(Settings.from_env({"LLM_CONSOLE_DATA_DIR": data, "LLM_CONSOLE_DATABASE_URL": url}),
                 Database(DbConfig(url=url)))
me = Principal(user_id, username, frozenset({"reviewer"}))
with ctx.db.engine.connect():
    pass
print("ready", flush=True)
sys.stdin.readline()
won = []
for item in items:
    try:
        won.append(review.claim(ctx, me, item))
    except ClaimLost:
        pass
print(",".join(map(str, won)), flush=True)
"""


def test_reviewers_in_three_processes_claiming_the_same_items_each_item_goes_to_exactly_one(
        pg_db: Database, tmp_path: Path) -> None:
    from tests.db.test_db_postgres import _people_and_items

    people, items = _people_and_items(pg_db, 10)
    reviewers = ["alice", "bob", "carol"]
    url = pg_db.url.render_as_string(hide_password=False)
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, url, str(tmp_path), str(people[name]), name,
                               ",".join(map(str, items))], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for name in reviewers]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    won: dict[str, list[int]] = {}
    for name, p in zip(reviewers, procs, strict=True):
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        won[name] = [int(i) for i in out.split(",") if i.strip()]
    assert sorted(i for ids in won.values() for i in ids) == sorted(items)  # every item claimed once, by one
    from db.tables import ReviewItem

    with pg_db.session(readonly=True) as s:
        holders = {i.id: i.claimed_by_id for i in s.scalars(select(ReviewItem).where(ReviewItem.id.in_(items)))}
        claims = s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "review.claim"))
    assert holders == {i: people[name] for name, ids in won.items() for i in ids}
    assert claims == len(items)
    assert audit_q.verify_chain(pg_db).ok


MIGRATE = "import sys; from db import Database, DbConfig; Database(DbConfig(url=sys.argv[1])).migrate()"


def test_replicas_starting_together_on_a_new_database_migrate_it_once() -> None:
    from db.database import scratch_postgres_database

    assert POSTGRES_URL is not None
    with scratch_postgres_database(POSTGRES_URL, prefix="llm_console_test") as url:
        procs = [subprocess.Popen([sys.executable, "-c", MIGRATE, url], cwd=ROOT, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
        errors = [p.communicate(timeout=300)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], errors
        db = Database(DbConfig(url=url))
        try:
            assert db.current_revision() == db.head_revision()
        finally:
            db.dispose()


RECONCILER = """
import sys, time
from console.services import serving
from console.services.context import AppContext
from console.settings import Settings
from db import Database, DbConfig
from tests.models.promotion_support import StubHost
url, data, target = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = AppContext(Settings.from_env({"LLM_CONSOLE_DATA_DIR": data, "LLM_CONSOLE_DATABASE_URL": url}),
                 Database(DbConfig(url=url)))
host = StubHost(serving.desired_state(ctx).version)  # serving what production named when this replica started
reconciler = serving.Reconciler(ctx, host, interval_s=0.2).start()
print("ready", host.name, flush=True)
deadline = time.monotonic() + 120
while host.name != target and time.monotonic() < deadline:
    time.sleep(0.1)
reconciler.stop()
print(host.name, flush=True)
"""


def test_the_reconcilers_of_two_processes_converge_on_the_version_production_moves_to(
        pg_db: Database, tmp_path: Path) -> None:
    """Each process's reconciler drives its own engine (the stub at the reconciler's seam: no model loads) to the
    desired state both read from the database: `model serve` in a third process steers them both."""
    from console.services import serving
    from tests.models.promotion_support import register_version

    ctx = AppContext(Settings.from_env({"LLM_CONSOLE_DATA_DIR": str(tmp_path),
                                        "LLM_CONSOLE_DATABASE_URL": pg_db.url.render_as_string(hide_password=False)}),
                     pg_db)
    for name in ("v1", "v2"):
        register_version(ctx, name)
    shell = Principal.shell(ctx, "llm-console model serve")
    serving.serve(ctx, shell, "v1", "the first version of the installation")
    url = pg_db.url.render_as_string(hide_password=False)
    procs = [subprocess.Popen([sys.executable, "-c", RECONCILER, url, str(tmp_path / f"r{i}"), "v2"], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().split() == ["ready", "v1"]
    serving.serve(ctx, shell, "v2", "v1 answers badly", break_glass="v1 answers badly right now")
    assert [p.communicate(timeout=180)[0].strip() for p in procs] == ["v2", "v2"]
    assert all(p.returncode == 0 for p in procs)
    with pg_db.session(readonly=True) as s:
        switches = [(e.details["from"], e.details["to"]) for e in audit_q.iter_events(s, action="model.switch")]
    assert switches == [("v1", "v2"), ("v1", "v2")]  # one per replica: each switched its own engine
    assert audit_q.verify_chain(pg_db).ok
