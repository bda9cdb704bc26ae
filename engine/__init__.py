"""The engine side of the console: model versions, the engines that serve them and the safety scanners.

Every engine is reached through one interface, :class:`engine.client.EngineClient`: the in-process vLLM host
(:mod:`engine.host`), a host in a child process (:mod:`engine.child_client`) and vLLM's OpenAI-compatible servers
(:mod:`engine.server_client`; :mod:`engine.managed` starts them) implement it; :mod:`engine.switching` is the served
engine that moves between them.

Nothing here imports Streamlit or the console, and nothing reads the environment for configuration:
callers pass typed config objects (see ``engine.types``).
"""

from __future__ import annotations

import os

# vLLM reads this once, when it is first imported. Unset, its LLMEngine starts a separate EngineCore process,
# which under `streamlit run` re-executes the app script and crashes; 0 keeps the engine core in this process.
# These are the package's deliberate side effects, and setdefault lets an operator still override them.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# vLLM logs to stdout unless told otherwise; a command's stdout is its output (`llm-console bench ... --json`
# must print JSON only), so its logs go to stderr with every other log.
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
# The environment as this process started (with the two defaults above), before vLLM runs here: an in-process
# engine adds its own variables to os.environ (LD_PRELOAD, VLLM_DIST_IDENT, a shared-memory buffer name, ...), and
# a vLLM server started from this process must not inherit them (with them its engine core died at its first
# request). engine.managed.server_env starts servers from this.
STARTING_ENV: dict[str, str] = dict(os.environ)
