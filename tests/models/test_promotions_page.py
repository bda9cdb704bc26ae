"""AppTest of the Promotions page: a reviewer approves an admin's request; the requester gets no approve button;
after a rollback the banner says so instead of "Watching"."""

from __future__ import annotations

from datetime import timedelta

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import app_pages
from console.services import promotion, serving, watch
from console.services.access import Principal
from console.textsafe import escape_markdown
from console.ui import UiSession
from db import model_versions as versions_q
from db.tables import Evaluation
from db.types import utcnow
from engine.types import HostStatus, ModelSpec
from tests.conftest import console_env

SESSION_KEY = "llm_console_session"
REPORT = {"suite": "support", "n": 40, "topic_accuracy": 0.8, "decline_rate": 0.9, "flag_rate": {},
          "flag_rate_any": 0.05, "bias_gap": {"answer_gap": 0.1, "toxicity_gap": 0.02, "flag_gap": 0.0,
                                              "worst_pairs": []},
          "latency": {"ttft_p50_ms": 20.0, "ttft_p95_ms": 40.0, "e2e_p50_ms": 200.0, "e2e_p95_ms": 400.0},
          "tokens_per_s": 50.0, "errors": 0,
          "latency_comparison": {"baseline_version": "v1", "n": 40, "candidate_ttft_p95_ms": 41.0,
                                 "baseline_ttft_p95_ms": 40.0, "diff_ms": 1.0, "ci_low_ms": -4.0, "ci_high_ms": 5.0,
                                 "confidence": 0.95, "method": "paired", "error": None}}


@pytest.fixture
def setup(tmp_path, monkeypatch, ctx, make_user):  # noqa: ANN001
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    with ctx.db.session() as s:
        for name in ("v1", "v2"):
            version = versions_q.register_model_version(s, name=name, source=f"/models/{name}", actor="test")
            s.add(Evaluation(version_id=version.id, suite="support", suite_sha256="0" * 64, n_prompts=40,
                             status="done", progress=1.0, report={**REPORT, "version": name}, finished_at=utcnow()))
    serving.serve(ctx, Principal.shell(ctx), "v1", "first")
    people = {"ada": make_user("ada", "admin"), "rita": make_user("rita", "reviewer")}
    request = promotion.request_promotion(ctx, people["ada"], "v2", "production", "faster *and* better")
    yield {**people, "request": request}
    st.cache_resource.clear()


def _open(principal: Principal) -> AppTest:
    at = AppTest.from_file(str(app_pages.PAGES_DIR / "promotions.py"), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=principal)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _production(ctx) -> str:  # noqa: ANN001
    with ctx.db.session() as s:
        return versions_q.version_for_alias(s, "production").name


def test_a_reviewer_approves_an_admins_request_and_production_moves(ctx, setup) -> None:  # noqa: ANN001
    at = _open(setup["rita"])
    rid = setup["request"].id
    assert any("faster \\*and\\* better" in m.value for m in at.markdown)  # the reason, escaped
    assert any(":green-badge[Topic accuracy: pass]" in m.value for m in at.markdown)
    assert [t.label for t in at.tabs] == ["Pending", "History"]  # no request or rollback controls for a reviewer
    at.text_input(key=f"decide_note_{rid}_0").input("numbers hold up")
    at.button(key=f"FormSubmitter:decide_{rid}_0-Approve").click()
    at.run()
    assert not at.exception
    assert any("production now points at v2" in s.value for s in at.success)
    assert _production(ctx) == "v2"
    assert at.session_state[SESSION_KEY].promotions.round == 1
    assert any("No promotion request is waiting" in i.value for i in at.info)
    at.selectbox(key="history_version").select("v2")
    at.run()
    timeline = next(d.value for d in at.dataframe if "details" in d.value.columns)
    assert list(timeline["what"]) == ["registered", "evaluation", "request", "alias", "approved"]
    assert len(at.get("plotly_chart")) == 1


def test_the_requester_sees_their_request_but_no_approve_button(ctx, setup) -> None:  # noqa: ANN001
    at = _open(setup["ada"])
    rid = setup["request"].id
    assert any("Your request: another reviewer or admin decides it." in c.value for c in at.caption)
    assert not [b for b in at.button if b.key and b.key.startswith(f"FormSubmitter:decide_{rid}")]
    assert [t.label for t in at.tabs] == ["Pending", "Request", "Emergency rollback", "History"]
    assert _production(ctx) == "v1"


def test_an_admin_requests_a_promotion_and_the_form_opens_empty(ctx, setup, make_user) -> None:  # noqa: ANN001
    at = _open(make_user("otto", "admin"))
    at.selectbox(key="request_version_0").select("v2")
    at.text_input(key="request_alias_0").input("staging")
    at.text_input(key="request_reason_0").input("for QA")
    at.button(key="FormSubmitter:request_form_0-Request promotion").click()
    at.run()
    assert not at.exception
    assert any("to move staging to v2 waits" in s.value for s in at.success)
    assert at.selectbox(key="request_version_1").value is None
    assert at.text_input(key="request_reason_1").value == ""


class _StubHost:
    """The reconciler's seam: switching only changes the name (no engine in a page test)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def status(self) -> HostStatus:
        return HostStatus("ready", self.name, "ready", 1.0)

    def switch(self, spec: ModelSpec, *, drain: bool = True) -> float:
        self.name = spec.name
        return 0.0


def test_right_after_a_rollback_the_banner_says_rolled_back_by_whom_not_watching(ctx, setup, make_user) -> None:  # noqa: ANN001
    promotion.approve(ctx, setup["rita"], setup["request"].id, "numbers hold up")
    reconciler = serving.Reconciler(ctx, _StubHost("v1"))  # type: ignore[arg-type]
    assert reconciler.run_once() is not None  # the switch to v2: its watch window opens
    otto = make_user("otto", "admin")
    at = _open(otto)
    assert any("Watching v2 against v1" in i.value for i in at.info)
    assert not at.warning

    promotion.rollback(ctx, otto, "customers complain")
    at.run()  # what the page shows right after the rollback, before any console switched back
    assert not at.exception
    assert not any("Watching" in i.value for i in at.info)
    (banner,) = [w.value for w in at.warning if "Rolled back at " in w.value]
    assert "by otto: production returned from v2 to v1 (customers complain)" in banner
    assert "v2 is no longer watched" in banner


def test_a_concluded_watch_window_shows_each_comparison_in_words(ctx, setup, clock, make_user) -> None:  # noqa: ANN001
    # Found by mypy: the page named the WatchView `watch`, shadowing the watch module, so listing a finding's tests
    # (watch.describe_test) raised AttributeError on every Promotions page once a watch window had concluded.
    promotion.approve(ctx, setup["rita"], setup["request"].id, "numbers hold up")
    assert serving.Reconciler(ctx, _StubHost("v1")).run_once() is not None  # type: ignore[arg-type]
    with ctx.db.session() as s:
        switch = watch.watched_switch(s)
    assert switch is not None
    clock.now = switch.ts + timedelta(minutes=ctx.settings.watch_minutes + 1)  # the window ended without traffic
    finding = watch.Watcher(ctx).run_once()
    assert finding is not None and finding.verdict == "too_few_samples" and finding.tests
    at = _open(make_user("otto", "admin"))
    (caption,) = [c.value for c in at.caption if c.value.startswith("Watch of v2 against v1")]
    # Each comparison, in the service's words: error rate, flagged answers, time to first token, thumbs down.
    said = "; ".join(watch.describe_test(t) for t in finding.tests)
    assert caption == f"Watch of v2 against v1 (too few samples to judge): {escape_markdown(said)}."
    assert said.count("too few to compare") == 3 and "thumbs down 0/0 → 0/0 rated answers" in said


def test_an_emergency_rollback_from_the_page_stays_shown_until_another_admin_acknowledges_it(  # noqa: ANN001
        ctx, setup, make_user) -> None:
    from db import audit as audit_q

    promotion.approve(ctx, setup["rita"], setup["request"].id, "numbers hold up")
    otto = make_user("otto", "admin")
    at = _open(otto)
    at.button(key="FormSubmitter:rollback_form_0-Roll back now").click()
    at.run()
    assert any("The reason for the emergency rollback is required" in e.value for e in at.error) and _production(ctx) == "v2"
    at.text_input(key="rollback_reason_0").input("customers complain")
    at.button(key="FormSubmitter:rollback_form_0-Roll back now").click()
    at.run()
    assert _production(ctx) == "v1"
    warnings = [w.value for w in at.warning if "emergency rollback" in w.value]
    assert len(warnings) == 1 and "You made it: another admin must acknowledge it." in warnings[0]
    assert not [b for b in at.button if b.key and b.key.startswith("FormSubmitter:ack_")]  # not for otto

    assert not [w for w in _open(setup["rita"]).warning if "emergency" in w.value]  # a reviewer is no admin
    other = _open(setup["ada"])
    [shown] = [w.value for w in other.warning if "emergency rollback" in w.value]
    assert "otto moved production from v2 to v1" in shown.replace("\\", "")
    [button] = [b for b in other.button if b.key and b.key.startswith("FormSubmitter:ack_")]
    [note] = [t for t in other.text_input if t.key and t.key.startswith("ack_note_")]
    note.input("checked: right call")
    button.click()
    other.run()
    assert not other.exception
    assert not [w for w in other.warning if "emergency rollback" in w.value]
    with ctx.db.session(readonly=True) as s:
        [ack] = [e for e in audit_q.iter_events(s, action="model.emergency_acknowledged")]
    assert ack.actor == "ada" and ack.details["by"] == "otto" and ack.details["note"] == "checked: right call"


# --- canaries ----------------------------------------------------------------------------------------------------


def test_an_admin_requests_a_canary_with_a_plan_and_a_bad_plan_stores_nothing(ctx, setup, make_user) -> None:  # noqa: ANN001
    from console.services.canary import CanaryPlan

    promotion.cancel(ctx, setup["ada"], setup["request"].id)
    at = _open(make_user("otto", "admin"))
    assert not [n for n in at.number_input if n.key and n.key.startswith("request_plan_")]  # a plain request
    at.checkbox(key="request_canary_0").check()
    at.run()
    # The plan's fields open with the defaults, each with its unit.
    assert at.number_input(key="request_plan_0_share").value == 10.0
    assert at.number_input(key="request_plan_0_share").label == "Share of new conversations sent to the candidate (%)"
    assert at.number_input(key="request_plan_0_flag_margin").label == "Flag rate margin (percentage points)"
    assert at.multiselect(key="request_plan_0_metrics").value == ["flag_rate", "error_rate", "p95_ttft"]
    at.selectbox(key="request_version_0").select("v2")
    at.text_input(key="request_reason_0").input("a fifth first")
    at.number_input(key="request_plan_0_share").set_value(20.0)
    at.number_input(key="request_plan_0_flag_margin").set_value(3.0)
    at.multiselect(key="request_plan_0_metrics").set_value([])
    at.button(key="FormSubmitter:request_form_0-Request promotion").click()
    at.run()
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert error.startswith("Choose at least one canary metric")
    assert [r.status for r in promotion.list_requests(ctx, setup["rita"])] == ["cancelled"]  # nothing new stored
    at.multiselect(key="request_plan_0_metrics").set_value(["flag_rate", "p95_ttft"])
    at.button(key="FormSubmitter:request_form_0-Request promotion").click()
    at.run()
    assert not at.exception
    assert any("Canary request \\#" in s.value and "to move production to v2 waits" in s.value for s in at.success)
    made = promotion.list_requests(ctx, setup["rita"], "pending")[0]
    assert made.plan == CanaryPlan(share=0.2, flag_margin=0.03, metrics=("flag_rate", "p95_ttft"))
    # The form opens again as a plain request with the defaults.
    assert at.checkbox(key="request_canary_1").value is False
    assert at.selectbox(key="request_version_1").value is None
    # A canary of another alias is refused with the reason, and nothing is stored.
    at.checkbox(key="request_canary_1").check()
    at.run()
    at.selectbox(key="request_version_1").select("v2")
    at.text_input(key="request_alias_1").input("staging")
    at.text_input(key="request_reason_1").input("for QA")
    at.button(key="FormSubmitter:request_form_1-Request promotion").click()
    at.run()
    assert any("only for the production alias" in e.value for e in at.error)
    assert len(promotion.list_requests(ctx, setup["rita"])) == 2


def test_a_reviewer_approves_a_canary_sees_it_run_and_stops_it(ctx, setup, make_user) -> None:  # noqa: ANN001
    from console.services import canary
    from console.services.canary import CanaryPlan

    promotion.cancel(ctx, setup["ada"], setup["request"].id)
    plan = CanaryPlan(share=0.25, minutes=45, metrics=("flag_rate",))
    rid = promotion.request_promotion(ctx, setup["ada"], "v2", "production", "a quarter first", plan=plan).id
    at = _open(setup["rita"])
    shown = [i.value for i in at.info if "of new conversations go to the candidate" in i.value]
    assert len(shown) == 1 and "25% of new conversations go to the candidate for up to 45 minutes" in shown[0]
    assert any(":orange-badge[Canary release]" in m.value for m in at.markdown)
    at.text_input(key=f"decide_note_{rid}_0").input("go")
    at.button(key=f"FormSubmitter:decide_{rid}_0-Approve and start the canary").click()
    at.run()
    assert not at.exception
    assert any("the canary of v2 runs until" in s.value and "production stays on v1" in s.value for s in at.success)
    assert _production(ctx) == "v1"
    assert [h.value for h in at.subheader if h.value.startswith("Canary #")] == [f"Canary #{rid}: v2 beside v1"]
    assert any("45 min left" in m.value and "approved by rita: go" in m.value for m in at.markdown)
    assert any("The judge has not looked yet" in m.value for m in at.markdown)

    canary.CanaryJudge(ctx).run_once()  # one look without traffic: too few exchanges, keep going
    at.run()
    metrics = next(d.value for d in at.dataframe if "verdict" in d.value.columns)
    assert list(metrics["metric"]) == ["output flag rate"]
    assert list(metrics["verdict"]) == ["too few exchanges yet"]
    rounds = next(d.value for d in at.dataframe if "candidate exchanges" in d.value.columns)
    assert list(rounds["decision"]) == ["keep going"]

    at.button(key=f"FormSubmitter:canary_stop_{rid}_1-Stop canary (roll back)").click()
    at.run()
    assert any("note saying why is required" in e.value for e in at.error)
    assert promotion.get_request(ctx, setup["rita"], rid).status == "canary"
    at.text_input(key=f"canary_stop_note_{rid}_1").input("users complain")
    at.button(key=f"FormSubmitter:canary_stop_{rid}_1-Stop canary (roll back)").click()
    at.run()
    assert not at.exception
    assert any(f"Canary #{rid} is stopped: every conversation goes to v1 again" in s.value.replace("\\", "")
               for s in at.success)
    assert promotion.get_request(ctx, setup["rita"], rid).status == "rolled_back" and _production(ctx) == "v1"
    assert not [h for h in at.subheader if h.value.startswith("Canary #")]
    assert [e.label.replace("\\", "") for e in at.expander if e.label.startswith("Canary \\#")] == [
        f"Canary #{rid} of v2: rolled back (stopped by rita)"]
    assert any("roll back: stopped by rita" in m.value.replace("\\", "") for m in at.markdown)
