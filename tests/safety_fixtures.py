"""Helpers for the safety tests: a tiny Detoxify checkpoint in Detoxify's own format, built in a second."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.types import GenerationResult

# The Jigsaw Toxic Comment classes of Detoxify's "original" model, as stored in its checkpoint.
JIGSAW_ORIGINAL_CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
# What Detoxify reports after renaming them.
DETOXIFY_ORIGINAL_LABELS = ("toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack")

_VOCAB_WORDS = (
    "the a you are is i will to and of it this that have nice day idiot stupid kill hello world "
    "thank please help order refund account my your we they what how why"
).split()


def build_tiny_detoxify_checkpoint(out_dir: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Write a 1-layer BertForSequenceClassification + BertTokenizerFast and a Detoxify checkpoint for it.

    Returns ``(checkpoint_file, huggingface_config_dir)``, the two arguments of ``Detoxify(checkpoint=...,
    huggingface_config_path=...)``. The model is untrained: its scores are meaningless but in (0, 1).
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    out_dir = Path(out_dir)
    hf_dir = out_dir / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    punctuation = list(".,!?'@-:;()")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *punctuation, *_VOCAB_WORDS]
    vocab += [f"##{c}" for c in letters]
    (hf_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(hf_dir / "vocab.txt"), do_lower_case=True, model_max_length=512)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=len(JIGSAW_ORIGINAL_CLASSES),
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    checkpoint = out_dir / "tiny-detoxify.ckpt"
    torch.save(
        {
            "config": {
                "arch": {
                    "args": {
                        "model_type": str(hf_dir),
                        "model_name": "BertForSequenceClassification",
                        "tokenizer_name": "BertTokenizerFast",
                        "num_classes": len(JIGSAW_ORIGINAL_CLASSES),
                    }
                },
                "dataset": {"args": {"classes": list(JIGSAW_ORIGINAL_CLASSES)}},
            },
            "state_dict": model.state_dict(),
        },
        checkpoint,
    )
    return checkpoint, hf_dir


class NetworkBlocked(OSError):
    """Raised by every socket call inside :func:`network_blocked`."""


@contextlib.contextmanager
def network_blocked() -> Iterator[None]:
    """No socket can connect or resolve a name inside: proves a scanner loads and runs offline."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise NetworkBlocked("network access attempted during a safety test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        mp.setattr(socket, "create_connection", refuse)
        yield


@dataclass(frozen=True)
class _Served:
    name: str


class _CannedStream:
    def __init__(self, answer: str, request_id: str) -> None:
        self.answer = answer
        self.result = GenerationResult(request_id=request_id, model_version="v1", text=answer, finish_reason="stop",
                                       prompt_tokens=5, output_tokens=4, queue_s=0.001, ttft_s=0.02,
                                       mean_itl_s=0.01, e2e_s=0.05, aborted=False)

    def __iter__(self):
        yield self.answer

    def cancel(self) -> None:
        pass


class CannedHost:
    """A stand-in engine host at our own seam: serves "v1" and answers with the next canned text."""

    serving = _Served("v1")

    def __init__(self) -> None:
        self.answers: list[str] = []
        self.asked = 0

    def stream_chat(self, messages, sampling, *, request_id=None):  # noqa: ANN001
        self.asked += 1
        return _CannedStream(self.answers.pop(0), request_id or "r")
