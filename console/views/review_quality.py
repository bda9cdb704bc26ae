"""Reviewers and admins: spot checks (blind samples of unflagged exchanges) and the miss rate they measure, beside the
precision of what the policy flagged; admins set the sampling rules here."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from console import ui
from console.services import spot_checks as spot
from console.services.access import allowed
from console.textsafe import escape_markdown

principal = ui.require_page("review_quality")
ctx = ui.app_context()
FLASH = "review_quality_flash"
ANY = "(any)"


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


st.title("Review quality")
if st.session_state.get(FLASH):
    st.success(escape_markdown(st.session_state.pop(FLASH)))
days = st.selectbox("Period", [7, 30, 90], index=1, format_func=lambda d: f"last {d} days", key="rq_days")
report = ui.call(spot.report, ctx, principal, days=days)
if report is None:
    st.stop()

st.subheader("What the scanners miss (spot checks)")
st.markdown(
    "A spot check is an exchange **nothing flagged**, drawn at random into the review queue and decided like any "
    "other item (reviewers cannot tell them apart). The **miss rate** of a label family is the share of decided spot "
    "checks, among those the family's scanners found nothing on, that a reviewer judged a violation of that family. "
    "The **95 % interval** (Wilson score) is the range the true rate lies in with 95 % confidence given how few "
    "items it rests on. **Missed per day** is the miss rate times the unflagged exchanges a day. **Precision** is, "
    "of the items the policy flagged for that family and reviewers decided, the share confirmed a violation.")
st.caption(f"{report.decided} spot check{'' if report.decided == 1 else 's'} decided in the last {report.days} days; "
           f"{report.unflagged_per_day:.1f} unflagged exchanges a day on average. A miss rate is shown from "
           f"{report.min_checks} decided spot checks on.")
rows = []
for fq in report.families:
    m = fq.miss
    low, high = m.interval
    est, est_low, est_high = m.missed_per_day
    rows.append({
        "label family": fq.family.title,
        "spot checks decided": m.checked,
        "judged a violation": m.missed,
        "miss rate": pct(m.rate) if m.enough else f"not enough spot checks yet ({m.checked} of {report.min_checks})",
        "95 % interval": f"{pct(low)} to {pct(high)}" if m.enough else "-",
        "missed per day (exchanges)": f"{est:.1f} ({est_low:.1f} to {est_high:.1f})" if m.enough else "-",
        "precision of flags": "-" if fq.precision is None else pct(fq.precision),
        "flagged items decided": fq.flagged_decided,
    })
st.dataframe(pd.DataFrame(rows), hide_index=True, key="miss_rate_table")
if report.other_violations:
    st.caption(f"{report.other_violations} spot check{' was' if report.other_violations == 1 else 's were'} judged a violation outside these families (wrong answer "
               "or other): no scanner looks for those.")

st.subheader("Sampling rules")
if not report.rules:
    st.info(f"No rule: no spot checks are drawn. A reasonable start is {spot.SUGGESTED}.")
else:
    st.dataframe(pd.DataFrame([{"scope": r.scope, "share": pct(r.share), "daily cap (items)": r.daily_cap}
                               for r in report.rules]), hide_index=True, key="rules_table")
st.caption("Each round draws, per rule, that share of the day's unflagged exchanges (answered, not flagged or blocked, "
           "never in review), at most the cap a day. A rule for a label family draws only exchanges that family's "
           "scanners found nothing on.")

if allowed(principal.roles, "review.spot_check_rules"):
    versions = ui.call(spot.version_choices, ctx, principal) or []
    with st.form("rule_form", clear_on_submit=True):
        c1, c2, c3, c4 = st.columns(4)
        share = c1.number_input("Share (%)", min_value=0.0, max_value=100.0, value=1.0, step=0.5, key="rule_share")
        cap = c2.number_input("Daily cap (items)", min_value=1, max_value=spot.MAX_CAP, value=20, step=1,
                              key="rule_cap")
        version = c3.selectbox("Model version", [ANY, *versions], key="rule_version")
        family = c4.selectbox("Label family", [ANY, *spot.FAMILIES],
                              format_func=lambda f: f if f == ANY else spot.FAMILIES[f].title, key="rule_family")
        if st.form_submit_button("Save rule", type="primary", key="rule_save"):
            rule = ui.call(spot.set_rule, ctx, principal, share_percent=share, daily_cap=int(cap),
                           model_version=None if version == ANY else version,
                           family=None if family == ANY else family)
            if rule is not None:
                st.session_state[FLASH] = f"Rule saved: {pct(rule.share)} of {rule.scope}, at most {rule.daily_cap} a day."
                for field in ("rule_share", "rule_cap", "rule_version", "rule_family"):
                    st.session_state.pop(field, None)  # the next run shows an empty form
                st.rerun()
    scopes = {r.key: r.scope for r in report.rules}
    if scopes:
        with st.form("remove_form", clear_on_submit=True):
            key = st.selectbox("Rule", list(scopes), key="remove_key", format_func=scopes.__getitem__)
            if st.form_submit_button("Remove rule", key="rule_remove"):
                removed = ui.call(spot.remove_rule, ctx, principal, key)
                if removed is not None:
                    st.session_state[FLASH] = f"Rule removed: {removed.scope}."
                    st.rerun()
