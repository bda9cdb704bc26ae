"""Quotas and rate limits: requests per minute and tokens per day, per role and per user (issue 25, part 4).

- **Limits.** Every role has a default for each kind (:data:`SHIPPED_DEFAULTS` until an admin sets one on the Users
  page); a user may have an override of either kind, higher or lower, or an explicit "no limit". Without an
  override a user gets the most generous default among their roles ("no limit" beats any number).
- **Enforcement** (:func:`enforce`, called by the chat service before a turn is scanned, stored or sent) is in the
  database (db/quotas.py), so console replicas on one database enforce one limit. Requests per minute: a fixed
  window (the wall-clock minute, UTC), counted atomically; at a minute's boundary up to twice the limit can pass
  within a few seconds. Tokens per day (UTC day): the prompt and answer tokens of the user's finished chat turns,
  checked before the next turn, so a turn in flight can take a user past the limit by one answer.
- **Refusals** raise :class:`QuotaExceeded` (which limit, its value, the usage, when it resets: UTC wall time and
  "in N s") and are audited as ``quota.exceeded`` at most once per user, limit and window. Changes are audited
  as ``quota.changed`` with the old and new values.
- **Exempt**: load tests (synthetic turns started by someone allowed ``loadtest.run``) neither count nor are
  refused; side-by-side comparisons (``models.evaluate``, admins and reviewers evaluating versions) are not chat
  traffic and are not counted either.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.exc import OperationalError

from console.services.access import ALL_ROLES, Principal, allowed, requires
from console.services.context import AppContext
from console.services.errors import InvalidInput, NotFound, StorageUnavailable, is_locked, storage_problem
from db import audit as audit_q
from db import quotas as quotas_q
from db import users as users_q
from db.tables import QUOTA_KINDS

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from db.tables import User

logger = logging.getLogger(__name__)

REQUESTS_PER_MINUTE = "requests_per_minute"
TOKENS_PER_DAY = "tokens_per_day"
KIND_LABELS = {REQUESTS_PER_MINUTE: "requests per minute", TOKENS_PER_DAY: "tokens per day"}
# Shipped defaults: no limit. An upgrade must not start refusing anyone's chats unannounced (scripts and
# integrations send faster than people type), and what fits depends on the model, the hardware and the team; the
# Users page shows every role at "no limit (shipped)" until an admin sets its defaults.
SHIPPED_DEFAULTS: dict[str, int | None] = {REQUESTS_PER_MINUTE: None, TOKENS_PER_DAY: None}
# Larger values are refused as typing mistakes (and stay far below the columns' range).
MAXIMUMS = {REQUESTS_PER_MINUTE: 100_000, TOKENS_PER_DAY: 10_000_000_000}
LOCKED_RETRY_WAIT_S = 0.5  # seconds before the one retry of a locked quota check
NO_LIMIT_WORDS = ("no limit", "none", "unlimited")
_WHOLE = re.compile(r"-?[0-9]+")


class QuotaExceeded(InvalidInput):
    """A chat turn refused for a quota; the message names the limit, its value, the usage and the reset. An
    :class:`InvalidInput`, like the export quota's refusal: the chat page puts the typed message back in the box."""

    def __init__(self, message: str, *, kind: str, limit: int, used: int, resets_at: datetime) -> None:
        super().__init__(message)
        self.kind, self.limit, self.used, self.resets_at = kind, limit, used, resets_at


@dataclass(frozen=True)
class EffectiveLimit:
    kind: str
    value: int | None  # None: no limit
    source: str  # "override", "role operator", "role operator (shipped default)", "no role"

    @property
    def text(self) -> str:
        if self.value is None:
            return "no limit"
        label = KIND_LABELS[self.kind]
        return f"1 {label.replace('s per', ' per', 1)}" if self.value == 1 else f"{self.value:,} {label}"


@dataclass(frozen=True)
class UserQuota:
    user_id: int
    username: str
    roles: tuple[str, ...]
    requests_per_minute: EffectiveLimit
    tokens_per_day: EffectiveLimit
    requests_this_minute: int
    tokens_today: int


@dataclass(frozen=True)
class RoleQuota:
    role: str
    requests_per_minute: int | None
    tokens_per_day: int | None
    shipped: tuple[str, ...]  # the kinds still at the shipped default


def minute_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(second=0, microsecond=0)


def day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _role_value(set_defaults: dict[tuple[str, str], int | None], role: str, kind: str) -> tuple[int | None, bool]:
    if (role, kind) in set_defaults:
        return set_defaults[(role, kind)], False
    return SHIPPED_DEFAULTS[kind], True


def effective(roles: frozenset[str] | tuple[str, ...], kind: str, override: tuple[bool, int | None],
              set_defaults: dict[tuple[str, str], int | None]) -> EffectiveLimit:
    """The limit of ``kind`` for a user: their override (``(True, value)``), else the most generous of their roles'
    defaults (no limit beats any number; ties name the first role alphabetically)."""
    if override[0]:
        return EffectiveLimit(kind, override[1], "override")
    best: EffectiveLimit | None = None
    for role in sorted(roles):
        value, shipped = _role_value(set_defaults, role, kind)
        candidate = EffectiveLimit(kind, value, f"role {role}" + (" (shipped default)" if shipped else ""))
        if best is None or (best.value is not None and (value is None or value > best.value)):
            best = candidate
    return best or EffectiveLimit(kind, None, "no role")


def _limits_of(s: Session, user: User) -> dict[str, EffectiveLimit]:
    overrides = quotas_q.user_overrides(s, [user.id])
    defaults = quotas_q.role_limits(s)
    return {kind: effective(user.roles, kind, ((user.id, kind) in overrides, overrides.get((user.id, kind))),
                            defaults) for kind in QUOTA_KINDS}


def _in(seconds: float) -> str:
    seconds = max(1, round(seconds))
    if seconds < 120:
        return f"in {seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"in {seconds:,} s ({hours} h {minutes} min)" if hours else f"in {seconds:,} s ({minutes} min)"


def _source_words(limit: EffectiveLimit) -> str:
    if limit.source == "override":
        return "set for your account"
    return f"the default of your {limit.source.split(' (')[0]}"


def _refusal(limit: EffectiveLimit, used: int, now: datetime) -> QuotaExceeded:
    assert limit.value is not None
    if limit.kind == REQUESTS_PER_MINUTE:
        resets = minute_start(now) + timedelta(minutes=1)
        message = (f"Rate limit reached: {limit.text} ({_source_words(limit)}); you sent "
                   f"{used:,} this minute. Your message was not sent to the model. You can send again at "
                   f"{resets:%H:%M:%S} UTC ({_in((resets - now).total_seconds())}).")
    else:
        resets = day_start(now) + timedelta(days=1)
        message = (f"Daily token quota reached: {limit.text} ({_source_words(limit)}); your chats "
                   f"used {used:,} tokens (prompts and answers) since 00:00 UTC today. Your message was not sent "
                   f"to the model. The quota resets at {resets:%Y-%m-%d %H:%M} UTC "
                   f"({_in((resets - now).total_seconds())}).")
    return QuotaExceeded(message, kind=limit.kind, limit=limit.value, used=used, resets_at=resets)


def enforce(ctx: AppContext, by: Principal, *, synthetic: bool = False) -> None:
    """Count a chat turn of ``by`` against their limits, or raise :class:`QuotaExceeded` (nothing counted, nothing
    sent). Not a guarded service of its own: the chat service calls it inside ``start_turn`` (``chat.use``) and the
    load test's workers (``loadtest.run``). Load-test turns (``synthetic``, and ``by`` may run load tests) are
    exempt: neither counted nor refused."""
    if synthetic and allowed(by.roles, "loadtest.run"):
        return
    for attempt in (1, 2):  # a locked database gets one more try after a short wait, like the chat's own writes
        try:
            _enforce(ctx, by)
            return
        except OperationalError as exc:  # locked for too long, or the disk is full: fail closed, nothing sent
            if attempt == 1 and is_locked(exc):
                time.sleep(LOCKED_RETRY_WAIT_S)
                continue
            logger.error("quota check failed: user=%s %s", by.username, exc.orig if exc.orig is not None else exc)
            raise StorageUnavailable(f"Could not check your quota: {storage_problem(exc)}. Your message was not "
                                     "sent to the model; try again in a moment.") from exc


def _enforce(ctx: AppContext, actor: Principal) -> None:
    now = ctx.now()
    refusal: QuotaExceeded | None = None
    with ctx.db.session() as s:
        found = quotas_q.limits_for(s, actor.user_id)
        if found is None:
            raise NotFound("Your account no longer exists.")
        roles, defaults, overrides = found
        limits = {kind: effective(roles, kind, (kind in overrides, overrides.get(kind)), defaults)
                  for kind in QUOTA_KINDS}
        tokens = limits[TOKENS_PER_DAY]
        if tokens.value is not None:
            used = quotas_q.tokens_since(s, actor.user_id, day_start(now))
            if used >= tokens.value:
                refusal = _refusal(tokens, used, now)
        rpm = limits[REQUESTS_PER_MINUTE]
        if refusal is None and not quotas_q.take_request(s, actor.user_id, minute_start(now), rpm.value):
            assert rpm.value is not None
            used = max(quotas_q.requests_in_window(s, actor.user_id, minute_start(now)), rpm.value)
            refusal = _refusal(rpm, used, now)
        if refusal is not None:
            window = minute_start(now) if refusal.kind == REQUESTS_PER_MINUTE else day_start(now)
            if quotas_q.first_refusal(s, actor.user_id, refusal.kind, window):
                audit_q.append_event(
                    s, actor=actor.username, actor_id=actor.user_id, action="quota.exceeded", object_type="user",
                    object_id=str(actor.user_id),
                    details={"kind": refusal.kind, "limit": refusal.limit, "used": refusal.used,
                             "source": limits[refusal.kind].source,
                             "window_start": window.isoformat(), "resets_at": refusal.resets_at.isoformat(),
                             "note": "the first refusal of this limit in this window; later ones are not recorded"})
    if refusal is not None:
        logger.info("quota exceeded: user=%s kind=%s limit=%s used=%s", actor.username, refusal.kind, refusal.limit,
                    refusal.used)
        raise refusal


# --- administration (the Users page) ----------------------------------------------------------------------------


def parse_limit(value: object, kind: str) -> int | None:
    """A limit as typed: a whole number from 0 to the kind's maximum, or "no limit" (also None). Raises
    :class:`InvalidInput` naming the field and what is allowed."""
    if kind not in QUOTA_KINDS:
        raise InvalidInput(f"Unknown limit {str(kind)[:40]!r}; the limits are: {', '.join(QUOTA_KINDS)}.")
    label, top = KIND_LABELS[kind], MAXIMUMS[kind]
    allowed_text = f"a whole number from 0 to {top:,}, or 'no limit'"
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().replace(",", "").replace("_", "")
        if text.casefold() in NO_LIMIT_WORDS:
            return None
        if len(text) > 20 or not _WHOLE.fullmatch(text):
            raise InvalidInput(f"{label.capitalize()}: {value[:40]!r} is not {allowed_text}.")
        number = int(text)
    elif isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            number = int(value)
        else:
            raise InvalidInput(f"{label.capitalize()}: {value!r} is not {allowed_text}.")
    else:
        number = value
    if number < 0:
        raise InvalidInput(f"{label.capitalize()} cannot be negative ({number:,}); give {allowed_text} "
                           "(0 refuses every chat).")
    if number > top:
        raise InvalidInput(f"{label.capitalize()}: {number:,} is more than the largest allowed, {top:,}; give "
                           f"{allowed_text}.")
    return number


def _as_detail(present: bool, value: int | None, absent: str) -> int | str:
    if not present:
        return absent
    return "no limit" if value is None else value


def _check_role(role: str) -> str:
    if role not in ALL_ROLES:
        raise InvalidInput(f"Unknown role {str(role)[:40]!r}. Roles are: {', '.join(ALL_ROLES)}.")
    return role


@requires("users.manage")
def set_role_limit(ctx: AppContext, actor: Principal, role: str, kind: str, value: object) -> RoleQuota:
    """Set the default ``kind`` limit of ``role`` (``value``: see :func:`parse_limit`); audited as
    ``quota.changed`` with the old and new values."""
    role = _check_role(role)
    limit = parse_limit(value, kind)
    with ctx.db.session() as s:
        existed, old = quotas_q.set_limit(s, role=role, kind=kind, value=limit, by_id=actor.user_id, now=ctx.now())
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="quota.changed",
                             object_type="role", object_id=role,
                             details={"scope": "role", "role": role, "kind": kind,
                                      "old": _as_detail(existed, old, "shipped default"),
                                      "new": _as_detail(True, limit, "")})
    return _role_quota(ctx, role)


def _role_quota(ctx: AppContext, role: str) -> RoleQuota:
    return next(r for r in _role_defaults(ctx) if r.role == role)


@requires("users.manage")
def reset_role_limit(ctx: AppContext, actor: Principal, role: str, kind: str) -> RoleQuota:
    """Put a role's ``kind`` limit back to the shipped default; audited (nothing when it is already there)."""
    role = _check_role(role)
    parse_limit(None, kind)
    with ctx.db.session() as s:
        existed, old = quotas_q.clear_limit(s, role=role, kind=kind)
        if existed:
            shipped = SHIPPED_DEFAULTS[kind]
            audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="quota.changed",
                                 object_type="role", object_id=role,
                                 details={"scope": "role", "role": role, "kind": kind,
                                          "old": _as_detail(True, old, ""),
                                          "new": f"shipped default ({'no limit' if shipped is None else shipped})"})
    return _role_quota(ctx, role)


def _user(s: Session, user_id: object) -> User:
    if isinstance(user_id, bool) or not isinstance(user_id, int):
        raise InvalidInput(f"Choose a user (got {str(user_id)[:40]!r}).")
    user = users_q.get_user(s, user_id)
    if user is None:
        raise NotFound(f"No user with id {user_id}.")
    return user


@requires("users.manage")
def set_user_override(ctx: AppContext, actor: Principal, user_id: int, kind: str, value: object) -> UserQuota:
    """Give one user their own ``kind`` limit (higher or lower than their roles', or "no limit"); audited as
    ``quota.changed`` with the old and new values."""
    limit = parse_limit(value, kind)
    with ctx.db.session() as s:
        user = _user(s, user_id)
        existed, old = quotas_q.set_limit(s, user_id=user.id, kind=kind, value=limit, by_id=actor.user_id,
                                          now=ctx.now())
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="quota.changed",
                             object_type="user", object_id=str(user.id),
                             details={"scope": "user", "username": user.username, "kind": kind,
                                      "old": _as_detail(existed, old, "role default"),
                                      "new": _as_detail(True, limit, "")})
        return _quota_of(ctx, s, user)


@requires("users.manage")
def clear_user_override(ctx: AppContext, actor: Principal, user_id: int, kind: str) -> UserQuota:
    """Remove a user's ``kind`` override (their roles' default applies again); audited when there was one."""
    parse_limit(None, kind)
    with ctx.db.session() as s:
        user = _user(s, user_id)
        existed, old = quotas_q.clear_limit(s, user_id=user.id, kind=kind)
        if existed:
            audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="quota.changed",
                                 object_type="user", object_id=str(user.id),
                                 details={"scope": "user", "username": user.username, "kind": kind,
                                          "old": _as_detail(True, old, ""), "new": "role default"})
        return _quota_of(ctx, s, user)


def _quota_of(ctx: AppContext, s: Session, user: User, *, requests: int | None = None,
              tokens: int | None = None) -> UserQuota:
    now = ctx.now()
    limits = _limits_of(s, user)
    if requests is None:
        requests = quotas_q.requests_in_window(s, user.id, minute_start(now))
    if tokens is None:
        tokens = quotas_q.tokens_since(s, user.id, day_start(now))
    return UserQuota(user.id, user.username, tuple(sorted(user.roles)), limits[REQUESTS_PER_MINUTE],
                     limits[TOKENS_PER_DAY], requests, tokens)


@requires("chat.use")
def my_quota(ctx: AppContext, actor: Principal) -> UserQuota:
    """The signed-in user's own limits and usage now (the chat page shows them before a refusal, not only in it)."""
    with ctx.db.session(readonly=True) as s:
        user = _user(s, actor.user_id)
        return _quota_of(ctx, s, user)


def usage_text(quota: UserQuota) -> str | None:
    """"Limits: 5 requests per minute (2 sent this minute) · ..." for the limits that apply; None when none does."""
    parts = []
    if quota.requests_per_minute.value is not None:
        parts.append(f"{quota.requests_per_minute.text} ({quota.requests_this_minute:,} sent this minute)")
    if quota.tokens_per_day.value is not None:
        parts.append(f"{quota.tokens_per_day.text} ({quota.tokens_today:,} used since 00:00 UTC)")
    return "Your limits: " + " · ".join(parts) if parts else None


@requires("users.manage")
def quota_overview(ctx: AppContext, actor: Principal) -> list[UserQuota]:
    """Every user's effective limits (and where they come from) and usage now: requests this minute, tokens today."""
    now = ctx.now()
    with ctx.db.session(readonly=True) as s:
        requests = quotas_q.requests_now(s, minute_start(now))
        tokens = quotas_q.tokens_by_user_since(s, day_start(now))
        return [_quota_of(ctx, s, u, requests=requests.get(u.id, 0), tokens=tokens.get(u.id, 0))
                for u in users_q.list_users(s)]


@requires("users.manage")
def role_defaults(ctx: AppContext, actor: Principal) -> list[RoleQuota]:
    """Each role's default limits (set by an admin, or shipped)."""
    return _role_defaults(ctx)


def _role_defaults(ctx: AppContext) -> list[RoleQuota]:
    with ctx.db.session(readonly=True) as s:
        defaults = quotas_q.role_limits(s)
    rows = []
    for role in ALL_ROLES:
        values = {kind: _role_value(defaults, role, kind) for kind in QUOTA_KINDS}
        rows.append(RoleQuota(role, values[REQUESTS_PER_MINUTE][0], values[TOKENS_PER_DAY][0],
                              tuple(k for k in QUOTA_KINDS if values[k][1])))
    return rows
