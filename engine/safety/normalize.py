"""Text normalisation before scanning, with a map back to the original text's character offsets.

Invisible format characters can hide an email address from a regex (``bob`` U+2062 ``@example.com``) or a word from a
classifier (a slur split by U+2063), and full-width or compatibility characters can hide a word too. We scan the
normalised text and report spans in the original text, so redaction cuts the right characters.

Every character of Unicode category Cf (format) is stripped: zero-width space/joiners, the word joiner and
invisible operators (U+2060-2064), soft hyphen, BOM, bidi marks, embeddings, overrides and isolates
(U+061C, U+200E-200F, U+202A-202E, U+2066-2069), tag characters (U+E0001, U+E0020-E007F) and the rest of the
category, whatever Unicode version Python ships. None of them is a letter a reader sees.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass


def is_invisible(ch: str) -> bool:
    """True for a format (Cf) character: invisible, and stripped before scanning."""
    return unicodedata.category(ch) == "Cf"


@dataclass(frozen=True)
class NormalizedText:
    """A normalised text plus, for each of its characters, the index of the original character it came from."""

    original: str
    text: str
    # index_map[i] = original index of normalised character i; None means the identity map (fast path).
    index_map: tuple[int, ...] | None

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """Map a span ``[start, end)`` in the normalised text to the covering span in the original text."""
        if self.index_map is None:
            return start, end
        if start >= end:
            pos = self.index_map[start] if start < len(self.index_map) else len(self.original)
            return pos, pos
        return self.index_map[start], self.index_map[end - 1] + 1


def normalize(text: str) -> NormalizedText:
    """Strip format (Cf) characters and apply NFKC per character, keeping an index map to ``text``.

    NFKC is applied one character at a time (not across combining sequences) so that every output character
    can be traced to exactly one input character.
    """
    if text.isascii():  # ASCII has no format characters and is NFKC already
        return NormalizedText(text, text, None)
    needs_work = any(is_invisible(ch) for ch in text) or unicodedata.normalize("NFKC", text) != text
    if not needs_work:
        return NormalizedText(text, text, None)
    out: list[str] = []
    index_map: list[int] = []
    for i, ch in enumerate(text):
        if is_invisible(ch):
            continue
        mapped = ch if ch.isascii() else unicodedata.normalize("NFKC", ch)
        # NFKC never yields a format character from a visible one, but strip any it might, to be sure.
        mapped = "".join(c for c in mapped if not is_invisible(c))
        out.append(mapped)
        index_map.extend([i] * len(mapped))
    return NormalizedText(text, "".join(out), tuple(index_map))
