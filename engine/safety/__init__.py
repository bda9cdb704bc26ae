"""Safety scanners (Presidio PII, Detoxify toxicity or its offline fallback, prompt injection) and the moderation policy.

A pure library: no database, no Streamlit, no environment variables. Typical use::

    runner, notice = build_runner(PiiConfig(), ToxicityConfig())   # once per process
    policy = Policy.load(path)                                       # DEFAULT_POLICY_PATH ships with us
    report = runner.scan(prompt)
    decision = policy.decide("prompt", report.findings)
    if decision.blocked: ...                   # never send to the model
    model_sees = decision.apply(prompt)        # redacted where redact rules triggered
"""

from __future__ import annotations

from engine.safety.base import Finding, Scanner, ScannerLoadError
from engine.safety.deadline import ScanTimeout
from engine.safety.injection import InjectionScanner, load_injection_scanner
from engine.safety.injection_patterns import INJECTION_LABELS
from engine.safety.pii import DEFAULT_ENTITIES, PiiConfig, PresidioScanner
from engine.safety.policy import (
    DEFAULT_POLICY_PATH,
    Decision,
    Policy,
    PolicyError,
    Rule,
    RuleHit,
    redact,
)
from engine.safety.runner import ScannerRunner, ScanReport, build_runner
from engine.safety.toxicity import (
    DetoxifyScanner,
    ProfanityFallbackScanner,
    ToxicityConfig,
    load_toxicity,
    load_toxicity_scanner,
)

__all__ = [
    "DEFAULT_ENTITIES",
    "DEFAULT_POLICY_PATH",
    "Decision",
    "DetoxifyScanner",
    "Finding",
    "INJECTION_LABELS",
    "InjectionScanner",
    "PiiConfig",
    "Policy",
    "PolicyError",
    "PresidioScanner",
    "ProfanityFallbackScanner",
    "Rule",
    "RuleHit",
    "ScanReport",
    "ScanTimeout",
    "Scanner",
    "ScannerLoadError",
    "ScannerRunner",
    "ToxicityConfig",
    "build_runner",
    "load_injection_scanner",
    "load_toxicity",
    "load_toxicity_scanner",
    "redact",
]
