"""An :class:`~engine.client.EngineClient` for vLLM's OpenAI-compatible servers (backends ``server`` and
``managed-server``).

:class:`ServerEngineClient` talks HTTP (httpx) to one or more base URLs (``http://host:port``, no ``/v1``): vLLM
servers, or one router in front of them. What it uses of a server:

- ``GET /v1/models`` (:func:`probe`): the server answers, accepts the API key and serves the model under the name
  requests carry (``ModelSpec.model_on_server``), and its ``max_model_len``;
- ``POST /tokenize`` (vLLM's own; a router may not expose it, then the check is skipped): the prompt's token count
  under the served chat template, so a prompt the context cannot hold is refused with
  :class:`~engine.errors.PromptTooLongError` before anything is submitted, as in-process;
- ``POST /v1/chat/completions`` and ``/v1/completions`` with ``stream: true``: server-sent events parsed here; the
  request id travels as the ``X-Request-Id`` header and vLLM's ``request_id`` body field; closing the connection
  makes vLLM abort the request (that is how ``cancel`` works);
- ``GET /health`` (200 = ready) and ``GET /metrics`` (Prometheus text: ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``, ``vllm:num_preemptions_total``,
  ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``, ``vllm:request_success_total``,
  ``vllm:request_queue_time_seconds_{sum,count}``, ``process_start_time_seconds``, as vLLM 0.32 names them), for
  :meth:`ServerEngineClient.health` and the per-server :class:`~engine.types.ServerHealth`.

Timings are measured on the client's side (monotonic clock): ``ttft_s`` from sending the request to the first
non-empty text, ``e2e_s`` to the last chunk, ``mean_itl_s`` = (last text - first text) / (tokens - 1); token counts
come from the usage the server streams at the end (``stream_options.include_usage``). ``queue_s`` is None: a server
reports queue time only in aggregate (``ServerHealth.queue_s_mean``).

With several URLs each request goes to the one with the fewest of this client's requests in flight, skipping URLs
whose last check failed (tried again after ``health_interval_s``); a request whose connection is refused is tried
on the next URL once. The API key is sent as a bearer token and never shown: not in messages, logs or reprs.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import httpx

from engine.errors import (
    BadServerURL,
    EmptyPromptError,
    EngineDeadError,
    EngineError,
    EngineNotReadyError,
    NoChatTemplateError,
    PromptTooLongError,
    ServerUnavailableError,
)
from engine.stream import StreamBase
from engine.types import (
    ChatMessage,
    EngineErrorNote,
    EngineHealth,
    GenerationResult,
    HostStatus,
    ModelSpec,
    SamplingSettings,
    ServerHealth,
    ServerOptions,
)

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0  # /v1/models when registering or connecting
CHECK_TIMEOUT_S = 3.0  # /health, /metrics and /tokenize: small answers
CONNECT_TIMEOUT_S = 10.0
HEALTH_CACHE_S = 1.0  # health() answers from its last look for this long
MESSAGE_LIMIT = 300  # characters of a server's own error message kept in ours
MAX_ERRORS = 20

# The /metrics samples health() reads (vLLM 0.32 names; counters carry the _total suffix).
_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
_COUNTERS = ("vllm:num_preemptions_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
             "vllm:request_success_total", "vllm:request_queue_time_seconds_sum",
             "vllm:request_queue_time_seconds_count")
_OLD_KV_GAUGE = "vllm:gpu_cache_usage_perc"  # the name before vLLM 0.10
_START = "process_start_time_seconds"

# vLLM's 400 for a prompt the context cannot hold: "This model's maximum context length is 512 tokens. However,
# your prompt contains at least 513 input tokens, ..." (older: "However, you requested 600 tokens (...)").
_TOO_LONG = re.compile(r"maximum context length is (\d+) tokens.*?(?:contains at least|requested|has) (\d+)",
                       re.IGNORECASE | re.DOTALL)
# Other vLLM versions: "Input length (600) exceeds model's maximum context length (512)."
_INPUT_LENGTH = re.compile(r"input length \((\d+)\) exceeds .*?maximum context length \((\d+)\)", re.IGNORECASE)


def check_base_url(url: str) -> str:
    """A vLLM server's base URL, normalised: ``http(s)://host[:port][/path]`` without a trailing ``/`` or ``/v1``.

    Raises :class:`~engine.errors.BadServerURL` (a ``ValueError``) for anything else: another scheme, no host, a
    port that is not a number, a user name or password in it (give the API key as a setting instead), a query or a
    fragment. The message never repeats credentials.
    """
    text = str(url or "").strip()
    if not text:
        raise BadServerURL("The server URL is required.")
    if any(ch.isspace() or ord(ch) < 32 for ch in text):
        raise BadServerURL("The server URL must not contain spaces or control characters.")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise BadServerURL("The server URL has a malformed host or port.") from None
    if parts.username is not None or parts.password is not None:
        raise BadServerURL("The server URL must not carry a user name or password; set the server API key "
                           "instead.")
    shown = text if len(text) <= 100 else text[:100] + "..."
    if parts.scheme.lower() not in ("http", "https"):
        raise BadServerURL(f"The server URL must start with http:// or https://, got {shown}.")
    if not parts.hostname:
        raise BadServerURL(f"The server URL {shown} names no host.")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise BadServerURL(f"The server URL {shown} must not have a query (?...) or fragment (#...).")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3].rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc, path, "", ""))


@dataclass(frozen=True)
class ServerInfo:
    """What a server reported about the model it serves (``GET /v1/models``): ``model`` as requests name it,
    ``root`` (vLLM: the path or hub id it loaded), ``max_model_len``, and every model id it serves."""

    url: str
    model: str
    root: str | None
    max_model_len: int | None
    models: tuple[str, ...]


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _unreachable(url: str, exc: BaseException, timeout_s: float) -> ServerUnavailableError:
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return ServerUnavailableError(f"The vLLM server at {url} did not answer within {timeout_s:g} s.")
    if isinstance(exc, httpx.ConnectTimeout):
        return ServerUnavailableError(f"The vLLM server at {url} cannot be reached (the connection timed out).")
    if isinstance(exc, httpx.ConnectError):
        return ServerUnavailableError(f"The vLLM server at {url} cannot be reached (nothing answers there).")
    return ServerUnavailableError(f"The vLLM server at {url} cannot be reached ({type(exc).__name__}).")


def probe(url: str, model: str, *, api_key: str | None = None, timeout_s: float = PROBE_TIMEOUT_S,
          http: httpx.Client | None = None) -> ServerInfo:
    """Ask the server at ``url`` (``GET /v1/models``) whether it serves ``model``; its :class:`ServerInfo` if so.

    Raises :class:`~engine.errors.BadServerURL` for a malformed URL and
    :class:`~engine.errors.ServerUnavailableError`, whose message names the server, when nothing answers there,
    it does not answer within ``timeout_s``, it refuses the API key (HTTP 401/403), it is not a vLLM (OpenAI-
    compatible) server, or it serves other models ("serves X, Y; not Z"). ``http`` reuses a client's connections.
    """
    base = check_base_url(url)
    own = http is None
    client = httpx.Client() if http is None else http
    try:
        response = client.get(f"{base}/v1/models", headers=_auth(api_key), timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise _unreachable(base, exc, timeout_s) from None
    finally:
        if own:
            client.close()
    if response.status_code in (401, 403):
        if api_key:
            raise ServerUnavailableError(f"The vLLM server at {base} refused the API key (HTTP "
                                         f"{response.status_code}); check the server API key setting.")
        raise ServerUnavailableError(f"The vLLM server at {base} asks for an API key, and none is set (HTTP "
                                     f"{response.status_code}); set the server API key.")
    not_vllm = f"The server at {base} is not a vLLM (OpenAI-compatible) server: "
    if response.status_code != 200:
        raise ServerUnavailableError(not_vllm + f"it answered HTTP {response.status_code} to /v1/models.")
    try:
        entries = response.json()["data"]
        ids = [str(entry["id"]) for entry in entries]
    except (ValueError, KeyError, TypeError):
        raise ServerUnavailableError(not_vllm + "its /v1/models answer is not a model list.") from None
    if model not in ids:
        served = ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "") if ids else "no model"
        raise ServerUnavailableError(f"The vLLM server at {base} serves {served}; not {model}.")
    entry = entries[ids.index(model)]
    root = entry.get("root")
    length = entry.get("max_model_len")
    if length is None and entry.get("parent") in ids:  # a LoRA adapter: its base model's context
        length = entries[ids.index(entry["parent"])].get("max_model_len")
    return ServerInfo(url=base, model=model, root=str(root) if root is not None else None,
                      max_model_len=length if isinstance(length, int) and not isinstance(length, bool) else None,
                      models=tuple(ids))


def parse_metrics(text: str, model: str | None = None) -> dict[str, float]:
    """The /metrics samples :meth:`ServerEngineClient.health` uses, summed over vLLM's engines and finish reasons
    (the KV-cache gauge and the start time: the largest). When some samples carry ``model_name`` = ``model``, those
    with another ``model_name`` are left out (a router's metrics for several models); when none does (a LoRA
    adapter served on a base model that carries the label), all count."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = set(_GAUGES) | set(_COUNTERS) | {_OLD_KV_GAUGE, _START}
    samples: list[tuple[str, str | None, float]] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                name = "vllm:kv_cache_usage_perc" if sample.name == _OLD_KV_GAUGE else sample.name
                samples.append((name, sample.labels.get("model_name"), float(sample.value)))
    only = model if model is not None and any(label == model for _, label, _ in samples) else None
    values: dict[str, float] = {}
    for name, label, value in samples:
        if only is not None and label is not None and label != only:
            continue
        if name in ("vllm:kv_cache_usage_perc", _START):
            values[name] = max(values.get(name, 0.0), value)
        else:
            values[name] = values.get(name, 0.0) + value
    return values


def _server_message(response: httpx.Response, secret: str | None) -> str:
    """The server's own error message (OpenAI error JSON or plain text), on one line, shortened, with the API key
    (should a server ever echo it) blanked."""
    try:
        data = response.json()
        error = data.get("error") if isinstance(data, dict) else None
        message = error.get("message") if isinstance(error, dict) else error if isinstance(error, str) else None
        if message is None and isinstance(data, dict):
            message = data.get("message") or data.get("detail")
        text = str(message) if message is not None else response.text
    except ValueError:
        text = response.text
    return _clean(text, secret)


def _clean(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT] + "..."


class _ConnectFailed(Exception):
    """A connection to one server was refused or timed out before the request was sent: try the next one."""

    def __init__(self, error: ServerUnavailableError) -> None:
        super().__init__(str(error))
        self.error = error


class _Server:
    """One base URL and what this client knows of it (guarded by the client's lock)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.in_flight = 0
        self.ok: bool | None = None  # the last check's answer; None before the first
        self.checked = 0.0  # time.monotonic() of that check (or of the last request that reached it)
        self.error: str | None = None
        self.tokenize = True  # False once /tokenize turned out to be missing (a router)
        self.wrong_model = False  # the last probe found it serving other models
        self.sample: tuple[float, dict[str, float]] | None = None  # (time.time(), counters) of the last health()


class ServerStream(StreamBase):
    """One request answered by a vLLM server: an iterator of text deltas, then ``result`` (a
    :class:`~engine.client.ResponseStream`).

    ``cancel()``/``close()`` close the connection (vLLM aborts the request when its client goes away); so does
    dropping the stream unfinished. Iteration raises :class:`~engine.errors.EngineDeadError` when the server goes
    away mid-answer, another :class:`~engine.errors.EngineError` when it reports an error in the stream.
    """

    def __init__(self, client: ServerEngineClient, server: _Server, response: httpx.Response, request_id: str, *,
                 sent: float, prompt_tokens: int | None, chat: bool) -> None:
        self.request_id = request_id
        self.model_version = client.spec.name
        self.server = server.url
        self._client = client
        self._response = response
        self._lines = response.iter_lines()
        self._chat = chat
        self._sent = sent
        self._prompt_tokens = prompt_tokens
        self._parts: list[str] = []
        self._chunks = 0  # chunks that carried text (the token count when the server's usage never came)
        self._first_at: float | None = None
        self._last_text_at: float | None = None
        self._last_chunk_at: float | None = None
        self._usage: Mapping[str, Any] | None = None
        self._finish_reason: str | None = None
        self._cancelled = threading.Event()  # set by cancel(), from any thread
        self._result: GenerationResult | None = None
        self._lock = threading.Lock()
        # The finalizer holds the response and the client's release callable, never the stream, so an abandoned
        # stream is collected and its connection closed (the server then aborts the request).
        self._finalizer = weakref.finalize(self, _release, response, client.release, server)
        self._finalizer.atexit = False

    def __next__(self) -> str:
        while self._result is None:
            if self._cancelled.is_set():
                self._finish(aborted=True)
                break
            try:
                line = next(self._lines)
            except StopIteration:
                if self._cancelled.is_set():
                    continue
                if self._finish_reason is not None:  # the answer was complete; only [DONE] was missing
                    self._finish(aborted=False)
                    break
                self._fail(EngineDeadError(f"The vLLM server at {self.server} closed the connection before this "
                                           "answer finished."))
            except (httpx.HTTPError, OSError) as exc:
                if self._cancelled.is_set():
                    continue
                if isinstance(exc, httpx.TimeoutException):
                    self._fail(EngineDeadError(f"The vLLM server at {self.server} sent nothing for "
                                               f"{self._client.request_timeout_s:g} s; the answer was abandoned."))
                self._fail(EngineDeadError(f"The vLLM server at {self.server} went away before this answer "
                                           "finished."))
            delta = self._consume(line)
            if delta:
                return delta
        raise StopIteration

    def cancel(self) -> GenerationResult:
        """Abort the request (no-op once it ended) and return its result with what was generated."""
        if self._result is None:
            self.interrupt()
            self._finish(aborted=True)
        assert self._result is not None
        return self._result

    def interrupt(self) -> None:
        """Mark the request cancelled and shut its connection down, from any thread: a read blocked on it returns
        at once, the server sees the disconnect and aborts the request, and the next ``next()`` ends the stream."""
        self._cancelled.set()
        _shutdown_socket(self._response)

    # -- internals --

    def _consume(self, line: str) -> str:
        if not line.startswith("data:"):
            return ""  # blank separators, SSE comments
        payload = line[5:].strip()
        now = time.monotonic()
        self._last_chunk_at = now
        if payload == "[DONE]":
            self._finish(aborted=False)
            return ""
        try:
            data = json.loads(payload)
        except ValueError:
            return ""
        if not isinstance(data, dict):
            return ""
        if "error" in data:
            error = data["error"]
            message = error.get("message") if isinstance(error, dict) else error
            self._fail(EngineError(f"The vLLM server at {self.server} failed this request: "
                                   f"{_clean(str(message), self._client.api_key_for_scrub)}"))
        usage = data.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        choices = data.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return ""
        choice = choices[0]
        if choice.get("finish_reason") is not None:
            self._finish_reason = str(choice["finish_reason"])
        if self._chat:
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
        else:
            text = choice.get("text")
        if not text:
            return ""
        text = str(text)
        if self._first_at is None:
            self._first_at = now
        self._last_text_at = now
        self._chunks += 1
        self._parts.append(text)
        return text

    def _fail(self, error: EngineError) -> NoReturn:
        self._finish(aborted=True)
        self._client.note_error(str(error))
        raise error

    def _finish(self, *, aborted: bool) -> None:
        with self._lock:
            if self._result is not None:
                return
            self._finalizer()  # closes the connection (once) and releases the server's in-flight slot
            now = time.monotonic()
            usage = self._usage or {}
            completion = usage.get("completion_tokens")
            output_tokens = completion if isinstance(completion, int) and not aborted else self._chunks
            prompt = usage.get("prompt_tokens")
            prompt_tokens = prompt if isinstance(prompt, int) else (self._prompt_tokens or 0)
            first, last = self._first_at, self._last_text_at
            ttft_s = first - self._sent if first is not None else None
            if aborted or self._last_chunk_at is None:
                e2e_s: float | None = now - self._sent
            else:
                e2e_s = self._last_chunk_at - self._sent
            mean_itl_s = ((last - first) / (output_tokens - 1)
                          if output_tokens > 1 and first is not None and last is not None else None)
            self._result = GenerationResult(
                request_id=self.request_id, model_version=self.model_version, text="".join(self._parts),
                finish_reason="abort" if aborted else self._finish_reason, prompt_tokens=prompt_tokens,
                output_tokens=output_tokens, queue_s=None, ttft_s=ttft_s, mean_itl_s=mean_itl_s, e2e_s=e2e_s,
                aborted=aborted, server=self.server,
            )
        self._client.forget(self.request_id)
        logger.debug("request %s on %s finished: %d tokens, aborted=%s", self.request_id, self.server,
                     output_tokens, aborted)


def _shutdown_socket(response: httpx.Response) -> None:
    """Shut the response's TCP connection down (wakes a thread blocked reading it; the server sees the close)."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


def _release(response: httpx.Response, release: Callable[[_Server], None], server: _Server) -> None:
    try:
        response.close()
    except (httpx.HTTPError, OSError):
        pass
    release(server)


class ServerEngineClient:
    """One model version served by vLLM OpenAI-compatible servers; an :class:`~engine.client.EngineClient`, safe to
    share across threads. :meth:`connect` checks the servers first; the constructor does not."""

    def __init__(self, spec: ModelSpec, *, urls: Sequence[str] | None = None, api_key: str | None = None,
                 request_timeout_s: float = 600.0, health_interval_s: float = 2.0) -> None:
        given = list(spec.server_urls if urls is None else urls)
        if not given:
            raise BadServerURL("A server URL is required.")
        self.spec = spec
        self.request_timeout_s = request_timeout_s
        self.health_interval_s = health_interval_s
        self._servers = [_Server(url) for url in dict.fromkeys(check_base_url(url) for url in given)]
        self._api_key = api_key or None
        self._http = httpx.Client(
            timeout=httpx.Timeout(request_timeout_s, connect=min(CONNECT_TIMEOUT_S, request_timeout_s)),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self._lock = threading.Lock()  # guards the servers' state and _streams
        self._check_lock = threading.Lock()  # one round of /health checks at a time
        self._streams: weakref.WeakValueDictionary[str, ServerStream] = weakref.WeakValueDictionary()
        self._errors: deque[EngineErrorNote] = deque(maxlen=MAX_ERRORS)
        self._health: EngineHealth | None = None
        self._health_at = 0.0
        self._created = time.time()
        self._closed = False
        self.infos: dict[str, ServerInfo] = {}  # what each server reported at connect()

    def __repr__(self) -> str:
        return f"ServerEngineClient({self.spec.name!r}, urls={self.urls!r})"

    @classmethod
    def connect(cls, spec: ModelSpec, options: ServerOptions) -> ServerEngineClient:
        """A client of ``spec.server_urls`` with the installation's API key and request timeout, once at least
        one of them answers and serves ``spec.model_on_server``; ServerUnavailableError (naming every server and
        what went wrong) otherwise, BadServerURL for a malformed URL."""
        client = cls(spec, api_key=options.api_key, request_timeout_s=options.request_timeout_s)
        try:
            client.check_servers()
        except BaseException:
            client.shutdown()
            raise
        return client

    @property
    def urls(self) -> tuple[str, ...]:
        """The servers' base URLs, normalised."""
        return tuple(server.url for server in self._servers)

    @property
    def api_key_for_scrub(self) -> str | None:
        """The API key, only so messages can blank it should a server echo it (never shown)."""
        return self._api_key

    def check_servers(self, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, ServerInfo]:
        """Probe every server (``/v1/models``); return what those that serve the model reported, by URL.

        Servers that do not answer or serve other models are marked down (requests skip them until a later check
        finds them well). Raises ServerUnavailableError when none serves the model.
        """
        infos: dict[str, ServerInfo] = {}
        problems: list[str] = []
        for server in self._servers:
            try:
                info = probe(server.url, self.spec.model_on_server, api_key=self._api_key, timeout_s=timeout_s,
                             http=self._http)
            except ServerUnavailableError as exc:
                problems.append(str(exc))
                self._mark(server, ok=False, error=str(exc), wrong_model=" serves " in str(exc))
            else:
                infos[server.url] = info
                self._mark(server, ok=True)
        if not infos:
            raise ServerUnavailableError(f"No vLLM server serves {self.spec.name}: " + " ".join(problems))
        self.infos = infos
        return infos

    def retarget(self, urls: Sequence[str]) -> None:
        """Send new requests to ``urls`` from now on (a managed server that had to move to another port); requests
        in flight finish where they are."""
        servers = [_Server(url) for url in dict.fromkeys(check_base_url(url) for url in urls)]
        if not servers:
            raise BadServerURL("A server URL is required.")
        with self._lock:
            if [s.url for s in self._servers] != [s.url for s in servers]:
                self._servers = servers

    @property
    def max_model_len(self) -> int | None:
        """The context length the servers reported at :meth:`check_servers` (the smallest), if any."""
        lengths = [info.max_model_len for info in self.infos.values() if info.max_model_len]
        return min(lengths) if lengths else None

    # -- EngineClient --

    @property
    def serving(self) -> ModelSpec | None:
        """The version while at least one server answers; None otherwise or once shut down."""
        return self.spec if self.status().state == "ready" else None

    def status(self) -> HostStatus:
        """Ready while at least one server answered ``/health`` (looked at again after ``health_interval_s``);
        dead, with a message naming the servers, when none does; stopped once shut down."""
        name = self.spec.name
        if self._closed:
            return HostStatus("stopped", name, f"The connection to the vLLM server(s) of {name} has been shut down.")
        self._check_stale()
        with self._lock:
            ready = [s.url for s in self._servers if s.ok]
            errors = [s.error for s in self._servers if not s.ok and s.error]
        if ready:
            where = ready[0] if len(self._servers) == 1 else f"{len(ready)} of {len(self._servers)} vLLM servers"
            return HostStatus("ready", name, f"Serving {name} on {where}", 1.0)
        return HostStatus("dead", name, f"No vLLM server of {name} answers ({', '.join(self.urls)}).",
                          error=" ".join(errors) or None)

    def health(self) -> EngineHealth:
        """Each server's ``/health`` and ``/metrics`` (``servers``), summed; the load gauges of ready servers
        (KV-cache use: their mean), token rates and queue time over the time since the previous look (the first
        look: since the server started). Cached for a second."""
        now = time.time()
        if self._closed:
            return EngineHealth("stopped", self.spec.name, error="The server connection has been shut down.", at=now)
        with self._check_lock:
            cached = self._health
            if cached is not None and time.monotonic() - self._health_at < HEALTH_CACHE_S:
                return cached
            servers = tuple(self._server_health(server) for server in self._servers)
            health = self._sum_health(servers, now)
            self._health, self._health_at = health, time.monotonic()
            return health

    def stream_chat(self, messages: Sequence[ChatMessage], sampling: SamplingSettings, *,
                    request_id: str | None = None) -> ServerStream:
        """Start a chat completion on a server (its chat template); returns the stream once the server took it.

        Raises EmptyPromptError, NoChatTemplateError, PromptTooLongError (from the server's ``/tokenize``, before
        submitting), ServerUnavailableError (no server answers), EngineNotReadyError (shut down) or the server's
        refusal as an EngineError."""
        if not messages or not messages[-1].content.strip():
            raise EmptyPromptError()
        as_dicts = [m.as_dict() for m in messages]
        return self._submit("/v1/chat/completions", {"messages": as_dicts},
                            {"messages": as_dicts, "add_generation_prompt": True}, sampling,
                            request_id or f"chat-{uuid.uuid4().hex[:16]}", chat=True)

    def stream_prompt(self, prompt: str, sampling: SamplingSettings, *,
                      request_id: str | None = None) -> ServerStream:
        """Start a completion of a raw prompt (no chat template) on a server (``/v1/completions``)."""
        if not prompt.strip():
            raise EmptyPromptError()
        return self._submit("/v1/completions", {"prompt": prompt}, {"prompt": prompt}, sampling,
                            request_id or f"cmpl-{uuid.uuid4().hex[:16]}", chat=False)

    def check_chat(self, messages: Sequence[ChatMessage]) -> None:
        """What :meth:`stream_chat` would refuse (empty, no chat template, too long), asked of a server's
        ``/tokenize`` without submitting; nothing while no server answers or none exposes ``/tokenize``."""
        if not messages or not messages[-1].content.strip():
            raise EmptyPromptError()
        if self._closed:
            return
        server = self._pick(())
        if server is None:
            return
        try:
            counted = self._count_tokens(server, {"messages": [m.as_dict() for m in messages],
                                                  "add_generation_prompt": True})
        except (_ConnectFailed, ServerUnavailableError):
            return
        finally:
            self.release(server)
        if counted is not None and counted[0] >= counted[1]:
            raise PromptTooLongError(*counted)

    def cancel(self, request_id: str) -> None:
        """Abort a running request by its id (its connection is closed; vLLM aborts it); unknown ids are ignored."""
        with self._lock:
            stream = self._streams.get(request_id)
        if stream is not None:
            stream.interrupt()

    def shutdown(self) -> None:
        """Abort the requests in flight (their streams end aborted) and close the connections; safe to call more
        than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            streams = list(self._streams.values())
        for stream in streams:
            stream.interrupt()
        self._http.close()
        logger.info("server client for %s shut down", self.spec.name)

    # -- for streams --

    def release(self, server: _Server) -> None:
        """A request on ``server`` ended (its in-flight slot is free)."""
        with self._lock:
            server.in_flight = max(server.in_flight - 1, 0)

    def forget(self, request_id: str) -> None:
        """Stop tracking a request whose stream ended."""
        with self._lock:
            self._streams.pop(request_id, None)

    def note_error(self, message: str) -> None:
        """Remember a failed request for :meth:`health`'s ``recent_errors``."""
        self._errors.append(EngineErrorNote(time.time(), message))

    # -- internals --

    def _check_open(self) -> None:
        if self._closed:
            raise EngineNotReadyError(f"The connection to the vLLM server(s) of {self.spec.name} has been shut down.")

    def _mark(self, server: _Server, *, ok: bool, error: str | None = None, wrong_model: bool = False) -> None:
        with self._lock:
            server.ok, server.checked, server.error = ok, time.monotonic(), None if ok else error
            server.wrong_model = wrong_model if not ok else False

    def _pick(self, exclude: Sequence[_Server]) -> _Server | None:
        """The server with the fewest requests of ours in flight among those not known to be down (all of them
        when every one is: the request then says why); its in-flight count is taken."""
        now = time.monotonic()
        with self._lock:
            left = [s for s in self._servers if s not in exclude]
            usable = [s for s in left if s.ok is not False or now - s.checked >= self.health_interval_s]
            candidates = usable or left
            if not candidates:
                return None
            best = min(candidates, key=lambda s: (s.in_flight, s.ok is not True))
            best.in_flight += 1
            return best

    def _check_stale(self) -> None:
        """Look at ``/health`` of the servers not checked for ``health_interval_s`` (one thread at a time; others
        go on with the last answers)."""
        if not self._check_lock.acquire(blocking=False):
            return
        try:
            now = time.monotonic()
            for server in self._servers:
                if server.ok is None or now - server.checked >= self.health_interval_s:
                    self._check_one(server)
        finally:
            self._check_lock.release()

    def _check_one(self, server: _Server) -> bool:
        if server.wrong_model:  # it answered before, with other models: ask which it serves now
            try:
                probe(server.url, self.spec.model_on_server, api_key=self._api_key, timeout_s=CHECK_TIMEOUT_S,
                      http=self._http)
            except ServerUnavailableError as exc:
                self._mark(server, ok=False, error=str(exc), wrong_model=" serves " in str(exc))
                return False
            self._mark(server, ok=True)
            return True
        try:
            response = self._http.get(f"{server.url}/health", timeout=CHECK_TIMEOUT_S)
        except httpx.HTTPError as exc:
            self._mark(server, ok=False, error=str(_unreachable(server.url, exc, CHECK_TIMEOUT_S)))
            return False
        if response.status_code != 200:
            self._mark(server, ok=False, error=f"The vLLM server at {server.url} is not healthy (HTTP "
                                               f"{response.status_code} from /health).")
            return False
        self._mark(server, ok=True)
        return True

    def _server_health(self, server: _Server) -> ServerHealth:
        now = time.time()
        if not self._check_one(server):
            return ServerHealth(url=server.url, state="unreachable", error=server.error, at=now)
        try:
            response = self._http.get(f"{server.url}/metrics", headers=_auth(self._api_key), timeout=CHECK_TIMEOUT_S)
            response.raise_for_status()
            values = parse_metrics(response.text, self.spec.model_on_server)
        except (httpx.HTTPError, ValueError) as exc:
            logger.debug("no metrics from %s: %s", server.url, type(exc).__name__)
            return ServerHealth(url=server.url, state="ready", model=self.spec.model_on_server,
                                error=f"The vLLM server at {server.url} answers, but its /metrics could not be read.",
                                at=now)
        counters = {name: values.get(name, 0.0) for name in _COUNTERS}
        previous = server.sample
        if previous is None or any(counters[n] < previous[1].get(n, 0.0) for n in _COUNTERS):
            # First look, or the server restarted: count from its start.
            started = values.get(_START) or self._created
            previous = (min(started, now), dict.fromkeys(_COUNTERS, 0.0))
        server.sample = (now, counters)
        window = max(now - previous[0], 0.0)

        def delta(name: str) -> float:
            return counters[name] - previous[1].get(name, 0.0)

        def rate(name: str) -> float:
            return delta(name) / window if window > 0 else 0.0

        queued = delta("vllm:request_queue_time_seconds_count")
        return ServerHealth(
            url=server.url, state="ready", model=self.spec.model_on_server,
            running=int(values.get("vllm:num_requests_running", 0)),
            waiting=int(values.get("vllm:num_requests_waiting", 0)),
            kv_cache_usage=min(max(values.get("vllm:kv_cache_usage_perc", 0.0), 0.0), 1.0),
            preemptions_total=int(counters["vllm:num_preemptions_total"]),
            prompt_tokens_total=int(counters["vllm:prompt_tokens_total"]),
            generation_tokens_total=int(counters["vllm:generation_tokens_total"]),
            requests_finished_total=int(counters["vllm:request_success_total"]),
            prompt_tokens_per_s=rate("vllm:prompt_tokens_total"),
            generation_tokens_per_s=rate("vllm:generation_tokens_total"),
            queue_s_mean=delta("vllm:request_queue_time_seconds_sum") / queued if queued > 0 else None,
            window_s=window, at=now,
        )

    def _sum_health(self, servers: tuple[ServerHealth, ...], now: float) -> EngineHealth:
        ready = [s for s in servers if s.state == "ready"]
        name = self.spec.name
        error = None if ready else f"No vLLM server of {name} answers ({', '.join(self.urls)})."
        return EngineHealth(
            state="ready" if ready else "dead", model_version=name,
            running=sum(s.running for s in ready), waiting=sum(s.waiting for s in ready),
            kv_cache_usage=sum(s.kv_cache_usage for s in ready) / len(ready) if ready else 0.0,
            preemptions_total=sum(s.preemptions_total for s in servers),
            prompt_tokens_total=sum(s.prompt_tokens_total for s in servers),
            generation_tokens_total=sum(s.generation_tokens_total for s in servers),
            requests_finished_total=sum(s.requests_finished_total for s in servers),
            prompt_tokens_per_s=sum(s.prompt_tokens_per_s for s in servers),
            generation_tokens_per_s=sum(s.generation_tokens_per_s for s in servers),
            window_s=max((s.window_s for s in servers), default=0.0),
            error=error, recent_errors=tuple(self._errors), at=now, servers=servers,
        )

    def _count_tokens(self, server: _Server, body: dict[str, Any]) -> tuple[int, int] | None:
        """(prompt tokens, max_model_len) from the server's ``/tokenize``; None when it has none (a router) or
        gives no usable answer. Raises NoChatTemplateError when the model has no chat template, _ConnectFailed
        when the server cannot be reached."""
        if not server.tokenize:
            return None
        try:
            response = self._http.post(f"{server.url}/tokenize", json={"model": self.spec.model_on_server} | body,
                                       headers=_auth(self._api_key), timeout=max(CHECK_TIMEOUT_S, 30.0))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _ConnectFailed(_unreachable(server.url, exc, CHECK_TIMEOUT_S)) from None
        except httpx.HTTPError as exc:
            raise _unreachable(server.url, exc, 30.0) from None
        if response.status_code != 200:
            error = self._http_error(server, response)
            if isinstance(error, NoChatTemplateError | ServerUnavailableError):
                raise error  # no chat template; the model is not served; the key is refused
            if response.status_code in (404, 405):
                server.tokenize = False  # not there (a router in front): the server itself refuses a prompt too long
            return None
        try:
            data = response.json()
            return int(data["count"]), int(data["max_model_len"])
        except (ValueError, KeyError, TypeError):
            return None

    def _http_error(self, server: _Server, response: httpx.Response) -> EngineError:
        """The error for a server's refusal of a request, as the EngineError callers expect."""
        code = response.status_code
        message = _server_message(response, self._api_key)
        url, model = server.url, self.spec.model_on_server
        if code in (401, 403):
            return ServerUnavailableError(f"The vLLM server at {url} refused the API key (HTTP {code}); check the "
                                          "server API key setting.")
        if code == 404 and "does not exist" in message:
            return ServerUnavailableError(f"The vLLM server at {url} does not serve {model}: {message}")
        if code == 400:
            too_long = _TOO_LONG.search(message)
            if too_long:
                return PromptTooLongError(int(too_long.group(2)), int(too_long.group(1)))
            too_long = _INPUT_LENGTH.search(message)
            if too_long:
                return PromptTooLongError(int(too_long.group(1)), int(too_long.group(2)))
            if "chat template" in message.lower():
                return NoChatTemplateError(f"Model version {self.spec.name} has no chat template on its server, so "
                                           "it cannot chat. Serve a chat (instruct) model or give the server a chat "
                                           "template.")
        if code in (502, 503, 504):
            return ServerUnavailableError(f"The vLLM server at {url} is not available (HTTP {code}): {message}")
        if code >= 500:
            return EngineError(f"The vLLM server at {url} failed this request (HTTP {code}): {message}")
        return EngineError(f"The vLLM server at {url} refused this request (HTTP {code}): {message}")

    def _submit(self, path: str, content: dict[str, Any], tokenize: dict[str, Any], sampling: SamplingSettings,
                request_id: str, *, chat: bool) -> ServerStream:
        self._check_open()
        with self._lock:
            if request_id in self._streams:
                raise EngineError(f"Request id {request_id} is already in use.")
        tried: list[_Server] = []
        failure: ServerUnavailableError | None = None
        for _attempt in range(2):  # a refused connection is tried once more, on the next server
            server = self._pick(tried)
            if server is None:
                break
            tried.append(server)
            try:
                stream = self._submit_to(server, path, content, tokenize, sampling, request_id, chat=chat)
            except _ConnectFailed as exc:
                self.release(server)
                self._mark(server, ok=False, error=str(exc.error))
                failure = exc.error
                continue
            except BaseException as exc:
                self.release(server)
                if isinstance(exc, ServerUnavailableError | EngineDeadError):
                    self.note_error(str(exc))
                raise
            with self._lock:
                self._streams[request_id] = stream
            return stream
        error = failure or ServerUnavailableError(f"No vLLM server of {self.spec.name} answers.")
        if len(tried) > 1:
            error = ServerUnavailableError(f"No vLLM server of {self.spec.name} answers "
                                           f"({', '.join(s.url for s in tried)}).")
        self.note_error(str(error))
        raise error

    def _submit_to(self, server: _Server, path: str, content: dict[str, Any], tokenize: dict[str, Any],
                   sampling: SamplingSettings, request_id: str, *, chat: bool) -> ServerStream:
        max_tokens = sampling.max_tokens
        counted = self._count_tokens(server, tokenize)
        prompt_tokens = None
        if counted is not None:
            prompt_tokens, limit = counted
            if prompt_tokens >= limit:
                raise PromptTooLongError(prompt_tokens, limit)
            max_tokens = min(max_tokens, limit - prompt_tokens)  # as in-process: never more than the context holds
        body: dict[str, Any] = {
            "model": self.spec.model_on_server, **content, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": False},
            "max_tokens": max_tokens, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "ignore_eos": sampling.ignore_eos, "request_id": request_id,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        headers = _auth(self._api_key)
        if request_id.isascii() and request_id.isprintable():  # a header carries no other characters
            headers["X-Request-Id"] = request_id
        request = self._http.build_request("POST", f"{server.url}{path}", json=body, headers=headers)
        sent = time.monotonic()
        try:
            response = self._http.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _ConnectFailed(_unreachable(server.url, exc, CONNECT_TIMEOUT_S)) from None
        except httpx.HTTPError as exc:
            raise _unreachable(server.url, exc, self.request_timeout_s) from None
        except RuntimeError:  # the client was closed meanwhile (shutdown)
            self._check_open()
            raise
        if response.status_code != 200:
            try:
                response.read()
            except httpx.HTTPError:
                pass
            finally:
                response.close()
            raise self._http_error(server, response)
        self._mark(server, ok=True)
        return ServerStream(self, server, response, request_id, sent=sent, prompt_tokens=prompt_tokens, chat=chat)
