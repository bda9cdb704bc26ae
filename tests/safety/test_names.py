"""Names without a cue word (engine/safety/names.py and the person rules of engine/safety/recognizers.py): Faker's
first and last names of every locale, dialogue speakers, names listed together, relations and speech verbs; and
the everyday words, product names and codes that must stay as written. Measured through the stored path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.safety import names
from engine.safety.pii import PresidioScanner
from engine.safety.policy import DEFAULT_POLICY_PATH, Policy, redact
from tests.safety_fixtures import network_blocked

PRESIDIO_SYNTH_DEV_PATH = Path(__file__).resolve().parents[3] / "shared" / "data" / "pii_dev_presidio_synth.json"


@pytest.fixture(scope="module")
def pii() -> PresidioScanner:
    with network_blocked():
        yield PresidioScanner()


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.load(DEFAULT_POLICY_PATH)


def stored(pii: PresidioScanner, policy: Policy, text: str) -> str:
    return redact(text, policy.stored_redactions(text, [f for f in pii.scan(text) if f.has_span]))


def left_in(stored_text: str, words: list[str]) -> list[str]:
    return [w for w in words if re.search(r"(?<!\w)" + re.escape(w) + r"(?!\w)", stored_text)]


# Each of these was stored with the name in it before (spaCy's small model and the cue-word rules alone).
NAMES = [
    ("Luiza is from Xignite", ["Luiza"]),
    ("National Van Lines is the brainchild of our 3 founders: Brabec, Kastner and Torpy.",
     ["Brabec", "Kastner", "Torpy"]),
    ("I would like to remove my kid Alina from the will. How do I do that?", ["Alina"]),
    ('"I\'m not paying that," said Erle to Maurice.', ["Erle", "Maurice"]),
    ("What's your last name? Nielsen", ["Nielsen"]),
    ("Halldór: What a wife.\nMatthew: Remember me, Kelly?", ["Halldór", "Matthew", "Kelly"]),
    ("Priya: can you check the invoice for me?\nTomasz: sure, give me a minute", ["Priya", "Tomasz"]),
    ("follow up with monika žilková in a couple of months.", ["monika", "žilková"]),
    ("I want to add Irenke Sörös as a beneficiary to my account", ["Irenke", "Sörös"]),
    ("The name in the account is not correct, please change it to Sofia Lima", ["Sofia", "Lima"]),
    ("Juliusz A Kwiatkowski lives at 28919 136 Wiejska St., Katowice", ["Juliusz", "Kwiatkowski"]),
    ("Siddharth approved the refund this morning.", ["Siddharth"]),
    ("Come to Ireland again! Jay & Trish are craving some tea", ["Jay", "Trish"]),
    ("Could you add Thandiwe Mbeki to the shared mailbox?", ["Thandiwe", "Mbeki"]),
    # A signature block's first line, a subject before what only people do, a role before a name, lower case.
    ("Sven Hedlund\n\n85199 Avda. Rio Nalon 58\n Apt. 461\n Soto del Barco", ["Sven", "Hedlund"]),
    (">Esat Jeknić\n>Marshall, Hernandez and Simpson\n>3378 217 Lovers Lane", ["Esat", "Jeknić"]),
    ("Asgeir lives on Eliasweg street.", ["Asgeir"]),
    ("Zoolander is a 2005 French action-comedy film directed by Philip Latourelle and starring Weekers",
     ["Philip", "Latourelle", "Weekers"]),
    ("This song by ex-Zombie Gyarmathy is a perfect example.", ["Gyarmathy"]),
    ("mr. andresen is a 26 year old man who grew up in moers.", ["andresen"]),
    ("i have lost my card. could you please block it? my name is nikita b. maslow.", ["nikita", "maslow"]),
    ("i'm so jealous! said stevica to malagigi", ["stevica", "malagigi"]),
    ("Alette, can I please speak to your boss?", ["Alette"]),
    ("Acme is the brainchild of our 3 founders: Shimasaki, Kastner and Wade.", ["Shimasaki", "Kastner", "Wade"]),
    ("my name is proclus alexandrov but everyone calls me proclus", ["proclus", "alexandrov"]),
]


@pytest.mark.parametrize(("text", "parts"), NAMES, ids=[t[:40] for t, _ in NAMES])
def test_a_name_without_a_cue_word_is_not_stored(pii, policy, text, parts):
    assert left_in(stored(pii, policy, text), parts) == []


# Everyday words that are also names, product names, invented words and codes.
KEPT = [
    "Will the update fix the crash on startup?",
    "Mark the invoice as paid and close the case.",
    "Grant access to the shared folder for the new hire.",
    "Bill me for the annual plan instead of monthly.",
    "Rose Gold is out of stock, would Silver work?",
    "Summer Sale starts on Monday at 9 am.",
    "Hope you had a great weekend!",
    "Try restarting the Zentrix Hub and then run Syncwell again.",
    "The flurbocat module throws an error in prod.",
    "Ticket INC-20431 was reopened by the monitoring job.",
    "Reset the Kindle Paperwhite to factory settings.",
    "Use the Nimbus Pro plan for bigger teams.",
    "Patch Tuesday broke our print spooler.",
    "Error: the export failed.\nStatus: retrying in 5 minutes.",
    "Password Reset Request\nYour link expires in 24 hours.",
    "Syncwell is a sync tool for teams.",
    "we moved the job to the new server and it got slower",
    "Brah this straight up came out of my screen and slapped me when it dropped",
    "What is the capital of France?",
    "It serves great Danish food.",
    "I work for Ellis-Ingram.",
    "The invoice came from Johnson Inc. last week.",
    "For my take on it, see Guilty Pleasures: 5 Musicians Of The 70s You're Supposed To Hate",
    "When: Friday 9 am\nWhere: Harbour Country Club",
]


@pytest.mark.parametrize("text", ["we moved here from tunisia", "raising families here, the whole thing",
                                  "Energetic salesperson. Awarded Salesperson of the Month three times."])
def test_everyday_words_before_here_and_job_titles_are_no_person(pii, text):
    assert [text[f.start:f.end] for f in pii.scan(text) if f.label == "PERSON"] == []


@pytest.mark.parametrize("text", KEPT, ids=[t[:40] for t in KEPT])
def test_everyday_words_product_names_and_codes_stay_as_written(pii, policy, text):
    assert stored(pii, policy, text) == text


def test_a_greeted_name_goes_and_the_sentence_after_its_comma_stays(pii, policy):
    assert stored(pii, policy, "Hi Freddy, I'm contacting you about a problem.") == (
        "Hi <PERSON>, I'm contacting you about a problem.")


def test_the_gazetteer_holds_faker_names_of_many_locales_and_marks_everyday_words():
    firsts, lasts = names.faker_name_words()
    assert {"luiza", "siddharth", "halldór", "thandiwe"} <= firsts
    assert {"kastner", "nielsen", "lundberg", "marrero"} <= lasts
    assert {"will", "mark", "grant", "rose", "bill", "summer", "white"} <= names.EVERYDAY
    # Proper nouns only (no lower-case dictionary word): a name or a place, never everyday.
    assert not {"sofia", "lima", "john", "siddharth"} & names.EVERYDAY


def test_a_list_links_names_by_and_or_by_commas_inside_the_list_only():
    text = "Our founders: Brabec, Kastner and Torpy. Hi Freddy, I'm here."
    kastner = text.index("Kastner")
    freddy = text.index("Freddy")
    found = names.coordinated_spans(text, [(kastner, kastner + 7), (freddy, freddy + 6)])
    assert sorted(text[s:e] for s, e in found) == ["Brabec", "Torpy"]


def test_dialogue_speakers_need_a_listed_name_or_two_speaker_lines():
    assert [("Halldór: What a wife."[s:e]) for s, e in names.speaker_spans("Halldór: What a wife.")] == ["Halldór"]
    assert names.speaker_spans("Kalani: the export finished.") == []  # no listed name, one line
    two = "Kalani: the export finished.\nMoana: thanks!"
    assert [two[s:e] for s, e in names.speaker_spans(two)] == ["Kalani", "Moana"]
    assert names.speaker_spans("Bot: What's the name?\nUser: Summary: none") == []


@pytest.mark.skipif(not PRESIDIO_SYNTH_DEV_PATH.exists(), reason="the public dev file is not at ../shared/data")
def test_person_names_of_the_public_dev_file_are_not_stored(pii, policy):
    """A fixed slice: the first 60 texts with a person of the ``tune`` half (recall 0.71 before this work)."""
    from engine.safety.measure_public import load_presidio_synth, split_of

    samples = [s for s in load_presidio_synth(PRESIDIO_SYNTH_DEV_PATH)
               if split_of(s.text) == "tune" and any(g.kind == "PERSON" for g in s.spans)][:60]
    gold = found = 0
    for sample in samples:
        cuts = policy.stored_redactions(sample.text, [f for f in pii.scan(sample.text) if f.has_span])
        for g in sample.spans:
            if g.kind != "PERSON":
                continue
            gold += 1
            found += any(c.label == "PERSON" and c.start < g.end and g.start < c.end for c in cuts)
    assert gold >= 60
    assert found / gold >= 0.90


@pytest.mark.parametrize("text", ["Do you ship to Paris?", "Do you ship to London?", "Do you ship to Sydney?",
                                  "Is there a store in Madrid?", "Is there a store in Sydney?",
                                  "Which time zone does Paris use?", "Is there a warehouse in South America?"])
def test_a_city_after_a_place_word_is_no_person_although_the_name_lists_hold_it(pii, policy, text):
    assert [f for f in pii.scan(text) if f.label == "PERSON"] == []
    assert stored(pii, policy, text) == text


def test_a_well_known_place_name_is_still_a_name_where_spacy_says_person(pii):
    found = [f for f in pii.scan("Sydney Okafor called me about the refund.") if f.label == "PERSON"]
    assert found
