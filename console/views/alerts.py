"""Admin: webhooks that receive alerts (URLs masked, never shown back), a test alert per webhook, the recent alerts
and the delivery log (the notice, firing or resolved; status, attempts, next retry, last error)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from console import ui
from console.services import alerts as alerts_svc
from console.textsafe import escape_markdown

principal = ui.require_page("alerts")
ctx = ui.app_context()


@dataclass
class _PageState:
    flash: str | None = None
    clear_form: bool = False


state: _PageState = st.session_state.setdefault("alerts_page", _PageState())
FORM_KEYS = {"wh_name": "", "wh_url": "", "wh_secret": "", "wh_kinds": list(alerts_svc.SUBSCRIBABLE),
             "wh_body": "json", "wh_enabled": True}
if state.clear_form:  # saved: the form opens empty (a refused one keeps what was typed)
    st.session_state.update(FORM_KEYS)
    state.clear_form = False

st.title("Alerts")
if state.flash:
    st.success(escape_markdown(state.flash))
    state.flash = None


def _kind_label(kind: str) -> str:
    return alerts_svc.KIND_LABELS.get(kind, kind)


def _utc(at: datetime | None) -> str:
    if at is None:
        return "–"
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


hooks = ui.call(alerts_svc.list_webhooks, ctx, principal) or []
st.subheader("Webhooks")
if hooks and (secrets_problem := ui.call(alerts_svc.secrets_problem, ctx, principal)):
    st.warning(escape_markdown(secrets_problem))
if hooks:
    st.dataframe(pd.DataFrame([{
        "name": h.name, "body": alerts_svc.WEBHOOK_KINDS[h.kind], "address": h.url_display,
        "alert kinds": ", ".join(map(_kind_label, h.alert_kinds)), "signed": "yes" if h.signed else "no",
        "status": "enabled" if h.enabled else "disabled", "changed (UTC)": _utc(h.updated_at)} for h in hooks]),
        hide_index=True, width="stretch", key="webhooks_table")
    st.caption("Addresses show scheme and host only: the rest of a webhook URL often holds its token, so it is never "
               "shown back. Editing a webhook needs its URL (and signing secret) entered again.")
else:
    st.caption("No webhooks yet: add one below.")

by_name = {h.name: h for h in hooks}
add_tab, edit_tab = st.tabs(["Add a webhook", "Change a webhook"])
with add_tab:
    for key, value in FORM_KEYS.items():
        st.session_state.setdefault(key, value)
    with st.form("webhook_form"):
        name = st.text_input("Name", max_chars=alerts_svc.MAX_NAME_CHARS, key="wh_name")
        body = st.radio("Body format", list(alerts_svc.WEBHOOK_KINDS), format_func=alerts_svc.WEBHOOK_KINDS.get,
                        horizontal=True, key="wh_body")
        url = st.text_input("URL", type="password", key="wh_url", help="http:// or https://. Loopback and private "
                            "addresses are allowed (a receiver on this host or your network).")
        kinds = st.multiselect("Alert kinds", list(alerts_svc.SUBSCRIBABLE), format_func=_kind_label,
                               key="wh_kinds")
        secret = st.text_input("Signing secret (optional)", type="password", key="wh_secret",
                               help="Signs each body: X-Console-Signature: sha256=HMAC-SHA256(secret, "
                                    "'<X-Console-Timestamp>.<body>').")
        enabled = st.checkbox("Enabled", key="wh_enabled")
        if st.form_submit_button("Add webhook", type="primary"):
            saved = ui.call(alerts_svc.create_webhook, ctx, principal, name=name, kind=body, url=url,
                            alert_kinds=kinds, secret=secret, enabled=enabled)
            if saved is not None:
                state.flash, state.clear_form = f"Webhook {saved.name} added ({saved.url_display}).", True
                st.rerun()

with edit_tab:
    if not hooks:
        st.caption("No webhooks to change yet.")
    else:
        chosen = by_name[st.selectbox("Webhook", list(by_name), key="wh_pick")]
        c1, c2, c3 = st.columns(3)
        if c1.button("Send test alert", key="wh_test", help="Queues a test alert to this webhook and sends it now."):
            test_id = ui.call(alerts_svc.send_test_alert, ctx, principal, chosen.id)
            if test_id is not None:
                sent = ui.call(alerts_svc.dispatch_now, ctx, principal, test_id) or {}
                state.flash = (f"Test alert sent to {chosen.name}: "
                               + (", ".join(f"{n} {status}" for status, n in sorted(sent.items())) or "queued") + ".")
                st.rerun()
        toggle = "Disable" if chosen.enabled else "Enable"
        if c2.button(toggle, key="wh_toggle"):
            if ui.call(alerts_svc.set_webhook_enabled, ctx, principal, chosen.id, not chosen.enabled) is not None:
                state.flash = f"Webhook {chosen.name} {toggle.lower()}d."
                st.rerun()
        if c3.button("Delete", key="wh_delete"):
            gone = ui.call(alerts_svc.delete_webhook, ctx, principal, chosen.id)
            if gone is not None:
                state.flash = f"Webhook {gone} deleted; its deliveries stay in the log."
                st.rerun()
        with st.form("webhook_edit_form", clear_on_submit=False):
            e_name = st.text_input("Name", value=chosen.name, max_chars=alerts_svc.MAX_NAME_CHARS,
                                   key=f"wh_e_name_{chosen.id}")
            e_body = st.radio("Body format", list(alerts_svc.WEBHOOK_KINDS), format_func=alerts_svc.WEBHOOK_KINDS.get,
                              index=list(alerts_svc.WEBHOOK_KINDS).index(chosen.kind), horizontal=True,
                              key=f"wh_e_body_{chosen.id}")
            e_url = st.text_input("URL (enter it again)", type="password", key=f"wh_e_url_{chosen.id}")
            e_kinds = st.multiselect("Alert kinds", list(alerts_svc.SUBSCRIBABLE), default=list(chosen.alert_kinds),
                                     format_func=_kind_label, key=f"wh_e_kinds_{chosen.id}")
            e_secret = st.text_input("Signing secret (enter it again; empty: unsigned)", type="password",
                                     key=f"wh_e_secret_{chosen.id}")
            e_enabled = st.checkbox("Enabled", value=chosen.enabled, key=f"wh_e_enabled_{chosen.id}")
            if st.form_submit_button("Save changes"):
                saved = ui.call(alerts_svc.update_webhook, ctx, principal, chosen.id, name=e_name, kind=e_body,
                                url=e_url, alert_kinds=e_kinds, secret=e_secret, enabled=e_enabled)
                if saved is not None:
                    for key in ("url", "secret"):
                        st.session_state.pop(f"wh_e_{key}_{chosen.id}", None)
                    state.flash = f"Webhook {saved.name} saved."
                    st.rerun()

st.subheader("Recent alerts")
recent = ui.call(alerts_svc.recent_alerts, ctx, principal) or []
if recent:
    st.dataframe(pd.DataFrame([{
        "raised (UTC)": _utc(a.raised_at), "kind": _kind_label(a.kind), "alert": a.title,
        "state": a.state, "resolved (UTC)": _utc(a.resolved_at)} for a in recent]),
        hide_index=True, width="stretch", key="alerts_table")
else:
    st.caption("No alerts raised yet.")

st.subheader("Delivery log")
log = ui.call(alerts_svc.delivery_log, ctx, principal) or []
if log:
    st.dataframe(pd.DataFrame([{
        "delivery": d.id, "webhook": d.webhook, "alert": f"#{d.alert_id} {_kind_label(d.alert_kind)}",
        "notice": d.event, "status": d.status, "attempts": f"{d.attempts} of {d.max_attempts}",
        "last HTTP status": "–" if d.last_status_code is None else str(d.last_status_code),
        "last error": d.last_error or "–", "next retry (UTC)": _utc(d.next_attempt_at),
        "queued (UTC)": _utc(d.created_at)} for d in log]), hide_index=True, width="stretch", key="deliveries_table")
    newest = log[0]
    st.caption(escape_markdown(
        f"Newest delivery: #{newest.id} to {newest.webhook}"
        + (" (resolved notice)" if newest.event == "resolved" else "")
        + f": {newest.status} (attempt {newest.attempts} of {newest.max_attempts}"
        + (f", HTTP {newest.last_status_code}" if newest.last_status_code else "")
        + (f", {newest.last_error}" if newest.last_error else "") + ")."))
    retries = ", ".join(f"{m:g} min" for m in ctx.settings.alert_retry_minutes) or "none"
    st.caption(f"Failed attempts are retried after {retries}; a delivery that runs out of attempts fails and is "
               f"audited. Each webhook has {ctx.settings.alert_timeout_seconds:g} s to answer. Deliveries are "
               "at-least-once: a receiver may see a repeat (same X-Console-Delivery header) after a console stops "
               "mid-send. When a condition clears, each webhook that had its firing notice gets a resolved one, "
               "sent after the firing one.")
else:
    st.caption("No deliveries yet.")
