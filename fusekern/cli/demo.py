"""``fusekern demo``: the whole FuseLLM recipe on the standard library, offline, on CPU.

Trains a prose source and a code source (different architectures and tokenizer families) and a
target from scratch, runs split → extract → vocab map → align → pack, continues the target with
fusion and with CLM only (same data, steps, lr, seed) and reports held-out perplexity and bits
per byte, a plot and ``results.json``. Stages are cached under --out: rerunning resumes, and a
changed recipe reruns only what it affects.
"""

from __future__ import annotations

import argparse
from typing import Any

POSITIONS = ("span", "boundary", "all")  # fusekern.pipeline.align.POSITIONS (a test keeps them equal)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="knowledge fusion end to end on stdlib text (about 8 minutes on 2 idle CPU cores)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", default="fusekern_demo", metavar="DIR", help="output/cache directory (default: %(default)s)"
    )
    p.add_argument(
        "--size", default="full", choices=("full", "tiny"), help="'tiny' runs every stage at toy size"
    )
    p.add_argument("--fresh", action="store_true", help="ignore cached stages and recompute everything")
    p.add_argument("--lm-weight", type=float, default=None, help="λ of the fused run (default: the preset's)")
    p.add_argument("--teacher-temperature", type=float, default=None, help="teacher softmax temperature")
    p.add_argument("--fusion-method", choices=("min_ce", "avg_ce"), default=None)
    p.add_argument(
        "--train-steps", type=int, default=None, help="continual-training steps of both target runs"
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--positions",
        choices=POSITIONS,
        default=None,
        help="which target positions take a source's top-k (see docs/DATA_FORMAT.md; default: the preset's)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: the cores not busy with other work, from the load average)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fusekern.demo import preset, run_demo

    overrides = {
        "lm_weight": args.lm_weight,
        "teacher_temperature": args.teacher_temperature,
        "fusion_method": args.fusion_method,
        "train_steps": args.train_steps,
        "seed": args.seed,
        "positions": args.positions,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "lm_weight" in overrides and not 0.0 <= overrides["lm_weight"] <= 1.0:
        raise ValueError(f"--lm-weight must be in [0, 1], got {overrides['lm_weight']}")
    if "teacher_temperature" in overrides and not overrides["teacher_temperature"] > 0:
        raise ValueError(f"--teacher-temperature must be > 0, got {overrides['teacher_temperature']}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if "train_steps" in overrides and overrides["train_steps"] < 1:
        raise ValueError(f"--train-steps must be >= 1, got {overrides['train_steps']}")
    run_demo(args.out, preset(args.size, **overrides), fresh=args.fresh, threads=args.threads)
    return 0
