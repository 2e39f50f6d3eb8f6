"""``fusekern vocab-map``: map a source tokenizer's vocabulary onto a target's (exact bytes, else
the longest target byte prefix, else MinED).

Writes a ``.npz`` (arrays ``ids``, ``distance``, ``exact``, ``special`` indexed by source id,
plus a ``meta`` JSON string with the two tokenizers' fingerprints) or a ``.json`` (same fields
as lists); ``--out`` must end with one of the two. Load it with ``fusekern.align.VocabMap.load``.
See ``fusekern/align/vocab.py`` for the matching rules.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "vocab-map",
        help="map source token ids to target token ids (exact, else longest target byte prefix, else MinED)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--source",
        required=True,
        metavar="TOK",
        help="source tokenizer (directory, tokenizer.json file or Hub name)",
    )
    p.add_argument(
        "--target",
        required=True,
        metavar="TOK",
        help="target tokenizer (directory, tokenizer.json file or Hub name)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="output file: NAME.npz or NAME.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing vocab map at --out")
    p.add_argument(
        "--threads", type=int, default=None, metavar="N", help="worker threads (default: all cores)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fusekern.pipeline.vocab import run_vocab_map

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")

    def progress(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        print(f"\rvocab-map: {done}/{total} source tokens mapped", end=end, file=sys.stderr, flush=True)

    run_vocab_map(
        args.source,
        args.target,
        args.out,
        threads=args.threads,
        overwrite=args.overwrite,
        progress=progress,
        arg_names=("--source", "--target"),
    )
    return 0
