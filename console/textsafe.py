"""Make untrusted text (model output, prompts, names) safe to hand to Streamlit's markdown renderer.

Streamlit never renders raw HTML unless asked to, but markdown itself can still draw links, images, headings
and tables from model output. Escaping every markdown control character shows the text exactly as written.

Links are made inert too: nothing a model writes may send data to a host the operator did not choose, by a
click or by a load. Escaping already stops markdown links, images (``![x](url)`` never loads) and HTML. But
GitHub-flavoured markdown's autolink literals (``https://...``, ``www....``) are found in the rendered text,
after escapes are resolved, so every URL scheme is "defanged" as security tools do: ``https://evil.example``
is shown as ``https[:]//evil.example`` and ``www.evil.example`` as ``www[.]evil.example``: readable, copyable
on purpose, never clickable. (Email addresses stay as written: a ``mailto:`` link sends nothing by itself.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~=:$&])")
# Any URL scheme followed by "//", and "www." where a link could start.
_LINK_START = re.compile(r"(?i)([a-z][a-z0-9+.\-]*)://|(?<![a-z0-9])(www)\.")
# The longest start of a link that is not complete yet ("https:/"): a stream holds back this much.
_LINK_START_MAX_PARTIAL = len("https:/")


def _defang(match: re.Match[str]) -> str:
    scheme, www = match.group(1), match.group(2)
    return f"{scheme}[:]//" if scheme is not None else f"{www}[.]"


def defang_links(text: str) -> str:
    """``text`` with every link start broken so no markdown renderer links it: ``https[:]//``, ``www[.]``."""
    return _LINK_START.sub(_defang, text)


def escape_markdown(text: str) -> str:
    """Return ``text`` with links defanged, markdown/HTML control characters escaped and line breaks kept."""
    escaped = _MD_SPECIAL.sub(r"\\\1", defang_links(text))
    # Markdown joins single newlines into one paragraph; two trailing spaces keep the line break.
    return escaped.replace("\n", "  \n")


def _safe_cut(text: str) -> int:
    """Where ``text`` may be cut without splitting a link start, keeping an unfinished one for the next chunk."""
    cut = len(text) - _LINK_START_MAX_PARTIAL
    if cut <= 0:
        return 0
    for match in _LINK_START.finditer(text):
        if match.start() < cut < match.end():
            return match.start()
    return cut


def escape_stream(chunks: Iterable[str]) -> Iterator[str]:
    """Escape a stream of text deltas. A link start can arrive split over deltas (``"htt"``, ``"ps://"``), so
    the last few characters wait for the next delta before they are defanged and escaped."""
    pending = ""
    for chunk in chunks:
        pending += chunk
        cut = _safe_cut(pending)
        if cut:
            yield escape_markdown(pending[:cut])
            pending = pending[cut:]
    if pending:
        yield escape_markdown(pending)


_CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
# Cells starting with anything else need no closer look (the common case); exporters test this before csv_safe.
CSV_CHECK_FIRST = frozenset("=+-@\t\r\n'")


def csv_safe(value: object) -> object:
    """Neutralise spreadsheet formula injection in a CSV cell (OWASP): prefix risky text with a quote.

    Text starting with ``= + - @``, a tab, CR or LF gets one ``'`` in front. So that :func:`csv_restore` can undo
    it exactly, text that already starts with quotes followed by one of those (``'=1``) gets one more too.
    """
    if (isinstance(value, str) and value[:1] in CSV_CHECK_FIRST
            and value.lstrip("'").startswith(_CSV_FORMULA_START)):
        return "'" + value
    return value


def csv_restore(cell: str) -> str:
    """The text :func:`csv_safe` was given, from the cell it returned (drops the one quote it added)."""
    if cell.startswith("'") and cell.lstrip("'").startswith(_CSV_FORMULA_START):
        return cell[1:]
    return cell
