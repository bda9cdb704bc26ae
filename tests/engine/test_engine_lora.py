"""A LoRA adapter served on its base model by the in-process host (vLLM's CPU build supports LoRA)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.demo.tiny import build_tiny_lora
from engine.host import EngineHost
from engine.types import ChatMessage, HostConfig, LoraAdapter, ModelSpec, SamplingSettings

pytestmark = pytest.mark.engine  # every test here starts real vLLM engines

HELLO = [ChatMessage("user", "Where is my order?")]
GREEDY = SamplingSettings(temperature=0.0, max_tokens=16, ignore_eos=True)


def test_a_lora_version_answers_through_its_adapter_and_differently_from_the_base(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    adapter = build_tiny_lora(tiny_model_dir, tmp_path / "adapter", rank=8)
    base = ModelSpec(name="tiny-base", source=str(tiny_model_dir))
    tuned = ModelSpec(name="tiny-lora", source=str(tiny_model_dir),
                      lora=LoraAdapter(name="tiny-lora", path=str(adapter), rank=8))
    assert tuned.lora is not None and tuned.lora.max_lora_rank == 8
    assert ModelSpec.from_dict(__import__("dataclasses").asdict(tuned)) == tuned
    host = EngineHost.start(base, HostConfig(kv_cache_gib=0.25), wait=True)
    try:
        plain = host.stream_chat(HELLO, GREEDY)
        list(plain)
        host.switch(tuned)
        adapted = host.stream_chat(HELLO, GREEDY)
        list(adapted)
    finally:
        host.shutdown()
    assert adapted.result.model_version == "tiny-lora" and adapted.result.output_tokens == 16
    assert adapted.result.token_ids != plain.result.token_ids
