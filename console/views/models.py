"""Admin: registered model versions and their aliases, serving one, restarting the engine, registering.

The page shows what is served and the versions; each tab is a module of its own: Serve and Restart
(``models_serving``), Aliases and retirement and History (``models_aliases``), Register (``models_register``)."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from console import ui
from console.services import demo_builds, registry
from console.services import serving as serving_svc
from console.textsafe import escape_markdown
from console.views import models_aliases, models_register, models_serving

principal = ui.require_page("models")
ctx = ui.app_context()
state = ui.session().models

st.title("Model versions")
if state.flash:
    st.success(escape_markdown(state.flash))
    state.flash = None
ui.emergency_warnings(ctx, principal)


@st.fragment(run_every=3)
def _serving() -> None:
    serving = serving_svc.serving_status(ctx)
    line = f"**Serving:** {escape_markdown(serving.model_version or 'none')}"
    if serving.state != "none":
        line += f" · {escape_markdown(serving.state)}"
    if serving.switching_to:
        line += f" · switching to **{escape_markdown(serving.switching_to)}**"
    st.markdown(line)
    if serving.state == "loading":
        st.progress(serving.progress, text=escape_markdown(serving.message))
    if serving.error:
        st.error(escape_markdown(serving.error))
    problem = serving_svc.last_switch_problem(ctx)
    if problem is not None:
        st.warning(f"The last {problem.action} to {escape_markdown(problem.version or '?')} failed at "
                   f"{problem.at:%Y-%m-%d %H:%M} UTC: {escape_markdown(problem.error)}. Retry it in the Serve tab, "
                   "or request the promotion of another version.")


_serving()

building_at_start = {b.name for b in ui.call(demo_builds.demo_build_status, ctx, principal) or []
                     if b.state == "building"}


@st.fragment(run_every=3)
def _building() -> None:
    builds = ui.call(demo_builds.demo_build_status, ctx, principal) or []
    now_building = {b.name for b in builds if b.state == "building"}
    if building_at_start - now_building:  # a build finished (or stopped): show the table with it registered
        st.rerun(scope="app")
    for b in builds:
        name = escape_markdown(b.name)
        if b.state == "building":
            st.progress(b.fraction, text=f"**{name}** · building in the background ({b.fraction:.0%}): "
                                         f"{escape_markdown(b.message)}. It is registered when done.")
        elif b.state == "failed":
            st.error(f"Building **{name}** failed: {escape_markdown(b.message)}. See demo-build.log in the data "
                     "directory; the next `llm-console run` tries again.")
        else:
            st.warning(f"Building **{name}** stopped at {b.fraction:.0%} (the console was stopped); the next "
                       "`llm-console run` continues it, or run `llm-console init --wait-for-all`.")


_building()

versions = ui.call(registry.list_versions, ctx, principal) or []
protected = ui.call(registry.protected_aliases, ctx, principal) or []
locked = {p.alias for p in protected}
st.dataframe(
    pd.DataFrame([{"name": v.name, "stage": v.stage,
                   "aliases": ", ".join(a + (" (protected: needs a promotion)" if a in locked else "")
                                        for a in v.aliases),
                   "backend": registry.BACKEND_LABELS.get(v.backend, v.backend), "source": v.source,
                   "servers": ", ".join(v.server_urls), "served model": v.server_model or "",
                   "revision": v.revision or "", "dtype": v.dtype or ("" if v.backend == "server" else "auto"),
                   "quantization": v.quantization or "",
                   "max context (tokens)": "" if v.max_model_len is None else f"{v.max_model_len:,}",
                   "engine args": json.dumps(v.engine_args) if v.engine_args else "",
                   "LoRA on": v.base or "", "fingerprint": (v.fingerprint or "")[:12], "registered": v.created_at,
                   "notes": v.description or ""} for v in versions]),
    hide_index=True, width="stretch", key="versions_table",
)
servable = [v.name for v in versions if not v.retired]
held = {p.alias: p.version for p in protected if p.version is not None}
production = held.get("production")
if held:
    st.markdown("**Protected aliases** move only through an approved promotion (one admin asks, another "
                "approves): " + ", ".join(f"`{escape_markdown(a)}` → {escape_markdown(v)}" for a, v in held.items()))
    ui.page_link("promotions", "Request a promotion on the Promotions page")

serve_tab, restart_tab, alias_tab, register_tab, history_tab = st.tabs(
    ["Serve", "Restart engine", "Aliases and retirement", "Register", "History"])

with serve_tab:
    models_serving.serve_tab(ctx, principal, state, servable, production)
with restart_tab:
    models_serving.restart_tab(ctx, principal, state)
with alias_tab:
    models_aliases.aliases_tab(ctx, principal, state, versions, held)
with register_tab:
    models_register.register_tab(ctx, principal, state, versions)
with history_tab:
    models_aliases.history_tab(ctx, principal)
