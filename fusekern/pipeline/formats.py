"""The on-disk contract between the pipeline's stages and the trainer, in one place: each stage
output's meta file name and ``format`` string, its columns, the option values recorded in it,
and the readers of the packed dataset (the fields are described in docs/DATA_FORMAT.md).

Light on purpose: nothing heavier than the standard library is imported at module level, so the
CLI can take its option choices from here while it parses (``datasets`` is imported by the
readers that need it).
"""

from __future__ import annotations

import json
import os
from typing import Any, Union

# ------------------------------------------------------------------------------ split (stage 1)
SPLIT_FORMAT = "fusekern-split/1"
SPLIT_META_FILE = "split_meta.json"

# ---------------------------------------------------------------------------- extract (stage 2)
EXTRACT_FORMAT = "fusekern-extract/2"  # /2 added the logsumexp column
EXTRACT_READ_FORMATS = (EXTRACT_FORMAT, "fusekern-extract/1")  # what load_extract reads (/1: no logsumexp)
EXTRACT_META_FILE = "extract_meta.json"
EXTRACT_LOG_FILE = "extract.log"
EXTRACT_TOKENIZER_DIR = "tokenizer"  # the source tokenizer, saved beside the shards
SHARD_META_FILE = "shard.json"  # in each finished shard directory
SHARD_DATA_FILE = "data.arrow"
EXTRACT_COLUMNS = (
    "doc_id",
    "text_hash",
    "input_ids",
    "topk_ids",
    "topk_logits",
    "ce",
    "doc_ce",
    "logsumexp",
)

# ------------------------------------------------------------------------------ align (stage 4)
MODES = ("bytes", "fusellm")
"""Alignment rules (``run_align(mode=...)``, ``--mode``; recorded as ``mode``)."""
POSITIONS = ("span", "boundary", "all")
"""Which target positions take a source's top-k in bytes mode (``positions=``, ``--positions``)."""
ALIGNED_FORMAT = "fusekern-aligned/1"
ALIGN_META_FILE = "align_meta.json"
ALIGNED_COLUMNS = (
    "doc_id",
    "input_ids",
    "teacher_ids",
    "teacher_logits",
    "source_ce",
    "source_ce_doc",
    "n_aligned",
    "n_one_to_one",
    "used_dtw",
    "n_mid_token",
    "n_mid_beyond_gold",
)

# ------------------------------------------------------------------------------- pack (stage 5)
PACKED_FORMAT = "fusekern-packed/1"
PACKED_META_FILE = "fusion_meta.json"
TEACHER_COLUMNS = ("teacher_ids", "teacher_logits", "source_ce", "source_ce_doc")
"""Per-token teacher columns of a packed block."""
PACKED_COLUMNS = ("input_ids", "labels", "position_ids", *TEACHER_COLUMNS)
"""Every column a packed block may have (``position_ids`` only with ``pack_documents``)."""


def packed_features(num_sources: int, top_k: int, with_position_ids: bool):
    """The ``datasets.Features`` (also the Arrow schema) of packed blocks with ``num_sources``
    sources of ``top_k`` entries."""
    import datasets

    seq, val = datasets.Sequence, datasets.Value
    tokens = ("input_ids", "labels", "position_ids") if with_position_ids else ("input_ids", "labels")
    cols = {name: seq(val("int32")) for name in tokens}
    cols["teacher_ids"] = seq(seq(seq(val("int32"), length=top_k), length=num_sources))
    cols["teacher_logits"] = seq(seq(seq(val("float16"), length=top_k), length=num_sources))
    cols["source_ce"] = seq(seq(val("float32"), length=num_sources))
    cols["source_ce_doc"] = seq(seq(val("float32"), length=num_sources))
    return datasets.Features(cols)


def load_fusion_meta(path: Union[str, os.PathLike]) -> dict:
    """The ``fusion_meta.json`` of a packed dataset directory (or that JSON file itself)."""
    path = os.fspath(path)
    file = os.path.join(path, PACKED_META_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"{path!r} is not a packed fusion dataset (no {PACKED_META_FILE}); write one with `fusekern pack`"
        )
    with open(file, encoding="utf-8") as f:
        meta = json.load(f)
    if not isinstance(meta.get("sources"), list) or not meta["sources"]:
        raise ValueError(f"{file}: 'sources' must be a non-empty list of source names")
    return meta


def load_packed(out_dir: str) -> tuple[Any, dict]:
    """The packed dataset in ``out_dir`` (a ``datasets.Dataset``) and its ``fusion_meta.json``."""
    import datasets

    meta = load_fusion_meta(out_dir)
    return datasets.load_from_disk(out_dir), meta


def load_blocks(path: str, *, what: str):
    """Training or eval blocks saved with ``save_to_disk`` (a packed dataset, or any dataset with
    ``input_ids``), numpy-formatted (fast ``[T, S, K]`` rows); ``what`` names the argument."""
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
