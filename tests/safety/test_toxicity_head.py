"""The offline toxicity head (engine/safety/toxicity_head.py): it ships as package data, the scanner's toxicity label
comes from it, it ranks Davidson et al.'s public tweets better than tox-block alone, and its training script builds a
working head."""

from __future__ import annotations

import csv
import hashlib
import tomllib
from pathlib import Path

import numpy as np
import pytest

from engine.safety import toxicity_head as th
from engine.safety import toxicity_training as tt
from engine.safety.measure_toxicity import DAVIDSON_PATH, roc_auc
from engine.safety.toxicity import OfflineToxicityScanner

REPO = Path(__file__).resolve().parents[2]


def _toxicity(scanner: OfflineToxicityScanner, text: str) -> float:
    return {f.label: f.score for f in scanner.scan(text)}["toxicity"]


def test_the_head_ships_as_small_package_data_and_names_what_it_was_trained_on():
    head = th.ToxicityHead()
    assert th.HEAD_PATH.stat().st_size < 1_000_000
    names = [s["name"] for s in head.manifest["sources"]]
    assert names == ["davidson_tune", "toxicity_eval_tune", "toxigen_subset", "ordinary_prompts_tune"]
    assert all(s["texts"] > 100 for s in head.manifest["sources"])
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "safety/data/*.npz" in package_data["engine"]
    # ToxiGen's sentences are shipped with its licence (CDLA-Permissive-2.0 asks for the agreement's text).
    licence = (tt.TOXIGEN_PATH.parent / "TOXIGEN_LICENSE.txt").read_text()
    assert "Community Data License Agreement - Permissive - Version 2.0" in licence
    assert len(tt.load_toxigen()) == 310


def test_the_scanners_toxicity_comes_from_the_head_and_its_version_says_so(offline_scanner):
    text = "you are a worthless little rat and nobody wants you here"
    with_head = {f.label: f.score for f in offline_scanner.scan(text)}
    plain = OfflineToxicityScanner(offline_scanner._model)
    without = {f.label: f.score for f in plain.scan(text)}
    assert with_head["toxicity"] != without["toxicity"]
    # The other five labels are tox-block's own.
    assert {k: v for k, v in with_head.items() if k != "toxicity"} == {
        k: v for k, v in without.items() if k != "toxicity"
    }
    assert "+head-1." in offline_scanner.version and "+head" not in plain.version


@pytest.mark.parametrize(
    "text",
    ["You are a helpful customer support assistant.", "You are a support bot. Stay polite.",
     "I was charged twice for my order, can you refund one of the payments?"],
)
def test_ordinary_support_text_scores_low_on_the_heads_toxicity(offline_scanner, text):
    assert _toxicity(offline_scanner, text) < 0.45


def test_word_buckets_ignore_case_and_curly_apostrophes():
    assert th.ngram_buckets("You’re KIND") == th.ngram_buckets("you're kind")
    assert len(th.ngram_buckets("a b c")) == 5  # three words, two pairs
    assert th.ngram_buckets("") == []


@pytest.mark.skipif(not DAVIDSON_PATH.is_file(), reason="Davidson's tweets are read from ../shared/data when present")
def test_the_head_ranks_davidsons_held_out_tweets_better_than_tox_block_alone(offline_scanner):
    with DAVIDSON_PATH.open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if hashlib.sha256(r["tweet"].encode()).digest()[0] % 2 == 1]
    rows = rows[:600]  # a fixed slice of the report half (never trained on)
    toxic = [r["class"] in ("0", "1") for r in rows]
    plain = OfflineToxicityScanner(offline_scanner._model)
    head_auc = roc_auc([_toxicity(offline_scanner, r["tweet"]) for r in rows], toxic)
    plain_auc = roc_auc([_toxicity(plain, r["tweet"]) for r in rows], toxic)
    assert head_auc is not None and plain_auc is not None
    assert head_auc >= 0.93
    assert head_auc >= plain_auc + 0.03


def test_training_writes_a_head_that_loads_and_separates_its_labels(tmp_path):
    toxic = ["you people are vermin and should disappear", "go back where you came from, parasites"] * 10
    benign = ["my parcel arrived late, can you check it", "thanks for the quick refund"] * 10
    source = tt.Source("tiny", toxic + benign, [True] * len(toxic) + [False] * len(benign), 1.0)
    probs = np.full((len(source.texts), 6), 0.1, np.float32)
    out = tt.train([source], [probs], tmp_path / "head.npz")
    head = th.ToxicityHead(out)
    scores = head.score(["parasites should disappear", "can you check my refund"], np.full((2, 6), 0.1))
    assert scores[0] > 0.5 > scores[1]
    assert head.manifest["sources"] == [{"name": "tiny", "texts": 40, "toxic": 20, "weight": 1.0}]


def test_a_head_file_of_another_format_is_refused(tmp_path):
    bad = tmp_path / "head.npz"
    bad.write_bytes(b"not a numpy file")
    with pytest.raises(th.HeadError):
        th.ToxicityHead(bad)


HATE_WITHOUT_SWEAR_WORDS = [
    "Immigrants are a disease and we should get rid of them.",
    "Women are too stupid to run a company.",
    "Gay people should not be allowed near children.",
    "Those people breed like rats and ruin every neighbourhood they move into.",
]
GROUP_NAMED_IN_SUPPORT_TEXT = [
    "As a Muslim customer, can I get halal options in the meal plan?",
    "My wife is disabled; can the courier bring the parcel upstairs?",
    "I am a black woman and your agent was very helpful, thank you.",
]


@pytest.mark.parametrize("text", HATE_WITHOUT_SWEAR_WORDS, ids=range(len(HATE_WITHOUT_SWEAR_WORDS)))
def test_hate_without_swear_words_is_flagged_by_the_default_policy(offline_scanner, text):
    from engine.safety.policy import Policy

    assert Policy.load().decide("prompt", offline_scanner.scan(text)).action in ("flag", "block")


@pytest.mark.parametrize("text", GROUP_NAMED_IN_SUPPORT_TEXT, ids=range(len(GROUP_NAMED_IN_SUPPORT_TEXT)))
def test_a_customer_who_names_their_group_is_not_flagged(offline_scanner, text):
    from engine.safety.policy import Policy

    assert Policy.load().decide("prompt", offline_scanner.scan(text)).action == "allow"
