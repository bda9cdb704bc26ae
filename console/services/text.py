"""Text that services store or hash: the one cleaning every user-supplied string goes through."""

from __future__ import annotations

import re
import unicodedata

from console.services.errors import InvalidInput

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


def _named(what: str) -> str:
    return what[:1].upper() + what[1:]


def _cleaned(value: object, what: str, strip: bool) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{_named(what)} must be text.")
    text = clean_text(value)
    return text.strip() if strip else text


def _bounded(text: str, what: str, min_len: int, max_len: int) -> str:
    if len(text) < min_len:
        raise InvalidInput(f"{_named(what)} needs at least {min_len:,} characters; it has {len(text):,}.")
    if len(text) > max_len:
        raise InvalidInput(f"{_named(what)} has {len(text):,} characters; the limit is {max_len:,}.")
    return text


def required_text(value: object, what: str, max_len: int, *, min_len: int = 1, strip: bool = True) -> str:
    """``value`` cleaned (:func:`clean_text`) and stripped, as a service stores it; :class:`InvalidInput` if
    nothing visible was typed, if it is shorter than ``min_len`` or longer than ``max_len`` characters.

    ``what`` names the field as it reads at the start of a sentence once capitalised, with its article:
    ``"the reason for the switch"``, ``"the note"``, ``"the message"``. The errors, one wording everywhere:

    - ``None``, blank, only NULs or only invisible format characters: ``"The note is required."`` (with
      ``min_len`` over 1: ``"The reason is required (at least 10 characters)."``)
    - under ``min_len`` (e.g. a reason that must quote a reference):
      ``"The reason needs at least 10 characters; it has 5."``
    - over ``max_len``: ``"The note has 2,001 characters; the limit is 2,000."``
    - not a ``str`` (a caller's bug, or JSON from the shell): ``"The note must be text."``

    Lengths are counted on the cleaned text. ``strip=False`` keeps surrounding whitespace (a chat prompt is sent as
    typed); emptiness is judged on the stripped visible text either way."""
    text = _cleaned(value, what, strip)
    if not visible(text).strip():
        at_least = f" (at least {min_len:,} characters)" if min_len > 1 else ""
        raise InvalidInput(f"{_named(what)} is required{at_least}.")
    return _bounded(text, what, min_len, max_len)


def optional_text(value: object, what: str, max_len: int, *, min_len: int = 1, strip: bool = True) -> str | None:
    """Like :func:`required_text` for a field that may be left out: ``None`` when nothing visible was typed
    (``None``, blank, only NULs or invisible characters), else the cleaned, stripped text; :class:`InvalidInput`
    (same wording) when it is typed but under ``min_len`` or over ``max_len`` characters, or not text."""
    text = _cleaned(value, what, strip)
    if not visible(text).strip():
        return None
    return _bounded(text, what, min_len, max_len)
