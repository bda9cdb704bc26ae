"""Text that services store or hash: the one cleaning every user-supplied string goes through."""

from __future__ import annotations

import re
import unicodedata

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` without NUL characters (PostgreSQL refuses them, C libraries cut text at them) and with lone
    surrogates (which cannot be encoded to UTF-8 for the database or a hash) replaced by U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    return _LONE_SURROGATE.sub("\ufffd", text)


def has_format_characters(text: str) -> bool:
    """True if ``text`` holds an invisible Unicode format (Cf) character, such as a right-to-left override."""
    return any(unicodedata.category(c) == "Cf" for c in text)


def visible(text: str) -> str:
    """``text`` without its invisible format (Cf) characters (to judge whether anything was typed at all)."""
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def is_clean(text: str) -> bool:
    """True if ``text`` holds no NUL and no lone surrogate (what :func:`clean_text` would change)."""
    return "\x00" not in text and _LONE_SURROGATE.search(text) is None
