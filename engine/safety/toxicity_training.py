"""Training the offline toxicity head (engine.safety.toxicity_head) from public labelled text: set-up or
development time only, needs scikit-learn and the public data. ``python -m engine.safety.toxicity_training train
--davidson FILE`` rebuilds ``data/toxicity_head.npz``; the sources and their weights are described in
engine.safety.toxicity_head. The scanner never imports this module: it reads the weights the training wrote.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.safety.measure_toxicity import _hash_split, load_eval_set, ordinary_traffic
from engine.safety.toxicity_head import (
    EPS,
    HEAD_FORMAT,
    HEAD_PATH,
    LABEL,
    NGRAM_BUCKETS,
    TOXBLOCK_SCALE,
    ngram_buckets,
    toxblock_logits,
)

TOXIGEN_PATH = Path(__file__).with_name("data") / "toxigen_subset.jsonl"
# Weight of each training text by source (the sources are in training_sources). Ordinary support prompts weigh
# most: at 1 the head learned "you are a ..." from the tweets' insults and scored the system prompt "You are a
# support bot. Stay polite." 0.61; at 6, 0.43, for 0.01 of Davidson's AUC.
SOURCE_WEIGHTS: dict[str, float] = {
    "davidson_tune": 1.0,
    "toxicity_eval_tune": 3.0,
    "toxigen_subset": 3.0,
    "ordinary_prompts_tune": 6.0,
}


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
    mean, std = logits.mean(0), logits.std(0) + EPS
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
    parser = argparse.ArgumentParser(prog="python -m engine.safety.toxicity_training",
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
