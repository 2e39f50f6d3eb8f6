"""Stage 5, pack: cut the aligned documents into training blocks of at most ``block_size``
tokens, every per-token array cut alongside, and write the trainer's dataset (schema in
:mod:`fusekern.pipeline.formats` and docs/DATA_FORMAT.md) plus ``fusion_meta.json``.

Document boundaries (the default, ``pack_documents=False``): **one document per block**.
``split`` already cut documents to fit, so a block is one whole document (shorter blocks are
padded by the trainer's collator). A document that is still longer is cut into blocks that
overlap by one token: block ``k`` starts at ``k * (block_size - 1)``, so the last token of one
block is the first input of the next and every next-token prediction is made exactly once.
No block ever holds two documents, so attention never crosses a document boundary with any
attention implementation.

``pack_documents=True`` concatenates consecutive documents (greedily, in order) into full
blocks and adds ``position_ids`` restarting at 0 at each document, with ``labels = -100`` at
each document's first token (nothing predicts a document's first token from the previous
one); packing is greedy within each ``datasets.map`` batch (``batch_size`` documents), so the
last block of a batch may be short. Caveat: Hugging Face models only turn position-id restarts
into separate attention segments with ``attn_implementation="flash_attention_2"`` (the varlen
path); with ``eager`` and ``sdpa`` (all CPUs) a token *does* attend to the earlier documents of
its block. Use it only with such a kernel.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from typing import NamedTuple

import datasets
import numpy as np
import pyarrow as pa

from fusekern.pipeline.formats import (
    ALIGN_META_FILE,
    ALIGNED_FORMAT,
    PACKED_FORMAT,
    PACKED_META_FILE,
    packed_features,
)
from fusekern.pipeline.io import check_unique_names, read_json, save_dataset_atomic, vocab_fingerprint
from fusekern.pipeline.paths import OutputDir, prepare_output_dir

OUTPUT = OutputDir("pack", PACKED_META_FILE, (PACKED_FORMAT,))


def _max_id(column: pa.ChunkedArray) -> int:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    while pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type):
        arr = arr.flatten()
    value = pa.compute.max(arr).as_py()
    return -1 if value is None else int(value)


def check_target_vocab(meta: dict, tokenizer, vocab_size: int | None, what: str = "data_path") -> None:
    """Refuse to train on packed data made for another target: the target vocabulary's
    fingerprint recorded by pack must match ``tokenizer`` (when both are known), and every token
    id in the data must be below the model's ``vocab_size`` (embedding rows)."""
    recorded = meta.get("target_vocab_sha256")
    if recorded and tokenizer is not None and hasattr(tokenizer, "get_vocab"):
        if vocab_fingerprint(tokenizer) != recorded:
            raise ValueError(
                f"{what} was packed for another target tokenizer ({meta.get('target')!r}, "
                f"{meta.get('target_vocab_size')} ids): the model's tokenizer "
                f"({getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__!r}) has a different "
                "vocabulary; align and pack the data for this target"
            )
    max_id = meta.get("max_token_id")
    if vocab_size is not None and max_id is not None and int(max_id) >= int(vocab_size):
        raise ValueError(
            f"{what} holds token id {max_id} but the model has only {vocab_size} embedding rows: the data "
            f"was made for another target ({meta.get('target')!r})"
        )


def _flat(arr: pa.Array, width: int, dtype) -> np.ndarray:
    while pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type):
        arr = arr.flatten()
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=dtype).reshape((-1, *width) if width else -1)


class _Pieces(NamedTuple):
    """The pieces of a batch's documents, one entry per piece (int64 arrays)."""

    doc: np.ndarray  # document index within the batch
    start: np.ndarray  # first token of the piece in its document
    end: np.ndarray  # one past its last token


def _pieces(lengths: np.ndarray, block: int) -> _Pieces:
    """Every piece: whole documents, or one-token-overlap cuts of those longer than ``block``."""
    docs, starts, ends = [], [], []
    for d, n in enumerate(lengths.tolist()):
        s = 0
        while True:
            e = min(s + block, n)
            docs.append(d)
            starts.append(s)
            ends.append(e)
            if e >= n:
                break
            s = e - 1
    return _Pieces(*(np.array(x, dtype=np.int64) for x in (docs, starts, ends)))


def _block_lengths(piece_lengths: np.ndarray, block: int, concat: bool) -> np.ndarray:
    """Tokens per output block: one piece each, or (``concat``) pieces gathered greedily, in
    order, a piece opening a new block when it does not fit."""
    if not concat:
        return piece_lengths
    block_of = np.zeros(len(piece_lengths), dtype=np.int64)
    fill = 0
    b = 0
    for i, n in enumerate(piece_lengths.tolist()):
        if fill and fill + n > block:
            b += 1
            fill = 0
        block_of[i] = b
        fill += n
    return np.bincount(block_of, weights=piece_lengths).astype(np.int64)


def _pack_batch(batch: pa.Table, *, block: int, num_s: int, top_k: int, concat: bool) -> pa.Table:
    ids_col = batch.column("input_ids").combine_chunks()
    offsets = np.asarray(ids_col.offsets.to_numpy(), dtype=np.int64)
    offsets = offsets - offsets[0]
    lengths = np.diff(offsets)
    input_ids = _flat(ids_col, (), np.int32)
    t_ids = _flat(batch.column("teacher_ids").combine_chunks(), (num_s, top_k), np.int32)
    t_log = _flat(batch.column("teacher_logits").combine_chunks(), (num_s, top_k), np.float16)
    ce = _flat(batch.column("source_ce").combine_chunks(), (num_s,), np.float32)
    ce_doc = _flat(batch.column("source_ce_doc").combine_chunks(), (num_s,), np.float32)

    pieces = _pieces(lengths, block)
    plen = pieces.end - pieces.start
    blk_len = _block_lengths(plen, block, concat)
    gather = np.concatenate(
        [np.arange(offsets[d] + s, offsets[d] + e) for d, s, e in zip(pieces.doc, pieces.start, pieces.end)]
    )
    tok_doc = np.repeat(pieces.doc, plen)
    blk_off = np.zeros(len(blk_len) + 1, dtype=np.int64)
    np.cumsum(blk_len, out=blk_off[1:])
    out_off = pa.array(blk_off.astype(np.int32), type=pa.int32())

    new_ids = input_ids[gather]
    labels = new_ids.copy()
    cols = {"input_ids": new_ids, "labels": labels}
    if concat:
        piece_off = np.concatenate([[0], np.cumsum(plen)[:-1]])
        cols["position_ids"] = (np.arange(len(gather)) - np.repeat(piece_off, plen)).astype(np.int32)
        labels[piece_off] = -100

    def per_token(values: np.ndarray, typ: pa.DataType, shape: tuple) -> pa.Array:
        arr = pa.array(values.reshape(-1), type=typ)
        for width in reversed(shape):
            arr = pa.FixedSizeListArray.from_arrays(arr, width)
        return pa.ListArray.from_arrays(out_off, arr)

    arrays = [per_token(cols[k], pa.int32(), ()) for k in cols]
    arrays += [
        per_token(t_ids[gather], pa.int32(), (num_s, top_k)),
        per_token(t_log[gather], pa.float16(), (num_s, top_k)),
        per_token(ce[gather], pa.float32(), (num_s,)),
        per_token(ce_doc[tok_doc], pa.float32(), (num_s,)),
    ]
    return pa.Table.from_arrays(arrays, schema=packed_features(num_s, top_k, concat).arrow_schema)


def _read_aligned_meta(aligned_dir: str) -> dict:
    """The ``align_meta.json`` of an aligned dataset, checked to be one."""
    meta_path = os.path.join(aligned_dir, ALIGN_META_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(
            f"{aligned_dir!r} is not an aligned dataset (no {ALIGN_META_FILE}); run align first"
        )
    ameta = read_json(meta_path)
    if ameta.get("format") != ALIGNED_FORMAT:
        raise ValueError(f"{aligned_dir!r}: unknown aligned format {ameta.get('format')!r}")
    check_unique_names(list(ameta["sources"]), f"aligned dataset {aligned_dir!r}")
    return ameta


def _pack_dataset(
    aligned: datasets.Dataset,
    cache: str,
    *,
    block_size: int,
    num_s: int,
    top_k: int,
    concat: bool,
    batch_size: int,
    num_proc: int | None,
) -> datasets.Dataset:
    """All blocks of ``aligned``, written once to ``cache`` by ``datasets.map``."""
    return (
        aligned.with_format("arrow")
        .map(
            _pack_batch,
            batched=True,
            batch_size=batch_size,
            num_proc=num_proc,
            remove_columns=aligned.column_names,
            features=packed_features(num_s, top_k, concat),
            fn_kwargs={"block": block_size, "num_s": num_s, "top_k": top_k, "concat": concat},
            cache_file_name=os.path.join(cache, "packed.arrow"),
            load_from_cache_file=False,
            new_fingerprint=f"fusekern-pack-{uuid.uuid4().hex}",
            desc="pack",
        )
        .with_format(None)
    )


def _packed_meta(
    packed: datasets.Dataset, aligned: datasets.Dataset, ameta: dict, *, block_size: int, pack_documents: bool
) -> dict:
    """The ``fusion_meta.json`` of ``packed`` (without ``seconds``)."""
    doc_lengths = pa.compute.list_value_length(aligned.data.column("input_ids")).to_numpy()
    n_tokens = int(pa.compute.sum(pa.compute.list_value_length(packed.data.column("input_ids"))).as_py() or 0)
    return {
        "format": PACKED_FORMAT,
        "sources": ameta["sources"],
        "target": ameta["target"],
        "target_vocab_sha256": ameta.get("target_vocab_sha256"),
        "target_vocab_size": ameta.get("target_vocab_size"),
        "max_token_id": max(
            _max_id(packed.data.column("input_ids")), _max_id(packed.data.column("teacher_ids"))
        ),
        "top_k": int(ameta["top_k"]),
        "block_size": block_size,
        "mode": ameta["mode"],
        "packing": "concat" if pack_documents else "document",
        "columns": list(packed.column_names),
        "num_blocks": len(packed),
        "num_tokens": n_tokens,
        "num_docs": len(aligned),
        "docs_cut": int((np.asarray(doc_lengths, dtype=np.int64) > block_size).sum()),
        "aligned_fraction": ameta.get("aligned_fraction"),
        "teacher_convention": "position t holds the distribution for the token at t+1; ids -1 = padding",
    }


def run_pack(
    aligned_dir: str,
    out_dir: str,
    *,
    block_size: int,
    pack_documents: bool = False,
    num_proc: int | None = None,
    batch_size: int = 512,
    overwrite: bool = False,
) -> str:
    """Pack the output of :func:`run_align` into blocks of at most ``block_size`` tokens and
    ``save_to_disk`` them to ``out_dir`` with ``fusion_meta.json``. Returns ``out_dir``.

    One document per block by default; ``pack_documents=True`` concatenates documents and adds
    ``position_ids`` (see the module docstring for the attention caveat). An existing
    ``out_dir`` is replaced only if it is an earlier pack output and ``overwrite`` is set."""
    t0 = time.time()
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 2:
        raise ValueError(f"block_size must be an int >= 2, got {block_size!r}")
    ameta = _read_aligned_meta(aligned_dir)
    out_dir = prepare_output_dir(out_dir, OUTPUT, inputs=[("aligned", aligned_dir)], overwrite=overwrite)
    aligned = datasets.load_from_disk(aligned_dir)
    cache = os.path.join(os.path.dirname(os.path.abspath(out_dir)), f".tmp-pack-cache-{uuid.uuid4().hex[:8]}")
    os.makedirs(cache)
    try:
        packed = _pack_dataset(
            aligned,
            cache,
            block_size=block_size,
            num_s=len(ameta["sources"]),
            top_k=int(ameta["top_k"]),
            concat=pack_documents,
            batch_size=batch_size,
            num_proc=num_proc,
        )
        meta = _packed_meta(packed, aligned, ameta, block_size=block_size, pack_documents=pack_documents)
        meta["seconds"] = round(time.time() - t0, 3)
        save_dataset_atomic(
            packed, out_dir, {PACKED_META_FILE: meta}, kind=OUTPUT, overwrite=overwrite, link_from=cache
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(
        f"pack: {meta['num_docs']} documents -> {meta['num_blocks']} blocks of <= {block_size} tokens "
        f"({meta['packing']}, {meta['docs_cut']} documents cut) -> {out_dir}"
    )
    return out_dir
