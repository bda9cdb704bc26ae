"""Side-by-side chats: the live engine host and a candidate in a child process answer the same prompt."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from console.services import compare as compare_svc
from console.services import models as models_svc
from console.services.errors import AccessDenied, InvalidInput
from db import audit as audit_q
from db import chat as chat_q


@pytest.fixture
def comparing(ctx, engine_host, tiny_model_dir: Path, tmp_path: Path, make_user):  # noqa: ANN001
    candidate_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "candidate"))
    for name, source in (("tiny-test", tiny_model_dir), ("tiny-cand", candidate_dir)):
        models_svc.register_cli(ctx, name=name, source=str(source), revision=None, dtype="auto",
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


def test_comparing_the_live_version_with_itself_is_refused(comparing) -> None:  # noqa: ANN001
    ctx, reviewer = comparing
    with pytest.raises(InvalidInput, match="live version"):
        compare_svc.start_comparison(ctx, reviewer, "tiny-test", "hi", temperature=0.0, top_p=1.0, max_tokens=4)


def test_operators_cannot_compare_versions(comparing, make_user) -> None:  # noqa: ANN001
    ctx, _ = comparing
    with pytest.raises(AccessDenied):
        compare_svc.start_comparison(ctx, make_user("olivia", "operator"), "tiny-cand", "hi", temperature=0.0,
                                     top_p=1.0, max_tokens=4)
