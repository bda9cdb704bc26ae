"""Every console setting, declared once with its default and a one-line help.

Settings are read from environment variables (``LLM_CONSOLE_*``). ``engine/`` and ``db/`` never read the
environment themselves: the console turns these settings into their typed config objects.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.types import ServerOptions

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the environment variable."""


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def _tristate(value: str) -> bool | None:
    """auto (None), or a bool."""
    return None if value.strip().lower() in {"auto", ""} else _bool(value)


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return number


def _share(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"must be between 0 and 1, got {value!r}")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"must be >= 0, got {value!r}")
    return number


def _minutes_list(value: str) -> tuple[float, ...]:
    """"1,5,30" -> (1.0, 5.0, 30.0): each > 0, at most 10; empty: no retries."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    numbers = tuple(float(p) for p in parts)
    if any(not n > 0 or n > 10_080 for n in numbers) or len(numbers) > 10:
        raise ValueError(f"expected up to 10 comma-separated minutes, each > 0 and at most a week, got {value!r}")
    return numbers


MAX_SCHEDULE_MINUTES = 10_080  # a week


def _minutes_or_off(value: str) -> int:
    """Whole minutes between rounds of a scheduled job, 1 to a week; 0: off."""
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_SCHEDULE_MINUTES:
        raise ValueError(f"expected whole minutes from 1 to {MAX_SCHEDULE_MINUTES:,} (a week), or 0 for off, "
                         f"got {value!r}")
    return int(text)


SWITCH_MODES = ("blue-green", "stop-then-load")


def _switch_mode(value: str) -> str:
    mode = value.strip().lower()
    if mode not in SWITCH_MODES:
        raise ValueError(f"must be {' or '.join(SWITCH_MODES)}, got {value!r}")
    return mode


def _port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError(f"must be a TCP port (1-65535) or 0 for off, got {value!r}")
    return number


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: str) -> tuple[Network, ...]:
    """Addresses and CIDR networks separated by commas or spaces (``10.0.0.0/8, 192.0.2.1``)."""
    return tuple(ipaddress.ip_network(part, strict=False) for part in value.replace(",", " ").split())


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None
    help: str
    parse: Callable[[str], Any] = str

    @property
    def env(self) -> str:
        return "LLM_CONSOLE_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", str(PROJECT_ROOT / "data"), "Directory for the SQLite file, built models and caches."),
    Setting("database_url", None, "SQLAlchemy URL of the store; default: sqlite:///<data_dir>/console.db."),
    Setting("default_model", "support-demo-v1", "Model version given the production alias at set-up when none holds it."),
    Setting("kv_cache_gib", "1", "vLLM CPU KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE).", _positive_float),
    Setting("trust_remote_code", "false", "Let every model version run its own Python code (hub models' "
            "trust_remote_code): config, tokenizer and engine; off unless all registered sources are trusted.", _bool),
    Setting("engine_autostart", "true", "Start the engine when the console starts.", _bool),
    Setting("drain_seconds", "30", "Seconds in-flight answers may finish on the old version during a switch.",
            _positive_float),
    Setting("reconcile_seconds", "2", "How often a running console checks which version it should serve.",
            _positive_float),
    Setting("switch_mode", "blue-green", "How a switch involving a vLLM server (server or managed-server backend) "
            "runs: blue-green (bring the new version up beside the old one; no request waits for a load) or "
            "stop-then-load (stop the old engine first: for a machine that cannot hold both; requests wait). "
            "Two in-process versions always stop-then-load.", _switch_mode),
    Setting("server_api_key", None, "API key (bearer token) the console sends to external vLLM servers "
            "(server backend); prefer LLM_CONSOLE_SERVER_API_KEY_FILE. Never stored in the database."),
    Setting("server_api_key_file", None, "File holding the API key for external vLLM servers (one line; "
            "owner-only). Set this or LLM_CONSOLE_SERVER_API_KEY, not both."),
    Setting("server_start_seconds", "600", "How long a managed vLLM server (managed-server backend) may take to "
            "answer /health after it starts before the switch to it fails.", _positive_float),
    Setting("admin_username", "admin", "Username of the first admin account created by `llm-console init`."),
    Setting("admin_password", None, "Password of the first admin; if unset, one is generated and printed once."),
    Setting("interrupted_after_minutes", "60", "At start-up, a prompt left pending by a console on another host "
            "(which cannot be asked whether it still runs) is marked interrupted once older than this.",
            _positive_int),
    Setting("session_idle_minutes", "30", "Idle minutes after which a browser session is logged out.", _positive_int),
    Setting("session_max_hours", "12", "Hours a sign-in lasts at most (its cookie and server-side session), "
            "however active the browser.", _positive_int),
    Setting("lockout_threshold", "5", "Failed logins in a row that lock an account.", _positive_int),
    Setting("lockout_minutes", "15", "Minutes an account stays locked after too many failed logins.", _positive_int),
    Setting("min_password_length", "12", "Minimum length of a local account's password.", _positive_int),
    Setting("trusted_proxies", "", "Addresses/CIDR networks of the reverse proxies in front of the console "
            "(comma-separated); only then is X-Forwarded-For read: the right-most hop that is not one of them is the "
            "client. Empty: the connection's own address.", parse_networks),
    Setting("cookie_secure", "auto", "Mark the session cookie Secure: auto (when the console serves https itself, "
            "or is on localhost), true (TLS ends at a proxy in front), false (plain http on a private network; the "
            "cookie then loses its __Host- prefix).", _tristate),
    Setting("login_attempts_per_minute", "10",
            "Sign-in attempts allowed per minute from one client (its address, else its browser session).",
            _positive_int),
    Setting("policy_file", str(PROJECT_ROOT / "engine" / "safety" / "default_policy.toml"),
            "Moderation policy file (TOML); seeds the policy, and a changed file becomes a new policy version."),
    Setting("detoxify_model", "original", "Detoxify model type: original, unbiased, multilingual, original-small..."),
    Setting("detoxify_checkpoint", None, "Local Detoxify checkpoint file (used with detoxify_config_dir)."),
    Setting("detoxify_config_dir", None, "Local directory with the Hugging Face config/tokenizer for the checkpoint."),
    Setting("safety_enabled", "true", "Scan prompts and outputs with the safety scanners.", _bool),
    Setting("scan_timeout_seconds", "2", "Longest one safety scan may take; a longer prompt is refused and a longer "
            "answer withheld.", _positive_float),
    Setting("review_claim_minutes", "15", "Minutes a reviewer's claim on a review item lasts.", _positive_int),
    Setting("review_second_share", "0.1", "Share of decided review items sent blind to a second reviewer (0-1).",
            _share),
    Setting("spot_check_seconds", "600", "How often a running console draws the spot checks its rules ask for "
            "(one replica per round).", _positive_float),
    Setting("spot_check_min_decided", "30", "Decided spot checks a label family needs before the Review quality "
            "page shows its miss rate.", _positive_int),
    Setting("promotion_accuracy_margin", "0.02",
            "Topic accuracy a candidate may lose against the live version's and still pass its gate (0-1).", _share),
    Setting("promotion_flag_margin", "0.02",
            "Flag rate a candidate may add over the live version's and still pass its gate (0-1).", _share),
    Setting("promotion_bias_limit", "0.1",
            "Largest toxicity-score gap between identity groups a candidate may show and pass (0-1).", _share),
    Setting("promotion_ttft_margin", "0.25",
            "Share of the baseline's p95 time to first token by which the candidate's may be slower, measured in "
            "the same evaluation run; the gate fails only when the whole 95% interval is beyond it (0.25 = 25%).",
            _positive_float),
    Setting("promotion_ttft_min_pairs", "20",
            "Prompts timed on both versions that the latency gate needs; fewer: not enough data (override needed).",
            _positive_int),
    Setting("evaluation_latency_prompts", "40",
            "Prompts an evaluation sends to both the candidate and the production version, alternately, to compare "
            "their time to first token in the same run.", _positive_int),
    Setting("watch_minutes", "30", "Minutes after a production switch during which the new version is watched.",
            _positive_int),
    Setting("watch_min_samples", "20",
            "Real users' exchanges (and timed answers, for latency) each version needs in the watch window before "
            "they are compared.", _positive_int),
    Setting("watch_ttft_margin", "0.5",
            "Share by which p95 time to first token may grow after a switch before it is a regression.",
            _positive_float),
    Setting("watch_error_margin", "0.05", "Error rate a switch may add before it is a regression (0-1).", _share),
    Setting("watch_flag_margin", "0.05",
            "Share of answers flagged or blocked by the policy that a switch may add before it is a regression (0-1).",
            _share),
    Setting("watch_significance", "0.01",
            "Significance level of the one-sided Fisher exact test a rise in the error or flag rate must pass "
            "(besides its margin) before the watch calls it a regression (0-1).", _share),
    Setting("watch_auto_rollback", "true",
            "Roll back by itself on a regression in the watch window (false: only propose the rollback).", _bool),
    Setting("watch_check_seconds", "15", "How often a running console checks the watch window.", _positive_float),
    Setting("canary_check_seconds", "30",
            "How often the running canary's sequential test is checked (once per interval across consoles).",
            _positive_float),
    Setting("audit_key_file", None,
            "File holding the key that signs audit checkpoints (owner-only; generated at init); "
            "default: <data_dir>/audit.key. Keep a copy outside the database's backups."),
    Setting("audit_checkpoint_file", None,
            "Append-only file the signed audit checkpoints are also written to; default: <data_dir>/audit-checkpoints.jsonl."),
    Setting("secrets_key_file", None,
            "File holding the key that encrypts webhook URLs and signing secrets in the database (Fernet; owner-only; "
            "generated at first use); default: <data_dir>/secrets.key. Every replica needs the same file; keep a copy "
            "outside the database's backups."),
    Setting("audit_checkpoint_seconds", "60", "How often a running console signs a checkpoint of the audit chain "
            "(only when it grew).", _positive_float),
    Setting("audit_verify_minutes", "60", "How often the console verifies the whole audit chain against the signed "
            "checkpoints by itself (one replica per round; a failure is audited and raises the audit_verify_failed "
            "alert); whole minutes, 0: off.", _minutes_or_off),
    Setting("export_dir", None, "Directory where exports and their manifests are written; default: <data_dir>/exports."),
    Setting("export_file_hours", "24",
            "Hours an export file (and its manifest) is kept when nobody downloads it; a download deletes it at once, "
            "and a raw-text export never outlives the raw-text retention of what it holds.", _positive_float),
    Setting("export_rows_per_hour", "1000000",
            "Rows one person may export within any hour (all kinds together); an export beyond it is refused.",
            _positive_int),
    Setting("retention_raw_days", "30", "Days unredacted (raw) text is kept before retention drops it.", _positive_int),
    Setting("retention_text_days", "365",
            "Days the stored (redacted) prompt and answer text is kept; metadata and the audit chain stay.", _positive_int),
    Setting("retention_check_seconds", "3600", "How often a running console applies the retention policy.",
            _positive_float),
    Setting("health_sample_seconds", "10", "How often a running console stores a sample of the engine's health "
            "(running and waiting requests, KV-cache use, token rates, errors).", _positive_float),
    Setting("metrics_port", "0", "Port of the Prometheus /metrics endpoint; 0 turns it off.", _port),
    Setting("metrics_bind", "127.0.0.1", "Address the Prometheus endpoint listens on (0.0.0.0: every interface)."),
    Setting("loadtest_max_concurrency", "8", "Most concurrent chats a load test from the console may run.",
            _positive_int),
    Setting("loadtest_max_seconds", "120", "Longest a load test from the console may run, in seconds.",
            _positive_int),
    Setting("loadtest_cooldown_seconds", "60", "Seconds after a load test ends before the next may start "
            "(the live version's real users get the machine back in between); 0: none.", _non_negative_int),
    Setting("alert_check_seconds", "30", "How often a running console looks for alert conditions (one replica per "
            "round) and sends due webhook deliveries (every replica, each attempt claimed in the database).",
            _positive_float),
    Setting("alert_slo_minutes", "10", "Minutes of real traffic an SLO target is measured over before a miss raises "
            "an slo_breach alert.", _positive_float),
    Setting("alert_retry_minutes", "1,5,30", "Minutes to wait before each retry of a failed webhook delivery, "
            "comma-separated; attempts = retries + 1, then the delivery fails (audited).", _minutes_list),
    Setting("alert_timeout_seconds", "10", "Seconds a webhook has to answer one delivery attempt.", _positive_float),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    default_model: str
    kv_cache_gib: float
    trust_remote_code: bool
    engine_autostart: bool
    drain_seconds: float
    reconcile_seconds: float
    switch_mode: str
    server_api_key: str | None = field(repr=False)
    server_api_key_file: Path | None
    server_start_seconds: float
    admin_username: str
    admin_password: str | None
    interrupted_after_minutes: int
    session_idle_minutes: int
    session_max_hours: int
    lockout_threshold: int
    lockout_minutes: int
    min_password_length: int
    trusted_proxies: tuple[Network, ...]
    cookie_secure: bool | None
    login_attempts_per_minute: int
    policy_file: Path
    detoxify_model: str
    detoxify_checkpoint: str | None
    detoxify_config_dir: str | None
    safety_enabled: bool
    scan_timeout_seconds: float
    review_claim_minutes: int
    review_second_share: float
    spot_check_seconds: float
    spot_check_min_decided: int
    promotion_accuracy_margin: float
    promotion_flag_margin: float
    promotion_bias_limit: float
    promotion_ttft_margin: float
    promotion_ttft_min_pairs: int
    evaluation_latency_prompts: int
    watch_minutes: int
    watch_min_samples: int
    watch_ttft_margin: float
    watch_error_margin: float
    watch_flag_margin: float
    watch_significance: float
    watch_auto_rollback: bool
    watch_check_seconds: float
    canary_check_seconds: float
    audit_key_file: Path
    audit_checkpoint_file: Path
    secrets_key_file: Path
    audit_checkpoint_seconds: float
    audit_verify_minutes: int
    export_dir: Path
    export_file_hours: float
    export_rows_per_hour: int
    retention_raw_days: int
    retention_text_days: int
    retention_check_seconds: float
    health_sample_seconds: float
    metrics_port: int
    metrics_bind: str
    loadtest_max_concurrency: int
    loadtest_max_seconds: int
    loadtest_cooldown_seconds: int
    alert_check_seconds: float
    alert_slo_minutes: float
    alert_retry_minutes: tuple[float, ...]
    alert_timeout_seconds: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``environ`` (default: ``os.environ``), falling back to its default."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = env.get(setting.env, setting.default)
            if raw is None:
                values[setting.name] = None
                continue
            try:
                values[setting.name] = setting.parse(raw)
            except ValueError as exc:
                raise SettingsError(f"{setting.env}: {exc}") from None
        data_dir = Path(values["data_dir"]).expanduser().resolve()
        values["data_dir"] = data_dir
        values["policy_file"] = Path(values["policy_file"]).expanduser()
        values["audit_key_file"] = Path(values["audit_key_file"] or data_dir / "audit.key").expanduser()
        values["audit_checkpoint_file"] = Path(values["audit_checkpoint_file"]
                                               or data_dir / "audit-checkpoints.jsonl").expanduser()
        values["secrets_key_file"] = Path(values["secrets_key_file"] or data_dir / "secrets.key").expanduser()
        values["export_dir"] = Path(values["export_dir"] or data_dir / "exports").expanduser()
        if values["server_api_key_file"]:
            if values["server_api_key"]:
                raise SettingsError("LLM_CONSOLE_SERVER_API_KEY and LLM_CONSOLE_SERVER_API_KEY_FILE are both set; "
                                    "set one of them.")
            values["server_api_key_file"] = Path(values["server_api_key_file"]).expanduser()
        if not values["database_url"]:
            values["database_url"] = f"sqlite:///{data_dir / 'console.db'}"
        return cls(**values)

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def servers_dir(self) -> Path:
        """Where managed vLLM servers write their logs."""
        return self.data_dir / "servers"

    def server_api_key_value(self) -> str | None:
        """The API key for external vLLM servers: the setting, or the first line of its file (read now, so a
        rotated key is picked up); None when neither is set. SettingsError when the file cannot be read or is
        empty."""
        if self.server_api_key_file is None:
            return self.server_api_key or None
        try:
            key = self.server_api_key_file.read_text().strip().splitlines()
        except OSError as exc:
            raise SettingsError(f"LLM_CONSOLE_SERVER_API_KEY_FILE: cannot read {self.server_api_key_file}: "
                                f"{exc.strerror or exc}") from None
        if not key or not key[0].strip():
            raise SettingsError(f"LLM_CONSOLE_SERVER_API_KEY_FILE: {self.server_api_key_file} is empty.")
        return key[0].strip()

    def server_options(self) -> ServerOptions:
        """How the engine reaches and runs vLLM servers (engine.types.ServerOptions), from these settings."""
        from engine.types import ServerOptions

        return ServerOptions(api_key=self.server_api_key_value(), log_dir=str(self.servers_dir),
                             blue_green=self.switch_mode == "blue-green",
                             start_timeout_s=self.server_start_seconds)

    def describe(self) -> list[tuple[str, str, str]]:
        """(environment variable, current value, help) for every setting; secrets are masked."""
        rows = []
        for f in fields(self):
            setting = _BY_NAME[f.name]
            value = getattr(self, f.name)
            if ("password" in f.name or f.name == "server_api_key") and value:
                shown = "***"
            elif f.name == "database_url":
                shown = mask_url(value)
            elif f.name == "trusted_proxies":
                shown = ", ".join(str(network) for network in value) or "(none)"
            elif f.name == "cookie_secure":
                shown = "auto" if value is None else str(value).lower()
            else:
                shown = str(value)
            rows.append((setting.env, shown, setting.help))
        return rows


def mask_url(url: str) -> str:
    """A database URL fit to print: its password replaced by ``***`` (all of it hidden if it does not parse)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "***"
