"""One meaning of "flagged" (docs/architecture.md): the policy's action on the prompt or the output was flag or block.

A known mix of chat turns goes through the chat service (a scripted scanner gives every message a finding, most
of them toxicity scores under the policy's thresholds; a stand-in host answers with known text); then the Latency
page's service and the Prometheus counter must agree, and equal the known count; the watch window's aggregates count
the answered exchanges and the flags on answers only.
"""

from __future__ import annotations

import re
import textwrap
from datetime import timedelta

import pytest

from console.services import chat as chat_svc
from console.services import latency, latency_view_model, moderation
from console.services.telemetry import TELEMETRY
from db import promotions as promotions_q
from db import safety as safety_q
from db.tables import Finding as FindingRow
from db.types import utcnow
from engine.safety.base import Finding
from engine.safety.policy import Policy
from engine.safety.runner import ScannerRunner
from tests.safety_fixtures import CannedHost

POLICY = textwrap.dedent("""
    version = "flagged-test"
    output_mode = "stream_then_scan"
    keep_raw_text = false
    [rules.prompt.default]
    action = "allow"
    [rules.prompt.insult]
    threshold = 0.5
    action = "flag"
    [rules.prompt.threat]
    threshold = 0.5
    action = "block"
    [rules.output.default]
    action = "allow"
    [rules.output.insult]
    threshold = 0.5
    action = "flag"
    [rules.output.threat]
    threshold = 0.5
    action = "block"
""")

# (prompt, answer or None when the prompt is blocked): a marker "label=score" is what the scanner reports.
TURNS = [
    ("Where is my order?", "It ships today."),                                   # allowed
    ("I was charged twice insult=0.07", "Sorry, we refund it."),                 # a score under the threshold
    ("You are useless insult=0.9", "Sorry to hear that."),                       # prompt flagged
    ("How do I return it?", "Idiot question insult=0.8"),                        # answer flagged
    ("I will hurt you threat=0.95", None),                                       # prompt blocked
    ("Stupid bot insult=0.9", "I will find you threat=0.9"),                     # prompt flagged, answer blocked
    ("Thanks!", "You are welcome insult=0.2"),                                   # a score under the threshold
    ("Give me a refund threat=0.6", None),                                       # prompt blocked
]
FLAGGED, PROMPT_FLAGGED, OUTPUT_FLAGGED = 5, 4, 2  # turns 3, 4, 5, 6, 8; prompt 3, 5, 6, 8; answer 4, 6


class ScriptedToxicity:
    """A scanner at our own seam: a low toxicity score for every text (as the real detectors store), and the
    score written in the text for ``label=score`` markers."""

    name = "scripted"
    version = "test-1"
    labels = ("toxicity", "insult", "threat")

    def scan(self, text: str) -> tuple[Finding, ...]:
        found = [Finding(self.name, "toxicity", 0.01, None, None, self.version)] if text else []
        found += [Finding(self.name, label, float(score), None, None, self.version)
                  for label, score in re.findall(r"(\w+)=([01]\.\d+)", text)]
        return tuple(found)


def _prometheus(name: str, **labels: str) -> float:
    return TELEMETRY.registry.get_sample_value(name, {"model_version": "v1", "traffic": "real", **labels}) or 0.0


def test_the_page_the_watch_window_and_prometheus_count_the_same_flagged_exchanges(ctx, make_user, clock):
    clock.now = utcnow()  # the chat service stamps exchanges with the real time
    with ctx.db.session() as s:
        version = safety_q.store_policy_version(s, POLICY, None, actor="test").version
    stack = moderation.SafetyStack(ScannerRunner([ScriptedToxicity()]), Policy.from_toml(POLICY), version)
    host = CannedHost()
    ctx.safety_factory = lambda: stack
    ctx.host_factory = lambda: host
    operator = make_user("olivia", "operator")
    # The process's counters (other tests may have counted before): what this test adds.
    counted = {"exchanges": lambda: _prometheus("llm_console_flagged_exchanges_total"),
               "prompt": lambda: _prometheus("llm_console_flagged_total", direction="prompt"),
               "output": lambda: _prometheus("llm_console_flagged_total", direction="output"),
               "requests": lambda: sum(_prometheus("llm_console_requests_total", status=st) for st in ("ok", "blocked"))}
    before = {name: read() for name, read in counted.items()}

    for prompt, answer in TURNS:
        if answer is not None:
            host.answers.append(answer)
        turn = chat_svc.start_turn(ctx, operator, None, prompt, temperature=0.0, top_p=1.0, max_tokens=16)
        "".join(turn.deltas())
        assert turn.outcome is not None and turn.outcome.saved
        assert turn.outcome.status == ("blocked" if answer is None else "ok")

    # Every exchange has findings: a stored finding is not a flag.
    with ctx.db.session(readonly=True) as s:
        with_findings = {f.exchange_id for f in s.query(FindingRow)}
    assert len(with_findings) == len(TURNS)

    # The page's "last hour" ends at the clock's now; the exchanges were stamped with the real time since, so the
    # clock catches up first (else a minute's bucket begun during the turns fell outside the range, now and then).
    clock.now = utcnow()
    report = latency.overview(ctx, operator, latency.LatencyFilter(range="last hour"))
    (page,) = report.totals[report.totals["model_version"] == "v1"].to_dict("records")
    with ctx.db.session(readonly=True) as s:
        window = promotions_q.window_stats(s, "v1", clock.now - timedelta(hours=1), clock.now + timedelta(hours=1))
    prometheus = {name: read() - before[name] for name, read in counted.items()}

    assert page["requests"] == prometheus["requests"] == len(TURNS)
    assert page["flagged"] == prometheus["exchanges"] == FLAGGED
    assert page["flag_rate"] == pytest.approx(FLAGGED / len(TURNS))
    # The watch window judges the model, not its users (issue 21): only exchanges the model answered, and only the
    # policy's verdicts on answers, so prompts a user typed can never roll a version back.
    answered = [t for t in TURNS if t[1] is not None]
    assert window.requests == len(answered)
    assert window.flagged == OUTPUT_FLAGGED
    assert window.flag_rate == pytest.approx(OUTPUT_FLAGGED / len(answered))
    # And by direction: the page's columns and the per-direction counter.
    assert page["prompt_flagged"] == prometheus["prompt"] == PROMPT_FLAGGED
    assert page["output_flagged"] == prometheus["output"] == OUTPUT_FLAGGED
    # The summary table says what the rate means and splits it.
    table = latency_view_model.summary_table(report.totals).set_index("model version")
    assert table.loc["v1", "flagged (prompt or answer)"] == "62.50 %"
    assert table.loc["v1", "prompt flagged"] == "50.00 %" and table.loc["v1", "answer flagged"] == "25.00 %"
