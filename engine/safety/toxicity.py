"""Toxicity scanning: Detoxify, else an offline model with Detoxify's labels, else an honest profanity fallback.

Detoxify downloads its checkpoints from GitHub releases on first use. Offline, that cannot work, so
``load_toxicity_scanner`` first looks in torch hub's checkpoint cache, then tries one download with a short
timeout. When Detoxify cannot load it uses, in this order:

1. ``OfflineToxicityScanner``: tox-block 0.1.2's Jigsaw-trained network (see ``engine.safety.offline_model``),
   run in numpy, with Detoxify's six labels; set-up converts it into the virtual environment. Its ``toxicity``
   label comes from a small head retrained on public labelled text (``engine.safety.toxicity_head``, shipped as
   package data).
2. ``ProfanityFallbackScanner``: alt-profanity-check, which only reports one label, ``profanity``.

Both come with a notice to show on screen. Every scanner has a ``kind`` (``detoxify``, ``offline``,
``fallback``: the policy's per-detector threshold tables are keyed by it), a ``display_name`` for the screen,
and a ``version`` that each finding carries as its detector version.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.safety import deadline
from engine.safety.base import Finding, ScannerLoadError
from engine.safety.chunking import (
    Chunk,
    chunk_by_chars,
    chunk_by_token_offsets,
    sentence_spans,
    token_windows,
)
from engine.safety.normalize import normalize
from engine.safety.offline_model import LABELS as OFFLINE_LABELS
from engine.safety.offline_model import MAX_TOKENS as OFFLINE_MAX_TOKENS
from engine.safety.offline_model import MODEL_NAME as OFFLINE_MODEL_NAME
from engine.safety.offline_model import TOXBLOCK_VERSION

if TYPE_CHECKING:
    from engine.safety.offline_model import ToxBlockModel
    from engine.safety.toxicity_head import ToxicityHead

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
# The offline network reads at most 100 known words; it scores each sentence (a longer one in windows of 100
# overlapping by 25), all of a text's windows in one batch.
OFFLINE_OVERLAP_TOKENS = 25
OFFLINE_BATCH_SIZE = 64

# Which detector judged: the keys of the policy's [toxicity.thresholds.<kind>] tables.
DETECTOR_DETOXIFY = "detoxify"
DETECTOR_OFFLINE = "offline"
DETECTOR_FALLBACK = "fallback"
DETECTOR_KINDS: tuple[str, ...] = (DETECTOR_DETOXIFY, DETECTOR_OFFLINE, DETECTOR_FALLBACK)
# Scanner name (each finding's ``detector``) -> detector kind.
DETECTOR_KIND_BY_NAME: Mapping[str, str] = {
    "detoxify": DETECTOR_DETOXIFY,
    "tox-block": DETECTOR_OFFLINE,
    "profanity-fallback": DETECTOR_FALLBACK,
}
# The labels each kind can report.
DETECTOR_LABELS: Mapping[str, frozenset[str]] = {
    DETECTOR_DETOXIFY: DETOXIFY_LABELS,
    DETECTOR_OFFLINE: frozenset(OFFLINE_LABELS),
    DETECTOR_FALLBACK: frozenset({FALLBACK_LABEL}),
}


@dataclass(frozen=True)
class ToxicityConfig:
    """Which Detoxify model to use, or a local checkpoint plus its Hugging Face config/tokenizer directory."""

    model_type: str = "original"
    checkpoint: Path | None = None
    huggingface_config_dir: Path | None = None
    # Online users get the weights on first use; offline, the attempt gives up after this many seconds.
    allow_download: bool = True
    download_timeout_s: float = 5.0
    # When Detoxify cannot load, use the offline model (or, without it, alt-profanity-check) instead of failing.
    allow_fallback: bool = True
    device: str = "cpu"
    batch_size: int = 8
    # The offline model: False skips it (straight to alt-profanity-check); its directory, None meaning where
    # set-up puts it (engine.safety.offline_model.default_model_dir()).
    allow_offline_model: bool = True
    offline_model_dir: Path | None = None
    # The offline model's toxicity label from the head trained on public data (engine.safety.toxicity_head);
    # False keeps tox-block's own toxicity output.
    offline_head: bool = True

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
    kind = DETECTOR_DETOXIFY
    one_finding_per_label = True  # a whole-text judgement per label (see engine.safety.incremental)

    def __init__(self, detoxify_model: DetoxifyModel, *, source: str, batch_size: int = 8) -> None:
        self._model = detoxify_model
        self.labels: tuple[str, ...] = tuple(detoxify_model.class_names)
        self.version = f"detoxify-{_package_version('detoxify')}/{source}"
        self.display_name = f"Detoxify {_package_version('detoxify')} ({source})"
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
        with deadline.hold(self._lock):
            chunks = self._chunks(norm.text)
            per_chunk: list[dict[str, float]] = []
            for i in range(0, len(chunks), self._batch_size):
                deadline.check(f"{self.name} windows {i}-")  # a scan over its limit stops between batches
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


class OfflineToxicityScanner:
    """tox-block's Jigsaw-trained network in numpy, with Detoxify's six labels. Used when Detoxify is unavailable.

    Each label's score is its highest probability over the text's sentences (a sentence longer than 100 known
    words in windows of 100, 25 overlapping); the span is that sentence's (the whole text when it is one
    sentence). The network was trained on whole comments, yet it reads a threat much better alone than after a
    paragraph of ordinary text: in a trial on the evaluation set with each text put between five ordinary
    support sentences, ROC AUC for threat was 0.63 with 100-word windows and 0.83 by sentence. All of a text's windows
    go through the network in one batch: the cost is that of the longest sentence, not of the number of them.

    With a ``head`` (the default from ``from_config``), each window's ``toxicity`` is the head's score from the
    window's words and the network's six probabilities; the other labels are the network's.
    """

    name = "tox-block"
    kind = DETECTOR_OFFLINE
    one_finding_per_label = True  # a whole-text judgement per label (see engine.safety.incremental)
    labels: tuple[str, ...] = OFFLINE_LABELS

    def __init__(self, model: ToxBlockModel, head: ToxicityHead | None = None) -> None:
        self._model = model
        self._head = head
        if head is None:
            self.version = f"{OFFLINE_MODEL_NAME} (offline model: Detoxify unavailable)"
            self.display_name = f"offline model tox-block {TOXBLOCK_VERSION}"
        else:
            self.version = f"{OFFLINE_MODEL_NAME}+{head.version} (offline model: Detoxify unavailable)"
            self.display_name = f"offline model tox-block {TOXBLOCK_VERSION} with its toxicity head"

    @classmethod
    def from_config(cls, config: ToxicityConfig) -> OfflineToxicityScanner:
        """Load the converted model from ``config.offline_model_dir`` (or set-up's place) and, unless
        ``config.offline_head`` is off, the toxicity head shipped with the package; ScannerLoadError if absent."""
        from engine.safety.offline_model import OfflineModelError, ToxBlockModel, default_model_dir
        from engine.safety.toxicity_head import HeadError, ToxicityHead

        model_dir = config.offline_model_dir or default_model_dir()
        try:
            return cls(ToxBlockModel(model_dir), ToxicityHead() if config.offline_head else None)
        except (OfflineModelError, HeadError) as exc:
            raise ScannerLoadError(str(exc)) from exc

    def scan(self, text: str) -> tuple[Finding, ...]:
        """One finding per label: its highest score over the text's sentences, with that sentence's span."""
        if not text.strip():
            return ()
        norm = normalize(text)
        tokens = self._model.tokens(norm.text)
        starts = [t.start for t in tokens]
        spans: list[tuple[int, int]] = []
        sequences: list[list[int]] = []
        sentences = sentence_spans(norm.text)
        for sentence_start, sentence_end in sentences:
            first = bisect.bisect_left(starts, sentence_start)
            stop = bisect.bisect_left(starts, sentence_end)
            windows = token_windows(stop - first, max_tokens=OFFLINE_MAX_TOKENS, overlap_tokens=OFFLINE_OVERLAP_TOKENS)
            if len(windows) <= 1:
                spans.append((sentence_start, sentence_end))
                sequences.append([t.id for t in tokens[first:stop]])
                continue
            for a, b in windows:
                spans.append((tokens[first + a].start, tokens[first + b - 1].end))
                sequences.append([t.id for t in tokens[first + a : first + b]])
        if len(sentences) == 1 and len(sequences) == 1:
            spans = [(0, len(norm.text))]
        scores: list[list[float]] = []
        for i in range(0, len(sequences), OFFLINE_BATCH_SIZE):
            deadline.check(f"{self.name} windows {i}-")  # a scan over its limit stops between batches
            scores.extend(self._model.predict_ids(sequences[i : i + OFFLINE_BATCH_SIZE]).tolist())
        if self._head is not None and scores:
            # The head rescores toxicity from each window's words and tox-block's six probabilities for it.
            column = self.labels.index(self._head.label)
            head = self._head.score([norm.text[a:b] for a, b in spans], scores)
            for row, value in zip(scores, head.tolist(), strict=True):
                row[column] = value
        findings = []
        for j, label in enumerate(self.labels):
            best = max(range(len(scores)), key=lambda i: scores[i][j])
            start, end = norm.to_original(*spans[best])
            findings.append(Finding(self.name, label, round(float(scores[best][j]), 4), start, end, self.version))
        return tuple(findings)


class ProfanityFallbackScanner:
    """alt-profanity-check (weights ship in its wheel): one label, ``profanity``. The last resort: used only when
    neither Detoxify nor the offline model can load."""

    name = "profanity-fallback"
    kind = DETECTOR_FALLBACK
    one_finding_per_label = True  # a whole-text judgement per label (see engine.safety.incremental)
    labels: tuple[str, ...] = (FALLBACK_LABEL,)

    def __init__(self) -> None:
        from profanity_check import predict_prob

        # Returns a 1-D numpy array of float64, which are floats.
        self._predict_prob: Callable[[list[str]], Iterable[float]] = predict_prob
        self.version = f"alt-profanity-check-{_package_version('alt-profanity-check')} (fallback: Detoxify unavailable)"
        self.display_name = "offline fallback alt-profanity-check (profanity only)"
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


ToxicityScanner = DetoxifyScanner | OfflineToxicityScanner | ProfanityFallbackScanner


@dataclass(frozen=True)
class ToxicityLoad:
    """What ``load_toxicity_scanner`` did: the scanner, a notice for the screen (None if all is well), seconds spent."""

    scanner: ToxicityScanner
    notice: str | None
    seconds: float

    @property
    def detector(self) -> str:
        """Which one judges: ``detoxify``, ``offline`` or ``fallback``."""
        return self.scanner.kind


def load_toxicity_scanner(config: ToxicityConfig | None = None) -> tuple[ToxicityScanner, str | None]:
    """Load Detoxify as configured, else the offline model, else alt-profanity-check, with a notice saying which.

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
        scanner: ToxicityScanner = DetoxifyScanner.from_config(config)
        return ToxicityLoad(scanner, None, time.perf_counter() - began)
    except ScannerLoadError as exc:
        if not config.allow_fallback:
            raise
        detoxify_problem = exc
    unavailable = f"Toxicity model Detoxify is not available (its weights could not be loaded: {detoxify_problem})."
    offline_problem: Exception | str = "switched off (allow_offline_model = false)"
    if config.allow_offline_model:
        try:
            scanner = OfflineToxicityScanner.from_config(config)
        except ScannerLoadError as exc:
            offline_problem = exc
        else:
            logger.warning("Detoxify unavailable, using the offline model %s: %s", OFFLINE_MODEL_NAME, detoxify_problem)
            notice = (
                f"{unavailable} Using the offline model {OFFLINE_MODEL_NAME} instead: a smaller network trained on "
                "the same kind of data, with the same six labels (toxicity, severe toxicity, obscene, threat, "
                "insult, identity attack) and its own thresholds; it misses more than Detoxify does."
            )
            return ToxicityLoad(scanner, notice, time.perf_counter() - began)
    logger.warning("Detoxify and the offline model unavailable, using the alt-profanity-check fallback: %s; %s",
                   detoxify_problem, offline_problem)
    scanner = ProfanityFallbackScanner()
    notice = (
        f"{unavailable} The offline model {OFFLINE_MODEL_NAME} is not available either ({offline_problem}). "
        "Using the offline fallback alt-profanity-check, which only detects profanity: "
        "threats, insults, identity attacks and other toxicity labels are NOT checked."
    )
    return ToxicityLoad(scanner, notice, time.perf_counter() - began)


def toxicity_scanner_of(scanners: Iterable[object]) -> ToxicityScanner | None:
    """The toxicity scanner among a runner's scanners (the one that judges toxicity), or None."""
    for scanner in scanners:
        if isinstance(scanner, DetoxifyScanner | OfflineToxicityScanner | ProfanityFallbackScanner):
            return scanner
    return None
