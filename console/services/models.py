"""Model versions: registering (admins, the CLI, the demo set-up), listing, and which one is live."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import InvalidInput
from db import model_versions as model_versions_q
from db import state as state_q
from engine.errors import EngineArgsError
from engine.fingerprint import fingerprint_dir
from engine.types import ALLOWED_ENGINE_ARGS, check_engine_args

if TYPE_CHECKING:
    from db.tables import ModelVersion
    from engine.demo import DemoRecipe

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
DTYPES = ("auto", "float32", "float16", "bfloat16", "half", "float")
MAX_NOTES_CHARS = 2000


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


def _register(ctx: AppContext, actor: str, actor_id: int | None, *, name: str, source: str, revision: str | None,
              dtype: str | None, max_model_len: int | None, engine_args: Any, description: str | None,
              quantization: str | None = None, base: str | None = None) -> ModelVersionView:
    name, source = _validate(name, source, dtype, max_model_len)
    if description is not None and len(description) > MAX_NOTES_CHARS:
        raise InvalidInput(f"Keep the notes under {MAX_NOTES_CHARS:,} characters.")
    base = (base or "").strip() or None
    base_id: int | None = None
    if base is not None:  # a LoRA adapter on a registered base version
        from console.services.serving import adapter_rank

        if not Path(source).is_dir():
            raise InvalidInput("A LoRA adapter is registered from a local directory holding adapter_config.json.")
        adapter_rank(source)
        with ctx.db.session(readonly=True) as s:
            base_version = model_versions_q.get_model_version_by_name(s, base)
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
        if model_versions_q.get_model_version_by_name(s, name) is not None:
            raise InvalidInput(f"A model version named {name!r} is already registered.")
    fingerprint = None
    if Path(source).is_dir():
        if base_id is None:
            _check_config(source, trust_remote_code=ctx.settings.trust_remote_code)
        try:
            fingerprint = fingerprint_dir(source)
        except ValueError as exc:
            raise InvalidInput(f"{source} holds no model files (weights, config or tokenizer).") from exc
    elif not (revision or "").strip():
        logger.warning("hub model %s registered without a pinned revision", source)
    with ctx.db.session() as s:
        if model_versions_q.get_model_version_by_name(s, name) is not None:  # registered meanwhile
            raise InvalidInput(f"A model version named {name!r} is already registered.")
        m = model_versions_q.register_model_version(
            s, name=name, source=source, revision=(revision or "").strip() or None, dtype=dtype or "auto",
            max_model_len=max_model_len, engine_args=args, description=(description or "").strip() or None,
            actor=actor, actor_id=actor_id, quantization=quantization,
            fingerprint=fingerprint.sha256 if fingerprint else None,
            fingerprint_files=fingerprint.as_records() if fingerprint else None, base_version_id=base_id,
        )
        return _view(m, base=base)


def register_cli(ctx: AppContext, **fields: Any) -> ModelVersionView:
    """Register a version from the command line (the shell user is trusted, as with ``init``)."""
    return _register(ctx, "cli", None, **fields)


@requires("models.register")
def register(ctx: AppContext, actor: Principal, **fields: Any) -> ModelVersionView:
    return _register(ctx, actor.username, actor.user_id, **fields)


def list_versions_cli(ctx: AppContext) -> list[ModelVersionView]:
    """Every registered version with its aliases (the shell user is trusted)."""
    with ctx.db.session(readonly=True) as s:
        aliases = model_versions_q.aliases_by_version(s)
        versions = model_versions_q.list_model_versions(s)
        names = {m.id: m.name for m in versions}
        return [_view(m, aliases.get(m.id, ()), names.get(m.base_version_id) if m.base_version_id else None)
                for m in versions]


@requires("models.view")
def list_versions(ctx: AppContext, actor: Principal) -> list[ModelVersionView]:
    return list_versions_cli(ctx)


# ---------------------------------------------------------------- demo versions: built at set-up or in the background
#
# ``llm-console init`` only records whether the demo versions are wanted (app state ``demo_models``); it trains
# nothing unless ``--wait-for-all``. ``llm-console run`` then builds every pending one in a child process
# (``start_background_demo_build`` starting ``build_pending_demo_versions``) while the console starts: the one it
# serves first, at normal priority, given the production alias as soon as it is registered (the running console
# loads it within seconds), then the others at a lower CPU priority. While a version builds, its progress is in
# ``<models_dir>/.<name>.status.json`` (written by the building process, read by ``demo_build_status``), which the
# Models page shows as "building" and the Chat page as "being built" for the version it is waiting for.

BUILD_LOG = "demo-build.log"
DEMO_MODELS_KEY = "demo_models"  # app state: "wanted" (init) or "skipped" (init --skip-models)
BACKGROUND_NICENESS = 10  # added to the build's CPU niceness once the served version is built


@dataclass(frozen=True)
class DemoBuildView:
    """A demo version that is not registered yet: being built (with progress), or whose build stopped."""

    name: str
    state: str  # "building", "failed", "interrupted" (the building process is gone) or "built" (not loaded yet)
    fraction: float  # 0..1
    message: str
    started_at: datetime | None
    updated_at: datetime | None
    pid: int | None = None
    log: Path | None = None  # the build's output (<data_dir>/demo-build.log)

    @property
    def detail(self) -> str:
        """Where the build is, in a reader's words: "training step 180 of 400", else the build's own message."""
        step = _TRAINING_STEP.search(self.message)
        return f"training step {step[1]} of {step[2]}" if step else self.message


_TRAINING_STEP = re.compile(r"\bstep (\d+) of (\d+)")


def _demo_recipes(recipes: Mapping[str, DemoRecipe] | None) -> Mapping[str, DemoRecipe]:
    if recipes is not None:
        return recipes
    from engine.demo import DEMO_VERSIONS

    return DEMO_VERSIONS


def _status_path(ctx: AppContext, name: str) -> Path:
    return ctx.settings.models_dir / f".{name}.status.json"


def _write_status(path: Path, **fields: Any) -> None:
    """Replace the status file atomically (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**fields, "updated_at": time.time()}))
    os.replace(tmp, path)


def _read_status(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # a finished child that nobody has waited for yet is a zombie: gone for our purposes
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _registered_names(ctx: AppContext) -> set[str]:
    with ctx.db.session(readonly=True) as s:
        return {m.name for m in model_versions_q.list_model_versions(s)}


def pending_demo_versions(ctx: AppContext, recipes: Mapping[str, DemoRecipe] | None = None) -> list[str]:
    """Demo versions not registered yet, in build order (the shell user is trusted, as with ``init``)."""
    registered = _registered_names(ctx)
    return [name for name in _demo_recipes(recipes) if name not in registered]


def ensure_demo_versions(
    ctx: AppContext,
    progress: Callable[[str, float], None] | None = None,
    *,
    names: Sequence[str] | None = None,
    recipes: Mapping[str, DemoRecipe] | None = None,
) -> list[str]:
    """Build (once, cached) and register the demo versions ``names`` (default: all); return those registered now.

    While a version builds, its progress is kept in its status file for ``demo_build_status``; the file is
    removed once the version is registered, and says "failed" (with the error) if the build raised.
    ``recipes`` defaults to ``engine.demo.DEMO_VERSIONS`` (tests pass tiny ones).
    """
    from engine.demo import ensure_demo_model

    all_recipes = _demo_recipes(recipes)
    unknown = sorted(set(names or ()) - set(all_recipes))
    if unknown:
        raise InvalidInput(f"Unknown demo version(s): {', '.join(unknown)}; known: {', '.join(all_recipes)}.")
    registered = []
    for name, recipe in all_recipes.items():
        if names is not None and name not in names:
            continue
        status = _status_path(ctx, name)
        started = time.time()

        def report(message: str, fraction: float, *, _name: str = name, _status: Path = status,
                   _started: float = started) -> None:
            _write_status(_status, name=_name, state="building", fraction=fraction, message=message,
                          pid=os.getpid(), started_at=_started)
            if progress is not None:
                progress(message, fraction)

        already = _name_registered(ctx, name)
        try:
            path = ensure_demo_model(ctx.settings.models_dir, name, progress=report, recipe=recipe)
            if not already:
                _register(ctx, "system", None, name=name, source=str(path), revision=None, dtype="float32",
                          max_model_len=recipe.max_model_len, engine_args={}, description=recipe.description)
                registered.append(name)
        except BaseException as exc:
            _write_status(status, name=name, state="failed", fraction=0.0, message=f"{type(exc).__name__}: {exc}",
                          pid=os.getpid(), started_at=started)
            raise
        status.unlink(missing_ok=True)
    return registered


def _name_registered(ctx: AppContext, name: str) -> bool:
    with ctx.db.session(readonly=True) as s:
        return model_versions_q.get_model_version_by_name(s, name) is not None


def record_demo_models_cli(ctx: AppContext, wanted: bool) -> bool:
    """Record whether this installation wants the demo versions (``init``: yes; ``init --skip-models``: no).

    ``llm-console run`` builds them in the background when they are wanted. Audited (``state.set``) only when the
    answer changes; returns whether it did (the shell user is trusted, as with ``init``).
    """
    value = "wanted" if wanted else "skipped"
    with ctx.db.session() as s:
        if state_q.get_state(s, DEMO_MODELS_KEY) == value:
            return False
        state_q.set_state(s, DEMO_MODELS_KEY, value, actor="cli")
    return True


def demo_models_wanted(ctx: AppContext) -> bool | None:
    """True when ``init`` recorded that the demo versions are wanted, False when skipped, None if never recorded
    (an installation set up before ``init`` recorded it)."""
    with ctx.db.session(readonly=True) as s:
        value = state_q.get_state(s, DEMO_MODELS_KEY)
    return None if value is None else value == "wanted"


def served_demo_version(ctx: AppContext, recipes: Mapping[str, DemoRecipe] | None = None) -> str | None:
    """The demo version the console serves first: the configured default if it is one, else the first."""
    all_recipes = _demo_recipes(recipes)
    if ctx.settings.default_model in all_recipes:
        return ctx.settings.default_model
    return next(iter(all_recipes), None)


def _lower_priority(increment: int) -> None:
    try:
        os.nice(increment)
    except OSError as exc:  # not allowed here: build at the same priority, slower pages but the same model
        logger.warning("could not lower the demo build's CPU priority: %s", exc)


def build_pending_demo_versions(
    ctx: AppContext,
    progress: Callable[[str, float], None] | None = None,
    *,
    recipes: Mapping[str, DemoRecipe] | None = None,
    niceness: int = BACKGROUND_NICENESS,
) -> list[str]:
    """Build and register every pending demo version: what ``llm-console run``'s background child does.

    The version the console serves (``served_demo_version``) comes first, at normal CPU priority: it is the way
    to the first answer. As soon as it is registered it gets the production alias unless a version holds it
    (``serving.ensure_production``), so running consoles load it within seconds. Before building any other
    version this process lowers its own CPU priority by ``niceness`` (``os.nice``), so the serving console
    (pages, chats, the engine) wins the cores over that training. Returns the versions registered, in order.
    """
    from console.services import serving

    all_recipes = _demo_recipes(recipes)
    served = served_demo_version(ctx, all_recipes)
    registered: list[str] = []
    lowered = False
    for name in sorted(pending_demo_versions(ctx, all_recipes), key=lambda n: n != served):  # stable sort
        if name != served and not lowered:
            _lower_priority(niceness)
            lowered = True
        registered += ensure_demo_versions(ctx, progress, names=[name], recipes=all_recipes)
        if name == served:
            production = serving.ensure_production(ctx)
            if production:
                logger.info("%s holds the production alias", production)
    return registered


def start_background_demo_build(ctx: AppContext, command: Sequence[str],
                                recipes: Mapping[str, DemoRecipe] | None = None) -> list[str]:
    """Start ``command`` (a process that runs ``build_pending_demo_versions``) for the demo versions not
    registered yet.

    Only when the demo versions are wanted (``init`` recorded it) or the first one is registered (an
    installation whose ``init`` built it), never after ``init --skip-models`` on an installation without
    them, and only if no other process is building them already. The child's output goes to
    ``<data_dir>/demo-build.log``; each pending version's status file says "building" from now on, so the Models
    and Chat pages show it at once. Returns the versions the child builds (empty when nothing was started).
    """
    all_recipes = _demo_recipes(recipes)
    pending = pending_demo_versions(ctx, all_recipes)
    first = next(iter(all_recipes), None)
    if not pending or first is None:
        return []
    if first in pending and not demo_models_wanted(ctx):
        return []
    if any(_alive((_read_status(_status_path(ctx, n)) or {}).get("pid")) for n in pending):
        return []  # another console's build is still running (the build lock would make this one wait)
    log_path = ctx.settings.data_dir / BUILD_LOG
    with open(log_path, "ab") as log:
        # Same session and process group as the console: stopping the console (Ctrl-C) stops the build too,
        # and the next start picks it up again (a half-built model is never taken as finished).
        child = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    now = time.time()
    for name in pending:
        _write_status(_status_path(ctx, name), name=name, state="building", fraction=0.0,
                      message="waiting to start", pid=child.pid, started_at=now)
    logger.info("building %s in the background (pid %s, log %s)", ", ".join(pending), child.pid, log_path)
    return pending


def _when(value: Any) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) else None


def demo_build_status_cli(ctx: AppContext, recipes: Mapping[str, DemoRecipe] | None = None) -> list[DemoBuildView]:
    """Every demo version that is not registered yet and has a build status (building, failed, interrupted)."""
    views = []
    for name in pending_demo_versions(ctx, recipes):
        data = _read_status(_status_path(ctx, name))
        if data is None:
            continue
        state = str(data.get("state") or "building")
        if state == "building" and not _alive(data.get("pid")):
            state = "interrupted"
        fraction = data.get("fraction")
        views.append(DemoBuildView(
            name=name, state=state,
            fraction=min(1.0, max(0.0, float(fraction))) if isinstance(fraction, int | float) else 0.0,
            message=str(data.get("message") or ""), started_at=_when(data.get("started_at")),
            updated_at=_when(data.get("updated_at")),
            pid=data.get("pid") if isinstance(data.get("pid"), int) else None,
            log=ctx.settings.data_dir / BUILD_LOG,
        ))
    return views


@requires("models.view")
def demo_build_status(ctx: AppContext, actor: Principal) -> list[DemoBuildView]:
    """Demo versions still being built in the background (or whose build stopped), for the Models page."""
    return demo_build_status_cli(ctx)


@requires("chat.use")
def served_version_build(ctx: AppContext, actor: Principal) -> DemoBuildView | None:
    """The build of the version the console is to serve while it is not registered yet (building, failed or
    interrupted), for the Chat page; None when that version is not a demo version with a build under way."""
    from console.services import serving

    wanted = serving.desired_state(ctx).version
    build = next((b for b in demo_build_status_cli(ctx) if b.name == wanted), None)
    if build is None and wanted in _demo_recipes(None) and _name_registered(ctx, wanted):
        # Just built: the console's reconciler starts loading it within its next round (seconds).
        return DemoBuildView(name=wanted, state="built", fraction=1.0, message="built", started_at=None,
                             updated_at=None)
    return build
