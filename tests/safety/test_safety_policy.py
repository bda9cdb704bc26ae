"""The moderation policy: loading, validation with the bad key named, actions, monitor-only and output modes."""

from __future__ import annotations

import hashlib

import pytest

from engine.safety import DEFAULT_POLICY_PATH, Finding, Policy, PolicyError


def pii(label: str, start: int, end: int, score: float = 1.0) -> Finding:
    return Finding("presidio", label, score, start, end, "presidio-test")


def tox(label: str, score: float) -> Finding:
    return Finding("detoxify", label, score, 0, 10, "detoxify-test")


POLICY = """
version = "test-1"
output_mode = "hold_until_scanned"

[rules.prompt.default]
action = "allow"

[rules.prompt.EMAIL_ADDRESS]
threshold = 0.5
action = "redact"

[rules.prompt.insult]
threshold = 0.5
action = "flag"

[rules.prompt.threat]
threshold = 0.8
action = "block"

[rules.prompt.PERSON]
threshold = 0.5
action = "redact"
monitor_only = true

[rules.output.default]
threshold = 0.9
action = "flag"

[rules.output.EMAIL_ADDRESS]
action = "redact"

[rules.output.severe_toxicity]
threshold = 0.7
action = "block"

[rules.output.insult]
action = "allow"
"""


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.from_toml(POLICY)


TEXT = "mail a@example.com now"  # the email is [5, 18)


@pytest.mark.parametrize(
    ("direction", "findings", "action", "text_out"),
    [
        ("prompt", [], "allow", TEXT),
        ("prompt", [tox("insult", 0.2)], "allow", TEXT),
        ("prompt", [tox("insult", 0.6)], "flag", TEXT),
        ("prompt", [pii("EMAIL_ADDRESS", 5, 18)], "redact", "mail <EMAIL_ADDRESS> now"),
        ("prompt", [pii("EMAIL_ADDRESS", 5, 18, 0.4)], "allow", TEXT),
        ("prompt", [tox("threat", 0.9)], "block", TEXT),
        ("prompt", [tox("threat", 0.9), pii("EMAIL_ADDRESS", 5, 18), tox("insult", 0.9)], "block", None),
        ("prompt", [pii("EMAIL_ADDRESS", 5, 18), tox("insult", 0.9)], "redact", "mail <EMAIL_ADDRESS> now"),
        ("prompt", [tox("obscene", 0.99)], "allow", TEXT),
        ("output", [tox("insult", 0.99)], "allow", TEXT),
        ("output", [tox("obscene", 0.95)], "flag", TEXT),
        ("output", [tox("obscene", 0.85)], "allow", TEXT),
        ("output", [pii("EMAIL_ADDRESS", 5, 18)], "redact", "mail <EMAIL_ADDRESS> now"),
        ("output", [tox("severe_toxicity", 0.75)], "block", TEXT),
    ],
    ids=[
        "prompt-nothing-found-allows",
        "prompt-below-threshold-allows",
        "prompt-flag",
        "prompt-redact-model-sees-redacted",
        "prompt-redact-below-threshold",
        "prompt-block",
        "prompt-block-beats-redact-and-flag",
        "prompt-redact-beats-flag",
        "prompt-default-rule-allows-unlisted-label",
        "output-explicit-allow-rule",
        "output-default-rule-flags-unlisted-label",
        "output-default-rule-threshold",
        "output-redact-user-sees-redacted",
        "output-block",
    ],
)
def test_policy_action_for_findings(policy, direction, findings, action, text_out):
    decision = policy.decide(direction, findings)
    assert decision.action == action
    assert decision.policy_version == "test-1"
    assert decision.needs_review == (action in ("flag", "block"))
    assert decision.blocked == (action == "block")
    if text_out is not None:
        assert decision.apply(TEXT) == text_out
    if action == "allow":
        assert decision.triggered == ()


def test_default_rule_hit_names_the_default_rule(policy):
    decision = policy.decide("output", [tox("obscene", 0.95)])
    (hit,) = decision.triggered
    assert (hit.rule, hit.action, hit.threshold, hit.direction) == ("default", "flag", 0.9, "output")


def test_monitor_only_rule_records_would_be_action_without_enforcing(policy):
    name = pii("PERSON", 0, 4, 0.85)
    decision = policy.decide("prompt", [name])
    assert decision.action == "allow"
    assert decision.triggered == ()
    (hit,) = decision.monitored
    assert hit.monitor_only and hit.action == "redact" and hit.finding == name
    assert decision.apply("John is here") == "John is here"


def test_monitor_only_rule_does_not_mask_an_enforced_one(policy):
    decision = policy.decide("prompt", [pii("PERSON", 0, 4), pii("EMAIL_ADDRESS", 5, 18)])
    assert decision.action == "redact"
    assert [h.finding.label for h in decision.triggered] == ["EMAIL_ADDRESS"]
    assert [h.finding.label for h in decision.monitored] == ["PERSON"]


@pytest.mark.parametrize(
    ("mode", "hold"),
    [("stream_then_scan", False), ("hold_until_scanned", True)],
    ids=["stream-then-scan", "hold-until-scanned"],
)
def test_both_output_modes_load(mode, hold):
    policy = Policy.from_toml(f'version = "m"\noutput_mode = "{mode}"\n')
    assert policy.output_mode == mode
    assert policy.hold_output is hold


def test_defaults_when_keys_are_left_out():
    policy = Policy.from_toml('version = "minimal"\n')
    assert policy.output_mode == "stream_then_scan"
    assert policy.keep_raw_text is False
    assert policy.decide("prompt", [tox("threat", 1.0)]).action == "allow"


def test_version_and_sha256_come_from_the_file(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(POLICY, encoding="utf-8")
    policy = Policy.load(path)
    assert policy.version == "test-1"
    assert policy.sha256 == hashlib.sha256(POLICY.encode()).hexdigest()
    assert policy.source_text == POLICY


def test_shipped_default_policy_is_valid_and_sensible():
    policy = Policy.load(DEFAULT_POLICY_PATH)
    assert policy.output_mode == "stream_then_scan" and policy.keep_raw_text is False
    for label in ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN"):
        assert policy.decide("prompt", [pii(label, 0, 3)]).action == "redact"
        assert policy.decide("output", [pii(label, 0, 3)]).action == "flag"
    assert policy.decide("prompt", [tox("toxicity", 0.6)]).action == "flag"
    assert policy.decide("prompt", [tox("threat", 0.9)]).action == "block"
    assert policy.decide("prompt", [tox("severe_toxicity", 0.9)]).action == "block"
    assert policy.decide("prompt", [Finding("profanity-fallback", "profanity", 0.95, 0, 3, "x")]).action == "flag"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('output_mode = "stream_then_scan"', r"^version: is required"),
        ('version = ""', r"^version: is required"),
        ('version = "v"\nmode = "x"', r"^mode: unknown key"),
        ('version = "v"\noutput_mode = "later"', r"^output_mode: must be one of"),
        ('version = "v"\nkeep_raw_text = "yes"', r"^keep_raw_text: must be true or false"),
        ('version = "v"\n[rules.input.x]\naction = "flag"', r"^rules.input: unknown direction"),
        ('version = "v"\n[rules.output.toxicity]\nthreshold = 1.5\naction = "flag"',
         r"^rules.output.toxicity.threshold: must be between 0 and 1"),
        ('version = "v"\n[rules.output.toxicity]\nthreshold = "high"\naction = "flag"',
         r"^rules.output.toxicity.threshold: must be a number"),
        ('version = "v"\n[rules.prompt.EMAIL_ADDRESS]\naction = "delete"',
         r"^rules.prompt.EMAIL_ADDRESS.action: must be one of allow, flag, redact, block"),
        ('version = "v"\n[rules.prompt.EMAIL_ADDRESS]\nthreshold = 0.5', r"^rules.prompt.EMAIL_ADDRESS.action: is required"),
        ('version = "v"\n[rules.prompt.EMAIL_ADDRESS]\naction = "flag"\nmonitor = true',
         r"^rules.prompt.EMAIL_ADDRESS.monitor: unknown key"),
        ('version = "v"\n[rules.prompt.PERSON]\naction = "flag"\nmonitor_only = 1',
         r"^rules.prompt.PERSON.monitor_only: must be true or false"),
        ('version = "v"\n[rules.prompt.toxicity]\naction = "redact"', r"^rules.prompt.toxicity.action: .*no span to redact"),
        ('version = "v"\nrules = 3', r"^rules: must be a table"),
        ('version = = "v"', r"not valid TOML"),
    ],
    ids=[
        "missing-version",
        "empty-version",
        "unknown-top-level-key",
        "bad-output-mode",
        "keep-raw-text-not-bool",
        "unknown-direction",
        "threshold-out-of-range",
        "threshold-not-a-number",
        "unknown-action",
        "missing-action",
        "unknown-rule-key",
        "monitor-only-not-bool",
        "redact-on-whole-text-label",
        "rules-not-a-table",
        "not-toml",
    ],
)
def test_invalid_policy_error_names_the_bad_key(toml, message):
    with pytest.raises(PolicyError, match=message):
        Policy.from_toml(toml)


def test_load_prefixes_errors_with_the_file_name(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('version = "v"\n[rules.output.toxicity]\nthreshold = 2\naction = "flag"\n', encoding="utf-8")
    with pytest.raises(PolicyError, match=r"^broken.toml: rules.output.toxicity.threshold: must be between 0 and 1"):
        Policy.load(path)
