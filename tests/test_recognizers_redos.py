"""Every regex of engine/safety/recognizers.py, and the whole PII scan, run in linear time on 20,000 characters of
adversarial text (issue 20: ``_STANDALONE_RE`` took ~12 s on ``PLEASE HELP ME NOW ...`` and held the scanner lock).

A regex passes when it finishes in under a second, or, on a machine busy with other work, when its time grows no
faster than the text: the quadratic regexes this replaces took over 10 s on 20,000 characters (and 16 times their
5,000-character time), so both checks fail on them.
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
}

REGEXES: dict[str, re.Pattern[str]] = {
    f"{module.__name__.rsplit('.', 1)[-1]}.{name}": value
    for module in (recognizers, names) for name, value in vars(module).items() if isinstance(value, re.Pattern)
}


def _seconds(run: Callable[[str], object], text: str) -> float:
    start = time.perf_counter()
    run(text)
    return time.perf_counter() - start


def _assert_linear(run: Callable[[str], object], unit: str, budget: float, growth: float = 8.0) -> None:
    """Under ``budget`` seconds on 20,000 characters, or (a busy machine) growing no faster than the text."""
    elapsed = _seconds(run, _repeat(unit))
    if elapsed < budget:
        return
    # Slow here: compare with a quarter of the text, best of three each (a linear run grows ~4x, a quadratic 16x).
    small = min(_seconds(run, _repeat(unit, SIZE // 4)) for _ in range(3))
    large = min([elapsed] + [_seconds(run, _repeat(unit)) for _ in range(2)])
    assert large < growth * small + budget / 2, f"{large:.2f} s on {SIZE} characters, {small:.2f} s on {SIZE // 4}"


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
               "digits-in-parentheses", "house-number-lines", "street-words", "whole-addresses", "phone-numbers"]


@pytest.fixture(scope="module")
def scanner():
    from engine.safety.pii import PresidioScanner

    return PresidioScanner()


@pytest.mark.parametrize("shape", SCAN_SHAPES)
def test_a_whole_scan_of_adversarial_text_costs_little_beyond_spacy(scanner, shape):
    # spaCy's own pass is linear and takes what the machine gives it; what our recognizers and Presidio's add on top
    # must stay under a second (the quadratic _STANDALONE_RE added ~12 s, python-phonenumbers on digit runs ~9 s).
    text = _repeat(SHAPES[shape])
    nlp = scanner._analyzer.nlp_engine
    spacy_seconds = _seconds(lambda t: nlp.process_text(t, "en"), text)
    # spaCy's share grows linearly too, so the growth allowed here is tighter than for a regex alone.
    _assert_linear(scanner.scan, SHAPES[shape], budget=1.0 + 1.5 * spacy_seconds, growth=6.0)
