"""The offline prompt-injection and jailbreak classifier: two logistic regressions over hashed text features.

Scores of two labels, each a probability:

- ``jailbreak``: persona / DAN / role-play overrides, "developer mode", "no restrictions";
- ``prompt_injection``: "ignore previous instructions", system-prompt exfiltration, instructions hidden in data.

Features (both lower-cased, whitespace collapsed, present-or-not, L2-normalised, hashed into :data:`BUCKETS`):
words and adjacent word pairs, and character 3-, 4- and 5-grams (these carry misspellings, leetspeak and
languages the words miss). A text longer than :data:`WINDOW` characters is scored in overlapping windows and each
label takes its highest window, so an instruction hidden after long benign text is not averaged away.

The weights (``data/injection_model.npz``, a few hundred KB) are trained by :mod:`engine.safety.injection_training`
on public labelled sets and the project's own support prompts (sources and licences: ``data/INJECTION_SOURCES.md``).
Scoring is numpy only: about a millisecond for a 2,000-character text (``llm-console eval safety`` prints the
measured p50/p95). The scanner that uses it, with its patterns and the policy's thresholds, is
``engine.safety.injection``.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.safety.base import ScannerLoadError

MODEL_PATH = Path(__file__).with_name("data") / "injection_model.npz"
# Bump when the features or the file's layout change; the model's version carries it.
MODEL_FORMAT = 1
LABELS = ("jailbreak", "prompt_injection")
BUCKETS = 1 << 18
WINDOW = 2000  # characters scored at once; longer texts in windows of this size
STRIDE = 1000
CHAR_NGRAMS = (3, 4, 5)
_MASK = np.uint64(BUCKETS - 1)
_MULT = np.uint64(0x9E3779B97F4A7C15)
_SEED = np.uint64(0xCBF29CE484222325)
_P = np.uint64(0x100000001B3)  # odd, so invertible modulo 2**64
_P_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))
_WORD_SALT = np.uint64(0xC2B2AE3D27D4EB4F)
_SPACE = np.uint8(32)
# Bytes that are part of a word: ASCII letters and digits, the apostrophe, and every byte of a multi-byte UTF-8
# character (letters of other scripts; emoji join the word they touch, which is fine for hashing).
_WORDISH = np.zeros(256, bool)
_WORDISH[[*range(48, 58), *range(97, 123), 39, *range(128, 256)]] = True
_WHITESPACE = np.zeros(256, bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
U64 = npt.NDArray[np.uint64]


def _bucket(h: U64) -> I64:
    return ((h * _MULT) >> np.uint64(20) & _MASK).astype(np.int64)


def _char_buckets(data: U64) -> I64:
    """Buckets of every character 3-, 4- and 5-gram of ``data`` (bytes of the lower-cased text)."""
    out = []
    h = np.full(len(data), _SEED, np.uint64)
    for i in range(max(CHAR_NGRAMS)):
        if len(data) - i <= 0:
            break
        h = (h[: len(data) - i] ^ data[i:]) * _MULT
        if i + 1 in CHAR_NGRAMS:
            out.append(h)
    return _bucket(np.concatenate(out)) if out else np.zeros(0, np.int64)


def _word_buckets(raw: npt.NDArray[np.uint8], data: U64) -> I64:
    """Buckets of the words and adjacent word pairs (runs of word bytes, see _WORDISH), hashed in numpy: a
    polynomial hash of each span from prefix sums (all arithmetic modulo 2**64)."""
    wordish = _WORDISH[raw]
    edges = np.diff(np.concatenate(([False], wordish, [False])).astype(np.int8))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # word i is data[starts[i]:ends[i]]
    if len(starts) == 0:
        return np.zeros(0, np.int64)
    n = len(data)
    inv_pow = np.cumprod(np.concatenate(([np.uint64(1)], np.full(n - 1, _P_INV, np.uint64))))
    pow_ = np.cumprod(np.concatenate(([np.uint64(1)], np.full(n - 1, _P, np.uint64))))
    prefix = np.concatenate(([np.uint64(0)], np.cumsum(data * inv_pow, dtype=np.uint64)))
    words = (prefix[ends] - prefix[starts]) * pow_[ends - 1] ^ (ends - starts).astype(np.uint64)
    pairs = (words[:-1] * _MULT + words[1:]) ^ _WORD_SALT
    return _bucket(np.concatenate([words, pairs]))


def features(text: str) -> tuple[I64, F32]:
    """The sorted distinct feature buckets of ``text`` (its first :data:`WINDOW` characters): its words, word pairs
    and character n-grams, present or not, each valued 1/sqrt(count of buckets) so the vector has unit length
    (a text repeating one sentence scores as the sentence does). A word pair is hashed from its two words, so
    punctuation between them does not matter."""
    raw = np.frombuffer(text[:WINDOW].lower().encode("utf-8"), np.uint8).copy()
    if len(raw) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    raw[_WHITESPACE[raw]] = _SPACE
    data = raw.astype(np.uint64)
    with np.errstate(over="ignore"):
        idx = np.concatenate([_word_buckets(raw, data), _char_buckets(data)])
    if len(idx) == 0:
        return idx, np.zeros(0, np.float32)
    idx.sort()
    idx = idx[np.concatenate(([True], idx[1:] != idx[:-1]))]
    return idx, np.full(len(idx), 1.0 / np.sqrt(len(idx)), np.float32)


def windows(text: str) -> list[str]:
    """``text`` itself, or overlapping windows of :data:`WINDOW` characters when it is longer."""
    if len(text) <= WINDOW:
        return [text]
    starts = list(range(0, len(text) - WINDOW, STRIDE)) + [len(text) - WINDOW]
    return [text[s:s + WINDOW] for s in starts]


@dataclass(frozen=True)
class _Weights:
    dense: dict[str, F32]
    bias: dict[str, float]
    manifest: dict[str, Any]


class InjectionModel:
    """Scores a text for ``jailbreak`` and ``prompt_injection``. Immutable once loaded; safe across threads."""

    labels = LABELS

    def __init__(self, weights: _Weights, path: Path) -> None:
        self._w = weights
        self.path = path
        self.version = f"inj-{MODEL_FORMAT}.{str(weights.manifest.get('weights_sha256', '?'))[:8]}"

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(self._w.manifest)

    def scores(self, text: str) -> dict[str, float]:
        """Probabilities (0..1) for each label; the highest over the text's windows. Empty text scores low."""
        best = {label: -np.inf for label in LABELS}
        for window in windows(text):
            idx, val = features(window)
            for label in LABELS:
                z = float(self._w.dense[label][idx] @ val) + self._w.bias[label]
                best[label] = max(best[label], z)
        return {label: float(1.0 / (1.0 + np.exp(-z))) for label, z in best.items()}


def load_injection_model(path: Path | str | None = None) -> InjectionModel:
    """Load the weight file (default: the shipped ``data/injection_model.npz``); ScannerLoadError, naming the file
    and what is wrong, when it is missing, unreadable or of another format."""
    p = Path(path) if path is not None else MODEL_PATH
    if not p.is_file():
        raise ScannerLoadError(f"the injection model {p} does not exist; rebuild it with "
                               "`python -m engine.safety.injection_training train` or reinstall the package")
    try:
        with np.load(p, allow_pickle=False) as z:
            manifest = json.loads(str(z["manifest"]))
            index = np.asarray(z["index"], np.int64)
            dense: dict[str, F32] = {}
            bias: dict[str, float] = {}
            for label in LABELS:
                w = np.zeros(BUCKETS, np.float32)
                w[index] = np.asarray(z[f"w_{label}"], np.float32)
                dense[label] = w
                bias[label] = float(np.asarray(z[f"b_{label}"]).reshape(-1)[0])
    except (OSError, KeyError, ValueError, IndexError, EOFError, zipfile.BadZipFile) as exc:
        raise ScannerLoadError(f"the injection model {p} cannot be read ({type(exc).__name__}: {exc}); rebuild it "
                               "with `python -m engine.safety.injection_training train`") from exc
    if manifest.get("format") != MODEL_FORMAT or manifest.get("buckets") != BUCKETS:
        raise ScannerLoadError(f"the injection model {p} is of format {manifest.get('format')!r}, this code reads "
                               f"format {MODEL_FORMAT}; rebuild it with `python -m engine.safety.injection_training "
                               "train`")
    for label in LABELS:
        if not np.all(np.isfinite(dense[label])):
            raise ScannerLoadError(f"the injection model {p} has non-finite weights for {label!r}")
    return InjectionModel(_Weights(dense, bias, manifest), p)

