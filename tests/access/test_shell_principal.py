"""The command line acts as the shell principal ``shell:<OS user>`` through the same guarded services the pages call.

Every command of the argparse tree (the console's and those packages register) is either refused with the shell
user disabled, without roles, or without a nameable OS user -- changing nothing but the audited refusal -- or one of
the named exceptions (console/cli.py: BOOTSTRAP_COMMANDS, OFFLINE_COMMANDS; a registered command's ``unguarded``).
"""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from console import cli
from console.cli_support import COMMANDS_ENTRY_POINT, command_entry_points, leaf_commands
from console.services import access, auth, retention
from console.services import users as users_svc
from console.services.access import Principal
from console.services.context import AppContext
from console.services.errors import InvalidInput, LoginFailed, SeparationOfDuties
from console.settings import Settings
from db import audit as audit_q
from db import users as users_q
from db.config import DbConfig
from db.database import Database
from db.tables import Base
from tests.conftest import STRONG_PASSWORD, console_env

SHELL = f"shell:{access.os_user()}"
REASON = "the person asked for it in writing"

# What each guarded command is given: valid arguments, so that only the access layer can refuse it. A new command
# lands here (with arguments that would otherwise work) or, when it touches no console data, among the exceptions.
ARGS: dict[str, tuple[list[str], str]] = {
    "user add": (["bob", "--role", "operator", "--password-stdin"], STRONG_PASSWORD + "\n"),
    "user list": ([], ""),
    "user unlock": (["admin"], ""),
    "user reset-password": (["admin", "--password-stdin"], "a brand new long password\n"),
    "model list": ([], ""),
    "model register": (["v-x", "org/model"], ""),
    "model serve": (["v-x", "--reason", "the first version"], ""),
    "model rollback": (["--reason", "answers got worse"], ""),
    "model protect": (["staging", "--reason", "QA reads it"], ""),
    "model restart": (["--reason", "the engine looks stuck"], ""),
    "model alias": (["v-x", "staging", "--reason", "keep it around"], ""),
    "model eval": (["v-x"], ""),
    "model retire": (["v-x", "--reason", "superseded"], ""),
    "audit verify": ([], ""),
    "audit checkpoint": ([], ""),
    "audit rotate-key": (["--reason", "the yearly rotation of the key"], ""),
    "audit export": (["--what", "events", "--format", "jsonl", "--out", "{data}/events.jsonl"], ""),
    "alerts rotate-key": (["--reason", "the yearly rotation of the key"], ""),
    "retention apply": ([], ""),
    "erase request": (["--user", "admin", "--reason", REASON, "--yes"], ""),
    "erase list": ([], ""),
    "metrics rebuild": ([], ""),
}


def _commands() -> dict[str, object]:
    return dict(leaf_commands(cli.build_parser()))


def _unguarded() -> dict[str, str]:
    return {path: leaf.get_default("unguarded") for path, leaf in leaf_commands(cli.build_parser()).items()
            if leaf.get_default("unguarded") is not None}


def test_every_command_is_guarded_or_a_named_exception_with_its_reason():
    commands, unguarded = _commands(), _unguarded()
    assert set(cli.BOOTSTRAP_COMMANDS) == {"init", "build-demo-models", "run", "db copy"}
    assert set(cli.UNGUARDED_COMMANDS) <= set(unguarded)
    assert all(isinstance(why, str) and len(why) > 20 for why in unguarded.values())
    # Only benchmarks (registered by bench/cli.py, each on a throwaway database) add exceptions of their own.
    assert sorted(set(unguarded) - set(cli.UNGUARDED_COMMANDS)) == sorted(p for p in commands if p.startswith("bench "))
    assert sorted(set(commands) - set(unguarded)) == sorted(ARGS)


def test_the_benchmarks_register_their_commands_through_the_entry_point():
    [entry] = [e for e in command_entry_points() if e.name == "bench"]
    assert (entry.group, entry.value) == (COMMANDS_ENTRY_POINT, "bench.cli:register")
    assert {p for p in _commands() if p.startswith("bench ")} == {
        "bench engine", "bench switch", "bench safety", "bench review", "bench dashboard", "bench audit",
        "bench canary", "bench backtest"}


# --- one installation, initialised once, copied for each test ----------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("shell") / "data"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in console_env(data, LLM_CONSOLE_ADMIN_PASSWORD=STRONG_PASSWORD).items():
            mp.setenv(key, value)
        assert cli.main(["init", "--skip-models"]) == 0  # a bootstrap command: no principal yet
        ctx = _ctx()
        Principal.shell(ctx)  # the first command creates the shell user; the tests start after that
        ctx.db.dispose()
    return data


@pytest.fixture
def data(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> Path:  # noqa: ANN001
    copy = tmp_path / "data"
    shutil.copytree(template, copy)
    for key, value in console_env(copy, LLM_CONSOLE_ADMIN_PASSWORD=STRONG_PASSWORD).items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    return copy


def _ctx() -> AppContext:
    settings = Settings.from_env()
    return AppContext(settings, Database(DbConfig(url=settings.database_url)))


def _principal(ctx: AppContext, username: str) -> Principal:
    with ctx.db.session(readonly=True) as s:
        user = users_q.get_user_by_username(s, username)
        assert user is not None
        return Principal(user.id, user.username, frozenset(user.roles), user.session_epoch)


def _snapshot(ctx: AppContext, data: Path) -> dict[str, object]:
    """Every table's rows (the audit chain apart), and the files in the data directory."""
    rows: dict[str, object] = {}
    with ctx.db.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            if table.name not in ("audit_events", "audit_head"):
                rows[table.name] = sorted(map(repr, conn.execute(sa.select(table)).all()))
        rows["events"] = [tuple(r) for r in conn.execute(sa.text("SELECT seq, action, actor FROM audit_events"))]
    rows["files"] = {p.name: p.read_bytes() for p in data.iterdir()
                     if p.is_file() and not p.name.startswith("console.db")}
    return rows


def _run(path: str, data: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    args, stdin = ARGS[path]
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return cli.main([*path.split(), *(a.format(data=data) for a in args)])


def _refused_and_nothing_else(ctx: AppContext, data: Path, before: dict[str, object], capsys, *, actor: str,
                              action: str, reason: str, message: str) -> None:  # noqa: ANN001
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llm-console: error:") and message in err[0], err
    after = _snapshot(ctx, data)
    new_events = after.pop("events")[len(before["events"]):]  # type: ignore[index]
    assert {k: v for k, v in before.items() if k != "events"} == after
    assert [(a, who) for _, a, who in new_events] == [("access.denied", actor)]
    with ctx.db.session(readonly=True) as s:
        denial = audit_q.latest_event(s, "access.denied")
    assert denial is not None and denial.details["action"] == action and denial.details["reason"] == reason


@pytest.mark.parametrize("path", sorted(ARGS))
def test_a_disabled_shell_user_is_refused_every_command_audited_and_nothing_changes(path, data, monkeypatch,
                                                                                   capsys):
    ctx = _ctx()
    shell = _principal(ctx, SHELL)
    users_svc.set_disabled(ctx, _principal(ctx, "admin"), shell.user_id, True)  # on the Users page
    before = _snapshot(ctx, data)
    assert _run(path, data, monkeypatch) == 1
    _refused_and_nothing_else(ctx, data, before, capsys, actor=SHELL, action=f"llm-console {path}",
                              reason="shell user disabled", message=f"{SHELL}, which an admin disabled")


def test_the_refusal_of_a_disabled_shell_user_says_how_to_enable_it_again(data, monkeypatch, capsys):
    ctx = _ctx()
    admin = _principal(ctx, "admin")
    shell = _principal(ctx, SHELL)
    users_svc.set_disabled(ctx, admin, shell.user_id, True)
    assert _run("user list", data, monkeypatch) == 1
    assert capsys.readouterr().err == (
        f"llm-console: error: The command line acts as {SHELL}, which an admin disabled; every command but the "
        f"set-up ones (init) is refused. An admin re-enables it on the Users page (Edit: choose {SHELL}, then "
        "'Enable account').\n")
    users_svc.set_disabled(ctx, admin, shell.user_id, False)
    assert _run("user list", data, monkeypatch) == 0
    assert f"{SHELL}\tadmin\tactive\t\n" in capsys.readouterr().out
    assert cli.main(["init", "--skip-models"]) == 0  # bootstrap runs whatever the shell user's state


@pytest.mark.parametrize("path", sorted(ARGS))
def test_a_shell_user_without_roles_is_refused_by_the_guarded_service_of_every_command(path, data, monkeypatch,
                                                                                       capsys):
    """Refused by ``authorize``, not by the shell's own check: so each command calls a @requires service."""
    ctx = _ctx()
    users_svc.set_roles(ctx, _principal(ctx, "admin"), _principal(ctx, SHELL).user_id, [])
    before = _snapshot(ctx, data)
    assert _run(path, data, monkeypatch) == 1
    err = capsys.readouterr().err
    assert "Your roles (no roles) do not allow" in err, err
    after = _snapshot(ctx, data)
    new_events = after.pop("events")[len(before["events"]):]  # type: ignore[index]
    assert {k: v for k, v in before.items() if k != "events"} == after
    assert [(a, who) for _, a, who in new_events] == [("access.denied", SHELL)]


@pytest.mark.parametrize("path", sorted(ARGS))
def test_an_os_user_without_a_name_is_refused_every_command(path, data, monkeypatch, capsys):
    monkeypatch.setattr(access, "os_user", lambda: None)  # a uid with no account entry
    ctx = _ctx()
    before = _snapshot(ctx, data)
    assert _run(path, data, monkeypatch) == 1
    _refused_and_nothing_else(ctx, data, before, capsys, actor=access.UNKNOWN_SHELL_ACTOR,
                              action=f"llm-console {path}", reason="unknown OS user",
                              message="Cannot tell which operating-system user runs this command")


# --- the shell user -------------------------------------------------------------------------------------------------


def test_the_first_command_creates_the_shell_user_who_is_an_admin_without_password_or_email(tmp_path, monkeypatch,
                                                                                            capsys):
    for key, value in console_env(tmp_path, LLM_CONSOLE_ADMIN_PASSWORD=STRONG_PASSWORD).items():
        monkeypatch.setenv(key, value)
    assert cli.main(["init", "--skip-models"]) == 0
    ctx = _ctx()
    with ctx.db.session(readonly=True) as s:
        assert users_q.get_user_by_username(s, SHELL) is None  # init acts for nobody
    monkeypatch.setattr(sys, "stdin", io.StringIO(STRONG_PASSWORD + "\n"))
    assert cli.main(["user", "add", "bob", "--role", "operator", "--password-stdin"]) == 0
    with ctx.db.session(readonly=True) as s:
        shell = users_q.get_user_by_username(s, SHELL)
        assert shell is not None
        assert (shell.roles, shell.password_hash, shell.email, shell.disabled) == (
            access.SHELL_ROLES, None, None, False)
        created = [(e.actor, e.details["username"]) for e in audit_q.iter_events(s, action="user.create")]
        [bob_created] = [e for e in audit_q.iter_events(s, action="user.create") if e.details["username"] == "bob"]
    assert created == [("system", "admin"), ("system", SHELL), (SHELL, "bob")]
    assert (bob_created.actor, bob_created.actor_id) == (SHELL, shell.id)
    capsys.readouterr()
    assert cli.main(["user", "list"]) == 0
    assert f"{SHELL}\tadmin\tactive\t\n" in capsys.readouterr().out  # on the Users page and in the listing


def test_the_shell_user_cannot_sign_in_or_be_given_a_password(data):
    ctx = _ctx()
    shell = _principal(ctx, SHELL)
    for password in ("", STRONG_PASSWORD):
        with pytest.raises(LoginFailed):
            auth.login(ctx, SHELL, password)
    with pytest.raises(InvalidInput, match="never signs in"):
        users_svc.reset_password(ctx, _principal(ctx, "admin"), shell.user_id, STRONG_PASSWORD)


@pytest.mark.parametrize("name", [SHELL, "shell:alice", "shell-alice:x"])
def test_no_console_account_can_take_a_shell_name(data, name):
    ctx = _ctx()
    with pytest.raises(InvalidInput, match="A username has"):
        users_svc.add_user(ctx, _principal(ctx, "admin"), name, STRONG_PASSWORD, ["operator"])


@pytest.mark.parametrize("a,b,same", [
    ("alice", "shell:alice", True), ("shell:alice", "alice", True), ("alice", "alice", True),
    ("shell:alice", "shell:alice", True), ("alice", "shell:bob", False), ("shell:alice", "bob", False),
    ("alice", "shell:Alice", True), ("", "shell:", False),
], ids=lambda v: str(v))
def test_same_person_pairs_a_console_account_with_the_shell_of_its_os_user(a, b, same):
    assert access.same_person(a, b) is same


def test_a_console_admin_named_like_the_os_user_cannot_approve_the_shells_erasure_request(data, monkeypatch,
                                                                                          capsys):
    ctx = _ctx()
    admin = _principal(ctx, "admin")
    users_svc.add_user(ctx, admin, "olga", STRONG_PASSWORD, ["operator"])
    me = users_svc.add_user(ctx, admin, access.os_user() or "", STRONG_PASSWORD, ["admin"])
    me_principal = _principal(ctx, me.username)
    assert cli.main(["erase", "request", "--user", "olga", "--reason", REASON, "--yes"]) == 0
    [request] = retention.list_erasure_requests(ctx, admin, "pending")
    assert request.requested_by == SHELL
    with pytest.raises(SeparationOfDuties):
        retention.decide_erasure(ctx, me_principal, request.id, True)
    with ctx.db.session(readonly=True) as s:
        denial = audit_q.latest_event(s, "access.denied")
    assert denial is not None and (denial.actor, denial.details["reason"]) == (me.username, "separation of duties")
    assert retention.decide_erasure(ctx, admin, request.id, False).status == "rejected"  # another admin may


def test_the_shell_cannot_ask_to_erase_the_content_of_its_own_os_users_account(data, capsys):
    ctx = _ctx()
    users_svc.add_user(ctx, _principal(ctx, "admin"), access.os_user() or "", STRONG_PASSWORD, ["operator"])
    assert cli.main(["erase", "request", "--user", access.os_user() or "", "--reason", REASON, "--yes"]) == 1
    assert "your own content" in capsys.readouterr().err


def test_a_console_admin_named_like_the_os_user_cannot_acknowledge_the_shells_break_glass_move(data, tiny_model_dir,
                                                                                              capsys):
    """Issue 21 left this open: the OS user who broke the glass in the shell, signed in to the console as an admin
    under the same name, would acknowledge their own move. The move records the shell user, who is that person."""
    from console.services import registry

    other = shutil.copytree(tiny_model_dir, data / "other")
    assert cli.main(["model", "register", "v-a", str(tiny_model_dir)]) == 0
    assert cli.main(["model", "register", "v-b", str(other)]) == 0
    assert cli.main(["model", "serve", "v-a", "--reason", "the first version"]) == 0
    assert cli.main(["model", "serve", "v-b", "--reason", "better answers",
                     "--break-glass", "the approvers are away"]) == 0
    ctx = _ctx()
    admin = _principal(ctx, "admin")
    me = _principal(ctx, users_svc.add_user(ctx, admin, access.os_user() or "", STRONG_PASSWORD, ["admin"]).username)
    [move] = registry.unacknowledged_emergencies(ctx, admin)
    assert (move.actor, move.actor_id, move.break_glass) == (SHELL, _principal(ctx, SHELL).user_id, True)
    with pytest.raises(SeparationOfDuties, match="nobody acknowledges their own emergency move"):
        registry.acknowledge_emergency(ctx, me, move.id)
    with ctx.db.session(readonly=True) as s:
        denial = audit_q.latest_event(s, "access.denied")
    assert denial is not None and (denial.actor, denial.details["action"]) == (me.username, registry.ACK_RULE.name)
    registry.acknowledge_emergency(ctx, admin, move.id)  # another admin may
    assert registry.unacknowledged_emergencies(ctx, admin) == []


def test_a_command_run_before_the_first_admin_exists_does_not_stop_init_from_creating_it(tmp_path, monkeypatch):
    # The shell's own row is no account anyone signs in with: the first admin is still created after it.
    for key, value in console_env(tmp_path, LLM_CONSOLE_ADMIN_PASSWORD=STRONG_PASSWORD).items():
        monkeypatch.setenv(key, value)
    ctx = _ctx()
    ctx.db.migrate()
    Principal.shell(ctx)
    created = users_svc.bootstrap_admin(ctx, "first-admin", STRONG_PASSWORD)
    assert created is not None and created.username == "first-admin" and "admin" in created.roles
    assert users_svc.bootstrap_admin(ctx, "second", STRONG_PASSWORD) is None  # once there is an account, never again
    with ctx.db.session(readonly=True) as s:
        assert sorted(u.username for u in users_q.list_users(s)) == sorted(["first-admin", SHELL])
    ctx.db.dispose()
