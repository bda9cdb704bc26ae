"""A small head on the offline toxicity model: the ``toxicity`` score, retrained on public labelled text.

tox-block's network (``engine.safety.offline_model``) was trained on Wikipedia talk pages in 2018. On Davidson et
al.'s public tweets it ranks hate or offensive against neither at ROC AUC 0.90 (report half); it knows the swear
words of 2018 Wikipedia but not the slurs and insults of tweets, and it flags ordinary support text ("super, thaank
you a bunch." 0.69). The head is a logistic regression over

- the logits of tox-block's six probabilities for the same window (standardised), and
- the window's lower-cased words and word pairs, hashed into :data:`NGRAM_BUCKETS` buckets (present or not,
  L2-normalised),

trained by :mod:`engine.safety.toxicity_training` (``python -m engine.safety.toxicity_training train``) on

- Davidson et al.'s tweets (``shared/data/toxicity_dev_davidson.csv``, MIT), the ``tune`` half only (a hash of the
  text, the split ``engine.safety.measure_toxicity`` uses): hate speech or offensive against neither;
- ``engine/safety/data/toxicity_eval.jsonl``, its ``tune`` half: any label against none;
- ``engine/safety/data/toxigen_subset.jsonl``: 310 sentences of microsoft/TOXIGEN (MIT; data CDLA-Permissive-2.0,
  see ``TOXIGEN_LICENSE.txt``), implicit hate against neutral sentences about the same groups;
- ordinary support prompts of the ``tune`` split (``measure_toxicity.ordinary_traffic``), as not toxic.

Only the ``toxicity`` label comes from the head; the other five stay tox-block's (its ``identity_attack`` ranks
hate without swear words better than any head trained here did). The weights, ``data/toxicity_head.npz``
(package data, a few hundred KB), are what a fresh clone runs; the training set's report halves, the held-out
public sets and the ordinary prompts of the report split are never trained on. Scoring is numpy only.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

HEAD_PATH = Path(__file__).with_name("data") / "toxicity_head.npz"
# Bump when the features or the file's layout change; each finding's detector version carries it.
HEAD_FORMAT = 1
LABEL = "toxicity"
NGRAM_BUCKETS = 1 << 17
# How much the six tox-block logits weigh against the word features (both are scaled before the regression).
TOXBLOCK_SCALE = 3.0
_WORD_RE = re.compile(r"[a-z0-9']+")
EPS = 1e-6  # keeps a probability off 0 and 1 before its logit

F32 = npt.NDArray[np.float32]


class HeadError(RuntimeError):
    """The head's weight file is missing or not of this format."""


def ngram_buckets(text: str) -> list[int]:
    """The sorted distinct hash buckets of ``text``'s lower-cased words and adjacent word pairs."""
    words = _WORD_RE.findall(text.lower().replace("\u2019", "'"))
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    return sorted({zlib.crc32(g.encode("utf-8")) & (NGRAM_BUCKETS - 1) for g in grams})


def toxblock_logits(probs: npt.ArrayLike) -> F32:
    """Logits of tox-block's probabilities (n, 6), clipped away from 0 and 1."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0 - EPS)
    return np.asarray(np.log(p / (1.0 - p)), dtype=np.float32)


@dataclass(frozen=True)
class HeadWeights:
    """The fitted regression: word-bucket weights, the logits' mean and spread, their weights, the bias."""

    ngram: F32
    mean: F32
    std: F32
    toxblock: F32
    bias: float
    manifest: dict[str, Any]


class ToxicityHead:
    """Scores windows from their text and tox-block's probabilities for them. Immutable; safe across threads."""

    label = LABEL

    def __init__(self, path: Path | str = HEAD_PATH) -> None:
        self.path = Path(path)
        try:
            with np.load(self.path) as z:
                manifest = json.loads(str(z["manifest"]))
                ngram = np.zeros(NGRAM_BUCKETS, np.float32)
                ngram[np.asarray(z["ngram_index"], np.int64)] = np.asarray(z["ngram_value"], np.float32)
                weights = HeadWeights(
                    ngram=ngram,
                    mean=np.asarray(z["mean"], np.float32),
                    std=np.asarray(z["std"], np.float32),
                    toxblock=np.asarray(z["toxblock"], np.float32),
                    bias=float(z["bias"]),
                    manifest=manifest,
                )
        except (OSError, KeyError, ValueError) as exc:
            raise HeadError(f"the toxicity head {self.path} cannot be read: {exc}") from exc
        if manifest.get("format") != HEAD_FORMAT or manifest.get("buckets") != NGRAM_BUCKETS:
            raise HeadError(f"the toxicity head {self.path} is of another format")
        self._w = weights
        self.version = f"head-{HEAD_FORMAT}.{manifest.get('weights_sha256', '?')[:8]}"

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(self._w.manifest)

    def score(self, texts: Sequence[str], probs: npt.ArrayLike) -> F32:
        """The head's probability that each window is toxic, from its text and tox-block's six probabilities."""
        w = self._w
        z = ((toxblock_logits(probs) - w.mean) / w.std) @ w.toxblock + w.bias
        for i, text in enumerate(texts):
            buckets = ngram_buckets(text)
            if buckets:
                z[i] += float(w.ngram[buckets].sum()) / float(np.sqrt(len(buckets)))
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float32)
