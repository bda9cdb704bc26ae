"""What the Promotions page says (console/views/promotions.py draws it): the production banner's notices, a
request's heading and its gate and frozen-report rows. Texts come back escaped for Markdown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from console.services import promotion as promotion_svc
from console.services import watch
from console.textsafe import escape_markdown as esc

# A concluded watch window's verdict (watch.WatchFinding.verdict), in words.
WATCH_VERDICTS = {"passed": "passed", "regression": "regression", "too_few_samples": "too few samples to judge"}


@dataclass(frozen=True)
class Notice:
    level: Literal["info", "warning", "error", "caption"]
    text: str  # escaped Markdown
    icon: str | None = None


def production_notices(production: watch.ProductionView) -> list[Notice]:
    """The banner under "Production": the window being watched, a rollback or a move away, the concluded watch's
    comparisons and a recent regression, in that order."""
    out = []
    window = production.watch
    if window is not None and window.state == "watching":
        out.append(Notice("info", f"Watching {esc(window.to_version)} against {esc(window.from_version or '-')} "
                                  f"until {window.ends_at:%H:%M} UTC.", ":material/visibility:"))
    if (rb := production.last_rollback) is not None:
        out.append(Notice("warning", f"Rolled back at {rb.at:%Y-%m-%d %H:%M} UTC by {esc(rb.by)}: production "
                                     f"returned from {esc(rb.from_version or '-')} to {esc(rb.to_version or '-')} "
                                     f"({esc(rb.reason)}). {esc(rb.from_version or '-')} is no longer watched.",
                          ":material/arrow_back:"))
    elif window is not None and window.state == "moved" and (m := window.moved_away) is not None:
        out.append(Notice("info", f"Production moved from {esc(window.to_version)} to {esc(m.to_version or 'nothing')} "
                                  f"at {m.at:%Y-%m-%d %H:%M} UTC by {esc(m.by)} ({esc(m.reason)}); "
                                  f"{esc(window.to_version)} is no longer watched, and the consoles switch within "
                                  "seconds.", ":material/arrow_forward:"))
    if window is not None and window.finding is not None and window.finding.tests:
        verdict = WATCH_VERDICTS.get(window.finding.verdict, window.finding.verdict)
        out.append(Notice("caption", f"Watch of {esc(window.to_version)} against {esc(window.from_version or '-')} "
                                     f"({esc(verdict)}): "
                                     + esc("; ".join(watch.describe_test(t) for t in window.finding.tests)) + "."))
    if (f := production.recent_regression) is not None:
        what = {"rolled_back": "production was rolled back by itself", "proposed": "a rollback is proposed",
                "rollback_failed": f"the rollback failed: {f.error}"}.get(f.action, f.action)
        out.append(Notice("error", f"{f.at:%Y-%m-%d %H:%M} UTC: the watch window found a regression of "
                                   f"{esc(f.to_version)} against {esc(f.from_version)}: {esc('; '.join(f.reasons))}. "
                                   f"{esc(what)}.", ":material/warning:"))
    return out


def request_heading(r: promotion_svc.RequestView) -> str:
    return (f"**#{r.id}** · move **{esc(r.alias)}** to **{esc(r.version)}** (from {esc(r.from_version or 'nobody')} "
            f"when asked) · asked by {esc(r.requested_by)} · {r.created_at:%Y-%m-%d %H:%M}  \n{esc(r.reason)}")


def moved_warning(r: promotion_svc.RequestView) -> str | None:
    """For a pending request whose alias moved since it was asked: it can only be rejected."""
    if not r.moved_since:
        return None
    return (f"{esc(r.alias)} has moved since: it now points at {esc(r.alias_now or 'nothing')}, so this request's "
            "gates compared with another version. It can only be rejected; request again.")


def _num(value: float | None) -> str:
    # A gate without numbers (no evaluation, timed against another version) or a metric a report lacks: "–", not
    # an empty cell (which the browser shows as "None").
    return "–" if value is None else f"{value:g}"


def gate_badges(r: promotion_svc.RequestView) -> str:
    return " ".join(f":{'green' if g.passed else 'red'}-badge[{esc(g.label)}: {'pass' if g.passed else 'fail'}]"
                    for g in r.gates)


def gate_rows(r: promotion_svc.RequestView) -> list[dict[str, Any]]:
    return [{"gate": g.label, "value": _num(g.value), "must be": g.comparison, "limit": _num(g.limit),
             "passed": g.passed, "note": g.note or ""} for g in r.gates]


def report_rows(r: promotion_svc.RequestView) -> list[dict[str, Any]]:
    """The frozen candidate and baseline reports side by side."""
    return [{**row, "candidate": _num(row["candidate"]), "baseline": _num(row["baseline"])}
            for row in promotion_svc.compare_reports(r.report, r.baseline_report)]
