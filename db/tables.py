"""The ORM schema of the console's store (head revision; the migrations build the same tables).

Changing a table here means writing a new migration in ``db/migrations/versions``; a test compares the
migrated schema with these models.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    event,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, ORMExecuteState, Session, mapped_column, relationship

from db.types import UTCDateTime, utcnow

# Named constraints: Alembic's batch mode on SQLite and ALTERs on PostgreSQL need names to find them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}



class Role(enum.StrEnum):
    """The roles a user may hold; the one list (the console's permission table and the schema use it)."""

    OPERATOR = "operator"
    REVIEWER = "reviewer"
    ADMIN = "admin"
    ANALYST = "analyst"


ROLES: tuple[str, ...] = tuple(r.value for r in Role)
# "pending": the prompt is stored and the model is answering; "interrupted": the console stopped before the answer
# ended (found pending at start-up).
EXCHANGE_STATUSES = ("ok", "error", "aborted", "blocked", "pending", "interrupted")
REVIEW_STATUSES = ("none", "pending", "decided")
DIRECTIONS = ("prompt", "output")
# "spot_check": drawn blind from unflagged exchanges (spot checks); "feedback": a thumbs-down sent to review.
ITEM_REASONS = ("flagged", "blocked", "manual", "spot_check", "feedback")
ITEM_STATUSES = ("open", "claimed", "decided", "escalated")
# Items waiting for a reviewer: at most one per exchange (a partial unique index, 0014_one_open_review_item).
OPEN_ITEM_STATUSES = ("open", "claimed")
DECISIONS = ("violation", "false_positive", "escalate")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class User(Base):
    __tablename__ = "users"
    # One console account per identity at one provider (NULLs, for unbound accounts, never collide).
    __table_args__ = (Index("ix_users_sso_issuer_sso_subject", "sso_issuer", "sso_subject", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(150), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    # None for accounts that only sign in through SSO.
    password_hash: Mapped[str | None] = mapped_column(String(500))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    failed_login_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    locked_until: Mapped[datetime | None]
    last_login_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # The single sign-on identity (OIDC ``iss`` and ``sub``) bound at the first SSO sign-in; matched afterwards.
    sso_issuer: Mapped[str | None] = mapped_column(String(512))
    sso_subject: Mapped[str | None] = mapped_column(String(255))
    # Bumped to end every open session of the user (a password reset): sessions carry the value they started with.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))

    role_rows: Mapped[list[UserRole]] = relationship(
        back_populates="user", cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def roles(self) -> frozenset[str]:
        """The user's roles as a set of names."""
        return frozenset(r.role for r in self.role_rows)


class UserRole(Base):
    __tablename__ = "user_roles"
    __table_args__ = (CheckConstraint(_in("role", ROLES), name="role"),)

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(20), primary_key=True)

    user: Mapped[User] = relationship(back_populates="role_rows")


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(String(1000))
    revision: Mapped[str | None] = mapped_column(String(200))
    dtype: Mapped[str | None] = mapped_column(String(40))
    max_model_len: Mapped[int | None]
    engine_args: Mapped[dict[str, Any]] = mapped_column(default=dict)
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(40), default="registered")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    # 0004_model_lifecycle: what was registered, so a changed file under the same name is refused at load.
    quantization: Mapped[str | None] = mapped_column(String(40))
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    fingerprint_files: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=list)
    retired_at: Mapped[datetime | None]
    # 0008_lora_adapters: a LoRA adapter version names the version it is served on.
    base_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    # 0019_server_backends: where the engine runs (engine.types.BACKENDS); for "server", its base URLs, the model
    # name they serve and what they reported at registration (model, root, max_model_len).
    backend: Mapped[str] = mapped_column(String(20), default="in-process", server_default="in-process")
    server_urls: Mapped[list[str] | None] = mapped_column(JSON)
    server_model: Mapped[str | None] = mapped_column(String(200))
    server_info: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    title: Mapped[str] = mapped_column(String(300), default="")
    system_prompt: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Exchange(Base):
    __tablename__ = "exchanges"
    __table_args__ = (CheckConstraint(_in("status", EXCHANGE_STATUSES), name="status"),
                      # 0019_server_backends: the Latency page's per-server figures over a time range.
                      Index("ix_exchanges_engine_server_created_at", "engine_server", "created_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    request_id: Mapped[str | None] = mapped_column(String(100))
    # The name of the version that actually answered, kept even if the version row goes away.
    model_version: Mapped[str] = mapped_column(String(200))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    prompt: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text, default="")
    sampling: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(20), default="ok")
    error: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int | None]
    output_tokens: Mapped[int | None]
    queue_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    itl_ms: Mapped[float | None] = mapped_column(Float)
    e2e_ms: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None]
    # Added by 0002_safety_review.
    prompt_action: Mapped[str | None] = mapped_column(String(20))
    output_action: Mapped[str | None] = mapped_column(String(20))
    policy_version: Mapped[int | None]
    review_status: Mapped[str] = mapped_column(String(20), default="none", server_default="none")
    # Added by 0009_audit_anchor: when retention or an erasure removed the prompt and answer text (metadata stays).
    text_erased_at: Mapped[datetime | None]
    # Synthetic load (a load test from the console), excluded from dashboards by default.
    synthetic: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Added by 0018_exchange_owner: "<host>:<pid>" of the console process that stored the prompt (db.chat).
    owner: Mapped[str | None] = mapped_column(String(300))
    # Added by 0019_server_backends: the base URL of the vLLM server that answered (NULL in-process).
    engine_server: Mapped[str | None] = mapped_column(String(300))


class AuditEvent(Base):
    """One append-only, hash-chained audit event; written only through ``db.audit.append_event``.

    Database triggers refuse UPDATE and DELETE, except the erasure path: ``details`` may be replaced when
    ``erased_at`` is set and every chained column (including ``details_hash``) stays as it was.
    """

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_object", "object_type", "object_id"),
                      # 0021_audit_sequencer: the integrator's queue (events not chained yet).
                      Index("ix_audit_events_pending", "id", sqlite_where=text("seq IS NULL"),
                            postgresql_where=text("seq IS NULL")))

    id: Mapped[int] = mapped_column(primary_key=True)
    # seq, prev_hash and hash are NULL only while the event is queued for integration (PostgreSQL; 0021).
    seq: Mapped[int | None] = mapped_column(Integer, unique=True)
    ts: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(200), index=True)
    actor_id: Mapped[int | None]
    action: Mapped[str] = mapped_column(String(100), index=True)
    object_type: Mapped[str | None] = mapped_column(String(100))
    object_id: Mapped[str | None] = mapped_column(String(200))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))
    # Added by 0009_audit_anchor: the SHA-256 of the canonical details, which the chained hash covers (so details
    # can be erased without breaking the chain), and when they were erased.
    details_hash: Mapped[str | None] = mapped_column(String(64))
    erased_at: Mapped[datetime | None]
    # Added by 0016_erasure: the SHA-256 of the details as an erasure leaves them (personal values replaced), also
    # chained, for actions with personal detail keys (db.audit.remains_digest); NULL for other actions and older rows.
    remains_hash: Mapped[str | None] = mapped_column(String(64))


class AuditHead(Base):
    """The single row holding the chain's last seq and hash: its lock serializes chaining (inline appends on
    SQLite, integration batches on PostgreSQL; db.audit)."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class AppState(Base):
    __tablename__ = "app_state"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# ---- 0002_safety_review ----


class PolicyVersion(Base):
    __tablename__ = "policy_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    content: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class Finding(Base):
    __tablename__ = "findings"
    __table_args__ = (CheckConstraint(_in("direction", DIRECTIONS), name="direction"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    exchange_id: Mapped[int] = mapped_column(ForeignKey("exchanges.id"), index=True)
    direction: Mapped[str] = mapped_column(String(10))
    detector: Mapped[str] = mapped_column(String(100), index=True)
    detector_version: Mapped[str | None] = mapped_column(String(100))
    label: Mapped[str] = mapped_column(String(100), index=True)
    score: Mapped[float] = mapped_column(Float)
    start: Mapped[int | None]
    end: Mapped[int | None]
    action: Mapped[str] = mapped_column(String(20))


class RawText(Base):
    """Unredacted text, kept apart from the (redacted) exchange so it can be erased on its own."""

    __tablename__ = "raw_texts"
    __table_args__ = (CheckConstraint(_in("direction", DIRECTIONS), name="direction"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    exchange_id: Mapped[int] = mapped_column(ForeignKey("exchanges.id"), index=True)
    direction: Mapped[str] = mapped_column(String(10))
    text: Mapped[str] = mapped_column(Text)
    erased_at: Mapped[datetime | None]


class ReviewItem(Base):
    __tablename__ = "review_items"
    __table_args__ = (
        CheckConstraint(_in("reason", ITEM_REASONS), name="reason"),
        CheckConstraint(_in("status", ITEM_STATUSES), name="status"),
        Index("ix_review_items_queue", "status", text("severity DESC"), "created_at"),
        Index("ix_review_items_status_due_at", "status", "due_at"),
        # One item waiting for a reviewer per exchange: a second request adds its note (db.review.items).
        Index("uq_review_items_open_exchange", "exchange_id", unique=True,
              sqlite_where=text(_in("status", OPEN_ITEM_STATUSES)),
              postgresql_where=text(_in("status", OPEN_ITEM_STATUSES))),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    exchange_id: Mapped[int] = mapped_column(ForeignKey("exchanges.id"), index=True)
    reason: Mapped[str] = mapped_column(String(20))
    direction: Mapped[str | None] = mapped_column(String(10))
    severity: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(20), default="open")
    due_at: Mapped[datetime | None]
    claimed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    claim_expires_at: Mapped[datetime | None]
    note: Mapped[str | None] = mapped_column(Text)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReviewDecision(Base):
    """An immutable decision on a review item; a later decision supersedes it, never edits it."""

    __tablename__ = "review_decisions"
    __table_args__ = (CheckConstraint(_in("decision", DECISIONS), name="decision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("review_items.id"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    decision: Mapped[str] = mapped_column(String(20))
    category: Mapped[str | None] = mapped_column(String(100))
    note: Mapped[str | None] = mapped_column(Text)
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("review_decisions.id"))
    second_review: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Added by 0009_audit_anchor: the erasure path may clear ``note`` (and only that) when it sets this.
    note_erased_at: Mapped[datetime | None]


# ---- 0003_review_queue ----


class ReviewSample(Base):
    """A decided item drawn for a blind second review; the second decision is an opinion, not a correction."""

    __tablename__ = "review_samples"

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("review_items.id"), unique=True)
    first_decision_id: Mapped[int] = mapped_column(ForeignKey("review_decisions.id"))
    first_reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    second_decision_id: Mapped[int | None] = mapped_column(ForeignKey("review_decisions.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---- 0004_model_lifecycle ----


class ModelAlias(Base):
    """Where an alias points (``production`` is the version the console should serve): one row per alias."""

    __tablename__ = "model_aliases"

    alias: Mapped[str] = mapped_column(String(60), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class AliasMove(Base):
    """Append-only history of alias moves: who pointed which alias from which version to which, and why."""

    __tablename__ = "model_alias_moves"

    id: Mapped[int] = mapped_column(primary_key=True)
    alias: Mapped[str] = mapped_column(String(60), index=True)
    from_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    to_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    actor: Mapped[str] = mapped_column(String(200))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---- 0015_four_eyes ----


class ProtectedAlias(Base):
    """An alias an admin marked protected: like ``production`` (always protected, no row needed), it moves only
    through an approved promotion once a version holds it."""

    __tablename__ = "protected_aliases"

    alias: Mapped[str] = mapped_column(String(60), primary_key=True)
    protected_by: Mapped[str] = mapped_column(String(200))
    protected_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EmergencyMove(Base):
    """A single-person move of a protected alias: an emergency rollback (``kind`` rollback) or a shell command
    with ``--break-glass`` (``break_glass``: kind serve, alias or unprotect). Shown to every admin until another
    admin acknowledges it (``acknowledged_*``)."""

    __tablename__ = "emergency_moves"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    alias: Mapped[str] = mapped_column(String(60))
    from_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    to_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    actor: Mapped[str] = mapped_column(String(200))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reason: Mapped[str] = mapped_column(Text)
    break_glass: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
    acknowledged_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    acknowledged_at: Mapped[datetime | None] = mapped_column(index=True)
    ack_note: Mapped[str | None] = mapped_column(Text)


# ---- 0005_evaluations ----

EVALUATION_STATUSES = ("queued", "running", "done", "failed")


class Evaluation(Base):
    """One run of a prompt suite against a model version: its state, progress and (when done) its report."""

    __tablename__ = "evaluations"
    __table_args__ = (CheckConstraint(_in("status", EVALUATION_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    suite: Mapped[str] = mapped_column(String(100))
    # Of the suite's records (not of an uploaded file), so the same prompts give the same hash in any format.
    suite_sha256: Mapped[str] = mapped_column(String(64))
    n_prompts: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # host:pid of the console process that runs it, so a restarted process can fail what it left behind.
    runner: Mapped[str | None] = mapped_column(String(200))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


# ---- 0006_promotions ----

# "canary": approved with a canary plan and running; it ends "approved" (promoted) or "rolled_back" (0020).
PROMOTION_STATUSES = ("pending", "approved", "rejected", "cancelled", "canary", "rolled_back")


class PromotionRequest(Base):
    """A request to move an alias to a version, decided by someone other than the requester (four eyes).

    The candidate's evaluation report, the alias holder's (baseline) report and the gates are frozen at request time.
    """

    __tablename__ = "promotion_requests"
    __table_args__ = (CheckConstraint(_in("status", PROMOTION_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    alias: Mapped[str] = mapped_column(String(60))
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    # Who held the alias when the request was made (the baseline the gates compared with).
    from_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("evaluations.id"))
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    baseline_report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    gates: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    reason: Mapped[str] = mapped_column(Text)
    requested_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    decision_note: Mapped[str | None] = mapped_column(Text)
    override_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]
    # 0020: a canary plan approved with the request (share, duration, margins...), when the canary ran, and the
    # statistics that decided it.
    canary_plan: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    canary_started_at: Mapped[datetime | None]
    canary_ends_at: Mapped[datetime | None]
    canary_result: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class CanaryCheck(Base):
    """One round of a canary's sequential test: sample sizes, statistics and the decision it reached (0020)."""

    __tablename__ = "canary_checks"
    __table_args__ = (Index("ix_canary_checks_request_id_checked_at", "request_id", "checked_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("promotion_requests.id"))
    checked_at: Mapped[datetime] = mapped_column(default=utcnow)
    candidate_n: Mapped[int]
    live_n: Mapped[int]
    decision: Mapped[str] = mapped_column(String(20))  # continue | promote | rollback
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)


class JobRun(Base):
    """A periodic job that runs once per interval across console replicas: who holds it, until when (0020)."""

    __tablename__ = "job_runs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None]
    last_started_at: Mapped[datetime | None]
    last_finished_at: Mapped[datetime | None]
    runs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


# ---- 0009_audit_anchor ----


class AuditCheckpoint(Base):
    """A signed statement "the chain had ``seq`` events and its head was ``head_hash`` at ``ts``".

    Signed (HMAC-SHA256) with a key kept outside the database, and also appended to a file beside it, so cutting
    the tail or rewriting the chain shows even to someone who can write the database.
    """

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, index=True)
    head_hash: Mapped[str] = mapped_column(String(64))
    ts: Mapped[datetime] = mapped_column(default=utcnow)
    key_id: Mapped[str] = mapped_column(String(16))
    signature: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(40))


EXPORT_REQUEST_STATUSES = ("pending", "approved", "rejected", "cancelled", "used")


class ExportRequest(Base):
    """An export that holds raw (unredacted) text: asked for by an admin with a reason, approved by another person."""

    __tablename__ = "export_requests"
    __table_args__ = (CheckConstraint(_in("status", EXPORT_REQUEST_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    what: Mapped[str] = mapped_column(String(20))
    format: Mapped[str] = mapped_column(String(20))
    filters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reason: Mapped[str] = mapped_column(Text)
    requested_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    decision_note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]
    used_at: Mapped[datetime | None]


class ExportFile(Base):
    """An export file the console wrote (0017_export_files): it is deleted after its download or at
    ``expires_at`` (by retention), or by an erasure; the row stays as the record of it."""

    __tablename__ = "export_files"

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    what: Mapped[str] = mapped_column(String(20))
    format: Mapped[str] = mapped_column(String(20))
    raw_text: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    rows: Mapped[int]
    size: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(String(200))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    downloaded_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
    deleted_reason: Mapped[str | None] = mapped_column(String(20))


# ---- 0011_engine_health ----


class EngineHealthSample(Base):
    """The serving engine's load, sampled every few seconds by each console process (services/engine_health.py).

    ``epoch_s`` (Unix seconds of ``ts``) lets queries bucket by time with integer arithmetic on every database.
    ``preemptions`` counts since the previous sample; ``errors`` holds the engine errors noted since then
    (``[{"at": unix seconds, "message": ...}]``, ``error_count`` of them); ``error`` is the host's own (a failed
    load, a dead engine). Kept for a limited time (the sampler deletes older rows).
    """

    __tablename__ = "engine_health"

    id: Mapped[int] = mapped_column(primary_key=True)
    ts: Mapped[datetime] = mapped_column(default=utcnow)
    epoch_s: Mapped[int] = mapped_column(BigInteger, index=True)
    model_version: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(20))
    running: Mapped[int] = mapped_column(Integer, default=0)
    waiting: Mapped[int] = mapped_column(Integer, default=0)
    kv_cache_usage: Mapped[float] = mapped_column(Float, default=0.0)
    preemptions: Mapped[int] = mapped_column(Integer, default=0)
    preemptions_total: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens_per_s: Mapped[float] = mapped_column(Float, default=0.0)
    generation_tokens_per_s: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # 0019_server_backends: NULL for the whole engine's row; a base URL for one vLLM server's row, whose
    # ``queue_ms`` is that server's mean queue time over the sample.
    server: Mapped[str | None] = mapped_column(String(300))
    queue_ms: Mapped[float | None] = mapped_column(Float)


# ---- 0010_latency_buckets ----

# How long a stored latency bucket is, in seconds: per minute, and per hour for long ranges (see db/latency.py).
BUCKET_RESOLUTIONS = (60, 3600)
SLO_STATS = ("p50", "p90", "p95", "p99", "rate")


class LatencyBucket(Base):
    """Pre-aggregated traffic of one minute (or hour), model version, real/synthetic traffic and final status.

    Written with each finished exchange (``db.latency.record_exchange``): counters, sums for means, and the latency
    histograms of every metric as one compact array (``hist``, decoded by ``db.latency_report``). The dashboards read
    these rows, never the exchanges.
    """

    __tablename__ = "latency_buckets"

    resolution_s: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(primary_key=True)
    model_version: Mapped[str] = mapped_column(String(200), primary_key=True)
    synthetic: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    status: Mapped[str] = mapped_column(String(20), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer)
    # Flagged = the policy's action on the prompt or the output was flag or block (``db.flags``); 0013 adds the
    # two directions (an exchange flagged both ways counts in both, and once in ``flagged``).
    flagged: Mapped[int] = mapped_column(Integer)
    blocked: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    ttft_sum_ms: Mapped[float] = mapped_column(Float)
    itl_sum_ms: Mapped[float] = mapped_column(Float)
    e2e_sum_ms: Mapped[float] = mapped_column(Float)
    queue_sum_ms: Mapped[float] = mapped_column(Float)
    scan_before_sum_ms: Mapped[float] = mapped_column(Float)
    scan_after_sum_ms: Mapped[float] = mapped_column(Float)
    store_sum_ms: Mapped[float] = mapped_column(Float)
    hist: Mapped[bytes] = mapped_column(LargeBinary)
    prompt_flagged: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    output_flagged: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class Slo(Base):
    """A service-level objective set by an admin: a latency percentile or a rate, and its threshold."""

    __tablename__ = "slos"
    __table_args__ = (
        CheckConstraint(_in("stat", SLO_STATS), name="stat"),
        Index("ix_slos_metric_stat", "metric", "stat", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    metric: Mapped[str] = mapped_column(String(40))
    stat: Mapped[str] = mapped_column(String(10))
    # Milliseconds for a latency percentile; a fraction (0.01 = 1 %) for a rate.
    threshold: Mapped[float] = mapped_column(Float)
    set_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    set_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---- 0012_browser_sessions ----


class BrowserSession(Base):
    """A signed-in browser: the HttpOnly cookie holds a random token, this row only its SHA-256 (``token_hash``).

    Created at sign-in with a short-lived one-time ``ticket_hash`` (also a SHA-256) that the browser exchanges for
    the cookie (console/server.py); the token is made at that exchange. Valid until ``expires_at`` (absolute),
    while ``last_seen_at`` is within the idle limit, the account is enabled, its ``session_epoch`` is still
    ``user_epoch``, and ``revoked_at`` is unset. ``revoked_reason`` says why it ended (logout, idle, expired,
    password reset, disabled, roles changed, ended by an admin).
    """

    __tablename__ = "browser_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    ticket_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    ticket_expires_at: Mapped[datetime | None]
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    user_epoch: Mapped[int] = mapped_column(Integer, default=0)
    method: Mapped[str] = mapped_column(String(20), default="password")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(40))
    client: Mapped[str | None] = mapped_column(String(80))
    user_agent: Mapped[str | None] = mapped_column(String(200))


# ---- 0016_erasure ----

ERASURE_REQUEST_STATUSES = ("pending", "done", "rejected", "cancelled")


class ErasureRequest(Base):
    """A request to erase one account's content (by user id): asked for by an admin (or the shell, with no
    ``requested_by_id``), carried out when another admin approves it (``done``, with the counts in ``result``).

    ``reason`` is kept only while the request is open (it may name the person) and blanked when it is decided;
    ``legal_basis``, when given, lets the erasure reach logs younger than the six-month floor and stays on record.
    """

    __tablename__ = "erasure_requests"
    __table_args__ = (CheckConstraint(_in("status", ERASURE_REQUEST_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    legal_basis: Mapped[str | None] = mapped_column(Text)
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)


# ---- 0023_feedback ---- (issue 25: add this part's tables under this line)

FEEDBACK_RATINGS = (-1, 1)


class Feedback(Base):
    """A user's current rating of one of their own exchanges (+1 thumbs up, -1 thumbs down), with an optional
    reason. One row per (exchange, user), updated in place on a change; the audit chain holds every change.
    ``model_version`` is the exchange's (the version that answered), so per-version rates need no join."""

    __tablename__ = "feedback"
    __table_args__ = (CheckConstraint("rating IN (-1, 1)", name="rating"),
                      UniqueConstraint("exchange_id", "user_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    exchange_id: Mapped[int] = mapped_column(ForeignKey("exchanges.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    rating: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)



# ---- 0024_spot_checks ---- (issue 25: add this part's tables under this line)


class SpotCheck(Base):
    """An exchange drawn blind into review as a spot check (console.services.spot_checks): the rule that drew it
    (its scope key), the UTC day (YYYY-MM-DD) of the draw, and the item it opened. One row per exchange at most:
    an exchange is never drawn twice, whichever replica draws."""

    __tablename__ = "spot_checks"
    __table_args__ = (UniqueConstraint("exchange_id"), Index("ix_spot_checks_day_rule", "day", "rule"))

    id: Mapped[int] = mapped_column(primary_key=True)
    exchange_id: Mapped[int] = mapped_column(ForeignKey("exchanges.id"))
    item_id: Mapped[int] = mapped_column(ForeignKey("review_items.id"), index=True)
    rule: Mapped[str] = mapped_column(String(300))
    day: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---- 0025_quotas ---- (issue 25: add this part's tables under this line)

# What a quota limits: requests per user and minute (a fixed window), tokens (prompt + answer) per user and UTC day.
QUOTA_KINDS = ("requests_per_minute", "tokens_per_day")


class QuotaLimit(Base):
    """A limit an admin set: a role's default (``role``) or one user's override (``user_id``); exactly one of the
    two. ``limit_value`` NULL is an explicit "no limit". Without a row the role's shipped default applies
    (console/services/quotas.py), and a user has no override."""

    __tablename__ = "quota_limits"
    __table_args__ = (
        CheckConstraint(_in("kind", QUOTA_KINDS), name="kind"),
        CheckConstraint("role IS NULL OR " + _in("role", ROLES), name="role"),
        CheckConstraint("(role IS NULL) <> (user_id IS NULL)", name="scope"),
        CheckConstraint("limit_value IS NULL OR limit_value >= 0", name="value"),
        Index("ix_quota_limits_role_kind", "role", "kind", unique=True),
        Index("ix_quota_limits_user_id_kind", "user_id", "kind", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    role: Mapped[str | None] = mapped_column(String(20))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(30))
    limit_value: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class QuotaCounter(Base):
    """One user's requests in the current minute (``window_start``), raised by one conditional UPDATE (db.quotas),
    and the window (minute, or UTC day) whose refusal was last audited, so a hammering client leaves one
    ``quota.exceeded`` event per limit and window."""

    __tablename__ = "quota_counters"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    window_start: Mapped[datetime]
    requests: Mapped[int] = mapped_column(Integer)
    rpm_refusal_audited: Mapped[datetime | None]
    tpd_refusal_audited: Mapped[datetime | None]



# ---- 0026_alerts ---- (issue 25: add this part's tables under this line)

WEBHOOK_KINDS = ("json", "slack")
ALERT_STATES = ("firing", "resolved", "event")  # event: a one-off (a rollback), never resolved
DELIVERY_STATUSES = ("pending", "sending", "delivered", "failed")
SECRET_FORMATS = ("plain", "fernet")  # 0029_webhook_secrets
DELIVERY_EVENTS = ("firing", "resolved")  # 0030_alert_resolved: which notice a delivery carries


class Webhook(Base):
    """Where alerts go: a generic JSON body or a Slack-compatible one, for the alert kinds in ``alert_kinds``.

    ``url`` and ``secret`` are never shown back (URLs often embed a token); ``url_display`` is scheme and host."""

    __tablename__ = "webhooks"
    __table_args__ = (CheckConstraint(_in("kind", WEBHOOK_KINDS), name="kind"),
                      CheckConstraint(_in("secret_format", SECRET_FORMATS), name="secret_format"))

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    kind: Mapped[str] = mapped_column(String(10))
    url: Mapped[str] = mapped_column(Text)
    url_display: Mapped[str] = mapped_column(String(300))
    alert_kinds: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # 0029_webhook_secrets: "fernet": url and secret hold Fernet tokens of the secrets key secret_key_id (a file
    # outside the database, console.services.secret_box); "plain": rows stored before 0029, encrypted at start-up.
    secret_format: Mapped[str] = mapped_column(String(10), server_default="plain")
    secret_key_id: Mapped[str | None] = mapped_column(String(16))


class Alert(Base):
    """A condition raised once until it clears: ``dedup_key`` is ``kind:key`` while firing (unique), NULL once
    resolved; one-off events keep it, so the same event is never raised twice."""

    __tablename__ = "alerts"
    __table_args__ = (CheckConstraint(_in("state", ALERT_STATES), name="state"),
                      Index("ix_alerts_kind_key", "kind", "key"))

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    key: Mapped[str] = mapped_column(String(200))
    dedup_key: Mapped[str | None] = mapped_column(String(250), unique=True)
    title: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20))
    raised_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    resolved_at: Mapped[datetime | None]


class AlertDelivery(Base):
    """One alert to one webhook: claimed in the database before each send (``claimed_by`` until
    ``claimed_until``), retried with backoff until delivered or out of attempts."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (CheckConstraint(_in("status", DELIVERY_STATUSES), name="status"),
                      CheckConstraint(_in("event", DELIVERY_EVENTS), name="event"),
                      Index("ix_alert_deliveries_status_next_attempt_at", "status", "next_attempt_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"), index=True)
    webhook_id: Mapped[int | None] = mapped_column(ForeignKey("webhooks.id"))
    webhook_name: Mapped[str] = mapped_column(String(80))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    claimed_until: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    # 0030_alert_resolved: "firing" (the alert raised: a condition, or a one-off event) or "resolved" (the condition
    # cleared; sent only after this webhook's firing notice of the alert was delivered or gave up).
    event: Mapped[str] = mapped_column(String(20), default="firing", server_default="firing")


class AlertAttempt(Base):
    """One attempt of a delivery: HTTP status (None when no answer), error text (never the URL), duration."""

    __tablename__ = "alert_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("alert_deliveries.id"), index=True)
    attempt: Mapped[int]
    at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Float)
    ok: Mapped[bool] = mapped_column(Boolean)


# ---- 0027_policy_changes ---- (issue 25: add this part's tables under this line)

POLICY_CHANGE_STATUSES = ("pending", "approved", "rejected", "cancelled")


class PolicyChangeRequest(Base):
    """A proposed policy text with its backtest, waiting for a second admin (``console.services.policy_changes``).

    ``base_version`` is the stored policy version in force when it was proposed: approving stores ``content`` as
    the next ``policy_versions`` row (``applied_version``) only while ``base_version`` is still the newest.
    ``backtest`` holds the replay's figures and the ids of exchanges whose verdict changes (never their text).
    """

    __tablename__ = "policy_change_requests"
    __table_args__ = (CheckConstraint(_in("status", POLICY_CHANGE_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    base_version: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    file_version: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    days: Mapped[int] = mapped_column(Integer)
    backtest: Mapped[dict[str, Any]] = mapped_column(JSON)
    requested_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[datetime | None]
    decision_note: Mapped[str | None] = mapped_column(Text)
    applied_version: Mapped[int | None]



# ---- append-only guards ----

APPEND_ONLY: tuple[type[Base], ...] = (AuditEvent, ReviewDecision, AliasMove)


class AppendOnlyError(RuntimeError):
    """Raised when code tries to update or delete a row of an append-only table through the ORM."""


def _refuse_change(mapper: Any, connection: Any, target: Base) -> None:
    raise AppendOnlyError(f"{type(target).__name__} rows are append-only; they cannot be updated or deleted")


for _cls in APPEND_ONLY:
    event.listen(_cls, "before_update", _refuse_change)
    event.listen(_cls, "before_delete", _refuse_change)


@event.listens_for(Session, "do_orm_execute")
def _refuse_bulk_change(state: ORMExecuteState) -> None:
    # Bulk update()/delete() statements skip the mapper events above, so check them here.
    if (state.is_update or state.is_delete) and state.bind_mapper is not None:
        if state.bind_mapper.class_ in APPEND_ONLY:
            raise AppendOnlyError(f"{state.bind_mapper.class_.__name__} rows are append-only")


# ---- 0028_audit_verifications ---- (automatic audit verification: add its tables under this line)

VERIFY_TRIGGERS = ("schedule", "manual", "cli")


class AuditVerification(Base):
    """One verification of the audit chain against the signed checkpoints: the console's own, on its schedule
    (``schedule``), or asked for on the Audit page (``manual``) or by ``llm-console audit verify`` (``cli``). The
    newest runs only are kept (``db.audit_verifications.KEEP_RUNS``)."""

    __tablename__ = "audit_verifications"
    __table_args__ = (CheckConstraint(_in("trigger", VERIFY_TRIGGERS), name="trigger"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    trigger: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime] = mapped_column(index=True)
    finished_at: Mapped[datetime]
    duration_ms: Mapped[float] = mapped_column(Float)
    ok: Mapped[bool] = mapped_column(Boolean)
    checked: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str | None] = mapped_column(String(40))
    first_bad_seq: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)



# ---- 0029_webhook_secrets ---- (webhook secrets at rest: add its tables under this line)
# No table: two columns of Webhook above (secret_format, secret_key_id).

# ---- 0030_alert_resolved ---- (resolved notices)
# No table: one column of AlertDelivery above (event).
