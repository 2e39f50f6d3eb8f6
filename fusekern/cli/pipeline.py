"""``fusekern split | extract | align | pack``: the data pipeline stages on the command line.

(``fusekern vocab-map`` lives in ``fusekern.cli.vocab_map``.) Every model, tokenizer and
dataset argument takes a local path or a Hub name. Typical run::

    fusekern split   --data corpus.jsonl --tokenizers TGT SRC1 SRC2 --block-size 2048 --out split/
    fusekern extract --model SRC1 --data split/ --out ext/src1      # also under accelerate launch
    fusekern extract --model SRC2 --data split/ --out ext/src2
    fusekern align   --target-tokenizer TGT --data split/ --sources ext/src1 ext/src2 --out aligned/
    fusekern pack    --aligned aligned/ --block-size 2048 --out packed/
"""

from __future__ import annotations

import argparse

from fusekern.pipeline.formats import MODES, PACKED_META_FILE, POSITIONS, TEACHER_COLUMNS

__all__ = ["register"]


def _check_inputs(args: argparse.Namespace, flags: dict) -> None:
    """Every name-or-path option (``flag -> local_only``): a missing local path is a one-line
    error naming the flag, not a Hub lookup."""
    from fusekern.pipeline.paths import check_name_or_path  # when a command runs: parsing stays light

    for flag, local_only in flags.items():
        values = getattr(args, flag[2:].replace("-", "_"))
        for value in values if isinstance(values, list) else [values]:
            if value is not None:
                check_name_or_path(value, flag, local_only=local_only)


def _split(args: argparse.Namespace) -> int:
    from fusekern.pipeline import run_split

    _check_inputs(args, {"--data": False, "--tokenizers": False})
    run_split(
        args.data,
        args.out,
        args.tokenizers,
        args.block_size,
        text_column=args.text_column,
        num_proc=args.num_proc,
        split=args.split,
        overwrite=args.overwrite,
    )
    return 0


def _extract(args: argparse.Namespace) -> int:
    from fusekern.pipeline import run_extract

    _check_inputs(args, {"--model": False, "--tokenizer": False, "--data": False})
    run_extract(
        args.model,
        args.data,
        args.out,
        tokenizer=args.tokenizer,
        top_k=args.top_k,
        batch_size=args.batch_size,
        num_shards=args.num_shards,
        shard_index=args.shard_index,
        device=args.device,
        dtype=args.dtype,
        text_column=args.text_column,
        split=args.split,
        max_length=args.max_length,
        trust_remote_code=args.trust_remote_code,
        progress=not args.no_progress,
    )
    return 0


def _align(args: argparse.Namespace) -> int:
    from fusekern.pipeline import run_align

    _check_inputs(
        args, {"--target-tokenizer": False, "--data": False, "--sources": True, "--vocab-maps": True}
    )
    run_align(
        args.target_tokenizer,
        args.data,
        args.sources,
        args.out,
        source_names=args.source_names,
        vocab_maps=args.vocab_maps,
        mode=args.mode,
        **({"positions": args.positions} if args.positions is not None else {}),
        num_proc=args.num_proc,
        text_column=args.text_column,
        split=args.split,
        batch_size=args.batch_size,
        threads=args.threads,
        overwrite=args.overwrite,
    )
    return 0


def _pack(args: argparse.Namespace) -> int:
    from fusekern.pipeline import run_pack

    _check_inputs(args, {"--aligned": True})
    run_pack(
        args.aligned,
        args.out,
        block_size=args.block_size,
        pack_documents=args.pack_documents,
        num_proc=args.num_proc,
        overwrite=args.overwrite,
    )
    return 0


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        required=True,
        help="dataset: a save_to_disk directory, a .json/.jsonl/.parquet/.txt/.csv file, or a Hub name",
    )
    p.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    p.add_argument("--split", default=None, help="dataset split to read (default: train, or the only one)")


def _overwrite_arg(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace an earlier `fusekern {stage}` output at --out (nothing else is ever replaced)",
    )


def _add_split(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "split",
        help="cut long documents to fit the block size under every tokenizer",
        description="Cut documents on whitespace so that every piece (plus EOS) fits --block-size "
        "tokens under each of --tokenizers (target and all sources).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _data_args(p)
    p.add_argument(
        "--tokenizers", nargs="+", required=True, metavar="TOK", help="target and source tokenizers"
    )
    p.add_argument("--block-size", type=int, required=True, help="training block size in tokens")
    p.add_argument("--out", required=True, help="output directory (datasets save_to_disk)")
    _overwrite_arg(p, "split")
    p.add_argument("--num-proc", type=int, default=None, help="worker processes (default: 1)")
    p.set_defaults(func=_split)


def _add_extract(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "extract",
        help="per-token top-k logits and CE of one source model (sharded, resumable)",
        description="Run a causal LM over the documents and store per token its top-k (ids int32, "
        "logits fp16) and the gold-token CE. Shards are written atomically and skipped when "
        "finished; under `accelerate launch`/`torchrun` each process takes the shards i with "
        "i % WORLD_SIZE == RANK.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="causal LM: local directory or Hub name")
    p.add_argument("--tokenizer", default=None, help="tokenizer (default: the model's)")
    _data_args(p)
    p.add_argument("--out", required=True, help="output directory (new, empty, or this extract's: resumed)")
    p.add_argument("--top-k", type=int, default=10, help="logits kept per position (default: 10)")
    p.add_argument("--batch-size", type=int, default=8, help="documents per forward pass (default: 8)")
    p.add_argument(
        "--num-shards", type=int, default=None, help="shards to cut the data into (default: WORLD_SIZE or 1)"
    )
    p.add_argument(
        "--shard-index",
        type=int,
        nargs="+",
        default=None,
        help="shard(s) to compute (default: all of this process's share)",
    )
    p.add_argument(
        "--device", default=None, help="torch device (default: cuda:LOCAL_RANK if available, else cpu)"
    )
    p.add_argument("--dtype", default=None, help="bf16 | fp16 | fp32 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument(
        "--max-length", type=int, default=None, help="longest document allowed (default: model positions)"
    )
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the Hub")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_extract)


def _add_align(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "align",
        help="move source top-k lists onto the target's tokens and vocabulary",
        description="Align each source extract to the target tokenisation (byte-exact by default, "
        "DTW where bytes differ; --mode fusellm for FuseLLM's DTW rule) and map the top-k ids.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target-tokenizer", required=True, help="the target model's tokenizer")
    _data_args(p)
    p.add_argument("--sources", nargs="+", required=True, metavar="EXTRACT_DIR", help="extract directories")
    p.add_argument(
        "--source-names", nargs="+", default=None, help="names of the sources (default: directory names)"
    )
    p.add_argument(
        "--vocab-maps",
        nargs="+",
        default=None,
        metavar="FILE",
        help="one `fusekern vocab-map` file per source (default: computed now)",
    )
    p.add_argument("--mode", choices=MODES, default="bytes", help="alignment rule (default: bytes)")
    p.add_argument(
        "--positions",
        choices=POSITIONS,
        default=None,
        help="bytes mode: which target positions take a source's top-k: 'span' (next tokens cut alike), "
        "'boundary' (every shared token boundary) or 'all' (also inside a source token); default: "
        "run_align's (docs/DATA_FORMAT.md)",
    )
    p.add_argument("--out", required=True, help="output directory")
    _overwrite_arg(p, "align")
    p.add_argument("--num-proc", type=int, default=1, help="datasets.map worker processes (default: 1)")
    p.add_argument("--threads", type=int, default=None, help="native threads per worker")
    p.add_argument("--batch-size", type=int, default=256, help="documents per map batch (default: 256)")
    p.set_defaults(func=_align)


def _add_pack(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pack",
        help="cut aligned documents into training blocks (the trainer's dataset)",
        description=f"Write blocks of <= --block-size tokens with input_ids, labels, "
        f"{', '.join(TEACHER_COLUMNS)}, plus {PACKED_META_FILE}. One document per block "
        "unless --pack-documents.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--aligned", required=True, help="output directory of `fusekern align`")
    p.add_argument("--out", required=True, help="output directory")
    _overwrite_arg(p, "pack")
    p.add_argument("--block-size", type=int, required=True, help="block size in tokens")
    p.add_argument(
        "--pack-documents",
        action="store_true",
        help="concatenate documents into full blocks with restarting position_ids (attention crosses "
        "documents unless the model uses flash_attention_2)",
    )
    p.add_argument("--num-proc", type=int, default=None, help="worker processes (default: 1)")
    p.set_defaults(func=_pack)


def register(subparsers: argparse._SubParsersAction) -> None:
    for add in (_add_split, _add_extract, _add_align, _add_pack):
        add(subparsers)
