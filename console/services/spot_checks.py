"""Spot checks: unflagged exchanges drawn blind into the review queue, and the miss rate they measure.

Rules (admins set them; reviewers see them on the Review quality page): a share of a day's unflagged exchanges,
optionally only one model version's and/or only for one label family, with a daily cap. No rule, no spot checks:
the default is off, because every spot check shows a reviewer a conversation nobody flagged, which a privacy officer
should decide to allow (and a share nobody sized could swamp the queue). The page suggests 1 % capped at 20 a day.

A leased periodic job (:class:`SpotCheckTask`, once per round across replicas) draws each rule's sample: an
exchange is drawn when a hash of (the day's secret seed, the rule, the exchange id) falls below the share, the
lowest hashes first up to the cap. The draw is reproducible (anyone with the database can recompute it) but not by
a reviewer (the seed's salt is never shown). Items open with reason ``spot_check``, a severity drawn from the
policy's recent flagged items (so the queue's order does not single them out) and that severity's deadline;
reviewers see flagged items and spot checks alike (``console.services.review`` shows the reason as "check" for
both and hides the policy's actions). Audited ``spot_check.sampled`` with the counts.

By "label family" we mean a scanner's area and the reviewers' categories that belong to it (:data:`FAMILIES`):
for ``pii`` the Presidio scanner and the category "PII leak", for ``toxicity`` the toxicity scanners and the
harassment/hate/sexual/violence/self-harm categories, for ``injection`` the injection scanner and the category
"Prompt injection or jailbreak". A rule for a family draws only exchanges on which that family's scanners found
nothing the policy acted on (no flag, block, redaction or monitor-only hit). The family's miss rate is, among
decided spot checks whose exchange that family's scanners found nothing on, the share a reviewer judged a violation
of one of the family's categories.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import secrets
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import exists, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from console.services import review_stats
from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import InvalidInput, NotFound
from console.services.moderation import REVIEW_DEADLINE_HOURS
from console.services.periodic import PeriodicTask
from db import model_versions as versions_q
from db.audit import append_event
from db.review import quality as quality_q
from db.review import spot_checks as spot_q
from db.review.queue import triggered_findings
from db.tables import AppState, Exchange, ReviewItem
from db.types import utcnow

logger = logging.getLogger(__name__)

SYSTEM_ACTOR = "system"
RULES_KEY = "spot_check.rules"
SALT_KEY = "spot_check.salt"
RULE_CHANGED = "spot_check.rule_changed"
SAMPLED = "spot_check.sampled"
JOB = "spot_checks"
MAX_RULES = 50
MAX_CAP = 10_000
SUGGESTED = "1 % of the day's unflagged exchanges, at most 20 a day"
# Severity when the policy opened no item recently to match: that of an ordinary flag.
DEFAULT_SEVERITY = 1
SEVERITY_WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    detectors: frozenset[str]
    categories: frozenset[str]


FAMILIES: dict[str, Family] = {
    "pii": Family("pii", "Personal data (PII)", frozenset({"presidio"}), frozenset({"pii_leak"})),
    "toxicity": Family("toxicity", "Toxicity", frozenset({"detoxify", "tox-block", "profanity-fallback"}),
                       frozenset({"harassment", "hate_or_identity_attack", "sexual", "violence_or_threat",
                                  "self_harm"})),
    "injection": Family("injection", "Prompt injection and jailbreaks", frozenset({"injection"}),
                        frozenset({"prompt_injection"})),
}


@dataclass(frozen=True)
class Rule:
    """Draw ``share`` (0-1) of a day's unflagged exchanges, at most ``daily_cap``; only ``model_version``'s when
    set, and only exchanges the ``family``'s scanners found nothing on when set."""

    share: float
    daily_cap: int
    model_version: str | None = None
    family: str | None = None

    @property
    def key(self) -> str:
        return f"version={self.model_version or '*'};family={self.family or '*'}"

    @property
    def scope(self) -> str:
        version = f"model version {self.model_version}" if self.model_version else "every model version"
        family = f", {FAMILIES[self.family].title} only" if self.family else ""
        return version + family


# --- rules ----------------------------------------------------------------------------------------------------


def _load_rules(s: Session) -> list[Rule]:
    row = s.get(AppState, RULES_KEY)
    out = []
    for r in (row.value if row is not None and isinstance(row.value, list) else []):
        try:
            out.append(Rule(float(r["share"]), int(r["daily_cap"]), r.get("model_version"), r.get("family")))
        except (KeyError, TypeError, ValueError):  # a hand-edited row: skip what cannot be read, keep the rest
            logger.warning("spot checks: unreadable rule ignored: %r", r)
    return out


def _store_rules(s: Session, rules: Sequence[Rule]) -> None:
    row = s.get(AppState, RULES_KEY, with_for_update=True)
    value = [asdict(r) for r in rules]
    if row is None:
        s.add(AppState(key=RULES_KEY, value=value, updated_at=utcnow()))
    else:
        row.value, row.updated_at = value, utcnow()
    s.flush()


@requires("review.spot_checks")
def list_rules(ctx: AppContext, actor: Principal) -> tuple[Rule, ...]:
    """The sampling rules in force (reviewers and admins see them)."""
    with ctx.db.session(readonly=True) as s:
        return tuple(_load_rules(s))


def _known_version(s: Session, name: str) -> bool:
    if versions_q.get_model_version_by_name(s, name) is not None:
        return True
    return bool(s.scalar(select(exists().where(Exchange.model_version == name))))


def check_rule(share_percent: object, daily_cap: object, model_version: object = None,
               family: object = None) -> Rule:
    """A rule from the form's values; InvalidInput naming the field and what is allowed."""
    if isinstance(share_percent, bool) or not isinstance(share_percent, int | float) \
            or not math.isfinite(share_percent) or not 0 < share_percent <= 100:
        raise InvalidInput(f"Share: a percentage above 0 and at most 100, got {share_percent!r}.")
    if isinstance(daily_cap, bool) or not isinstance(daily_cap, int) or not 1 <= daily_cap <= MAX_CAP:
        raise InvalidInput(f"Daily cap: a whole number of items from 1 to {MAX_CAP:,}, got {daily_cap!r}.")
    if model_version is not None and (not isinstance(model_version, str) or not model_version.strip()):
        raise InvalidInput("Model version: choose a version, or none for every version.")
    if family is not None and family not in FAMILIES:
        raise InvalidInput(f"Label family: one of {', '.join(FAMILIES)}, or none for every label; got {family!r}.")
    return Rule(round(float(share_percent) / 100, 6), daily_cap,
                model_version.strip() if isinstance(model_version, str) else None,
                family if isinstance(family, str) else None)


def _audit_rules(s: Session, actor: Principal, key: str, before: Rule | None, after: Rule | None) -> None:
    append_event(s, actor=actor.username, actor_id=actor.user_id, action=RULE_CHANGED, object_type="spot_check_rule",
                 object_id=key, details={"before": asdict(before) if before else None,
                                         "after": asdict(after) if after else None})


@requires("review.spot_check_rules")
def set_rule(ctx: AppContext, actor: Principal, *, share_percent: object, daily_cap: object,
             model_version: object = None, family: object = None) -> Rule:
    """Add a rule, or replace the one with the same scope (model version and family); audited
    ``spot_check.rule_changed`` with the rule before and after."""
    rule = check_rule(share_percent, daily_cap, model_version, family)
    with ctx.db.session() as s:
        if rule.model_version is not None and not _known_version(s, rule.model_version):
            raise InvalidInput(f"Model version: {rule.model_version!r} is not a registered version and has "
                               "answered nothing.")
        rules = _load_rules(s)
        before = next((r for r in rules if r.key == rule.key), None)
        if before is None and len(rules) >= MAX_RULES:
            raise InvalidInput(f"At most {MAX_RULES} rules: remove one first.")
        rules = [rule if r.key == rule.key else r for r in rules] + ([] if before else [rule])
        _store_rules(s, rules)
        _audit_rules(s, actor, rule.key, before, rule)
    logger.info("spot check rule set by %s: %s", actor.username, rule)
    return rule


@requires("review.spot_check_rules")
def remove_rule(ctx: AppContext, actor: Principal, key: str) -> Rule:
    """Remove the rule with this scope key and return it; audited. NotFound when there is none."""
    with ctx.db.session() as s:
        rules = _load_rules(s)
        before = next((r for r in rules if r.key == key), None)
        if before is None:
            raise NotFound(f"No spot-check rule for {key!r}.")
        _store_rules(s, [r for r in rules if r.key != key])
        _audit_rules(s, actor, key, before, None)
    return before


# --- the draw -------------------------------------------------------------------------------------------------


def _salt(s: Session) -> str:
    """The installation's secret part of the daily seed, created on the first draw (never shown, never logged)."""
    row = s.get(AppState, SALT_KEY)
    if row is None:
        # Two replicas drawing their first round at once: one salt wins, the other reads it.
        dialect = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
        s.execute(dialect.insert(AppState).values(key=SALT_KEY, value=secrets.token_hex(16), updated_at=utcnow())
                  .on_conflict_do_nothing())
        row = s.get(AppState, SALT_KEY, populate_existing=True)
        assert row is not None
    return str(row.value)


def day_seed(salt: str, day: date) -> str:
    """The day's seed: anyone with the salt recomputes a day's draw; without it nobody predicts one."""
    return hashlib.sha256(f"spot-check:{salt}:{day.isoformat()}".encode()).hexdigest()


def draw_value(seed: str, rule_key: str, exchange_id: int) -> float:
    """The exchange's uniform number in [0, 1) for this day and rule: it is drawn when below the rule's share."""
    digest = hashlib.sha256(f"{seed}:{rule_key}:{exchange_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class DrawResult:
    """What one round drew: per rule key, (candidates seen, drawn now, drawn that day in all)."""

    day: str
    per_rule: dict[str, tuple[int, int, int]]

    @property
    def drawn(self) -> int:
        return sum(d for _, d, _ in self.per_rule.values())


def draw(ctx: AppContext, *, day: date | None = None, now: datetime | None = None) -> DrawResult:
    """Draw every rule's spot checks among ``day``'s exchanges created before ``now`` (default: today, now).

    The system job: no person acts, so no role check. Rules with a model version or a family draw first (they
    are narrower), then the general ones; an exchange one rule drew is not another's candidate.
    """
    now = now or ctx.now()
    day = day or now.astimezone(UTC).date()
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = min(start + timedelta(days=1), now)
    per_rule: dict[str, tuple[int, int, int]] = {}
    with ctx.db.session() as s:
        # Two drawers at once (a lease that expired under a slow round) queue here, so the second counts what the
        # first drew against the caps; the unique draw row already keeps them from drawing one exchange twice.
        s.get(AppState, RULES_KEY, with_for_update=True)
        rules = sorted(_load_rules(s), key=lambda r: (r.model_version is None, r.family is None, r.key))
        if not rules or end <= start:
            return DrawResult(day.isoformat(), per_rule)
        seed = day_seed(_salt(s), day)
        severities = spot_q.recent_severities(s, since=now - SEVERITY_WINDOW) or [DEFAULT_SEVERITY]
        for rule in rules:
            family = FAMILIES.get(rule.family) if rule.family else None
            pool = spot_q.candidates(s, start=start, end=end, model_version=rule.model_version,
                                     detectors=family.detectors if family else None)
            already = spot_q.drawn_count(s, day=day.isoformat(), rule=rule.key)
            picked = sorted((v, c.exchange_id) for c in pool
                            if (v := draw_value(seed, rule.key, c.exchange_id)) < rule.share)
            drawn = 0
            for _, exchange_id in picked:
                if already + drawn >= rule.daily_cap:
                    break
                severity = random.Random(f"{seed}:{rule.key}:{exchange_id}:severity").choice(severities)
                item = spot_q.open_spot_check(
                    s, exchange_id=exchange_id, rule=rule.key, day=day.isoformat(), severity=severity,
                    due_at=now + timedelta(hours=REVIEW_DEADLINE_HOURS.get(severity, 168)), actor=SYSTEM_ACTOR,
                    now=now)
                drawn += item is not None
            per_rule[rule.key] = (len(pool), drawn, already + drawn)
        result = DrawResult(day.isoformat(), per_rule)
        if result.drawn:
            append_event(s, actor=SYSTEM_ACTOR, action=SAMPLED, object_type="spot_checks", object_id=day.isoformat(),
                         details={"day": day.isoformat(), "drawn": result.drawn,
                                  "rules": {k: {"candidates": c, "drawn": d, "day_total": t}
                                            for k, (c, d, t) in per_rule.items()}})
    if result.drawn:
        logger.info("spot checks: drew %s exchanges for %s", result.drawn, day)
    return result


class SpotCheckTask(PeriodicTask):
    """Draws the spot checks every ``spot_check_seconds``, in one console replica per round (the ``spot_checks``
    lease). A round shortly after midnight also finishes the day before (exchanges of its last minutes)."""

    def __init__(self, ctx: AppContext, *, interval_s: float | None = None) -> None:
        super().__init__(ctx.settings.spot_check_seconds if interval_s is None else interval_s,
                         name="spot-checks", job=JOB, db=ctx.db)
        self.ctx = ctx
        self._lock = threading.Lock()

    def run_once(self) -> list[DrawResult]:
        with self._lock:
            now = self.ctx.now()
            today = now.astimezone(UTC).date()
            results = []
            if now - datetime(today.year, today.month, today.day, tzinfo=UTC) < timedelta(
                    seconds=max(2 * self.interval_s, 3600)):
                results.append(draw(self.ctx, day=today - timedelta(days=1), now=now))
            results.append(draw(self.ctx, day=today, now=now))
            return results


# --- the miss rate --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilyQuality:
    """One label family: the miss rate from spot checks beside the precision of what the policy flagged."""

    family: Family
    miss: review_stats.MissRate
    flagged_confirmed: int
    flagged_decided: int

    @property
    def precision(self) -> float | None:
        return self.flagged_confirmed / self.flagged_decided if self.flagged_decided else None


@dataclass(frozen=True)
class SpotCheckReport:
    rules: tuple[Rule, ...]
    days: int
    decided: int  # spot checks decided (violation or no violation) in the period
    unflagged_per_day: float
    min_checks: int
    families: tuple[FamilyQuality, ...]
    other_violations: int  # spot checks judged a violation of a category outside every family (wrong answer, other)


def family_of_detector(detector: str) -> str | None:
    name = detector.removeprefix(spot_q.SYSTEM_PROMPT_PREFIX)
    return next((f.name for f in FAMILIES.values() if name in f.detectors), None)


def miss_rates(verdicts: Sequence[spot_q.Verdict], *, unflagged_per_day: float,
               min_checks: int) -> dict[str, review_stats.MissRate]:
    """Per family, among the decided spot checks whose exchange that family's scanners found nothing on, how many
    a reviewer judged a violation of one of the family's categories."""
    out = {}
    for family in FAMILIES.values():
        counted = [v for v in verdicts if not (v.acted_detectors & family.detectors)]
        missed = sum(1 for v in counted if v.decision == "violation" and v.category in family.categories)
        out[family.name] = review_stats.MissRate(family.name, len(counted), missed, unflagged_per_day,
                                                 len(counted) >= min_checks)
    return out


@requires("review.spot_checks")
def report(ctx: AppContext, actor: Principal, *, days: int = 30) -> SpotCheckReport:
    """The Review quality page's spot-check figures over the last ``days`` days."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 365:
        raise InvalidInput(f"Period: 1 to 365 days, got {days!r}.")
    now = ctx.now()
    since = now - timedelta(days=days)
    with ctx.db.session(readonly=True) as s:
        rules = tuple(_load_rules(s))
        verdicts = spot_q.verdicts(s, since=since)
        volume = spot_q.unflagged_count(s, start=since, end=now)
        flagged = quality_q.decided_findings(s, since=since)
        triggered = _triggered_items(s, [i for i, *_ in flagged])
    per_day = volume / days
    min_checks = ctx.settings.spot_check_min_decided
    rates = miss_rates(verdicts, unflagged_per_day=per_day, min_checks=min_checks)
    # Precision per family: of items the policy opened with a triggering finding of the family (one count per
    # item), the share a reviewer confirmed. decided_findings lists every finding; only triggering ones count.
    by_family: dict[str, dict[int, bool]] = {f: {} for f in FAMILIES}
    for item_id, _, detector, label, _, decision in flagged:
        fam = family_of_detector(detector)
        if fam is not None and (detector, label) in triggered.get(item_id, set()):
            by_family[fam][item_id] = decision == "violation"
    categories = {c for f in FAMILIES.values() for c in f.categories}
    other = sum(1 for v in verdicts if v.decision == "violation" and v.category not in categories)
    families = tuple(FamilyQuality(f, rates[name], sum(by_family[name].values()), len(by_family[name]))
                     for name, f in FAMILIES.items())
    return SpotCheckReport(rules, days, len(verdicts), per_day, min_checks, families, other)


def _triggered_items(s: Session, item_ids: Sequence[int]) -> dict[int, set[tuple[str, str]]]:
    """Per item, the (detector, label) of the findings that made the policy flag or block it (spot checks and
    feedback items have none)."""
    items: dict[int, int] = {}
    ids = sorted(set(item_ids))
    for start in range(0, len(ids), 500):
        items.update((i, e) for i, e in s.execute(
            select(ReviewItem.id, ReviewItem.exchange_id).where(ReviewItem.id.in_(ids[start:start + 500]))))
    found = triggered_findings(s, items.values())
    return {i: {(f.detector, f.label) for f in found.get(e, [])} for i, e in items.items()}


@requires("review.spot_check_rules")
def version_choices(ctx: AppContext, actor: Principal) -> list[str]:
    """Registered model versions, for the rule form's model version field."""
    with ctx.db.session(readonly=True) as s:
        return sorted(v.name for v in versions_q.list_model_versions(s))
