"""A model version served by a child process (side-by-side comparisons): stream, result, failure, shutdown."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ModelLoadError
from engine.remote import ChildEngine
from engine.types import ChatMessage, ModelSpec, SamplingSettings

HELLO = [ChatMessage("user", "Where is my order?")]


def test_a_child_engine_streams_deltas_and_a_result_then_shuts_down(tiny_model_dir: Path) -> None:
    engine = ChildEngine.start(ModelSpec(name="tiny-child", source=str(tiny_model_dir)), kv_cache_gib=0.25)
    try:
        stream = engine.stream_chat(HELLO, SamplingSettings(temperature=0.0, max_tokens=12, ignore_eos=True))
        deltas = list(stream)
        assert len(deltas) >= 1 and "".join(deltas) == stream.result.text
        assert stream.result.model_version == "tiny-child" and stream.result.output_tokens == 12
        assert stream.result.ttft_s is not None and stream.result.ttft_s > 0
        two = [engine.stream_chat(HELLO, SamplingSettings(temperature=0.0, max_tokens=5, ignore_eos=True))
               for _ in range(2)]
        assert [len("".join(s)) >= 0 and s.result.output_tokens for s in two] == [5, 5]
    finally:
        engine.shutdown()
    assert not engine.alive()


def test_a_version_that_cannot_load_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="could not start for comparison"):
        ChildEngine.start(ModelSpec(name="missing", source=str(tmp_path / "nowhere")), timeout_s=300)
