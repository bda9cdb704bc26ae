"""Scan an answer while it streams: finished sentences in the background, only the tail once the last token is in.

The output scan used to start after the last token, so its whole cost (Presidio ~20 ms per 100 words on these
2-core machines) was added to every answer's end-to-end time. :class:`StreamingScan` takes the text as it arrives
(:meth:`~StreamingScan.feed`); whenever finished sentences have piled up and no scan of it is running, it scans
them on a background thread. :meth:`~StreamingScan.finish` waits for that scan, scans what is left (the last
sentences, from a little before the scanned part ends) and merges the findings into one :class:`ScanReport` for
the whole text, with spans in the whole text.

Segments overlap: each one starts at the beginning of the sentence that holds the point ``overlap_chars`` (60)
before the previous segment's end, so an entity cut by a segment boundary ("Mr. Smith", an address over two lines) is
seen whole by the next segment. Findings are merged per detector and label: exact repeats and overlapping spans of
the same label become one finding (the union of the spans, the higher score), so what is redacted covers at least
what each segment found. Scanners that give one whole-text judgement per label (toxicity: ``one_finding_per_label``)
keep the highest-scoring finding per label, which is what they return for a whole text too: they score a text
sentence by sentence (or in windows) and report the maximum.

With one scan in flight at most, a stream faster than the scanner makes the segments longer, never a queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType

from engine.safety import deadline
from engine.safety.base import Finding, Scanner
from engine.safety.chunking import SENTENCE_END_RE, sentence_spans
from engine.safety.deadline import ScanTimeout
from engine.safety.runner import ScannerRunner, ScanReport

logger = logging.getLogger(__name__)

# Context re-scanned before each segment: from the sentence holding the point this many characters back (a
# sentence of a support answer is 60-100 characters; an address line 15-40, so several of them are seen again).
DEFAULT_OVERLAP_CHARS = 60
# Finished text smaller than this waits for more before a background scan (each scan has a fixed cost of a few
# milliseconds); what is left unscanned at the end is scanned after the last token.
DEFAULT_MIN_CHARS = 40

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _shared_pool() -> ThreadPoolExecutor:
    """One small pool for every stream of the process: scans of many chats share the machine's cores."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stream-scan")
        return _pool


@dataclass(frozen=True)
class _Segment:
    start: int
    findings: tuple[tuple[Scanner, tuple[Finding, ...]], ...]
    timings_ms: dict[str, float]


def _scan_segment(scanners: Sequence[Scanner], text: str, start: int, timeout_seconds: float | None) -> _Segment:
    """Scan one segment; each segment has the runner's whole time limit (raises ScanTimeout past it)."""
    results = []
    timings: dict[str, float] = {}
    with deadline.scope(timeout_seconds):
        for scanner in scanners:
            deadline.check(scanner.name)
            began = time.perf_counter()
            results.append((scanner, scanner.scan(text)))
            timings[scanner.name] = (time.perf_counter() - began) * 1000.0
    return _Segment(start, tuple(results), timings)


def _segment_start(text: str, end: int, overlap: int) -> int:
    """Where a segment continuing after ``end`` starts: at least ``overlap`` characters back, at the start of the
    sentence holding that point when it is at most half as far again, else at the whitespace before that point."""
    target = end - overlap
    if target <= 0:
        return 0
    for start, stop in sentence_spans(text[:end]):
        if start <= target < stop:
            if target - start <= overlap // 2:
                return start
            break
    space = text.rfind(" ", 0, target)
    return space + 1 if space != -1 else 0


def _last_sentence_end(text: str, after: int) -> int | None:
    """The end of the last finished sentence of ``text`` after position ``after``: . ! ? already followed by
    whitespace, or a line break (see ``sentence_spans``)."""
    end = None
    for m in SENTENCE_END_RE.finditer(text, after):
        end = m.end()
    return end


def merge_findings(segments: Sequence[_Segment]) -> tuple[Finding, ...]:
    """The segments' findings as one set for the whole text (spans shifted into it; see the module's text)."""
    per_label: dict[tuple[str, str], Finding] = {}
    spans: dict[tuple[str, str], list[Finding]] = {}
    order: list[tuple[str, str]] = []
    for segment in segments:
        for scanner, found in segment.findings:
            whole_text = bool(getattr(scanner, "one_finding_per_label", False))
            for f in found:
                key = (f.detector, f.label)
                if key not in per_label and key not in spans:
                    order.append(key)
                shifted = f if f.start is None or f.end is None else Finding(
                    f.detector, f.label, f.score, f.start + segment.start, f.end + segment.start, f.detector_version)
                if whole_text or not shifted.has_span:
                    best = per_label.get(key)
                    if best is None or shifted.score > best.score:
                        per_label[key] = shifted
                else:
                    spans.setdefault(key, []).append(shifted)
    out: list[Finding] = []
    for key in order:
        if key in per_label:
            out.append(per_label[key])
        for f in _union_overlapping(spans.get(key, [])):
            out.append(f)
    return tuple(sorted(out, key=lambda f: (f.start is None, f.start or 0, -(f.end or 0), f.detector, f.label)))


def _union_overlapping(findings: list[Finding]) -> list[Finding]:
    merged: list[Finding] = []
    for f in sorted(findings, key=lambda f: (f.start or 0, -(f.end or 0))):
        last = merged[-1] if merged else None
        if last is not None and last.end is not None and f.start is not None and f.start < last.end:
            merged[-1] = Finding(last.detector, last.label, max(last.score, f.score), last.start,
                                 max(last.end, f.end or 0), last.detector_version)
        else:
            merged.append(f)
    return merged


class StreamingScan:
    """The output scan of one streamed answer (see the module's text). Not shared between threads: the stream's
    reader calls :meth:`feed` and :meth:`finish`; the background scans run on a shared pool."""

    def __init__(self, runner: ScannerRunner, *, overlap_chars: int = DEFAULT_OVERLAP_CHARS,
                 min_chars: int = DEFAULT_MIN_CHARS, pool: ThreadPoolExecutor | None = None,
                 asked: Sequence[str] = ()) -> None:
        if overlap_chars < 0 or min_chars < 1:
            raise ValueError("need overlap_chars >= 0 and min_chars >= 1")
        self._runner = runner
        # An answer: the scanners for outputs (the injection scanner only when the policy asks for its labels).
        self._scanners = runner.for_direction("output", asked)
        self._overlap = overlap_chars
        self._min = min_chars
        self._pool = pool
        self._parts: list[str] = []
        self._length = 0
        self._scanned_to = 0  # text[:_scanned_to] is in a finished or running segment
        self._done: list[_Segment] = []
        self._running: Future[_Segment] | None = None
        self._failed = False
        self.background_ms = 0.0  # scanner time spent while the answer streamed

    @property
    def scanned_chars(self) -> int:
        """How much of the text the background scans have covered so far."""
        return self._scanned_to

    def feed(self, delta: str) -> None:
        """Take the next piece of the answer; may start a background scan of sentences finished by now."""
        if not delta:
            return
        self._parts.append(delta)
        self._length += len(delta)
        if self._failed or self._length - self._scanned_to < self._min:
            return
        if self._running is not None:
            if not self._running.done():
                return  # one scan at a time: the next segment grows meanwhile
            if not self._collect():
                return
        text = "".join(self._parts)
        self._parts = [text]
        end = _last_sentence_end(text, self._scanned_to)
        if end is None or end - self._scanned_to < self._min:
            return
        start = _segment_start(text, self._scanned_to, self._overlap) if self._scanned_to else 0
        pool = self._pool or _shared_pool()
        self._running = pool.submit(_scan_segment, self._scanners, text[start:end], start,
                                    self._runner.timeout_seconds)
        self._scanned_to = end

    def wait(self) -> None:
        """Wait for the background scan running now, if any (a stream slower than the scanner never waits)."""
        if self._running is not None:
            self._collect()

    def _collect(self) -> bool:
        """Wait for the running scan and keep its findings; False when it failed (finish() then rescans all)."""
        running, self._running = self._running, None
        if running is None:
            return not self._failed
        try:
            segment = running.result()
        except ScanTimeout as exc:  # finish() rescans everything, under the limit again
            logger.warning("background output scan stopped (%s); the whole answer is scanned at its end", exc)
            self._failed = True
            return False
        except Exception:  # noqa: BLE001 - a scanner failed in the background: finish() rescans everything
            logger.exception("background output scan failed; the whole answer is scanned at its end")
            self._failed = True
            return False
        self._done.append(segment)
        self.background_ms += sum(segment.timings_ms.values())
        return True

    def finish(self, text: str | None = None) -> ScanReport:
        """The report for the whole answer. ``text`` is the answer as finally kept (default: what was fed); when it
        is not what was fed (cleaned differently, cut), everything is scanned again at once.

        Its ``timings_ms`` are the time each scanner spent on the tail now, the part added after the last token.
        """
        fed = "".join(self._parts)
        text = fed if text is None else text
        self._collect()
        if self._failed or not text.startswith(fed[: self._scanned_to]) or self._scanned_to > len(text):
            self._done, self._scanned_to = [], 0
        if self._scanned_to and self._scanned_to >= len(text.rstrip()):
            tail = _Segment(len(text), (), {})  # the background scans covered all of it
            start = len(text)
        else:
            start = _segment_start(text, self._scanned_to, self._overlap) if self._scanned_to else 0
            tail = _scan_segment(self._scanners, text[start:], start, self._runner.timeout_seconds)
        findings = merge_findings([*self._done, tail])
        logger.debug("streamed scan: %s chars, %s in the background (%.1f ms), tail from %s (%s)", len(text),
                     self._scanned_to, self.background_ms, start, tail.timings_ms)
        return ScanReport(findings, MappingProxyType(dict(tail.timings_ms)))
