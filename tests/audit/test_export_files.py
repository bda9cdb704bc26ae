"""Export files that do not pile up (issue 21, item 7): streamed from the console's own route and deleted once
downloaded, deleted by retention after ``export_file_hours`` (a raw-text export no later than its raw-text
retention), deleted by an erasure, and bounded per analyst and hour."""

from __future__ import annotations

import dataclasses
import os
import tracemalloc
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from console import server
from console.services import export_approvals as approvals_svc
from console.services import export_files as files_svc
from console.services import exports as exports_svc
from console.services import retention, sessions
from console.services.access import Principal
from console.services.errors import NotFound
from console.services.exports import ExportSpec
from db import audit as audit_q
from db.tables import Conversation, Exchange, ExportFile, RawText


@pytest.fixture
def people(ctx) -> dict[str, Principal]:
    from db import users as users_q

    roles = {"ana": "analyst", "amy": "analyst", "ada": "admin", "abe": "admin", "olga": "operator"}
    with ctx.db.session() as s:
        made = {name: users_q.create_user(s, name, None, [role]) for name, role in roles.items()}
        return {name: Principal(u.id, u.username, frozenset(u.roles)) for name, u in made.items()}


@pytest.fixture(autouse=True)
def quick_redaction(monkeypatch):
    """Raw-export reasons go through the PII redaction; its Presidio start-up is replaced here."""
    monkeypatch.setattr(approvals_svc, "_redact", lambda ctx, text: text)


def _exchanges(ctx, user: Principal, n: int, *, at=None, raw: str | None = None) -> None:  # noqa: ANN001
    at = at or ctx.now() - timedelta(hours=2)
    with ctx.db.session() as s:
        conv = Conversation(user_id=user.user_id, created_at=at, updated_at=at)
        s.add(conv)
        s.flush()
        for i in range(n):
            x = Exchange(conversation_id=conv.id, user_id=user.user_id, model_version="v1", prompt=f"p{i}",
                         response="r" * 200, status="ok", created_at=at + timedelta(seconds=i))
            s.add(x)
            s.flush()
            if raw is not None:
                s.add(RawText(exchange_id=x.id, direction="prompt", text=raw))


def _export(ctx, who: Principal, what: str = "exchanges", fmt: str = "jsonl") -> exports_svc.ExportResult:  # noqa: ANN001
    spec = ExportSpec(what, fmt)
    return exports_svc.run_export(ctx, who, spec, exports_svc.default_export_path(ctx, spec))


def _raw_export(ctx, people) -> exports_svc.ExportResult:  # noqa: ANN001
    request = approvals_svc.request_raw_export(ctx, people["ada"], ExportSpec("exchanges", "jsonl"),
                                               "legal hold for case 12345")
    approvals_svc.decide_raw_export(ctx, people["abe"], request.id, True, "ok")
    out = exports_svc.default_export_path(ctx, ExportSpec("exchanges", "jsonl"))
    return approvals_svc.run_approved_raw_export(ctx, people["ada"], request.id, out)


def _row(ctx, file_id: int) -> ExportFile:  # noqa: ANN001
    with ctx.db.session(readonly=True) as s:
        row = s.get(ExportFile, file_id)
        assert row is not None
        s.expunge(row)
        return row


def _events(ctx, action: str) -> list[Any]:  # noqa: ANN001
    with ctx.db.session(readonly=True) as s:
        return list(audit_q.iter_events(s, action=action))


# --- the download: streamed, once ---------------------------------------------------------------------------------


@pytest.fixture
def client(ctx, monkeypatch):  # noqa: ANN001
    from starlette.applications import Starlette
    from starlette.routing import Route
    from starlette.testclient import TestClient

    monkeypatch.setattr(server, "_context", lambda: ctx)
    app = Starlette(routes=[Route(server.EXPORT_PATH, server.export_route, methods=["GET"])])
    # What a browser sends on a same-site link (a request with neither it nor Origin is refused).
    with TestClient(app, base_url="http://console.test", headers={"Sec-Fetch-Site": "same-origin"}) as c:
        yield c


def _cookie(ctx, who: Principal) -> str:  # noqa: ANN001
    started = sessions.start(ctx, who, client="ip:127.0.0.1", user_agent="Test")
    redeemed = sessions.redeem(ctx, started.ticket)
    assert redeemed is not None
    return redeemed[0]


def test_the_route_streams_ones_own_export_once_and_then_deletes_it(ctx, people, client) -> None:  # noqa: ANN001
    _exchanges(ctx, people["olga"], 50)
    result = _export(ctx, people["ana"])
    assert result.file_id is not None and result.path.exists() and result.manifest_path.exists()
    data = result.path.read_bytes()
    # No session: refused. Another analyst's session: not theirs, so not found (and the file stays).
    assert client.get(f"/exports/{result.file_id}").status_code == 403
    client.cookies.set(sessions.COOKIE_NAME, _cookie(ctx, people["amy"]))
    assert client.get(f"/exports/{result.file_id}").status_code == 404 and result.path.exists()
    client.cookies.set(sessions.COOKIE_NAME, _cookie(ctx, people["ana"]))
    assert client.get(f"/exports/{result.file_id}", headers={"sec-fetch-site": "cross-site"}).status_code == 403
    response = client.get(f"/exports/{result.file_id}")
    assert response.status_code == 200 and response.content == data
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["content-disposition"] == f'attachment; filename="{result.path.name}"'
    assert response.headers["cache-control"] == "no-store"
    # Sent whole: the file and its manifest are gone, the row says why, both steps are audited.
    assert not result.path.exists() and not result.manifest_path.exists()
    row = _row(ctx, result.file_id)
    assert row.downloaded_at is not None and row.deleted_reason == "downloaded"
    assert [e.details["file_id"] for e in _events(ctx, "audit.export_downloaded")] == [result.file_id]
    (deleted,) = _events(ctx, "audit.export_deleted")
    assert deleted.actor == "ana" and deleted.details["reason"] == "downloaded"
    again = client.get(f"/exports/{result.file_id}")
    assert again.status_code == 404 and "no longer kept" in again.text


def test_a_download_holds_one_chunk_in_memory_not_the_file(ctx, people) -> None:  # noqa: ANN001
    _exchanges(ctx, people["olga"], 5)
    result = _export(ctx, people["ana"])
    assert result.file_id is not None
    size = 16 * 1024 * 1024  # the export's file grown to 16 MiB (writing it is streamed already)
    with result.path.open("ab") as f:
        f.truncate(size)
    with ctx.db.session() as s:
        row = s.get(ExportFile, result.file_id)
        assert row is not None
        row.size = size
    tracemalloc.start()
    try:
        download = files_svc.open_download(ctx, people["ana"], result.file_id)
        received = sum(len(chunk) for chunk in download.chunks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == size == download.size
    assert peak < 2 * 1024 * 1024, peak  # reading the file whole (the old page) peaks above 16 MiB
    assert not result.path.exists()


def test_a_cut_download_keeps_the_file_until_it_expires(ctx, people) -> None:  # noqa: ANN001
    _exchanges(ctx, people["olga"], 5)
    result = _export(ctx, people["ana"])
    assert result.file_id is not None
    download = files_svc.open_download(ctx, people["ana"], result.file_id)
    next(download.chunks)
    download.chunks.close()  # type: ignore[attr-defined]  # the browser went away mid-download
    assert result.path.exists() and _row(ctx, result.file_id).deleted_at is None


# --- expiry, retention, erasure -----------------------------------------------------------------------------------


def test_retention_deletes_export_files_after_export_file_hours(ctx, people, clock) -> None:  # noqa: ANN001
    _exchanges(ctx, people["olga"], 5)
    result = _export(ctx, people["ana"])
    assert result.file_id is not None and result.expires_at == clock.now + timedelta(hours=24)
    assert result.manifest["expires_at"] == result.expires_at.isoformat()
    # A file from before export files had a lifetime (nobody's row), older than the hours: it goes too.
    stray = ctx.settings.export_dir / "exchanges-20250101T000000Z-abcd1234.csv"
    stray.write_text("old")
    old = (clock.now - timedelta(hours=25)).timestamp()
    os.utime(stray, (old, old))
    clock.advance(hours=23)
    retention.apply_retention(ctx)
    assert result.path.exists() and not stray.exists()
    clock.advance(hours=2)
    retention.apply_retention(ctx)
    assert not result.path.exists() and not result.manifest_path.exists()
    assert _row(ctx, result.file_id).deleted_reason == "expired"
    reasons = [(e.actor, e.details["reason"], tuple(e.details["names"])) for e in _events(ctx, "audit.export_deleted")]
    assert reasons == [("system", "expired", (stray.name,)), ("system", "expired", (result.path.name,))]
    with pytest.raises(NotFound, match="no longer kept"):
        files_svc.open_download(ctx, people["ana"], result.file_id)


def test_a_raw_text_export_never_outlives_the_raw_text_retention(ctx, people, clock) -> None:  # noqa: ANN001
    # The oldest exchange's raw text is dropped by retention in one hour: the export holding it goes then too.
    _exchanges(ctx, people["olga"], 3, at=clock.now - timedelta(days=ctx.settings.retention_raw_days, hours=-1),
               raw="+44 20 7946 0958")
    result = _raw_export(ctx, people)
    assert result.file_id is not None and result.expires_at is not None
    assert result.expires_at <= clock.now + timedelta(hours=1)
    assert _row(ctx, result.file_id).raw_text is True
    clock.advance(hours=1, minutes=1)
    retention.apply_retention(ctx)
    assert not result.path.exists() and _row(ctx, result.file_id).deleted_reason == "expired"


def test_an_erasure_deletes_every_export_file_still_kept(ctx, people) -> None:  # noqa: ANN001
    _exchanges(ctx, people["olga"], 5)
    mine = _export(ctx, people["ana"])
    events = _export(ctx, people["amy"], "events", "csv")
    request = retention.request_erasure(ctx, people["ada"], people["olga"].user_id, "asked by the person")
    assert mine.path.exists() and events.path.exists()  # asking erases nothing yet
    retention.decide_erasure(ctx, people["abe"], request.id, True)
    assert not mine.path.exists() and not events.path.exists() and not mine.manifest_path.exists()
    (deleted,) = _events(ctx, "audit.export_deleted")
    assert deleted.actor == "abe" and deleted.details["reason"] == "erasure"
    assert deleted.details["user"] == people["olga"].user_id
    assert sorted(deleted.details["files"]) == sorted([mine.file_id, events.file_id])


# --- how much one analyst may export in an hour -------------------------------------------------------------------


def test_an_analyst_cannot_export_more_rows_an_hour_than_the_setting(ctx, people, clock) -> None:  # noqa: ANN001
    ctx.settings = dataclasses.replace(ctx.settings, export_rows_per_hour=30)
    _exchanges(ctx, people["olga"], 20)
    first = _export(ctx, people["ana"])
    assert first.rows == 20
    # 20 more would pass 30: refused mid-way, nothing kept, audited, with the limit and when it frees up.
    with pytest.raises(exports_svc.ExportQuotaExceeded) as caught:
        _export(ctx, people["ana"])
    message = str(caught.value)
    resets = (clock.now + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M")
    assert "30 rows per person and hour" in message and "LLM_CONSOLE_EXPORT_ROWS_PER_HOUR" in message
    assert "10 rows left" in message and resets in message
    assert sorted(p.name for p in ctx.settings.export_dir.iterdir()) == sorted(
        [first.path.name, first.manifest_path.name])
    failed = _events(ctx, "audit.export_failed")
    assert failed[-1].actor == "ana" and "30 rows per person and hour" in failed[-1].details["message"]
    # Another analyst has their own hour; the shell is not bounded.
    assert _export(ctx, people["amy"]).rows == 20
    # Spent to the limit: refused before anything is read.
    ctx.settings = dataclasses.replace(ctx.settings, export_rows_per_hour=20)
    with pytest.raises(exports_svc.ExportQuotaExceeded, match=r"ana exported \d+ rows in the past hour"):
        _export(ctx, people["ana"], "decisions")
    clock.advance(hours=1, minutes=1)
    assert _export(ctx, people["ana"]).rows == 20


def test_the_shell_is_not_bounded_by_the_hourly_rows(ctx, people, tmp_path: Path) -> None:  # noqa: ANN001
    ctx.settings = dataclasses.replace(ctx.settings, export_rows_per_hour=5)
    _exchanges(ctx, people["olga"], 20)
    result = exports_svc.run_export(ctx, Principal.shell(ctx), ExportSpec("exchanges", "csv"), tmp_path / "all.csv")
    assert result.rows == 20


def test_a_relative_out_path_is_recorded_absolute_so_a_console_elsewhere_deletes_the_right_file(tmp_path, monkeypatch):
    # The shell's `audit export --out x.csv` is recorded, and deleted when it expires, by a console process whose
    # working folder is another one: a relative path would name another file there.
    monkeypatch.chdir(tmp_path)
    path = exports_svc.check_out_path("relative.csv")
    assert path.is_absolute() and path == tmp_path / "relative.csv"
    monkeypatch.chdir(tmp_path.parent)
    assert exports_svc.check_out_path(path) == path  # an absolute one is kept as it is
