"""``fusekern train``: fusion training of the target on a packed dataset (``fusekern pack`` output).

Arguments are parsed by ``HfArgumentParser`` over (:class:`TrainModelArguments`,
:class:`~fusekern.FusionArguments`, ``transformers.TrainingArguments``), so every
``TrainingArguments`` flag passes through (``--deepspeed``, ``--fsdp``, ``--bf16``, ...). A single
``.json``/``.yaml`` argument is read as a config file. Multi-GPU: ``accelerate launch -m fusekern train ...``
or ``torchrun --nproc_per_node 8 -m fusekern train ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

_DTYPES = ("auto", "bfloat16", "float16", "float32")


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
        default="auto", metadata={"help": f"dtype to load the model weights in, one of {_DTYPES}."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel (eager, sdpa, flash_attention_2, ...)."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N blocks."})


def build_arg_parser():
    from transformers import HfArgumentParser, TrainingArguments

    from fusekern.trainer import FusionArguments

    return HfArgumentParser(
        (TrainModelArguments, FusionArguments, TrainingArguments),
        prog="fusekern train",
        description="Fusion training of the target (λ·CLM + (1−λ)·fusion) with transformers.Trainer; "
        "every TrainingArguments flag is accepted.",
    )


def parse_train_args(argv: Sequence[str]):
    """(model/data args, FusionArguments, TrainingArguments) from a command line or a config file."""
    parser = build_arg_parser()
    argv = list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def load_blocks(path: str, *, what: str):
    """A packed dataset from ``save_to_disk`` with numpy formatting (fast [T, S, K] rows)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} {path!r} is not a directory written by `fusekern pack`")
    ds = load_from_disk(path)
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise ValueError(f"{what} {path!r} is a DatasetDict without a 'train' split")
        ds = ds["train"]
    if not isinstance(ds, Dataset) or "input_ids" not in ds.column_names:
        raise ValueError(f"{what} {path!r} has no 'input_ids' column")
    return ds.with_format("numpy")


def run_train(model_args: TrainModelArguments, fusion_args: Any, training_args: Any) -> dict:
    """Train and save the target; returns the train metrics."""
    import torch

    from fusekern.pipeline.io import load_causal_lm, load_tokenizer
    from fusekern.pipeline.pack import check_target_vocab
    from fusekern.pipeline.paths import check_name_or_path
    from fusekern.trainer import FusionTrainer, load_fusion_meta

    if model_args.model_dtype not in _DTYPES:
        raise ValueError(f"model_dtype must be one of {_DTYPES}, got {model_args.model_dtype!r}")
    for flag, value, local_only in (
        ("--model_name_or_path", model_args.model_name_or_path, False),
        ("--tokenizer_name_or_path", model_args.tokenizer_name_or_path, False),
        ("--data_path", model_args.data_path, True),
        ("--eval_data_path", model_args.eval_data_path, True),
    ):
        if value is not None:  # a mistyped local path: one line naming the flag, no Hub lookup
            check_name_or_path(value, flag, local_only=local_only)
    meta = load_fusion_meta(model_args.data_path)
    train_ds = load_blocks(model_args.data_path, what="data_path")
    if model_args.max_train_samples is not None:
        train_ds = train_ds.select(range(min(model_args.max_train_samples, len(train_ds))))
    eval_ds = (
        load_blocks(model_args.eval_data_path, what="eval_data_path") if model_args.eval_data_path else None
    )

    tok_name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    # fusekern's loaders: a wrong path is a clear FileNotFoundError, not a Hub-lookup traceback
    tokenizer = load_tokenizer(tok_name, trust_remote_code=model_args.trust_remote_code)
    check_target_vocab(meta, tokenizer, None, what="--data_path")  # before loading a large model
    dtype = (
        model_args.model_dtype if model_args.model_dtype == "auto" else getattr(torch, model_args.model_dtype)
    )
    model = load_causal_lm(
        model_args.model_name_or_path,
        dtype=dtype,
        trust_remote_code=model_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
    )

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


def _handler(args: argparse.Namespace) -> int:
    argv = list(args.train_args)
    if not argv:
        build_arg_parser().print_usage(sys.stderr)
        print(
            "fusekern train: error: give --model_name_or_path, --data_path and --output_dir", file=sys.stderr
        )
        return 2
    run_train(*parse_train_args(argv))
    return 0


def register(subparsers: Any) -> None:
    # Everything after `train` goes to HfArgumentParser ('+' prefix so argparse keeps '--flags' for it).
    p = subparsers.add_parser(
        "train",
        help="fusion training of the target (FusionTrainer; all TrainingArguments flags pass through)",
        add_help=False,
        prefix_chars="+",
    )
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_handler)
