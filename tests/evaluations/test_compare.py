"""Side-by-side chats: the live engine host and a candidate in a child process answer the same prompt."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import app_pages
from console.services import compare as compare_svc
from console.services import registry
from console.services.access import Principal
from console.services.context import AppContext
from console.services.errors import AccessDenied, InvalidInput
from console.textsafe import escape_markdown
from console.ui import UiSession
from db import audit as audit_q
from db import chat as chat_q
from tests.conftest import console_env


@pytest.fixture
def comparing(ctx, engine_host, tiny_model_dir: Path, tmp_path: Path, make_user):  # noqa: ANN001
    candidate_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "candidate"))
    for name, source in (("tiny-test", tiny_model_dir), ("tiny-cand", candidate_dir)):
        registry.register(ctx, Principal.shell(ctx), name=name, source=str(source), revision=None, dtype="auto",
                                max_model_len=None, engine_args={}, description=None)
    pool = compare_svc.CandidatePool(kv_cache_gib=0.25)
    ctx.host_factory = lambda: engine_host
    ctx.candidates_factory = lambda: pool
    yield ctx, make_user("rita", "reviewer")
    pool.shutdown()


def test_one_prompt_is_answered_by_both_versions_and_both_exchanges_are_stored(comparing) -> None:  # noqa: ANN001
    ctx, reviewer = comparing
    assert compare_svc.candidate_versions(ctx, reviewer) == ["tiny-cand"]
    comparison = compare_svc.start_comparison(ctx, reviewer, "tiny-cand", "Where is my order?", temperature=0.0,
                                              top_p=1.0, max_tokens=8)
    live, candidate = compare_svc.run_both(comparison)
    assert (live.model_version, candidate.model_version) == ("tiny-test", "tiny-cand")
    assert live.status == candidate.status == "ok"
    views = [compare_svc.side_view(comparison.live, "tiny-test"),
             compare_svc.side_view(comparison.candidate, "tiny-cand")]
    assert all(v.ttft_ms is not None and v.output_tokens for v in views)
    with ctx.db.session() as s:
        stored = [chat_q.get_exchange(s, o.exchange_id) for o in (live, candidate)]
        titles = [chat_q.get_conversation(s, e.conversation_id).title for e in stored]
        event = list(audit_q.iter_events(s, action="model.compare"))[-1]
    assert [e.model_version for e in stored] == ["tiny-test", "tiny-cand"]
    assert all(e.request_id.startswith("cmp-") for e in stored)
    assert all(t.startswith(compare_svc.TITLE_PREFIX) for t in titles)
    assert event.details["live"] == "tiny-test" and event.details["candidate"] == "tiny-cand"


def test_a_prompt_too_long_for_the_candidate_is_refused_before_either_side_stores_anything(comparing) -> None:  # noqa: ANN001
    ctx, reviewer = comparing
    with ctx.db.session() as s:
        before = len(list(audit_q.iter_events(s)))
    with pytest.raises(InvalidInput, match=r"tiny-cand: The prompt is too long: \d+ tokens, but the model's context holds 512"):
        compare_svc.start_comparison(ctx, reviewer, "tiny-cand", "Where is my order? " * 400, temperature=0.0,
                                     top_p=1.0, max_tokens=4)
    with ctx.db.session() as s:
        assert chat_q.list_conversations(s, reviewer.user_id) == []
        assert len(list(audit_q.iter_events(s))) == before


def test_comparing_the_live_version_with_itself_is_refused(comparing) -> None:  # noqa: ANN001
    ctx, reviewer = comparing
    with pytest.raises(InvalidInput, match="live version"):
        compare_svc.start_comparison(ctx, reviewer, "tiny-test", "hi", temperature=0.0, top_p=1.0, max_tokens=4)


def test_operators_cannot_compare_versions(comparing, make_user) -> None:  # noqa: ANN001
    ctx, _ = comparing
    with pytest.raises(AccessDenied):
        compare_svc.start_comparison(ctx, make_user("olivia", "operator"), "tiny-cand", "hi", temperature=0.0,
                                     top_p=1.0, max_tokens=4)


# --- the page (AppTest), with the comparison itself faked at the service seam ---------------------------------

SESSION_KEY = "llm_console_session"
LONG_NAME = "support-demo-v2-candidate_finetuned_on_ticket_replies_2026_11_rerun_3"


@pytest.fixture
def app_env(tmp_path, monkeypatch, migrated_db_file, ctx) -> Iterator[AppContext]:  # noqa: ANN001
    """Point the console's resources at this test's database (the same file `ctx` uses)."""
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    yield ctx
    st.cache_resource.clear()


def _answered(text: str) -> SimpleNamespace:
    """A finished chat turn as the page reads it: its deltas, then its outcome."""
    result = SimpleNamespace(ttft_s=0.05, tokens_per_s=20.0, output_tokens=len(text.split()))
    outcome = SimpleNamespace(exchange_id=1, status="ok", text=text, result=result, prompt_action="allow",
                              output_action="allow", notice=None)
    return SimpleNamespace(deltas=lambda: iter(text.split(" ")), outcome=outcome)


@pytest.fixture
def compare_page(app_env, make_user, monkeypatch) -> tuple[AppTest, list[str]]:  # noqa: ANN001
    sent: list[str] = []

    def start(ctx, actor, candidate, prompt, **sampling):  # noqa: ANN001, ANN003, ANN202
        sent.append(prompt)
        return compare_svc.Comparison(_answered(f"live answer {len(sent)}"), _answered(f"cand answer {len(sent)}"),
                                      "support-demo-v1", candidate)

    monkeypatch.setattr(compare_svc, "candidate_versions", lambda ctx, actor: [LONG_NAME])
    monkeypatch.setattr(compare_svc, "start_comparison", start)
    at = AppTest.from_file(str(app_pages.PAGES_DIR / app_pages.PAGE_TABLE["compare"][3]), default_timeout=60)
    at.session_state[SESSION_KEY] = UiSession(principal=make_user("rita", "reviewer"))
    at.run()
    return at, sent


def _send(at: AppTest, prompt: str) -> None:
    at.text_area(key="compare_prompt").input(prompt)
    next(b for b in at.button if b.label == "Send to both").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def test_the_side_by_side_page_answers_every_prompt_sent_in_a_row(compare_page) -> None:  # noqa: ANN001
    at, sent = compare_page
    prompts = ["Where is my order?", "How do I get a refund?", "Can I change my delivery address?"]
    for n, prompt in enumerate(prompts, start=1):
        _send(at, prompt)
        assert sent == prompts[:n]  # each send reached the service, not only every second one
        shown = [m.value for m in at.markdown]
        assert f"live answer {n}" in shown and f"cand answer {n}" in shown
        assert at.text_area(key="compare_prompt").value == prompt  # what was sent stays in the box


def test_side_by_side_titles_are_short_and_the_full_version_names_are_shown_whole(compare_page) -> None:  # noqa: ANN001
    at, _ = compare_page
    _send(at, "Where is my order?")
    assert [(h.value, h.help) for h in at.subheader] == [
        ("Live", f"Live version: {escape_markdown('support-demo-v1')}"),
        ("Candidate", f"Candidate version: {escape_markdown(LONG_NAME)}")]
    names = [c.value for c in at.caption if c.value.startswith("**")]
    assert names == [f"**{escape_markdown('support-demo-v1')}**", f"**{escape_markdown(LONG_NAME)}**"]
