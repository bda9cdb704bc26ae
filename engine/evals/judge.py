"""Judging one answer without a model: did it decline, which support topic is it about, how alike are two answers.

Built on the demo support models' own vocabulary (``engine.demo``): the refusal mark of
``engine.demo.scoring`` and the intents' answers of ``engine.demo.corpus``. An answer close to one of the corpus
answers takes that intent's topic; otherwise topic keywords (the words ``engine.demo.scoring`` judges answers
by) vote. Keyword judging is a coarse instrument: good for comparing versions of the same model family on the
same suite, not an absolute quality score.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache

from engine.demo.corpus import INTENTS
from engine.demo.scoring import REFUSAL_MARK

OUT_OF_DOMAIN = "out_of_domain"

# Declines in the words of other chat models, besides the demo models' own refusal.
_DECLINE_PATTERNS = re.compile(
    r"|".join(
        (
            re.escape(REFUSAL_MARK.lower()),
            r"\bi can only (?:help|assist|answer)\b",
            r"\bi (?:can(?:no|')t|am (?:not able|unable)|'m (?:not able|unable)) to (?:help|assist|answer|provide|do)\b",
            r"\b(?:i|we) (?:won't|will not|cannot|can't) (?:help|assist|provide|share|disclose|do that)\b",
            r"\b(?:outside|beyond) (?:of )?(?:my|the|our) (?:scope|remit)\b",
            r"\bnot something i can (?:help|assist) with\b",
        )
    )
)

# Topic words, as engine.demo.scoring's questions judge answers by them; a phrase counts once per answer.
TOPIC_KEYWORDS: dict[str, tuple[str, ...]] = {
    "greeting": ("hello", "you're welcome", "goodbye", "what can i do for you", "anything else"),
    "account": ("password", "sign-in", "sign in", "locked", "unlock", "email address", "two-factor",
                "authenticator", "log in", "login"),
    "billing": ("double charge", "duplicate", "charged", "payment method", "invoice", "billing", "change your plan",
                "prorated", "card"),
    "orders": ("track", "tracking", "delivery", "shipped", "shipping", "damaged", "replacement", "carrier",
               "parcel", "package"),
    "refunds": ("refund", "return label", "return an item", "reimburse", "money back", "processed"),
    "cancellations": ("cancel", "subscription", "renew"),
    "privacy": ("personal data", "privacy", "delete your account", "export", "unsubscribe", "marketing",
                "never sell", "erase"),
    "escalation": ("human agent", "human", "agent", "support team", "passing you"),
}

_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
# Nearest-answer matching: an answer this close to a corpus answer is that intent's answer.
_NEAREST_MIN_RATIO = 0.6


def words(text: str) -> list[str]:
    """Lower-case words of ``text`` (apostrophes and hyphens kept inside words)."""
    return _WORD.findall(text.lower())


def is_decline(text: str) -> bool:
    """True when the answer declines to help (the demo refusal or a common decline phrasing)."""
    return bool(_DECLINE_PATTERNS.search(text.lower()))


def similarity(a: str, b: str) -> float:
    """How alike two answers are, 0..1: difflib's ratio over their word sequences (1.0 for two empty texts)."""
    wa, wb = words(a), words(b)
    if not wa and not wb:
        return 1.0
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()


@lru_cache(maxsize=1)
def _intent_answers() -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((i.topic, tuple(words(i.answer))) for i in INTENTS if i.topic != OUT_OF_DOMAIN)


def nearest_intent_topic(text: str) -> str | None:
    """The topic of the corpus answer closest to ``text`` if it is close enough, else None."""
    answer = words(text)
    if not answer:
        return None
    best_topic, best = None, 0.0
    for topic, known in _intent_answers():
        matcher = difflib.SequenceMatcher(None, answer, known, autojunk=False)
        if matcher.real_quick_ratio() < best or matcher.quick_ratio() < best:
            continue
        ratio = matcher.ratio()
        if ratio > best:
            best_topic, best = topic, ratio
    return best_topic if best >= _NEAREST_MIN_RATIO else None


def keyword_topic(text: str) -> str | None:
    """The topic whose keywords the answer uses most; None on no hit or a tie."""
    lowered = " ".join(words(text))
    scores = {
        topic: sum(1 for k in keywords if re.search(rf"\b{re.escape(' '.join(words(k)))}\b", lowered))
        for topic, keywords in TOPIC_KEYWORDS.items()
    }
    best = max(scores.values())
    if best == 0:
        return None
    leaders = [t for t, s in scores.items() if s == best]
    return leaders[0] if len(leaders) == 1 else None


def classify_topic(text: str) -> str | None:
    """The support topic an answer is about: ``out_of_domain`` if it declines, else the nearest corpus answer's
    topic, else the keyword vote; None when nothing decides it (empty, or a tie)."""
    if not text.strip():
        return None
    if is_decline(text):
        return OUT_OF_DOMAIN
    return nearest_intent_topic(text) or keyword_topic(text)
