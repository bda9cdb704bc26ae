"""What only the child-process engine client does (the rest is the contract in test_client_contract.py): a
version that cannot load, a process that ends before it is ready, an engine process killed mid-answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.child_client import ChildEngineClient
from engine.errors import EngineDeadError, EngineNotReadyError, ModelLoadError
from engine.types import ChatMessage, HostConfig, ModelSpec, SamplingSettings

HELLO = [ChatMessage("user", "Where is my order?")]


@pytest.mark.engine  # starts python -m engine.child
def test_a_version_that_cannot_load_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="could not start in its own process") as refused:
        ChildEngineClient.start(ModelSpec(name="missing", source=str(tmp_path / "nowhere")), timeout_s=300)
    assert "missing" in str(refused.value)


def test_a_process_that_ends_before_it_is_ready_says_how_with_its_log(tmp_path: Path) -> None:
    """``python`` is the seam: a stand-in interpreter that writes a line to its log and exits with status 3."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'out of memory while loading' >&2\nexit 3\n")
    fake.chmod(0o755)
    log = tmp_path / "engine.log"
    with pytest.raises(ModelLoadError) as refused:
        ChildEngineClient.start(ModelSpec(name="v1", source=str(tmp_path)), python=str(fake), log_path=log,
                                timeout_s=60)
    message = str(refused.value)
    assert "v1 could not start" in message and "ended unexpectedly (exit status 3)" in message
    assert "out of memory while loading" in message  # the log's last lines


@pytest.mark.engine  # starts python -m engine.child
def test_an_engine_process_killed_mid_answer_ends_the_stream_with_engine_dead(tiny_model_dir: Path) -> None:
    client = ChildEngineClient.start(ModelSpec(name="tiny-doomed", source=str(tiny_model_dir)),
                                     HostConfig(kv_cache_gib=0.25), timeout_s=300)
    try:
        stream = client.stream_chat(HELLO, SamplingSettings(temperature=0.0, max_tokens=300, ignore_eos=True))
        next(stream)
        client.kill()
        with pytest.raises(EngineDeadError):
            list(stream)
        assert stream.result.aborted and not client.alive()
        with pytest.raises(EngineNotReadyError):
            client.stream_chat(HELLO, SamplingSettings(max_tokens=4))
    finally:
        client.shutdown()
