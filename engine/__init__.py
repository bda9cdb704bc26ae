"""The engine side of the console: model versions, the engines that serve them and the safety scanners.

Every engine is reached through one interface, :class:`engine.client.EngineClient`: the in-process vLLM host
(:mod:`engine.host`) and a host in a child process (:mod:`engine.child_client`) implement it.

Nothing here imports Streamlit or the console, and nothing reads the environment for configuration:
callers pass typed config objects (see ``engine.types``).
"""

from __future__ import annotations

import os

# vLLM reads this once, when it is first imported. Unset, its LLMEngine starts a separate EngineCore process,
# which under `streamlit run` re-executes the app script and crashes; 0 keeps the engine core in this process.
# This is the package's one deliberate side effect, and setdefault lets an operator still override it.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
