"""The Models page's Register tab: a version from a local directory or a hub id (in-process, or on a vLLM server
the console starts), a LoRA adapter on a registered base version, or a version vLLM servers already serve."""

from __future__ import annotations

import streamlit as st

from console import ui
from console.services import registry
from console.services.access import Principal
from console.services.context import AppContext
from console.services.registry import ModelVersionView
from console.ui import ModelsPageState

_BACKEND_HELP = ("in-process: vLLM inside the console (the default). managed server: the console starts vLLM's "
                 "OpenAI-compatible server for the version on this machine, so a switch brings it up beside the "
                 "old one. vLLM server: servers (or a router) someone else runs already serve the model.")


def register_tab(ctx: AppContext, principal: Principal, state: ModelsPageState,
                 versions: list[ModelVersionView]) -> None:
    """The registration form (its fields follow the backend chosen above it); a registered version's
    fingerprint is flashed on the next run."""
    backend = st.radio("Backend", list(registry.BACKEND_LABELS), format_func=registry.BACKEND_LABELS.__getitem__,
                       horizontal=True, key=f"model_backend_{state.round}", help=_BACKEND_HELP)
    if backend == "server":
        _server_form(ctx, principal, state)
        return
    with st.form(f"register_model_{state.round}"):
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
                                   help=registry.ENGINE_ARGS_HELP + (" A managed server gets them as its flags."
                                                                     if backend == "managed-server" else ""))
        base = st.selectbox("Base version (only for a LoRA adapter: Source is then the adapter's directory; it is "
                            "served where its base is)",
                            [v.name for v in versions if not v.retired and v.base is None and v.backend != "server"],
                            index=None, key=f"model_base_{state.round}")
        description = st.text_input("Notes", key=f"model_description_{state.round}")
        if st.form_submit_button("Register", type="primary"):
            # In-process is the default: an adapter on a managed-server base is then served by the base's server.
            created = ui.call(registry.register, ctx, principal, name=name, source=source, revision=revision,
                              dtype=dtype, max_model_len=int(max_len) or None, engine_args=engine_args,
                              description=description, quantization=quantization, base=base,
                              backend=None if backend == "in-process" else backend)
            if created:
                _registered(state, created)


def _server_form(ctx: AppContext, principal: Principal, state: ModelsPageState) -> None:
    with st.form(f"register_server_{state.round}"):
        name = st.text_input("Version name", key=f"model_name_{state.round}", placeholder="llama-3.1-8b-instruct-v1")
        urls = st.text_area("Server base URLs (one a line)", key=f"model_server_urls_{state.round}",
                            placeholder="http://vllm-1:8000\nhttp://vllm-2:8000",
                            help="Each vLLM OpenAI-compatible server, or one router in front of several (at most "
                                 f"{registry.MAX_SERVER_URLS}); without /v1. Every one must answer and serve the model "
                                 "now. " + registry.SERVER_KEY_HELP)
        model = st.text_input("Served model name (empty = the version name)", key=f"model_server_model_{state.round}",
                              placeholder="the servers' --served-model-name",
                              help="The servers' engine arguments, dtype and max context are set where they start: "
                                   "the console records the max length and model path they report.")
        description = st.text_input("Notes", key=f"model_description_{state.round}")
        if st.form_submit_button("Register", type="primary"):
            created = ui.call(registry.register, ctx, principal, name=name, backend="server", server_urls=urls,
                              server_model=model, description=description)
            if created:
                _registered(state, created)


def _registered(state: ModelsPageState, created: ModelVersionView) -> None:
    label = registry.BACKEND_LABELS.get(created.backend, created.backend)
    state.flash = (f"Registered {created.name} ({label}, fingerprint "
                   f"{(created.fingerprint or 'none: hub id')[:12]}).")
    state.round += 1
    st.rerun()
