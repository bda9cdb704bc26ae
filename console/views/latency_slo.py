"""The Latency page's service-level objectives: the targets (admins set and remove them, everyone sees them) and,
for a report, goodput, compliance with each target and the buckets that breached one."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from console import ui
from console.services import access
from console.services import latency as latency_svc
from console.services import latency_view_model as latency_vm
from console.services import slo as slo_svc
from console.services.access import Principal
from console.services.context import AppContext
from console.textsafe import escape_markdown


def _slo_choices() -> dict[str, tuple[str, str]]:
    choices = {}
    for metric, stats in slo_svc.SLO_METRICS.items():
        for stat in stats:
            unit = "%" if stat == "rate" else "ms"
            name = slo_svc.METRIC_LABELS[metric]
            choices[f"{name} ({unit})" if stat == "rate" else f"{stat} {name} ({unit})"] = (metric, stat)
    return choices


def targets_panel(ctx: AppContext, principal: Principal) -> None:
    """The targets in an expander; admins set and remove them there."""
    can_manage = access.allowed(principal.roles, "slo.manage")
    with st.expander("Service-level objectives", expanded=False):
        if can_manage:
            choices = _slo_choices()
            with st.form("slo_form"):
                f1, f2 = st.columns([3, 1])
                choice = f1.selectbox("Target", list(choices), key="slo_choice")
                threshold = f2.number_input("Threshold (ms, or % for a rate)", min_value=0.0, max_value=3_600_000.0,
                                            value=500.0, step=1.0, key="slo_threshold")
                if st.form_submit_button("Set target"):
                    metric, stat = choices[choice]
                    value = threshold / 100.0 if stat == "rate" else threshold
                    saved = ui.call(slo_svc.set_slo, ctx, principal, metric, stat, value)
                    if saved is not None:
                        st.success(f"Target set: {escape_markdown(saved.label)}.")
            current = ui.call(slo_svc.list_slos, ctx, principal) or []
            if current:
                r1, r2 = st.columns([3, 1])
                labels = {s.label: s.id for s in current}
                gone = r1.selectbox("Remove a target", list(labels), index=None, key="slo_remove")
                if r2.button("Remove", key="slo_remove_button") and gone is not None:
                    removed = ui.call(slo_svc.delete_slo, ctx, principal, labels[gone])
                    if removed is not None:
                        st.success(f"Target removed: {escape_markdown(removed)}.")
        slos = ui.call(slo_svc.list_slos, ctx, principal) or []
        if slos:
            st.dataframe(pd.DataFrame([{"target": s.label, "set by": s.set_by or "", "set at (UTC)": s.set_at}
                                       for s in slos]), hide_index=True, width="stretch", key="slo_table")
        else:
            st.caption("No targets set yet." + (" Set one above." if can_manage else " Admins set them."))


def slo_tables(report: latency_svc.LatencyOverview) -> None:
    st.subheader("Service-level objectives")
    if not report.slos:
        st.caption("No targets are set: goodput and breaches need at least one (admins set them above).")
        return
    goodput = report.goodput
    st.dataframe(pd.DataFrame({
        "model version": goodput["model_version"],
        "requests that reached the model": goodput["reached_model"],
        "goodput (met every target)": [
            "–" if pd.isna(lo) else (f"{lo * 100:.2f} %" if abs(hi - lo) < 1e-12 else
                                     f"{lo * 100:.2f} % to {hi * 100:.2f} %")
            for lo, hi in zip(goodput["share_low"], goodput["share_high"], strict=True)],
        "exact": ["yes" if exact else "bounds" for exact in goodput["exact"]],
    }), hide_index=True, width="stretch", key="goodput_table")
    st.caption("Goodput: requests that finished without error and were at or under every latency target, out of "
               "those that reached the model. With targets on several latency metrics it is given as bounds "
               "(the histograms are per metric).")
    comp = report.compliance
    st.dataframe(pd.DataFrame({
        "target": comp["target"], "model version": comp["model_version"],
        "measured over the window": latency_vm.format_measured(comp["measured"], comp["stat"]),
        "met": ["no data" if met is None or pd.isna(met) else ("yes" if met else "NO") for met in comp["met"]],
    }), hide_index=True, width="stretch", key="compliance_table")
    breaches = report.breaches
    st.markdown(f"**Breaches** ({len(breaches):,} {report.bucket_label} bucket{'' if len(breaches) == 1 else 's'} "
                "in which a version missed a target)")
    if not breaches.empty:
        newest = breaches.sort_values("bucket_start", ascending=False).head(500)
        st.dataframe(pd.DataFrame({
            "bucket start (UTC)": newest["bucket_start"], "model version": newest["model_version"],
            "target": newest["target"],
            "measured": latency_vm.format_measured(newest["measured"], newest["stat"]),
            "requests in the bucket": newest["requests"],
        }), hide_index=True, width="stretch", key="breaches_table")
