"""Four eyes on every move of a protected alias (issue 21, item 1): production moves only through an approved
promotion; the only one-person moves are the emergency rollback and a shell command with --break-glass, each shown
to every admin until another admin acknowledges it. And the weights are hashed before the write transaction."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from console import cli
from console.services import promotion as promotion_svc
from console.services import registry, serving, timelines
from console.services.access import Principal
from console.services.errors import AccessDenied, InvalidInput, SeparationOfDuties
from db import audit as audit_q
from db import model_versions as versions_q
from engine.fingerprint import fingerprint_dir
from tests.conftest import console_env


def _register(ctx, name: str, source: Path) -> None:  # noqa: ANN001
    fp = fingerprint_dir(source)
    with ctx.db.session() as s:
        versions_q.register_model_version(s, name=name, source=str(source), actor="test", dtype="float32",
                                          fingerprint=fp.sha256, fingerprint_files=fp.as_records())


@pytest.fixture
def installed(ctx, tiny_model_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """Three versions; tiny-a is the first version (served by one person, as `init` does)."""
    _register(ctx, "tiny-a", tiny_model_dir)
    for name in ("tiny-b", "tiny-c"):
        _register(ctx, name, Path(shutil.copytree(tiny_model_dir, tmp_path / name)))
    serving.serve(ctx, Principal.shell(ctx), "tiny-a", "first version")


def _production(ctx) -> str:  # noqa: ANN001
    return serving.desired_state(ctx).version


def _events(ctx, action: str) -> list[dict]:  # noqa: ANN001
    with ctx.db.session(readonly=True) as s:
        return [e.details for e in audit_q.iter_events(s, action=action)]


def _promote(ctx, asker, approver, name: str, alias: str = "production") -> None:  # noqa: ANN001
    request = promotion_svc.request_promotion(ctx, asker, name, alias, "better answers")
    promotion_svc.approve(ctx, approver, request.id, "looked at it", "no evaluation in this test")


def test_the_first_version_of_an_empty_installation_may_be_served_by_one_admin(ctx, tiny_model_dir,  # noqa: ANN001
                                                                              make_user) -> None:
    _register(ctx, "tiny-a", tiny_model_dir)
    serving.serve(ctx, make_user("ada", "admin"), "tiny-a", "first version")
    assert _production(ctx) == "tiny-a"
    assert _events(ctx, "model.emergency_rollback") == [] and _events(ctx, "model.break_glass") == []


def test_the_configured_default_version_counts_as_holding_production_before_its_alias_is_set(  # noqa: ANN001
        ctx, tiny_model_dir, tmp_path, make_user) -> None:
    # The consoles serve the default version while no alias row exists: serving another one is a move.
    _register(ctx, ctx.settings.default_model, tiny_model_dir)
    _register(ctx, "tiny-b", Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny-b")))
    ada = make_user("ada", "admin")
    assert [(p.alias, p.version) for p in registry.protected_aliases(ctx, ada)] == [
        ("production", ctx.settings.default_model)]
    with pytest.raises(AccessDenied, match="production is protected"):
        serving.serve(ctx, ada, "tiny-b", "better answers")
    serving.serve(ctx, ada, ctx.settings.default_model, "set the alias of what is served")
    assert _production(ctx) == ctx.settings.default_model


def test_a_version_a_console_serves_counts_as_holding_production_before_its_alias_is_set(  # noqa: ANN001
        ctx, tiny_model_dir, tmp_path, make_user) -> None:
    # A console started with another default version serves it (and audits the switch); the shell's settings
    # name no registered default.
    _register(ctx, "tiny-a", tiny_model_dir)
    _register(ctx, "tiny-b", Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny-b")))
    with ctx.db.session() as s:
        audit_q.append_event(s, actor="system", actor_id=None, action="model.switch", object_type="model_version",
                             object_id="tiny-a", details={"from": None, "to": "tiny-a", "seconds": 1.0})
    with pytest.raises(AccessDenied, match="production is protected"):
        serving.serve(ctx, Principal.shell(ctx), "tiny-b", "better answers")
    serving.serve(ctx, Principal.shell(ctx), "tiny-b", "better answers", break_glass="the test")
    assert registry.unacknowledged_emergencies(ctx, make_user("ada", "admin"))[0].from_version == "tiny-a"


def test_one_admin_cannot_move_production_by_serving(ctx, installed, make_user) -> None:  # noqa: ANN001
    ada = make_user("ada", "admin")
    with pytest.raises(AccessDenied, match="production is protected .*approved promotion"):
        serving.serve(ctx, ada, "tiny-b", "better answers")
    assert _production(ctx) == "tiny-a"
    assert [e["to"] for e in _events(ctx, "model.alias")] == ["tiny-a"]
    [refusal] = _events(ctx, "access.denied")  # the attempt stays on record
    assert refusal["alias"] == "production" and refusal["to"] == "tiny-b" and "four eyes" in refusal["reason"]


def test_one_admin_cannot_move_production_by_setting_the_alias(ctx, installed, make_user) -> None:  # noqa: ANN001
    ada = make_user("ada", "admin")
    with pytest.raises(InvalidInput, match="approved promotion"):
        registry.set_alias(ctx, ada, "tiny-b", "production", "better answers")
    with pytest.raises(InvalidInput, match="approved promotion"):
        registry.set_alias(ctx, Principal.shell(ctx), "tiny-b", "Production", "better answers", break_glass="it is urgent")
    assert _production(ctx) == "tiny-a"


@pytest.mark.parametrize("move", ["serve", "alias", "unprotect"])
def test_breaking_the_glass_is_refused_to_a_signed_in_admin_and_audited(ctx, installed, make_user, move) -> None:  # noqa: ANN001
    ada = make_user("ada", "admin")
    registry.set_alias(ctx, ada, "tiny-b", "staging", "QA")
    registry.protect_alias(ctx, ada, "staging", "the partner API reads it")
    with pytest.raises(AccessDenied, match="only possible from a shell on the server"):
        if move == "serve":
            serving.serve(ctx, ada, "tiny-b", "better answers", break_glass="it is urgent")
        elif move == "alias":
            registry.set_alias(ctx, ada, "tiny-c", "staging", "newer", break_glass="it is urgent")
        else:
            registry.unprotect_alias(ctx, ada, "staging", "it is urgent")
    assert _production(ctx) == "tiny-a"
    assert _events(ctx, "model.break_glass") == []
    with ctx.db.session(readonly=True) as s:
        assert versions_q.version_for_alias(s, "staging").name == "tiny-b" and versions_q.is_protected(s, "staging")
    [refusal] = _events(ctx, "access.denied")
    assert refusal["reason"] == "break glass: shell only"


def test_an_approved_promotion_still_moves_production(ctx, installed, make_user) -> None:  # noqa: ANN001
    _promote(ctx, make_user("ada", "admin"), make_user("bob", "admin"), "tiny-b")
    assert _production(ctx) == "tiny-b"
    assert registry.unacknowledged_emergencies(ctx, make_user("cy", "admin")) == []


def test_the_shell_refuses_to_move_production_without_break_glass(ctx, installed, tmp_path, monkeypatch,  # noqa: ANN001
                                                                  capsys) -> None:
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    assert cli.main(["model", "serve", "tiny-b", "--reason", "better answers"]) == 1
    err = capsys.readouterr().err
    assert "production is protected" in err and "--break-glass" in err
    assert _production(ctx) == "tiny-a"
    assert cli.main(["model", "serve", "tiny-b", "--break-glass", "the approver is on a plane, answers are "
                     "leaking card numbers"]) == 0
    assert _production(ctx) == "tiny-b"
    [event] = _events(ctx, "model.break_glass")
    assert event["break_glass"] is True and event["from"] == "tiny-a" and event["to"] == "tiny-b"
    assert "card numbers" in event["reason"]
    [shown] = registry.unacknowledged_emergencies(ctx, _admin(ctx))
    assert shown.break_glass and shown.actor == Principal.shell(ctx).username and "break-glass" in shown.summary


def _admin(ctx):  # noqa: ANN001, ANN202
    from console.services import users as users_svc
    from tests.conftest import STRONG_PASSWORD

    view = users_svc.add_user(ctx, Principal.shell(ctx), "zed", STRONG_PASSWORD, ["admin"])
    return Principal(view.id, view.username, frozenset(view.roles))


def test_a_protected_alias_moves_only_through_a_promotion_and_protecting_is_audited(ctx, installed,  # noqa: ANN001
                                                                                    make_user) -> None:
    ada, bob = make_user("ada", "admin"), make_user("bob", "admin")
    registry.set_alias(ctx, ada, "tiny-b", "staging", "trying it")  # a free alias: one person
    assert registry.protect_alias(ctx, ada, "Staging", "the partner API reads staging") is True
    assert [e["alias"] for e in _events(ctx, "model.alias_protect")] == ["staging"]
    with pytest.raises(AccessDenied, match="staging is protected"):
        registry.set_alias(ctx, ada, "tiny-c", "staging", "newer")
    with pytest.raises(AccessDenied, match="staging is protected"):
        registry.set_alias(ctx, Principal.shell(ctx), "tiny-c", "staging", "newer")
    with pytest.raises(InvalidInput, match="protected alias staging"):
        registry.retire(ctx, ada, "tiny-b", "old")  # retiring would free the alias for one person
    _promote(ctx, ada, bob, "tiny-c", alias="staging")
    with ctx.db.session(readonly=True) as s:
        assert versions_q.version_for_alias(s, "staging").name == "tiny-c"
    views = {p.alias: p for p in registry.protected_aliases(ctx, ada)}
    assert views["production"].version == "tiny-a" and views["production"].protected_by == "always"
    assert views["staging"].version == "tiny-c" and views["staging"].protected_by == "ada"


def test_unprotecting_is_only_a_break_glass_shell_command_shown_until_acknowledged(ctx, installed,  # noqa: ANN001
                                                                                   make_user) -> None:
    ada = make_user("ada", "admin")
    registry.protect_alias(ctx, ada, "staging", "partner API")
    with pytest.raises(InvalidInput, match="always protected"):
        registry.unprotect_alias(ctx, Principal.shell(ctx), "production", "tired of promotions")
    with pytest.raises(InvalidInput, match="reason"):
        registry.unprotect_alias(ctx, Principal.shell(ctx), "staging", "  ")
    assert registry.unprotect_alias(ctx, Principal.shell(ctx), "staging", "the partner API is gone") is True
    [shown] = registry.unacknowledged_emergencies(ctx, ada)
    assert shown.kind == "unprotect" and "removed the protection of staging" in shown.summary
    assert _events(ctx, "model.break_glass")[0]["kind"] == "unprotect"


def test_the_emergency_rollback_returns_only_to_the_previous_version_needs_a_reason_and_is_audited(  # noqa: ANN001
        ctx, installed, make_user) -> None:
    ada, bob = make_user("ada", "admin"), make_user("bob", "admin")
    with pytest.raises(InvalidInput, match="no previous production version"):
        promotion_svc.rollback(ctx, ada, "nothing came before the first version")
    _promote(ctx, ada, bob, "tiny-b")
    with pytest.raises(InvalidInput, match="reason"):
        promotion_svc.rollback(ctx, ada, "   ")
    assert _production(ctx) == "tiny-b" and _events(ctx, "model.emergency_rollback") == []
    done = promotion_svc.rollback(ctx, ada, "tiny-b leaks card numbers")
    assert (done.from_version, done.to_version) == ("tiny-b", "tiny-a") and _production(ctx) == "tiny-a"
    [event] = _events(ctx, "model.emergency_rollback")
    assert event["from"] == "tiny-b" and event["to"] == "tiny-a" and event["break_glass"] is False
    assert event["reason"] == "tiny-b leaks card numbers"
    timeline = timelines.version_history(ctx, bob, "tiny-b")
    assert [t.actor for t in timeline if t.kind == "emergency"] == ["ada"]
    # The rule is "the version that held production just before": never a version that held it earlier or never.
    with pytest.raises(AccessDenied, match="production is protected"):
        serving.serve(ctx, ada, "tiny-c", "never approved")
    assert _production(ctx) == "tiny-a"


def test_an_emergency_rollback_stays_shown_until_a_different_admin_acknowledges_it(ctx, installed,  # noqa: ANN001
                                                                                  make_user) -> None:
    ada, bob, cy = make_user("ada", "admin"), make_user("bob", "admin"), make_user("cy", "admin")
    _promote(ctx, ada, bob, "tiny-b")
    promotion_svc.rollback(ctx, ada, "tiny-b leaks card numbers")
    [shown] = registry.unacknowledged_emergencies(ctx, bob)
    assert shown.actor == "ada" and shown.kind == "rollback" and not shown.break_glass
    with pytest.raises(SeparationOfDuties):
        registry.acknowledge_emergency(ctx, ada, shown.id, "I did it")
    assert [e.id for e in registry.unacknowledged_emergencies(ctx, cy)] == [shown.id]
    with pytest.raises(AccessDenied):
        registry.acknowledge_emergency(ctx, make_user("rita", "reviewer"), shown.id)
    registry.acknowledge_emergency(ctx, bob, shown.id, "checked the transcripts: right call")
    assert registry.unacknowledged_emergencies(ctx, cy) == []
    [ack] = _events(ctx, "model.emergency_acknowledged")
    assert ack["by"] == "ada" and ack["note"] == "checked the transcripts: right call"
    with pytest.raises(InvalidInput, match="already acknowledged by bob"):
        registry.acknowledge_emergency(ctx, cy, shown.id)


def test_the_shell_rollback_is_an_emergency_rollback(ctx, installed, tmp_path, monkeypatch, make_user) -> None:  # noqa: ANN001
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    _promote(ctx, make_user("ada", "admin"), make_user("bob", "admin"), "tiny-b")
    assert cli.main(["model", "rollback", "--reason", "answers in the wrong language"]) == 0
    assert _production(ctx) == "tiny-a"
    [event] = _events(ctx, "model.emergency_rollback")
    assert event["reason"] == "answers in the wrong language"
    assert registry.unacknowledged_emergencies(ctx, make_user("cy", "admin"))[0].actor == Principal.shell(ctx).username


def test_the_weights_are_hashed_before_the_write_transaction(ctx, tiny_model_dir, monkeypatch,  # noqa: ANN001
                                                             make_user) -> None:
    """A long hash must not hold the database's writer lock: while the files are checked, another connection can
    still take it at once."""
    _register(ctx, "tiny-a", tiny_model_dir)
    path = ctx.db.engine.url.database
    seen: list[str] = []

    def hashing(records, root):  # noqa: ANN001, ANN202
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            seen.append("writer lock free")
        except sqlite3.OperationalError as exc:
            seen.append(str(exc))
        finally:
            other.close()
        return []

    monkeypatch.setattr(registry, "changed_files", hashing)
    serving.serve(ctx, make_user("ada", "admin"), "tiny-a", "first version")
    assert seen == ["writer lock free"]


def test_the_sidebar_warns_every_admin_until_the_emergency_is_acknowledged(ctx, installed, tmp_path,  # noqa: ANN001
                                                                          monkeypatch, make_user) -> None:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from console.ui import UiSession

    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LLM_CONSOLE_ENGINE_AUTOSTART", "false")
    st.cache_resource.clear()
    ada, bob = make_user("ada", "admin"), make_user("bob", "admin")
    serving.serve(ctx, Principal.shell(ctx), "tiny-b", "hotfix", break_glass="the approvers are away")

    def sidebar_warnings(principal) -> list[str]:  # noqa: ANN001
        at = AppTest.from_file(str(Path(cli.__file__).parent / "app.py"), default_timeout=60)
        at.session_state["llm_console_session"] = UiSession(principal=principal)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return [w.value for w in at.sidebar.warning]

    try:
        assert any("1 emergency move waits for another admin's acknowledgement." in w for w in sidebar_warnings(ada))
        assert not any("emergency" in w for w in sidebar_warnings(make_user("olga", "operator")))
        registry.acknowledge_emergency(ctx, bob, registry.unacknowledged_emergencies(ctx, bob)[0].id)
        assert not any("emergency" in w for w in sidebar_warnings(ada))
    finally:
        st.cache_resource.clear()
