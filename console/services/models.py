"""Model versions: registering (admins, the CLI, the demo set-up), listing, and which one is live."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from console.services.access import Principal, requires
from console.services.context import Services
from console.services.errors import InvalidInput, NotFound
from db import models_repo
from db import state as state_q
from db.state import LIVE_MODEL_KEY
from engine.types import ModelSpec

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
DTYPES = ("auto", "float32", "float16", "bfloat16", "half", "float")


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


def _view(m) -> ModelVersionView:  # noqa: ANN001 - db.models.ModelVersion
    return ModelVersionView(m.id, m.name, m.source, m.revision, m.dtype, m.max_model_len, dict(m.engine_args or {}),
                            m.description, m.status, m.created_at)


def _engine_arg_names() -> set[str]:
    from vllm.engine.arg_utils import EngineArgs  # heavy import: only when validating engine arguments

    return {f.name for f in dataclasses.fields(EngineArgs)}


# Arguments the record sets through its own columns; giving them in engine_args too would be ambiguous.
_RESERVED_ARGS = {"model", "tokenizer", "revision", "dtype", "max_model_len"}


def parse_engine_args(raw: str | dict[str, Any] | None) -> dict[str, Any]:
    """Parse and check vLLM engine arguments given as a JSON object; unknown names are refused."""
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
    unknown = sorted(set(value) - _engine_arg_names())
    if unknown:
        raise InvalidInput(f"Unknown vLLM engine argument(s): {', '.join(unknown)}.")
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


def _register(svc: Services, actor: str, actor_id: int | None, *, name: str, source: str, revision: str | None,
              dtype: str | None, max_model_len: int | None, engine_args: Any, description: str | None
              ) -> ModelVersionView:
    name, source = _validate(name, source, dtype, max_model_len)
    args = parse_engine_args(engine_args)
    with svc.db.session() as s:
        if models_repo.get_model_version_by_name(s, name) is not None:
            raise InvalidInput(f"A model version named {name!r} is already registered.")
        m = models_repo.register_model_version(
            s, name=name, source=source, revision=(revision or "").strip() or None, dtype=dtype or "auto",
            max_model_len=max_model_len, engine_args=args, description=(description or "").strip() or None,
            actor=actor, actor_id=actor_id,
        )
        return _view(m)


def register_cli(svc: Services, **fields: Any) -> ModelVersionView:
    """Register a version from the command line (the shell user is trusted, as with ``init``)."""
    return _register(svc, "cli", None, **fields)


@requires("models.register")
def register(svc: Services, actor: Principal, **fields: Any) -> ModelVersionView:
    return _register(svc, actor.username, actor.user_id, **fields)


def all_versions(svc: Services) -> list[ModelVersionView]:
    with svc.db.session() as s:
        return [_view(m) for m in models_repo.list_model_versions(s)]


@requires("models.view")
def list_versions(svc: Services, actor: Principal) -> list[ModelVersionView]:
    return all_versions(svc)


def live_version_name(svc: Services) -> str:
    """The version the console should serve: the last one switched to, else the configured default."""
    with svc.db.session() as s:
        value = state_q.get_state(s, LIVE_MODEL_KEY)
    return value or svc.settings.default_model


def spec_for(svc: Services, name: str) -> ModelSpec:
    with svc.db.session() as s:
        m = models_repo.get_model_version_by_name(s, name)
        if m is None:
            raise NotFound(f"Model version {name!r} is not registered. Run `llm-console init` or register it.")
        return ModelSpec(name=m.name, source=m.source, revision=m.revision, dtype=m.dtype or "auto",
                         max_model_len=m.max_model_len, engine_args=dict(m.engine_args or {}))


def ensure_demo_versions(svc: Services, progress=None) -> list[str]:  # noqa: ANN001
    """Build (once, cached) and register the demo versions; return the names registered now."""
    from engine.demo import DEMO_VERSIONS, ensure_demo_model

    registered = []
    for name, recipe in DEMO_VERSIONS.items():
        path = ensure_demo_model(svc.settings.models_dir, name, progress=progress)
        with svc.db.session() as s:
            if models_repo.get_model_version_by_name(s, name) is not None:
                continue
        _register(svc, "system", None, name=name, source=str(path), revision=None, dtype="float32",
                  max_model_len=recipe.max_model_len, engine_args={}, description=recipe.description)
        registered.append(name)
    return registered
