"""The Promotions page's canary parts: the plan's fields in the request form, a pending request's plan, the running
canary's panel (time left, traffic per arm, the test per metric, its rounds, and the stop button for approvers)
and an ended canary's decision. The decisions are :mod:`console.services.canary`'s; nothing here computes one."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from console import ui
from console.services import canary as canary_svc
from console.services import promotion as promotion_svc
from console.services.access import Principal
from console.services.canary import ALL_METRICS, METRIC_LABELS, CanaryPlan
from console.services.context import AppContext
from console.textsafe import escape_markdown as esc

VERDICTS = {"worse": "shown worse", "no_worse": "shown no worse (within the margin)",
            "undecided": "not decided yet", "too_few": "too few exchanges yet"}
DECISIONS = {"continue": "keep going", "promote": "promote the candidate", "rollback": "roll back"}
DEFAULT = CanaryPlan()


def _percent(fraction: float) -> float:
    return round(fraction * 100, 6)


def plan_fields(key: str) -> dict[str, object]:
    """Inside the request form: the plan's fields (defaults from :class:`CanaryPlan`, every unit named) as
    :func:`canary.parse_plan` takes them (fractions, not percent)."""
    lo, hi = canary_svc.SHARE_RANGE
    share = st.number_input("Share of new conversations sent to the candidate (%)", min_value=_percent(lo),
                            max_value=_percent(hi), value=_percent(DEFAULT.share), step=1.0, key=f"{key}_share")
    minutes = st.number_input("Time box (minutes; undecided at its end means rolled back)",
                              min_value=canary_svc.MINUTES_RANGE[0], max_value=canary_svc.MINUTES_RANGE[1],
                              value=DEFAULT.minutes, step=5, key=f"{key}_minutes")
    metrics = st.multiselect("Decided on", list(ALL_METRICS), default=list(DEFAULT.metrics),
                             format_func=lambda m: METRIC_LABELS[m], key=f"{key}_metrics")
    left, middle, right = st.columns(3)
    rate_lo, rate_hi = (_percent(v) for v in canary_svc.RATE_MARGIN_RANGE)
    flag = left.number_input("Flag rate margin (percentage points)", min_value=rate_lo, max_value=rate_hi,
                             value=_percent(DEFAULT.flag_margin), step=0.5, key=f"{key}_flag_margin")
    error = middle.number_input("Error rate margin (percentage points)", min_value=rate_lo, max_value=rate_hi,
                                value=_percent(DEFAULT.error_margin), step=0.5, key=f"{key}_error_margin")
    ttft = right.number_input("p95 TTFT margin (% of the live version's p95)",
                              min_value=_percent(canary_svc.TTFT_MARGIN_RANGE[0]),
                              max_value=_percent(canary_svc.TTFT_MARGIN_RANGE[1]),
                              value=_percent(DEFAULT.ttft_margin), step=5.0, key=f"{key}_ttft_margin")
    left, middle, right = st.columns(3)
    feedback = middle.number_input("Negative feedback rate margin (percentage points of rated answers)",
                                   min_value=rate_lo, max_value=rate_hi, value=_percent(DEFAULT.feedback_margin),
                                   step=0.5, key=f"{key}_feedback_margin",
                                   help="Used when the negative feedback rate is chosen above; it needs the minimum "
                                        "below in rated answers per arm.")
    alpha = left.number_input("Error level alpha (chance of a wrong decision, per metric)",
                              min_value=canary_svc.ALPHA_RANGE[0], max_value=canary_svc.ALPHA_RANGE[1],
                              value=DEFAULT.alpha, step=0.01, format="%.3f", key=f"{key}_alpha")
    least = right.number_input("Minimum exchanges per arm before any decision",
                               min_value=canary_svc.MIN_EXCHANGES_RANGE[0],
                               max_value=canary_svc.MIN_EXCHANGES_RANGE[1], value=DEFAULT.min_exchanges, step=10,
                               key=f"{key}_min_exchanges")
    return {"share": share / 100, "minutes": minutes, "metrics": metrics, "flag_margin": flag / 100,
            "error_margin": error / 100, "ttft_margin": ttft / 100, "alpha": alpha, "min_exchanges": least,
            "feedback_margin": feedback / 100}


def show_plan(request: promotion_svc.RequestView) -> None:
    """A canary request's plan, frozen with it, in plain words."""
    if request.plan is not None:
        st.markdown(":orange-badge[Canary release]")
        st.info(esc(promotion_svc.describe_plan(request.plan)), icon=":material/science:")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _details(view: canary_svc.CanaryView) -> None:
    """What every canary view shows: traffic per arm, the test per metric, the decision and the rounds."""
    left, right = st.columns(2)
    left.metric(f"Exchanges answered by {view.candidate} (candidate)", f"{view.candidate_n:,}")
    right.metric(f"Exchanges answered by {view.live or '-'} (live)", f"{view.live_n:,}")
    if view.metrics:
        st.dataframe(pd.DataFrame([{"metric": m.label, "candidate": m.candidate, "live": m.live,
                                    "difference": m.difference, "bounds": m.bounds, "margin": m.margin,
                                    "verdict": VERDICTS.get(m.verdict, m.verdict), "in words": m.text}
                                   for m in view.metrics]),
                     hide_index=True, width="stretch", key=f"canary_metrics_{view.request_id}")
    if view.rounds or not view.running:
        st.markdown(f"**Latest decision:** {esc(DECISIONS.get(view.decision, view.decision))}: {esc(view.reason)}")
    else:
        st.markdown(f"**Not checked yet:** {esc(view.reason)}")
    if view.rounds:
        st.dataframe(pd.DataFrame([{"checked (UTC)": r.checked_at, "candidate exchanges": r.candidate_n,
                                    "live exchanges": r.live_n, "decision": DECISIONS.get(r.decision, r.decision)}
                                   for r in view.rounds]),
                     hide_index=True, width="stretch", key=f"canary_rounds_{view.request_id}")
    st.caption(esc(view.test))


def running_panel(ctx: AppContext, principal: Principal, request: promotion_svc.RequestView, *, can_stop: bool,
                  round_: int) -> str | None:
    """The running canary: plan, time left, the test so far, and for approvers the stop button. Returns a message
    when it was stopped."""
    view = ui.call(canary_svc.canary_view, ctx, principal, request.id)
    if view is None:
        return None
    with st.container(border=True):
        st.subheader(f"Canary #{view.request_id}: {view.candidate} beside {view.live or 'nothing'}")
        left = "" if view.time_left is None else f"{_minutes(view.time_left.total_seconds())} left, "
        ends = "" if view.ends_at is None else f"ends {view.ends_at:%Y-%m-%d %H:%M} UTC"
        st.markdown(f"**Running:** {esc(left + ends)} · approved by {esc(request.decided_by or '-')}"
                    + (f": {esc(request.decision_note)}" if request.decision_note else ""))
        st.caption(esc(promotion_svc.describe_plan(view.plan)))
        _details(view)
        if can_stop:
            with st.form(f"canary_stop_{view.request_id}_{round_}"):
                note = st.text_input("Why stop it (recorded)", key=f"canary_stop_note_{view.request_id}_{round_}",
                                     max_chars=1000)
                if st.form_submit_button("Stop canary (roll back)"):
                    if ui.call(canary_svc.end_canary, ctx, principal, view.request_id, note) is not None:
                        return (f"Canary #{view.request_id} is stopped: every conversation goes to "
                                f"{view.live or 'the live version'} again.")
    return None


def ended(ctx: AppContext, principal: Principal, request: promotion_svc.RequestView) -> None:
    """An ended canary: promoted or rolled back, with the statistics of its last round."""
    outcome = "promoted" if request.status == "approved" else "rolled back"
    why = str((request.canary_result or {}).get("reason") or "")
    with st.expander(esc(f"Canary #{request.id} of {request.version}: {outcome}" + (f" ({why})" if why else ""))):
        view = ui.call(canary_svc.canary_view, ctx, principal, request.id)
        if view is not None:
            st.caption(esc(promotion_svc.describe_plan(view.plan)))
            _details(view)
