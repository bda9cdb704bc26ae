"""Make untrusted text (model output, prompts, names) safe to hand to Streamlit's markdown renderer.

Streamlit never renders raw HTML unless asked to, but markdown itself can still draw links, images, headings
and tables from model output. Escaping every markdown control character shows the text exactly as written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~=:$&])")


def escape_markdown(text: str) -> str:
    """Return ``text`` with markdown/HTML control characters escaped and line breaks kept."""
    escaped = _MD_SPECIAL.sub(r"\\\1", text)
    # Markdown joins single newlines into one paragraph; two trailing spaces keep the line break.
    return escaped.replace("\n", "  \n")


def escape_stream(chunks: Iterable[str]) -> Iterator[str]:
    """Escape a stream of text deltas chunk by chunk (escaping is per character, so chunks stay independent)."""
    for chunk in chunks:
        yield escape_markdown(chunk)


_CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: object) -> object:
    """Neutralise spreadsheet formula injection in a CSV cell (OWASP): prefix risky text with a quote."""
    if isinstance(value, str) and value.startswith(_CSV_FORMULA_START):
        return "'" + value
    return value
