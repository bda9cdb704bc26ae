"""How well the safety scanners do their job, measured: ``llm-console eval safety``.

PII: a labelled set is generated (deterministically, from a seed) from the templates in
``data/pii_templates.toml`` and a fake-data generator (Faker's locale providers, plus our own formats for what
Faker does not vary: phone layouts with extensions and country codes, card groupings, addresses of each country the
phone list covers). Each text is scanned by the real PII scanner and redacted exactly as the chat service stores
it (:meth:`engine.safety.policy.Policy.stored_redactions`, then :func:`engine.safety.policy.redact`). Reported per
entity and overall:

- recall: gold values that a stored redaction overlaps (with a label of the same kind);
- leak rate: gold values of which the whole value, or one of its identifying parts (a surname, a street line, a
  postcode, a city inside an address), still appears verbatim in the stored text;
- precision: stored redactions that overlap a gold value (redactions on look-alikes such as ticket codes, prices,
  dates, version strings, invented words and general place questions count against it).

The templates come in two families that share no sentence: ``dev`` (what the recognizers were tuned on) and
``heldout`` (the reported numbers). Value formats (how a phone number or an address is written) are shared.

Toxicity (ROC AUC per label) lives in ``engine.safety.measure_toxicity`` when present; :func:`safety_report`
runs both parts.
"""

from __future__ import annotations

import importlib
import logging
import random
import re
import string
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.safety.base import Finding

if TYPE_CHECKING:
    from faker import Faker

    from engine.safety.pii import PresidioScanner
    from engine.safety.policy import Policy

logger = logging.getLogger(__name__)

TEMPLATES_PATH = Path(__file__).parent / "data" / "pii_templates.toml"
FAMILIES = ("dev", "heldout")
DEFAULT_FAMILY = "heldout"
DEFAULT_SEED = 13
DEFAULT_TEXTS = 2000

# Gold entity types and the stored labels that count as finding them.
EVAL_ENTITIES: tuple[str, ...] = (
    "PERSON",
    "LOCATION",
    "ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "EMAIL_ADDRESS",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
)
COMPATIBLE: Mapping[str, frozenset[str]] = {
    "ADDRESS": frozenset({"ADDRESS", "LOCATION"}),
    "LOCATION": frozenset({"LOCATION", "ADDRESS"}),
    **{e: frozenset({e}) for e in ("PERSON", "PHONE_NUMBER", "CREDIT_CARD", "EMAIL_ADDRESS", "IBAN_CODE", "US_SSN",
                                   "IP_ADDRESS")},
}

# Country (ISO 3166 alpha-2, the phone list in engine.safety.pii) -> Faker locale for names and addresses.
COUNTRY_LOCALES: Mapping[str, str] = {
    "US": "en_US", "GB": "en_GB", "DE": "de_DE", "FR": "fr_FR", "IN": "en_IN", "CA": "en_CA", "IL": "en_US",
    "BR": "pt_BR", "IT": "it_IT", "ES": "es_ES", "NL": "nl_NL", "AU": "en_AU",
}
# English-speaking support desks see more of some countries than others.
COUNTRY_WEIGHTS: Mapping[str, int] = {
    "US": 5, "GB": 4, "DE": 2, "FR": 2, "IN": 2, "CA": 2, "IL": 1, "BR": 1, "IT": 1, "ES": 1, "NL": 1, "AU": 2,
}
COUNTRY_NAMES: Mapping[str, tuple[str, ...]] = {
    "US": ("the United States", "the US", "USA"), "GB": ("the UK", "England", "Scotland", "Wales"),
    "DE": ("Germany",), "FR": ("France",), "IN": ("India",), "CA": ("Canada",), "IL": ("Israel",),
    "BR": ("Brazil",), "IT": ("Italy",), "ES": ("Spain",), "NL": ("the Netherlands", "Holland"),
    "AU": ("Australia",),
}
# Real cities (Faker's English locales invent theirs: "Johnsonfurt"); texts use both kinds.
REAL_CITIES: Mapping[str, tuple[str, ...]] = {
    "US": ("Springfield", "Denver", "Austin", "Portland", "Columbus", "Madison", "Raleigh", "Tucson", "Omaha",
           "Boise", "Richmond", "Savannah"),
    "GB": ("Leeds", "Bristol", "Norwich", "Sheffield", "Cardiff", "Glasgow", "Brighton", "York", "Exeter",
           "Nottingham", "Reading", "Dundee"),
    "CA": ("Calgary", "Halifax", "Winnipeg", "Ottawa", "Victoria", "Kelowna", "Regina", "Moncton"),
    "AU": ("Brisbane", "Perth", "Adelaide", "Hobart", "Geelong", "Cairns", "Darwin", "Newcastle"),
    "IL": ("Tel Aviv", "Haifa", "Jerusalem", "Beersheba", "Netanya", "Herzliya", "Ramat Gan"),
    "BR": ("São Paulo", "Curitiba", "Recife", "Porto Alegre", "Belo Horizonte", "Fortaleza", "Campinas"),
    "FR": ("Lyon", "Nantes", "Toulouse", "Lille", "Rennes", "Bordeaux", "Grenoble", "Montpellier"),
}
US_STATES = ("AL", "AZ", "CA", "CO", "FL", "GA", "IL", "MA", "MI", "MN", "NC", "NY", "OH", "OR", "PA", "TX", "VA",
             "WA", "WI")
CA_PROVINCES = ("AB", "BC", "MB", "NB", "NS", "ON", "QC", "SK")
AU_STATES = ("NSW", "VIC", "QLD", "WA", "SA", "TAS", "ACT", "NT")
US_SUFFIXES = ("Street", "St", "St.", "Avenue", "Ave", "Ave.", "Road", "Rd", "Boulevard", "Blvd", "Lane", "Ln",
               "Drive", "Dr", "Court", "Ct", "Place", "Pl", "Way", "Terrace", "Circle", "Parkway", "Highway")
GB_SUFFIXES = ("Road", "Street", "Lane", "Avenue", "Close", "Crescent", "Drive", "Gardens", "Grove", "Hill", "Mews",
               "Place", "Row", "Square", "Terrace", "Way", "Walk", "Rd", "St")
AU_SUFFIXES = ("Street", "St", "Road", "Rd", "Parade", "Pde", "Avenue", "Ave", "Crescent", "Cres", "Highway", "Hwy",
               "Terrace", "Court", "Place", "Drive")
IL_FIRST = ("Noa", "Yosef", "Tamar", "Avi", "Yael", "Eitan", "Shira", "Omer", "Maya", "Itai", "Noam", "Adi")
IL_LAST = ("Cohen", "Levi", "Mizrahi", "Peretz", "Biton", "Dahan", "Avraham", "Friedman", "Azoulay", "Katz",
           "Shapiro", "Ben-David")
IL_STREETS = ("Herzl", "Rothschild", "Ben Yehuda", "Dizengoff", "Allenby", "Jabotinsky", "Weizmann", "HaNevi'im")
IN_STREETS = ("MG Road", "Brigade Road", "Linking Road", "Park Street", "Anna Salai", "Nehru Nagar", "Civil Lines",
              "Sector 15", "Banjara Hills Road No. 12")
TITLES = ("Mr", "Mr.", "Mrs", "Mrs.", "Ms", "Ms.", "Dr", "Dr.")

# Look-alikes that must stay as written.
GENERAL_PLACES = ("France", "Japan", "Canada", "Germany", "Brazil", "Mexico", "Italy", "Spain", "Australia", "Norway",
                  "Paris", "London", "Tokyo", "Berlin", "Sydney", "Toronto", "New York", "Madrid", "Rome", "Dublin",
                  "Europe", "Asia", "South America", "California", "Texas", "Ontario", "Bavaria")
SUPPORT_SENTENCES = (
    "Refunds are processed within 5 business days.",
    "Please restart the router and wait two minutes before trying again.",
    "Your subscription renews on the first day of each month.",
    "You can change the delivery address until the parcel has shipped.",
    "The warranty covers manufacturing defects for 24 months.",
    "Reset links are valid for 30 minutes.",
    "Orders over $50 ship free within the mainland.",
    "Our team answers within one working day, Monday to Friday.",
)


@dataclass(frozen=True)
class GoldSpan:
    """One personal value in a generated text; ``parts`` are the pieces that must not survive on their own."""

    label: str
    start: int
    end: int
    value: str
    parts: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelledText:
    text: str
    gold: tuple[GoldSpan, ...]
    family: str
    register: str
    template: int
    country: str
    # Values that look like personal data but are not (ticket codes, prices, ...): for the false-positive count.
    lookalikes: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True)
class Template:
    family: str
    index: int
    register: str
    text: str
    lower: bool = False


def load_templates(family: str, path: Path = TEMPLATES_PATH) -> list[Template]:
    """The templates of one family (``dev`` or ``heldout``)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    out = []
    for i, raw in enumerate(data.get(family, [])):
        out.append(Template(family, i, str(raw["register"]), str(raw["text"]), bool(raw.get("lower", False))))
    if not out:
        raise ValueError(f"no templates in family {family!r}")
    return out


def _luhn_complete(prefix_and_body: str) -> str:
    """Append the Luhn check digit."""
    total = 0
    for i, ch in enumerate(reversed(prefix_and_body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return prefix_and_body + str((10 - total % 10) % 10)


def _iban_checksum(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    digits = "".join(str(int(c, 36)) for c in rearranged)
    return f"{country}{98 - int(digits) % 97:02d}{bban}"


IBAN_BBAN = {  # country -> (length of BBAN, alphabet of each position: d digit, a upper letter, c either)
    "DE": "d" * 18, "GB": "aaaa" + "d" * 14, "FR": "d" * 10 + "c" * 11 + "dd", "IT": "a" + "d" * 10 + "c" * 12,
    "ES": "d" * 20, "NL": "aaaa" + "d" * 10, "BR": "d" * 23 + "ac", "IL": "d" * 19,
}


class _Values:
    """Fake personal values for one country, deterministic from ``rng``."""

    def __init__(self, rng: random.Random, fakers: Mapping[str, Faker], country: str) -> None:
        self.rng = rng
        self.country = country
        self.fake = fakers[COUNTRY_LOCALES[country]]

    # --- people ------------------------------------------------------------------------------------------
    def rare_name_part(self) -> str:
        """A made-up name no list holds (about one name in six), so recall is not just gazetteer recall."""
        rng = self.rng
        onsets = ("b", "d", "k", "l", "m", "n", "r", "s", "t", "v", "z", "br", "dr", "kl", "tr", "sh", "th")
        vowels = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
        codas = ("", "n", "r", "s", "l", "th", "nd", "rk", "x")
        word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.randint(1, 2))) + rng.choice(codas)
        return word.capitalize()

    def person(self) -> tuple[str, str]:
        """(first name, surname)."""
        if self.rng.random() < 0.15:
            return self.rare_name_part(), self.rare_name_part()
        if self.country == "IL":
            return self.rng.choice(IL_FIRST), self.rng.choice(IL_LAST)
        first = self.fake.first_name()
        last = self.fake.last_name()
        return first.split()[0], last

    # --- contact ------------------------------------------------------------------------------------------
    def email(self, first: str, last: str) -> str:
        rng = self.rng
        if rng.random() < 0.5:
            local = rng.choice([f"{first}.{last}", f"{first[0]}{last}", f"{first}{rng.randint(1, 99)}", f"{last}.{first[0]}"])
            local = re.sub(r"[^a-z0-9.]", "", _ascii(local).lower()) or "user"
            domain = rng.choice(["gmail.com", "outlook.com", "yahoo.co.uk", "web.de", "example.org", "mail.com",
                                 "proton.me", "icloud.com"])
            return f"{local}@{domain}"
        return str(self.fake.email())

    def phone(self) -> str:
        import phonenumbers as pn

        rng = self.rng
        region = self.country
        kind = rng.choice((pn.PhoneNumberType.MOBILE, pn.PhoneNumberType.FIXED_LINE))
        example = pn.example_number_for_type(region, kind) or pn.example_number(region)
        assert example is not None, region
        national = str(example.national_number)
        number: pn.PhoneNumber = example
        for _ in range(50):
            keep = max(1, len(national) - 6)
            candidate = national[:keep] + "".join(rng.choice(string.digits) for _ in range(len(national) - keep))
            parsed = pn.parse("+" + str(example.country_code) + candidate)
            if pn.is_valid_number(parsed) and candidate[keep:keep + 3] != "555":
                number = parsed
                break
        fmt = rng.random()
        if fmt < 0.3:
            text = pn.format_number(number, pn.PhoneNumberFormat.NATIONAL)
        elif fmt < 0.6:
            text = pn.format_number(number, pn.PhoneNumberFormat.INTERNATIONAL)
        elif fmt < 0.7:
            text = pn.format_number(number, pn.PhoneNumberFormat.E164)
        elif fmt < 0.8:
            intl = pn.format_number(number, pn.PhoneNumberFormat.INTERNATIONAL)
            text = "00" + intl[1:]
        elif fmt < 0.9 and region in ("US", "CA"):
            nat = str(number.national_number)
            text = rng.choice([f"{nat[:3]}.{nat[3:6]}.{nat[6:]}", f"({nat[:3]}) {nat[3:6]}-{nat[6:]}",
                               f"1-{nat[:3]}-{nat[3:6]}-{nat[6:]}"])
        elif fmt < 0.9 and region in ("GB", "DE", "IT", "FR"):
            intl = pn.format_number(number, pn.PhoneNumberFormat.INTERNATIONAL)
            cc, rest = intl.split(" ", 1)
            text = f"{cc} (0){rest}" if region != "IT" else intl
        else:
            text = pn.format_number(number, pn.PhoneNumberFormat.NATIONAL)
        if rng.random() < 0.15:
            text += rng.choice([" ext. ", " ext ", " x", " extension ", " Ext. "]) + str(rng.randint(2, 9999))
        return text

    # --- payment ------------------------------------------------------------------------------------------
    def card(self) -> str:
        rng = self.rng
        kind = rng.choice(("visa", "visa", "mc", "mc", "amex", "discover", "visa19", "maestro"))
        if kind == "amex":
            digits = _luhn_complete(rng.choice(("34", "37")) + "".join(rng.choice(string.digits) for _ in range(12)))
            sep = rng.choice((" ", "-", ""))
            return f"{digits[:4]}{sep}{digits[4:10]}{sep}{digits[10:]}"
        prefix = {"visa": "4", "mc": rng.choice(("51", "52", "53", "54", "55", "2221", "2720")), "discover": "6011",
                  "visa19": "4", "maestro": rng.choice(("6759", "5018", "6304"))}[kind]
        length = 19 if kind in ("visa19", "maestro") else 16
        digits = _luhn_complete(prefix + "".join(rng.choice(string.digits) for _ in range(length - 1 - len(prefix))))
        sep = rng.choice((" ", " ", "-", "", "."))
        if sep == "." and length != 16:
            sep = " "
        return sep.join(digits[i:i + 4] for i in range(0, length, 4))

    def iban(self) -> str:
        rng = self.rng
        country = self.country if self.country in IBAN_BBAN else rng.choice(("DE", "GB", "FR", "NL", "ES", "IT"))
        bban = "".join(rng.choice(string.digits if c == "d" else string.ascii_uppercase if c == "a"
                                  else string.digits + string.ascii_uppercase) for c in IBAN_BBAN[country])
        iban = _iban_checksum(country, bban)
        if rng.random() < 0.6:
            return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))
        return iban

    def ssn(self) -> str:
        rng = self.rng
        area = rng.choice([n for n in range(1, 900) if n != 666])
        group, serial = rng.randint(1, 99), rng.randint(1, 9999)
        sep = rng.choice(("-", "-", "-", " "))
        return f"{area:03d}{sep}{group:02d}{sep}{serial:04d}"

    def ip(self) -> str:
        if self.rng.random() < 0.2:
            return str(self.fake.ipv6())
        return str(self.fake.ipv4_public() if self.rng.random() < 0.7 else self.fake.ipv4_private())

    # --- places -------------------------------------------------------------------------------------------
    def city(self) -> str:
        real = REAL_CITIES.get(self.country)
        if real and (self.rng.random() < 0.6 or self.country in ("IL",)):
            return self.rng.choice(real)
        if self.country == "IL":
            return self.rng.choice(REAL_CITIES["IL"])
        return str(self.fake.city())

    def country_name(self) -> str:
        return self.rng.choice(COUNTRY_NAMES[self.country])

    def address(self) -> tuple[list[str], list[str]]:
        """(lines of the address, identifying parts). The first line is the street line."""
        rng, fake, c = self.rng, self.fake, self.country
        city = self.city()
        num = str(rng.randint(1, 9999) if rng.random() < 0.7 else rng.randint(1, 99))
        unit = ""
        if c in ("US", "CA"):
            street = f"{num} {fake.last_name()} {rng.choice(US_SUFFIXES)}"
            if rng.random() < 0.15:
                street = f"{num} {rng.choice(('N', 'S', 'E', 'W', 'N.', 'W.'))} {fake.last_name()} {rng.choice(US_SUFFIXES)}"
            if rng.random() < 0.35:
                unit = rng.choice(("Apt", "Apt.", "Suite", "Unit", "#", "Apartment")) + \
                    rng.choice((" ", " ", "")) + str(rng.randint(1, 999)) + rng.choice(("", "", "B", "A"))
                unit = unit.replace("# ", "#")
            if c == "US":
                postcode = f"{rng.randint(1001, 99950):05d}" + (f"-{rng.randint(1, 9999):04d}" if rng.random() < 0.2 else "")
                region = rng.choice(US_STATES)
            else:
                postcode = str(fake.postcode())
                region = rng.choice(CA_PROVINCES)
            last = f"{city}, {region} {postcode}"
            lines = [street + (", " + unit if unit and rng.random() < 0.5 else (" " + unit if unit else "")), last]
            parts = [street, postcode, city] + ([unit] if unit else [])
        elif c == "GB":
            street = f"{num if int(num) < 400 else rng.randint(1, 200)} {fake.last_name()} {rng.choice(GB_SUFFIXES)}"
            if rng.random() < 0.3:
                unit = f"Flat {rng.randint(1, 30)}{rng.choice(('', 'A', 'B'))}"
            postcode = str(fake.postcode())
            first_line = f"{unit}, {street}" if unit else street
            lines = [first_line, city, postcode] if rng.random() < 0.5 else [first_line, f"{city} {postcode}"]
            parts = [street, postcode, city] + ([unit] if unit else [])
        elif c == "AU":
            street = f"{rng.randint(1, 300)} {fake.last_name()} {rng.choice(AU_SUFFIXES)}"
            if rng.random() < 0.3:
                u = rng.randint(1, 40)
                street_line = f"Unit {u}, {street}" if rng.random() < 0.5 else f"{u}/{street}"
            else:
                street_line = street
            postcode = f"{rng.randint(800, 7999):04d}"
            lines = [street_line, f"{city} {rng.choice(AU_STATES)} {postcode}"]
            parts = [street, postcode, city]
        elif c == "DE":
            street = f"{fake.street_name()} {rng.randint(1, 180)}{rng.choice(('', '', 'a', 'b'))}"
            if rng.random() < 0.2:
                street = street.replace("straße", rng.choice(("str.", "strasse")))
            postcode = f"{rng.randint(1067, 99998):05d}"
            lines = [street, f"{postcode} {city}"]
            parts = [street, postcode, city]
        elif c == "FR":
            street = f"{rng.randint(1, 150)}{rng.choice((',', '', ' bis,'))} {fake.street_name()}"
            postcode = f"{rng.randint(1000, 95999):05d}"
            lines = [street, f"{postcode} {city}"]
            parts = [street, postcode, city]
        elif c == "IT":
            street = f"{fake.street_name()}{rng.choice((', ', ' '))}{rng.randint(1, 200)}"
            postcode = f"{rng.randint(10, 98168):05d}"
            lines = [street, f"{postcode} {city}" + (f" ({rng.choice(('RM', 'MI', 'TO', 'NA', 'FI'))})" if rng.random() < 0.5 else "")]
            parts = [street, postcode, city]
        elif c == "ES":
            street = f"{fake.street_name()}{rng.choice((', ', ' '))}{rng.randint(1, 200)}"
            if rng.random() < 0.3:
                street += f", {rng.randint(1, 9)}º {rng.choice('ABCD')}"
            postcode = f"{rng.randint(1001, 52080):05d}"
            lines = [street, f"{postcode} {city}"]
            parts = [street, postcode, city]
        elif c == "NL":
            street = f"{fake.street_name()} {rng.randint(1, 300)}{rng.choice(('', '', '-2', 'A'))}"
            postcode = f"{rng.randint(1011, 9999)} {rng.choice(string.ascii_uppercase)}{rng.choice(string.ascii_uppercase)}"
            if rng.random() < 0.4:
                postcode = postcode.replace(" ", "")
            lines = [street, f"{postcode} {city}"]
            parts = [street, postcode, city]
        elif c == "BR":
            kind = rng.choice(("Rua", "Avenida", "Av.", "Travessa", "Alameda"))
            street = f"{kind} {fake.last_name()} {fake.last_name()}, {rng.randint(1, 3000)}"
            if rng.random() < 0.3:
                street += f", Apto {rng.randint(11, 1504)}"
            postcode = f"{rng.randint(1000, 99999):05d}-{rng.randint(0, 999):03d}"
            lines = [street, f"{postcode} {city} - {rng.choice(('SP', 'RJ', 'MG', 'PR', 'RS', 'PE'))}"]
            parts = [street, postcode, city]
        elif c == "IN":
            street = rng.choice((f"Flat {rng.randint(1, 900)}, ", f"H.No. {rng.randint(1, 99)}-{rng.randint(1, 999)}, ",
                                 f"{rng.randint(1, 300)}, ", f"Plot No. {rng.randint(1, 400)}, ")) + rng.choice(IN_STREETS)
            postcode = f"{rng.randint(110001, 855117)}"
            if rng.random() < 0.3:
                postcode = postcode[:3] + " " + postcode[3:]
            lines = [street, f"{city} - {postcode}" if rng.random() < 0.5 else f"{city} {postcode}"]
            parts = [street, postcode, city]
        else:  # IL
            name = rng.choice(IL_STREETS)
            street = f"{rng.randint(1, 120)} {name} St" if rng.random() < 0.5 else f"{name} Street {rng.randint(1, 120)}"
            if rng.random() < 0.3:
                street += f", Apt {rng.randint(1, 40)}"
            postcode = f"{rng.randint(1000000, 9999999)}"
            lines = [street, f"{city} {postcode}"]
            parts = [street, postcode, city]
        if rng.random() < 0.2:
            lines.append(self.rng.choice(COUNTRY_NAMES[c]).removeprefix("the ").replace("US", "USA").replace("UK", "United Kingdom"))
        return lines, [p for p in parts if p]

    # --- look-alikes ----------------------------------------------------------------------------------------
    def lookalike(self, slot: str) -> str:
        rng = self.rng
        if slot == "TICKET":
            return rng.choice((f"TCK-{rng.randint(10000, 99999)}", f"#{rng.randint(100000, 999999)}",
                               f"INC{rng.randint(1000000, 9999999)}", f"SR-{rng.randint(2020, 2026)}-{rng.randint(100, 99999)}",
                               f"CASE-{rng.randint(1000, 999999)}"))
        if slot == "ORDER":
            return rng.choice((f"ORD-{rng.randint(2020, 2026)}-{rng.randint(100, 9999)}", f"#{rng.randint(10000000, 99999999)}",
                               f"A{rng.randint(100, 999)}-{rng.randint(1000000, 9999999)}", f"{rng.randint(100, 999)}-{rng.randint(1000000, 9999999)}-{rng.randint(1000000, 9999999)}",
                               f"PO{rng.randint(100000, 999999)}"))
        if slot == "VERSION":
            return rng.choice((f"v{rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}",
                               f"{rng.randint(1, 20)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(1000, 9999)}",
                               f"{rng.randint(2019, 2026)}.{rng.randint(1, 12)}.{rng.randint(1, 28)}",
                               f"build {rng.randint(10000, 99999)}"))
        if slot == "PRICE":
            return rng.choice((f"${rng.randint(1, 2999)}.{rng.randint(0, 99):02d}", f"€{rng.randint(1, 999)},{rng.randint(0, 99):02d}",
                               f"£{rng.randint(1, 9999):,}", f"{rng.randint(1, 99999):,}.00 USD", f"EUR {rng.randint(10, 5000)}"))
        if slot == "DATE":
            y, m, d = rng.randint(2019, 2026), rng.randint(1, 12), rng.randint(1, 28)
            return rng.choice((f"{y}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y}", f"{m:02d}.{d:02d}.{y}", f"{d:02d}-{m:02d}-{y}",
                               f"{d} March {y}", f"{m}/{d}/{y % 100:02d}"))
        if slot == "TIME":
            return rng.choice((f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}", f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d} pm",
                               f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} UTC"))
        if slot == "TOKEN":
            letters = "abcdefghijklmnopqrstuvwxyz"
            return "".join(rng.choice(letters) for _ in range(rng.randint(5, 12)))
        if slot == "SKU":
            return rng.choice((f"SKU-{rng.randint(10000, 99999)}-{rng.choice('ABCDEFG')}", f"PRO-{rng.randint(10, 99)}",
                               f"CUST{rng.randint(100000, 9999999)}", f"X{rng.randint(100, 999)}-{rng.choice(string.ascii_uppercase)}{rng.randint(10, 99)}"))
        if slot == "TRACKING":
            return rng.choice((f"1Z{''.join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16))}",
                               f"{rng.randint(10**11, 10**12 - 1)}", f"JD{rng.randint(10**15, 10**16 - 1)}",
                               f"RR{rng.randint(100000000, 999999999)}GB"))
        if slot == "QTY":
            return str(rng.choice((2, 3, 5, 10, 12, 15, 20, 30, 45, 100, 250)))
        if slot == "PLACE":
            return rng.choice(GENERAL_PLACES)
        if slot == "COMPANY_LINE":
            return rng.choice(("Acme Logistics Ltd", "Northwind Traders GmbH", "Blue Harbor Systems Inc.",
                               "Contoso Retail BV", "Globex Corporation", "Initech Software S.r.l."))
        raise ValueError(f"unknown slot {slot}")


def _ascii(text: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


_SLOT_RE = re.compile(r"\{([A-Z0-9_]+)\}")
_LOOKALIKE_SLOTS = frozenset({"TICKET", "ORDER", "VERSION", "PRICE", "DATE", "TIME", "TOKEN", "SKU", "TRACKING", "QTY",
                              "PLACE", "COMPANY_LINE"})


def _sort_set_built_lists(fake: Faker) -> None:
    """Faker's it_IT address provider builds its city list from a set, so its order (and with it the city a seed
    picks) changed with PYTHONHASHSEED from one process to the next; sorted, a seed gives the same texts everywhere."""
    for provider in fake.get_providers():
        cities = getattr(provider, "cities", None)
        if isinstance(cities, list):
            provider.cities = sorted(cities)


class PiiSetGenerator:
    """Generates labelled texts from a template family; the same seed gives the same texts."""

    def __init__(self, family: str = DEFAULT_FAMILY, seed: int = DEFAULT_SEED) -> None:
        from faker import Faker

        self.family = family
        self.seed = seed
        self.templates = load_templates(family)
        self.rng = random.Random(f"{family}:{seed}")
        self.fakers: dict[str, Faker] = {}
        for locale in sorted(set(COUNTRY_LOCALES.values())):
            fake = Faker(locale)
            fake.seed_instance(self.rng.randint(0, 2**31))
            _sort_set_built_lists(fake)
            self.fakers[locale] = fake
        self._countries = [c for c, w in COUNTRY_WEIGHTS.items() for _ in range(w)]

    def generate(self, n: int) -> list[LabelledText]:
        return [self._one(i) for i in range(n)]

    def _one(self, i: int) -> LabelledText:
        rng = self.rng
        template = self.templates[i % len(self.templates)] if i < len(self.templates) else rng.choice(self.templates)
        country = rng.choice(self._countries)
        values = _Values(rng, self.fakers, country)
        first, last = values.person()
        first2, last2 = values.person()
        address_lines, address_parts = values.address()
        cache: dict[str, tuple[str, str | None, tuple[str, ...]]] = {}

        def fill(slot: str) -> tuple[str, str | None, tuple[str, ...]]:
            """(text, gold label or None, identifying parts)."""
            if slot in cache and slot not in _LOOKALIKE_SLOTS and slot not in ("PHONE",):
                return cache[slot]
            out: tuple[str, str | None, tuple[str, ...]]
            if slot == "PERSON":
                middle = f" {rng.choice(string.ascii_uppercase)}." if country == "US" and rng.random() < 0.1 else ""
                out = (f"{first}{middle} {last}", "PERSON", (last,))
            elif slot == "PERSON2":
                out = (f"{first2} {last2}", "PERSON", (last2,))
            elif slot == "FIRST":
                out = (first, "PERSON", ())
            elif slot == "LAST":
                out = (last, "PERSON", ())
            elif slot == "EMAIL":
                out = (values.email(first, last), "EMAIL_ADDRESS", ())
            elif slot == "PHONE":
                out = (values.phone(), "PHONE_NUMBER", ())
            elif slot == "CARD":
                out = (values.card(), "CREDIT_CARD", ())
            elif slot == "IBAN":
                out = (values.iban(), "IBAN_CODE", ())
            elif slot == "SSN":
                out = (values.ssn(), "US_SSN", ())
            elif slot == "IP":
                out = (values.ip(), "IP_ADDRESS", ())
            elif slot == "ADDRESS":
                out = (", ".join(address_lines), "ADDRESS", tuple(address_parts))
            elif slot == "ADDRESS_ML":
                out = ("\n".join(address_lines), "ADDRESS", tuple(address_parts))
            elif slot == "STREET":
                out = (address_lines[0], "ADDRESS", (address_parts[0],))
            elif slot == "CITY":
                out = (values.city(), "LOCATION", ())
            elif slot == "COUNTRY":
                out = (values.country_name(), "LOCATION", ())
            elif slot in _LOOKALIKE_SLOTS:
                out = (values.lookalike(slot), None, ())
            else:
                raise ValueError(f"template {template.family}[{template.index}]: unknown slot {{{slot}}}")
            cache[slot] = out
            return out

        pieces: list[str] = []
        gold: list[GoldSpan] = []
        lookalikes: list[tuple[str, int, int]] = []
        pos = 0
        last_end = 0
        for m in _SLOT_RE.finditer(template.text):
            literal = template.text[last_end:m.start()]
            pieces.append(literal)
            pos += len(literal)
            value, label, parts = fill(m.group(1))
            if template.lower:
                value, parts = value.lower(), tuple(p.lower() for p in parts)
            pieces.append(value)
            if label is not None:
                gold.append(GoldSpan(label, pos, pos + len(value), value, parts))
            else:
                lookalikes.append((m.group(1), pos, pos + len(value)))
            pos += len(value)
            last_end = m.end()
        pieces.append(template.text[last_end:])
        text = "".join(pieces)
        if template.lower:
            text = text.lower()
        if rng.random() < 0.25:  # a support sentence around it: what must stay intact
            sentence = rng.choice(SUPPORT_SENTENCES)
            if rng.random() < 0.5:
                text = text + "\n" + sentence
            else:
                text = sentence + " " + text
                shift = len(sentence) + 1
                gold = [GoldSpan(g.label, g.start + shift, g.end + shift, g.value, g.parts) for g in gold]
                lookalikes = [(s, a + shift, b + shift) for s, a, b in lookalikes]
        return LabelledText(text, tuple(gold), template.family, template.register, template.index, country,
                            tuple(lookalikes))


def generate_pii_set(n: int = DEFAULT_TEXTS, *, family: str = DEFAULT_FAMILY, seed: int = DEFAULT_SEED) -> list[LabelledText]:
    """``n`` labelled texts from the ``family`` templates (deterministic for a seed)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    return PiiSetGenerator(family, seed).generate(n)


# --- scoring ---------------------------------------------------------------------------------------------------


def _survives(part: str, stored: str) -> bool:
    if not part.strip():
        return False
    return re.search(r"(?<![\w])" + re.escape(part) + r"(?![\w])", stored) is not None


@dataclass
class _Counts:
    gold: int = 0
    found: int = 0
    leaked: int = 0
    predicted: int = 0
    predicted_correct: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "gold": self.gold,
            "found": self.found,
            "leaked": self.leaked,
            "recall": round(self.found / self.gold, 4) if self.gold else None,
            "leak_rate": round(self.leaked / self.gold, 4) if self.gold else None,
            "predicted": self.predicted,
            "precision": round(self.predicted_correct / self.predicted, 4) if self.predicted else None,
        }


@dataclass
class PiiScore:
    per_entity: dict[str, _Counts] = field(default_factory=dict)
    overall: _Counts = field(default_factory=_Counts)
    lookalikes: int = 0
    lookalikes_redacted: int = 0
    lookalikes_by_kind: dict[str, list[int]] = field(default_factory=dict)
    misses: list[dict[str, Any]] = field(default_factory=list)
    false_positives: list[dict[str, Any]] = field(default_factory=list)


def _overlaps(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 < b1 and b0 < a1


def score_texts(samples: Sequence[LabelledText], stored_findings: Sequence[Sequence[Finding]],
                stored_texts: Sequence[str], *, keep_examples: int = 0) -> PiiScore:
    """Recall, leak rate and precision of the stored redactions against the gold spans."""
    score = PiiScore()
    for sample, findings, stored in zip(samples, stored_findings, stored_texts, strict=True):
        spans = [f for f in findings if f.start is not None and f.end is not None and f.end > f.start]
        for g in sample.gold:
            c = score.per_entity.setdefault(g.label, _Counts())
            c.gold += 1
            score.overall.gold += 1
            found = any(f.label in COMPATIBLE[g.label] and _overlaps(g.start, g.end, f.start, f.end)  # type: ignore[arg-type]
                        for f in spans)
            leaked = any(_survives(p, stored) for p in (g.value, *g.parts))
            c.found += found
            score.overall.found += found
            c.leaked += leaked
            score.overall.leaked += leaked
            if (not found or leaked) and len(score.misses) < keep_examples:
                score.misses.append({"label": g.label, "value": g.value, "leaked": leaked, "found": found,
                                     "template": f"{sample.family}[{sample.template}]", "stored": stored})
        for f in spans:
            assert f.start is not None and f.end is not None
            c = score.per_entity.setdefault(f.label, _Counts())
            c.predicted += 1
            score.overall.predicted += 1
            correct = any(_overlaps(g.start, g.end, f.start, f.end) for g in sample.gold)
            c.predicted_correct += correct
            score.overall.predicted_correct += correct
            if not correct and len(score.false_positives) < keep_examples:
                score.false_positives.append({"label": f.label, "text": sample.text[f.start:f.end],
                                              "template": f"{sample.family}[{sample.template}]"})
        for kind, a, b in sample.lookalikes:
            hit = any(_overlaps(a, b, f.start, f.end) for f in spans)  # type: ignore[arg-type]
            score.lookalikes += 1
            score.lookalikes_redacted += hit
            k = score.lookalikes_by_kind.setdefault(kind, [0, 0])
            k[0] += 1
            k[1] += hit
    return score


def stored_text(policy: Policy, text: str, findings: Iterable[Finding]) -> tuple[str, tuple[Finding, ...]]:
    """What the chat service stores for ``text``: the policy's stored redactions cut out (see moderation._gate)."""
    from engine.safety.policy import redact

    cut = policy.stored_redactions(text, [f for f in findings if f.has_span])
    return redact(text, cut), cut


def versions(scanner: PresidioScanner | None = None) -> dict[str, str]:
    """Versions of what judged: Presidio, the spaCy model, our recognizers, Faker (the data generator)."""
    from engine.safety.pii import SPACY_MODEL, _package_version
    from engine.safety.recognizers import RECOGNIZERS_VERSION

    return {
        "presidio_analyzer": _package_version("presidio-analyzer"),
        "spacy": _package_version("spacy"),
        "spacy_model": f"{SPACY_MODEL}-{_package_version(SPACY_MODEL.replace('_', '-'))}",
        "recognizers": RECOGNIZERS_VERSION,
        "faker": _package_version("faker"),
        **({"detector_version": scanner.version} if scanner is not None else {}),
    }


def pii_report(
    n: int = DEFAULT_TEXTS,
    *,
    family: str = DEFAULT_FAMILY,
    seed: int = DEFAULT_SEED,
    scanner: PresidioScanner | None = None,
    policy: Policy | None = None,
    examples: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Generate ``n`` labelled texts, scan and redact them as the chat service stores them, and score that."""
    from engine.safety.pii import PresidioScanner
    from engine.safety.policy import DEFAULT_POLICY_PATH, Policy

    began = time.perf_counter()
    samples = generate_pii_set(n, family=family, seed=seed)
    scanner = scanner or PresidioScanner()
    policy = policy or Policy.load(DEFAULT_POLICY_PATH)
    stored_findings: list[tuple[Finding, ...]] = []
    stored_texts: list[str] = []
    scan_ms: list[float] = []
    intact = 0
    for i, sample in enumerate(samples):
        t0 = time.perf_counter()
        findings = scanner.scan(sample.text)
        scan_ms.append((time.perf_counter() - t0) * 1000.0)
        stored, cut = stored_text(policy, sample.text, findings)
        stored_findings.append(cut)
        stored_texts.append(stored)
        if progress is not None and (i + 1) % 200 == 0:
            progress(i + 1, n)
    score = score_texts(samples, stored_findings, stored_texts, keep_examples=examples)
    # Support sentences and general place questions with nothing personal in them must come back unchanged.
    for sentence in (*SUPPORT_SENTENCES, *(f"What is the capital of {p}?" for p in GENERAL_PLACES[:10]),
                     *(f"Do you ship to {p}?" for p in GENERAL_PLACES[10:20])):
        stored, _ = stored_text(policy, sentence, scanner.scan(sentence))
        intact += stored == sentence
    plain = len(SUPPORT_SENTENCES) + 20
    ordered = sorted(scan_ms)
    report: dict[str, Any] = {
        "family": family,
        "seed": seed,
        "texts": n,
        "templates": len(load_templates(family)),
        "registers": sorted({s.register for s in samples}),
        "countries": sorted({s.country for s in samples}),
        "policy": {"version": policy.version, "redact_places": policy.redact_places},
        "versions": versions(scanner),
        "overall": score.overall.as_dict(),
        "per_entity": {label: score.per_entity[label].as_dict() for label in sorted(score.per_entity)},
        "lookalikes": {
            "total": score.lookalikes,
            "redacted": score.lookalikes_redacted,
            "by_kind": {k: {"total": v[0], "redacted": v[1]} for k, v in sorted(score.lookalikes_by_kind.items())},
        },
        "plain_texts_intact": f"{intact}/{plain}",
        "scan_ms": {"p50": round(ordered[len(ordered) // 2], 2), "p95": round(ordered[int(len(ordered) * 0.95)], 2)},
        "seconds": round(time.perf_counter() - began, 1),
    }
    if examples:
        report["misses"] = score.misses
        report["false_positives"] = score.false_positives
    return report


TOXICITY_MODULE = "engine.safety.measure_toxicity"


def toxicity_report(**kwargs: Any) -> dict[str, Any] | None:
    """The toxicity part: ``engine.safety.measure_toxicity.toxicity_report(**kwargs)`` (ROC AUC per label on an
    offline labelled set), or None where that module or function does not exist (yet)."""
    try:
        module = importlib.import_module(TOXICITY_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != TOXICITY_MODULE:
            raise
        return None
    fn = getattr(module, "toxicity_report", None)
    if not callable(fn):
        return None
    result = fn(**kwargs)
    return dict(result) if isinstance(result, Mapping) else {"result": result}


def safety_report(
    n: int = DEFAULT_TEXTS,
    *,
    family: str = DEFAULT_FAMILY,
    seed: int = DEFAULT_SEED,
    toxicity: bool = True,
    examples: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Both parts: PII (:func:`pii_report`) and toxicity (:func:`toxicity_report`, where it exists)."""
    out: dict[str, Any] = {"pii": pii_report(n, family=family, seed=seed, examples=examples, progress=progress)}
    if toxicity:
        tox = toxicity_report()
        out["toxicity"] = tox if tox is not None else {
            "status": f"not available: {TOXICITY_MODULE}.toxicity_report does not exist in this installation"}
    return out
