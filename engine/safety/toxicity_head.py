"""A small head on the offline toxicity model: the ``toxicity`` score, retrained on public labelled text.

tox-block's network (``engine.safety.offline_model``) was trained on Wikipedia talk pages in 2018. On Davidson et
al.'s public tweets it ranks hate or offensive against neither at ROC AUC 0.90 (report half); it knows the swear
words of 2018 Wikipedia but not the slurs and insults of tweets, and it flags ordinary support text ("super, thaank
you a bunch." 0.69). The head is a logistic regression over

- the logits of tox-block's six probabilities for the same window (standardised), and
- the window's lower-cased words and word pairs, hashed into :data:`NGRAM_BUCKETS` buckets (present or not,
  L2-normalised),

trained by :func:`train` (``python -m engine.safety.toxicity_head train``) on

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

import argparse
import hashlib
import json
import re
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

HEAD_PATH = Path(__file__).with_name("data") / "toxicity_head.npz"
TOXIGEN_PATH = Path(__file__).with_name("data") / "toxigen_subset.jsonl"
# Bump when the features or the file's layout change; each finding's detector version carries it.
HEAD_FORMAT = 1
LABEL = "toxicity"
NGRAM_BUCKETS = 1 << 17
# How much the six tox-block logits weigh against the word features (both are scaled before the regression).
TOXBLOCK_SCALE = 3.0
# Weight of each training text by source (the sources are in training_sources). Ordinary support prompts weigh
# most: at 1 the head learned "you are a ..." from the tweets' insults and scored the system prompt "You are a
# support bot. Stay polite." 0.61; at 6, 0.43, for 0.01 of Davidson's AUC.
SOURCE_WEIGHTS: dict[str, float] = {
    "davidson_tune": 1.0,
    "toxicity_eval_tune": 3.0,
    "toxigen_subset": 3.0,
    "ordinary_prompts_tune": 6.0,
}
_WORD_RE = re.compile(r"[a-z0-9']+")
_EPS = 1e-6

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
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0 - _EPS)
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


# --- training (set-up or development time; needs scikit-learn and the public data) ------------------------------


@dataclass(frozen=True)
class Source:
    """One labelled training source: its texts, labels (True = toxic) and the weight of each of its texts."""

    name: str
    texts: list[str]
    labels: list[bool]
    weight: float


def load_toxigen(path: Path | str = TOXIGEN_PATH) -> list[tuple[str, bool]]:
    """The shipped ToxiGen sentences as ``(text, hateful)``."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.append((str(row["text"]), bool(row["hate"])))
    return out


def training_sources(davidson_path: Path | str, *, dialogues: int = 8000) -> list[Source]:
    """The tune halves the shipped head is trained on (see the module docstring)."""
    import csv

    from engine.safety.measure_toxicity import _hash_split, load_eval_set, ordinary_traffic

    with Path(davidson_path).open(encoding="utf-8", newline="") as f:
        tweets = [(row["tweet"], row["class"] in ("0", "1")) for row in csv.DictReader(f)]
    tweets = [(t, y) for t, y in tweets if _hash_split(t) == "tune"]
    rows = [r for r in load_eval_set() if r.split == "tune"]
    toxigen = load_toxigen()
    ordinary = [t.text for t in ordinary_traffic(dialogues) if t.direction == "prompt" and t.split == "tune"]
    return [
        Source("davidson_tune", [t for t, _ in tweets], [y for _, y in tweets], SOURCE_WEIGHTS["davidson_tune"]),
        Source("toxicity_eval_tune", [r.text for r in rows], [bool(r.labels) for r in rows],
               SOURCE_WEIGHTS["toxicity_eval_tune"]),
        Source("toxigen_subset", [t for t, _ in toxigen], [y for _, y in toxigen], SOURCE_WEIGHTS["toxigen_subset"]),
        Source("ordinary_prompts_tune", ordinary, [False] * len(ordinary), SOURCE_WEIGHTS["ordinary_prompts_tune"]),
    ]


def _ngram_matrix(texts: Sequence[str]) -> Any:
    import scipy.sparse as sp  # type: ignore[import-untyped]

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for i, text in enumerate(texts):
        buckets = ngram_buckets(text)
        rows += [i] * len(buckets)
        cols += buckets
        vals += [1.0 / float(np.sqrt(len(buckets)))] * len(buckets)
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(texts), NGRAM_BUCKETS), dtype=np.float64)


def train(
    sources: Sequence[Source], toxblock_probs: Sequence[npt.ArrayLike], out: Path | str = HEAD_PATH, *, c: float = 1.0
) -> Path:
    """Fit the head on ``sources`` (tox-block's probabilities for each source's texts alongside) and write it."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    texts = [t for s in sources for t in s.texts]
    labels = np.array([y for s in sources for y in s.labels])
    weights = np.concatenate([np.full(len(s.texts), s.weight) for s in sources])
    logits = np.concatenate([toxblock_logits(p) for p in toxblock_probs])
    mean, std = logits.mean(0), logits.std(0) + _EPS
    features = sp.hstack([_ngram_matrix(texts), sp.csr_matrix((logits - mean) / std * TOXBLOCK_SCALE)]).tocsr()
    model = LogisticRegression(C=c, max_iter=5000)
    model.fit(features, labels, sample_weight=weights / weights.mean())
    coef = model.coef_[0]
    ngram = coef[:NGRAM_BUCKETS]
    index = np.flatnonzero(np.abs(ngram) > 1e-4).astype(np.int32)
    arrays = {
        "ngram_index": index,
        "ngram_value": ngram[index].astype(np.float16),
        "mean": mean.astype(np.float32),
        "std": std.astype(np.float32),
        "toxblock": (coef[NGRAM_BUCKETS:] * TOXBLOCK_SCALE).astype(np.float32),
        "bias": np.float32(model.intercept_[0]),
    }
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values())).hexdigest()
    manifest = {
        "format": HEAD_FORMAT,
        "buckets": NGRAM_BUCKETS,
        "label": LABEL,
        "c": c,
        "toxblock_scale": TOXBLOCK_SCALE,
        "sources": [{"name": s.name, "texts": len(s.texts), "toxic": sum(s.labels), "weight": s.weight}
                    for s in sources],
        "weights_sha256": digest,
    }
    out = Path(out)
    np.savez_compressed(out, manifest=np.array(json.dumps(manifest)), **arrays)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.safety.toxicity_head",
                                     description="The offline toxicity head (logistic regression on tox-block).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="retrain the head from the public data and write its weights")
    p.add_argument("--davidson", type=Path, required=True, help="Davidson et al.'s labeled_data.csv")
    p.add_argument("--out", type=Path, default=HEAD_PATH, help=f"weights file (default {HEAD_PATH})")
    p.add_argument("--model-dir", type=Path, default=None, help="the converted tox-block model (default: set-up's)")
    args = parser.parse_args(argv)
    from engine.safety.offline_model import ToxBlockModel, default_model_dir

    model = ToxBlockModel(args.model_dir or default_model_dir())
    sources = training_sources(args.davidson)
    probs = [model.predict(s.texts) for s in sources]
    out = train(sources, probs, args.out)
    print(f"toxicity head: {sum(len(s.texts) for s in sources)} texts -> {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
