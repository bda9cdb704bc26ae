"""The policy in force: seeded from the file, changed through an approved request (validated, versioned, audited),
kept on restart. (Until issue 25 an admin replaced it in one step with ``policy.replace``; that is gone: the
change tests here now go through ``policy_changes.propose`` and another admin's ``approve``.)"""

from __future__ import annotations

import pytest

from console.services import moderation, policy_changes
from console.services import policy as policy_svc
from console.services.errors import AccessDenied, InvalidInput
from db import audit as audit_q
from db import safety as safety_q
from engine.safety.runner import ScannerRunner

POLICY_A = 'version = "a"\n[rules.prompt.EMAIL_ADDRESS]\nthreshold = 0.5\naction = "redact"\n'
POLICY_B = 'version = "b"\noutput_mode = "hold_until_scanned"\n[rules.prompt.EMAIL_ADDRESS]\nthreshold = 0.5\naction = "block"\n'
POLICY_C = 'version = "c"\n'


@pytest.fixture
def stacks(ctx, tmp_path, monkeypatch):
    """Build safety stacks as the console does at start-up, with no scanners (the policy is what is tested)."""
    import dataclasses

    import engine.safety.runner as runner_mod

    monkeypatch.setattr(runner_mod, "build_runner", lambda *a, **k: (ScannerRunner([]), None))
    policy_file = tmp_path / "policy.toml"

    def build(content: str):
        policy_file.write_text(content)
        settings = dataclasses.replace(ctx.settings, policy_file=policy_file)
        stack = moderation.build_safety_stack(settings, ctx.db)
        ctx.safety_factory = lambda: stack
        return stack

    return build


def test_the_file_seeds_the_first_version_and_an_approved_change_survives_a_restart(ctx, make_user, stacks):
    admin = make_user("boss", "admin")
    second = make_user("second", "admin")
    first = stacks(POLICY_A)
    assert (first.policy.version, first.policy_version) == ("a", 1)
    request = policy_changes.propose(ctx, admin, POLICY_B, "hold answers until scanned", 7)
    assert policy_svc.current(ctx, admin).version == 1  # a request alone changes nothing
    policy_changes.approve(ctx, second, request.id)
    view = policy_svc.current(ctx, admin)
    assert (view.version, view.file_version, view.output_mode) == (2, "b", "hold_until_scanned")
    restarted = stacks(POLICY_A)  # same file as before: the admin's version stays in force
    assert (restarted.policy.version, restarted.policy_version) == ("b", 2)
    changed = stacks(POLICY_C)  # the file changed: it becomes the newest version
    assert (changed.policy.version, changed.policy_version) == ("c", 3)
    with ctx.db.session() as s:
        assert safety_q.latest_policy_version(s).version == 3
        # The approver stores the version (the requester is on the policy.change_requested event).
        assert [e.actor for e in audit_q.iter_events(s, action="policy.version")] == ["system", "second", "system"]


@pytest.mark.parametrize("content,key", [
    ('version = "x"\n[rules.prompt.EMAIL_ADDRESS]\nthreshold = 2\naction = "redact"\n', "rules.prompt.EMAIL_ADDRESS.threshold"),
    ('version = "x"\n[rules.output.toxicity]\naction = "explode"\n', "rules.output.toxicity.action"),
    ('version = "x"\nmode = "fast"\n', "mode"),
    ("not toml at all [", "TOML"),
    ("   ", "empty"),
], ids=["threshold", "action", "unknown-key", "syntax", "empty"])
def test_an_invalid_policy_names_the_bad_key_and_changes_nothing(ctx, make_user, stacks, content, key):
    admin = make_user("boss", "admin")
    stacks(POLICY_A)
    with pytest.raises(InvalidInput, match=key.replace(".", r"\.")):
        policy_changes.propose(ctx, admin, content, "a change", 7)
    assert policy_svc.current(ctx, admin).version == 1


def test_reviewers_read_the_policy_but_only_admins_propose_changes(ctx, make_user, stacks):
    stacks(POLICY_A)
    reviewer = make_user("rita", "reviewer")
    assert policy_svc.current(ctx, reviewer).file_version == "a"
    with pytest.raises(AccessDenied):
        policy_changes.propose(ctx, reviewer, POLICY_B, "a change", 7)
    assert not hasattr(policy_svc, "replace")  # no one-step replace is left to call
