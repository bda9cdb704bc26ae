"""Evaluating a model version on a prompt suite: built-in and uploaded suites (``suite``), the run that answers
them through an engine client in a child process (``runner``), the paired latency comparison (``latency``), how
answers are judged (``judge``) and the report computed from the answers and their safety scans (``report``)."""

from __future__ import annotations

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
from engine.evals.runner import ChildConfig, ChildRun, EvaluationRunError, run_suite_in_child
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
