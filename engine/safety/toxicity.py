"""Toxicity scanning with Detoxify, and an honest offline fallback (alt-profanity-check) when its weights are missing.

Detoxify downloads its checkpoints from GitHub releases on first use. Offline, that cannot work, so
``load_toxicity_scanner`` first looks in torch hub's checkpoint cache, then tries one download with a short
timeout, and otherwise returns a ``ProfanityFallbackScanner`` together with a notice to show on screen. The
fallback says "fallback" in its name and version and only ever reports the one label it has: ``profanity``.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from engine.safety.base import Finding, ScannerLoadError
from engine.safety.chunking import Chunk, chunk_by_chars, chunk_by_token_offsets
from engine.safety.normalize import normalize

logger = logging.getLogger(__name__)

# Pinned beside the loader: the checkpoints Detoxify 0.5.4 downloads for each model type.
DETOXIFY_MODEL_TYPES: tuple[str, ...] = ("original", "unbiased", "multilingual", "original-small", "unbiased-small")
# Every label any Detoxify model can report (after Detoxify's own renaming of the Jigsaw classes).
DETOXIFY_LABELS: frozenset[str] = frozenset(
    {
        "toxicity",
        "severe_toxicity",
        "obscene",
        "threat",
        "insult",
        "identity_attack",
        "sexual_explicit",
        "male",
        "female",
        "homosexual_gay_or_lesbian",
        "christian",
        "jewish",
        "muslim",
        "black",
        "white",
        "psychiatric_or_mental_illness",
    }
)
FALLBACK_LABEL = "profanity"
# BERT-family models take 512 tokens including [CLS] and [SEP].
DETOXIFY_MAX_TOKENS = 510
DETOXIFY_OVERLAP_TOKENS = 64
# The profanity model is a bag of words: one swear word scored 1.0 alone, 0.82 in 215 characters and 0.50 in
# 344, so windows of about a sentence keep it from being diluted by the text around it.
FALLBACK_MAX_CHARS = 150
FALLBACK_OVERLAP_CHARS = 50


@dataclass(frozen=True)
class ToxicityConfig:
    """Which Detoxify model to use, or a local checkpoint plus its Hugging Face config/tokenizer directory."""

    model_type: str = "original"
    checkpoint: Path | None = None
    huggingface_config_dir: Path | None = None
    # Online users get the weights on first use; offline, the attempt gives up after this many seconds.
    allow_download: bool = True
    download_timeout_s: float = 5.0
    # When Detoxify cannot load, use alt-profanity-check instead of failing.
    allow_fallback: bool = True
    device: str = "cpu"
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.checkpoint is None and self.model_type not in DETOXIFY_MODEL_TYPES:
            raise ValueError(f"model_type must be one of {', '.join(DETOXIFY_MODEL_TYPES)}, got {self.model_type!r}")
        if self.checkpoint is not None and self.huggingface_config_dir is None:
            raise ValueError("a local checkpoint needs huggingface_config_dir (its config and tokenizer files)")


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _max_by_label(per_chunk: list[dict[str, float]], chunks: list[Chunk]) -> dict[str, tuple[float, Chunk]]:
    best: dict[str, tuple[float, Chunk]] = {}
    for scores, chunk in zip(per_chunk, chunks, strict=True):
        for label, score in scores.items():
            if label not in best or score > best[label][0]:
                best[label] = (score, chunk)
    return best


class DetoxifyModel(Protocol):
    """What ``DetoxifyScanner`` uses of a ``detoxify.Detoxify`` (the package ships no type information)."""

    class_names: list[str]
    # A transformers fast tokenizer: called with offsets on, it returns a mapping with "offset_mapping".
    tokenizer: Callable[..., Mapping[str, Any]]

    def predict(self, text: list[str]) -> Mapping[str, list[float] | float]:
        """Scores per label: one per text, or a bare float for a batch of one."""
        ...


class DetoxifyScanner:
    """Scores a text on every label of the loaded Detoxify model; long texts are scanned in 510-token windows.

    Each finding's score is the highest over the windows and its span is that window (in the original text).
    """

    name = "detoxify"

    def __init__(self, detoxify_model: DetoxifyModel, *, source: str, batch_size: int = 8) -> None:
        self._model = detoxify_model
        self.labels: tuple[str, ...] = tuple(detoxify_model.class_names)
        self.version = f"detoxify-{_package_version('detoxify')}/{source}"
        self._batch_size = batch_size
        # Fast tokenizers raise "Already borrowed" when shared across threads; one model call at a time.
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: ToxicityConfig) -> DetoxifyScanner:
        """Load Detoxify as configured; raise ScannerLoadError when the weights cannot be had."""
        from detoxify import Detoxify

        try:
            if config.checkpoint is not None:
                model = Detoxify(
                    checkpoint=str(config.checkpoint),
                    huggingface_config_path=str(config.huggingface_config_dir),
                    device=config.device,
                )
                source = f"checkpoint:{Path(config.checkpoint).name}"
            else:
                _ensure_cached_checkpoint(config)
                model = Detoxify(model_type=config.model_type, device=config.device)
                source = config.model_type
        except ScannerLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any load failure (OSError, hub errors, bad file) means "unavailable"
            raise ScannerLoadError(f"Detoxify could not be loaded: {type(exc).__name__}: {exc}") from exc
        return cls(model, source=source, batch_size=config.batch_size)

    def _chunks(self, text: str) -> list[Chunk]:
        encoded = self._model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = [(start, end) for start, end in encoded["offset_mapping"]]
        return chunk_by_token_offsets(
            offsets, text, max_tokens=DETOXIFY_MAX_TOKENS, overlap_tokens=DETOXIFY_OVERLAP_TOKENS
        )

    def scan(self, text: str) -> tuple[Finding, ...]:
        """One finding per model label: the label's highest score over the text's windows."""
        if not text.strip():
            return ()
        norm = normalize(text)
        with self._lock:
            chunks = self._chunks(norm.text)
            per_chunk: list[dict[str, float]] = []
            for i in range(0, len(chunks), self._batch_size):
                batch = [c.text for c in chunks[i : i + self._batch_size]]
                raw = self._model.predict(batch)
                # Detoxify squeezes a batch of one to a bare float per label.
                columns = {k: v if isinstance(v, list) else [v] for k, v in raw.items()}
                for j in range(len(batch)):
                    per_chunk.append({label: float(columns[label][j]) for label in self.labels})
        findings = []
        for label in self.labels:
            score, chunk = _max_by_label(per_chunk, chunks)[label]
            start, end = norm.to_original(chunk.start, chunk.end)
            findings.append(Finding(self.name, label, round(score, 4), start, end, self.version))
        return tuple(findings)


class ProfanityFallbackScanner:
    """alt-profanity-check (weights ship in its wheel): one label, ``profanity``. Used only when Detoxify is unavailable."""

    name = "profanity-fallback"
    labels: tuple[str, ...] = (FALLBACK_LABEL,)

    def __init__(self) -> None:
        from profanity_check import predict_prob

        # Returns a 1-D numpy array of float64, which are floats.
        self._predict_prob: Callable[[list[str]], Iterable[float]] = predict_prob
        self.version = f"alt-profanity-check-{_package_version('alt-profanity-check')} (fallback: Detoxify unavailable)"
        self._lock = threading.Lock()

    def scan(self, text: str) -> tuple[Finding, ...]:
        """One ``profanity`` finding: the highest probability over ~150-character windows, with that window's span."""
        if not text.strip():
            return ()
        norm = normalize(text)
        chunks = chunk_by_chars(norm.text, max_chars=FALLBACK_MAX_CHARS, overlap=FALLBACK_OVERLAP_CHARS)
        with self._lock:
            probs = list(self._predict_prob([c.text for c in chunks]))
        best = max(range(len(chunks)), key=lambda i: probs[i])
        start, end = norm.to_original(chunks[best].start, chunks[best].end)
        score = round(float(probs[best]), 4)
        return (Finding(self.name, FALLBACK_LABEL, score, start, end, self.version),)


def _checkpoint_url(model_type: str) -> str:
    from detoxify.detoxify import MODEL_URLS

    url: str = MODEL_URLS[model_type]
    return url


def _cached_checkpoint_path(model_type: str) -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / _checkpoint_url(model_type).rsplit("/", 1)[-1]


def _ensure_cached_checkpoint(config: ToxicityConfig) -> None:
    """Make sure the model type's checkpoint is in torch hub's cache, where Detoxify looks before downloading.

    torch.hub downloads without a timeout, which hangs for minutes on a machine without internet; we fetch the
    file ourselves with ``download_timeout_s`` instead.
    """
    path = _cached_checkpoint_path(config.model_type)
    if path.exists():
        return
    if not config.allow_download:
        raise ScannerLoadError(f"Detoxify checkpoint {path.name} is not cached and downloads are disabled")
    url = _checkpoint_url(config.model_type)
    logger.info("downloading Detoxify checkpoint %s", url)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=config.download_timeout_s) as response, partial.open("wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ScannerLoadError(f"Detoxify checkpoint could not be downloaded from {url}: {exc}") from exc


@dataclass(frozen=True)
class ToxicityLoad:
    """What ``load_toxicity_scanner`` did: the scanner, a notice for the screen (None if all is well), seconds spent."""

    scanner: DetoxifyScanner | ProfanityFallbackScanner
    notice: str | None
    seconds: float


def load_toxicity_scanner(config: ToxicityConfig | None = None) -> tuple[DetoxifyScanner | ProfanityFallbackScanner, str | None]:
    """Load Detoxify as configured, or fall back to alt-profanity-check with a plain notice saying so.

    Returns ``(scanner, notice)``; ``notice`` is None when Detoxify loaded. Raises ScannerLoadError only when
    Detoxify fails and ``config.allow_fallback`` is False.
    """
    load = load_toxicity(config)
    return load.scanner, load.notice


def load_toxicity(config: ToxicityConfig | None = None) -> ToxicityLoad:
    """Like ``load_toxicity_scanner`` but also reports how long the decision took."""
    config = config or ToxicityConfig()
    began = time.perf_counter()
    try:
        scanner: DetoxifyScanner | ProfanityFallbackScanner = DetoxifyScanner.from_config(config)
        notice = None
    except ScannerLoadError as exc:
        if not config.allow_fallback:
            raise
        logger.warning("Detoxify unavailable, using the alt-profanity-check fallback: %s", exc)
        scanner = ProfanityFallbackScanner()
        notice = (
            "Toxicity model Detoxify is not available (its weights could not be loaded: "
            f"{exc}). Using the offline fallback alt-profanity-check, which only detects profanity: "
            "threats, insults, identity attacks and other toxicity labels are NOT checked."
        )
    return ToxicityLoad(scanner, notice, time.perf_counter() - began)
