"""The library's training entry point: load the target and a packed dataset, train with
:class:`~fusekern.FusionTrainer`, save the run. ``fusekern train`` parses its arguments
(:class:`TrainModelArguments`, :class:`~fusekern.FusionArguments`, ``TrainingArguments``) and the
demo builds them; both call :func:`run_train`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from fusekern.pipeline.formats import load_blocks, load_fusion_meta
from fusekern.pipeline.io import load_causal_lm, load_tokenizer
from fusekern.pipeline.pack import check_target_vocab
from fusekern.pipeline.paths import check_name_or_path
from fusekern.trainer.args import FusionArguments
from fusekern.trainer.trainer import FusionTrainer

DTYPES = ("auto", "bfloat16", "float16", "float32")
"""Values of ``--model_dtype``."""


@dataclass
class TrainModelArguments:
    """The target model and the data (names avoid ``TrainingArguments``' and ``FusionArguments``')."""

    model_name_or_path: str = field(
        metadata={"help": "Target model to train: a local directory or Hub name."}
    )
    data_path: str = field(metadata={"help": "Packed fusion dataset directory (written by `fusekern pack`)."})
    eval_data_path: str | None = field(
        default=None,
        metadata={
            "help": "Optional eval set: a packed dataset (fusion loss) or any saved dataset with input_ids."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Target tokenizer (default: model_name_or_path)."}
    )
    model_dtype: str = field(
        default="auto", metadata={"help": f"dtype to load the model weights in, one of {DTYPES}."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel (eager, sdpa, flash_attention_2, ...)."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N blocks."})


def run_train(model_args: TrainModelArguments, fusion_args: FusionArguments, training_args: Any) -> dict:
    """Train and save the target (``training_args``: ``transformers.TrainingArguments``); returns
    the train metrics."""
    _check_model_args(model_args)
    meta = load_fusion_meta(model_args.data_path)
    train_ds = load_blocks(model_args.data_path, what="data_path")
    if model_args.max_train_samples is not None:
        train_ds = train_ds.select(range(min(model_args.max_train_samples, len(train_ds))))
    eval_ds = (
        load_blocks(model_args.eval_data_path, what="eval_data_path") if model_args.eval_data_path else None
    )
    tokenizer, model = _load_target(model_args, meta)
    trainer = FusionTrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        fusion_args=fusion_args,
        fusion_meta=meta,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        with open(os.path.join(training_args.output_dir, "fusion_args.json"), "w", encoding="utf-8") as f:
            json.dump(
                {"fusion": asdict(fusion_args), "data": asdict(model_args), "fusion_meta": meta}, f, indent=2
            )
    return result.metrics


def _check_model_args(model_args: TrainModelArguments) -> None:
    """One clear error for a bad dtype or a mistyped local path (naming the flag, no Hub lookup)."""
    if model_args.model_dtype not in DTYPES:
        raise ValueError(f"model_dtype must be one of {DTYPES}, got {model_args.model_dtype!r}")
    for flag, value, local_only in (
        ("--model_name_or_path", model_args.model_name_or_path, False),
        ("--tokenizer_name_or_path", model_args.tokenizer_name_or_path, False),
        ("--data_path", model_args.data_path, True),
        ("--eval_data_path", model_args.eval_data_path, True),
    ):
        if value is not None:
            check_name_or_path(value, flag, local_only=local_only)


def _load_target(model_args: TrainModelArguments, meta: dict) -> tuple[Any, Any]:
    """(tokenizer, model) of the target; the tokenizer is checked against the data before the
    (possibly large) model is loaded."""
    tok_name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    # fusekern's loaders: a wrong path is a clear FileNotFoundError, not a Hub-lookup traceback
    tokenizer = load_tokenizer(tok_name, trust_remote_code=model_args.trust_remote_code)
    check_target_vocab(meta, tokenizer, None, what="--data_path")
    dtype = model_args.model_dtype
    model = load_causal_lm(
        model_args.model_name_or_path,
        dtype=dtype if dtype == "auto" else getattr(torch, dtype),
        trust_remote_code=model_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
    )
    return tokenizer, model
