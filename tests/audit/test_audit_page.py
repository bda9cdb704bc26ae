"""AppTest of the Audit log page: newest first, filters, keyset paging, one event in full, the chain verdict, the
one-click export, the raw-text export requests, and the page refused to an operator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import streamlit as st
from sqlalchemy import func, select, text
from streamlit.testing.v1 import AppTest

from console import app_pages
from console.services import audit as audit_svc
from console.services import audit_search as search_svc
from console.services import export_approvals as approvals_svc
from console.services import exports as exports_svc
from console.services.context import AppContext
from console.ui import UiSession
from db import audit as audit_q
from db.tables import AuditEvent
from tests.conftest import console_env

SESSION_KEY = "llm_console_session"


@pytest.fixture
def app_env(tmp_path, monkeypatch, migrated_db_file, ctx) -> Iterator[AppContext]:
    """Point the console's resources at this test's database (the same file `ctx` uses)."""
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    yield ctx
    st.cache_resource.clear()


def _page(principal) -> AppTest:
    at = AppTest.from_file(str(app_pages.PAGES_DIR / app_pages.PAGE_TABLE["audit"][3]), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=principal)
    return at


def _seed(ctx: AppContext, n: int, actor: str = "someone", action: str = "seed.event") -> list[int]:
    with ctx.db.session() as s:
        return [audit_q.append_event(s, actor=actor, action=action, details={"n": i}).seq for i in range(n)]


def _count(ctx: AppContext, action: str) -> int:
    with ctx.db.session(readonly=True) as s:
        return s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action)) or 0


def _results(at: AppTest) -> list[int]:
    return [int(s) for s in at.dataframe[0].value["Event"]]


def test_an_analyst_sees_the_newest_events_first_and_a_rerun_does_not_search_again(app_env, make_user):
    ana = make_user("ana", "analyst")
    seqs = _seed(app_env, 5)
    at = _page(ana).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Audit log"
    shown = _results(at)
    assert shown == sorted(shown, reverse=True) and shown[0] == seqs[-1]
    assert "Time (UTC)" in at.dataframe[0].value.columns
    assert at.dataframe[0].value["Time (UTC)"][0].endswith(" UTC")
    assert _count(app_env, "audit.search") == 1
    at.run()
    at.run()
    assert _count(app_env, "audit.search") == 1  # same filter, same page: no new search, no new audit event
    at.button(key="audit_refresh").click().run()
    assert _count(app_env, "audit.search") == 2


def test_the_filters_narrow_the_results_and_start_again_at_the_newest(app_env, make_user):
    ana = make_user("ana", "analyst")
    ada = _seed(app_env, 3, actor="ada", action="auth.login")
    _seed(app_env, 3, actor="bob", action="review.decide")
    at = _page(ana).run()
    at.text_input(key="audit_actor").input("ada")
    at.button(key="audit_search").click().run()
    assert not at.exception
    assert _results(at) == ada[::-1]
    assert set(at.dataframe[0].value["Actor"]) == {"ada"}
    at.text_input(key="audit_actor").input("")
    at.text_input(key="audit_action_prefix").input("review.")
    at.button(key="audit_search").click().run()
    assert set(at.dataframe[0].value["Action"]) == {"review.decide"}
    with app_env.db.session(readonly=True) as s:
        last = audit_q.latest_event(s, "audit.search")
    assert last.details["filter"] == {"action_prefix": "review."}
    at.text_input(key="audit_action_prefix").input("")
    at.selectbox(key="audit_action").select("auth.login")
    at.button(key="audit_search").click().run()
    assert _results(at) == ada[::-1]


def test_the_action_prefix_placeholder_is_not_a_value(app_env, make_user):
    at = _page(make_user("ana", "analyst")).run()
    box = at.text_input(key="audit_action_prefix")
    assert box.value == "" and box.placeholder == "any action"


def test_a_time_range_filter_and_a_bad_one(app_env, make_user):
    ana = make_user("ana", "analyst")
    _seed(app_env, 2)
    today = datetime.now(UTC).date()
    at = _page(ana).run()
    at.date_input(key="audit_since_day").set_value(today + timedelta(days=1))
    at.button(key="audit_search").click().run()
    assert not at.exception and _results(at) == []  # nothing has happened tomorrow yet
    at.date_input(key="audit_until_day").set_value(today - timedelta(days=1))
    at.button(key="audit_search").click().run()
    assert any("must be before the end" in e.value for e in at.error)


def test_older_and_newer_page_by_cursor(app_env, make_user):
    ana = make_user("ana", "analyst")
    _seed(app_env, 230)
    at = _page(ana).run()
    first = _results(at)
    assert len(first) == 100 and at.button(key="audit_newer").disabled
    at.button(key="audit_older").click().run()
    second = _results(at)
    assert len(second) == 100 and max(second) == min(first) - 1  # nothing skipped, nothing repeated
    _seed(app_env, 4)  # new events do not shift the older pages
    at.button(key="audit_older").click().run()
    third = _results(at)
    assert max(third) == min(second) - 1 and at.button(key="audit_older").disabled
    at.button(key="audit_newer").click().run()
    assert _results(at) == second
    with app_env.db.session(readonly=True) as s:
        last = audit_q.latest_event(s, "audit.search")
    assert last.details["before_seq"] == min(first)
    at.button(key="audit_newer").click().run()
    newest = _results(at)  # back at the newest page, which now starts with what happened since
    with app_env.db.session(readonly=True) as s:
        head = s.scalar(select(func.max(AuditEvent.seq)))
    assert newest == list(range(head - 1, head - 101, -1))  # all but this search's own event, written after it
    assert newest[0] > first[0] and at.button(key="audit_newer").disabled


def test_opening_an_event_shows_its_details_as_json_and_its_neighbours(app_env, make_user):
    ana = make_user("ana", "analyst")
    seqs = _seed(app_env, 12)
    at = _page(ana).run()
    at.selectbox(key="audit_pick_None").select(seqs[6]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.subheader[0].value == f"Event {seqs[6]}"
    assert [json.loads(j.value) for j in at.json] == [{"n": 6}]  # st.json, not markdown
    around = at.dataframe[-1].value
    assert [int(s) for s in around["Event"]] == list(range(seqs[6] - 5, seqs[6] + 6))
    assert around[""][list(around["Event"]).index(seqs[6])] == "▶"
    assert _count(app_env, "audit.view_event") == 1
    at.run()
    assert _count(app_env, "audit.view_event") == 1  # a rerun does not open (and audit) it again


def test_verify_shows_the_verdict_and_the_checkpoint_coverage(app_env, make_user):
    ana = make_user("ana", "analyst")
    _seed(app_env, 3)
    cp = audit_svc.checkpoint(app_env, "test")
    at = _page(ana).run()
    at.button(key="audit_verify").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("The chain is intact" in s.value for s in at.success)
    assert any("signed checkpoint" in i.value and f"events 1 to {cp.seq} are anchored by the newest" in i.value
               for i in at.info)
    # The page's own search was audited after the checkpoint: chained, not yet anchored, and the page says so.
    assert any(f"Events {cp.seq + 1} to" in c.value and "not yet anchored" in c.value for c in at.caption)
    assert _count(app_env, "audit.verify") == 1


def test_verify_names_the_kind_of_damage_and_the_first_bad_event(app_env, make_user):
    ana = make_user("ana", "analyst")
    seqs = _seed(app_env, 5)
    with app_env.db.engine.begin() as conn:  # someone with write access edits an event behind the triggers' back
        for name in ("audit_events_append_only_update", "audit_events_append_only_delete"):
            conn.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
        conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = :seq"), {"seq": seqs[2]})
    at = _page(ana).run()
    at.button(key="audit_verify").click().run()
    assert not at.exception, [e.value for e in at.exception]
    damage = [e.value for e in at.error if "damaged" in e.value]
    assert len(damage) == 1 and "edited" in damage[0] and f"at event {seqs[2]}" in damage[0]


def test_the_export_button_writes_the_file_and_links_to_its_streamed_download(app_env, make_user):
    from db.tables import ExportFile

    ana = make_user("ana", "analyst")
    at = _page(ana).run()
    assert _count(app_env, "audit.export") == 0 and not at.get("link_button")
    # The file is no longer read whole into the page: no download button carries the export's bytes.
    assert not [b for b in at.get("download_button") if b.proto.id and "audit_export_download" in b.proto.id]
    at.selectbox(key="audit_export_what").select("exchanges").run()
    at.selectbox(key="audit_export_format").select("parquet").run()
    assert "Parquet" in at.button(key="audit_export_run").label
    at.button(key="audit_export_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert _count(app_env, "audit.export") == 1
    with app_env.db.session(readonly=True) as s:
        (row,) = s.query(ExportFile).all()
        file_id, name = row.id, row.path.rsplit("/", 1)[-1]
    (link,) = at.get("link_button")
    # The console's own route streams it (the signed-in session's cookie) and deletes it once sent.
    assert link.proto.url == f"exports/{file_id}" and link.proto.label == f"Download {name}"
    assert any("Kept until it is downloaded" in c.value for c in at.caption)
    assert not [b for b in at.button if b.key and b.key.startswith("audit_raw")]  # no raw exports for analysts


def test_the_export_of_the_pages_filter_writes_the_file_and_its_manifest(app_env, make_user):
    ana = make_user("ana", "analyst")
    _seed(app_env, 3, actor="ada", action="auth.login")  # details {"n": 0}, {"n": 1}, {"n": 2}
    _seed(app_env, 2, actor="bob", action="auth.login")
    # An events export holds exactly what the page's search finds, text filter included.
    flt = search_svc.AuditFilter(actor="ada", action_prefix="auth.", text='"n":1')
    spec = search_svc.export_spec(flt, "events", "jsonl")
    assert search_svc.not_exported(flt, "events") == []
    assert search_svc.not_exported(flt, "exchanges") == ["text", "action prefix"]
    found = search_svc.search(app_env, ana, flt).rows
    result = exports_svc.run_export(app_env, ana, spec, exports_svc.default_export_path(app_env, spec))
    assert result.rows == len(found) == 1 and result.manifest_path.exists()
    exported = [json.loads(line) for line in result.path.read_text(encoding="utf-8").splitlines()]
    assert [e["seq"] for e in exported] == [r["seq"] for r in found]


def test_admins_ask_for_raw_exports_and_decide_other_admins_requests(app_env, make_user):
    adam = make_user("adam", "admin")
    alice = make_user("alice", "admin")
    theirs = approvals_svc.request_raw_export(app_env, alice, exports_svc.ExportSpec("exchanges", "csv"),
                                              "incident 42 needs the original wording")
    at = _page(adam).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.button(key=f"audit_raw_approve_{theirs.id}")
    at.text_area(key="audit_raw_reason").input("audit of the flagged answers in March")
    at.button(key="audit_raw_submit").click().run()
    assert any("requested" in s.value for s in at.success)
    mine = [r for r in approvals_svc.list_export_requests(app_env, adam) if r.requested_by_id == adam.user_id]
    assert len(mine) == 1 and mine[0].status == "pending"
    assert f"audit_raw_approve_{mine[0].id}" not in {b.key for b in at.button}  # nobody approves their own
    at.button(key=f"audit_raw_approve_{theirs.id}").click().run()
    assert not at.exception
    decided = {r.id: r.status for r in approvals_svc.list_export_requests(app_env, adam)}
    assert decided[theirs.id] == "approved"
    # Approved for alice: the run button is hers, not adam's. Run, the file waits for her one streamed download.
    assert f"audit_raw_run_{theirs.id}" not in {b.key for b in at.button}
    at_alice = _page(alice).run()
    at_alice.button(key=f"audit_raw_run_{theirs.id}").click().run()
    assert not at_alice.exception, [e.value for e in at_alice.exception]
    assert any("raw text export is written" in s.value for s in at_alice.success)
    (link,) = at_alice.get("link_button")
    assert link.proto.url.startswith("exports/") and "exchanges-" in link.proto.label
    assert f"audit_raw_run_{theirs.id}" not in {b.key for b in at_alice.button}  # used: once


def test_an_operator_is_refused_the_page(app_env, make_user):
    olivia = make_user("olivia", "operator")
    at = _page(olivia).run()
    assert any("do not allow" in e.value for e in at.error)
    assert not at.dataframe and not at.download_button
    assert _count(app_env, "audit.search") == 0
    with app_env.db.session(readonly=True) as s:
        assert audit_q.latest_event(s, "access.denied").details["action"] == "audit.search"


def test_the_signed_checkpoints_download_checks_a_wiped_log(app_env, make_user, tmp_path):
    from console.services.errors import AccessDenied

    ana = make_user("ana", "analyst")
    _seed(app_env, 4)
    with pytest.raises(AccessDenied):
        audit_svc.checkpoints_file(app_env, make_user("olivia", "operator"))
    kept = tmp_path / "kept.jsonl"
    kept.write_bytes(audit_svc.checkpoints_file(app_env, ana))
    lines = [json.loads(line) for line in kept.read_text().splitlines()]
    assert lines and lines[-1]["seq"] >= 5 and _count(app_env, "audit.checkpoints_download") == 1
    # Someone with the database wipes the log, its head and its checkpoints: the kept file still knows.
    with app_env.db.engine.begin() as conn:
        for statement in ("DROP TRIGGER audit_events_append_only_delete", "DELETE FROM audit_events",
                          "DELETE FROM audit_checkpoints", "UPDATE audit_head SET seq = 0, hash = '" + "0" * 64 + "'"):
            conn.execute(text(statement))
    app_env.settings.audit_checkpoint_file.unlink()
    # (Each verify is itself an audit event: the one with the kept copy runs on the wiped log first.)
    report = audit_svc.verify(app_env, ana, [kept])
    assert (report.ok, report.kind, report.first_bad_seq) == (False, "wiped", 1)
    assert audit_svc.verify(app_env, ana).ok


def test_each_section_of_the_page_has_one_heading(app_env, make_user):
    # The page is a shell over one module per panel; each panel draws its own heading, once.
    admin = make_user("adm", "admin")
    at = _page(admin).run()
    assert not at.exception, [e.value for e in at.exception]
    headings = [h.value for h in at.subheader]
    assert {"Integrity", "Export"} <= set(headings)
    assert len(headings) == len(set(headings)), headings
