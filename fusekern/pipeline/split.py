"""Stage 1, split: cut long documents so that every piece fits the block under *every*
participating tokenizer (target and sources), so all models see exactly the same text.

A piece fits when ``len(tokenizer(piece, add_special_tokens=False).input_ids) + 1 <= block_size``
for each tokenizer (the ``+ 1`` is the EOS that extraction appends). Pieces are measured
exactly, alone, as the later stages tokenize them, so no safety margin is needed (FuseLLM
keeps 48 tokens of slack and cuts on token boundaries of the longest tokenisation, decoding
the pieces back to text, which is lossy for some tokenizers).

Cuts fall right after a newline when one lies in the second half of the window, else right
after any whitespace, else (a window with no whitespace at all) at the largest prefix that
fits. Concatenating a document's pieces gives the document back, except that pieces made
only of whitespace are dropped. Empty or whitespace-only documents are dropped and counted.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np

from fusekern.pipeline.formats import SPLIT_FORMAT, SPLIT_META_FILE
from fusekern.pipeline.io import (
    DataLike,
    count_tokens,
    encode,
    load_texts,
    load_tokenizer,
    name_of,
    save_dataset_atomic,
)
from fusekern.pipeline.paths import OutputDir, prepare_output_dir

# Older split outputs carry only {"stage": "split"}.
OUTPUT = OutputDir("split", SPLIT_META_FILE, (SPLIT_FORMAT, "split"))

_MIN_BLOCK = 8


def _boundary(text: str, start: int, bound: int) -> int:
    """The cut position in (start, bound]: after a newline in the second half, else after the
    last whitespace, else ``bound`` itself."""
    nl = text.rfind("\n", start, bound)
    if nl >= 0 and nl + 1 > start + (bound - start) // 2:
        return nl + 1
    for j in range(bound - 1, start - 1, -1):  # j >= start, so the piece text[start:j + 1] is never empty
        if text[j].isspace():
            return j + 1
    return bound


def _starts_of(enc: Any) -> np.ndarray:
    starts = np.fromiter((o[0] for o in enc.offsets), dtype=np.int64, count=len(enc.offsets))
    return np.maximum.accumulate(starts) if starts.size else starts


def _cut(text: str, starts: Sequence[np.ndarray | None], totals: Sequence[int], limit: int) -> list:
    """Candidate pieces from the in-context token offsets (``None`` for a slow tokenizer:
    estimated from the document's characters per token). Verified by the caller."""
    n = len(text)
    pieces = []
    s = 0
    while s < n:
        bound = n
        for st, total in zip(starts, totals):
            if st is not None:
                i = int(np.searchsorted(st, s, side="left"))
                if i + limit < st.size:
                    bound = min(bound, int(st[i + limit]))
            elif total > limit:
                bound = min(bound, s + max(1, int(n * limit / total * 0.9)))
        bound = max(bound, s + 1)
        end = n if bound >= n else _boundary(text, s, bound)
        pieces.append(text[s:end])
        s = end
    return pieces


def _split_long(text: str, toks: Sequence[Any], limit: int, encs: list | None = None, depth: int = 0) -> list:
    """Pieces of ``text`` that each fit ``limit`` tokens under every tokenizer, measured alone.
    ``encs``: the text's encodings per tokenizer if already computed (None for slow ones)."""
    if encs is None:
        encs = [_encode_full(t, text) for t in toks]
    starts = [_starts_of(e) if e is not None else None for e in encs]
    totals = [len(e.ids) if e is not None else count_tokens(t, text) for e, t in zip(encs, toks)]
    pieces = _cut(text, starts, totals, limit)
    # Verify every piece alone, in one batch per tokenizer; re-cut the rare piece that grew at
    # its edges with a slightly smaller budget.
    worst = np.max(np.array([[len(ids) for ids in encode(t, pieces)] for t in toks]), axis=0)
    out = []
    for piece, w in zip(pieces, worst):
        if w <= limit:
            out.append(piece)
        elif len(piece) <= 1 or depth >= 8:
            raise ValueError(f"block_size too small: a piece {piece[:40]!r} needs {w} > {limit} tokens")
        else:
            out.extend(_split_long(piece, toks, max(1, limit - (w - limit) - 1), depth=depth + 1))
    return out


def _encode_full(tok: Any, text: str):
    backend = getattr(tok, "backend_tokenizer", None) if getattr(tok, "is_fast", False) else None
    return backend.encode(text, add_special_tokens=False) if backend is not None else None


def _check_block(block_size: Any) -> None:
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < _MIN_BLOCK:
        raise ValueError(f"block_size must be an int >= {_MIN_BLOCK}, got {block_size!r}")


def _as_list(tokenizers: Any) -> list:
    if isinstance(tokenizers, (str, os.PathLike)) or not isinstance(tokenizers, Sequence):
        tokenizers = [tokenizers]
    if len(tokenizers) == 0:
        raise ValueError("tokenizers is empty: pass the target's and every source's tokenizer")
    return list(tokenizers)


def _as_tokenizers(tokenizers: Any, append_eos: bool) -> list:
    toks = [load_tokenizer(t, name="tokenizers") for t in _as_list(tokenizers)]
    if append_eos:  # every later stage appends EOS: a tokenizer without one cannot take part
        for given, tok in zip(_as_list(tokenizers), toks):
            if tok.eos_token_id is None:
                raise ValueError(
                    f"tokenizer {name_of(given)!r} has no eos_token; the pipeline appends EOS to every "
                    "document (a BERT-like tokenizer cannot be a fusion target or source)"
                )
    return toks


def _split_many(texts: Sequence[Any], toks: Sequence[Any], limit: int) -> list:
    """Pieces of each text (an empty list for empty/whitespace-only/None texts)."""
    keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    kept = [texts[i] for i in keep]
    out: list = [[] for _ in texts]
    if not kept:
        return out
    encs = []  # per tokenizer: Encoding objects (fast) or None
    lengths = []
    for tok in toks:
        backend = getattr(tok, "backend_tokenizer", None) if getattr(tok, "is_fast", False) else None
        if backend is not None:
            e = backend.encode_batch(kept, add_special_tokens=False)
            encs.append(e)
            lengths.append([len(x.ids) for x in e])
        else:
            encs.append(None)
            lengths.append([len(ids) for ids in encode(tok, kept)])
    worst = np.max(np.array(lengths), axis=0)
    for j, (i, t, w) in enumerate(zip(keep, kept, worst)):
        if w <= limit:
            out[i] = [t]
        else:
            doc_encs = [e[j] if e is not None else None for e in encs]
            out[i] = [p for p in _split_long(t, toks, limit, doc_encs) if p.strip()]
    return out


def split_texts(
    texts: Sequence[str],
    tokenizers: Sequence[Any],
    block_size: int,
    *,
    append_eos: bool = True,
    stats: dict | None = None,
) -> list[str]:
    """Cut ``texts`` into pieces that fit ``block_size`` tokens (EOS included when
    ``append_eos``) under every tokenizer in ``tokenizers`` (objects, paths or Hub names).

    Empty and whitespace-only documents and pieces are dropped; ``stats`` (a dict, optional)
    receives the counts ``docs_in``, ``docs_dropped_empty``, ``docs_split`` and ``pieces``.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of str, not a single str")
    _check_block(block_size)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
    toks = _as_tokenizers(tokenizers, append_eos)
    per_doc = _split_many(texts, toks, block_size - (1 if append_eos else 0))
    out = [p for pieces in per_doc for p in pieces]
    if stats is not None:
        stats.update(
            docs_in=len(texts),
            docs_dropped_empty=sum(1 for t in texts if not t.strip()),
            docs_split=sum(1 for pieces in per_doc if len(pieces) > 1),
            pieces=len(out),
        )
    return out


def _split_batch(batch: dict, indices: list, *, toks, limit, text_column) -> dict:
    per_doc = _split_many(batch[text_column], toks, limit)
    texts = [p for pieces in per_doc for p in pieces]
    origin = [idx for idx, pieces in zip(indices, per_doc) for _ in pieces]
    return {"text": texts, "doc_index": origin}


def run_split(
    data: DataLike,
    out_dir: str,
    tokenizers: Sequence[Any],
    block_size: int,
    *,
    text_column: str = "text",
    append_eos: bool = True,
    num_proc: int | None = None,
    split: str | None = None,
    overwrite: bool = False,
) -> str:
    """Split ``data`` (see :func:`fusekern.pipeline.io.load_texts`) and ``save_to_disk`` the
    pieces to ``out_dir``: columns ``text`` (str) and ``doc_index`` (the input row a piece came
    from), plus ``split_meta.json``. Returns ``out_dir``. An existing ``out_dir`` is replaced only
    if it is an earlier split output and ``overwrite`` is set (:mod:`fusekern.pipeline.paths`)."""
    t0 = time.time()
    _check_block(block_size)
    inputs = [("data", data)] + [("tokenizers", t) for t in _as_list(tokenizers)]
    out_dir = prepare_output_dir(out_dir, OUTPUT, inputs=inputs, overwrite=overwrite)
    ds = load_texts(data, text_column=text_column, split=split)
    toks = _as_tokenizers(tokenizers, append_eos)
    out = ds.map(
        _split_batch,
        batched=True,
        batch_size=256,
        with_indices=True,
        remove_columns=ds.column_names,
        num_proc=num_proc,
        load_from_cache_file=False,
        new_fingerprint=f"fusekern-split-{os.getpid()}-{time.time_ns()}",
        fn_kwargs=dict(toks=toks, limit=block_size - (1 if append_eos else 0), text_column=text_column),
        desc="split",
    )
    n_in = len(ds)
    used = len(set(out["doc_index"])) if len(out) else 0
    meta = {
        "format": SPLIT_FORMAT,
        "stage": "split",
        "block_size": block_size,
        "append_eos": append_eos,
        "tokenizers": [name_of(t) for t in toks],
        "docs_in": n_in,
        "docs_dropped_empty": n_in - used,
        "pieces": len(out),
        "seconds": round(time.time() - t0, 3),
    }
    save_dataset_atomic(out, out_dir, {SPLIT_META_FILE: meta}, kind=OUTPUT, overwrite=overwrite)
    print(
        f"split: {n_in} documents -> {len(out)} pieces "
        f"({meta['docs_dropped_empty']} empty dropped) in {meta['seconds']:.1f}s -> {out_dir}"
    )
    return out_dir
