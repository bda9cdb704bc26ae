"""The anchored audit chain: every kind of damage is named, with and without signed checkpoints; triggers; erasure.

Tampering is done the way someone with write access to the database file would: triggers dropped, raw SQL.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Connection, insert, select, text
from sqlalchemy.exc import DatabaseError

from db import Database, DbConfig
from db import audit as audit_q
from db.audit import (
    DELETED,
    EDITED,
    ERASURE_ACTION,
    FORGED_CHECKPOINT,
    HEAD_REWRITTEN,
    INSERTED,
    REORDERED,
    REWRITTEN,
    TAIL_CUT,
    WIPED,
    AuditAnchor,
    append_event,
    compute_hash,
    details_digest,
    erase_event_details,
    integrate_pending,
    verify_chain,
)
from db.chat import TurnRecord, create_conversation, store_turn
from db.review.decisions import record_decision
from db.review.items import create_review_item
from db.tables import AuditEvent
from db.users import create_user

TRIGGERS = ("audit_events_append_only_update", "audit_events_append_only_delete")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(DbConfig(f"sqlite:///{tmp_path / 'console.db'}"))
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def anchor(tmp_path: Path) -> AuditAnchor:
    return AuditAnchor.load(tmp_path / "audit.key", tmp_path / "audit-checkpoints.jsonl")


def _append(db: Database, n: int, start: int = 0) -> None:
    with db.session() as s:
        for i in range(start, start + n):
            append_event(s, actor="system", action="test.event", details={"i": i, "email": f"p{i}@example.com"})
    # PostgreSQL queues appends and chains them just after the commit; the tests address events by seq at once.
    integrate_pending(db)


def _tamper(db: Database, work: Callable[[Connection], None]) -> None:
    """Do ``work`` the way someone with write access to the database would: triggers dropped first."""
    with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events"))
        else:
            for name in TRIGGERS:
                conn.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
        work(conn)


def _row(conn: Connection, seq: int) -> dict:
    return dict(conn.execute(select(AuditEvent.__table__).where(AuditEvent.seq == seq)).mappings().one())


def _forged(conn: Connection, *, seq: int, prev_hash: str, actor: str = "mallory") -> dict:
    ts = datetime.now(UTC)
    details = {"after": ["admin"]}
    dh = details_digest(details)
    digest = compute_hash(ts=ts, actor=actor, actor_id=None, action="user.roles", object_type="user",
                          object_id="1", details_hash=dh, prev_hash=prev_hash)
    return {"seq": seq, "ts": ts, "actor": actor, "actor_id": None, "action": "user.roles", "object_type": "user",
            "object_id": "1", "details": details, "details_hash": dh, "prev_hash": prev_hash, "hash": digest}


def _rechain_from(conn: Connection, first: int) -> None:
    """Re-compute every hash from ``first`` on and move the head: what an attacker does to hide an edit."""
    prev = _row(conn, first - 1)["hash"] if first > 1 else audit_q.GENESIS_HASH
    rows = conn.execute(select(AuditEvent.__table__).where(AuditEvent.seq >= first).order_by(AuditEvent.seq))
    last = None
    for r in rows.mappings().all():
        dh = details_digest(r["details"])
        digest = compute_hash(ts=r["ts"], actor=r["actor"], actor_id=r["actor_id"], action=r["action"],
                              object_type=r["object_type"], object_id=r["object_id"], details_hash=dh, prev_hash=prev)
        conn.execute(text("UPDATE audit_events SET details_hash = :dh, prev_hash = :p, hash = :h WHERE seq = :s"),
                     {"dh": dh, "p": prev, "h": digest, "s": r["seq"]})
        prev, last = digest, r["seq"]
    conn.execute(text("UPDATE audit_head SET seq = :s, hash = :h"), {"s": last, "h": prev})


# ---- the damage ----


def edit_details(conn: Connection) -> None:
    conn.execute(text("UPDATE audit_events SET details = '{\"i\": 99}' WHERE seq = 3"))


def edit_actor(conn: Connection) -> None:
    conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 4"))


def delete_middle(conn: Connection) -> None:
    conn.execute(text("DELETE FROM audit_events WHERE seq = 3"))


def delete_and_renumber(conn: Connection) -> None:
    conn.execute(text("DELETE FROM audit_events WHERE seq = 3"))
    for seq in (4, 5, 6):
        conn.execute(text("UPDATE audit_events SET seq = :n WHERE seq = :o"), {"n": seq - 1, "o": seq})
    conn.execute(text("UPDATE audit_head SET seq = 5, hash = (SELECT hash FROM audit_events WHERE seq = 5)"))


def swap(conn: Connection) -> None:
    conn.execute(text("UPDATE audit_events SET seq = -1 WHERE seq = 2"))
    conn.execute(text("UPDATE audit_events SET seq = 2 WHERE seq = 3"))
    conn.execute(text("UPDATE audit_events SET seq = 3 WHERE seq = -1"))


def insert_middle(conn: Connection) -> None:
    for seq in (6, 5, 4):
        conn.execute(text("UPDATE audit_events SET seq = :n WHERE seq = :o"), {"n": seq + 1, "o": seq})
    conn.execute(insert(AuditEvent.__table__).values(**_forged(conn, seq=4, prev_hash=_row(conn, 3)["hash"])))
    conn.execute(text("UPDATE audit_head SET seq = 7"))


def insert_unhashed(conn: Connection) -> None:
    for seq in (6, 5, 4):
        conn.execute(text("UPDATE audit_events SET seq = :n WHERE seq = :o"), {"n": seq + 1, "o": seq})
    row = _forged(conn, seq=4, prev_hash=_row(conn, 3)["hash"])
    conn.execute(insert(AuditEvent.__table__).values(**{**row, "hash": "e" * 64}))
    conn.execute(text("UPDATE audit_head SET seq = 7"))


def append_forged_tail(conn: Connection) -> None:
    conn.execute(insert(AuditEvent.__table__).values(**_forged(conn, seq=7, prev_hash=_row(conn, 6)["hash"])))


def cut_tail_leaving_head(conn: Connection) -> None:
    conn.execute(text("DELETE FROM audit_events WHERE seq >= 5"))


def wipe_leaving_head(conn: Connection) -> None:
    conn.execute(text("DELETE FROM audit_events"))


def rewrite_head(conn: Connection) -> None:
    conn.execute(text("UPDATE audit_head SET hash = :h"), {"h": "f" * 64})


def erase_without_record(conn: Connection) -> None:
    conn.execute(text("UPDATE audit_events SET details = '{\"i\": 2, \"email\": \"[erased]\"}', erased_at = :t "
                      "WHERE seq = 3"), {"t": datetime.now(UTC)})


# Detected from the chain alone (no checkpoints needed).
CHAIN_DAMAGE = [
    pytest.param(edit_details, EDITED, 3, id="edited-details"),
    pytest.param(edit_actor, EDITED, 4, id="edited-actor"),
    pytest.param(delete_middle, DELETED, 3, id="deleted-gap"),
    pytest.param(delete_and_renumber, DELETED, 3, id="deleted-renumbered"),
    pytest.param(swap, REORDERED, 2, id="reordered"),
    pytest.param(insert_middle, INSERTED, 4, id="inserted-chained"),
    pytest.param(insert_unhashed, INSERTED, 4, id="inserted-unhashed"),
    pytest.param(append_forged_tail, INSERTED, 7, id="inserted-at-tail"),
    pytest.param(cut_tail_leaving_head, TAIL_CUT, 5, id="tail-cut"),
    pytest.param(wipe_leaving_head, WIPED, 1, id="wiped"),
    pytest.param(rewrite_head, HEAD_REWRITTEN, 6, id="head-rewritten"),
    pytest.param(erase_without_record, EDITED, 3, id="erased-without-record"),
]


@pytest.mark.parametrize(("damage", "kind", "first_bad"), CHAIN_DAMAGE)
def test_each_kind_of_damage_is_named_without_checkpoints(db: Database, damage, kind: str, first_bad: int) -> None:
    _append(db, 6)
    assert verify_chain(db).ok
    _tamper(db, damage)
    report = verify_chain(db)
    assert not report.ok
    assert (report.kind, report.first_bad_seq) == (kind, first_bad), report.reason


@pytest.mark.parametrize(("damage", "kind", "first_bad"), CHAIN_DAMAGE)
def test_each_kind_of_damage_is_named_with_checkpoints(db: Database, anchor: AuditAnchor, damage, kind: str,
                                                       first_bad: int) -> None:
    _append(db, 6)
    anchor.checkpoint(db, "test")
    assert verify_chain(db, anchor).ok
    _tamper(db, damage)
    report = verify_chain(db, anchor)
    assert not report.ok
    assert (report.kind, report.first_bad_seq) == (kind, first_bad), report.reason


def _cut_tail_and_fix_head(conn: Connection) -> None:
    conn.execute(text("DELETE FROM audit_events WHERE seq >= 5"))
    conn.execute(text("UPDATE audit_head SET seq = 4, hash = (SELECT hash FROM audit_events WHERE seq = 4)"))


def _wipe_and_zero_head(conn: Connection) -> None:
    conn.execute(text("DELETE FROM audit_events"))
    conn.execute(text("UPDATE audit_head SET seq = 0, hash = :g"), {"g": audit_q.GENESIS_HASH})


def _edit_and_rechain(conn: Connection) -> None:
    conn.execute(text("UPDATE audit_events SET details = '{\"i\": 99}' WHERE seq = 4"))
    _rechain_from(conn, 4)


def _edit_one_and_rehash_it(conn: Connection) -> None:
    conn.execute(text("UPDATE audit_events SET details = '{\"i\": 99}' WHERE seq = 4"))
    row = _row(conn, 4)
    dh = details_digest({"i": 99})
    digest = compute_hash(ts=row["ts"], actor=row["actor"], actor_id=row["actor_id"], action=row["action"],
                          object_type=row["object_type"], object_id=row["object_id"], details_hash=dh,
                          prev_hash=row["prev_hash"])
    conn.execute(text("UPDATE audit_events SET details_hash = :dh, hash = :h WHERE seq = 4"), {"dh": dh, "h": digest})


# What only a signed checkpoint can show: the attacker kept the chain and the head consistent.
@pytest.mark.parametrize(("damage", "kind", "first_bad"), [
    pytest.param(_cut_tail_and_fix_head, TAIL_CUT, 5, id="tail-cut-head-moved"),
    pytest.param(_wipe_and_zero_head, WIPED, 1, id="wiped-head-zeroed"),
    pytest.param(_edit_and_rechain, REWRITTEN, 3, id="edited-and-rechained"),
    pytest.param(_edit_one_and_rehash_it, EDITED, 4, id="edited-own-hash-recomputed"),
])
def test_consistent_forgeries_are_caught_only_by_checkpoints(db: Database, anchor: AuditAnchor, damage,
                                                             kind: str, first_bad: int) -> None:
    _append(db, 2)
    anchor.checkpoint(db, "test")
    _append(db, 4, start=2)
    anchor.checkpoint(db, "test")
    _tamper(db, damage)
    if damage is not _edit_one_and_rehash_it:
        assert verify_chain(db).ok  # the chain alone cannot tell: this is why the anchor exists
    report = verify_chain(db, anchor)
    assert not report.ok
    assert (report.kind, report.first_bad_seq) == (kind, first_bad), report.reason


def test_the_checkpoint_file_catches_a_cut_tail_when_the_database_checkpoints_are_gone_too(
        db: Database, anchor: AuditAnchor, tmp_path: Path) -> None:
    _append(db, 6)
    anchor.checkpoint(db, "test")

    def cut_everything(conn: Connection) -> None:
        _cut_tail_and_fix_head(conn)
        conn.execute(text("DELETE FROM audit_checkpoints"))

    _tamper(db, cut_everything)
    # Without the file, nothing is left to compare with.
    bare = AuditAnchor.load(tmp_path / "audit.key", None)
    assert verify_chain(db, bare).ok
    report = verify_chain(db, anchor)
    assert (report.ok, report.kind, report.first_bad_seq) == (False, TAIL_CUT, 5)
    assert any("missing from the database" in w for w in report.warnings)


def test_an_exported_checkpoint_file_kept_elsewhere_is_enough(db: Database, anchor: AuditAnchor,
                                                               tmp_path: Path) -> None:
    _append(db, 6)
    anchor.checkpoint(db, "test")
    kept = tmp_path / "kept-elsewhere.jsonl"
    kept.write_bytes(anchor.checkpoint_file.read_bytes())  # type: ignore[union-attr]
    anchor.checkpoint_file.unlink()  # type: ignore[union-attr]

    def cut_everything(conn: Connection) -> None:
        _wipe_and_zero_head(conn)
        conn.execute(text("DELETE FROM audit_checkpoints"))

    _tamper(db, cut_everything)
    bare = AuditAnchor.load(tmp_path / "audit.key", None)
    assert verify_chain(db, bare).ok
    report = verify_chain(db, bare, [kept])
    assert (report.ok, report.kind) == (False, WIPED)


def test_a_checkpoint_with_a_changed_count_or_hash_is_a_forgery(db: Database, anchor: AuditAnchor) -> None:
    _append(db, 6)
    anchor.checkpoint(db, "test")
    _tamper(db, lambda c: c.execute(text("UPDATE audit_checkpoints SET seq = 3")))
    report = verify_chain(db, AuditAnchor.load(anchor.checkpoint_file.parent / "audit.key"))  # type: ignore[union-attr]
    assert (report.ok, report.kind) == (False, FORGED_CHECKPOINT)


def test_a_valid_chain_reports_its_anchoring(db: Database, anchor: AuditAnchor) -> None:
    _append(db, 3)
    anchor.checkpoint(db, "periodic")
    _append(db, 2, start=3)
    report = verify_chain(db, anchor)
    assert report.ok and report.checked == 5
    assert (report.checkpoints_checked, report.anchored_seq) == (1, 3)
    lines = anchor.checkpoint_file.read_text().splitlines()  # type: ignore[union-attr]
    assert len(lines) == 1 and json.loads(lines[0])["seq"] == 3


def test_the_private_writer_replaces_a_file_owner_only_in_one_step(tmp_path: Path) -> None:
    """``write_private_bytes`` (keys, export manifests): 0600 whatever was there, all or nothing, no leftovers."""
    target = tmp_path / "manifest.json"
    target.write_text("old")
    target.chmod(0o644)
    audit_q.write_private_bytes(target, "naïve\n".encode())
    assert target.read_bytes() == "naïve\n".encode() and target.stat().st_mode & 0o777 == 0o600
    audit_q.write_private_text(target, "ümlaut\n")
    assert target.read_text(encoding="utf-8") == "ümlaut\n" and target.stat().st_mode & 0o777 == 0o600
    blocked = tmp_path / "blocked"
    (blocked / "inside").mkdir(parents=True)  # a non-empty directory cannot be replaced by a file
    with pytest.raises(OSError):
        audit_q.write_private_bytes(blocked, b"new")
    assert (blocked / "inside").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked", "manifest.json"]  # no temporary file left


def test_the_key_file_is_owner_only_and_never_replaced(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "audit.key"
    first = AuditAnchor.load(key_file)
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert AuditAnchor.load(key_file).key_id == first.key_id
    key_file.chmod(0o644)
    with pytest.raises(PermissionError):
        AuditAnchor.load(key_file)
    with pytest.raises(FileNotFoundError):
        AuditAnchor.load(tmp_path / "missing.key", create=False)


# ---- erasure ----


def test_erasure_keeps_the_chain_valid_when_recorded(db: Database, anchor: AuditAnchor) -> None:
    _append(db, 4)
    anchor.checkpoint(db, "test")
    with db.session() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.seq.in_([2, 3]))))
        seqs = erase_event_details(s, events, ["email"])
        # test.event has no personal keys of its own (no remains_hash): the erasure event pins what remains.
        append_event(s, actor="admin", action=ERASURE_ACTION,
                     details={"audit_seqs": seqs, "remains": audit_q.erasure_remains(s, seqs)})
    assert seqs == [2, 3]
    with db.session(readonly=True) as s:
        details = [e.details for e in s.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
    assert details[1] == {"i": 1, "email": "[erased]"} and details[0]["email"] == "p0@example.com"
    assert verify_chain(db, anchor).ok


# ---- triggers ----


def test_triggers_refuse_raw_updates_and_deletes(db: Database) -> None:
    _append(db, 2)
    for statement in ("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1",
                      "DELETE FROM audit_events WHERE seq = 2",
                      # the erasure path may change details only, never the chained columns
                      "UPDATE audit_events SET details = '{}', erased_at = '2026-01-01', hash = 'x' WHERE seq = 1",
                      "UPDATE audit_events SET details = '{}' WHERE seq = 1"):
        with pytest.raises(DatabaseError, match="append-only"), db.engine.begin() as conn:
            conn.execute(text(statement))
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET details = '{}', erased_at = '2026-01-01 00:00:00' WHERE seq = 1"))
        rows = conn.execute(text("SELECT seq, actor, details FROM audit_events ORDER BY seq")).all()
    first = rows[0].details if isinstance(rows[0].details, dict) else json.loads(rows[0].details)  # PostgreSQL: a dict
    assert [(r.seq, r.actor) for r in rows] == [(1, "system"), (2, "system")] and first == {}


def test_triggers_refuse_raw_changes_to_review_decisions(db: Database) -> None:
    with db.session() as s:
        user = create_user(s, "ada", "hash", ["reviewer"])
        conversation = create_conversation(s, user_id=user.id, actor="ada")
        exchange = store_turn(s, TurnRecord(conversation_id=conversation.id, user_id=user.id, prompt="p",
                                            response="r", model_version="m", actor="ada"))
        item = create_review_item(s, exchange_id=exchange.id, reason="flagged", actor="system")
        record_decision(s, item_id=item.id, reviewer_id=user.id, decision="violation", note="a note", actor="ada")
    for statement in ("UPDATE review_decisions SET decision = 'false_positive'",
                      "DELETE FROM review_decisions",
                      "UPDATE review_decisions SET note = NULL"):
        with pytest.raises(DatabaseError, match="append-only"), db.engine.begin() as conn:
            conn.execute(text(statement))
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE review_decisions SET note = NULL, note_erased_at = '2026-01-02 00:00:00'"))
        assert conn.execute(text("SELECT decision, note FROM review_decisions")).one() == ("violation", None)


# ---- issue 21, item 4: erasure keeps what remains of an event under the chain ----


def _approve_then_erase(db: Database) -> int:
    """A promotion approval with a note and failed gates, its note erased the way the console erases."""
    with db.session() as s:
        event = append_event(s, actor="rita", actor_id=3, action="promotion.approve", object_type="promotion",
                             object_id=7, details={"note": "call me on 555-0101", "override_reason": "ok by Ann",
                                                   "failed_gates": ["latency_p95"], "version": "v2"})
    with db.session() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.seq == event.seq)))
        seqs = erase_event_details(s, rows, audit_q.PERSONAL_DETAIL_KEYS["promotion.approve"])
        append_event(s, actor="ada", action=ERASURE_ACTION, details={"audit_seqs": seqs})
    return event.seq


def test_an_erased_event_keeps_a_chained_hash_of_what_remains(db: Database) -> None:
    seq = _approve_then_erase(db)
    with db.session(readonly=True) as s:
        row = s.scalars(select(AuditEvent).where(AuditEvent.seq == seq)).one()
    assert row.details == {"note": "[erased]", "override_reason": "[erased]", "failed_gates": ["latency_p95"],
                           "version": "v2"}
    assert row.remains_hash == details_digest(row.details)
    assert verify_chain(db).ok


@pytest.mark.parametrize("details", [
    '{"note": "[erased]", "override_reason": "[erased]", "failed_gates": [], "version": "v2"}',
    '{"note": "[erased]", "override_reason": "[erased]", "failed_gates": ["latency_p95"], "version": "v9"}',
    '{"note": "[erased]", "failed_gates": ["latency_p95"], "version": "v2"}',
    '{"note": "someone else wrote this", "override_reason": "[erased]", "failed_gates": ["latency_p95"], '
    '"version": "v2"}',
], ids=["gates-emptied", "version-changed", "key-dropped", "erased-text-rewritten"])
def test_changing_what_remains_of_an_erased_event_fails_verification(db: Database, details: str) -> None:
    seq = _approve_then_erase(db)
    _tamper(db, lambda conn: conn.execute(text("UPDATE audit_events SET details = :d WHERE seq = :s"),
                                          {"d": details, "s": seq}))
    report = verify_chain(db)
    assert not report.ok and (report.kind, report.first_bad_seq) == (EDITED, seq)


def test_a_writer_cannot_erase_again_to_change_an_erased_event(db: Database) -> None:
    seq = _approve_then_erase(db)
    with pytest.raises(DatabaseError, match="append-only"), db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET details = '{\"failed_gates\": []}', erased_at = :t WHERE seq = :s"),
                     {"t": datetime.now(UTC), "s": seq})


def test_erasing_an_event_changed_in_the_database_is_refused(db: Database) -> None:
    with db.session() as s:
        event = append_event(s, actor="rita", actor_id=3, action="promotion.approve", object_type="promotion",
                             object_id=7, details={"note": "n", "failed_gates": ["a"]})
    _tamper(db, lambda conn: conn.execute(text("UPDATE audit_events SET details = :d WHERE seq = :s"),
                                          {"d": '{"note": "n", "failed_gates": []}', "s": event.seq}))
    with db.session() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.seq == event.seq)))
        with pytest.raises(audit_q.TamperedEvent, match="changed in the database"):
            erase_event_details(s, rows, ["note"])


def test_an_older_event_erased_with_its_remains_recorded_is_pinned_by_the_erasure_event(db: Database) -> None:
    _append(db, 3)  # test.event: no personal keys of its own, so no remains_hash (like events written before 0016)
    with db.session() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.seq == 2)))
        seqs = erase_event_details(s, rows, ["email"])
        append_event(s, actor="admin", action=ERASURE_ACTION,
                     details={"audit_seqs": seqs, "remains": audit_q.erasure_remains(s, seqs)})
    assert verify_chain(db).ok
    _tamper(db, lambda conn: conn.execute(text("UPDATE audit_events SET details = :d WHERE seq = 2"),
                                          {"d": '{"i": 42, "email": "[erased]"}'}))
    report = verify_chain(db)
    assert not report.ok and (report.kind, report.first_bad_seq) == (EDITED, 2)


# ---- issue 21, low item: the audit key ----


def test_a_checkpoint_signed_with_a_foreign_key_fails_verification(db: Database, anchor: AuditAnchor,
                                                                    tmp_path: Path) -> None:
    _append(db, 3)
    anchor.checkpoint(db, "test")
    other = AuditAnchor.load(tmp_path / "other.key", tmp_path / "other-checkpoints.jsonl")
    other.checkpoint(db, "elsewhere")  # stored in the database beside the real ones
    report = verify_chain(db, anchor)
    assert not report.ok and report.kind == FORGED_CHECKPOINT and other.key_id in (report.reason or "")


def test_after_a_rotation_old_checkpoints_still_verify_and_new_ones_use_the_new_key(db: Database, tmp_path: Path
                                                                                   ) -> None:
    key_file, cp_file = tmp_path / "audit.key", tmp_path / "audit-checkpoints.jsonl"
    old = AuditAnchor.load(key_file, cp_file)
    _append(db, 3)
    old.checkpoint(db, "before")
    new, details = audit_q.rotate_key(db, key_file, cp_file, actor="cli", reason="yearly rotation")
    assert details["old_key_kept"] and details["lost_key_ids"] == [] and new.key_id != old.key_id
    _append(db, 2, start=10)
    new.checkpoint(db, "after")
    reloaded = AuditAnchor.load(key_file, cp_file, create=False)
    assert reloaded.key_id == new.key_id
    report = verify_chain(db, reloaded)
    assert report.ok and report.checkpoints_checked == 4 and report.warnings == ()  # before, rotate, rotated, after
    with db.session(readonly=True) as s:
        [rotated] = list(audit_q.iter_events(s, action=audit_q.KEY_ROTATED_ACTION))
    assert rotated.details["old_key_id"] == old.key_id and rotated.details["new_key_id"] == new.key_id


def test_a_lost_key_is_rotated_only_explicitly_and_its_checkpoints_before_the_rotation_are_accepted(
        db: Database, tmp_path: Path) -> None:
    key_file, cp_file = tmp_path / "audit.key", tmp_path / "audit-checkpoints.jsonl"
    lost = AuditAnchor.load(key_file, cp_file)
    _append(db, 3)
    lost.checkpoint(db, "before")
    key_file.unlink()
    new, details = audit_q.rotate_key(db, key_file, cp_file, actor="cli", reason="key file lost in a disk crash")
    assert details["lost_key_ids"] == [lost.key_id] and not details["old_key_kept"]
    report = verify_chain(db, new)
    assert report.ok and any("cannot be checked" in w for w in report.warnings)
    # A checkpoint with the lost key dated after the rotation is a forgery.
    late = audit_q.Checkpoint(report.checked, "0" * 64, datetime.now(UTC), lost.key_id, "a" * 64)
    audit_q.append_checkpoint_line(cp_file, late)
    assert verify_chain(db, new).kind == FORGED_CHECKPOINT


def test_a_missing_key_stops_the_console_when_checkpoints_exist(ctx) -> None:
    from console.services import audit as audit_svc
    from console.services.access import Principal
    from console.services.errors import StorageUnavailable

    audit_svc.checkpoint(ctx, "init")  # a new installation: nothing signed yet, so the key is made
    key_file = ctx.settings.audit_key_file
    key_file.unlink()
    with pytest.raises(StorageUnavailable, match=f"{key_file}.*is missing.*rotate-key"):
        audit_svc.check_key(ctx)
    assert not key_file.exists()  # not re-created behind anyone's back
    shell = Principal.shell(ctx)
    details = audit_svc.rotate_key(ctx, shell, "the key file was lost with the old disk")
    assert details["lost_key_ids"] and key_file.exists()
    audit_svc.check_key(ctx)
    assert audit_svc.verify(ctx, shell).ok
