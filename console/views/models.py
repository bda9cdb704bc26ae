"""Admin: registered model versions and their aliases, serving one, restarting the engine, registering."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from console import ui
from console.services import demo_builds, registry
from console.services import serving as serving_svc
from console.textsafe import escape_markdown

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
                                        for a in v.aliases), "source": v.source,
                   "revision": v.revision or "", "dtype": v.dtype or "auto", "quantization": v.quantization or "",
                   "max context (tokens)": v.max_model_len,
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
    if production is None:
        with st.form(f"serve_form_{state.round}"):
            st.caption("No version holds production yet: the first version may be served by one admin. From then "
                       "on, production moves only through an approved promotion.")
            name = st.selectbox("Version", servable, index=None, key=f"serve_version_{state.round}")
            reason = st.text_input("Reason (recorded in the audit log)", key=f"serve_reason_{state.round}",
                                   max_chars=1000)
            if st.form_submit_button("Serve this version", type="primary"):
                if name is None:
                    st.error("Choose a version to serve.")
                elif ui.call(serving_svc.serve, ctx, principal, name, reason) is not None:
                    state.flash = f"{name} now holds production; the console is switching to it."
                    state.round += 1
                    st.rerun()
    else:
        st.info(f"Production ({escape_markdown(production)}) is protected: moving it to another version needs an "
                "approved promotion (one admin asks, another approves). In an emergency, one admin may roll it "
                "back to the version that held it just before, on the Promotions page.", icon=":material/lock:")
        ui.page_link("promotions", "Request a promotion or roll back on the Promotions page")
        failed = serving_svc.last_switch_problem(ctx)
        if failed is not None and failed.version == production:
            with st.form(f"retry_form_{state.round}"):
                st.caption(f"The switch to {escape_markdown(production)} failed; retrying loads it again (it "
                           "moves nothing).")
                reason = st.text_input("Reason (recorded in the audit log)", key=f"retry_reason_{state.round}",
                                       max_chars=1000)
                if st.form_submit_button(f"Retry the switch to {production}"):
                    if ui.call(serving_svc.serve, ctx, principal, production, reason) is not None:
                        state.flash = f"Retrying the switch to {production}."
                        state.round += 1
                        st.rerun()

with restart_tab, st.form(f"restart_form_{state.round}"):
    st.caption("Restarts the engine of the version being served (for example after it stopped working). "
               "Answers in progress are cut; new chats wait for the engine to be back.")
    reason = st.text_input("Reason (recorded in the audit log)", key=f"restart_reason_{state.round}", max_chars=1000)
    if st.form_submit_button("Restart the engine"):
        if ui.call(serving_svc.request_restart, ctx, principal, reason) is not None:
            state.flash = "Restart requested; the engine restarts within seconds."
            state.round += 1
            st.rerun()

with alias_tab:
    st.caption("Aliases other versions point at freely. A protected alias that a version holds moves only through "
               "an approved promotion" + (f" ({', '.join(held)})" if held else "") + ".")
    with st.form(f"alias_form_{state.round}"):
        name = st.selectbox("Version", servable, index=None, key=f"alias_version_{state.round}")
        alias = st.text_input("Alias", key=f"alias_name_{state.round}", placeholder="staging, candidate, ...",
                              max_chars=60)
        reason = st.text_input("Reason", key=f"alias_reason_{state.round}", max_chars=1000)
        if st.form_submit_button("Point the alias at this version"):
            if name is None:
                st.error("Choose a version.")
            elif ui.call(registry.set_alias, ctx, principal, name, alias, reason) is not None:
                state.flash = f"{alias.strip().lower()} now points at {name}."
                state.round += 1
                st.rerun()
    with st.form(f"protect_form_{state.round}"):
        st.caption("Protecting an alias is recorded in the audit log. It cannot be undone on this page: only on the "
                   "server, with `llm-console model protect ALIAS --off --break-glass REASON`, which every admin "
                   "sees until another admin acknowledges it.")
        alias = st.text_input("Alias to protect", key=f"protect_alias_{state.round}", max_chars=60,
                              placeholder="staging")
        reason = st.text_input("Reason", key=f"protect_reason_{state.round}", max_chars=1000)
        if st.form_submit_button("Protect this alias"):
            if ui.call(registry.protect_alias, ctx, principal, alias, reason) is not None:
                state.flash = f"{alias.strip().lower()} is protected: it now moves only through a promotion."
                state.round += 1
                st.rerun()
    # A version holding a protected alias is not offered: retiring it would free the alias for one person.
    retirable = [v.name for v in versions if not v.retired and v.name not in held.values()]
    with st.form(f"retire_form_{state.round}"):
        name = st.selectbox("Version to retire", retirable, index=None, key=f"retire_version_{state.round}")
        reason = st.text_input("Reason", key=f"retire_reason_{state.round}", max_chars=1000)
        if st.form_submit_button("Retire"):
            if name is None:
                st.error("Choose a version to retire.")
            elif ui.call(registry.retire, ctx, principal, name, reason) is not None:
                state.flash = f"{name} is retired."
                state.round += 1
                st.rerun()

with register_tab, st.form(f"register_model_{state.round}"):
    name = st.text_input("Version name", key=f"model_name_{state.round}", placeholder="llama-3.1-8b-instruct-v1")
    source = st.text_input("Source", key=f"model_source_{state.round}",
                           placeholder="meta-llama/Llama-3.1-8B-Instruct or /models/my-model")
    revision = st.text_input("Revision (hub commit or tag; pin one for a hub id)", key=f"model_revision_{state.round}")
    dtype = st.selectbox("dtype", registry.DTYPES, key=f"model_dtype_{state.round}")
    quantization = st.text_input("Quantization (vLLM method, e.g. awq, gptq, fp8; empty for none)",
                                 key=f"model_quantization_{state.round}")
    max_len = st.number_input("Max context (tokens, 0 = the model's own)", min_value=0, value=0, step=256,
                              key=f"model_max_len_{state.round}")
    engine_args = st.text_area("vLLM engine arguments (JSON)", key=f"model_engine_args_{state.round}",
                               placeholder='{"tensor_parallel_size": 2, "gpu_memory_utilization": 0.9}',
                               help=registry.ENGINE_ARGS_HELP)
    base = st.selectbox("Base version (only for a LoRA adapter: Source is then the adapter's directory)",
                        [v.name for v in versions if not v.retired and v.base is None], index=None,
                        key=f"model_base_{state.round}")
    description = st.text_input("Notes", key=f"model_description_{state.round}")
    if st.form_submit_button("Register", type="primary"):
        created = ui.call(registry.register, ctx, principal, name=name, source=source, revision=revision,
                          dtype=dtype, max_model_len=int(max_len) or None, engine_args=engine_args,
                          description=description, quantization=quantization, base=base)
        if created:
            state.flash = f"Registered {created.name} (fingerprint {(created.fingerprint or 'none: hub id')[:12]})."
            state.round += 1
            st.rerun()

with history_tab:
    moves = ui.call(registry.alias_history, ctx, principal) or []
    if not moves:
        st.info("No alias has moved yet.")
    else:
        st.dataframe(pd.DataFrame([{"when": m.created_at, "alias": m.alias, "from": m.from_version or "",
                                    "to": m.to_version or "(removed)", "by": m.actor, "reason": m.reason}
                                   for m in moves]), hide_index=True, width="stretch", key="alias_history")
