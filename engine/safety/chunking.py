"""Split long texts into overlapping windows so models with an input limit still see every character."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPACE_RE = re.compile(r"\s")


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
    if max_tokens <= 0 or not 0 <= overlap_tokens < max_tokens:
        raise ValueError("need max_tokens > 0 and 0 <= overlap_tokens < max_tokens")
    if not offsets:
        return [Chunk(0, len(text), text)]
    chunks: list[Chunk] = []
    step = max_tokens - overlap_tokens
    first = 0
    while True:
        last = min(first + max_tokens, len(offsets)) - 1
        start, end = offsets[first][0], offsets[last][1]
        chunks.append(Chunk(start, end, text[start:end]))
        if last >= len(offsets) - 1:
            break
        first += step
    return chunks
