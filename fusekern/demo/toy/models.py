"""Tiny causal LMs of different architectures, built from ``transformers`` configs (no download)."""

from __future__ import annotations

import torch
import transformers

ARCHS = ("llama", "mistral", "qwen2", "gpt_neox", "gpt2", "mpt")


def tiny_config(
    arch: str,
    vocab_size: int,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 1024,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> transformers.PretrainedConfig:
    """A small config of architecture ``arch`` (one of :data:`ARCHS`)."""
    ids = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    inter = 4 * hidden
    if arch in ("llama", "mistral", "qwen2"):
        cls = {
            "llama": transformers.LlamaConfig,
            "mistral": transformers.MistralConfig,
            "qwen2": transformers.Qwen2Config,
        }[arch]
        return cls(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=max_positions,
            tie_word_embeddings=False,
            **ids,
        )
    if arch == "gpt_neox":
        return transformers.GPTNeoXConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=max_positions,
            rotary_pct=0.25,
            **ids,
        )
    if arch == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_positions=max_positions,
            **ids,
        )
    if arch == "mpt":
        return transformers.MptConfig(
            vocab_size=vocab_size,
            d_model=hidden,
            n_layers=layers,
            n_heads=heads,
            max_seq_len=max_positions,
            **ids,
        )
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def tiny_causal_lm(
    arch: str,
    vocab_size: int,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 1024,
    seed: int = 0,
    **token_ids: int | None,
) -> transformers.PreTrainedModel:
    """A freshly initialised ``AutoModelForCausalLM`` of architecture ``arch``; deterministic in ``seed``."""
    cfg = tiny_config(
        arch, vocab_size, hidden=hidden, layers=layers, heads=heads, max_positions=max_positions, **token_ids
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    return model.eval()
