"""Build the demo support models: train a small Llama on the project's own support corpus, on the CPU.

``ensure_demo_model`` is what set-up calls: it builds ``models_dir/<name>`` once (into a temporary directory
that is renamed into place only when complete) and afterwards returns the cached directory at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.demo.corpus import Dialogue, build_corpus, corpus_fingerprint
from engine.demo.tokenizer import train_tokenizer

logger = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
# The build's only clock: it measures durations for build_info.json and decides nothing (tests replace it).
_clock: Callable[[], float] = time.monotonic

BUILD_INFO = "build_info.json"
# Bump when the training code changes in a way that changes the weights.
RECIPE_VERSION = "7"
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    BUILD_INFO,
)


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that decides a demo model: its corpus, its size and how it is trained."""

    name: str
    description: str
    max_model_len: int = 512
    n_dialogues: int = 6000
    corpus_seed: int = 0
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 2  # head size 64: vLLM's CPU attention rejects 16
    max_steps: int = 800
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 40
    weight_decay: float = 0.01
    # Share of dialogues whose last answer is cut to its first ``answer_prefix_tokens`` tokens. The answers
    # are a few fixed texts the model learns within the first steps; what takes training is choosing the
    # right one from an unseen phrasing, which the first tokens decide. Half-length sequences make a step
    # ~1.5x cheaper; the other dialogues still teach every answer in full.
    answer_prefix_share: float = 0.0
    answer_prefix_tokens: int = 8
    seed: int = 0
    # One thread, not two: on this shared 2-core machine two intra-op threads ran a step 10x slower than one
    # (2.3-2.9 s vs 0.14-0.2 s) because every small op waits on a thread the other load has preempted.
    threads: int = 1
    # bfloat16 autocast (weights and AdamW state stay float32): ~30% faster steps on CPUs with AVX512-BF16.
    bf16: bool = True

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    def fingerprint(self) -> str:
        """Hash of the recipe, the corpus templates and the training code version (not of the description)."""
        fields = asdict(self)
        fields.pop("description")
        payload = json.dumps([RECIPE_VERSION, corpus_fingerprint(), fields], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# Training is step-based: a build always takes ``max_steps`` optimiser steps on the same seeded batches, so a
# version is the same model on a fast and on a slow machine (only the wall-clock differs). support-demo-v1 is
# kept small and short because the console starts as soon as it is built; support-demo-v2 is built in the
# background afterwards (see console.services.demo_builds) and may take longer: a wider model, three times the steps
# on a larger, differently seeded corpus sample.
DEMO_VERSIONS: dict[str, DemoRecipe] = {
    recipe.name: recipe
    for recipe in (
        DemoRecipe(
            name="support-demo-v1",
            description="Demo support assistant: 4-layer Llama, hidden 128, 400 training steps on 40,000 dialogues.",
            max_model_len=512,
            vocab_size=2048,
            answer_prefix_share=0.8,
            # More dialogues than the steps can use: each phrasing is seen about once, so the model learns the
            # words of an intent instead of memorising sentences.
            n_dialogues=40000,
            hidden_size=128,
            intermediate_size=384,
            num_layers=4,
            num_heads=2,
            max_steps=400,
            batch_size=32,
            warmup_steps=30,
        ),
        DemoRecipe(
            name="support-demo-v2",
            description="Demo support assistant v2: 4-layer Llama, hidden 192, 1,000 training steps on 48,000 "
            "dialogues (another corpus sample).",
            max_model_len=1024,
            vocab_size=2048,
            answer_prefix_share=0.8,
            n_dialogues=48000,
            corpus_seed=1,
            hidden_size=192,
            intermediate_size=512,
            num_layers=4,
            num_heads=3,
            max_steps=1000,
            batch_size=32,
            warmup_steps=40,
            lr=2.5e-3,
            seed=1,
        ),
    )
}


@dataclass(frozen=True)
class BuildInfo:
    """What ``build_info.json`` records about a finished build."""

    name: str
    fingerprint: str
    params: int
    steps: int
    first_loss: float
    final_loss: float
    train_seconds: float
    total_seconds: float
    n_dialogues: int
    n_train_tokens: int
    vocab_size: int
    max_model_len: int
    built_at: float

    @classmethod
    def read(cls, model_dir: Path) -> BuildInfo | None:
        """The build info of ``model_dir``, or None when it has none (never built, or interrupted)."""
        try:
            data = json.loads((Path(model_dir) / BUILD_INFO).read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None


class DemoBuildError(RuntimeError):
    """The demo model could not be built (unknown version name, or training failed)."""


def is_complete(model_dir: Path, recipe: DemoRecipe) -> bool:
    """True when ``model_dir`` holds every file of a finished build of exactly ``recipe``."""
    model_dir = Path(model_dir)
    if not all((model_dir / f).is_file() for f in REQUIRED_FILES):
        return False
    info = BuildInfo.read(model_dir)
    return info is not None and info.fingerprint == recipe.fingerprint()


def ensure_demo_model(
    models_dir: Path,
    name: str = "support-demo-v1",
    *,
    progress: Progress | None = None,
    recipe: DemoRecipe | None = None,
) -> Path:
    """Return ``models_dir/<name>``, building the demo model there first unless a complete build exists.

    ``recipe`` defaults to ``DEMO_VERSIONS[name]`` (tests pass a tiny one). ``progress(message, fraction)``
    is called during a build; an exception it raises aborts the build and leaves no complete-looking
    directory behind. Concurrent callers are serialised with a lock file, so the model is built once.
    """
    if recipe is None:
        try:
            recipe = DEMO_VERSIONS[name]
        except KeyError:
            raise DemoBuildError(f"unknown demo model {name!r}; known: {', '.join(DEMO_VERSIONS)}") from None
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / name
    if is_complete(target, recipe):
        return target
    with _lock(models_dir / f".{name}.lock"):
        if is_complete(target, recipe):  # another process finished it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=models_dir))
        try:
            train_demo_model(recipe, tmp, progress=progress)
            _replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("demo model %s built in %s", name, target)
    return target


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an older build (stale recipe or partial copy) is moved aside first."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
        os.rename(target, old)
    os.rename(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _encode_dialogues(tokenizer: Any, dialogues: list[Dialogue], max_len: int) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each rendered dialogue and its labels: the loss sees only assistant replies (and their end),
    except the dialogue's ``untrained`` ones (history as the console stores it)."""
    assistant_id = tokenizer.convert_tokens_to_ids("<|assistant|>")
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    all_ids: list[list[int]] = []
    all_labels: list[list[int]] = []
    texts = [tokenizer.apply_chat_template(d.as_chat(), tokenize=False) for d in dialogues]
    # bos is already in the rendered text; adding special tokens again would double it.
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for dialogue, ids in zip(dialogues, encoded, strict=True):
        ids = ids[:max_len]
        labels = [-100] * len(ids)
        replies = [i for i, (role, _) in enumerate(dialogue.messages) if role == "assistant"]
        skipped = {n for n, i in enumerate(replies) if i in dialogue.untrained}  # ordinals of untrained replies
        in_reply = False
        reply = -1
        for pos, tok in enumerate(ids):
            if tok == assistant_id:
                reply += 1
                in_reply = reply not in skipped
                continue
            # The first token after "<|assistant|>" is the template's "\n", which the prompt already holds.
            if in_reply and ids[pos - 1] != assistant_id:
                labels[pos] = tok
                if tok == end_id:
                    in_reply = False
        all_ids.append(ids)
        all_labels.append(labels)
    return all_ids, all_labels


def _cut_final_answers(
    ids: list[list[int]], labels: list[list[int]], assistant_id: int, *, share: float, keep: int, seed: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Cut the last answer of ``share`` of the dialogues to its first ``keep`` tokens (deterministic per seed)."""
    if share <= 0:
        return ids, labels
    rng = random.Random(seed)
    out_ids: list[list[int]] = []
    out_labels: list[list[int]] = []
    for seq, lab in zip(ids, labels, strict=True):
        if rng.random() < share and assistant_id in seq:
            last = len(seq) - 1 - seq[::-1].index(assistant_id)
            cut = last + 2 + keep  # "<|assistant|>", the template's "\n", then ``keep`` answer tokens
            seq, lab = seq[:cut], lab[:cut]
        out_ids.append(seq)
        out_labels.append(lab)
    return out_ids, out_labels


def _length_buckets(ids: list[list[int]], batch_size: int, generator: Any) -> list[list[int]]:
    """One epoch of batches of dialogues of similar length, in random order.

    Batching neighbours in length order wastes almost nothing on padding, which on a 2-core CPU is
    the difference between ~250 and ~400 steps in the time budget.
    """
    import torch

    order = torch.randperm(len(ids), generator=generator).tolist()
    order.sort(key=lambda i: len(ids[i]))  # stable: equal lengths stay shuffled
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def _lr_at(recipe: DemoRecipe, step: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` over ``max_steps`` (steps only, never wall-clock)."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    done = min(1.0, (step - recipe.warmup_steps) / max(1, recipe.max_steps - recipe.warmup_steps))
    floor = recipe.lr * recipe.min_lr_ratio
    return floor + (recipe.lr - floor) * 0.5 * (1 + math.cos(math.pi * done))


def train_demo_model(recipe: DemoRecipe, out_dir: Path, *, progress: Progress | None = None) -> BuildInfo:
    """Train ``recipe`` into ``out_dir`` (written in place; ``ensure_demo_model`` handles atomicity).

    Always runs ``max_steps`` steps: seeds make the corpus, tokenizer, initial weights and batch order
    deterministic, and nothing depends on the wall-clock, so a slow machine builds the same model, later.
    ``build_info.json`` is written last, so a directory without it is never a finished build.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    report = progress or (lambda message, fraction: None)
    started = _clock()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if recipe.hidden_size % recipe.num_heads or recipe.head_size not in (32, 64, 80, 96, 112, 128):
        raise DemoBuildError(f"head size {recipe.head_size} is not supported by vLLM's CPU attention")

    report("writing the support corpus", 0.0)
    dialogues = build_corpus(recipe.n_dialogues, seed=recipe.corpus_seed)
    report("training the tokenizer", 0.02)
    texts = [content for d in dialogues for _, content in d.messages]
    tokenizer = train_tokenizer(texts, vocab_size=recipe.vocab_size)
    tokenizer.model_max_length = recipe.max_model_len
    ids, labels = _encode_dialogues(tokenizer, dialogues, recipe.max_model_len)
    ids, labels = _cut_final_answers(
        ids,
        labels,
        tokenizer.convert_tokens_to_ids("<|assistant|>"),
        share=recipe.answer_prefix_share,
        keep=recipe.answer_prefix_tokens,
        seed=recipe.seed,
    )
    n_train_tokens = sum(sum(1 for x in lab if x != -100) for lab in labels)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        torch.manual_seed(recipe.seed)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=recipe.hidden_size,
            intermediate_size=recipe.intermediate_size,
            num_hidden_layers=recipe.num_layers,
            num_attention_heads=recipe.num_heads,
            num_key_value_heads=recipe.num_heads,
            max_position_embeddings=recipe.max_model_len,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
            torch_dtype="float32",
        )
        model = LlamaForCausalLM(config)
        params = sum(p.numel() for p in model.parameters())
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=recipe.lr,
            betas=(0.9, 0.98),
        )
        generator = torch.Generator().manual_seed(recipe.seed)
        pad_id = tokenizer.pad_token_id
        logger.info(
            "training %s: %s params, %s dialogues, %s target tokens", recipe.name, params, len(ids), n_train_tokens
        )
        report(f"training {recipe.name} ({params:,} parameters)", 0.05)

        model.train()
        losses: list[float] = []
        train_start = _clock()
        step = 0
        batches: list[list[int]] = []
        while step < recipe.max_steps:
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(recipe, step)
            if not batches:
                batches = _length_buckets(ids, recipe.batch_size, generator)
            batch = batches.pop()
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            target = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                n = len(ids[i])
                input_ids[row, :n] = torch.tensor(ids[i])
                target[row, :n] = torch.tensor(labels[i])
                mask[row, :n] = 1
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
                loss = model(input_ids=input_ids, attention_mask=mask, labels=target).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if step % 25 == 0 or step == recipe.max_steps:
                report(
                    f"training {recipe.name}: step {step} of {recipe.max_steps}, loss {losses[-1]:.3f}",
                    0.05 + 0.9 * step / recipe.max_steps,
                )
                logger.debug("%s step %s loss %.4f", recipe.name, step, losses[-1])
        train_seconds = _clock() - train_start
    finally:
        torch.set_num_threads(previous_threads)
    if not losses:
        raise DemoBuildError(f"{recipe.name}: max_steps must be at least 1")

    report("saving the model", 0.96)
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    # transformers 5 writes the template to chat_template.jinja only; older readers (and anyone checking
    # tokenizer_config.json for a template) look for the key, so it is written in both places.
    tokenizer_config_path = out_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_path.read_text())
    tokenizer_config["chat_template"] = tokenizer.chat_template
    tokenizer_config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    # vLLM stops on the generation config's eos ids: <|end|> closes every assistant turn.
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out_dir)
    window = max(1, min(20, len(losses) // 10))
    info = BuildInfo(
        name=recipe.name,
        fingerprint=recipe.fingerprint(),
        params=params,
        steps=step,
        first_loss=round(sum(losses[:window]) / window, 4),
        final_loss=round(sum(losses[-window:]) / window, 4),
        train_seconds=round(train_seconds, 2),
        total_seconds=round(_clock() - started, 2),
        n_dialogues=len(ids),
        n_train_tokens=n_train_tokens,
        vocab_size=len(tokenizer),
        max_model_len=recipe.max_model_len,
        built_at=time.time(),
    )
    (out_dir / BUILD_INFO).write_text(json.dumps(asdict(info), indent=2) + "\n")
    report("done", 1.0)
    logger.info(
        "%s: %s steps in %.1f s, loss %.3f -> %.3f", recipe.name, info.steps, train_seconds, info.first_loss, info.final_loss
    )
    return info
