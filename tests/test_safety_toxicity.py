"""Toxicity: the real Detoxify loading/prediction path on a self-made checkpoint, and the honest offline fallback."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.safety import ScannerLoadError, ToxicityConfig, load_toxicity, load_toxicity_scanner
from engine.safety.chunking import chunk_by_chars, chunk_by_token_offsets
from engine.safety.toxicity import DETOXIFY_LABELS, DetoxifyScanner, ProfanityFallbackScanner
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


def test_offline_without_weights_falls_back_honestly(offline):
    load = load_toxicity(ToxicityConfig(model_type="original", allow_download=True, download_timeout_s=2))
    scanner = load.scanner
    assert isinstance(scanner, ProfanityFallbackScanner)
    assert scanner.name == "profanity-fallback"
    assert scanner.labels == ("profanity",)
    assert "fallback" in scanner.version and "alt-profanity-check" in scanner.version
    assert load.notice is not None
    assert "Detoxify is not available" in load.notice and "alt-profanity-check" in load.notice
    assert "NOT checked" in load.notice


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
    assert isinstance(load.scanner, DetoxifyScanner if detoxify_loads else ProfanityFallbackScanner)
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
