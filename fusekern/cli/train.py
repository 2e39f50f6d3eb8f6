"""``fusekern train``: fusion training of the target on a packed dataset (``fusekern pack`` output).

Arguments are parsed by ``HfArgumentParser`` over (:class:`~fusekern.trainer.run.TrainModelArguments`,
:class:`~fusekern.FusionArguments`, ``transformers.TrainingArguments``), so every
``TrainingArguments`` flag passes through (``--deepspeed``, ``--fsdp``, ``--bf16``, ...). A single
``.json``/``.yaml`` argument is read as a config file. The training itself is
:func:`fusekern.trainer.run.run_train`. Multi-GPU: ``accelerate launch -m fusekern train ...``
or ``torchrun --nproc_per_node 8 -m fusekern train ...``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence


def build_arg_parser():
    from transformers import HfArgumentParser, TrainingArguments

    from fusekern.trainer import FusionArguments
    from fusekern.trainer.run import TrainModelArguments

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


def _handler(args: argparse.Namespace) -> int:
    argv = list(args.train_args)
    if not argv:
        build_arg_parser().print_usage(sys.stderr)
        print(
            "fusekern train: error: give --model_name_or_path, --data_path and --output_dir", file=sys.stderr
        )
        return 2
    from fusekern.trainer.run import run_train

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
