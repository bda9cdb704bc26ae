"""The output scan done while the answer streams (engine/safety/incremental.py): same verdict as one scan at the end,
with only the tail left for after the last token."""

from __future__ import annotations

import random
import threading

import pytest

from engine.safety.base import Finding
from engine.safety.incremental import StreamingScan, merge_findings
from engine.safety.pii import PresidioScanner
from engine.safety.policy import Policy
from engine.safety.runner import ScannerRunner

# Realistic answers: several sentences, personal data early and late, entities next to sentence ends.
ANSWERS = [
    ("Thanks for waiting. Your order shipped today and should arrive on Friday. If it is late, write to "
     "jane.doe@example.com and quote your order number. Mr. John Smith from our returns team will call you on "
     "+44 20 7946 0958 tomorrow. Have a nice day!", ["jane.doe@example.com", "John Smith", "+44 20 7946 0958"]),
    ("We received your request. The replacement goes to the address on file:\n221B Baker Street\nLondon NW1 6XE\n"
     "If that is wrong, reply before noon. The card ending 4111 1111 1111 1111 was not charged again. "
     "Anything else? Just ask.", ["221B Baker Street", "NW1 6XE", "4111 1111 1111 1111"]),
    ("I am sorry to hear that. Refunds are processed within five working days. Your IBAN "
     "GB82 WEST 1234 5698 7654 32 is on file. Our colleague Maria Garcia checked it. We will email "
     "maria.customer@example.org once it is done.", ["GB82 WEST 1234 5698 7654 32", "Maria Garcia",
                                                     "maria.customer@example.org"]),
]


@pytest.fixture(scope="module")
def presidio():
    return PresidioScanner()


@pytest.fixture(scope="module")
def runner(presidio, offline_scanner):
    return ScannerRunner([presidio, offline_scanner])


def _stream(runner, text, *, seed=0, wait=True, **kwargs):
    """Feed ``text`` in small random pieces; ``wait`` lets each background scan end before the next piece (the
    most segments, the most boundaries)."""
    rng = random.Random(seed)
    scan = StreamingScan(runner, **kwargs)
    pos = 0
    while pos < len(text):
        step = rng.randint(1, 6)
        scan.feed(text[pos:pos + step])
        pos += step
        if wait:
            scan.wait()
    return scan


def _stored(text, findings):
    return Policy.load().stored_redactions(text, [f for f in findings if f.has_span and f.detector == "presidio"])


@pytest.mark.parametrize("index", range(len(ANSWERS)))
def test_a_streamed_answer_is_redacted_as_well_as_one_scanned_whole(runner, index):
    from engine.safety.policy import redact

    text, values = ANSWERS[index]
    whole = runner.scan(text)
    scan = _stream(runner, text, seed=index)
    report = scan.finish(text)
    assert scan.scanned_chars > 0  # finished sentences were scanned while it streamed
    stored = redact(text, _stored(text, report.findings))
    for value in values:
        assert value not in stored, (value, stored)
    # Every character the whole-text scan would cut is cut in the streamed version too.
    assert _covered(_stored(text, whole.findings)) <= _covered(_stored(text, report.findings))


def _covered(findings):
    return {i for f in findings for i in range(f.start, f.end)}


def test_a_finding_seen_by_two_overlapping_segments_is_reported_once(runner):
    text = ANSWERS[0][0]
    report = _stream(runner, text, seed=3).finish(text)
    emails = [f for f in report.findings if f.label == "EMAIL_ADDRESS"]
    assert len(emails) == 1 and text[emails[0].start:emails[0].end] == "jane.doe@example.com"
    spans = [(f.detector, f.label, f.start, f.end) for f in report.findings]
    assert len(spans) == len(set(spans))


def test_toxicity_keeps_one_finding_per_label_with_the_whole_texts_scores(runner, offline_scanner):
    text = ("Thanks for the update on the delivery. I will find you and hurt you if the parcel is late again. "
            "The tracking page says it is in the depot. Please check the label.")
    whole = {f.label: f for f in offline_scanner.scan(text)}
    report = _stream(runner, text, seed=1).finish(text)
    streamed = [f for f in report.findings if f.detector == offline_scanner.name]
    assert sorted(f.label for f in streamed) == sorted(whole)  # one per label
    for f in streamed:
        # The offline model scores sentence by sentence: segments cut at sentence ends give the same maximum.
        assert f.score == pytest.approx(whole[f.label].score, abs=1e-3), f.label
    threat = next(f for f in streamed if f.label == "threat")
    assert "hurt you" in text[threat.start:threat.end]


class RecordingScanner:
    """A scanner at our own seam: records the texts it was asked to scan; finds the word 'secret' (a span)."""

    name = "presidio"
    version = "rec-1"
    labels = ("SECRET",)

    def __init__(self, fail_first: bool = False):
        self.texts: list[str] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def scan(self, text):
        with self.lock:
            self.texts.append(text)
            if self.fail_first and len(self.texts) == 1:
                raise RuntimeError("scanner broke")
        found = []
        start = text.find("secret")
        while start != -1:
            found.append(Finding(self.name, "SECRET", 0.9, start, start + 6, self.version))
            start = text.find("secret", start + 1)
        return tuple(found)


SENTENCES = " ".join(f"Sentence number {i} tells the customer something useful about the order." for i in range(8))


def test_only_the_tail_is_scanned_after_the_last_token(runner):
    scanner = RecordingScanner()
    scan = _stream(ScannerRunner([scanner]), SENTENCES + " The secret is out")
    background = list(scanner.texts)
    report = scan.finish()
    tail = scanner.texts[len(background):]
    assert len(background) >= 3 and len(tail) == 1
    assert tail[0].endswith("The secret is out") and len(tail[0]) < 250  # the last sentences, not the answer
    [finding] = report.findings
    assert (SENTENCES + " The secret is out")[finding.start:finding.end] == "secret"


def test_a_final_text_other_than_the_fed_one_is_scanned_whole(runner):
    scanner = RecordingScanner()
    scan = _stream(ScannerRunner([scanner]), SENTENCES)
    final = "A different answer with a secret. " + SENTENCES
    report = scan.finish(final)
    assert scanner.texts[-1] == final
    assert [final[f.start:f.end] for f in report.findings] == ["secret"]


def test_a_background_scan_that_fails_leaves_the_whole_answer_to_the_final_scan(runner):
    scanner = RecordingScanner(fail_first=True)
    text = "The secret code is fine. " + SENTENCES
    scan = _stream(ScannerRunner([scanner]), text)
    report = scan.finish()
    assert scanner.texts[-1] == text  # nothing of the failed segment is trusted
    assert [text[f.start:f.end] for f in report.findings] == ["secret"]


def test_a_fast_stream_never_queues_more_than_one_background_scan(runner):
    release = threading.Event()

    class Slow(RecordingScanner):
        def scan(self, text):
            release.wait(10)
            return super().scan(text)

    scanner = Slow()
    scan = _stream(ScannerRunner([scanner]), SENTENCES, wait=False)
    assert len(scanner.texts) == 0  # the first one is still running, nothing else was started
    release.set()
    scan.finish()
    assert len(scanner.texts) == 2  # that one, then the tail (everything after it) at once


def test_merge_unions_overlapping_spans_of_one_label_and_keeps_other_labels():
    from engine.safety.incremental import _Segment

    class Pii:
        name = "presidio"

    a = _Segment(0, ((Pii(), (Finding("presidio", "ADDRESS", 0.6, 10, 20, "v"),)),), {})
    b = _Segment(15, ((Pii(), (Finding("presidio", "ADDRESS", 0.8, 0, 15, "v"),
                               Finding("presidio", "PERSON", 0.7, 0, 3, "v"))),), {})
    merged = merge_findings([a, b])
    assert [(f.label, f.start, f.end, f.score) for f in merged] == [("ADDRESS", 10, 30, 0.8), ("PERSON", 15, 18, 0.7)]


def test_bad_sizes_are_refused(runner):
    with pytest.raises(ValueError):
        StreamingScan(runner, overlap_chars=-1)
    with pytest.raises(ValueError):
        StreamingScan(runner, min_chars=0)
