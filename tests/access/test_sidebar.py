"""The sidebar's model line reads the served version each time it is drawn, and draws itself again every few
seconds as a fragment (issue 19 item 9: it stayed on v1 for two minutes after v2 served, until the next click).

The fragment's own timer runs only in a browser: tests/e2e/test_e2e_bad_input.py watches a signed-in page's sidebar
follow a switch made elsewhere, without a click.
"""

from __future__ import annotations

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from console import resources, ui
from console.services.access import Principal
from engine.types import HostStatus
from tests.conftest import console_env

SESSION_KEY = "llm_console_session"


class _SwitchingHost:
    """A stand-in engine host at our own seam: the status the serving service reads, changed by the test."""

    def __init__(self, status: HostStatus) -> None:
        self.now = status

    def status(self) -> HostStatus:
        return self.now


def _sidebar() -> None:
    import streamlit as st

    from console import ui

    with st.sidebar:
        ui.live_model(st.session_state["llm_console_session"].principal)


@pytest.fixture
def host(tmp_path, monkeypatch, migrated_db_file, ctx):
    for key, value in console_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    fake = _SwitchingHost(HostStatus("ready", "support-demo-v1", "Ready."))
    monkeypatch.setattr(resources, "engine_host", lambda: fake)
    yield fake
    st.cache_resource.clear()


def test_the_sidebar_model_line_is_a_fragment_that_reads_the_version_served_now(host, make_user):
    assert ui.LIVE_MODEL_REFRESH_S <= 10
    principal: Principal = make_user("olivia", "operator")
    at = AppTest.from_function(_sidebar, default_timeout=60)
    at.session_state[SESSION_KEY] = ui.UiSession(principal=principal)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [c.value for c in at.sidebar.caption] == ["Live model: **support\\-demo\\-v1** · ready"]
    host.now = HostStatus("ready", "support-demo-v2", "Ready.", switching_to=None)
    at.run()
    assert [c.value for c in at.sidebar.caption] == ["Live model: **support\\-demo\\-v2** · ready"]
    host.now = HostStatus("loading", "support-demo-v1", "Loading.", switching_to="support-demo-v3")
    at.run()
    assert [c.value for c in at.sidebar.caption] == ["Live model: switching to **support\\-demo\\-v3**"]
    # A blue-green switch: the old version answers until the new one is up, and the line says so.
    host.now = HostStatus("ready", "support-demo-v2", "Switching.", switching_to="support-demo-v3")
    at.run()
    assert [c.value for c in at.sidebar.caption] == [
        "Live model: **support\\-demo\\-v2** · switching to **support\\-demo\\-v3**"]
