"""Policy backtests: replay the stored findings of the last N days through the current and a proposed policy.

Scanners do not depend on the policy, so a verdict is re-decided from the findings stored with each exchange
(detector, label, score, direction), exactly as :meth:`engine.safety.policy.Policy.decide` would decide it: a rule
triggers when its action is not ``allow``, it is not monitor-only, and the score reaches its threshold (the
detector's own threshold where the policy sets one); the text's action is the strongest triggered action. Both
policies are replayed the same way, so the comparison is like with like even where an older policy judged the
exchange when it was stored.

What cannot be replayed (said on the page and in ``limits``):

- The PII scanner stores only findings at or above its score floor (``DEFAULT_SCORE_THRESHOLD``); a PII rule whose
  threshold is lowered below it would catch findings that were never stored. The stored text is redacted, so
  re-scanning it would not find them either.
- An exchange whose prompt was blocked has no answer: output rules have nothing to judge for it.

Exchanges are read in keyset chunks with their findings (:mod:`db.policy_changes`), so memory stays flat whatever
the window holds. Synthetic (load-test) exchanges are left out, as on the dashboards.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from db import policy_changes as changes_q
from engine.safety.base import Finding
from engine.safety.offline_model import LABELS as OFFLINE_LABELS
from engine.safety.pii import DEFAULT_SCORE_THRESHOLD
from engine.safety.policy import DEFAULT_RULE, DIRECTIONS, Policy
from engine.safety.toxicity import DETOXIFY_LABELS, FALLBACK_LABEL

MIN_DAYS, MAX_DAYS = 1, 90
MAX_EXAMPLES = 20
CHUNK = 5000
SYSTEM_PROMPT_PREFIX = "system prompt/"  # console.services.moderation.SYSTEM_PROMPT_DETECTOR_PREFIX
_PRECEDENCE = {"allow": 0, "flag": 1, "redact": 2, "block": 3}
_REVIEW = ("flag", "block")
# Labels whose detectors store a score for every text they read, low or high: any threshold replays exactly.
FULLY_SCORED_LABELS = DETOXIFY_LABELS | frozenset(OFFLINE_LABELS) | {FALLBACK_LABEL}


class _Judge:
    """One policy's verdict on one finding, exactly as :meth:`Policy.decide` gives it, but fast on many findings.

    A text's verdict is the strongest action among its findings' own verdicts (``decide`` takes the strongest
    triggered hit, and each hit depends on its finding alone), so findings are judged one at a time. The rule and
    its threshold are looked up once per (direction, detector, label): a score under the threshold is ``allow``
    without asking the policy; a score at or over it asks ``decide`` itself (block thresholds, label-specific
    actions), remembered per exact score (scanners round scores to 4 places, so few are distinct).
    """

    MAX_MEMO = 200_000

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._rules: dict[tuple[str, str, str], float | None] = {}
        self._memo: dict[tuple[str, str, str, float], str] = {}

    def action(self, direction: str, detector: str, label: str, score: float) -> str:
        key = (direction, detector, label)
        try:
            threshold = self._rules[key]
        except KeyError:
            _, rule = self.policy.rule_for(direction, label)  # type: ignore[arg-type]
            probe = Finding(detector, label, 0.0, None, None, "")
            threshold = (None if rule.action == "allow" or rule.monitor_only
                         else self.policy.threshold_for(direction, probe, rule))  # type: ignore[arg-type]
            self._rules[key] = threshold
        if threshold is None or score < threshold:
            return "allow"
        full = (direction, detector, label, score)
        try:
            return self._memo[full]
        except KeyError:
            pass
        verdict: str = self.policy.decide(direction,  # type: ignore[arg-type]
                                          [Finding(detector, label, score, None, None, "")]).action
        if len(self._memo) >= self.MAX_MEMO:
            self._memo.clear()
        self._memo[full] = verdict
        return verdict


@dataclass(frozen=True)
class Backtest:
    """What a replay found; ``to_dict`` is what a change request stores (ids of exchanges, never their text)."""

    days: int
    since: datetime
    until: datetime
    exchanges: int
    labels: list[dict[str, Any]]  # direction, label, flag_before/after, block_before/after (exchange counts)
    daily: list[dict[str, Any]]  # day, exchanges, items_before, items_after
    items_before: int
    items_after: int
    changed: int
    examples: list[dict[str, Any]]  # id, created_at, before/after {prompt, output}, labels
    prompt_blocked: int  # exchanges blocked at the prompt when stored: no answer to judge
    limits: list[str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"days": self.days, "since": self.since.isoformat(), "until": self.until.isoformat(),
                "exchanges": self.exchanges, "labels": self.labels, "daily": self.daily,
                "items_before": self.items_before, "items_after": self.items_after, "changed": self.changed,
                "examples": self.examples, "prompt_blocked": self.prompt_blocked, "limits": self.limits,
                "seconds": round(self.seconds, 3)}

    def summary(self) -> dict[str, Any]:
        """The headline figures, for the audit events."""
        return {"days": self.days, "exchanges": self.exchanges, "items_before": self.items_before,
                "items_after": self.items_after, "changed": self.changed,
                "items_per_day_before": round(self.items_before / self.days, 2),
                "items_per_day_after": round(self.items_after / self.days, 2)}


def check_days(days: object) -> int:
    """The backtest window in days: a whole number from MIN_DAYS to MAX_DAYS, else InvalidInput naming it."""
    from console.services.errors import InvalidInput

    if isinstance(days, bool) or not isinstance(days, int | float) or int(days) != days:
        raise InvalidInput(f"Days to backtest must be a whole number from {MIN_DAYS} to {MAX_DAYS}, got {days!r}.")
    if not MIN_DAYS <= int(days) <= MAX_DAYS:
        raise InvalidInput(f"Days to backtest must be from {MIN_DAYS} to {MAX_DAYS} days, got {int(days)}.")
    return int(days)


def limits_for(proposed: Policy) -> list[str]:
    """What this replay cannot show for ``proposed``, in words for the page."""
    out = []
    low = sorted({f"{d}.{label}" for d in DIRECTIONS for label, rule in proposed.rules[d].items()
                  if label not in FULLY_SCORED_LABELS and rule.action != "allow"
                  and rule.threshold < DEFAULT_SCORE_THRESHOLD})
    if low:
        out.append(f"Rules with a threshold below {DEFAULT_SCORE_THRESHOLD:g} for personal-data labels ("
                   f"{', '.join(low)}): the PII scanner stores only findings scoring at least "
                   f"{DEFAULT_SCORE_THRESHOLD:g}, and stored text is redacted, so findings under that floor cannot "
                   "be replayed; the backtest undercounts what these rules would catch.")
    return out


def _actions(judge: _Judge, findings: Iterable[tuple[str, str, str, float]]) -> tuple[dict[str, str],
                                                                                   dict[tuple[str, str], str]]:
    """Per direction the enforced action, and per (direction, label) the strongest triggered action."""
    per_dir: dict[str, str] = {}
    per_label: dict[tuple[str, str], str] = {}
    for direction, detector, label, score in findings:
        action = judge.action(direction, detector, label, score)
        if action == "allow":
            continue
        if _PRECEDENCE[action] > _PRECEDENCE[per_dir.get(direction, "allow")]:
            per_dir[direction] = action
        key = (direction, label)
        if _PRECEDENCE[action] > _PRECEDENCE[per_label.get(key, "allow")]:
            per_label[key] = action
    return per_dir, per_label


def run(session: Session, current: Policy, proposed: Policy, *, days: int, now: datetime,
        chunk: int = CHUNK) -> Backtest:
    """Replay the last ``days`` days (up to ``now``) through ``current`` and ``proposed``; see the module docs."""
    started = time.perf_counter()
    days = check_days(days)
    since, until = now - timedelta(days=days), now
    before_j, after_j = _Judge(current), _Judge(proposed)
    # (direction, label) -> [flag_before, flag_after, block_before, block_after]
    labels: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    daily: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # day -> exchanges, items before, items after
    examples: deque[dict[str, Any]] = deque(maxlen=MAX_EXAMPLES)
    total = items_before = items_after = changed = prompt_blocked = 0
    for rows in changes_q.iter_exchange_chunks(session, since=since, until=until, chunk=chunk):
        found: dict[int, list[tuple[str, str, str, float]]] = defaultdict(list)
        for exchange_id, direction, detector, label, score in changes_q.findings_for_range(
                session, rows[0].id, rows[-1].id):
            if detector.startswith(SYSTEM_PROMPT_PREFIX):  # judged as a prompt by the detector itself
                detector = detector[len(SYSTEM_PROMPT_PREFIX):]
            found[exchange_id].append((direction, detector, label, score))
        for row in rows:
            total += 1
            day = daily[row.created_at.date().isoformat()]
            day[0] += 1
            if row.prompt_action == "block":
                prompt_blocked += 1
            fs = found.get(row.id)
            if not fs:
                continue
            b_dir, b_lab = _actions(before_j, fs)
            a_dir, a_lab = _actions(after_j, fs)
            for key in b_lab.keys() | a_lab.keys():
                b, a = b_lab.get(key), a_lab.get(key)
                counts = labels[key]
                counts[0] += b == "flag"
                counts[1] += a == "flag"
                counts[2] += b == "block"
                counts[3] += a == "block"
            review_b = any(v in _REVIEW for v in b_dir.values())
            review_a = any(v in _REVIEW for v in a_dir.values())
            items_before += review_b
            items_after += review_a
            day[1] += review_b
            day[2] += review_a
            verdict_b = {d: b_dir.get(d, "allow") for d in DIRECTIONS}
            verdict_a = {d: a_dir.get(d, "allow") for d in DIRECTIONS}
            if verdict_b != verdict_a:
                changed += 1
                moved = sorted(f"{d}.{lab}" for (d, lab) in b_lab.keys() | a_lab.keys()
                               if b_lab.get((d, lab)) != a_lab.get((d, lab)))
                examples.append({"id": row.id, "created_at": row.created_at.isoformat(), "before": verdict_b,
                                 "after": verdict_a, "labels": moved})
    label_rows = [{"direction": d, "label": lab, "flag_before": c[0], "flag_after": c[1], "block_before": c[2],
                   "block_after": c[3]}
                  for (d, lab), c in sorted(labels.items()) if any(c) and lab != DEFAULT_RULE]
    daily_rows = [{"day": k, "exchanges": v[0], "items_before": v[1], "items_after": v[2]}
                  for k, v in sorted(daily.items())]
    limits = limits_for(proposed)
    if prompt_blocked:
        limits.append(f"{prompt_blocked} exchange(s) in the window were blocked at the prompt when stored: they "
                      "have no answer, so output rules have nothing to judge for them.")
    return Backtest(days, since, until, total, label_rows, daily_rows, items_before, items_after, changed,
                    list(reversed(examples)), prompt_blocked, limits, time.perf_counter() - started)
