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
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from console.services.access import DutyRule, Principal, ensure_separation, register_duty_rule, requires
from console.services.context import AppContext
from console.services.errors import AccessDenied, InvalidInput, ModelUnavailable, NotFound
from console.services.text import optional_text, required_text
from db import audit as audit_q
from db import model_versions as versions_q
from db.model_versions import PRODUCTION
from engine.errors import EngineArgsError
from engine.fingerprint import changed_files, fingerprint_dir
from engine.types import ALLOWED_ENGINE_ARGS, LORA_RANKS, LoraAdapter, ModelSpec, check_engine_args

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from db.tables import ModelVersion

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
DTYPES = ("auto", "float32", "float16", "bfloat16", "half", "float")
MAX_NOTES_CHARS = 2000
MAX_REVISION_CHARS = 200  # a hub commit hash or tag; also bounds a base version's name
ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,59}$")
MAX_REASON_CHARS = 1000


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
                            m.retired_at is not None, base)


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


def _register(ctx: AppContext, actor: str, actor_id: int | None, *, name: str, source: str, revision: str | None,
              dtype: str | None, max_model_len: int | None, engine_args: Any, description: str | None,
              quantization: str | None = None, base: str | None = None) -> ModelVersionView:
    name, source = _validate(name, source, dtype, max_model_len)
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
        )
        return _view(m, base=base)


@requires("models.register")
def register(ctx: AppContext, actor: Principal, **fields: Any) -> ModelVersionView:
    """Register a version (fields: name, source, revision, dtype, max_model_len, engine_args, description,
    quantization, base): checked, fingerprinted if local, audited."""
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


def check_files(version: ModelVersion) -> None:
    """Refuse a local version whose weight or tokenizer files changed since it was registered."""
    if not version.fingerprint:
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
    return ModelSpec(name=version.name, source=model.source, revision=model.revision, dtype=model.dtype or "auto",
                     max_model_len=model.max_model_len, engine_args=engine_args, lora=lora)


def loadable_spec(ctx: AppContext, name: str) -> ModelSpec:
    """The spec of a registered, not retired version whose files (and its base's) are unchanged; else a clear
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
        return spec_of(version, base)


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
