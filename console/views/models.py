"""Admin: registered model versions, the one being served, and registering a new version."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from console import ui
from console.services import models as models_svc
from console.textsafe import escape_markdown

principal = ui.require_page("models")
svc = ui.services()

st.title("Model versions")
host = svc.host
if host is not None:
    status = host.status()
    st.markdown(f"**Serving:** {escape_markdown(status.model_version or 'none')} · {escape_markdown(status.state)}")
    if status.error:
        st.error(status.error)

versions = ui.call(models_svc.list_versions, svc, principal) or []
st.dataframe(
    pd.DataFrame([{"name": v.name, "source": v.source, "revision": v.revision or "", "dtype": v.dtype or "auto",
                   "max context": v.max_model_len, "engine args": json.dumps(v.engine_args) if v.engine_args else "",
                   "registered": v.created_at, "description": v.description or ""} for v in versions]),
    hide_index=True, width="stretch",
)

st.subheader("Register a version")
with st.form("register_model", clear_on_submit=False):
    name = st.text_input("Version name", key="model_name", placeholder="llama-3.1-8b-instruct-v1")
    source = st.text_input("Source", key="model_source",
                           placeholder="meta-llama/Llama-3.1-8B-Instruct or /models/my-model")
    revision = st.text_input("Revision (hub commit or tag)", key="model_revision")
    dtype = st.selectbox("dtype", models_svc.DTYPES, key="model_dtype")
    max_len = st.number_input("Max context (tokens, 0 = the model's own)", min_value=0, value=0, step=256,
                              key="model_max_len")
    engine_args = st.text_area("vLLM engine arguments (JSON)", key="model_engine_args",
                               placeholder='{"tensor_parallel_size": 2, "gpu_memory_utilization": 0.9}')
    description = st.text_input("Description", key="model_description")
    if st.form_submit_button("Register", type="primary"):
        created = ui.call(models_svc.register, svc, principal, name=name, source=source, revision=revision,
                          dtype=dtype, max_model_len=int(max_len) or None, engine_args=engine_args,
                          description=description)
        if created:
            st.success(f"Registered {created.name}.")
