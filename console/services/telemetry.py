"""Prometheus metrics of a console process: latency histograms, request/flag/block counters and engine gauges.

Off by default. With ``LLM_CONSOLE_METRICS_PORT`` set, each console process serves ``/metrics`` on that port
(bound to ``LLM_CONSOLE_METRICS_BIND``, 127.0.0.1 unless told otherwise) from its own ``CollectorRegistry``:
vLLM registers its metrics in prometheus_client's global registry, and the console's are kept apart from them.

- The chat service calls :func:`observe_exchange` once per finished exchange; it never raises.
- Synthetic traffic (load tests from the console) is counted too, labelled ``traffic="synthetic"`` (real chats
  are ``traffic="real"``), so a dashboard filters it out with ``{traffic="real"}`` and a load test can be watched.
- The engine gauges are read from :meth:`engine.host.EngineHost.health` at each scrape (a cheap read of what the
  engine thread recorded; it never calls into vLLM).
- On the server backends, each vLLM server's gauges (``llm_console_server_*``) carry a ``server`` label (its
  base URL) besides ``model_version``: whether it answers, its running and waiting requests, KV-cache use, token
  rates and mean queue time, from its ``/health`` and ``/metrics`` as the engine client last read them.

Every series carries ``model_version`` (the version that answered; ``none`` when no model did, e.g. a blocked
prompt). The inter-token latency histogram takes one observation per request: its mean inter-token latency.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from console.settings import Settings
from db import flags
from engine.types import GenerationResult, ServerHealth

if TYPE_CHECKING:
    from engine.client import EngineClient as EngineHost  # any engine client: only health() is read

logger = logging.getLogger(__name__)

PREFIX = "llm_console"
# Seconds. Time to first token, end to end and queue time on a CPU reach tens of seconds under load.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5,
                   10.0, 20.0, 40.0, 80.0, 160.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
               2.5, 5.0)
STATUSES = ("ok", "error", "aborted", "blocked", "interrupted")  # any other status is counted as "other"
LABELS = ("model_version", "traffic")


class _EngineCollector(Collector):
    """Engine gauges, read from the host's health at each scrape."""

    def __init__(self, host: Callable[[], EngineHost | None]) -> None:
        self._host = host

    def collect(self) -> Iterator[Any]:
        host = self._host()
        if host is None:
            return
        try:
            health = host.health()
        except Exception:  # a scrape must not take the endpoint down
            logger.exception("reading the engine's health for /metrics failed")
            return
        version = health.model_version or "none"
        ready = GaugeMetricFamily(f"{PREFIX}_engine_ready", "1 when the engine answers requests, else 0.",
                                  labels=["model_version", "state"])
        ready.add_metric([version, health.state], 1.0 if health.state == "ready" else 0.0)
        yield ready
        gauges = (
            ("engine_running_requests", "Requests in the engine's running batch.", health.running),
            ("engine_waiting_requests", "Requests waiting in the engine's queue.", health.waiting),
            ("engine_kv_cache_usage_ratio", "Share of the KV-cache blocks in use (0-1).", health.kv_cache_usage),
            ("engine_prompt_tokens_per_second", "Prompt tokens processed per second over the last seconds.",
             health.prompt_tokens_per_s),
            ("engine_generation_tokens_per_second", "Tokens generated per second over the last seconds.",
             health.generation_tokens_per_s),
        )
        for name, help_text, value in gauges:
            family = GaugeMetricFamily(f"{PREFIX}_{name}", help_text, labels=["model_version"])
            family.add_metric([version], float(value))
            yield family
        counters = (
            ("engine_preemptions", "Requests the engine preempted (KV cache full) since it started.",
             health.preemptions_total),
            ("engine_prompt_tokens", "Prompt tokens the engine processed since it started.",
             health.prompt_tokens_total),
            ("engine_generation_tokens", "Tokens the engine generated since it started.",
             health.generation_tokens_total),
        )
        for name, help_text, value in counters:
            counter = CounterMetricFamily(f"{PREFIX}_{name}", help_text, labels=["model_version"])
            counter.add_metric([version], float(value))
            yield counter
        if health.servers:
            yield from _server_families(version, health.servers)


def _server_families(version: str, servers: tuple[ServerHealth, ...]) -> Iterator[Any]:
    """Per-server gauges, labelled ``model_version`` and ``server`` (the base URL)."""
    labels = ["model_version", "server"]
    up = GaugeMetricFamily(f"{PREFIX}_server_ready", "1 when the vLLM server answers /health, else 0.",
                           labels=[*labels, "state"])
    for server in servers:
        up.add_metric([version, server.url, server.state], 1.0 if server.state == "ready" else 0.0)
    yield up
    gauges: tuple[tuple[str, str, Callable[[ServerHealth], float | None]], ...] = (
        ("server_running_requests", "Requests in the vLLM server's running batch.", lambda h: h.running),
        ("server_waiting_requests", "Requests waiting in the vLLM server's queue.", lambda h: h.waiting),
        ("server_kv_cache_usage_ratio", "Share of the vLLM server's KV-cache blocks in use (0-1).",
         lambda h: h.kv_cache_usage),
        ("server_prompt_tokens_per_second", "Prompt tokens the vLLM server processed per second, recently.",
         lambda h: h.prompt_tokens_per_s),
        ("server_generation_tokens_per_second", "Tokens the vLLM server generated per second, recently.",
         lambda h: h.generation_tokens_per_s),
        ("server_queue_time_seconds", "Mean time requests waited in the vLLM server's queue, recently (absent "
         "when none finished).", lambda h: h.queue_s_mean),
    )
    for name, help_text, read in gauges:
        family = GaugeMetricFamily(f"{PREFIX}_{name}", help_text, labels=labels)
        for server in servers:
            value = read(server)
            if value is not None:
                family.add_metric([version, server.url], float(value))
        yield family


class Telemetry:
    """The metrics of one console process, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds",
                              "Time from the engine queueing a request to its first token.", LABELS,
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram(f"{PREFIX}_inter_token_latency_seconds",
                             "Mean time between two output tokens, one observation per request.", LABELS,
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram(f"{PREFIX}_e2e_request_latency_seconds",
                             "Time from the engine queueing a request to its last token.", LABELS,
                             buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram(f"{PREFIX}_request_queue_time_seconds",
                               "Time a request waited in the engine's queue before it was scheduled.", LABELS,
                               buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter(f"{PREFIX}_requests", "Chat exchanges by how they ended.",
                                ["model_version", "status", "traffic"], registry=r)
        self.flagged = Counter(f"{PREFIX}_flagged", "Exchanges whose prompt or output the safety policy flagged or "
                               "blocked, by direction (an exchange flagged both ways counts in both).",
                               ["model_version", "direction", "traffic"], registry=r)
        self.flagged_exchanges = Counter(f"{PREFIX}_flagged_exchanges", "Exchanges the safety policy flagged or "
                                         "blocked (prompt or output), each counted once.", LABELS, registry=r)
        self.blocked = Counter(f"{PREFIX}_blocked", "Exchanges the safety policy blocked, by direction.",
                               ["model_version", "direction", "traffic"], registry=r)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens of answered exchanges.", LABELS,
                                     registry=r)
        self.output_tokens = Counter(f"{PREFIX}_output_tokens", "Output tokens of answered exchanges.", LABELS,
                                     registry=r)
        self._host: Callable[[], EngineHost | None] = lambda: None
        self.registry.register(_EngineCollector(lambda: self._host()))

    def watch_host(self, host_factory: Callable[[], EngineHost | None]) -> None:
        """Export the engine gauges of the host ``host_factory`` returns at each scrape (none when it is None)."""
        self._host = host_factory

    def observe(self, *, model_version: str | None, status: str, result: GenerationResult | None = None,
                prompt_action: str | None = None, output_action: str | None = None,
                synthetic: bool = False) -> None:
        version = model_version or "none"
        traffic = "synthetic" if synthetic else "real"
        self.requests.labels(version, status if status in STATUSES else "other", traffic).inc()
        # Flagged as db.flags defines it (flag or block), the word's one meaning; blocked is the part that blocked.
        for direction, action in (("prompt", prompt_action), ("output", output_action)):
            if flags.action_flags(action):
                self.flagged.labels(version, direction, traffic).inc()
            if action == "block":
                self.blocked.labels(version, direction, traffic).inc()
        if flags.is_flagged(prompt_action, output_action):
            self.flagged_exchanges.labels(version, traffic).inc()
        if result is None:
            return
        for histogram, seconds in ((self.ttft, result.ttft_s), (self.itl, result.mean_itl_s),
                                   (self.e2e, result.e2e_s), (self.queue, result.queue_s)):
            if seconds is not None and seconds >= 0:
                histogram.labels(version, traffic).observe(seconds)
        if result.prompt_tokens:
            self.prompt_tokens.labels(version, traffic).inc(result.prompt_tokens)
        if result.output_tokens:
            self.output_tokens.labels(version, traffic).inc(result.output_tokens)

    def serve(self, port: int, bind: str = "127.0.0.1") -> MetricsEndpoint:
        """Serve ``/metrics`` on ``bind:port`` from a daemon thread (port 0: any free port). Raises OSError."""
        server, thread = start_http_server(port, addr=bind, registry=self.registry)
        return MetricsEndpoint(server, thread)


@dataclass
class MetricsEndpoint:
    """A running ``/metrics`` server."""

    server: Any  # wsgiref WSGIServer
    thread: threading.Thread

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# The process's metrics. Tests make their own Telemetry and pass it as ``telemetry=``.
TELEMETRY = Telemetry()


def observe_exchange(*, model_version: str | None, status: str, result: GenerationResult | None = None,
                     prompt_action: str | None = None, output_action: str | None = None, synthetic: bool = False,
                     telemetry: Telemetry | None = None) -> None:
    """Count one finished exchange: its status, safety actions and (when the engine answered) its timings.

    Call it once per exchange when it ends, stored or not. Never raises: metrics must not break a chat.
    """
    try:
        (telemetry or TELEMETRY).observe(model_version=model_version, status=status, result=result,
                                         prompt_action=prompt_action, output_action=output_action,
                                         synthetic=synthetic)
    except Exception:
        logger.exception("recording an exchange's metrics failed")


def watch_host(host: EngineHost | None, *, telemetry: Telemetry | None = None) -> None:
    """Export ``host``'s engine gauges from now on."""
    (telemetry or TELEMETRY).watch_host(lambda: host)


def start_endpoint(settings: Settings, *, host: EngineHost | None = None,
                   telemetry: Telemetry | None = None) -> MetricsEndpoint | None:
    """Start ``/metrics`` as the settings say: None when ``metrics_port`` is 0 (off) or the port cannot be had
    (logged; the console runs on without it)."""
    if settings.metrics_port == 0:
        return None
    target = telemetry or TELEMETRY
    if host is not None:
        target.watch_host(lambda: host)
    try:
        endpoint = target.serve(settings.metrics_port, settings.metrics_bind)
    except OSError as exc:
        logger.error("cannot serve Prometheus metrics on %s:%d: %s", settings.metrics_bind, settings.metrics_port,
                     exc)
        return None
    logger.info("Prometheus metrics at %s", endpoint.url)
    return endpoint
