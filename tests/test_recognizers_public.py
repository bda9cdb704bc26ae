"""Street addresses, phone numbers and card numbers in the formats public labelled text uses (issue 20):
presidio-research's synthetic set and the Faker locales it was made with. Each format has its look-alikes beside it
(ticket and order codes, versions, prices, dates, times) that must stay intact. The dev file check reads
``../shared/data/pii_dev_presidio_synth.json`` when it is there and is skipped when it is not."""

from __future__ import annotations

import socket

import pytest

from engine.safety.pii import PresidioScanner


@pytest.fixture(scope="module", autouse=True)
def no_network():
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during a safety test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        mp.setattr(socket, "create_connection", refuse)
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
]


@pytest.mark.parametrize("text", [p[1] for p in PHONE_LOOKALIKES], ids=[p[0] for p in PHONE_LOOKALIKES])
def test_phone_lookalikes_are_no_phone(pii, text):
    assert spans(pii, text, "PHONE_NUMBER") == []


def test_a_social_security_number_is_one_and_no_phone(pii):
    text = "SSN 536-90-4399 on file"
    assert [(f.label, text[f.start:f.end]) for f in pii.scan(text)] == [("US_SSN", "536-90-4399")]
