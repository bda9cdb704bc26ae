"""``llm-console``: set up, run, manage users and model versions, verify the audit log, benchmark."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from console.cli_support import (
    CliError,
    Parser,
    leaf_commands,
    open_context,
    positive,
    registered_commands,
    shell_context,
)
from console.services.access import ALL_ROLES
from console.services.registry import DTYPES, ENGINE_ARGS_HELP, SERVER_KEY_HELP
from console.settings import PROJECT_ROOT, Settings, SettingsError, mask_url
from engine.types import BACKENDS

if TYPE_CHECKING:
    from engine.evals.suite import Suite

# Every other command acts as the shell principal (console/cli_support.py: shell_context) and calls the same
# @requires-guarded services the pages call. These are the exceptions, and why; tests/access/test_shell_principal.py
# reads them (a new command is guarded, or named here).
BOOTSTRAP_COMMANDS: dict[str, str] = {
    "init": "creates and migrates the database, the audit signing key and the first admin: it must work on an empty "
            "database, before any account exists",
    "build-demo-models": "started by `run` in the background to build the demo versions `init` recorded as wanted "
                         "(registered by the system)",
    "run": "starts the console itself; every action in it is checked for the user signed in",
    "db copy": "copies the SQLite file as a whole (whoever runs it can already read every row) into an empty "
               "PostgreSQL database that has no accounts yet; it writes nothing to the source and no event to the "
               "copy, whose audit chain must end exactly where the source's does",
}
OFFLINE_COMMANDS: dict[str, str] = {
    "settings": "prints the settings read from the environment; opens no database",
    "eval safety": "measures the scanners on generated or given labelled texts; opens no database",
    "eval thresholds": "measures toxicity thresholds on the demo corpus and given texts; opens no database",
}
UNGUARDED_COMMANDS: dict[str, str] = {**BOOTSTRAP_COMMANDS, **OFFLINE_COMMANDS}


class _Progress:
    """Print build progress about every 10% (training reports every few steps)."""

    def __init__(self) -> None:
        self.last = -1.0

    def __call__(self, stage: str, fraction: float) -> None:
        if fraction < self.last:  # the next model's build started
            self.last = -1.0
        if fraction - self.last >= 0.1 or fraction >= 1.0 or not stage.startswith("training"):
            self.last = fraction
            print(f"  {stage} ({fraction:.0%})", flush=True)


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import demo_builds
    from console.services import users as users_svc

    ctx = open_context(settings)
    print(f"database ready: {mask_url(settings.database_url)} (revision {ctx.db.current_revision()})")
    from console.services import audit as audit_svc

    audit_svc.checkpoint(ctx, "init")  # creates the signing key on first use
    print(f"audit checkpoints are signed with {settings.audit_key_file} (owner-only; back it up apart from the "
          f"database) and also written to {settings.audit_checkpoint_file}")
    from console.services import serving as serving_svc

    demo_builds.record_demo_models(ctx, wanted=not args.skip_models, by="init")
    if args.skip_models:
        print("demo models: none wanted (`llm-console run` builds none); register and serve your own with "
              "`llm-console model register` and `llm-console model serve`")
    elif args.wait_for_all:
        print(f"building every demo model now in {settings.models_dir} (built once, then cached)")
        for name in demo_builds.ensure_demo_versions(ctx, progress=_Progress()):
            print(f"registered model version {name}")
    else:
        pending = demo_builds.pending_demo_versions(ctx)
        if pending:
            # Nothing is trained here: `run` builds them in the background while the console starts, so the
            # console's own start-up (scanners, vLLM) overlaps the training of the version it serves.
            print(f"demo models: {', '.join(pending)} will be built in the background by `llm-console run` "
                  f"(cached in {settings.models_dir}; log: {settings.data_dir / demo_builds.BUILD_LOG})")
            served = demo_builds.served_demo_version(ctx)
            if served in pending:
                print(f"  the console starts at once and serves {served} as soon as it is built (the Chat page "
                      "says how far it is and opens by itself); the others follow at a lower priority")
            print("  to build them all now instead, run `llm-console init --wait-for-all`")
        else:
            print("demo models: all built and registered")
    if not args.skip_models:
        production = serving_svc.ensure_production(ctx)
        if production:
            print(f"{production} holds the production alias (the version the console serves)")
    generated = settings.admin_password is None
    if settings.admin_password is None:
        from console.services.auth import generate_password

        password = generate_password()
    else:
        password = settings.admin_password
    admin = users_svc.bootstrap_admin(ctx, settings.admin_username, password)
    if admin is not None:
        print(f"created the first admin account {admin.username!r}")
        if generated:
            print(f"  its password (shown only this once): {password}")
        else:
            print("  its password is the one in LLM_CONSOLE_ADMIN_PASSWORD")
    return 0


def _check_sso_secrets(*paths: Path) -> None:
    """Refuse (one line) to start with single sign-on configured and a weak ``cookie_secret``.

    Streamlit reads the global secrets file, then the project's (which wins); so does this check.
    """
    import tomllib

    from console.services.auth import sso_config_problem

    section: object = None
    for path in paths:
        if not path.is_file():
            continue
        try:
            secrets = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise CliError(f"cannot read {path}: {exc}") from None
        if "auth" in secrets:
            section = secrets["auth"]
    problem = sso_config_problem(section if isinstance(section, dict) else None)
    if problem:
        raise CliError(problem)


def cmd_build_demo(args: argparse.Namespace, settings: Settings) -> int:
    """The background build `run` starts: build and register the demo versions not registered yet (the served one
    first, given production at once; the rest at a lower CPU priority)."""
    from console.services import demo_builds

    for name in demo_builds.build_pending_demo_versions(open_context(settings), progress=_Progress()):
        print(f"registered model version {name}", flush=True)
    return 0


def _encrypt_webhook_secrets(ctx: Any) -> None:
    """Webhooks stored in plaintext before 0029 are encrypted with the secrets key; a missing key is a warning (the
    alerts to those webhooks fail and say why; the rest of the console works)."""
    from console.services import secret_box
    from console.services.errors import ConsoleError

    try:
        if done := secret_box.encrypt_stored_secrets(ctx):
            print(f"encrypted the URL and secret of {done} webhook(s) with {ctx.settings.secrets_key_file}", flush=True)
    except ConsoleError as exc:
        print(f"warning: {exc}", file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace, settings: Settings) -> NoReturn:
    from pathlib import Path

    _check_sso_secrets(Path.home() / ".streamlit" / "secrets.toml", PROJECT_ROOT / ".streamlit" / "secrets.toml")
    from console.services import audit as audit_svc
    from console.services import demo_builds

    ctx = open_context(settings)
    audit_svc.check_key(ctx)  # a missing audit key stops the start with the file's name and the fix
    _encrypt_webhook_secrets(ctx)
    building = demo_builds.start_background_demo_build(
        ctx, [sys.executable, "-m", "console.cli", "build-demo-models"])
    if building:
        print(f"building {', '.join(building)} in the background (the Models page shows its progress; log: "
              f"{settings.data_dir / demo_builds.BUILD_LOG})", flush=True)
    # console.server starts Streamlit on app.py and starts loading the model before the first browser connects.
    argv = [sys.executable, "-m", "console.server", "--server.port", str(args.port),
            "--server.address", args.address]
    print(f"starting the console on http://{args.address}:{args.port}", flush=True)
    os.chdir(PROJECT_ROOT)  # Streamlit reads .streamlit/config.toml from the working directory
    os.execv(sys.executable, argv)


def _read_password(args: argparse.Namespace) -> str | None:
    if getattr(args, "sso", False):
        return None
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            raise CliError("the passwords differ")
        return first
    hint = ", or use --sso" if hasattr(args, "sso") else ""
    raise CliError(f"give the password on standard input with --password-stdin{hint}")


def cmd_user_add(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import users as users_svc

    ctx, me = shell_context(args, settings)
    user = users_svc.add_user(ctx, me, args.username, _read_password(args), args.role, email=args.email)
    print(f"created user {user.username} with roles {', '.join(user.roles)}")
    return 0


def cmd_user_list(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import users as users_svc

    ctx, me = shell_context(args, settings)
    for u in users_svc.list_users(ctx, me):
        state = "disabled" if u.disabled else "active"
        print(f"{u.username}\t{','.join(sorted(u.roles))}\t{state}\t{u.email or ''}")
    return 0


def cmd_user_unlock(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import users as users_svc

    ctx, me = shell_context(args, settings)
    user = users_svc.unlock(ctx, me, users_svc.find_user(ctx, me, args.username).id)
    print(f"unlocked {user.username}: failed sign-ins cleared")
    return 0


def cmd_user_reset_password(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import users as users_svc

    ctx, me = shell_context(args, settings)
    target = users_svc.find_user(ctx, me, args.username)
    password = _read_password(args)
    assert password is not None  # no --sso here
    user = users_svc.reset_password(ctx, me, target.id, password)
    print(f"new password set for {user.username}; the account is unlocked and its open sessions end")
    return 0


def cmd_model_list(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import registry
    from console.services import serving as serving_svc

    ctx, shell = shell_context(args, settings)
    versions = registry.list_versions(ctx, shell)
    live = serving_svc.desired_state(ctx).version
    if args.json:
        print(json.dumps([{"name": v.name, "backend": v.backend, "source": v.source, "revision": v.revision,
                           "dtype": v.dtype, "quantization": v.quantization, "max_model_len": v.max_model_len,
                           "engine_args": v.engine_args, "server_urls": list(v.server_urls),
                           "server_model": v.server_model, "aliases": list(v.aliases), "retired": v.retired,
                           "fingerprint": v.fingerprint, "live": v.name == live} for v in versions], indent=2))
        return 0
    if not versions:
        print("no model versions registered; run `llm-console init` or `llm-console model register`")
    for v in versions:
        marker = "*" if v.name == live else " "
        where = (f"{v.server_model} at {', '.join(v.server_urls)}" if v.backend == "server"
                 else f"{v.source}\t{v.dtype or 'auto'}")
        print(f"{marker} {v.name}\t{v.stage}\t{v.backend}\t{where}"
              f"\tctx={v.max_model_len or 'model default'}\t{json.dumps(v.engine_args) if v.engine_args else ''}")
    return 0


def cmd_model_register(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import registry

    if args.source and args.source_option and args.source != args.source_option:
        raise CliError("give SOURCE once: as the argument or as --source")
    source = args.source or args.source_option
    if args.backend == "server":
        if source:
            raise CliError("a server version has no SOURCE (the server loads its model): give its servers with --url")
    elif args.url or args.server_model:
        raise CliError("--url and --server-model are for --backend server")
    elif not source:
        raise CliError("give SOURCE: a local model directory or a hub id (or --backend server with --url)")
    ctx, shell = shell_context(args, settings)
    v = registry.register(ctx, shell, name=args.name, source=source, revision=args.revision, dtype=args.dtype,
                          max_model_len=args.max_model_len, engine_args=args.engine_args,
                          description=args.description, quantization=args.quantization, base=args.base,
                          backend=args.backend, server_urls=args.url, server_model=args.server_model)
    where = (f"{v.server_model} at {', '.join(v.server_urls)}, {v.max_model_len} tokens of context"
             if v.backend == "server" else v.source)
    print(f"registered model version {v.name} ({v.backend}) from {where}"
          + (f" (fingerprint {v.fingerprint[:12]})" if v.fingerprint else ""))
    return 0


def _move_reason(args: argparse.Namespace) -> str:
    reason = args.reason or args.break_glass
    if not reason:
        raise CliError("give --reason (recorded in the audit log)")
    return str(reason)


def _glass_warning(args: argparse.Namespace) -> None:
    if args.break_glass:
        print("break glass: recorded as model.break_glass and shown to every admin until another admin "
              "acknowledges it (Promotions page)", file=sys.stderr)


def cmd_model_serve(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import serving as serving_svc

    name = serving_svc.serve(*shell_context(args, settings), args.name, _move_reason(args), args.break_glass)
    _glass_warning(args)
    print(f"{name} now holds production; running consoles switch to it within seconds")
    return 0


def cmd_model_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import promotion as promotion_svc

    done = promotion_svc.rollback(*shell_context(args, settings), args.reason)
    print(f"emergency rollback: production returns from {done.from_version} to {done.to_version}; recorded as "
          "model.emergency_rollback and shown to every admin until an admin acknowledges it")
    return 0


def cmd_model_protect(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import registry

    if args.off:
        if not args.break_glass:
            raise CliError("removing an alias's protection needs --break-glass REASON (recorded, and shown to every "
                           "admin until another admin acknowledges it)")
        changed = registry.unprotect_alias(*shell_context(args, settings), args.alias, args.break_glass)
        _glass_warning(args)
        print(f"{args.alias} is no longer protected" if changed else f"{args.alias} was not protected")
        return 0
    if args.break_glass:
        raise CliError("--break-glass is only for --off")
    if not args.reason:
        raise CliError("give --reason (recorded in the audit log)")
    changed = registry.protect_alias(*shell_context(args, settings), args.alias, args.reason)
    print(f"{args.alias} is protected: once a version holds it, it moves only through an approved promotion"
          if changed else f"{args.alias} was already protected")
    return 0


def cmd_model_restart(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import serving as serving_svc

    generation = serving_svc.request_restart(*shell_context(args, settings), args.reason)
    print(f"restart requested (generation {generation}); running consoles restart their engine within seconds")
    return 0


def cmd_model_alias(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import registry

    alias = registry.set_alias(*shell_context(args, settings), args.name, args.alias, _move_reason(args),
                               args.break_glass)
    _glass_warning(args)
    print(f"{alias} now points at {args.name}")
    return 0


def cmd_model_eval(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import evaluation as eval_svc
    from console.services import moderation

    ctx, shell = shell_context(args, settings)
    suite: str | Suite | None = args.suite
    if args.suite_file:
        from pathlib import Path

        path = Path(args.suite_file)
        if not path.is_file():
            raise CliError(f"no such suite file: {path}")
        from engine.evals.suite import SuiteError, parse_suite

        try:
            suite = parse_suite(path.stem, path.read_bytes(), "csv" if path.suffix.lower() == ".csv" else "jsonl")
        except SuiteError as exc:
            raise CliError(str(exc).replace("\n", "; ")) from None
    if settings.safety_enabled:  # every answer is scanned, as on the page
        stack = moderation.build_safety_stack(settings, ctx.db)
        ctx.safety_factory = lambda: stack
    report = eval_svc.run_evaluation_blocking(ctx, shell, args.name, suite)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "answers"}, default=str))
    else:
        latency = report.get("latency") or {}
        print(f"{args.name} on {report.get('suite')}: {report.get('n')} prompts; topic accuracy "
              f"{report.get('topic_accuracy')}, declined off-topic {report.get('decline_rate')}, flagged "
              f"{report.get('flag_rate_any')}, p95 first token {latency.get('ttft_p95_ms')} ms, "
              f"errors {report.get('errors')}")
    return 0


def cmd_model_retire(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import registry

    name = registry.retire(*shell_context(args, settings), args.name, args.reason)
    print(f"{name} is retired")
    return 0


def cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import audit as audit_svc
    from console.services.errors import ConsoleError

    ctx, me = shell_context(args, settings)
    try:
        report = audit_svc.verify(ctx, me, [Path(p) for p in args.checkpoints], trigger="cli")
    except ConsoleError as exc:
        raise CliError(str(exc)) from None
    for warning in report.warnings:
        print(f"warning: {warning}")
    anchored = (f"; {report.checkpoints_checked} signed checkpoint(s) match, events 1-{report.anchored_seq} anchored"
                if report.checkpoints_checked else "; no signed checkpoint to compare with")
    if report.ok:
        print(f"audit chain intact: {report.checked} events verified{anchored}")
        return 0
    print(f"audit chain BROKEN ({report.kind}) at event {report.first_bad_seq}: {report.reason}")
    return 1


def cmd_audit_checkpoint(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import audit as audit_svc
    from console.services.errors import ConsoleError

    ctx, me = shell_context(args, settings)
    try:
        if args.export:
            out = Path(args.export)
            if out.exists():
                raise CliError(f"{out} exists; choose a new file")
            data = audit_svc.checkpoints_file(ctx, me)  # signs one for the chain as it is now; audited
            with out.open("xb") as f:
                f.write(data)
            count = data.count(b"\n")
            print(f"{count} checkpoints written to {out} (keep it somewhere the database's owners "
                  "cannot write; `llm-console audit verify --checkpoints FILE` checks the log against it)")
            return 0
        cp = audit_svc.sign_checkpoint(ctx, me)
    except (ConsoleError, OSError) as exc:
        raise CliError(str(exc)) from None
    print(f"checkpoint signed: {cp.seq} events, head {cp.head_hash[:16]}..., {cp.ts.isoformat()}")
    return 0


def cmd_audit_rotate_key(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import audit as audit_svc

    ctx, me = shell_context(args, settings)
    details = audit_svc.rotate_key(ctx, me, args.reason)
    kept = (f"the old key {details['old_key_id']} is kept in {settings.audit_key_file.name}.retired, so the "
            "checkpoints it signed still verify" if details["old_key_kept"] else "there was no old key")
    lost = (f"; recorded as lost: {', '.join(details['lost_key_ids'])} (their checkpoints before the rotation are "
            "accepted unchecked)" if details["lost_key_ids"] else "")
    print(f"audit key rotated: new key {details['new_key_id']} in {settings.audit_key_file}; {kept}{lost}. "
          "Back the new key up apart from the database.")
    return 0


def cmd_alerts_rotate_key(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import secret_box

    ctx, me = shell_context(args, settings)
    details = secret_box.rotate_key(ctx, me, args.reason)
    print(f"secrets key rotated: new key {details['new_key_id']} in {settings.secrets_key_file}; "
          f"{details['webhooks']} webhook(s) re-encrypted; the old key {details['old_key_id']} is kept in "
          f"{details['retired_file']}. Copy the new key file to every replica, and back it up apart from the database.")
    return 0


def cmd_retention_apply(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import retention

    ctx, me = shell_context(args, settings)
    result = retention.run_retention(ctx, me, dry_run=args.dry_run)
    verb = "would erase" if result.dry_run else "erased"
    print(f"retention {verb}: {result.exchanges} exchange texts (older than {result.text_cutoff:%Y-%m-%d %H:%M} UTC), "
          f"{result.raw_texts} raw texts (older than {result.raw_cutoff:%Y-%m-%d %H:%M} UTC), "
          f"{result.conversations} conversation titles, {result.review_notes} review item notes")
    return 0


def cmd_erase_request(args: argparse.Namespace, settings: Settings) -> int:
    """Ask for an erasure; another admin approves it on the Users page, which carries it out."""
    from console.services import retention
    from console.services import users as users_svc

    ctx, me = shell_context(args, settings)
    # Checks the name, the reason and the legal basis and counts, changing nothing: bad input stops here.
    user_id = users_svc.find_user(ctx, me, args.user).id
    preview = retention.preview_erasure_of(ctx, me, user_id, args.legal_basis)
    retention.check_reason(args.reason)
    held = (f"; kept, being younger than six months: {preview.held_exchanges} exchanges and "
            f"{preview.held_events} audit events (a legal basis reaches them)" if preview.floor is not None else "")
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError("add --yes to ask without a question (standard input is not a terminal)")
        print(f"An approved erasure erases for {preview.username}: {retention.ERASES}.\nIt keeps "
              f"{retention.KEEPS}.\nFound now: {preview.summary}{held}. Once approved it cannot be undone.")
        if input(f"Type the username ({preview.username}) to ask for it: ").strip() != preview.username:
            raise CliError("not confirmed; nothing was asked for")
    request = retention.request_erasure(ctx, me, user_id, args.reason, args.legal_basis)
    print(f"erasure request #{request.id} for {request.username} (user id {request.user_id}) is waiting: another "
          f"admin approves it on the Users page, which erases {preview.summary}{held}")
    return 0


def cmd_erase_list(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import retention

    ctx, me = shell_context(args, settings)
    requests = retention.list_erasure_requests(ctx, me, args.status)
    if not requests:
        print("no erasure requests")
    for r in requests:
        done = f" by {r.decided_by} at {r.decided_at:%Y-%m-%d %H:%M} UTC" if r.decided_at else ""
        basis = "legal basis given" if r.legal_basis else "six-month floor"
        counts = f": {r.summary}" if r.status == "done" else ""
        print(f"#{r.id} {r.status}{done}: user {r.username} (id {r.user_id}), asked by {r.requested_by} at "
              f"{r.created_at:%Y-%m-%d %H:%M} UTC, {basis}{counts}")
    return 0


def cmd_audit_export(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from console.services import exports as exports_svc

    spec = exports_svc.ExportSpec(args.what, args.format, exports_svc.ExportFilter(
        since=args.since, until=args.until, actor=args.actor, action_prefix=args.action_prefix,
        model_version=args.model_version, include_synthetic=args.include_synthetic))
    spec = exports_svc.validated_spec(spec)  # bad arguments: one line, before the database is touched
    exports_svc.check_out_path(Path(args.out))
    ctx, me = shell_context(args, settings)
    result = exports_svc.run_export(ctx, me, spec, Path(args.out))
    print(f"exported {result.rows} rows of {spec.what} as {spec.format}")
    print(f"file: {result.path}")
    print(f"manifest: {result.manifest_path}")
    print(f"sha256: {result.sha256}")
    return 0


def _iso_time(value: str) -> Any:
    from datetime import UTC, datetime

    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO date or time (2026-11-26 or "
                                         "2026-11-26T09:00:00+00:00)") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed  # no zone given: UTC


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    for env, value, help_text in settings.describe():
        print(f"{env}={value}\n    {help_text}")
    return 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _print_public_report(result: dict[str, Any]) -> None:
    data = result["dataset"]
    print(f"{data['kind']} {data['path']}: {result['texts']} texts, split {result['split']!r}")
    if "overall" in result:  # PII
        print(f"policy {result['policy']['version']} (redact_places={result['policy']['redact_places']}); "
              f"versions: {result['versions']}")
        print(f"{'kind':<26}{'gold':>6}{'found':>7}{'leaked':>8}{'recall':>8}{'leak':>8}")
        rows = [*result["per_kind"].items(), ("personal (all)", result["overall"])]
        rows += [(f"{kind} (apart)", row) for kind, row in result["apart"].items()]
        for kind, row in rows:
            print(f"{kind:<26}{row['gold']:>6}{row['found']:>7}{row['leaked']:>8}{_pct(row['recall']):>8}"
                  f"{_pct(row['leak_rate']):>8}")
        cuts = result["cuts"]
        print(f"stored cuts: {cuts['total']}, on no personal value: {cuts['on_no_personal_value']} "
              f"({_pct(cuts['share_on_no_personal_value'])}); scan p50 {result['scan_ms']['p50']} ms, "
              f"p95 {result['scan_ms']['p95']} ms")
        for miss in result.get("misses", []):
            print(f"  missed {miss['kind']} {miss['value']!r} (found in part: {miss['found']}) in {miss['text']!r}")
        for cut in result.get("false_cuts", []):
            print(f"  cut {cut['label']} {cut['cut']!r} on no personal value in {cut['text']!r}")
        return
    print(f"detector {result['detector']} ({result['detector_version']})"
          + (f"; {result['notice']}" if result["notice"] else ""))
    for task, row in result["tasks"].items():
        aucs = ", ".join(f"{label} {'-' if v is None else f'{v:.3f}'}" for label, v in row["roc_auc"].items())
        print(f"{task} ({row['positives']} positive, {row['negatives']} negative): ROC AUC {aucs}")


def cmd_eval_safety(args: argparse.Namespace, settings: Settings) -> int:
    from engine.safety.measure_pii import safety_report

    if args.dataset is not None:
        from engine.safety.measure_public import DATASET_KINDS, DatasetError, public_report

        kind, path = args.dataset
        if kind not in DATASET_KINDS:
            raise CliError(f"--dataset: unknown kind {kind!r}; choose one of {', '.join(DATASET_KINDS)}")
        try:
            report = public_report(kind, path, split=args.split, examples=args.examples,
                                   progress=lambda done, total: print(f"{done}/{total} texts", file=sys.stderr,
                                                                      flush=True))
        except DatasetError as exc:
            raise CliError(str(exc)) from None
        if args.json:
            print(json.dumps(report, ensure_ascii=False))
        else:
            _print_public_report(report)
        return 0
    from console.services.loadtest_prompts import PROMPT_SETS
    from engine.safety.measure_injection import format_report, injection_report, support_prompts

    def injection() -> dict[str, Any]:
        sets = {name: prompt_set.prompts for name, prompt_set in PROMPT_SETS.items()}
        return injection_report(support=support_prompts(sets))

    if args.injection_only:
        result: dict[str, Any] = {"injection": injection()}
        print(json.dumps(result, ensure_ascii=False) if args.json else "\n".join(format_report(result["injection"])))
        return 0
    result = safety_report(args.texts, family=args.family, seed=args.seed, toxicity=not args.no_toxicity,
                           examples=args.examples,
                           progress=lambda done, total: print(f"pii: {done}/{total} texts", file=sys.stderr,
                                                              flush=True))
    if not args.no_injection:
        result["injection"] = injection()
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    pii = result["pii"]
    print(f"PII: {pii['texts']} texts, template family {pii['family']!r} ({pii['templates']} templates), "
          f"seed {pii['seed']}, policy {pii['policy']['version']} (redact_places={pii['policy']['redact_places']})")
    print(f"versions: {pii['versions']}")
    print(f"{'entity':<15}{'gold':>6}{'recall':>8}{'leak':>8}{'pred':>6}{'precision':>10}")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for label, row in [*pii["per_entity"].items(), ("overall", pii["overall"])]:
        print(f"{label:<15}{row['gold']:>6}{fmt(row['recall']):>8}{fmt(row['leak_rate']):>8}{row['predicted']:>6}"
              f"{fmt(row['precision']):>10}")
    print(f"look-alikes redacted: {pii['lookalikes']['redacted']}/{pii['lookalikes']['total']}; "
          f"plain support texts intact: {pii['plain_texts_intact']}")
    if "toxicity" in result:
        print(f"toxicity: {json.dumps(result['toxicity'], ensure_ascii=False)}")
    if "injection" in result:
        print("\n".join(format_report(result["injection"])))
    return 0


def cmd_eval_thresholds(args: argparse.Namespace, settings: Settings) -> int:
    from engine.safety.measure_toxicity import DAVIDSON_PATH, ordinary_report

    result = ordinary_report(policy_path=args.policy, max_flagged=args.max_flagged, dialogues=args.dialogues,
                             davidson_path=None if args.no_davidson else (args.davidson or DAVIDSON_PATH),
                             progress=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    texts = result["texts"]["prompts"]
    print(f"detector {result['detector']} ({result['version']}), policy {result['policy']}; budget: at most "
          f"{pct(result['max_flagged'])} of ordinary prompts flagged or blocked, in each group")
    print(f"ordinary prompts: tune {texts['tune']}, report {texts['report']}; outputs {result['texts']['outputs']}")
    print(f"tuned on: {result['tuned_on']}; reported on: {result['reported_on']}")
    labels = list(result["chosen"]["prompt"])
    print(f"{'prompt thresholds':<40}" + "".join(f"{label:>17}" for label in labels))
    for name, th in (("policy", result["policy_thresholds"]["prompt"]), ("chosen", result["chosen"]["prompt"])):
        print(f"{name:<40}" + "".join(f"{th.get(label, '-'):>17}" for label in labels))
    print(f"output thresholds (policy): {result['policy_thresholds']['output']}")
    print(f"{'flagged or blocked':<40}{'policy':>10}{'chosen':>10}")
    before, after = result["at_policy"], result["at_chosen"]
    for split in ("tune", "report"):
        for group, value in before["ordinary_prompts"][split].items():
            print(f"{f'ordinary prompts, {split}, {group}':<40}{pct(value):>10}"
                  f"{pct(after['ordinary_prompts'][split][group]):>10}")
    for source, value in before["ordinary_prompts_report_by_source"].items():
        print(f"{f'  report, {source}':<40}{pct(value):>10}{pct(after['ordinary_prompts_report_by_source'][source]):>10}")
    for source, value in before["ordinary_outputs_by_source"].items():
        print(f"{f'outputs, {source}':<40}{pct(value):>10}{pct(after['ordinary_outputs_by_source'][source]):>10}")
    for name in [k for k in before if k.startswith("toxicity_eval") or k == "davidson"]:
        print(f"{f'{name}: toxic (recall)':<40}{pct(before[name]['recall']):>10}{pct(after[name]['recall']):>10}")
        print(f"{f'{name}: the others':<40}{pct(before[name]['others_flagged']):>10}"
              f"{pct(after[name]['others_flagged']):>10}")
    return 0


def cmd_metrics_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from console.services import latency as latency_svc

    ctx, me = shell_context(args, settings)
    counted = latency_svc.rebuild_buckets(ctx, me)
    print(f"latency buckets rebuilt from {counted} exchanges")
    return 0


def cmd_db_copy(args: argparse.Namespace, settings: Settings) -> int:
    from db.copy import BATCH_ROWS, CopyError, copy_database, describe

    def progress(table: str, rows: int) -> None:
        if not args.json and rows >= 100_000 and rows % 100_000 < BATCH_ROWS:
            print(f"  {table}: {rows:,} rows", file=sys.stderr, flush=True)

    try:
        report = copy_database(args.source or settings.database_url, args.to, key_file=settings.audit_key_file,
                               checkpoint_file=settings.audit_checkpoint_file, on_batch=progress)
    except CopyError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    for line in describe(report):
        print(line)
    print(f"to use it: set LLM_CONSOLE_DATABASE_URL to the target's URL; keep {settings.audit_key_file} and "
          f"{settings.audit_checkpoint_file} (the copy's checkpoints are signed with that key)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="llm-console", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = sub.add_parser("init", help="create the database and the first admin; say whether the demo models are wanted")
    which = s.add_mutually_exclusive_group()
    which.add_argument("--skip-models", action="store_true",
                       help="no demo models: `run` builds none (register and serve your own)")
    which.add_argument("--wait-for-all", action="store_true",
                       help="build every demo model now (default: `run` builds them in the background)")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("build-demo-models", help=argparse.SUPPRESS)  # started by `run` in the background
    s.set_defaults(func=cmd_build_demo)

    s = sub.add_parser("run", help="start the console (Streamlit) on http://localhost:8501")
    s.add_argument("--port", type=positive, default=8501)
    s.add_argument("--address", default="localhost")
    s.set_defaults(func=cmd_run)

    user = sub.add_parser("user", help="manage local accounts").add_subparsers(dest="user_cmd", required=True,
                                                                             parser_class=Parser)
    s = user.add_parser("add", help="add a user")
    s.add_argument("username")
    s.add_argument("--role", action="append", required=True,
                   choices=ALL_ROLES, help="repeat for several roles")
    s.add_argument("--email", help="email (used to match single sign-on identities)")
    s.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    s.add_argument("--sso", action="store_true", help="no password: the user signs in with single sign-on")
    s.set_defaults(func=cmd_user_add)
    s = user.add_parser("list", help="list users")
    s.set_defaults(func=cmd_user_list)
    s = user.add_parser("unlock", help="clear a user's failed sign-ins and lock")
    s.add_argument("username")
    s.set_defaults(func=cmd_user_unlock)
    s = user.add_parser("reset-password", help="set a new password (unlocks; ends the user's open sessions)")
    s.add_argument("username")
    s.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    s.set_defaults(func=cmd_user_reset_password)

    model = sub.add_parser("model", help="model versions").add_subparsers(dest="model_cmd", required=True,
                                                                          parser_class=Parser)
    s = model.add_parser("list", help="list registered versions (* = production)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_model_list)
    s = model.add_parser("register", help="register a version from a local directory or a hub id, or one that "
                         "vLLM servers serve (--backend server --url URL)")
    s.add_argument("name", help="version name, e.g. llama-3.1-8b-instruct-v1")
    s.add_argument("source", nargs="?", help="local model directory or hub id (meta-llama/Llama-3.1-8B-Instruct); "
                   "none for --backend server")
    s.add_argument("--source", dest="source_option", metavar="SOURCE", help="the same as the SOURCE argument")
    s.add_argument("--backend", choices=BACKENDS, help="where the engine runs: in-process (the default), "
                   "managed-server (the console starts vLLM's OpenAI-compatible server for it) or server (vLLM "
                   "servers someone else runs; give --url)")
    s.add_argument("--url", action="append", metavar="URL", help="--backend server: a server's base URL, e.g. "
                   "http://vllm-1:8000 (repeat for several, at most 8, or give a router's). " + SERVER_KEY_HELP)
    s.add_argument("--server-model", metavar="M", help="--backend server: the model name the servers serve "
                   "(their --served-model-name; default: NAME)")
    s.add_argument("--revision", help="hub revision (commit hash or tag)")
    s.add_argument("--dtype", default="auto", choices=DTYPES)
    s.add_argument("--max-model-len", type=positive, help="maximum context length in tokens")
    s.add_argument("--engine-args", help='vLLM engine arguments as JSON, e.g. \'{"tensor_parallel_size": 2}\'. '
                   + ENGINE_ARGS_HELP)
    s.add_argument("--quantization", help="vLLM quantization method (awq, gptq, fp8, ...)")
    s.add_argument("--base", help="register SOURCE as a LoRA adapter (PEFT directory) served on this version")
    s.add_argument("--description", help="notes shown on the Models page")
    s.set_defaults(func=cmd_model_register)
    glass = ("move a protected alias without an approved promotion, saying why: recorded as model.break_glass "
             "and shown to every admin until another admin acknowledges it")
    s = model.add_parser("serve", help="give NAME the production alias while no version holds it (the first "
                         "version); later moves need an approved promotion (or --break-glass)")
    s.add_argument("name")
    s.add_argument("--reason", help="why (recorded in the audit log)")
    s.add_argument("--break-glass", metavar="REASON", help=glass)
    s.set_defaults(func=cmd_model_serve)
    s = model.add_parser("rollback", help="emergency rollback: return production to the version that held it "
                         "just before (shown to every admin until another admin acknowledges it)")
    s.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    s.set_defaults(func=cmd_model_rollback)
    s = model.add_parser("protect", help="protect an alias: once a version holds it, it moves only through an "
                         "approved promotion")
    s.add_argument("alias")
    s.add_argument("--reason", help="why (recorded in the audit log)")
    s.add_argument("--off", action="store_true", help="remove the protection (needs --break-glass)")
    s.add_argument("--break-glass", metavar="REASON", help="with --off: " + glass)
    s.set_defaults(func=cmd_model_protect)
    s = model.add_parser("restart", help="restart the engine of every running console")
    s.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    s.set_defaults(func=cmd_model_restart)
    s = model.add_parser("alias", help="point an alias (staging, candidate, ...) at a version; a protected alias "
                         "a version holds moves only through an approved promotion (or --break-glass)")
    s.add_argument("name")
    s.add_argument("alias")
    s.add_argument("--reason", help="why (recorded in the audit log)")
    s.add_argument("--break-glass", metavar="REASON", help=glass)
    s.set_defaults(func=cmd_model_alias)
    s = model.add_parser("eval", help="run a prompt suite against a version (in a separate engine process)")
    s.add_argument("name")
    s.add_argument("--suite", default="standard",
                   help="built-in suite: standard, in-domain, off-topic, adversarial, bias-pairs")
    s.add_argument("--suite-file", help="your own suite (JSONL or CSV); replaces --suite")
    s.add_argument("--json", action="store_true", help="print the report (without the answers) as JSON")
    s.set_defaults(func=cmd_model_eval)
    s = model.add_parser("retire", help="retire a version: it loses its aliases and cannot be served")
    s.add_argument("name")
    s.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    s.set_defaults(func=cmd_model_retire)

    audit = sub.add_parser("audit", help="the audit log").add_subparsers(dest="audit_cmd", required=True,
                                                                         parser_class=Parser)
    s = audit.add_parser("verify", help="check the hash chain of the whole audit log against the signed checkpoints")
    s.add_argument("--checkpoints", action="append", default=[], metavar="FILE",
                   help="also compare with checkpoints kept elsewhere (a file from `audit checkpoint --export`)")
    s.set_defaults(func=cmd_audit_verify)
    s = audit.add_parser("checkpoint", help="sign a checkpoint of the chain now, or export every checkpoint")
    s.add_argument("--export", metavar="FILE", help="write every signed checkpoint to FILE (JSON Lines)")
    s.set_defaults(func=cmd_audit_checkpoint)
    s = audit.add_parser("rotate-key", help="start a new checkpoint signing key (recorded in the audit log); the old "
                                            "one, if still there, is kept so its checkpoints still verify")
    s.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    s.set_defaults(func=cmd_audit_rotate_key)
    s = audit.add_parser("export", help="export audit events, exchanges or review decisions, with a manifest "
                                        "(audited; never raw text)")
    s.add_argument("--what", required=True, choices=("events", "exchanges", "decisions"))
    s.add_argument("--format", required=True, choices=("csv", "jsonl", "parquet"))
    s.add_argument("--since", type=_iso_time, help="from this ISO date/time, inclusive (no zone: UTC)")
    s.add_argument("--until", type=_iso_time, help="up to this ISO date/time, exclusive (no zone: UTC)")
    s.add_argument("--actor", help="only this user (events: the actor; exchanges: the user; decisions: reviewer)")
    s.add_argument("--action-prefix", help="only events whose action starts with this (events only)")
    s.add_argument("--model-version", help="only what concerns this model version (by name)")
    s.add_argument("--include-synthetic", action="store_true", help="include synthetic (load test) exchanges")
    s.add_argument("--out", required=True, help="the file to write (must not exist); FILE.manifest.json beside it")
    s.set_defaults(func=cmd_audit_export)

    alerts = sub.add_parser("alerts", help="alert webhooks").add_subparsers(dest="alerts_cmd", required=True,
                                                                          parser_class=Parser)
    s = alerts.add_parser("rotate-key", help="make a new key for the webhook URLs and signing secrets stored "
                                             "encrypted and re-encrypt them (audited); the old key is kept beside it")
    s.add_argument("--reason", help="why (recorded in the audit log)")
    s.set_defaults(func=cmd_alerts_rotate_key)
    s = sub.add_parser("retention", help="drop stored text past its retention").add_subparsers(
        dest="retention_cmd", required=True, parser_class=Parser).add_parser(
        "apply", help="erase raw texts and exchange texts older than the retention settings (metadata stays)")
    s.add_argument("--dry-run", action="store_true", help="only count what would be erased")
    s.set_defaults(func=cmd_retention_apply)
    erase = sub.add_parser("erase", help="erasure of every text a person stored (the account stays): asked for "
                                         "here, approved by another admin on the Users page").add_subparsers(
        dest="erase_cmd", required=True, parser_class=Parser)
    s = erase.add_parser("request", help="ask for the erasure of one account's content; audited")
    s.add_argument("--user", required=True, help="the person's username (the request holds the account's id)")
    s.add_argument("--reason", required=True,
                   help="why (10 to 2,000 characters; shown to the approver, blanked once decided)")
    s.add_argument("--legal-basis", help="a legal basis for erasing logs younger than six months too (recorded in "
                                         "the audit log); without it they stay")
    s.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    s.set_defaults(func=cmd_erase_request)
    s = erase.add_parser("list", help="list erasure requests")
    s.add_argument("--status", choices=("pending", "done", "rejected", "cancelled"))
    s.set_defaults(func=cmd_erase_list)

    s = sub.add_parser("db", help="the console's database").add_subparsers(
        dest="db_cmd", required=True, parser_class=Parser).add_parser(
        "copy", help="copy the SQLite console database into an empty PostgreSQL database, then verify the row "
                     "counts and the audit chain there (refuses a target that is not empty)")
    s.add_argument("--to", required=True, metavar="URL", help="the empty PostgreSQL database, e.g. "
                   "postgresql+psycopg://console@db.internal/console (migrated by the copy)")
    s.add_argument("--from", dest="source", metavar="URL", help="the SQLite database to copy (default: the "
                   "configured one, LLM_CONSOLE_DATABASE_URL or <data_dir>/console.db); never changed")
    s.add_argument("--json", action="store_true", help="print the result as one JSON object")
    s.set_defaults(func=cmd_db_copy)

    s = sub.add_parser("settings", help="show every setting, its value and its environment variable")
    s.set_defaults(func=cmd_settings)

    metrics = sub.add_parser("metrics", help="latency buckets").add_subparsers(dest="metrics_cmd", required=True,
                                                                           parser_class=Parser)
    s = metrics.add_parser("rebuild", help="rebuild the latency buckets from the exchanges (drops console overhead)")
    s.set_defaults(func=cmd_metrics_rebuild)

    evals = sub.add_parser("eval", help="measured quality of the scanners").add_subparsers(dest="eval_cmd", required=True,
                                                                                      parser_class=Parser)
    s = evals.add_parser("safety", help="PII recall/precision/leak rate on a generated labelled set; toxicity ROC AUC; "
                                        "injection ROC AUC and support prompts flagged")
    s.add_argument("--json", action="store_true")
    s.add_argument("--texts", type=positive, default=2000, help="labelled texts to generate (default 2000)")
    s.add_argument("--family", choices=("heldout", "dev"), default="heldout",
                   help="template family: heldout (reported) or dev (what the recognizers were tuned on)")
    s.add_argument("--seed", type=int, default=13)
    s.add_argument("--examples", type=int, default=0, help="list up to N misses and false positives")
    s.add_argument("--no-toxicity", action="store_true", help="without the toxicity part")
    s.add_argument("--no-injection", action="store_true", help="without the injection / jailbreak part")
    s.add_argument("--injection-only", action="store_true",
                   help="only the injection / jailbreak part: ROC AUC on held-out public texts, support prompts "
                        "flagged, TPR, time per text (engine/safety/measure_injection.py)")
    s.add_argument("--dataset", nargs=2, metavar=("KIND", "FILE"),
                   help="measure on a labelled file instead of generated texts; KIND is presidio-synth, pii-jsonl, "
                        "davidson or toxicity-jsonl (formats: engine/safety/measure_public.py)")
    s.add_argument("--split", choices=("all", "tune", "report"), default="all",
                   help="with --dataset: the texts of one half (by a hash of each text) or all (default)")
    s.set_defaults(func=cmd_eval_safety)

    s = evals.add_parser("thresholds", help="toxicity thresholds for ordinary support traffic: the share of "
                                            "ordinary prompts flagged, recall on toxic texts, thresholds to choose")
    s.add_argument("--json", action="store_true")
    s.add_argument("--policy", help="policy file to measure (default: the shipped default policy)")
    s.add_argument("--max-flagged", type=float, default=0.01,
                   help="budget: share of ordinary prompts flagged or blocked, in each group (default 0.01)")
    s.add_argument("--dialogues", type=positive, default=8000,
                   help="demo corpus dialogues whose user turns are ordinary prompts (default 8000)")
    s.add_argument("--davidson", default=None,
                   help="Davidson et al.'s labelled tweets (CSV; default: ../shared/data/toxicity_dev_davidson.csv "
                        "beside the repository, when there)")
    s.add_argument("--no-davidson", action="store_true", help="skip the tweets")
    s.set_defaults(func=cmd_eval_thresholds)

    registered_commands(sub)  # `bench ...` (bench/cli.py) and any other package's commands
    for path, leaf in leaf_commands(p).items():
        leaf.set_defaults(command_path=path)
        if path in UNGUARDED_COMMANDS:
            leaf.set_defaults(unguarded=UNGUARDED_COMMANDS[path])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    from console.services.errors import ConsoleError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        return int(args.func(args, settings) or 0)
    except (CliError, ConsoleError, SettingsError) as exc:
        print(f"llm-console: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

