"""Street addresses, phone numbers and card numbers in the formats public labelled text uses (issue 20):
presidio-research's synthetic set and the Faker locales it was made with. Each format has its look-alikes beside it
(ticket and order codes, versions, prices, dates, times) that must stay intact. The dev file check reads
``../shared/data/pii_dev_presidio_synth.json`` when it is there and is skipped when it is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.safety.pii import PresidioScanner
from tests.safety_fixtures import network_blocked


@pytest.fixture(scope="module", autouse=True)
def no_network():
    with network_blocked():
        yield


@pytest.fixture(scope="module")
def pii(no_network) -> PresidioScanner:
    return PresidioScanner()


def spans(pii: PresidioScanner, text: str, label: str) -> list[str]:
    return [text[f.start:f.end] for f in pii.scan(text) if f.label == label]


# --- cards -----------------------------------------------------------------------------------------------------

CARDS_AFTER_A_CARD_WORD = [
    ("maestro-12-digits", "What is the limit for card 584528792610?", "584528792610"),
    ("maestro-card-hash", "I want to increase limit on my card # 503890547220 for a while.", "503890547220"),
    ("jcb-15-digits-1800", "my credit card number is 180045984582343?", "180045984582343"),
    ("jcb-15-digits-2131", "My credit card 213175197796454 has been lost", "213175197796454"),
    ("maestro-leading-zero", "Please block debit card 060426070011 today", "060426070011"),
]


@pytest.mark.parametrize(("text", "card"), [c[1:] for c in CARDS_AFTER_A_CARD_WORD],
                         ids=[c[0] for c in CARDS_AFTER_A_CARD_WORD])
def test_luhn_valid_12_to_19_digits_after_a_card_word_are_a_card(pii, text, card):
    assert spans(pii, text, "CREDIT_CARD") == [card]


CARD_LOOKALIKES = [
    ("12-digits-no-card-word", "Your order 584528792610 has shipped."),
    ("luhn-fails-after-card-word", "What is the limit for card 584528792611?"),
    ("tracking-number", "Tracking 180045984582343 via the courier."),
    ("card-word-then-short-number", "card ending 4242, order ORD-2291-A"),
]


@pytest.mark.parametrize("text", [c[1] for c in CARD_LOOKALIKES], ids=[c[0] for c in CARD_LOOKALIKES])
def test_card_lookalikes_are_no_card(pii, text):
    assert spans(pii, text, "CREDIT_CARD") == []


# --- phones ----------------------------------------------------------------------------------------------------

PHONES = [
    ("short-local-after-answering", "They're not answering at 99 668472", "99 668472"),
    ("three-groups-mobile-field", "Name: Ana\nMobile: 432 03 163\nThanks", "432 03 163"),
    ("parenthesised-area-short", "Name: Victoria Bruun\nPhone: (72) 754-186", "(72) 754-186"),
    ("dashed-pairs", "Personal Info:\nPhone:\n60-56-85-91\n\nE-mail:", "60-56-85-91"),
    ("nanp-no-space-after-parenthesis", "Desk: (602)272-9781", "(602)272-9781"),
    ("nanp-001-prefix", "Fax: 001-253-366-9781", "001-253-366-9781"),
    ("nanp-dots-extension", "Fax: 259.735.7502x459", "259.735.7502x459"),
    ("nanp-country-code-extension", "Desk: +1-903-140-4508x769", "+1-903-140-4508x769"),
    ("swiss-trunk-zero", "Desk: +41 (0)85 806 98 67", "+41 (0)85 806 98 67"),
    ("belgian-spaced", "let the manager call me at 0494 92 82 32", "0494 92 82 32"),
    ("registered-number", "send a message on my registered 024 971 50 30", "024 971 50 30"),
    ("french-dotted-pairs", "Please have the manager call me at 03.91.12.17.13 today", "03.91.12.17.13"),
    ("kind-written-after", "Thyrocare Ltd\n9380 6377 office\nnone fax", "9380 6377"),
    ("kind-after-a-dash", "Estonia 29394\n738 3565-Office", "738 3565"),
    ("one-digit-area-code", "How can we reach you? You can call (1) 941-2250", "(1) 941-2250"),
]


@pytest.mark.parametrize(("text", "phone"), [p[1:] for p in PHONES], ids=[p[0] for p in PHONES])
def test_phone_numbers_in_dotted_spaced_parenthesised_and_short_local_forms(pii, text, phone):
    assert spans(pii, text, "PHONE_NUMBER") == [phone]


PHONE_LOOKALIKES = [
    ("ticket-code", "Ticket TCK-48213 is open since 10:30"),
    ("order-code", "Order ORD-2291-A costs $12.50"),
    ("date", "The call is on 2024-05-12 at 14:30"),
    ("version", "Please update to version 10.2.3 first"),
    ("price-groups", "The plan costs 12 500 EUR a year"),
    ("order-number-groups", "order number 2291 5531 was refunded"),
    ("short-groups-without-phone-word", "Room 12 34 56 is booked"),
    ("ip-address", "The server at 192.168.10.20 is down"),
    ("time-stamp-seconds", "When: 1999-05-06 08:46:30.035623\nWhere: the club"),
]


@pytest.mark.parametrize("text", [p[1] for p in PHONE_LOOKALIKES], ids=[p[0] for p in PHONE_LOOKALIKES])
def test_phone_lookalikes_are_no_phone(pii, text):
    assert spans(pii, text, "PHONE_NUMBER") == []


def test_a_social_security_number_is_one_and_no_phone(pii):
    text = "SSN 536-90-4399 on file"
    assert [(f.label, text[f.start:f.end]) for f in pii.scan(text)] == [("US_SSN", "536-90-4399")]


# --- street addresses ------------------------------------------------------------------------------------------

ADDRESSES = [
    ("building-number-street-number-multi-line",
     "28030 Edeby 55\n Apt. 297\n TYSTBERGA\n Sweden 99178", "28030 Edeby 55\n Apt. 297\n TYSTBERGA\n Sweden 99178"),
    ("signature-lines-with-bullets-lost-in-encoding",
     "??? Lawdragon\n??? 66029 Kaarikatu 32\n??? Apt. 050\n??? Porvoo\n??? Finland 57006",
     "66029 Kaarikatu 32\n??? Apt. 050\n??? Porvoo\n??? Finland 57006"),
    ("quoted-mail-lines", "> Asc Partners\n> 935 Huntly Street\n> Suite 828\n> BASHALL TOWN\n> United Kingdom 89800",
     "935 Huntly Street\n> Suite 828\n> BASHALL TOWN\n> United Kingdom 89800"),
    ("street-name-then-number-after-a-cue", "The bus station is on Pod Floriánem 1677", "Pod Floriánem 1677"),
    ("romance-street-then-city", "We'll meet at Incadence, Rue de Piétrain 371, Noorderwijk",
     "Rue de Piétrain 371, Noorderwijk"),
    ("abbreviated-street-type", "The bus drops you off at 643 ul. Biskupa Bogedaina 118", "643 ul. Biskupa Bogedaina 118"),
    ("units-city-country-postcode-one-line", "30866 Ránargata 87 Apt. 652 Apt. 949, Tallinn, Estonia 02151",
     "30866 Ránargata 87 Apt. 652 Apt. 949, Tallinn, Estonia 02151"),
    ("region-code-on-its-own-line", "Change my address to 50541 Mlýnská 1540\nTrancoso\n, GU\n Portugal 44674 please",
     "50541 Mlýnská 1540\nTrancoso\n, GU\n Portugal 44674"),
    ("building-number-before-english-street", "Meet me at 363 52 Huntly Street\n Suite 132\n BARMOLLOCH\n United Kingdom",
     "363 52 Huntly Street\n Suite 132\n BARMOLLOCH\n United Kingdom"),
    ("faker-street-suffix", "Send it to 420 Gairbekov Rapids\n Apt. 576\n Voormezele\n Belgium 92060 now",
     "420 Gairbekov Rapids\n Apt. 576\n Voormezele\n Belgium 92060"),
    ("unit-word-not-read-as-street-name", "The address is 9554 62 Rue Gafsa Apt. 981\nToronto\n, ON\n 82269",
     "9554 62 Rue Gafsa Apt. 981\nToronto\n, ON\n 82269"),
    ("military-psc", "The office is at PSC 2721, Box 8637\nAPO AA 06259. It is open.", "PSC 2721, Box 8637\nAPO AA 06259"),
    ("military-unit-lower-case", "address:     unit 4526 box 0671\ndpo ap 40902", "unit 4526 box 0671\ndpo ap 40902"),
    ("military-ship", "Write to USNS Bergman\nFPO AP 93757\nMobile: none", "USNS Bergman\nFPO AP 93757"),
    ("po-box-with-unit", "send a new one to 609 P.O. Box 186 Apt. 561, ALT-DIETMANNS, Austria? Thanks",
     "609 P.O. Box 186 Apt. 561, ALT-DIETMANNS, Austria"),
    ("corner-of-two-streets", "Send it to the corner of Alšova 408 and Vedzizhev Greens",
     "the corner of Alšova 408 and Vedzizhev Greens"),
    ("lower-case-with-unit-and-place", "update my address to: 2613 avenida praia 1 suite 463, mohács, hungary 24743",
     "2613 avenida praia 1 suite 463, mohács, hungary 24743"),
    ("lower-case-after-a-cue", "pedestrians must enter on hegyalja út 98. st. the first three months",
     "hegyalja út 98."),
    ("other-line-prefixes", "}} Foo Inc.\n}} 9378 Rengaskuja 57\n}} Suite 319\n}} Fließem\n}} Germany 44943",
     "9378 Rengaskuja 57\n}} Suite 319\n}} Fließem\n}} Germany 44943"),
    ("city-then-country-without-comma", "I'll meet you at 810 Landsberger Allee 2 Suite 201 München Germany after it.",
     "810 Landsberger Allee 2 Suite 201 München Germany"),
    ("lower-case-street-words-inside", "351 Fogd Drejers gate 93 Suite 229, TØNSBERG, Norway 60948",
     "351 Fogd Drejers gate 93 Suite 229, TØNSBERG, Norway 60948"),
    ("greek", "Send it to 736 Καστελλόκαμπος 43 Suite 124 ΣΤΡΟΒΟΛΟΣ Λευκωσία", "736 Καστελλόκαμπος 43 Suite 124 ΣΤΡΟΒΟΛΟΣ Λευκωσία"),
    ("street-line-before-an-english-street", "R Luís Camões 81 Berg Junctions\n Suite 284\n Mogadouro\n Portugal 67558",
     "R Luís Camões 81 Berg Junctions\n Suite 284\n Mogadouro\n Portugal 67558"),
    ("unit-before-building-number", "Mrs. Ann Apt. 165 0556 Rákóczi út 41.\nOžbalt\n, nan\n 33690",
     "Apt. 165 0556 Rákóczi út 41.\nOžbalt\n, nan\n 33690"),
    ("country-line-after-a-blank-line", "Jane\n\n58 Main Street\n\n Estonia 51162", "58 Main Street\n\n Estonia 51162"),
    ("house-number-after-a-romance-street", "I once lived in 047 Rue du Bourgmestre Dandoy 171 Apt. 527 Onnezies.",
     "047 Rue du Bourgmestre Dandoy 171 Apt. 527 Onnezies"),
    ("region-code-and-postcode", "4360 Backsippestigen 89\nSan Millán de Yécora, LO 68737 last night",
     "4360 Backsippestigen 89\nSan Millán de Yécora, LO 68737"),
    ("place-with-parentheses", "46174 C/ Arana 23\nUnionville (Orange)\n, NY\n United States 56850",
     "46174 C/ Arana 23\nUnionville (Orange)\n, NY\n United States 56850"),
    ("word-before-an-address-stays-out", "See 12 Main St\n\nBerlin is nice", "12 Main St"),
    ("lower-case-english-street-with-unit", "hubbard and fox\n3747 3911 fourth avenue suite 112 calgary alberta",
     "3747 3911 fourth avenue suite 112 calgary alberta"),
]


@pytest.mark.parametrize(("text", "address"), [a[1:] for a in ADDRESSES], ids=[a[0] for a in ADDRESSES])
def test_street_addresses_in_faker_locale_formats_are_one_span(pii, text, address):
    assert spans(pii, text, "ADDRESS") == [address]


ADDRESS_LOOKALIKES = [
    ("product-and-version", "I use Windows 11 at home and Python 3 at work"),
    ("room-and-gate", "The meeting is at Room 12, then Gate 5."),
    ("year-after-a-word", "During 1972, Careset Systems invested heavily."),
    ("season-and-year", "Spring 2024 sale is on"),
    ("ticket-and-order-codes", "Ticket TCK-48213 and order ORD-2291-A are about the same parcel"),
    ("quantity-and-product", "Order 2 Widget Pro units by Friday"),
    ("price-and-date", "It costs 12.99 EUR since 12 March 2024"),
    ("currency-code-before-an-amount", "The total is EUR 136.\nPrice: USD 2513\nThanks"),
    ("corner-without-a-number", "Put the box in the corner of the room and the hall"),
    ("version-line", "Release 5, Berlin edition, ships in June."),
    ("lower-case-sale", "it is on sale for 3 days"),
    ("lower-case-table", "we are at table 5 and the error is in line 42"),
    ("lower-case-step", "i am at step 3 of 5, then page 2"),
    ("english-words-before-a-number-after-a-cue", "We moved Meeting notes to 12 and Release notes are in 12"),
]


@pytest.mark.parametrize("text", [a[1] for a in ADDRESS_LOOKALIKES], ids=[a[0] for a in ADDRESS_LOOKALIKES])
def test_address_lookalikes_are_no_address(pii, text):
    assert spans(pii, text, "ADDRESS") == []


# --- the public dev file -----------------------------------------------------------------------------------------

PRESIDIO_SYNTH_DEV_PATH = Path(__file__).resolve().parents[3] / "shared" / "data" / "pii_dev_presidio_synth.json"
MY_KINDS = ("STREET_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD")


@pytest.mark.skipif(not PRESIDIO_SYNTH_DEV_PATH.exists(), reason="the public dev file is not at ../shared/data")
def test_addresses_phones_and_cards_of_the_public_dev_file_are_not_stored(pii):
    """A fixed slice: the first 100 texts of the ``tune`` half holding an address, a phone or a card number, stored
    as the chat service stores them (before issue 20: addresses 0.40, phones 0.65, cards 0.87 found on that half)."""
    from engine.safety.measure_pii import stored_text
    from engine.safety.measure_public import load_presidio_synth, split_of
    from engine.safety.policy import DEFAULT_POLICY_PATH, Policy

    policy = Policy.load(DEFAULT_POLICY_PATH)
    samples = [s for s in load_presidio_synth(PRESIDIO_SYNTH_DEV_PATH)
               if split_of(s.text) == "tune" and any(g.kind in MY_KINDS for g in s.spans)][:100]
    gold = found = 0
    whole_in_store = []
    for sample in samples:
        stored, cuts = stored_text(policy, sample.text, pii.scan(sample.text))
        for g in sample.spans:
            if g.kind not in MY_KINDS:
                continue
            gold += 1
            found += any(c.start < g.end and g.start < c.end for c in cuts)
            value = sample.text[g.start:g.end]
            if len(value) >= 6 and value in stored:
                whole_in_store.append(value)
    assert gold >= 100
    assert found / gold >= 0.90
    assert whole_in_store == []
