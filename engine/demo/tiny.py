"""An untrained, very small Llama model for tests: built in seconds, loads in vLLM on the CPU."""

from __future__ import annotations

from pathlib import Path

from engine.demo.tokenizer import train_tokenizer

_TINY_TEXTS = [
    "Hello, how can I help you today?",
    "I forgot my password and cannot log in to my account.",
    "Where is my order? It has not been delivered yet.",
    "I would like a refund for my last invoice, please.",
    "Please cancel my subscription at the end of the month.",
    "How do you use my personal data and can I delete it?",
    "Can I speak to a human agent about my billing problem?",
    "The quick brown fox jumps over the lazy dog 0123456789.",
]


def build_tiny_model(out_dir: Path, *, max_position_embeddings: int = 512, seed: int = 0) -> Path:
    """Write a random-weight Llama model (2 layers, hidden 128, head size 64) with its tokenizer to ``out_dir``.

    The tokenizer carries the demo chat template, so chat requests work. Returns ``out_dir``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and (out_dir / "tokenizer.json").exists():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(_TINY_TEXTS * 4, vocab_size=512)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head size 64: the CPU attention backend rejects 16
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_lora(base_dir: Path, out_dir: Path, *, rank: int = 8, seed: int = 1, scale: float = 0.5) -> Path:
    """Write a random LoRA adapter (PEFT format: q_proj and v_proj of every layer) for the model in ``base_dir``.

    The B matrices are not zero (as a fresh PEFT adapter's are), so the adapter changes the model's answers.
    """
    import json

    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((Path(base_dir) / "config.json").read_text())
    hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
    kv_dim = hidden // int(config["num_attention_heads"]) * int(config.get("num_key_value_heads", 1))
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(layers):
        for module, out_features in (("q_proj", hidden), ("v_proj", kv_dim)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, hidden, generator=generator) * scale
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * scale
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    (out_dir / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "bias": "none", "fan_in_fan_out": False,
        "base_model_name_or_path": str(base_dir), "modules_to_save": None,
    }, indent=2))
    return out_dir
