"""Word lists and a sentence helper that both person-name recognizers use: the context rules of
engine.safety.recognizers and the gazetteer of engine.safety.names. Kept below both, so neither imports the other
for them."""

from __future__ import annotations

from pathlib import Path

_DATA = Path(__file__).parent / "data"


def load_words(name: str) -> frozenset[str]:
    """The lower-cased words of ``data/<name>``, one a line (``#`` starts a comment line)."""
    lines = (_DATA / name).read_text(encoding="utf-8").splitlines()
    return frozenset(w.strip().lower() for w in lines if w.strip() and not w.startswith("#"))


# Words that look like names after "Hi", "Dear", "I'm" or at a signature's place, but are not.
NOT_NAMES = frozenset(
    """support team sir madam all everyone there customer service services sales folks guys again both
    friend friends colleagues partner partners regards thanks thank you cheers best sincerely kind warm
    everybody hello hi hey dear good morning afternoon evening night day sorry happy glad fine ok okay sure
    not new back here ready able unable interested afraid available home still just also now really very so
    the a an and or but this that it its my your our their his her we they he she i me us them
    name email mail phone tel telephone mobile fax address street city country postcode zip code number
    account card order ticket invoice customer client user admin manager director head senior junior
    operations facilities accounting finance billing legal marketing engineering office department desk
    success care center centre help helpdesk info information team-lead lead buyer seller owner member
    monday tuesday wednesday thursday friday saturday sunday january february march july
    september october november december today tomorrow yesterday please refund refunds thanks
    english french german spanish italian dutch portuguese hebrew hindi american british canadian
    australian indian israeli brazilian sent from iphone android regards best wishes yours faithfully truly
    reply re fw fwd subject to cc bcc date attachment note message comment comments reference ref regarding
    mr mrs ms miss mx dr prof professor sir dame mme mlle herr frau sr sra srta dott rev capt lt col hon
    applicant surname first last full middle given family contact recipient sender holder signed
    amount total price plan version build app application screen page error issue problem question
    """.split()
)

# Team, company, product and screen words: a candidate holding one is no person (data/not_name_words.txt).
ORG_WORDS = load_words("not_name_words.txt")

# Words that end (or are never part of) a place name written after a place cue ("I live in the old town").
PLACE_STOP = frozenset(
    """a an the my our your his her their this that these those some another new old last next first same other
    month week year day time ago recently soon now today tomorrow yesterday and or but with for because so
    since when while after before to from in on at by of as it its is was be been being i we you he she they
    there here please thanks thank can could would will should may might must need want just also""".split()
)


def sentence_around(text: str, start: int, end: int) -> str:
    """The sentence (or line) of ``text`` holding ``text[start:end]``."""
    left = max(text.rfind("\n", 0, start), *(text.rfind(p, 0, start) + 1 for p in (". ", "! ", "? ")))
    right = min([i for i in (text.find("\n", end), text.find(". ", end)) if i != -1] or [len(text)])
    return text[left + 1:right]


def is_lower_case_writer(text: str) -> bool:
    """True for a text with letters but no capital letter at all (some people chat like that)."""
    return text == text.lower() and any(ch.isalpha() for ch in text)
