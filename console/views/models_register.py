"""The Models page's Register tab: a version from a local directory or a hub id, or a LoRA adapter on a
registered base version."""

from __future__ import annotations

import streamlit as st

from console import ui
from console.services import registry
from console.services.access import Principal
from console.services.context import AppContext
from console.services.registry import ModelVersionView
from console.ui import ModelsPageState


def register_tab(ctx: AppContext, principal: Principal, state: ModelsPageState,
                 versions: list[ModelVersionView]) -> None:
    """The registration form; a registered version's fingerprint is flashed on the next run."""
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
