"""Demo versions: the recipes' models built at set-up or in the background, and how far each build is.

``llm-console init`` only records whether the demo versions are wanted (app state ``demo_models``); it trains
nothing unless ``--wait-for-all``. ``llm-console run`` then builds every pending one in a child process
(``start_background_demo_build`` starting ``build_pending_demo_versions``) while the console starts: the one it
serves first, at normal priority, given the production alias as soon as it is registered (the running console
loads it within seconds), then the others at a lower CPU priority. While a version builds, its progress is in
``<models_dir>/.<name>.status.json`` (written by the building process, read by ``demo_build_status``), which the
Models page shows as "building" and the Chat page as "being built" for the version it is waiting for.
"""

from __future__ import annotations

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

from console.services import registry, serving
from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import InvalidInput
from db import model_versions as model_versions_q
from db import state as state_q

if TYPE_CHECKING:
    from engine.demo import DemoRecipe

logger = logging.getLogger(__name__)

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
                registry.register_as_system(ctx, name=name, source=str(path), revision=None, dtype="float32",
                                            max_model_len=recipe.max_model_len, engine_args={},
                                            description=recipe.description)
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


def record_demo_models(ctx: AppContext, wanted: bool, *, by: str) -> bool:
    """Record whether this installation wants the demo versions (``init``: yes; ``init --skip-models``: no).

    A set-up step of ``llm-console init`` (which runs before any account exists), not an action of a user:
    ``by`` names who ran it in the audit log. ``llm-console run`` builds them in the background when they are
    wanted. Audited (``state.set``) only when the answer changes; returns whether it did.
    """
    value = "wanted" if wanted else "skipped"
    with ctx.db.session() as s:
        if state_q.get_state(s, DEMO_MODELS_KEY) == value:
            return False
        state_q.set_state(s, DEMO_MODELS_KEY, value, actor=by)
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


def _build_statuses(ctx: AppContext, recipes: Mapping[str, DemoRecipe] | None = None) -> list[DemoBuildView]:
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
def demo_build_status(ctx: AppContext, actor: Principal, recipes: Mapping[str, DemoRecipe] | None = None
                      ) -> list[DemoBuildView]:
    """Demo versions still being built in the background (or whose build stopped), for the Models page and
    the CLI (``recipes``: tests pass tiny ones)."""
    return _build_statuses(ctx, recipes)


@requires("chat.use")
def served_version_build(ctx: AppContext, actor: Principal) -> DemoBuildView | None:
    """The build of the version the console is to serve while it is not registered yet (building, failed or
    interrupted), for the Chat page; None when that version is not a demo version with a build under way."""
    wanted = serving.desired_state(ctx).version
    build = next((b for b in _build_statuses(ctx) if b.name == wanted), None)
    if build is None and wanted in _demo_recipes(None) and _name_registered(ctx, wanted):
        # Just built: the console's reconciler starts loading it within its next round (seconds).
        return DemoBuildView(name=wanted, state="built", fraction=1.0, message="built", started_at=None,
                             updated_at=None)
    return build
