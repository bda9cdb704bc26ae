"""Evaluating a model version on a prompt suite: built-in and uploaded suites, the child process that answers
them (``python -m engine.evals.run``), and the report computed from the answers and their safety scans."""

from __future__ import annotations

from engine.evals.process import ChildConfig, ChildRun, EvaluationRunError, run_suite_in_child
from engine.evals.report import (
    Answer,
    AnswerScan,
    ComparisonRow,
    EvalReport,
    compare_reports,
    compute_report,
    percentile,
    scan_of,
)
from engine.evals.suite import (
    BUILTIN_DESCRIPTIONS,
    DEFAULT_SUITE,
    KINDS,
    TOPICS,
    Suite,
    SuiteError,
    SuiteRecord,
    builtin_names,
    format_of,
    load_builtin,
    parse_suite,
)

__all__ = [
    "BUILTIN_DESCRIPTIONS",
    "DEFAULT_SUITE",
    "KINDS",
    "TOPICS",
    "Answer",
    "AnswerScan",
    "ChildConfig",
    "ChildRun",
    "ComparisonRow",
    "EvalReport",
    "EvaluationRunError",
    "Suite",
    "SuiteError",
    "SuiteRecord",
    "builtin_names",
    "compare_reports",
    "compute_report",
    "format_of",
    "load_builtin",
    "parse_suite",
    "percentile",
    "run_suite_in_child",
    "scan_of",
]
