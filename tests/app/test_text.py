"""The one check for a required or optional text field that services store: cleaned, stripped, bounded."""

from __future__ import annotations

import pytest

from console.services.errors import InvalidInput
from console.services.text import optional_text, required_text

RTL_OVERRIDE = "\u202e"
ZERO_WIDTH_SPACE = "\u200b"


@pytest.mark.parametrize(("value", "expected"), [
    ("  a reason  ", "a reason"),
    ("line one\nline two\n", "line one\nline two"),
    ("a\x00b", "ab"),
    ("lone \ud800 surrogate", "lone \ufffd surrogate"),
    (f"{RTL_OVERRIDE}kept", f"{RTL_OVERRIDE}kept"),  # invisible characters are kept, only judged for emptiness
    ("x" * 20, "x" * 20),
], ids=["stripped", "inner-newlines-kept", "nul-removed", "surrogate-replaced", "format-character-kept",
        "exactly-the-limit"])
def test_required_text_returns_the_cleaned_stripped_text(value, expected):
    assert required_text(value, "the reason", 20) == expected


@pytest.mark.parametrize("value", [None, "", "   ", "\t\n\r\n", "\u00a0\u3000", "\x00\x00", " \x00 ",
                                   ZERO_WIDTH_SPACE * 3, f" {RTL_OVERRIDE} "],
                         ids=["none", "empty", "spaces", "tabs-and-newlines", "unicode-spaces", "only-nul",
                              "nul-and-spaces", "only-zero-width", "only-format-character"])
def test_required_text_refuses_nothing_visible_with_one_wording(value):
    with pytest.raises(InvalidInput, match=r"^The note is required\.$"):
        required_text(value, "the note", 100)


def test_required_text_refuses_over_the_limit_saying_the_length_and_the_limit():
    with pytest.raises(InvalidInput, match=r"^The message has 20,001 characters; the limit is 20,000\.$"):
        required_text("y" * 20_001, "the message", 20_000)


def test_the_limit_counts_the_cleaned_text_not_nul_padding_or_surrounding_spaces():
    assert required_text(" " * 1000 + "ok" + "\x00" * 1000, "the note", 2) == "ok"


def test_required_text_refuses_under_min_len():
    with pytest.raises(InvalidInput, match=r"^The reason for the erasure needs at least 10 characters; it has 5\.$"):
        required_text("  short ", "the reason for the erasure", 100, min_len=10)


def test_strip_false_keeps_surrounding_whitespace_but_still_refuses_blank():
    assert required_text("  def f():\n", "the message", 100, strip=False) == "  def f():\n"
    with pytest.raises(InvalidInput, match="is required"):
        required_text(" \n ", "the message", 100, strip=False)


@pytest.mark.parametrize("value", [3, b"bytes", ["a"]], ids=["int", "bytes", "list"])
def test_a_value_that_is_not_text_is_refused(value):
    with pytest.raises(InvalidInput, match=r"^The note must be text\.$"):
        required_text(value, "the note", 100)
    with pytest.raises(InvalidInput, match=r"^The note must be text\.$"):
        optional_text(value, "the note", 100)


@pytest.mark.parametrize("value", [None, "", "  \n", "\x00", ZERO_WIDTH_SPACE],
                         ids=["none", "empty", "blank", "only-nul", "only-zero-width"])
def test_optional_text_is_none_when_nothing_visible_was_typed(value):
    assert optional_text(value, "the note", 100) is None


def test_optional_text_cleans_strips_and_bounds_like_required_text():
    assert optional_text(" a\x00b ", "the note", 100) == "ab"
    with pytest.raises(InvalidInput, match=r"^The note has 101 characters; the limit is 100\.$"):
        optional_text("n" * 101, "the note", 100)


def test_optional_text_refuses_typed_text_under_min_len_but_not_nothing():
    assert optional_text("  ", "the legal basis", 100, min_len=10) is None
    with pytest.raises(InvalidInput, match=r"^The legal basis needs at least 10 characters; it has 3\.$"):
        optional_text("law", "the legal basis", 100, min_len=10)


def test_a_blank_required_text_with_a_minimum_says_the_minimum():
    with pytest.raises(InvalidInput, match=r"^The reason is required \(at least 10 characters\)\.$"):
        required_text(" \x00 ", "the reason", 100, min_len=10)
