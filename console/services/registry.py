"""The model registry: versions (register, list, retire), aliases and their protection, emergency moves, and
what a version is to the engine (file checks against its fingerprint, its spec).

A version is a row that never changes once registered; an alias is a pointer row moved with an append-only
history of who moved it and why (see docs/architecture.md). ``production`` is the alias every console serves
(:mod:`console.services.serving` reads it as the desired state); it and any alias an admin protects move only
through an approved promotion (:mod:`console.services.promotion`), an emergency rollback, or a shell command
with ``--break-glass`` -- each one-person move shown to every admin until another admin acknowledges it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from console.services.access import DutyRule, Principal, ensure_separation, register_duty_rule, requires
from console.services.context import AppContext
from console.services.errors import AccessDenied, InvalidInput, ModelUnavailable, NotFound
from console.services.text import optional_text, required_text
from console.settings import SettingsError
from db import audit as audit_q
from db import model_versions as versions_q
from db.model_versions import PRODUCTION
from engine.errors import EngineArgsError, EngineError
from engine.fingerprint import changed_files, fingerprint_dir
from engine.types import (
    ALLOWED_ENGINE_ARGS,
    BACKENDS,
    LORA_RANKS,
    Backend,
    LoraAdapter,
    ModelSpec,
    check_engine_args,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from db.tables import ModelVersion
    from engine.server_client import ServerInfo

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
DTYPES = ("auto", "float32", "float16", "bfloat16", "half", "float")
MAX_NOTES_CHARS = 2000
MAX_REVISION_CHARS = 200  # a hub commit hash or tag; also bounds a base version's name
ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,59}$")
MAX_REASON_CHARS = 1000
MAX_SERVER_URLS = 8
MAX_URL_CHARS = 500
# How each backend is called where people choose one (the Models page; the CLI takes the names themselves).
BACKEND_LABELS: dict[str, str] = {"in-process": "in-process", "managed-server": "managed server",
                                  "server": "vLLM server"}
SERVER_KEY_HELP = ("The console sends the API key of LLM_CONSOLE_SERVER_API_KEY_FILE (or LLM_CONSOLE_SERVER_API_KEY) "
                   "on the console's machine to the servers; it is a setting, never stored in the database.")


@dataclass(frozen=True)
class ModelVersionView:
    id: int
    name: str
    source: str
    revision: str | None
    dtype: str | None
    max_model_len: int | None
    engine_args: dict[str, Any]
    description: str | None
    status: str
    created_at: datetime
    quantization: str | None = None
    fingerprint: str | None = None
    aliases: tuple[str, ...] = ()
    retired: bool = False
    base: str | None = None  # for a LoRA adapter: the version it is served on
    backend: str = "in-process"  # engine.types.BACKENDS
    server_urls: tuple[str, ...] = ()  # backend "server": the servers' base URLs
    server_model: str | None = None  # backend "server": the model name the servers serve
    server_info: Mapping[str, Any] | None = None  # backend "server": what they reported (model, root, max length)

    @property
    def stage(self) -> str:
        """A stage-like badge: the highest alias it holds (production first), else retired or registered."""
        for alias in ("production", "staging", "candidate"):
            if alias in self.aliases:
                return alias
        return self.aliases[0] if self.aliases else ("retired" if self.retired else "registered")


def _view(m: ModelVersion, aliases: Sequence[str] = (), base: str | None = None) -> ModelVersionView:
    return ModelVersionView(m.id, m.name, m.source, m.revision, m.dtype, m.max_model_len, dict(m.engine_args or {}),
                            m.description, m.status, m.created_at, m.quantization, m.fingerprint, tuple(aliases),
                            m.retired_at is not None, base, m.backend or "in-process", tuple(m.server_urls or ()),
                            m.server_model, dict(m.server_info) if m.server_info else None)


def _engine_arg_names() -> set[str]:
    from vllm.engine.arg_utils import EngineArgs  # heavy import: only when an argument is not an allowed one

    return {f.name for f in dataclasses.fields(EngineArgs)}


# Arguments the record sets through its own columns; giving them in engine_args too would be ambiguous.
_RESERVED_ARGS = {"model", "tokenizer", "revision", "dtype", "max_model_len", "quantization"}

# What a version may carry in its engine arguments (the engine's allowlist, less the record's own fields),
# for the registration form's and the CLI's help.
ENGINE_ARGS_ALLOWED = tuple(sorted(set(ALLOWED_ENGINE_ARGS) - _RESERVED_ARGS))
ENGINE_ARGS_HELP = ("Only arguments that tune performance and memory: " + ", ".join(ENGINE_ARGS_ALLOWED)
                    + ". Anything that loads code, names a path or host, or changes logging is refused; "
                    "trust_remote_code is an installation setting (LLM_CONSOLE_TRUST_REMOTE_CODE).")


def parse_engine_args(raw: str | dict[str, Any] | None) -> dict[str, Any]:
    """Parse and check vLLM engine arguments given as a JSON object: unknown names and names outside the
    engine's allowlist (:data:`engine.types.ALLOWED_ENGINE_ARGS`) are refused, each named."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"Engine arguments must be a JSON object: {exc.msg} at position {exc.pos}.") from None
    else:
        value = raw
    if not isinstance(value, dict):
        raise InvalidInput('Engine arguments must be a JSON object such as {"tensor_parallel_size": 2}.')
    reserved = sorted(set(value) & _RESERVED_ARGS)
    if reserved:
        raise InvalidInput(f"Set {', '.join(reserved)} with the version's own fields, not in engine arguments.")
    outside = set(value) - set(ALLOWED_ENGINE_ARGS)
    unknown = sorted(outside - _engine_arg_names()) if outside else []
    if unknown:
        raise InvalidInput(f"Unknown vLLM engine argument(s): {', '.join(unknown)}. "
                           f"Allowed: {', '.join(ENGINE_ARGS_ALLOWED)}.")
    refused = sorted(outside)
    if refused:
        raise InvalidInput(f"Engine argument(s) not allowed: {', '.join(refused)}. The console takes only "
                           f"arguments that tune performance and memory: {', '.join(ENGINE_ARGS_ALLOWED)}."
                           + (" trust_remote_code is a setting of the installation (LLM_CONSOLE_TRUST_REMOTE_CODE),"
                              " never of a version." if "trust_remote_code" in refused else ""))
    try:
        check_engine_args(value)  # the engine's own check (values), as it runs again at every load
    except EngineArgsError as exc:
        raise InvalidInput(str(exc).replace("Found engine", "Engine", 1)) from None
    return value


def _validate(name: str, source: str, dtype: str | None, max_model_len: int | None) -> tuple[str, str]:
    name = (name or "").strip()
    source = (source or "").strip()
    if not _NAME.match(name):
        raise InvalidInput("A version name has 1-100 letters, digits, '.', '_' or '-' (e.g. llama-3.1-8b-v2).")
    if not source:
        raise InvalidInput("Give the model's source: a local directory or a hub id such as org/model.")
    if not (_HUB_ID.match(source) or Path(source).expanduser().is_dir()):
        raise InvalidInput(f"{source!r} is neither an existing local directory nor a hub id like org/model.")
    if dtype is not None and dtype not in DTYPES:
        raise InvalidInput(f"dtype must be one of {', '.join(DTYPES)}.")
    if max_model_len is not None and not (16 <= max_model_len <= 10_000_000):
        raise InvalidInput("Max context must be at least 16 tokens.")
    if Path(source).expanduser().is_dir():
        source = str(Path(source).expanduser().resolve())
    return name, source


def _quantization_methods() -> list[str]:
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS  # heavy: only when registering

    return list(QUANTIZATION_METHODS)


def _check_config(source: str, *, trust_remote_code: bool) -> None:
    """A local directory must hold a config vLLM can read (transformers' AutoConfig, as vLLM uses).

    The model's own code (``auto_map``) runs only if the installation allows it, as the engine would."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as exc:  # any reason the config cannot be read: say which, store nothing
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        hint = ("" if trust_remote_code or "trust_remote_code" not in str(exc) else
                " (this model needs its own code to run, which this installation does not allow:"
                " LLM_CONSOLE_TRUST_REMOTE_CODE is off)")
        raise InvalidInput(f"vLLM cannot read the model config in {source}: {first}{hint}") from None


def required_reason(reason: str | None, what: str) -> str:
    """``reason`` cleaned and bounded, for the audit log; InvalidInput naming ``what`` it is for if empty."""
    return required_text(reason, f"the reason for {what}", MAX_REASON_CHARS)


# ---------------------------------------------------------------------------------------------------- versions


def register_as_system(ctx: AppContext, **fields: Any) -> ModelVersionView:
    """Register a version as the console itself (actor ``system``): the demo versions the set-up builds."""
    return _register(ctx, "system", None, **fields)


def _register(ctx: AppContext, actor: str, actor_id: int | None, *, name: str, source: str | None = None,
              revision: str | None = None, dtype: str | None = None, max_model_len: int | None = None,
              engine_args: Any = None, description: str | None = None, quantization: str | None = None,
              base: str | None = None, backend: str | None = None, server_urls: Sequence[str] | str | None = None,
              server_model: str | None = None) -> ModelVersionView:
    chosen = _backend(backend)
    if chosen == "server":
        return _register_server(ctx, actor, actor_id, name=name, source=source, revision=revision, dtype=dtype,
                                max_model_len=max_model_len, engine_args=engine_args, description=description,
                                quantization=quantization, base=base, server_urls=server_urls,
                                server_model=server_model)
    if server_urls or (server_model or "").strip():
        raise InvalidInput("Server URLs and a served model name belong to a vLLM server version (backend server); "
                           f"{'a managed-server' if chosen == 'managed-server' else 'an in-process'} version loads "
                           "its model from its source.")
    name, source = _validate(name, source or "", dtype, max_model_len)
    description = optional_text(description, "the notes field", MAX_NOTES_CHARS)
    revision = optional_text(revision, "the revision", MAX_REVISION_CHARS)
    base = optional_text(base, "the base version", MAX_REVISION_CHARS)
    base_id: int | None = None
    if base is not None:  # a LoRA adapter on a registered base version
        if not Path(source).is_dir():
            raise InvalidInput("A LoRA adapter is registered from a local directory holding adapter_config.json.")
        adapter_rank(source)
        with ctx.db.session(readonly=True) as s:
            base_version = versions_q.get_model_version_by_name(s, base)
            if base_version is None:
                raise InvalidInput(f"No model version named {base!r} is registered to serve the adapter on.")
            if base_version.retired_at is not None or base_version.base_version_id is not None:
                raise InvalidInput(f"{base} cannot be a base: it is retired or itself a LoRA adapter.")
            base_backend = base_version.backend or "in-process"
            if base_backend == "server":
                raise InvalidInput(f"{base} is a vLLM server version: its server serves its LoRA adapters. Register "
                                   "an adapter it serves as a server version of its own, with the adapter's served "
                                   "name as the served model name.")
            if chosen is not None and chosen != base_backend:
                raise InvalidInput(f"A LoRA adapter is served where its base is: the backend of {base} is "
                                   f"{BACKEND_LABELS[base_backend]}, not {BACKEND_LABELS[chosen]}.")
            chosen = base_backend  # type: ignore[assignment]  # a stored backend is one of BACKENDS
            base_id = base_version.id
    args = parse_engine_args(engine_args)
    quantization = (quantization or "").strip() or None
    if quantization is not None and quantization not in _quantization_methods():
        raise InvalidInput(f"Unknown quantization {quantization!r}; vLLM knows {', '.join(_quantization_methods())}.")
    with ctx.db.session(readonly=True) as s:
        if versions_q.get_model_version_by_name(s, name) is not None:
            raise InvalidInput(f"A model version named {name!r} is already registered.")
    fingerprint = None
    if Path(source).is_dir():
        if base_id is None:
            _check_config(source, trust_remote_code=ctx.settings.trust_remote_code)
        try:
            fingerprint = fingerprint_dir(source)
        except ValueError as exc:
            raise InvalidInput(f"{source} holds no model files (weights, config or tokenizer).") from exc
    elif revision is None:
        logger.warning("hub model %s registered without a pinned revision", source)
    with ctx.db.session() as s:
        if versions_q.get_model_version_by_name(s, name) is not None:  # registered meanwhile
            raise InvalidInput(f"A model version named {name!r} is already registered.")
        m = versions_q.register_model_version(
            s, name=name, source=source, revision=revision, dtype=dtype or "auto",
            max_model_len=max_model_len, engine_args=args, description=description,
            actor=actor, actor_id=actor_id, quantization=quantization,
            fingerprint=fingerprint.sha256 if fingerprint else None,
            fingerprint_files=fingerprint.as_records() if fingerprint else None, base_version_id=base_id,
            backend=chosen or "in-process",
        )
        return _view(m, base=base)


def _backend(value: str | None) -> Backend | None:
    """The backend named by ``value`` (None when not given: in-process, or a LoRA adapter's base's)."""
    chosen = (value or "").strip().lower() or None
    if chosen is not None and chosen not in BACKENDS:
        raise InvalidInput(f"Unknown backend {value!r}: choose in-process, managed-server or server.")
    return chosen


# ------------------------------------------------------------------------------------------ server versions


def server_url_list(raw: Sequence[str] | str | None) -> list[str]:
    """The base URLs of a server version, each checked (http/https, a host, no credentials, query or fragment;
    a trailing ``/`` or ``/v1`` is dropped) and given once: 1 to :data:`MAX_SERVER_URLS`. A string holds one URL a
    line (the Models page's text area). InvalidInput naming the bad URL otherwise."""
    from engine.errors import BadServerURL
    from engine.server_client import check_base_url

    lines = raw.splitlines() if isinstance(raw, str) else list(raw or [])
    given = [str(u).strip() for u in lines if str(u).strip()]
    if not given:
        raise InvalidInput("The server URL is required: the base URL of a vLLM server or of a router in front of "
                           "several, such as http://vllm-1:8000.")
    if len(given) > MAX_SERVER_URLS:
        raise InvalidInput(f"A server version names at most {MAX_SERVER_URLS} server URLs; {len(given)} were given "
                           "(put a router in front of more).")
    urls: list[str] = []
    for url in given:
        if len(url) > MAX_URL_CHARS:
            raise InvalidInput(f"A server URL has at most {MAX_URL_CHARS} characters; one has {len(url):,}.")
        try:
            checked = check_base_url(url)
        except BadServerURL as exc:
            raise InvalidInput(_bad_url_message(url, exc)) from None
        if checked in urls:
            raise InvalidInput(f"The server URL {checked} is given twice.")
        urls.append(checked)
    return urls


def _bad_url_message(url: str, exc: Exception) -> str:
    """The refusal of a bad base URL, naming it (without a password someone typed into it)."""
    shown = re.sub(r"//[^/\s]*@", "//***@", url)[:200]
    text = str(exc).replace(url, shown)
    if shown in text:
        return text
    if text.startswith("The server URL "):
        return text.replace("The server URL", f"The server URL {shown}", 1)
    return f"The server URL {shown}: {text}"


def _identity(info: ServerInfo) -> dict[str, Any]:
    """What a server reports about the model it serves, as recorded at registration (``server_info``)."""
    return {"model": info.model, "root": info.root, "max_model_len": info.max_model_len}


def _identity_text(identity: Mapping[str, Any]) -> str:
    return (f"model {identity.get('model')} (root {identity.get('root')}, max length "
            f"{identity.get('max_model_len')})")


def server_fingerprint(identity: Mapping[str, Any]) -> str:
    """sha256 of what a server reported about its model (model, root, max_model_len): a server version's
    fingerprint, shown like a local version's."""
    canonical = json.dumps({k: identity.get(k) for k in ("model", "root", "max_model_len")}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _probe_all(urls: Sequence[str], model: str, api_key: str | None) -> list[tuple[str, ServerInfo | None, str | None]]:
    """Ask every server at once which models it serves: (url, what it reported or None, why not or None)."""
    from engine.server_client import probe

    def one(url: str) -> tuple[str, ServerInfo | None, str | None]:
        try:
            return url, probe(url, model, api_key=api_key), None
        except EngineError as exc:
            return url, None, str(exc)

    with ThreadPoolExecutor(max_workers=len(urls), thread_name_prefix="probe") as pool:
        return list(pool.map(one, urls))


def _server_key(ctx: AppContext, error: type[InvalidInput] | type[ModelUnavailable]) -> str | None:
    try:
        return ctx.settings.server_api_key_value()
    except SettingsError as exc:
        raise error(str(exc)) from None


_SERVER_OWNS = "of a server version {verb} set where the server starts; leave {pronoun} empty."


def _register_server(ctx: AppContext, actor: str, actor_id: int | None, *, name: str, source: str | None,
                     revision: str | None, dtype: str | None, max_model_len: int | None, engine_args: Any,
                     description: str | None, quantization: str | None, base: str | None,
                     server_urls: Sequence[str] | str | None, server_model: str | None) -> ModelVersionView:
    """Register a version served by vLLM servers someone else runs: every server must answer and serve the model;
    what they report (model, root, max length) is recorded and fingerprinted."""
    name = (name or "").strip()
    if not _NAME.match(name):
        raise InvalidInput("A version name has 1-100 letters, digits, '.', '_' or '-' (e.g. llama-3.1-8b-v2).")
    if (source or "").strip():
        raise InvalidInput("A server version has no source: the server loads its model. Give the servers' base "
                           "URLs and the model name they serve.")
    if base is not None and base.strip():
        raise InvalidInput("A LoRA adapter of a server version is served by its server: register it as a server "
                           "version with the adapter's served name as the served model name.")
    if engine_args.strip() if isinstance(engine_args, str) else engine_args:
        raise InvalidInput("Engine arguments " + _SERVER_OWNS.format(verb="are", pronoun="them"))
    owned = [label for label, value in (("The dtype", dtype not in (None, "", "auto")),
                                        ("The quantization", bool((quantization or "").strip())),
                                        ("The revision", bool((revision or "").strip())),
                                        ("The max context", max_model_len is not None)) if value]
    if owned:
        raise InvalidInput(f"{owned[0]} " + _SERVER_OWNS.format(verb="is", pronoun="it")
                           + (" The server reports its max length." if owned[0] == "The max context" else ""))
    urls = server_url_list(server_urls)
    model = (server_model or "").strip() or name
    if len(model) > MAX_REVISION_CHARS or any(c.isspace() for c in model) or not model.isprintable():
        raise InvalidInput(f"The served model name has at most {MAX_REVISION_CHARS} characters and no spaces, as "
                           "the server's --served-model-name.")
    description = optional_text(description, "the notes field", MAX_NOTES_CHARS)
    with ctx.db.session(readonly=True) as s:
        if versions_q.get_model_version_by_name(s, name) is not None:
            raise InvalidInput(f"A model version named {name!r} is already registered.")
    answers = _probe_all(urls, model, _server_key(ctx, InvalidInput))
    failed = [why or url for url, info, why in answers if info is None]
    if failed:
        raise InvalidInput(" ".join(failed) + " Every server of a version must answer and serve its model.")
    identities = {url: _identity(info) for url, info, _ in answers if info is not None}
    first_url, identity = next(iter(identities.items()))
    for url, other in identities.items():
        if other != identity:
            raise InvalidInput(f"The servers disagree: {first_url} serves {_identity_text(identity)}, {url} serves "
                               f"{_identity_text(other)}. A version's servers must serve the same model.")
    root = str(identity.get("root") or model)
    with ctx.db.session() as s:
        if versions_q.get_model_version_by_name(s, name) is not None:  # registered meanwhile
            raise InvalidInput(f"A model version named {name!r} is already registered.")
        m = versions_q.register_model_version(
            s, name=name, source=root[:1000], revision=None, dtype=None, max_model_len=identity.get("max_model_len"),
            engine_args={}, description=description, actor=actor, actor_id=actor_id,
            fingerprint=server_fingerprint(identity), backend="server", server_urls=urls,
            server_model=model, server_info=identity,
        )
        return _view(m)


@requires("models.register")
def register(ctx: AppContext, actor: Principal, **fields: Any) -> ModelVersionView:
    """Register a version (fields: name, source, revision, dtype, max_model_len, engine_args, description,
    quantization, base, backend, server_urls, server_model): checked, fingerprinted, audited.

    ``backend`` (engine.types.BACKENDS) is ``in-process`` (the default) or ``managed-server`` for a version loaded
    from ``source`` (a local directory, checked and fingerprinted, or a hub id; a managed server gets the engine
    arguments as its flags), or ``server`` for one that vLLM servers someone else runs already serve:
    ``server_urls`` (1 to 8 base URLs, or a string with one a line) and ``server_model`` (the model name they
    serve; default the version's name). Every server must answer, with the API key of the installation's setting,
    and serve that model; what they report (model, root, max length) is recorded and fingerprinted, and a server
    version carries no engine arguments, dtype, quantization, revision or max context of its own (the server's
    are). A LoRA adapter is served where its base is."""
    return _register(ctx, actor.username, actor.user_id, **fields)


@requires("models.view")
def list_versions(ctx: AppContext, actor: Principal) -> list[ModelVersionView]:
    """Every registered version with its aliases, newest first."""
    with ctx.db.session(readonly=True) as s:
        aliases = versions_q.aliases_by_version(s)
        versions = versions_q.list_model_versions(s)
        names = {m.id: m.name for m in versions}
        return [_view(m, aliases.get(m.id, ()), names.get(m.base_version_id) if m.base_version_id else None)
                for m in versions]


def find_version(s: Session, name: str) -> ModelVersion:
    """The version named ``name`` in unit of work ``s``; NotFound if none is registered."""
    version = versions_q.get_model_version_by_name(s, (name or "").strip())
    if version is None:
        raise NotFound(f"No model version named {name!r} is registered.")
    return version


@requires("models.register")
def retire(ctx: AppContext, actor: Principal, name: str, reason: str) -> str:
    """Retire a version: it loses its aliases and can no longer be served."""
    reason = required_reason(reason, "retiring a version")
    with ctx.db.session() as s:
        version = find_version(s, name)
        if version.retired_at is not None:
            raise InvalidInput(f"{version.name} is already retired.")
        aliases = versions_q.aliases_by_version(s).get(version.id, [])
        if PRODUCTION in aliases:
            raise InvalidInput(f"{version.name} is the production version; promote another one before retiring "
                               "it.")
        protected = [a for a in aliases if versions_q.is_protected(s, a)]
        if protected:
            # Retiring would free the alias, and a free protected alias may be set by one person.
            raise InvalidInput(f"{version.name} holds the protected alias {', '.join(protected)}; move it to "
                               "another version through an approved promotion before retiring this one.")
        for alias in aliases:
            versions_q.remove_alias(s, alias, actor=actor.username, actor_id=actor.user_id,
                                    reason=f"retired: {reason}")
        versions_q.retire_version(s, version, actor=actor.username, actor_id=actor.user_id, reason=reason)
        return version.name


# ------------------------------------------------------------------------------- what a version is to the engine


def check_serveable(ctx: AppContext, version: ModelVersion) -> None:
    """Before production moves to ``version``: its files are unchanged (:func:`check_files`), and a server version's
    servers answer and still report what was registered (:func:`check_server`), so an admin hears at once, not
    from a failed switch, that a version cannot be served. Never inside a write transaction: it hashes files or
    asks servers over the network."""
    check_files(version)
    if version.backend == "server":
        check_server(ctx, spec_of(version), version.server_info)


def check_files(version: ModelVersion) -> None:
    """Refuse a local version whose weight or tokenizer files changed since it was registered. (A server version's
    fingerprint is of what its servers reported: :func:`loadable_spec` asks them again.)"""
    if not version.fingerprint or version.backend == "server":
        return  # a hub id (pinned by revision) or a version registered before fingerprints
    try:
        changed = changed_files(version.fingerprint_files or [], version.source)
    except OSError as exc:
        raise ModelUnavailable(f"The files of model version {version.name} cannot be read: {exc}") from exc
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise ModelUnavailable(
            f"The files of model version {version.name} changed since it was registered ({shown}); it will "
            "not be loaded. Register the new files under a new version name."
        )


def adapter_rank(path: str) -> int:
    """The rank ``r`` of the PEFT LoRA adapter in directory ``path``; InvalidInput if it is not one."""
    config_path = Path(path) / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path} is not a LoRA adapter: no readable adapter_config.json ({exc}).") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise InvalidInput(f"{path} is not a LoRA adapter: adapter_config.json has no peft_type LORA.")
    rank = config.get("r")
    if not isinstance(rank, int) or not 1 <= rank <= LORA_RANKS[-1]:
        raise InvalidInput(f"The LoRA adapter in {path} has rank {rank!r}; vLLM serves ranks 1 to {LORA_RANKS[-1]}.")
    return rank


def spec_of(version: ModelVersion, base: ModelVersion | None = None) -> ModelSpec:
    """The engine's view of a version record (a LoRA adapter version: its base model plus the adapter)."""
    model = base if base is not None else version
    engine_args = dict(model.engine_args or {})
    if model.quantization:
        engine_args["quantization"] = model.quantization
    lora = None
    if base is not None:
        lora = LoraAdapter(name=version.name, path=version.source, rank=adapter_rank(version.source))
    backend: Backend = model.backend if model.backend in BACKENDS else "in-process"
    return ModelSpec(name=version.name, source=model.source, revision=model.revision, dtype=model.dtype or "auto",
                     max_model_len=model.max_model_len, engine_args=engine_args, lora=lora, backend=backend,
                     server_urls=tuple(model.server_urls or ()) if backend == "server" else (),
                     server_model=model.server_model if backend == "server" else None)


def loadable_spec(ctx: AppContext, name: str) -> ModelSpec:
    """The spec of a registered, not retired version whose files (and its base's) are unchanged, or, for a
    server version, whose servers answer now and still report what they did at registration; else a clear
    error."""
    with ctx.db.session(readonly=True) as s:
        version = find_version(s, name)
        if version.retired_at is not None:
            raise InvalidInput(f"Model version {version.name} is retired and cannot be served.")
        check_files(version)
        base = None
        if version.base_version_id is not None:
            base = versions_q.get_model_version(s, version.base_version_id)
            if base is None or base.retired_at is not None:
                raise InvalidInput(f"The base version of LoRA adapter {version.name} is retired or gone.")
            check_files(base)
        spec = spec_of(version, base)
        recorded = dict(version.server_info) if version.server_info else None
    if spec.backend == "server":
        check_server(ctx, spec, recorded)  # over the network: after the unit of work
    return spec


def check_server(ctx: AppContext, spec: ModelSpec, recorded: Mapping[str, Any] | None) -> None:
    """Refuse a server version none of whose servers serves its model now (ModelUnavailable naming them and
    why), or one a server of which now reports another model, root or max length than ``recorded`` at
    registration -- like a changed weight file."""
    answers = _probe_all(spec.server_urls, spec.model_on_server, _server_key(ctx, ModelUnavailable))
    for url, info, _ in answers:
        if info is not None and recorded is not None and _identity(info) != {
                k: recorded.get(k) for k in ("model", "root", "max_model_len")}:
            raise ModelUnavailable(
                f"The server at {url} now serves {_identity_text(_identity(info))}; version {spec.name} was "
                f"registered with {_identity_text(recorded)}; it will not be served. Register the new model under "
                "a new version name.")
    if not any(info is not None for _, info, _ in answers):
        reasons = " ".join(why or url for url, _, why in answers)
        raise ModelUnavailable(f"No server of version {spec.name} serves it now: {reasons}")


# ------------------------------------------------------------------------------------- aliases and protection

def alias_name(alias: str) -> str:
    """``alias`` as stored (trimmed, lower case); InvalidInput if it is not a valid alias name."""
    alias = (alias or "").strip().lower()
    if not ALIAS.match(alias):
        raise InvalidInput("An alias has 1-60 lower-case letters, digits, '-' or '_' and starts with a letter.")
    return alias


def protected_move_refused(alias: str, holder: str, *, shell: bool) -> AccessDenied:
    """The refusal of a one-person move of a protected alias, saying which ways are open."""
    way = ("on the server, `--break-glass REASON` moves it anyway (recorded, and shown to every admin until "
           "another admin acknowledges it)" if shell else
           "a shell command with `--break-glass REASON` on the server is the last resort")
    rollback = (" In an emergency, production can be rolled back to the version that held it before "
                "(Promotions page, Emergency rollback, or `llm-console model rollback`)." if alias == PRODUCTION
                else "")
    return AccessDenied(f"{alias} is protected (it points at {holder}): it moves only through an approved "
                        f"promotion, which one person asks for and another approves (Promotions page).{rollback} "
                        f"{way[0].upper() + way[1:]}.")


def _record_denial(ctx: AppContext, actor: Principal, action: str, object_id: str, details: dict[str, Any]) -> None:
    # In its own unit of work, after the refused one ended: the attempt stays on record.
    with ctx.db.session() as s:
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="access.denied",
                             object_type="model_alias", object_id=object_id, details={"action": action, **details})


def break_glass_reason(ctx: AppContext, principal: Principal, value: str | None, action: str) -> str | None:
    """The cleaned break-glass reason, or None without one. Breaking the glass is a power of the shell on the
    server only: a signed-in user who tries is refused, and the attempt is audited."""
    if value is None:
        return None
    if not principal.is_shell:
        _record_denial(ctx, principal, action, action, {"reason": "break glass: shell only"})
        raise AccessDenied("Breaking the glass is only possible from a shell on the server "
                           "(`llm-console ... --break-glass REASON`).")
    return required_reason(value, "breaking the glass")


def production_holder(ctx: AppContext, s: Session) -> ModelVersion | None:
    """The version production points at. With no alias row yet: the configured default version if registered
    (the consoles serve it: see :func:`console.services.serving.desired_state`), else the version a console last
    switched to (a console started with another default), so serving another one is a move like any other."""
    row = versions_q.get_alias(s, PRODUCTION)
    if row is not None:
        return versions_q.get_model_version(s, row.version_id)
    default = versions_q.get_model_version_by_name(s, ctx.settings.default_model)
    if default is not None:
        return default
    switched = audit_q.latest_event(s, "model.switch")
    served = None if switched is None else (switched.details or {}).get("to")
    return None if not served else versions_q.get_model_version_by_name(s, str(served))


def move_protected(s: Session, actor: Principal, alias: str, version: ModelVersion, holder: ModelVersion | None, *,
                   protected: bool, reason: str, glass: str | None, kind: str) -> AccessDenied | None:
    """Move ``alias`` (held by ``holder``) to ``version`` in unit of work ``s``, unless that is a one-person move
    of a ``protected`` alias another version holds: then return the refusal, which the caller raises (and
    audits, :func:`refuse_move`) once its unit of work has ended. With ``glass`` (a break-glass reason, from the
    shell) the move is made anyway and recorded as an emergency (``kind``: serve or alias) that every admin sees
    until another admin acknowledges it. A protected alias no version holds yet may be set by one person."""
    moving = protected and holder is not None and holder.id != version.id
    if moving and glass is None:
        assert holder is not None
        return protected_move_refused(alias, holder.name, shell=actor.is_shell)
    versions_q.move_alias(s, alias, version, actor=actor.username, actor_id=actor.user_id, reason=reason)
    if moving and glass is not None:
        versions_q.record_emergency(s, kind=kind, alias=alias, from_version=holder, to_version=version,
                                    actor=actor.username, actor_id=actor.user_id, reason=glass, break_glass=True)
        logger.warning("break glass: %s moved %s from %s to %s: %s", actor.username, alias,
                       holder.name if holder else None, version.name, glass)
    return None


def refuse_move(ctx: AppContext, principal: Principal, action: str, alias: str, version: str,
                refusal: AccessDenied) -> AccessDenied:
    """Audit a refused move of a protected alias (``access.denied``) and return the refusal to raise."""
    _record_denial(ctx, principal, action, alias, {"reason": "four eyes: protected alias", "alias": alias, "to": version})
    logger.warning("refused: %s tried to move the protected alias %s to %s alone", principal.username, alias, version)
    return refusal


@requires("models.register")
def set_alias(ctx: AppContext, actor: Principal, name: str, alias: str, reason: str,
              break_glass: str | None = None) -> str:
    """Point an alias such as ``staging`` or ``candidate`` at a version; returns the alias as stored. A protected
    alias a version holds moves only through an approved promotion, or from the shell with ``break_glass`` (its
    reason: see :func:`break_glass_reason`)."""
    alias = alias_name(alias)
    if alias == PRODUCTION:
        raise InvalidInput("The production alias moves through an approved promotion (Promotions page).")
    reason = required_reason(reason, "moving an alias")
    glass = break_glass_reason(ctx, actor, break_glass, "models.register")
    with ctx.db.session() as s:
        version = find_version(s, name)
        if version.retired_at is not None:
            raise InvalidInput(f"Model version {version.name} is retired; it cannot hold an alias.")
        refused = move_protected(s, actor, alias, version, versions_q.version_for_alias(s, alias),
                                 protected=versions_q.is_protected(s, alias), reason=reason, glass=glass, kind="alias")
        if refused is None:
            return alias
    raise refuse_move(ctx, actor, "models.register", alias, name, refused)


@requires("models.protect")
def protect_alias(ctx: AppContext, actor: Principal, alias: str, reason: str) -> bool:
    """Mark an alias protected: from now on, once a version holds it, it moves only through an approved
    promotion. Audited (``model.alias_protect``); False if it already was. There is no page action to undo it."""
    alias = alias_name(alias)
    reason = required_reason(reason, "protecting an alias")
    with ctx.db.session() as s:
        return versions_q.protect_alias(s, alias, actor=actor.username, actor_id=actor.user_id, reason=reason)


@requires("models.protect")
def unprotect_alias(ctx: AppContext, actor: Principal, alias: str, break_glass: str) -> bool:
    """Remove an alias's protection: only from the shell, with ``break_glass`` (its reason), recorded as
    ``model.break_glass`` and shown to every admin until another admin acknowledges it. ``production`` stays
    protected. False if the alias was not protected."""
    alias = alias_name(alias)
    if alias == PRODUCTION:
        raise InvalidInput("The production alias is always protected.")
    glass = break_glass_reason(ctx, actor, break_glass, "models.protect")
    if glass is None:
        raise InvalidInput("Removing an alias's protection needs a break-glass reason.")
    with ctx.db.session() as s:
        if not versions_q.unprotect_alias(s, alias):
            return False
        holder = versions_q.version_for_alias(s, alias)
        versions_q.record_emergency(s, kind="unprotect", alias=alias, from_version=holder, to_version=holder,
                                    actor=actor.username, actor_id=actor.user_id, reason=glass, break_glass=True)
    return True


@dataclass(frozen=True)
class AliasMoveView:
    alias: str
    from_version: str | None
    to_version: str | None
    actor: str
    reason: str
    created_at: datetime


@requires("models.view")
def alias_history(ctx: AppContext, actor: Principal, limit: int = 200) -> list[AliasMoveView]:
    """Every alias move, newest first (who moved which alias from which version to which, and why)."""
    with ctx.db.session(readonly=True) as s:
        names = {v.id: v.name for v in versions_q.list_model_versions(s)}
        return [AliasMoveView(m.alias, names.get(m.from_version_id) if m.from_version_id else None,
                              names.get(m.to_version_id) if m.to_version_id else None, m.actor, m.reason,
                              m.created_at)
                for m in versions_q.alias_moves(s, limit=limit)]


@dataclass(frozen=True)
class ProtectedAliasView:
    alias: str
    version: str | None  # the version holding it, if any
    protected_by: str  # "always" for production
    reason: str


@requires("models.view")
def protected_aliases(ctx: AppContext, actor: Principal) -> list[ProtectedAliasView]:
    """Every protected alias (``production`` first) and the version holding it."""
    with ctx.db.session(readonly=True) as s:
        out = []
        for alias, row in versions_q.protected_aliases(s).items():
            holder = production_holder(ctx, s) if alias == PRODUCTION else versions_q.version_for_alias(s, alias)
            out.append(ProtectedAliasView(alias, holder.name if holder else None,
                                          "always" if row is None else row.protected_by,
                                          "" if row is None else row.reason))
        return out


# ------------------------------------------------------------------------------------------- emergency moves


@dataclass(frozen=True)
class EmergencyView:
    """A single-person move of a protected alias no second admin has acknowledged yet."""

    id: int
    kind: str  # rollback, serve, alias or unprotect
    alias: str
    from_version: str | None
    to_version: str | None
    actor: str
    actor_id: int | None
    reason: str
    break_glass: bool
    at: datetime

    @property
    def summary(self) -> str:
        how = "break-glass shell command" if self.break_glass else "emergency rollback"
        if self.kind == "unprotect":
            what = f"removed the protection of {self.alias}"
        else:
            what = f"moved {self.alias} from {self.from_version or 'nothing'} to {self.to_version or 'nothing'}"
        return f"{how} #{self.id}: {self.actor} {what} without a second approval ({self.reason})"


def _emergency_owner(session: Session, move_id: str) -> int | None:
    move = versions_q.get_emergency(session, int(move_id))
    return None if move is None else move.actor_id


ACK_RULE = register_duty_rule(DutyRule("model.emergency_acknowledge",
                                       "nobody acknowledges their own emergency move", owner_of=_emergency_owner))


@requires("models.view")
def unacknowledged_emergencies(ctx: AppContext, actor: Principal) -> list[EmergencyView]:
    """Emergency rollbacks and break-glass moves no second admin has acknowledged yet, newest first."""
    with ctx.db.session(readonly=True) as s:
        names = {v.id: v.name for v in versions_q.list_model_versions(s)}
        return [EmergencyView(m.id, m.kind, m.alias, names.get(m.from_version_id or -1),
                              names.get(m.to_version_id or -1), m.actor, m.actor_id, m.reason, m.break_glass,
                              m.created_at)
                for m in versions_q.unacknowledged_emergencies(s)]


MAX_NOTE_CHARS = MAX_REASON_CHARS


@requires("models.acknowledge_emergency")
def acknowledge_emergency(ctx: AppContext, actor: Principal, move_id: int, note: str | None = None) -> int:
    """A second admin (never the one who made the move) acknowledges an emergency move; audited as
    ``model.emergency_acknowledged``."""
    with ctx.db.session(readonly=True) as s:
        ensure_separation(ctx, s, actor, ACK_RULE.name, str(int(move_id)))
    text = optional_text(note, "the note", MAX_NOTE_CHARS)
    with ctx.db.session() as s:
        move = versions_q.get_emergency(s, int(move_id), lock=True)
        if move is None:
            raise NotFound(f"There is no emergency move #{move_id}.")
        if move.acknowledged_at is not None:
            raise InvalidInput(f"Emergency move #{move_id} was already acknowledged by {move.acknowledged_by}.")
        versions_q.acknowledge_emergency(s, move, actor=actor.username, actor_id=actor.user_id, note=text)
        logger.info("emergency move #%s acknowledged by %s", move.id, actor.username)
        return move.id
