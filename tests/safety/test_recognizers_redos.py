"""Every regex of engine/safety/recognizers.py, and the whole PII scan, run in linear time on 20,000 characters of
adversarial text (issue 20: ``_STANDALONE_RE`` took ~12 s on ``PLEASE HELP ME NOW ...`` and held the scanner lock).

Times are CPU seconds this process spent (``time.process_time``), not wall-clock time: other work on a busy machine
does not add to them, so no test depends on a quiet machine and no two measured durations are compared (issue 21).
A linear regex spends milliseconds on 20,000 characters and the quadratic ones this replaces over 10 s, so a budget of
one CPU second separates them by orders of magnitude either way.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from engine.safety import names, recognizers

SIZE = 20_000


def _repeat(unit: str, size: int = SIZE) -> str:
    return (unit * (size // len(unit) + 1))[:size]


SHAPES: dict[str, str] = {
    "all-caps-words": "PLEASE HELP ME NOW ",
    "title-case-words": "Please Help Me Now ",
    "title-case-words-with-newlines": "Berlin\n",
    "title-case-words-with-commas": "Springfield, ",
    "capitalised-hyphen-chain": "Ab-Cd-Ef-Gh-",
    "hyphen-chain-no-spaces": "Abc-",
    "long-hyphenated-lower-words": "a" * 50 + "-",
    "apostrophe-chain": "O'",
    "digits-and-spaces": "12 34 5 ",
    "four-digit-groups": "1234 ",
    "digits-and-hyphens": "1-",
    "digits-in-parentheses": "(1) ",
    "dotted-digits": "1.2.",
    "commas-and-newlines": ", \n",
    "words-commas-newlines": "Abc,\n",
    "apartment-lines": "Apt 1 ",
    "house-number-lines": "1, Abc\n",
    "number-and-name": "12 Main ",
    "street-words": "Abc Street ",
    "romance-street-type": "Via Abc ",
    "name-then-number-lines": "Abc 12\n",
    "uk-postcodes": "AB1 2CD ",
    "whole-addresses": "12 Main St, Apt 3, Springfield, IL 62704\n",
    "greeting-and-names": "Dear Jo Jo Jo ",
    "lower-case-words": "please help me now ",
    "phone-numbers": "+1 (212) 555-0123 ",
    "one-long-capitalised-word": "A",
    "tabs": "Ab\t",
    # Issue 21's shapes (and the punctuation runs that spaCy's tokenizer reads in quadratic time).
    "aa-words": "Aa ",
    "commas": ",",
    "commas-and-spaces": ", ",
    "parentheses": "(",
    "double-quotes": '"',
    "colons-and-digits": "1:",
}

REGEXES: dict[str, re.Pattern[str]] = {
    f"{module.__name__.rsplit('.', 1)[-1]}.{name}": value
    for module in (recognizers, names) for name, value in vars(module).items() if isinstance(value, re.Pattern)
}


def _seconds(run: Callable[[str], object], text: str) -> float:
    """CPU seconds ``run(text)`` took (every thread of this process; not the time other processes took)."""
    start = time.process_time()
    run(text)
    return time.process_time() - start


def _assert_linear(run: Callable[[str], object], unit: str, budget: float) -> None:
    """Under ``budget`` CPU seconds on 20,000 characters of ``unit``."""
    spent = _seconds(run, _repeat(unit))
    assert spent < budget, f"{spent:.2f} CPU s on {SIZE} characters of {unit!r}"


def test_the_module_regexes_are_all_checked():
    assert {f"recognizers.{n}" for n in ("_STREET_RE", "_LOCALITY_RE", "_STANDALONE_RE", "_LOCALITY_LINE_RE",
                                         "_HOUSE_LINE_ABOVE_RE", "_PHONE_CLUSTER", "_PERSON_CONTEXT_RE")} <= set(REGEXES)
    assert {"names._BEFORE_RE", "names._AFTER_RE", "names._SPEAKER_RE"} <= set(REGEXES)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("regex", REGEXES.values(), ids=REGEXES.keys())
def test_every_recognizer_regex_is_linear_on_adversarial_text(regex, shape):
    _assert_linear(lambda text: sum(1 for _ in regex.finditer(text)), shape, budget=1.0)


def test_a_capitalised_run_is_read_once_by_the_standalone_locality_regex():
    # The case: 19,000 characters of capitalised words took ~12 s in _STANDALONE_RE.
    text = _repeat("PLEASE HELP ME NOW ", 19_000)
    assert _seconds(lambda t: list(recognizers._STANDALONE_RE.finditer(t)), text) < 1.0


def test_the_bounded_regexes_still_find_long_names():
    # Bounding the repetition must not lose real addresses with long city names and hyphenated streets.
    assert recognizers._STANDALONE_RE.search("Deliver to Santa Cruz de la Sierra, QLD 4000 soon")
    assert recognizers._STREET_RE.search("Rainer-Maria-Rilke-Straße 12")
    assert recognizers._STANDALONE_RE.search("We're in Stratford-upon-Avon, ON K1A 0B1 now")


SCAN_SHAPES = ["all-caps-words", "title-case-words-with-commas", "capitalised-hyphen-chain", "digits-and-spaces",
               "digits-in-parentheses", "house-number-lines", "street-words", "whole-addresses", "phone-numbers",
               "aa-words", "commas-and-spaces"]


@pytest.fixture(scope="module")
def scanner():
    from engine.safety.pii import PresidioScanner

    return PresidioScanner()


@pytest.mark.parametrize("shape", SCAN_SHAPES)
@pytest.mark.slow
def test_a_whole_pii_scan_of_adversarial_text_stays_within_a_cpu_budget(scanner, shape):
    # spaCy's pass and every recognizer on 20,000 characters: about 1-3 CPU s here; the quadratic _STANDALONE_RE
    # added ~12 s, python-phonenumbers on digit runs ~9 s, spaCy's tokenizer on 20,000 commas 61 s.
    _assert_linear(scanner.scan, SHAPES[shape], budget=8.0)


# spaCy's tokenizer peels punctuation off a token one character at a time: quadratic in a run without whitespace
# (20,000 commas took 61 s in the whole scan; the budget above includes spaCy's own time, so the test above did not
# see it). What spaCy is given is checked instead of timed: no run of punctuation over PUNCT_RUN characters and no
# run without whitespace over WORD_RUN, at the same length as the text the recognizers read.
WHITESPACE_FREE = ["commas", "parentheses", "double-quotes", "colons-and-digits", "one-long-capitalised-word",
                   "apostrophe-chain", "hyphen-chain-no-spaces", "dotted-digits"]


@pytest.mark.parametrize("shape", WHITESPACE_FREE)
@pytest.mark.slow
def test_spacy_is_never_given_a_long_run_without_whitespace(scanner, shape, monkeypatch):
    from engine.safety.pii import PUNCT_RUN, WORD_RUN

    nlp = scanner._analyzer.nlp_engine
    given: list[str] = []
    process_text = nlp.process_text
    monkeypatch.setattr(nlp, "process_text", lambda text, language: given.append(text) or process_text(text, language))
    text = _repeat(SHAPES[shape])
    scanner.scan(text)
    [seen] = given
    assert len(seen) == len(text)
    assert max(map(len, re.findall(r"\S+", seen))) <= WORD_RUN
    assert max(map(len, re.findall(r"[^\w\s]+", seen)), default=0) <= PUNCT_RUN


def test_spacy_reads_ordinary_text_unchanged():
    from engine.safety.pii import spacy_text

    text = "Write to jane.doe@example.com or see https://example.com/orders/12345?ref=mail, thanks!!! (really...)"
    assert spacy_text(text) == text
