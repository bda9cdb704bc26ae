"""Text normalisation before scanning, with a map back to the original text's character offsets.

Zero-width characters and soft hyphens can hide an email address from a regex (``bob\u200b@example.com``), and
full-width or compatibility characters can hide a word from a classifier. We scan the normalised text and
report spans in the original text, so redaction cuts the right characters.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Zero-width space/non-joiner/joiner, word joiner, BOM/zero-width no-break space, soft hyphen,
# Mongolian vowel separator and the invisible bidi marks that change nothing a reader sees.
INVISIBLE_CHARS = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e\u200e\u200f"
_INVISIBLE_RE = re.compile(f"[{INVISIBLE_CHARS}]")


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
    """Strip invisible characters and apply NFKC per character, keeping an index map to ``text``.

    NFKC is applied one character at a time (not across combining sequences) so that every output character
    can be traced to exactly one input character.
    """
    if text.isascii():
        return NormalizedText(text, text, None)
    needs_work = _INVISIBLE_RE.search(text) is not None or unicodedata.normalize("NFKC", text) != text
    if not needs_work:
        return NormalizedText(text, text, None)
    out: list[str] = []
    index_map: list[int] = []
    for i, ch in enumerate(text):
        if ch in INVISIBLE_CHARS:
            continue
        mapped = ch if ch.isascii() else unicodedata.normalize("NFKC", ch)
        out.append(mapped)
        index_map.extend([i] * len(mapped))
    return NormalizedText(text, "".join(out), tuple(index_map))
