"""The project's self-built demo support models (no model hub needed) and a tiny untrained test model."""

from __future__ import annotations

from engine.demo.corpus import REFUSAL, TOPICS, Dialogue, build_corpus
from engine.demo.scoring import DemoScore, score_model
from engine.demo.tiny import build_tiny_model
from engine.demo.train import (
    DEMO_VERSIONS,
    BuildInfo,
    DemoBuildError,
    DemoRecipe,
    ensure_demo_model,
    is_complete,
    train_demo_model,
)

__all__ = [
    "DEMO_VERSIONS",
    "REFUSAL",
    "TOPICS",
    "BuildInfo",
    "DemoBuildError",
    "DemoRecipe",
    "Dialogue",
    "DemoScore",
    "build_corpus",
    "build_tiny_model",
    "ensure_demo_model",
    "score_model",
    "is_complete",
    "train_demo_model",
]
