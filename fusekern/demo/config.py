"""What the demo builds: models, sizes, steps and the fusion recipe, as two presets.

``full`` is the real demo (≈ 10 minutes on 2 CPU cores); ``tiny`` runs every stage at toy size
in well under a minute (used by the tests). Everything is seeded: a rerun gives the same numbers
up to floating-point nondeterminism of multithreaded CPU kernels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

DOMAINS = ("prose", "code")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the demo: architecture, tokenizer family and how it is pretrained."""

    name: str
    arch: str  # fusekern.demo.toy.models.ARCHS
    tokenizer: str  # fusekern.demo.toy.tokenizers.KINDS
    prose_fraction: float  # share of pretraining sequences drawn from prose (the rest: code)
    steps: int
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    lr: float = 3e-3


@dataclass(frozen=True)
class DemoConfig:
    seed: int = 0
    block_size: int = 256  # tokens per training block, for every model
    vocab_size: int = 4000
    tokenizer_chars: int = 500_000  # per domain, text the tokenizers are trained on
    held_out_chars: int = 60_000  # per domain
    validation_chars: int = 60_000  # per domain, taken from the fusion documents' side (for choices)
    fusion_chars: int = 300_000  # per domain: the continual-training (fusion) corpus
    max_doc_chars: int = 2000  # held-out/fusion documents are chunks of at most this many characters
    pretrain_chars: int = 2_000_000  # per domain, at most this much of the pretraining pool is tokenized
    pretrain_batch: int = 16
    sources: tuple = ()
    target: ModelSpec = None  # type: ignore[assignment]
    # continual training of the target (fusion and its CLM-only control share all of these)
    train_steps: int = 200
    train_batch: int = 8
    train_lr: float = 1.5e-3
    eval_steps: int = 40
    # the fusion recipe
    top_k: int = 64
    lm_weight: float = 0.5
    teacher_temperature: float = 1.0
    fusion_method: str = "min_ce"
    ce_level: str = "token"
    loss_type: str = "kl"
    target_as_source: bool = False
    align_mode: str = "bytes"
    positions: str = "span"  # fusekern.pipeline.align.POSITIONS
    extract_batch: int = 16
    size: str = "custom"  # the preset it came from: "tiny" numbers are not evidence of anything

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        """Stable hash of the whole configuration (cache key of every stage)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def full() -> DemoConfig:
    """The demo: a prose source (GPT-NeoX, SentencePiece unigram), a code source (MPT with a
    byte-level BPE, as MPT-7B has) and a Llama target with a SentencePiece-BPE tokenizer (the
    Llama-2 family), smaller and trained for fewer steps than the sources."""
    return DemoConfig(
        size="full",
        sources=(
            ModelSpec(
                "prose_neox", "gpt_neox", "unigram", prose_fraction=0.9, steps=160, hidden=192, layers=3
            ),
            ModelSpec("code_mpt", "mpt", "byte_bpe", prose_fraction=0.1, steps=160, hidden=192, layers=3),
        ),
        target=ModelSpec(
            "target_llama", "llama", "sp_bpe", prose_fraction=0.5, steps=50, hidden=128, layers=2
        ),
    )


def tiny() -> DemoConfig:
    """Every stage at toy size (seconds); for tests, not for conclusions."""
    return DemoConfig(
        size="tiny",
        block_size=64,
        vocab_size=400,
        tokenizer_chars=30_000,
        held_out_chars=3_000,
        validation_chars=3_000,
        fusion_chars=6_000,
        max_doc_chars=1500,
        pretrain_chars=20_000,
        pretrain_batch=4,
        sources=(
            ModelSpec("prose_neox", "gpt_neox", "unigram", 0.9, steps=4, hidden=32, layers=1, heads=2),
            ModelSpec("code_mpt", "mpt", "byte_bpe", 0.1, steps=4, hidden=32, layers=1, heads=2),
        ),
        target=ModelSpec("target_llama", "llama", "sp_bpe", 0.5, steps=3, hidden=32, layers=1, heads=2),
        train_steps=4,
        train_batch=4,
        eval_steps=2,
        top_k=4,
        extract_batch=8,
    )


PRESETS = {"full": full, "tiny": tiny}


def preset(name: str, **overrides) -> DemoConfig:
    """A preset by name, with fields overridden (e.g. ``lm_weight=0.9``)."""
    if name not in PRESETS:
        raise ValueError(f"size must be one of {sorted(PRESETS)}, got {name!r}")
    cfg = PRESETS[name]()
    return replace(cfg, **overrides) if overrides else cfg


__all__ = ["DOMAINS", "DemoConfig", "ModelSpec", "PRESETS", "full", "preset", "tiny"]
