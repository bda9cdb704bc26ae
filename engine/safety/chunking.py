"""Split long texts into overlapping windows so models with an input limit still see every character."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPACE_RE = re.compile(r"\s")
# The end of a sentence: . ! ? (repeated) before whitespace, or a line break.
SENTENCE_END_RE = re.compile(r"[.!?]+(?=\s)|\n+")


@dataclass(frozen=True)
class Chunk:
    """A window of a text: ``text == source[start:end]``."""

    start: int
    end: int
    text: str


def chunk_by_chars(text: str, *, max_chars: int, overlap: int) -> list[Chunk]:
    """Windows of at most ``max_chars`` characters overlapping by about ``overlap``, cut at whitespace when possible.

    The overlap means a phrase cut by one window boundary is seen whole by the next window.
    """
    if max_chars <= 0 or not 0 <= overlap < max_chars:
        raise ValueError("need max_chars > 0 and 0 <= overlap < max_chars")
    if len(text) <= max_chars:
        return [Chunk(0, len(text), text)]
    chunks: list[Chunk] = []
    start = 0
    while start < len(text):
        end = min(start + max_chars, len(text))
        if end < len(text):
            # Prefer to end on whitespace in the last quarter of the window, so words stay whole.
            cut = text.rfind(" ", start + max_chars * 3 // 4, end)
            if cut > start:
                end = cut
        chunks.append(Chunk(start, end, text[start:end]))
        if end >= len(text):
            break
        next_start = max(end - overlap, start + 1)
        # Start the next window at a word boundary, too.
        space = text.find(" ", next_start, end)
        start = space + 1 if space != -1 else next_start
    return chunks


def chunk_by_token_offsets(
    offsets: list[tuple[int, int]], text: str, *, max_tokens: int, overlap_tokens: int
) -> list[Chunk]:
    """Windows of at most ``max_tokens`` tokens (given their character ``offsets``) overlapping by ``overlap_tokens``.

    Used with a fast tokenizer's offset mapping, so each window fits the model and its span in ``text`` is exact.
    """
    if not offsets:
        token_windows(0, max_tokens=max_tokens, overlap_tokens=overlap_tokens)  # validates the sizes
        return [Chunk(0, len(text), text)]
    chunks: list[Chunk] = []
    for first, stop in token_windows(len(offsets), max_tokens=max_tokens, overlap_tokens=overlap_tokens):
        start, end = offsets[first][0], offsets[stop - 1][1]
        chunks.append(Chunk(start, end, text[start:end]))
    return chunks


def token_windows(count: int, *, max_tokens: int, overlap_tokens: int) -> list[tuple[int, int]]:
    """Index ranges ``[first, stop)`` of windows of at most ``max_tokens`` over ``count`` tokens, overlapping.

    Every token is in at least one window; the windows step by ``max_tokens - overlap_tokens``. A model that
    scores windows takes them all in one batch (see ``OfflineToxicityScanner``).
    """
    if max_tokens <= 0 or not 0 <= overlap_tokens < max_tokens:
        raise ValueError("need max_tokens > 0 and 0 <= overlap_tokens < max_tokens")
    if count <= 0:
        return []
    windows = []
    step = max_tokens - overlap_tokens
    first = 0
    while True:
        stop = min(first + max_tokens, count)
        windows.append((first, stop))
        if stop >= count:
            return windows
        first += step


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the sentences of ``text`` (ends at . ! ? before whitespace, or a line
    break), without the empty ones. Together they cover every non-blank character.

    Toxicity is mostly said within a sentence, and a small model reads a threat better alone than after a
    paragraph of ordinary text (see ``OfflineToxicityScanner``).
    """
    spans = []
    start = 0
    for m in SENTENCE_END_RE.finditer(text):
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(text)))
    return [(a, b) for a, b in spans if text[a:b].strip()]
