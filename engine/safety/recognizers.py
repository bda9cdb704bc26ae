"""Recognizers Presidio leaves to the deployer, registered by engine.safety.pii.

- ``StreetAddressRecognizer`` (ADDRESS): street lines with house numbers and street types (abbreviations too) in
  the conventions of the countries the phone list covers (US, GB, CA, AU, IN, IL: "12 Baker St"; DE, NL:
  "Hauptstraße 12"; FR: "5, rue de la Paix"; IT, ES, BR: "Via Roma 12", "Calle Mayor, 5", "Rua X, 123"), unit and
  apartment numbers, and what follows them on the same or the next lines: city, state, postcode, country. A
  multi-line address comes out as one span. US/CA/AU "City, ST 12345" and UK/CA postcodes are found on their own.
- ``CardNumberRecognizer`` (CREDIT_CARD): 13-19 digits in every common grouping (4-4-4-4 with spaces, dashes or
  dots, 4-6-5 and 4-6-4, 4-4-4-4-3, unbroken), Luhn-checked and with a known issuer prefix.
- ``ContextPersonRecognizer`` (PERSON): names where the words around them say it is a name: titles (Mr, Dr,
  Prof...), greetings ("Dear", "Hi"), introductions ("my name is", "I'm", "... speaking"), closings and
  signatures, form fields ("Name:", "customer="), relations ("my colleague", "account holder").
- ``PersonalPlaceRecognizer`` (LOCATION): the place after "I live in", "moved to", "I'm from", "City:".
- ``IbanGroupsRecognizer`` (IBAN_CODE): grouped IBANs read to their country's length, so a following word does
  not spoil the checksum as it does in Presidio's own recognizer.
- ``WindowedPhoneRecognizer``: Presidio's PhoneRecognizer run only around runs of 6 or more digits (less time;
  the 4-5 digit "phone numbers" the stock matcher finds in quantities and house numbers are gone).
- ``FilteredSpacyRecognizer``: spaCy's PERSON and LOCATION, keeping only spans that look like names: a capital
  initial and a proper-noun tag (the small model calls "Refunds" a place and ~17% of invented lower-case words a
  person), no digits, no code-like tokens.
- ``refine_results``: a pass over all results: a name found once is found everywhere in the text; phone numbers
  that are really dates, versions, prices, order numbers or bare digit runs without a phone word are dropped;
  names and places inside a street address give way to the ADDRESS span.
- ``personal_place_spans``: which place names a text says about a person (used by Policy.stored_redactions).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from presidio_analyzer import EntityRecognizer, LocalRecognizer, Pattern, PatternRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import PhoneRecognizer, SpacyRecognizer

from engine.safety.name_words import NOT_NAMES, ORG_WORDS, PLACE_STOP, is_lower_case_writer, sentence_around

RECOGNIZERS_VERSION = "pii-recognizers-2"  # 2: issue 20 (linear regexes, public-data formats)

# --- shared pieces ---------------------------------------------------------------------------------------------

_UP = "A-ZÀ-ÖØ-ÞĀ-Ž"  # upper-case Latin letters (ASCII, Latin-1, Latin Extended-A upper/lower mixed is fine here)
_LO = "a-zß-öø-ÿ"
_LETTER = "A-Za-zÀ-ÖØ-öø-ÿĀ-ž"
# A capitalised word: "Baker", "O'Neil", "Groß-Gerau", "St." (the dot is allowed inside and at the end).
# Atomic, with at most three hyphenated parts: a run of capitalised words is read once, never re-split (linear time).
# Greek and Cyrillic too, for street and place names ("Λ. Αλκυονίδων 241", "ΛΕΥΚΩΣΙΑ").
_UP_X = f"{_UP}Α-ΩΆΈΉΊΌΎΏА-ЯЁ"
_LO_X = f"{_LO}α-ωάέήίόύώϊϋΐΰςа-яё"
_LETTER_X = f"{_LETTER}Α-Ωα-ωΆΈΉΊΌΎΏάέήίόύώϊϋΐΰςА-Яа-яЁё"
_CAP = rf"(?>[{_UP_X}][{_LETTER_X}]*(?:['’][{_LETTER_X}]+){{0,2}}(?:-[{_UP_X}{_LO_X}][{_LETTER_X}]*(?:['’][{_LETTER_X}]+)?){{0,3}})"
# A name word: capital then lower-case ("Jo", "O'Neil", "McDonald", "Jean-Luc").
_NAME_WORD = rf"(?:[{_UP}][{_LO}]*[{_UP}]?[{_LO}'’]+(?:-[{_UP}][{_LO}'’]+)?)"
_HOUSE = r"\d{1,5}[A-Za-z]?(?:[ \t]?[-/][ \t]?\d{1,5}[A-Za-z]?)?"

_EN_TYPES = (
    "Street|St|Road|Rd|Avenue|Ave|Av|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Terrace|Ter|Terr|Way|"
    "Close|Cl|Crescent|Cres|Square|Sq|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Trail|Trl|Parade|Pde|Grove|Gardens|Gdns|"
    "Mews|Row|Walk|Hill|Green|Rise|Vale|Wharf|Quay|Esplanade|Alley|Loop|Point|Pike|Plaza|Expressway|Expy|Freeway|"
    "Turnpike|Heights|Hts|Crossing|Cove|Ridge|Landing|Path|Commons|Chase|Broadway|Causeway|Marg|Nagar|Chowk|"
    "Salai|Ganj|Bazar|Colony|Layout|Cross|Park|Gate|Yard|Embankment|Promenade|Boardwalk|Run|Pass|Route|Rte|Str|"
    # Faker's English street suffixes
    "Bayou|Bend|Bluffs?|Branch|Bridge|Brooks?|Burgs?|Bypass|Canyon|Cape|Cliffs?|Corners?|Courts|Coves|Creek|Crest|"
    "Curve|Dale|Divide|Drives|Estates?|Extensions?|Falls|Ferry|Fields|Flats|Fords?|Forest|Forges?|Forks?|Fort|"
    "Gardens?|Gateway|Glens?|Greens|Groves|Harbou?rs?|Haven|Hills|Hollow|Inlet|Islands?|Isle|Junctions?|Knolls?|"
    "Lakes?|Lights|Locks|Lodge|Manors?|Meadows?|Mills?|Motorway|Mount|Mountains?|Neck|Orchard|Oval|Overpass|Parks|"
    "Parkways|Pines|Plains?|Points|Ports|Prairie|Radial|Ramp|Ranch|Rapids?|Ridges|River|Roads|Shoals?|Shores?|"
    "Skyway|Springs?|Spurs?|Squares|Stravenue|Stream|Streets|Summit|Throughway|Trafficway|Tunnel|Underpass|"
    "Valleys?|Viaduct|Views?|Villages?|Ville|Vista|Walks|Ways|Wells"
)
_EN_TYPE = rf"(?:{_EN_TYPES})\b\.?(?:[ \t]+No\.?[ \t]*\d{{1,3}}(?![\w]))?"
_DIRECTION = r"(?:N|S|E|W|NE|NW|SE|SW|North|South|East|West)\.?"
_ORDINAL = r"\d{1,3}(?:st|nd|rd|th)"
# Germanic compounds: Hauptstraße, Kerkstraat, Rainer-Ring-Gasse.
_GERMANIC_SUFFIX = (
    "straße|strasse|str\\.|weg|allee|platz|gasse|ring|damm|ufer|chaussee|pfad|steig|markt|graben|stieg|zeile|"
    "promenade|straat|laan|plein|gracht|kade|singel|steeg|dijk|dreef|hof|pad|baan|boulevard|wal|kanaal|plantsoen"
)
_GERMANIC_WORD = "Straße|Strasse|Str\\.|Weg|Allee|Platz|Gasse|Ring|Damm|Ufer|Markt|Chaussee|Straat|Laan|Plein|Gracht|Kade"
# Street types written before the name: Via Roma 12, Calle Mayor 5, Rua X, 123, 5 rue de la Paix.
_ROMANCE_TYPES = (
    "Via|Viale|V\\.le|Piazza|P\\.za|P\\.zza|Piazzale|Corso|C\\.so|Largo|Vicolo|Strada|Contrada|Borgo|Lungomare|"
    "Rotonda|Canale|Stretto|Incrocio|Salita|Traversa|Calle|C/|C\\.|Avenida|Avda\\.?|Av\\.|Paseo|Plaza|Pza\\.?|"
    "Camino|Carretera|Ctra\\.|Ronda|Travesía|Glorieta|Pasaje|Pasadizo|Callejón|Cuesta|Urbanización|Urb\\.|Vía|"
    "Rambla|Alameda|Acceso|Cañada|Partida|Plazuela|Ramal|Senda|Subida|Vial|Rua|R\\.|Travessa|Tv\\.|Praça|Estrada|"
    "Rodovia|Viela|Al\\."
)
_FRENCH_TYPES = (
    "rue|avenue|av\\.|boulevard|bd|blvd|place|allée|chemin|impasse|quai|route|cours|passage|square|voie|"
    "rond-point|faubourg|sentier|parvis|esplanade|promenade|Rue|Avenue|Boulevard|Place|Allée|Chemin|Impasse|Quai|Route"
)
_PARTICLE = r"(?:(?:de|del|della|delle|dei|degli|de\s+la|de\s+las|de\s+los|da|do|dos|das|di|du|des|la|las|los|le|les|e|y|von|van|der|den|het|am|an|aan)(?![\w'’])|d'|l')"
_STREET_NAME = rf"(?:{_CAP}|{_ORDINAL}|{_PARTICLE})"
_UNIT = (
    r"(?:(?:Apt|Apartment|Appt|Suite|Ste|Unit|Flat|Floor|Fl|Room|Rm|Apto|Appartamento|Wohnung|Whg|Bldg|Building|"
    r"Block|Blk|Piso|Puerta|Dept|Depto|Lot|Level|Lvl|Office)\.?\s*(?:No\.?\s*)?#?\s*[A-Za-z]?\d{1,5}[A-Za-z]?"
    r"|#\s?\d{1,5}[A-Za-z]?|\d{1,2}\s?[ºª°oa]\s?[A-Z]?(?![\w])|\d{1,2}(?:st|nd|rd|th)\s+[Ff]loor)"
)
_IN_PREFIX = r"(?:Flat|H\.\s?No\.?|House\s+No\.?|Plot\s+No\.?|Door\s+No\.?|Shop\s+No\.?|Flat\s+No\.?)\s*[\w/-]{1,8}"

_US_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK|"
    "OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR"
)
_CA_PROVINCES = "AB|BC|MB|NB|NL|NS|NT|NU|ON|PE|QC|SK|YT"
_AU_STATES = "NSW|VIC|QLD|WA|SA|TAS|ACT|NT|Vic|Qld|Tas"
_UK_POSTCODE = r"(?:GIR\s?0AA|[A-Z]{1,2}\d[A-Z\d]?\s?\d[ABD-HJLNP-UW-Z]{2})"
_CA_POSTCODE = r"(?:[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z]\s?\d[ABCEGHJ-NPRSTV-Z]\d)"
_US_ZIP = r"(?:\d{5}(?:-\d{4})?)"
_CITY_WORD = rf"(?>[{_UP_X}](?:[{_LETTER_X}]+(?:['’][{_LETTER_X}]+){{0,2}}|['’][{_LETTER_X}]+)(?:-[{_UP_X}{_LO_X}][{_LETTER_X}]*(?:['’][{_LETTER_X}]+)?){{0,3}}(?:(?<=[aeiou])['’](?![\w'’]))?)"  # two letters at least: "T 0812..." is no city; "Stra'", "Cantu'": an Italian final accent typed as an apostrophe
# At most six words: an unbounded lazy run here made every scan of capitalised text quadratic (issue 20).
_CITY = rf"(?:{_CITY_WORD}(?:[ -](?:{_CITY_WORD}|{_PARTICLE}|(?:upon|on|sur|sous|en|im|in|of|bei)(?![\w'’]))){{0,4}}?(?:[ -]{_CITY_WORD})?(?![\w'’]))"
_COUNTRIES = (
    "United States(?: of America)?|USA|U\\.S\\.A\\.|US|United Kingdom|UK|U\\.K\\.|Great Britain|England|Scotland|"
    "Wales|Northern Ireland|Ireland|Germany|Deutschland|France|India|Canada|Israel|Brazil|Brasil|Italy|Italia|Spain|"
    "España|Netherlands|The Netherlands|Nederland|Holland|Australia|Austria|Switzerland|Belgium|Portugal|Mexico|"
    "Sweden|Norway|Denmark|Finland|Iceland|Estonia|Latvia|Lithuania|Poland|Czech Republic|Czechia|Slovakia|Slovenia|"
    "Croatia|Hungary|Romania|Bulgaria|Greece|Cyprus|Turkey|Tunisia|Morocco|South Africa|New Zealand|Greenland|"
    "Greenlander|Japan|China|Russia|Ukraine|Luxembourg|Monaco|Malta|Argentina|Chile|Colombia|Peru|Singapore"
)
# A line break may carry a quote mark or a bullet ("> ", "• ", "}} ", "??? " where a bullet lost its encoding).
_NL = r"[ \t]*\n[ \t]*(?:[^\w\s,;]{1,3}[ \t]*)?"
_SEP = rf"(?:[ \t]*(?:{_NL})?[,;][ \t]*(?:{_NL})?|{_NL}(?:\n[ \t]*)?|[ \t]+[-–][ \t]+|[ \t]+)"

# Street lines, each anchored on a house number and a street type.
_STREET_LINES = [
    # 12 Baker Street / 1777 N Kramer Ct / 221B Baker St. / 12 5th Avenue
    rf"(?<![\w.,/-]){_HOUSE}(?:[ \t]*,)?[ \t]+(?:{_DIRECTION}[ \t]+)?(?:{_STREET_NAME}[ \t]+){{1,4}}?{_EN_TYPE}(?:[ \t]+{_DIRECTION}(?![\w]))?",
    # Herzl Street 12 / Rothschild Blvd 45
    rf"(?<![\w])(?:{_CAP}[ \t]+){{1,3}}(?:Street|St|Road|Rd|Avenue|Ave|Boulevard|Blvd)\b\.?,?[ \t]+{_HOUSE}(?![\w])",
    # Hauptstraße 12 / Kerkstraat 12a / Melissa-Mohaupt-Platz 7
    rf"(?<![\w])(?:{_CAP}[ \t]+)?[{_UP}][{_LETTER}-]{{0,40}}(?:{_GERMANIC_SUFFIX}|-(?:{_GERMANIC_WORD}))[ \t]+{_HOUSE}(?![\w])",
    # Berliner Straße 5 / Am Markt 3 / Unter den Linden 7 is left to the locality pass
    rf"(?<![\w])(?:{_CAP}[ \t]+){{1,2}}(?:{_GERMANIC_WORD})[ \t]+{_HOUSE}(?![\w])",
    # Via Roma 12 / Calle Mayor, 5 / Rua das Flores, 123 / Avenida Paulista, 1000
    rf"(?<![\w])(?:{_ROMANCE_TYPES})[ \t]+(?:{_STREET_NAME}[ \t]+){{0,5}}{_CAP},?[ \t]+(?:n[º°o]\.?[ \t]*)?{_HOUSE}(?![\w])",
    # 5, rue de la Paix / 12 bis avenue Samson
    rf"(?<![\w.,/-]){_HOUSE}(?:[ \t]*(?:bis|ter))?,?[ \t]+(?:{_FRENCH_TYPES})[ \t]+(?:{_STREET_NAME}[ \t]+){{0,4}}{_CAP}",
    # 24, Sector 15 / Block 7, Phase 2
    rf"(?<![\w.,/-]){_HOUSE},?[ \t]+(?:Sector|Block|Phase|Pocket|Ward)[ \t]+\d{{1,3}}[A-Z]?(?![\w])",
    # Flat 12, MG Road / H.No. 17, Sodhi Chowk (Indian addresses start with the unit)
    rf"(?<![\w]){_IN_PREFIX},[ \t]*{_CAP}(?:[ \t]+No\.?[ \t]*\d{{1,3}}(?![\w])|[ \t]+(?!No\.)(?:{_CAP}|\d{{1,3}}(?![\w]))){{0,4}}",
    # 12 baker street (lower-case chat): full street-type words only, followed by punctuation or a unit
    r"(?<![\w.,/-])\d{1,5}[a-z]?[ \t]+(?:[a-z]{3,}[ \t]+){1,3}(?:street|avenue|boulevard|road|lane|drive)(?=[ \t]*(?:[,.;:!?\n]|$|apt|suite|unit|flat))",
    # 36 rue de pologne (lower-case chat, French): up to the end of the clause
    r"(?<![\w.,/-])\d{1,5}(?:[ \t]*(?:bis|ter))?,?[ \t]+(?:rue|avenue|boulevard|chemin|impasse|allée|place|quai)[ \t]+"
    r"(?:[a-zà-ÿ'’-]{1,20}[ \t]+){0,3}[a-zà-ÿ'’-]{2,20}(?=[ \t]*(?:[,.;:!?\n]|$))",
]
_STREET_RE = re.compile("|".join(f"(?:{p})" for p in _STREET_LINES))

# What may follow a street line (after a comma, a newline or a space), consumed one piece at a time.
_LOCALITY_PARTS = [
    rf"{_UNIT}",
    rf"{_CITY},?\s+(?:{_US_STATES}|{_CA_PROVINCES}|nan)\.?,?\s+(?:{_US_ZIP}|{_CA_POSTCODE})(?![\w])",
    rf"{_CITY},?\s+(?:{_AU_STATES}),?\s+\d{{4}}(?![\w])",
    rf"{_CITY}(?:[ \t]*\({_CITY}\))?,[ \t]*[A-Z]{{2}}[ \t]+\d{{5}}(?![\w])",
    rf"{_CITY}[ \t]*\({_CITY}\)(?:[ \t]+\d{{4,6}})?(?![\w])",
    rf"(?:\d{{5}}-\d{{3}}|\d{{4}}\s?[A-Z]{{2}}|\d{{4,5}})\s+(?:{_PARTICLE}[ \t]+)?{_CITY}(?:\s*\([A-Z]{{2}}\))?(?:\s*[-–/]\s*[A-Z]{{2}}(?![\w]))?",
    rf"{_CITY},?\s*(?:[-–]\s*)?(?:{_UK_POSTCODE}|{_CA_POSTCODE}|\d{{7}}|\d{{6}}|\d{{3}}\s\d{{3}}|{_US_ZIP}|\d{{4}})(?![\w])",
    rf"(?:{_UK_POSTCODE}|{_CA_POSTCODE})(?![\w])",
    rf"(?:{_COUNTRIES})(?![\w])",
    # A bare city: only when a postcode or a country follows, or it ends the line or the sentence.
    rf"{_CITY}(?=\s*(?:[,\n]\s*(?:{_UK_POSTCODE}|{_CA_POSTCODE}|\d{{4,7}}(?![\w])|{_COUNTRIES}"
    rf"|{_CITY_WORD}(?:[ \t]{_CITY_WORD})?(?:[ \t]+\d{{4,6}})?[ \t]*(?:[.,;:)!?\n]|$))|[.;:)!?\n]|\s*$|[ \t]+nan(?![\w])"
    rf"|[ \t]+(?:{_COUNTRIES})(?![\w])))",
    # A region code or number alone on its line (", GU", ", 13"), a postcode alone, Faker's empty field "nan".
    r"(?:[A-Z]{1,3}|\d{1,3}|nan)(?=[ \t]*(?:\n|$))",
    r"\d{4,6}(?![\w]|[.,:/-]\d)",
    r"nan(?![\w])",
]
_COUNTRY_LINE_RE = re.compile(rf"(?:{_COUNTRIES})(?:[ \t]+\d{{4,6}})?")
_LOCALITY_RE = re.compile(rf"{_SEP}(?:{'|'.join(f'(?:{p})' for p in _LOCALITY_PARTS)})")
_UNIT_BEFORE_RE = re.compile(
    rf"(?:{_UNIT}|(?:Unit|Apt|Apartment|Suite|Flat|Shop|Lot)\.?)[ \t]*[,/]?[ \t]*\n?[ \t]*$")
# A locality found on its own, without a street line before it.
_STANDALONE_RE = re.compile(
    rf"(?<![\w])(?:{_CITY},?\s+(?:{_US_STATES}|{_CA_PROVINCES})\.?,?\s+(?:{_US_ZIP}|{_CA_POSTCODE})"
    rf"|(?:^|(?<=\n)|(?<=,[ \t]))(?:{_CITY}[ \t]*[-–][ \t]*\d{{3}}[ \t]?\d{{3}}|{_CITY}[ \t]+\d{{3}}[ \t]\d{{3}})"
    rf"|{_CITY},?\s+(?:{_AU_STATES}),?\s+\d{{4}}"
    rf"|{_UK_POSTCODE}|{_CA_POSTCODE})(?![\w])"
)


# "Bhavnagar 488443", "London NW1 6XE", "10115 Berlin" alone on a line: an address when a house-number line is above.
_LOCALITY_LINE_RE = re.compile(
    rf"(?:^|(?<=\n))[ \t]*(?P<loc>{_CITY},?[ \t]*(?:[-–][ \t]*)?(?:{_UK_POSTCODE}|{_CA_POSTCODE}|\d{{3}}[ \t]?\d{{3,4}}|\d{{4,5}})"
    rf"|(?:\d{{4,5}}|\d{{5}}-\d{{3}}|\d{{4}}[ \t]?[A-Z]{{2}})[ \t]+{_CITY})[ \t]*(?=\n|$)"
)
_HOUSE_LINE_ABOVE_RE = re.compile(
    rf"(?:^|\n)[ \t]*(?P<line>(?:{_UNIT}[ \t]*,?[ \t]*)?{_HOUSE},?[ \t]+(?:{_CAP}|{_PARTICLE})(?:[ \t]+(?:{_CAP}|{_PARTICLE}|\d{{1,3}})){{0,4}})[ \t]*,?[ \t]*\n[ \t]*$"
)


_UNIT_WORDS = r"(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Room|Bldg|Building|Office)"
_NUMBER_AFTER_RE = re.compile(r"[ \t]+\d{1,5}[A-Za-z]?(?![\w]|[.,:/-]\d)")
_LEADING_NUMBER_RE = re.compile(r"(?<![\w.,/:+-])\d{1,5}[ \t]+$")
# Military and box addresses, and "the corner of X 12 and Y Street" (the cross street has no number).
_MAIL_ADDRESS_RE = re.compile(
    r"(?<![\w])(?:"
    r"(?i:(?:PSC|Unit|CMR)[ \t]+\d{3,5},?[ \t]+Box[ \t]+\d{3,5}[ \t]*,?[ \t]*\n?[ \t]*[ADF]PO[ \t]+A[AEP][ \t]+\d{5})"
    rf"|(?:USNS|USNV|USS|USCGC|USNC)[ \t]+{_CAP}(?:[ \t]+{_CAP})?[ \t]*,?[ \t]*\n?[ \t]*FPO[ \t]+A[AEP][ \t]+\d{{5}}"
    rf"|(?:\d{{1,5}}[ \t]+)?(?i:P\.?[ \t]?O\.?[ \t]*Box|Post(?:al)?[ \t]+Office[ \t]+Box|Postbox|Postfach|Apartado)[ \t]+\d{{1,6}}"
    rf"(?:[ \t]+(?!{_UNIT_WORDS}\b){_CAP}){{0,2}}"
    r"|(?i:the[ \t]+corner[ \t]+of)[ \t]+(?=[^\n,;?!]{0,40}\d)[^\n,;?!]{1,50}?[ \t]+and[ \t]+[\w'’.-]+(?:[ \t]+(?!and\b)[\w'’-]+)?"
    r")(?![\w])"
)
# A street name and then its number, as most of Europe writes it: "Nybyvägen 65", "Rue de Virton 38", "Paseo del
# Atlántico 81", "Belgrád rkp. 18.", "ul. Cicha 86", "Avenue d'Ouchy 109"; a building number may come first.
# Taken only with more evidence (see StreetAddressRecognizer.analyze): "Windows 11" or "Room 12" alone is no address.
_EN_FUNCTION_WORD = (r"(?:to|in|on|at|of|for|and|or|the|is|are|was|were|be|by|with|from|into|than|then|an|as|it|"
                     r"its|this|that|these|those|has|have|had|will|can|my|your|our|their|his|her|we|you|they|"
                     r"per|after|before|until|till|since|about|over|under|every|each|all|only|just|now)(?![\w'’])")
_NAME_NUMBER_STREET_RE = re.compile(
    rf"(?<![\w.,/:+#-])(?:(?P<pre>\d{{1,5}})[ \t]+)?"
    # a capitalised first word; then capitalised words, particles, abbreviations or lower-case street words
    # ("Fogd Drejers gate 93", "Bécsi utca 35.", "Hegyalja út 98.")
    rf"(?P<name>(?:{_CAP}\.?|[a-zà-ž]{{1,4}}\.|(?:d'|l'|dell'){_CAP})"
    rf"(?:[ \t]+(?:{_CAP}\.?|{_PARTICLE}|[{_LO_X}]{{1,4}}\.|(?:d'|l'|dell'){_CAP}|(?!{_EN_FUNCTION_WORD})[{_LO_X}]{{2,12}}(?![\w'’]))){{0,3}})"
    r"[ \t]+(?P<num>\d{1,5}[A-Za-z]?(?:[ \t]?[-/][ \t]?\d{1,5})?)\.?(?![\w]|[.,]\d)"
)
_STRONG_PRE_NUMBER_RE = re.compile(r"\d{3,5}")
# The same in lower case ("2613 avenida praia 1 suite 463, mohács, hungary 24743"), taken only with a unit after it,
# or after an address cue in a text written without capitals; the lower-case place words that end it on its line.
_LOWER_STREET_RE = re.compile(
    r"(?<![\w.,/:+#-])(?:(?P<pre>\d{1,5})[ \t]+)?"
    r"(?P<name>(?:[a-zà-ž][a-zà-ž'’.-]{0,30}[ \t]+){0,3}[a-zà-ž][a-zà-ž'’.-]{0,30})[ \t]+\d{1,5}[a-z]?\.?(?![\w]|[.,]\d)"
)
_LOWER_ADDRESS_CUE_RE = re.compile(
    r"\b(?:li(?:ve|ves|ving)|located|resid(?:e|es|ing)|address(?:[ \t]+is)?|enter|meet(?:[ \t]+(?:me|you|us))?|"
    r"sen[dt](?:[ \t]+it)?|deliver(?:ed)?|ship(?:ped)?|moved|mail(?:ed)?)[ \t]*(?:at|on|to|in|:)?[ \t]*:?[ \t\n]*$"
)
_LOWER_UNIT_RE = re.compile(r"[ \t]*,?[ \t]*(?:apt|apartment|suite|ste|unit|flat)\.?[ \t]*#?\d{1,5}[a-z]?(?![\w])")
_LOWER_PLACE_TAIL_RE = re.compile(r"(?:[ \t]*,?[ \t]+[a-zà-ž][a-zà-ž'’-]{1,30}){1,5}(?:[ \t]*,?[ \t]*\d{4,6})?(?=[ \t]*(?:[.?!\n]|$))")
# The words before a street line that say it is one.
_ADDRESS_CUE_RE = re.compile(
    r"(?i:\b(?:lives?|living|lived|located|situated|resides?|residing|based|stay(?:ing)?|meet(?:[ \t]+(?:me|you|us))?|"
    r"address(?:[ \t]+is)?|addresses|sent|send(?:[ \t]+it)?|deliver(?:ed)?|ship(?:ped)?|return(?:ed)?|mail(?:ed)?|"
    r"post(?:ed)?|taxi|off|enter|moved|move|is|are|office(?:[ \t]+is)?|visit|find[ \t]+(?:me|us))"
    r"[ \t]*(?:at|on|to|in|is|:)?[ \t]*:?[ \t\n]*(?:the[ \t]+)?$)"
)
# What after a "Name 12" line makes it an address: a unit, or a city, region, postcode or country line below.
_STRONG_LOCALITY_RE = re.compile(
    rf"(?:[ \t]*,?[ \t]*\n?[ \t]*{_UNIT}(?![\w])"
    rf"|[ \t]*,[ \t]*{_CITY}[ \t]*(?:[.;:!?]|$)"
    rf"|[ \t]*,?[ \t]*\n[ \t]*(?:{_CITY}|\d{{4,5}}[ \t]+{_CITY})[ \t]*(?:,[ \t]*)?(?:\n|$|(?:{_US_STATES}|[A-Z]{{2}})?[ \t]*\d{{4,6}}))"
)
# First words of "Name 12" that are things, not streets.
_NOT_STREET_WORDS = frozenset(
    """room gate floor level version windows chapter page step line row item order ticket case invoice build release
    phase stage part model series plan tier option day week year team group platform terminal channel episode season
    volume vol table figure fig section appendix lot box batch unit apt suite office desk seat bus train flight route
    iphone pixel galaxy android ios macos ubuntu python java node vue react angular php rust go error code port
    account card number no nr pin sprint q1 q2 q3 q4 top best under over about only around after before since in on at
    to for of the a an and or is was are were be been my your our his her their this that these those we you i he she
    they it me us them have has had do did not no yes during spring string bring offering ordering engineering
    catering hiring wiring boring summer winter autumn fall since until from
    eur usd gbp inr aud cad brl ils chf jpy cny rs rub sek nok dkk pln czk huf nzd zar mxn sgd hkd krw try
    total price cost costs amount fee fees balance refund payment discount tax vat""".split()
)


class StreetAddressRecognizer(LocalRecognizer):
    """Street addresses (ADDRESS): one span from the unit and street line through city, postcode and country."""

    SCORE = 0.85
    STANDALONE_SCORE = 0.6

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_entities=["ADDRESS"], supported_language=supported_language,
                         name="StreetAddressRecognizer")

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        if "ADDRESS" not in entities:
            return []
        results: list[RecognizerResult] = []
        for m in _MAIL_ADDRESS_RE.finditer(text):  # PSC 2721, Box 8637 / APO AA 06259; P.O. Box 149; the corner of
            results.append(self._result(m.start(), _trim(text, m.start(), _extend_locality(text, m.end())),
                                        self.SCORE))
        covered_to = -1
        for m in _STREET_RE.finditer(text):
            start, end = m.start(), _drop_unit_word(text, m.start(), m.end())
            if start < covered_to or any(r.start < end and start < r.end for r in results):
                continue
            if _first_word(m.group()) in _NOT_STREET_WORDS:
                continue
            start = _unit_before(text, _leading_number(text, start))
            end = _lower_case_unit_and_place(text, _extend_locality(text, _number_after(text, end)))
            results.append(self._result(start, _trim(text, start, end), self.SCORE))
            covered_to = end
        for m in _every_start(_NAME_NUMBER_STREET_RE, text):  # Nybyvägen 65, Rue de Virton 38, ul. Cicha 86
            start, end = m.start(), m.end()
            if _first_word(m.group("name")) in _NOT_STREET_WORDS:
                continue
            overlapping = [r for r in results if r.start < end and start < r.end]
            if overlapping:
                # "R Luís Camões 81 Berg Junctions": a street line whose number starts an address found already.
                first = min(overlapping, key=lambda r: r.start)
                if (start < first.start and first.start >= m.start("num") and end <= first.end
                        and (m.group("pre") or len(m.group("name").split()) >= 2)):
                    first.start = start
                continue
            extended = _extend_locality(text, end)
            if not (_STRONG_PRE_NUMBER_RE.fullmatch(m.group("pre") or "")
                    or _ADDRESS_CUE_RE.search(text, max(0, start - 40), start)
                    or _STRONG_LOCALITY_RE.match(text, end)):
                continue
            start = _unit_before(text, start)
            results.append(self._result(start, _trim(text, start, extended), self.SCORE))
        for m in _every_start(_LOWER_STREET_RE, text):
            start, end = m.start(), m.end()
            if any(r.start < end and start < r.end for r in results) or _first_word(m.group("name")) in _NOT_STREET_WORDS:
                continue
            unit = _LOWER_UNIT_RE.match(text, end)
            if unit is None and not (is_lower_case_writer(text)
                                     and _LOWER_ADDRESS_CUE_RE.search(text, max(0, start - 40), start)):
                continue
            results.append(self._result(start, _lower_case_unit_and_place(text, end), self.SCORE))
        for m in _LOCALITY_LINE_RE.finditer(text):
            line_start = m.start("loc")
            above = _HOUSE_LINE_ABOVE_RE.search(text, max(0, line_start - 80), line_start)
            if above is None or any(r.start <= line_start < r.end for r in results):
                continue
            if not _plausible_locality(m.group("loc")) or not _plausible_locality(above.group("line")):
                continue
            results.append(self._result(above.start("line"), _trim(text, above.start("line"), m.end("loc")), self.SCORE))
        for m in _STANDALONE_RE.finditer(text):
            if any(r.start <= m.start() < r.end for r in results) or not _plausible_locality(m.group()):
                continue
            start, score = m.start(), self.STANDALONE_SCORE
            # A line with a house number right above ("61, Civil Lines") is its street line.
            above = _HOUSE_LINE_ABOVE_RE.search(text, max(0, start - 80), start)
            if above is not None:
                start, score = above.start("line"), self.SCORE
            end = _extend_locality(text, m.end())
            results.append(self._result(start, _trim(text, start, end), score))
        return results

    def _result(self, start: int, end: int, score: float) -> RecognizerResult:
        return RecognizerResult("ADDRESS", start, end, score,
                                recognition_metadata=_metadata(self))


def _unit_before(text: str, start: int) -> int:
    """A unit written before the street line ("Apt. 165 0556 Rákóczi út 41.", "Flat 3, 22 High Street")."""
    unit = _UNIT_BEFORE_RE.search(text, max(0, start - 30), start)
    if unit and (unit.start() == 0 or not text[unit.start() - 1].isalnum()):
        return unit.start()
    return start


def _number_after(text: str, end: int) -> int:
    """A house number after a street line that began with a building number ("047 Rue du Bourgmestre Dandoy 171"),
    taken when a unit or a locality line follows it."""
    m = _NUMBER_AFTER_RE.match(text, end)
    if m and (_STRONG_LOCALITY_RE.match(text, m.end()) or _LOWER_UNIT_RE.match(text, m.end())):
        return m.end()
    return end


def _leading_number(text: str, start: int) -> int:
    """Faker's and many countries' addresses put a building number before the street line ("363 52 Huntly St")."""
    m = _LEADING_NUMBER_RE.search(text, max(0, start - 8), start)
    return m.start() if m else start


def _every_start(regex: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
    """Matches at every start, overlapping: a candidate turned down ("enter on hegyalja út 98") leaves the shorter
    one inside it ("hegyalja út 98") to be judged. Each regex here reads a bounded number of words per start."""
    pos = 0
    while (m := regex.search(text, pos)) is not None:
        yield m
        pos = m.start() + 1


def _lower_case_unit_and_place(text: str, end: int) -> int:
    """After a street line, a lower-case unit and the place words that end its line ("suite 112 calgary alberta")."""
    unit = _LOWER_UNIT_RE.match(text, end)
    if unit is None:
        return end
    tail = _LOWER_PLACE_TAIL_RE.match(text, unit.end())
    return tail.end() if tail else unit.end()


def _drop_unit_word(text: str, start: int, end: int) -> int:
    """A street line read as far as "Rue Gafsa Apt" gives its unit word back to the unit ("Apt. 981")."""
    m = re.search(rf"[ \t]+{_UNIT_WORDS}\.?$", text[start:end])
    return start + m.start() if m else end


def _first_word(name: str) -> str:
    return name.split()[0].lower().strip(".,") if name.split() else ""


def _plausible_locality(value: str) -> bool:
    """No ticket words ("Ticket CASE-154730", "Service Request ...") in a place name found on its own."""
    for word in re.findall(r"[^\W\d_]+", value):
        if word.isupper():
            if len(word) >= 4:
                return False
        elif word.lower() in NOT_NAMES or word.lower() in ORG_WORDS:
            return False
    return True


def _metadata(recognizer: EntityRecognizer) -> dict[str, str]:
    """Which recognizer found a result (Presidio keeps this with each result)."""
    return {RecognizerResult.RECOGNIZER_NAME_KEY: type(recognizer).__name__,
            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: str(getattr(recognizer, "id", ""))}


def _extend_locality(text: str, end: int) -> int:
    """Consume units, city/state/postcode and country pieces that follow an address piece (up to 6 pieces)."""
    for _ in range(8):
        m = _LOCALITY_RE.match(text, end)
        if m is None or m.group().strip(" \t\n,;-–").lower() in NOT_NAMES:
            break
        if "\n\n" in text[end:m.end()] and not _COUNTRY_LINE_RE.fullmatch(m.group().strip(" \t\n,;")):
            break
        end = m.end()
    return end


def _trim(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1] in " \t\n,;-":
        end -= 1
    return end


# --- cards -----------------------------------------------------------------------------------------------------


class CardNumberRecognizer(PatternRecognizer):
    """Payment card numbers in every common grouping, Luhn-checked, with a known issuer prefix (2-6)."""

    PATTERNS = [
        Pattern("card 4-4-4-4(-1..3)", r"(?<![\w.-])(?<![A-Z]{2}\d{2} )\d{4}([ .-]?)\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?(?![\w]|[.-]\d)", 0.5),
        Pattern("card 4-6-5 / 4-6-4", r"(?<![\w.-])3\d{3}([ -]?)\d{6}\1\d{4,5}(?![\w]|[.-]\d)", 0.5),
        Pattern("card 13-19 digits", r"(?<![\w.-])[2-6]\d{12,18}(?![\w]|[.-]\d)", 0.4),
    ]
    CONTEXT = ["card", "credit", "debit", "visa", "mastercard", "amex", "maestro", "discover", "cc", "payment"]

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_entity="CREDIT_CARD", patterns=self.PATTERNS, context=self.CONTEXT,
                         supported_language=supported_language, name="CardNumberRecognizer")

    def validate_result(self, pattern_text: str) -> bool | None:
        digits = re.sub(r"\D", "", pattern_text)
        if not 13 <= len(digits) <= 19 or digits[0] not in "23456":
            return False
        return luhn_ok(digits)

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:
        results: list[RecognizerResult] = super().analyze(text, entities, nlp_artifacts, regex_flags)
        if "CREDIT_CARD" not in entities:
            return results
        # Right after a card word, any 12-19 Luhn-valid digits are a card: Maestro has 12 digits, JCB's older
        # numbers start with 1800 or 2131, some Maestro ranges with 0 ("What is the limit for card 584528792610?").
        for m in _CARD_AFTER_WORD_RE.finditer(text):
            start, end = m.start("n"), m.end("n")
            digits = re.sub(r"\D", "", m.group("n"))
            if 12 <= len(digits) <= 19 and luhn_ok(digits) and not any(
                    r.start < end and start < r.end for r in results):
                explanation = self.build_regex_explanation("CardNumberRecognizer", "card after a card word",
                                                           _CARD_AFTER_WORD_RE.pattern, 0.6, True, 0)
                results.append(RecognizerResult("CREDIT_CARD", start, end, 0.6, analysis_explanation=explanation,
                                                recognition_metadata=_metadata(self)))
        return results


# A card word, a few words at most ("card number is", "credit card #"), then the number.
_CARD_AFTER_WORD_RE = re.compile(
    r"(?i:\b(?:card|cards|credit|debit|visa|mastercard|master\s+card|amex|maestro|jcb|diners|discover|cc)\b)"
    r"(?:[ \t]*(?:[#:=?]|no\.?|num(?:ber)?|is|was|ending|of|with)){0,3}[ \t]*"
    r"(?P<n>(?<![\w.-])\d{4}(?:[ -]?\d){8,15})(?![\w]|[.,-]\d)"
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# --- phone numbers ---------------------------------------------------------------------------------------------

# Where a phone number could be: a run of digits with separators, an optional + or ( before it, an extension after.
_PHONE_CLUSTER = re.compile(
    r"[+(]?\d[\d \t().\-/]{4,}\d(?:[ \t]*(?:ext\.?|x|extension|#)[ \t]*\d{1,6})?", re.IGNORECASE
)


class WindowedPhoneRecognizer(PhoneRecognizer):
    """Presidio's PhoneRecognizer (python-phonenumbers, one pass per region), run only around digit runs.

    The stock recognizer walks the whole text once per region (12 here); most of a chat has no digits. The
    matcher sees each digit run with 8 characters on either side, so its own boundary checks behave as on the
    whole text, and spans are shifted back.
    """

    MARGIN = 8
    # python-phonenumbers costs ~0.2 ms per character of digit run (12 regions): 20,000 characters of "12 34 5"
    # took 9 s. Past this many characters of windows in one text, PhoneShapeRecognizer alone reads the rest.
    BUDGET_CHARS = 1200

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        windows: list[tuple[int, int]] = []
        used = 0
        for m in _PHONE_CLUSTER.finditer(text):
            if sum(ch.isdigit() for ch in m.group()) < 6:
                continue
            used += m.end() - m.start() + 2 * self.MARGIN
            if used > self.BUDGET_CHARS:
                break
            start, end = max(0, m.start() - self.MARGIN), min(len(text), m.end() + self.MARGIN)
            if windows and start <= windows[-1][1]:
                windows[-1] = (windows[-1][0], end)
            else:
                windows.append((start, end))
        results: list[RecognizerResult] = []
        for start, end in windows:
            # The stock analyze passes nlp_artifacts on unused (context words are the engine's business).
            for r in super().analyze(text[start:end], entities, None):  # type: ignore[arg-type]
                r.start += start
                r.end += start
                results.append(r)
        return EntityRecognizer.remove_duplicates(results)


# Phone numbers by their shape, for what python-phonenumbers does not validate for the configured regions: short
# local numbers ("72 128 827", "(99) 645-791", "60-56-85-91"), and NANP numbers with an extension or a 001 prefix.
_PHONE_CUE = re.compile(
    r"(?i:\b(?:phone|tel|telephone|mobile|mob|cell|cellphone|fax|desk|direct|office|home|work|landline|call|calls|"
    r"calling|called|ring|dial|reach|text|texts|sms|whatsapp|signal|answering|contact|registered|hotline|"
    r"messages?|messaging|voicemail|"
    r"(?:phone|mobile|cell|contact|telephone|fax)\s+(?:number|no\.?|#)|[tmfp])\b)"
    r"(?:[ \t]*(?:[:.=#-]|me|us|him|her|them|at|on|to|in|is|was|my|our|his|her|the|number|no\.?|mobile|phone)){0,4}[ \t\n]*$"
)
# "9380 6377 office", "738 3565-Office", "(571)177-7741 fax": the kind of number written after it.
_PHONE_CUE_AFTER = re.compile(r"[ \t]*[-(]?[ \t]*(?i:office|fax|mobile|mob|home|work|cell|tel|phone|desk|direct|landline)\b")
_PHONE_SHAPES = re.compile(
    r"(?<![\w.,/:+#-])(?:"
    # +41 (0)85 806 98 67 / +1-903-140-4508x769 / +44 20 7946 0958: a country code is shape enough
    r"(?P<intl>\+\d{1,3}(?:[ .-]?\(0\))?(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5})){2,5})"
    # (602)272-9781 / 001-253-366-9781 / 259.735.7502x459 / 463-612-6138x036 (NANP)
    r"|(?P<nanp>(?:(?:001|1)[ .-])?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4})"
    # 72 128 827 / (72) 754-186 / 0341 8387176 / 60-56-85-91: only after a phone word
    r"|(?P<local>(?:\(\d{1,5}\)[ .-]?|\d{2,5}[ .-])\d{2,8}(?:[ .-]\d{2,8}){0,3})"
    r")(?P<ext>[ \t]*(?:x|ext\.?|extension|#)[ \t]*\d{1,6})?(?![\w]|[.,/:-]\d)"
)


class PhoneShapeRecognizer(LocalRecognizer):
    """Phone numbers by their shape: a country code, a NANP layout, or digit groups right after a phone word."""

    SCORE = 0.6

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_entities=["PHONE_NUMBER"], supported_language=supported_language,
                         name="PhoneShapeRecognizer")

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        if "PHONE_NUMBER" not in entities:
            return []
        out = []
        for m in _PHONE_SHAPES.finditer(text):
            digits = sum(ch.isdigit() for ch in (m.group("intl") or m.group("nanp") or m.group("local")))
            if m.group("local") is not None:
                if not 6 <= digits <= 13 or (_PHONE_CUE.search(text, max(0, m.start() - 40), m.start()) is None
                                             and _PHONE_CUE_AFTER.match(text, m.end()) is None):
                    continue
            elif not 8 <= digits <= 15:
                continue
            out.append(RecognizerResult("PHONE_NUMBER", m.start(), m.end(), self.SCORE,
                                        recognition_metadata=_metadata(self)))
        return out


# --- IBANs -----------------------------------------------------------------------------------------------------

# IBAN length by country (ISO 13616 registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "BY": 28,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19,
    "SK": 24, "SM": 27, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
_IBAN_START = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2})(\d{2})")


class IbanGroupsRecognizer(LocalRecognizer):
    """IBANs written compact or in groups, read to exactly their country's length and checked (mod 97).

    Presidio's IbanRecognizer takes a following word into a grouped IBAN ("ES59 2165 ... 1497 please" becomes
    "...1497 p", which fails the checksum) and then reports nothing.
    """

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_entities=["IBAN_CODE"], supported_language=supported_language,
                         name="IbanGroupsRecognizer")

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        if "IBAN_CODE" not in entities:
            return []
        out = []
        for m in _IBAN_START.finditer(text):
            length = IBAN_LENGTHS.get(m.group(1))
            if length is None:
                continue
            chars = [m.group(1), m.group(2)]
            count, i = 4, m.end()
            while count < length and i < len(text):
                ch = text[i]
                if ch.isascii() and ch.isalnum():
                    chars.append(ch.upper())
                    count += 1
                    i += 1
                elif ch in " -" and i + 1 < len(text) and text[i + 1].isascii() and text[i + 1].isalnum():
                    i += 1
                else:
                    break
            if count != length or (i < len(text) and text[i].isascii() and text[i].isalnum()):
                continue
            if iban_ok("".join(chars)):
                out.append(RecognizerResult("IBAN_CODE", m.start(), i, 1.0,
                                            recognition_metadata=_metadata(self)))
        return out


def iban_ok(iban: str) -> bool:
    """ISO 7064 mod 97-10 check of a compact IBAN."""
    rearranged = iban[4:] + iban[:4]
    try:
        return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1
    except ValueError:
        return False


# --- names -----------------------------------------------------------------------------------------------------

_NAME_PARTICLES = r"(?:van|von|de|da|del|della|der|den|di|du|dos|das|le|la|ben|bin|al|el|ter|ten|zu)(?:[ \t]+(?:den|der|de|la|le|del|da|het|ten|zu))?"
_NAME_SEQ = rf"{_NAME_WORD}(?:[ \t]+(?:[{_UP}]\.|{_NAME_WORD}|{_NAME_PARTICLES}(?=[ \t]+[{_UP}]))){{0,4}}"
_TITLED_NAME = rf"(?:{_NAME_PARTICLES}[ \t]+)?{_NAME_SEQ}"
_LOWER_NAME_SEQ = rf"[{_LO}][{_LO}'-]+(?:[ \t]+[{_LO}][{_LO}'-]+){{0,3}}"
_LOWER_NAME_LAZY = rf"[{_LO}][{_LO}'-]+(?:[ \t]+[{_LO}][{_LO}'-]+){{0,2}}?"

_TITLE = (r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Professor|Sir|Dame|Mme|Mlle|Herr|Frau|Sr|Sra|Srta|Dott|Dott\.ssa|Rev|"
          r"Capt|Lt|Col|Hon)")
_GREETING = r"(?:Dear|Hi|Hello|Hey|Hiya|Morning|Good\s+(?:morning|afternoon|evening)|Thanks|Thank\s+you|Cheers|Bye|Welcome|Attn|Attention)"
_CLOSING = (r"(?:(?:Kind|Best|Warm|Warmest|Many|With\s+kind|With\s+best)\s+(?:regards|wishes|thanks)|Regards|Best|"
            r"Thanks(?:\s+again|\s+so\s+much|\s+a\s+lot)?|Thank\s+you(?:\s+so\s+much)?|Cheers|Sincerely|"
            r"Yours(?:\s+(?:sincerely|faithfully|truly))?|Respectfully|Take\s+care|Love|Rgds|Br|KR|--)")
_RELATION = (r"(?:my|our|your|his|her)\s+(?:husband|wife|partner|son|daughter|colleague|co-worker|coworker|manager|"
             r"boss|friend|mother|father|mum|mom|dad|brother|sister|neighbour|neighbor|assistant|landlord|tenant|"
             r"client|customer|lawyer|doctor|accountant|kid|kids|child|children|baby|grandson|granddaughter|"
             r"grandmother|grandfather|grandma|grandpa|granny|aunt|uncle|nephew|niece|cousin|fianc[ée]e?|girlfriend|"
             r"boyfriend|spouse|roommate|flatmate|housemate|teammate|classmate|stepson|stepdaughter|stepmother|"
             r"stepfather|godson|goddaughter|nanny|carer|caregiver|tutor|teacher|student|patient)|"
             r"account\s+holder|card\s*holder|the\s+customer|customer|"
             r"the\s+client|colleague|contact\s+person|on\s+behalf\s+of|signed\s+by|assigned\s+to|"
             r"spoke\s+(?:to|with)|talked\s+to|speak\s+to|ask\s+for|contact|cc|courtesy\s+of|addressed\s+to|"
             r"(?:my|the)\s+name\s+is|name's")
_FIELD = (r"(?:(?:full|first|last|middle|given|family|customer|client|contact|account\s+holder|card\s*holder|"
          r"patient|employee|user|applicant|recipient|sender|holder|your|my)[ _]?name|name|surname|forename|"
          r"applicant|customer|client|contact(?:\s+person)?|recipient|sender|account\s+holder|card\s*holder|"
          r"signed|from|attn|attention|c/o|requester|requested\s+by|submitted\s+by|reported\s+by|owner)")

_PERSON_CONTEXT_RE = re.compile(
    "|".join([
        # Mr Smith / Dr. Jane Doe
        rf"(?<![\w.]){_TITLE}\.?[ \t]+(?P<t>{_TITLED_NAME})",
        # Dear Brenda, / Hi Jane Doe! / Thanks Marc
        rf"(?:^|(?<=[\n.!?])|(?<=[.!?][ \t]))[ \t]*{_GREETING}[ \t,]+(?P<g>{_NAME_SEQ})(?=[ \t]*(?:[,!:.\n]|$))",
        # my name is Jane Doe / I'm Jane / this is Marc
        rf"(?i:\b(?:i'?m|i\s+am|this\s+is|it'?s|here\s+is))[ \t]+(?P<i>{_NAME_SEQ})(?=[ \t]*(?:[,.!:;\n]|$|\s+(?:and|from|here|speaking|again|with|at|of)\b))",
        rf"(?i:\b(?:my\s+name\s+is|my\s+name's|name\s+is|call\s+me|i\s+am\s+called))[ \t]+(?P<n>(?-i:{_NAME_SEQ})|{_LOWER_NAME_LAZY})(?=[ \t]*(?:[,.!:;\n]|$|\s+(?:and|but|from|here|speaking|again|i|my|the|with|at)\b))",
        # jagat bahri speaking / its soraya leon here (chat, any case)
        rf"(?i:(?:^|(?<=[\n,.!?])|\b(?:hi|hello|hey|yo)\b,?|\b(?:it'?s|its|this\s+is)\b))[ \t]*(?P<s>{_NAME_SEQ}|{_LOWER_NAME_SEQ})[ \t]+(?i:here|speaking)\b",
        # Kind regards,\nJane Doe / Thank you, Jane
        rf"(?:^|(?<=\n)|(?<=[.!?][ \t]))[ \t]*{_CLOSING}[ \t]*[,.!]?[ \t]*(?:\n[ \t]*){{1,2}}(?P<c>{_NAME_SEQ})(?=[ \t]*(?:$|\n|[|·,–—-]))",
        rf"(?:^|(?<=\n)|(?<=[.!?][ \t]))[ \t]*{_CLOSING}[ \t]*,[ \t]+(?P<d>{_NAME_SEQ})(?=[ \t]*(?:$|\n|[.!]))",
        # A signature: a line of two to four name words after a blank line, alone or before "| Sales", "· Ops".
        rf"(?:\A|(?<=\n\n)|(?<=\n--\n)|(?<=\n-- \n))[ \t]*(?P<b>{_NAME_WORD}(?:[ \t]+(?:[{_UP}]\.|{_NAME_WORD})){{1,3}})(?=[ \t]*(?:$|\n|[|·–—]|,[ \t]*\n))",
        # my colleague Jane Doe / account holder Jane Doe / the customer Jane Doe
        rf"(?i:\b(?:{_RELATION}))[ \t]*:?[ \t]+(?P<r>{_NAME_SEQ})",
        # Name: Jane Doe / customer=Jane Doe / | name | Jane Doe |
        rf"(?i:(?:^|(?<=[\n;|,{{(])|\b)[ \t]*{_FIELD}(?:[ \t]+[a-z]+){{0,2}})[ \t]*(?:[:=]|\||\.{{3,}})[ \t]*(?P<f>{_NAME_SEQ}|{_LOWER_NAME_SEQ})(?=[ \t]*(?:$|[\n;|,)}}]))",
        # "said Erle to Maurice" / asked Jane / according to Marc
        rf"(?i:\b(?:said|says|asked|asks|told|tells|replied|replies|answered|shouted|yelled|whispered|thanked|texted|"
        rf"emailed|messaged|according\s+to)(?:[ \t]+(?:at|to))?)[ \t]+(?P<v>{_NAME_SEQ})",
        # What's your last name? Nielsen / What's the name on the account? User: Mohsin Wilmsen
        rf"(?i:\bname\b[^\n?]{{0,40}}\?)[ \t]*(?:[A-Za-z]+:[ \t]*)?(?P<q>{_NAME_SEQ})(?=[ \t]*(?:$|[\n.!,]))",
        # producer Jane Doe / starring Weekers / directed by Jane Doe / ex-Zombie Kastner / a tribute to Jane Doe
        rf"(?i:\b(?:producer|songwriter|singer|player|commenter|director|actor|actress|author|writer|novelist|poet|"
        rf"artist|drummer|guitarist|bassist|rapper|comedian|journalist|reporter|senator|coach|starring|featuring|"
        rf"(?:directed|written|sung|performed|produced)\s+by|(?:named|called)\s+(?:him|her|me)|tribute\s+to|"
        rf"ex-[a-z]+))[ \t]*:?[ \t]+(?P<j>{_NAME_SEQ})",
        # mr. andresen / ms. woźniak (lower case)
        rf"(?<![\w.])(?:mr|mrs|ms|dr|prof)\.?[ \t]+(?P<l>[{_LO}][{_LO}'’-]+)(?![\w])",
        # Jane Doe from accounting / Marc from your team
        rf"(?P<x>{_NAME_SEQ})[ \t]+from[ \t]+(?:the[ \t]+|your[ \t]+|our[ \t]+)?(?:[a-z]+[ \t]+)?(?:team|department|dept|accounting|support|sales|billing|finance|HR|IT|legal|marketing|engineering|office|customer\s+service)\b",
    ]),
    re.MULTILINE,
)


class ContextPersonRecognizer(LocalRecognizer):
    """PERSON where the words around a capitalised word say it is a name (titles, greetings, signatures...)."""

    SCORE = 0.8

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_entities=["PERSON"], supported_language=supported_language,
                         name="ContextPersonRecognizer")

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        if "PERSON" not in entities:
            return []
        results = []
        for m in _PERSON_CONTEXT_RE.finditer(text):
            group = m.lastgroup
            if group is None:
                continue
            if group == "t":  # after a title everything is the name ("Mr Holder", "Dr. de Reede")
                start, end = m.start(group), m.end(group)
            else:
                start, end = _strip_not_names(text, m.start(group), m.end(group))
            if end <= start or _has_org_word(text[start:end]) or _common_lower_case_words(text[start:end]):
                continue
            # "... here" is a weak cue: "we moved here", "raising families here".
            if group == "s" and text[start:end].islower() and _english_lower_case(text, start, end, nlp_artifacts):
                continue
            results.append(RecognizerResult(
                "PERSON", start, end, self.SCORE,
                recognition_metadata=_metadata(self)))
        return results


_TITLE_WORDS = frozenset("mr mrs ms miss mx dr prof professor sir dame mme mlle herr frau sr sra srta dott rev".split())
# Words that end a name candidate without being part of it ("Marc here", "Jane speaking").
_NOT_NAME_TAIL = frozenset("here speaking again".split())


def _has_org_word(candidate: str) -> bool:
    return any(w.lower().strip(".,()") in ORG_WORDS for w in candidate.split())


def _english_lower_case(text: str, start: int, end: int, nlp_artifacts: NlpArtifacts | None) -> bool:
    """A lower-case candidate with an English word in it ("we moved here", "raising families here") is no name."""
    from engine.safety.names import english_words_of

    english = english_words_of(nlp_artifacts)
    doc = nlp_artifacts.tokens if nlp_artifacts is not None else None
    span = doc.char_span(start, end, alignment_mode="expand") if doc is not None else None
    if span is None:
        return any(w in english for w in text[start:end].split())
    return any(t.text in english or t.lemma_.lower() in english or t.is_stop for t in span if t.is_alpha)


def _common_lower_case_words(candidate: str) -> bool:
    """A lower-case candidate holding an everyday word ("parcel is here") is no name."""
    return candidate.islower() and any(w in PLACE_STOP or w in NOT_NAMES for w in candidate.split())


def _strip_not_names(text: str, start: int, end: int) -> tuple[int, int]:
    """Drop non-name words at the start of a name candidate ("Dear", "Mr", "Support") and team words at its end.

    Other common words ("Price", "Ward", "Best") are surnames too: they are kept unless they are the whole name.
    """
    words = [(m.start() + start, m.end() + start) for m in re.finditer(r"\S+", text[start:end])]
    while words and text[words[0][0]:words[0][1]].lower().strip(".,") in NOT_NAMES:
        word = text[words[0][0]:words[0][1]].lower().strip(".,")
        words.pop(0)
        if word in _TITLE_WORDS:  # after a title everything is the name ("Mr Holder")
            break
    while words and text[words[-1][0]:words[-1][1]].lower().strip(".,") in _NOT_NAME_TAIL:
        words.pop()
    if not words:
        return start, start
    return words[0][0], words[-1][1]


# --- places ----------------------------------------------------------------------------------------------------

# A place said about a person: where they live, come from, moved to, stay, work or travel. The cue must end right
# before the place name (an optional "the" between).
_PERSONAL_PLACE_CUE = re.compile(
    r"""(?ix)
    (?:
        \b(?:live[sd]?|living|reside[sd]?|residing|resident\s+of|based|grew\s+up|born|raised|settled)
            (?:\s+(?:in|at|near|out\s+of|outside|from))?
      | \b(?:moved|moving|move|relocat(?:ed|ing|e)|emigrat(?:ed|ing)|immigrat(?:ed|ing)|came|coming|come)\s+(?:to|from|here\s+from)
      | \b(?:i'?m|i\s+am|we'?re|we\s+are|originally|he'?s|she'?s|they'?re)\s+(?:\w+\s+)?(?:from|in|at)
      | \b(?:staying|stay|stayed|working|work|works|worked|studying|study)\s+(?:in|at|from|near)
      | \b(?:travel(?:l)?(?:ing|ed)?|flying|fly|flew|trip|flight|holiday|vacation|visiting)\s+(?:to|in|from)?
      | \b(?:my|our|his|her|their)\s+(?:home|hometown|city|town|village|country|place|house|flat|apartment)
            (?:\s+(?:is|was))?(?:\s+(?:in|at|near))?
      | \b(?:address|city|town|country|hometown|residence|location|postcode|zip|suburb|state)\s*(?:is|:|=)
    )
    \s*(?:the\s+)?$""",
)
_PLACE_CHAIN = re.compile(r"^\s*(?:,|/|-|and|or|near|outside)?\s*(?:the\s+)?$", re.IGNORECASE)
_PLACE_NAME = rf"{_CAP}(?:[ -](?:{_CAP}|(?:de|da|do|dos|das|di|del|la|le|am|an|aan|upon|on|sur)(?![\w'’]))){{0,3}}"
_LOWER_PERSONAL_PLACE_RE = re.compile(
    r"\b(?:live[sd]?|living|reside[sd]?|based|born|moved|moving|relocat(?:ed|ing)|(?:i'?m|i\s+am|we'?re)\s+from|"
    r"originally\s+from|staying)\s+(?:in|to|from|at)?\s*(?P<p>[a-zß-öø-ÿ][a-zß-öø-ÿ'-]+(?:\s+[a-zß-öø-ÿ][a-zß-öø-ÿ'-]+){0,3})"
)
_PERSONAL_PLACE_RE = re.compile(
    r"""(?x)
    (?i:
        \b(?:live[sd]?|living|reside[sd]?|residing|based|grew\s+up|born|raised)\s+(?:in|near|out\s+of)
      | \b(?:moved|moving|relocat(?:ed|ing)|emigrated)\s+(?:to|from)
      | \b(?:i'?m|i\s+am|we'?re|we\s+are)\s+(?:originally\s+)?from
      | \boriginally\s+from
      | \b(?:i'?m|i\s+am|we'?re|we\s+are)\s+(?:staying|based|living)\s+in
      | \b(?:my|our)\s+(?:home|hometown)\s+is\s+in
    )
    \s+(?:the\s+)?"""
    rf"(?P<p>{_PLACE_NAME}(?:,[ \t]+(?:the[ \t]+)?{_PLACE_NAME})?)"
)


class PersonalPlaceRecognizer(LocalRecognizer):
    """LOCATION after "I live in", "moved to", "I'm from": spaCy misses made-up and rarer town names."""

    SCORE = 0.7

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_entities=["LOCATION"], supported_language=supported_language,
                         name="PersonalPlaceRecognizer")

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        if "LOCATION" not in entities:
            return []
        spans = []
        for m in _PERSONAL_PLACE_RE.finditer(text):
            start, end = m.start("p"), m.end("p")
            if text[start:end].isupper() or text[start:end].lower() not in NOT_NAMES:  # "US", not "us"
                spans.append((start, end))
        if not text.isupper():
            # Someone who types without capitals: take the words after the cue up to a common word.
            for m in _LOWER_PERSONAL_PLACE_RE.finditer(text):
                if not is_lower_case_writer(sentence_around(text, m.start(), m.end())):
                    continue
                words = []
                for w in re.finditer(r"\S+", m.group("p")):
                    if w.group().strip(",.;:!?") in PLACE_STOP or w.group().strip(",.;:!?") in NOT_NAMES:
                        break
                    words.append((m.start("p") + w.start(), m.start("p") + w.start() + len(w.group().rstrip(",.;:!?"))))
                    if w.group()[-1] in ",.;:!?":
                        break
                if words:
                    spans.append((words[0][0], words[-1][1]))
        return [RecognizerResult("LOCATION", start, end, self.SCORE,
                                 recognition_metadata=_metadata(self))
                for start, end in spans]


def personal_place_spans(text: str, spans: Sequence[tuple[int, int]]) -> list[bool]:
    """For each place-name span of ``text`` (in text order or not), whether the text says it about a person.

    A place is personal when a cue ("I live in", "moved to", "I'm from", "my address is", "City:") ends right
    before it, or when it follows a personal place with only a comma or "and" between ("Leeds, England").
    """
    order = sorted(range(len(spans)), key=lambda i: spans[i])
    result = [False] * len(spans)
    prev_end: int | None = None
    for i in order:
        start, _end = spans[i]
        before = text[max(0, start - 80):start]
        personal = _PERSONAL_PLACE_CUE.search(before) is not None
        if not personal and prev_end is not None and prev_end <= start:
            personal = _PLACE_CHAIN.match(text[prev_end:start]) is not None
        result[i] = personal
        prev_end = spans[i][1] if personal else None
    return result


# --- spaCy's names and places, filtered --------------------------------------------------------------------------

_CODE_LIKE = re.compile(r"\d|[A-Z]{2}[-_]|[_/#=@]|(?<![^\W\d_])-|-(?![^\W\d_])")
_PROPER_TAGS = frozenset({"NNP", "NNPS"})


class FilteredSpacyRecognizer(SpacyRecognizer):
    """spaCy's entities, keeping a PERSON or LOCATION only when it looks like one.

    The small English model tags some capitalised common words at a sentence start ("Refunds") and invented
    lower-case words ("mkqtdrbravo") as names or places. Kept: spans with a capital initial on every word but
    particles, at least one proper-noun (NNP) token, no digits or code punctuation, not a known non-name.
    """

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        results: list[RecognizerResult] = super().analyze(text, entities, nlp_artifacts)
        if not results or nlp_artifacts is None:
            return results
        doc = nlp_artifacts.tokens
        kept = []
        for r in results:
            if r.entity_type in ("PERSON", "LOCATION"):
                # The small model runs a name into the next line ("Jane Doe\nRegional Manager"): cut it there.
                newline = text.find("\n", r.start, r.end)
                if newline > r.start and text[r.start:newline].strip():
                    r.end = newline
                if not _looks_like_name(text, r.start, r.end, doc) or (
                        r.entity_type == "PERSON" and _english_title(text, r.start, r.end, nlp_artifacts)):
                    continue
            kept.append(r)
        return kept


def _english_title(text: str, start: int, end: int, nlp_artifacts: NlpArtifacts) -> bool:
    """Two or more words, each an English word and none a listed first name: a title ("Guilty Pleasures",
    "Cautionary Tales"), not a person; one name word in it ("Will Smith", "Rose Bunce") keeps it."""
    from engine.safety.names import english_words_of, faker_name_words

    words = text[start:end].split()
    if len(words) < 2:
        return False
    english = english_words_of(nlp_artifacts)
    firsts, _ = faker_name_words()
    span = nlp_artifacts.tokens.char_span(start, end, alignment_mode="expand")
    tokens = [t for t in span if t.is_alpha] if span is not None else []
    def is_english(w: str, lemma: str) -> bool:  # a proper noun keeps its plural as its lemma: "Pleasures"
        return w in english or lemma in english or (w.endswith("s") and (w[:-1] in english or w[:-2] in english))

    return bool(tokens) and all(is_english(t.lower_, t.lemma_.lower()) and t.lower_ not in firsts for t in tokens)


def _looks_like_name(text: str, start: int, end: int, doc: Any) -> bool:
    span_text = text[start:end]
    if _CODE_LIKE.search(span_text) or "\n" in span_text.strip():  # codes, hyphens not inside a word
        return False
    words = span_text.split()
    if not words or not words[0][:1].isupper():
        return False
    if len(words) == 1 and span_text.isupper() and len(span_text) <= 3:  # "GB", "VAT": initialisms
        return False
    if len(words) == 1 and span_text.lower().strip(".,") in NOT_NAMES:
        return False
    if _has_org_word(span_text):
        return False
    span = doc.char_span(start, end, alignment_mode="expand") if doc is not None else None
    if span is None:
        return True
    return any(t.tag_ in _PROPER_TAGS for t in span)


# --- a pass over all results ------------------------------------------------------------------------------------

_DATE_LIKE = re.compile(
    r"^(?:\d{1,2}[./-]\d{1,2}[./-](?:\d{4}|\d{2})|\d{4}[./-]\d{1,2}[./-]\d{1,2})$"
)
_PRICE_BEFORE = re.compile(r"(?:[$€£¥]|\b(?:USD|EUR|GBP|INR|AUD|CAD|BRL|ILS|CHF|Rs\.?)\s?)$")
_PHONE_WORDS = re.compile(r"(?i)\b(?:phone|tel|telephone|mobile|mob|cell|call|ring|fax|whatsapp|sms|text|number|contact|m|t|p)\b\W{0,3}$")


_INSIDE_ADDRESS = frozenset({"PERSON", "LOCATION"})


def refine_results(text: str, results: Sequence[RecognizerResult]) -> list[RecognizerResult]:
    """Drop phone look-alikes and spread names: a name found once is a name wherever it appears.

    Names, places and numbers inside a street address are dropped: the ADDRESS span covers them ("Kramer Ct").
    """
    addresses = [(r.start, r.end) for r in results if r.entity_type == "ADDRESS"]
    kept: list[RecognizerResult] = []
    for r in results:
        if r.entity_type == "PHONE_NUMBER" and _phone_lookalike(text, r.start, r.end):
            continue
        if r.entity_type in _INSIDE_ADDRESS and any(s <= r.start and r.end <= e for s, e in addresses):
            continue
        kept.append(r)
    return kept + _propagate_names(text, kept)


_VERSION_LIKE = re.compile(r"^\d{1,2}\.\d{1,2}\.\d{1,4}(?:\.\d{1,5})*$")
_VERSION_BEFORE = re.compile(r"(?i)\b(?:version|build|release|ver|v)\.?\s*$")


def _phone_lookalike(text: str, start: int, end: int) -> bool:
    value = text[start:end].strip()
    if re.search(r"\d:$", text[max(0, start - 2):start]):  # the seconds of a time stamp: 08:46:30.035623
        return True
    french = re.fullmatch(r"0\d(?:\.\d\d){4}", value) is not None  # 03.91.12.17.13 is a phone, not a version
    if _DATE_LIKE.match(value) or (_VERSION_LIKE.match(value) and not french) or _VERSION_BEFORE.search(
            text[max(0, start - 10):start]):
        return True
    # E.164 numbers have at most 15 digits (an extension aside): longer runs are order or tracking numbers.
    if len(re.sub(r"\D", "", re.split(r"(?i)e?xt|x", value)[0])) > 15:
        return True
    if _PRICE_BEFORE.search(text[max(0, start - 5):start]):
        return True
    if re.fullmatch(r"\d+", value) and not value.startswith("0"):
        # An unbroken digit run is a phone number only next to a phone word.
        return _PHONE_WORDS.search(text[max(0, start - 25):start]) is None
    if re.fullmatch(r"\d{1,3}\.\d{2}", value) or re.fullmatch(r"\d{1,3}(?:\.\d{1,3}){3}", value):  # prices, IPv4
        return True
    return False


def _propagate_names(text: str, results: Sequence[RecognizerResult]) -> list[RecognizerResult]:
    names: set[str] = set()
    for r in results:
        if r.entity_type != "PERSON":
            continue
        for word in re.findall(rf"{_NAME_WORD}", text[r.start:r.end]):
            if len(word) >= 3 and word.lower() not in NOT_NAMES and word.lower() not in ORG_WORDS:
                names.add(word)
    if not names:
        return []
    pattern = re.compile(rf"(?<![\w@.])(?:{'|'.join(re.escape(n) for n in sorted(names, key=len, reverse=True))})"
                         rf"(?:[ \t]+{_NAME_WORD})?(?![\w@])")
    out = []
    covered = [(r.start, r.end) for r in results if r.entity_type == "PERSON"]
    for m in pattern.finditer(text):
        start, end = m.start(), m.end()
        if any(s <= start and end <= e for s, e in covered):
            continue
        start, end = _strip_not_names(text, start, end)
        if end <= start or _has_org_word(text[start:end]):
            continue
        out.append(RecognizerResult("PERSON", start, end, 0.7,
                                    recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: "NamePropagation"}))
    # Names listed with a name: "Brabec, Kastner and Torpy", "Jay & Trish" (engine.safety.names).
    from engine.safety.names import coordinated_spans

    spans = [(r.start, r.end) for r in results if r.entity_type == "PERSON"] + [(r.start, r.end) for r in out]
    for start, end in coordinated_spans(text, spans):
        out.append(RecognizerResult("PERSON", start, end, 0.6,
                                    recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: "NameList"}))
    return out


def build_recognizers(language: str = "en") -> list[EntityRecognizer]:
    """Our recognizers, to add to a Presidio registry (the stock CreditCardRecognizer and SpacyRecognizer go)."""
    return [
        StreetAddressRecognizer(language),
        CardNumberRecognizer(language),
        PhoneShapeRecognizer(language),
        IbanGroupsRecognizer(language),
        ContextPersonRecognizer(language),
        PersonalPlaceRecognizer(language),
    ]

