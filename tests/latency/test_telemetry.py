"""The Prometheus endpoint: served over real HTTP from its own registry, parsed with prometheus_client's parser."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from console.services import telemetry
from console.settings import Settings
from engine.types import EngineHealth, GenerationResult
from tests.conftest import console_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _result(ttft: float, itl: float, e2e: float, queue: float, *, prompt: int = 10, output: int = 20,
            version: str = "v1") -> GenerationResult:
    return GenerationResult(request_id="r", model_version=version, text="", finish_reason="length",
                            prompt_tokens=prompt, output_tokens=output, queue_s=queue, ttft_s=ttft, mean_itl_s=itl,
                            e2e_s=e2e, aborted=False)


class ScriptedHost:
    def __init__(self, health: EngineHealth) -> None:
        self.value = health

    def health(self) -> EngineHealth:
        return self.value


@pytest.fixture
def endpoint(tmp_path: Path):
    """A fresh Telemetry served on a free port with the default bind address."""
    tel = telemetry.Telemetry()
    settings = Settings.from_env(console_env(tmp_path, LLM_CONSOLE_METRICS_PORT=str(_free_port())))
    served = telemetry.start_endpoint(settings, telemetry=tel)
    assert served is not None
    yield tel, served
    served.stop()


def _scrape(url: str) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from the endpoint, parsed by prometheus_client."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def _labels(**labels: str) -> tuple:
    return tuple(sorted(labels.items()))


def test_histograms_and_counters_over_http_match_the_exchanges_observed(endpoint) -> None:
    tel, served = endpoint
    observe = lambda **kw: telemetry.observe_exchange(telemetry=tel, **kw)  # noqa: E731
    observe(model_version="v1", status="ok", result=_result(0.1, 0.02, 1.0, 0.01), prompt_action="allow",
            output_action="allow")
    observe(model_version="v1", status="ok", result=_result(0.3, 0.04, 2.0, 0.03), prompt_action="flag",
            output_action="allow")
    observe(model_version="v1", status="aborted", result=_result(0.2, 0.03, 0.5, 0.02, output=5),
            output_action="flag")
    observe(model_version=None, status="blocked", prompt_action="block")
    observe(model_version="v1", status="ok", result=_result(4.0, 0.5, 9.0, 3.0), synthetic=True)
    observe(model_version="v2", status="error")

    m = _scrape(served.url)
    real = _labels(model_version="v1", traffic="real")
    ttft = "llm_console_time_to_first_token_seconds"
    assert m[f"{ttft}_count"][real] == 3
    assert m[f"{ttft}_sum"][real] == pytest.approx(0.6)
    assert m[f"{ttft}_bucket"][_labels(model_version="v1", traffic="real", le="0.15")] == 1
    assert m[f"{ttft}_bucket"][_labels(model_version="v1", traffic="real", le="0.3")] == 3
    assert m[f"{ttft}_bucket"][_labels(model_version="v1", traffic="real", le="+Inf")] == 3
    assert m["llm_console_e2e_request_latency_seconds_sum"][real] == pytest.approx(3.5)
    assert m["llm_console_inter_token_latency_seconds_sum"][real] == pytest.approx(0.09)
    assert m["llm_console_request_queue_time_seconds_count"][real] == 3
    assert m["llm_console_request_queue_time_seconds_sum"][real] == pytest.approx(0.06)
    assert m["llm_console_output_tokens_total"][real] == 45
    assert m["llm_console_prompt_tokens_total"][real] == 30

    synthetic = _labels(model_version="v1", traffic="synthetic")
    assert m[f"{ttft}_count"][synthetic] == 1 and m[f"{ttft}_sum"][synthetic] == pytest.approx(4.0)

    requests = m["llm_console_requests_total"]
    assert requests[_labels(model_version="v1", status="ok", traffic="real")] == 2
    assert requests[_labels(model_version="v1", status="aborted", traffic="real")] == 1
    assert requests[_labels(model_version="none", status="blocked", traffic="real")] == 1
    assert requests[_labels(model_version="v1", status="ok", traffic="synthetic")] == 1
    assert requests[_labels(model_version="v2", status="error", traffic="real")] == 1
    # Flagged = the policy flagged or blocked (db.flags): the blocked prompt is flagged too.
    flagged = m["llm_console_flagged_total"]
    assert flagged == {_labels(model_version="v1", direction="prompt", traffic="real"): 1,
                       _labels(model_version="v1", direction="output", traffic="real"): 1,
                       _labels(model_version="none", direction="prompt", traffic="real"): 1}
    assert m["llm_console_flagged_exchanges_total"] == {real: 2, _labels(model_version="none", traffic="real"): 1}
    assert m["llm_console_blocked_total"] == {_labels(model_version="none", direction="prompt", traffic="real"): 1}
    # A request that never reached the engine adds no latency observation.
    assert _labels(model_version="v2", traffic="real") not in m[f"{ttft}_count"]


def test_engine_gauges_come_from_the_hosts_health_at_each_scrape(endpoint) -> None:
    tel, served = endpoint
    host = ScriptedHost(EngineHealth("ready", "v1", running=3, waiting=2, kv_cache_usage=0.4, preemptions_total=7,
                                     prompt_tokens_total=900, generation_tokens_total=1200,
                                     generation_tokens_per_s=55.5))
    telemetry.watch_host(host, telemetry=tel)  # type: ignore[arg-type]
    m = _scrape(served.url)
    v1 = _labels(model_version="v1")
    assert m["llm_console_engine_running_requests"][v1] == 3
    assert m["llm_console_engine_waiting_requests"][v1] == 2
    assert m["llm_console_engine_kv_cache_usage_ratio"][v1] == pytest.approx(0.4)
    assert m["llm_console_engine_preemptions_total"][v1] == 7
    assert m["llm_console_engine_generation_tokens_total"][v1] == 1200
    assert m["llm_console_engine_generation_tokens_per_second"][v1] == pytest.approx(55.5)
    assert m["llm_console_engine_ready"][_labels(model_version="v1", state="ready")] == 1
    host.value = EngineHealth("dead", "v1", error="boom")
    m = _scrape(served.url)
    assert m["llm_console_engine_ready"][_labels(model_version="v1", state="dead")] == 0
    assert m["llm_console_engine_running_requests"][v1] == 0


def test_the_endpoint_serves_only_the_consoles_registry(endpoint) -> None:
    from prometheus_client import REGISTRY, Counter

    tel, served = endpoint
    stray = Counter("test_global_registry_stray", "registered globally, as vLLM registers its metrics", [],
                    registry=REGISTRY)
    try:
        stray.inc()
        names = set(_scrape(served.url))
    finally:
        REGISTRY.unregister(stray)
    assert "test_global_registry_stray_total" not in names
    assert not any(n.startswith(("python_", "process_", "vllm")) for n in names)


def test_the_endpoint_binds_to_localhost_by_default(endpoint) -> None:
    _, served = endpoint
    assert served.address[0] == "127.0.0.1"
    assert served.url.startswith("http://127.0.0.1:")


def test_the_endpoint_is_off_by_default(tmp_path: Path) -> None:
    settings = Settings.from_env(console_env(tmp_path))
    assert settings.metrics_port == 0 and settings.metrics_bind == "127.0.0.1"
    assert telemetry.start_endpoint(settings, telemetry=telemetry.Telemetry()) is None


def test_a_port_in_use_leaves_the_console_running_without_metrics(tmp_path: Path, caplog) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings.from_env(console_env(tmp_path, LLM_CONSOLE_METRICS_PORT=str(port)))
        assert telemetry.start_endpoint(settings, telemetry=telemetry.Telemetry()) is None
    assert "cannot serve Prometheus metrics" in caplog.text


def test_a_bad_port_setting_names_the_variable(tmp_path: Path) -> None:
    from console.settings import SettingsError

    with pytest.raises(SettingsError, match="LLM_CONSOLE_METRICS_PORT"):
        Settings.from_env(console_env(tmp_path, LLM_CONSOLE_METRICS_PORT="70000"))


def test_observing_never_raises_and_counts_an_unknown_status_as_other() -> None:
    tel = telemetry.Telemetry()
    telemetry.observe_exchange(model_version="v1", status="weird", telemetry=tel)
    assert tel.registry.get_sample_value("llm_console_requests_total",
                                         {"model_version": "v1", "status": "other", "traffic": "real"}) == 1

    class Broken(telemetry.Telemetry):
        def observe(self, **kwargs) -> None:
            raise RuntimeError("bug")

    telemetry.observe_exchange(model_version="v1", status="ok", telemetry=Broken())  # logged, not raised
