"""``fusekern vocab-map``: map a source tokenizer's vocabulary onto a target's (exact bytes, else
the longest target byte prefix, else MinED).

Writes a ``.npz`` (default; arrays ``ids``, ``distance``, ``exact``, ``special`` indexed by
source id, plus a ``meta`` JSON string) or a ``.json`` (same fields as lists) when ``--out``
ends with ``.json``. Load it with ``fusekern.align.VocabMap.load``. See
``fusekern/align/vocab.py`` for the matching rules.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "vocab-map",
        help="map source token ids to target token ids (exact, else longest target byte prefix, else MinED)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--source", required=True, metavar="TOK_DIR", help="source tokenizer (directory or tokenizer.json)"
    )
    p.add_argument(
        "--target", required=True, metavar="TOK_DIR", help="target tokenizer (directory or tokenizer.json)"
    )
    p.add_argument("--out", required=True, metavar="FILE", help="output file: .npz (default) or .json")
    p.add_argument(
        "--threads", type=int, default=None, metavar="N", help="worker threads (default: all cores)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fusekern.align.vocab import load_tokenizer, map_vocab

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    source = load_tokenizer(args.source, "--source")
    target = load_tokenizer(args.target, "--target")
    # README's recipe writes into a fresh $W/vocab/; create it before the (possibly long) mapping.
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        print(f"\rvocab-map: {done}/{total} source tokens mapped", end=end, file=sys.stderr, flush=True)

    vmap = map_vocab(source, target, threads=args.threads, progress=progress)
    path = vmap.save(args.out)
    c = vmap.counts()
    n = max(1, c["source_size"])
    mined = (vmap.distance > 0) & ~vmap.special & ~vmap.prefix
    mean_d = float(vmap.distance[mined].mean()) if mined.any() else 0.0
    print(
        f"vocab-map: {c['source_size']} source -> {c['target_size']} target ids in "
        f"{time.perf_counter() - t0:.2f}s: exact {c['exact']} ({100 * c['exact'] / n:.1f}%), "
        f"prefix {c['prefix']}, MinED {c['mined']} (mean distance {mean_d:.2f}), special {c['special']}, "
        f"unmapped {c['unmapped']} -> {path}"
    )
    return 0
