"""Stage 4, align: move every source's top-k onto the target's token positions and ids.

For each document the target tokenisation (``add_special_tokens=False`` + EOS, as extract
does) is aligned with each source's tokenisation, giving *groups* ``(a0, a1, b0, b1)``:
source tokens ``[a0, a1)`` and target tokens ``[b0, b1)`` that cover the same text.

``mode="bytes"`` (default). Groups come from :func:`fusekern.align.span_align_ids_batch` on
``token_bytes``: the smallest runs covering identical bytes. A SentencePiece dummy-prefix
space on a document's first token is dropped where the bytes show it is one
(:func:`strip_dummy_prefix`, per document and side: Llama-2 adds it even to a text that starts
with a space). Target position ``t`` predicts target token ``t+1``; which positions take a
source's distribution is ``positions``:

- ``"span"``: position ``t`` takes source position ``u`` exactly when target token ``t+1`` and
  source token ``u+1`` form a 1:1 group, i.e. both tokenisations cut the text at the same byte
  offsets before and after that token: same context bytes, same next-token span;
- ``"boundary"``: position ``t`` takes source position ``u`` whenever both contexts end at the
  same byte offset (:func:`boundary_positions`), a superset of ``span`` with the same ``u`` on
  it; the source's candidates then count for the target token that starts the same bytes (the
  vocab map's prefix rule);
- ``"all"``: ``boundary``, and where ``t``'s context ends at byte ``o`` strictly inside source
  token ``u+1`` (bytes ``[s, e)``, :func:`mid_token_positions`), the source's distribution at
  ``u`` conditioned on the bytes ``text[s:o]`` already seen (:func:`mid_token_teacher`): only
  candidates extending those bytes, each counted for the target token that starts its
  remainder; the gold ``u+1`` is added from the extract's ``logsumexp`` where the top-k lacks
  it. The loss's renormalisation over the listed entries does the conditioning.

A document whose two byte strings differ (a normalising tokenizer, e.g. NFKC) falls back to
DTW for that source (both rules): DTW path components serve as groups, and a 1:1 group counts
only if the two tokens' surfaces are identical.

``mode="fusellm"``. FuseLLM's rule: DTW over all tokens (surface strings, spaces removed, as
FuseLLM strips its '▁'/'Ġ' markers; edit-distance cost; full DTW with FuseLLM's tie order);
target position ``i`` takes source position ``j`` when DTW maps target token ``i`` to
exactly one source token ``j`` and the vocab map sends source token ``j`` to target token
``i`` (FuseLLM's "soft" equality; a document's first token may also match up to a leading space,
FuseLLM's MPT case). That is a *current*-token rule: the contexts end at the same place, but
the next tokens may be cut differently.

Everywhere else (both modes) the teacher is FuseLLM's fallback, a one-hot on the **next gold
target token** (``input_ids[t+1]``, logit 1.0; FuseLLM puts it on the *current* token
``input_ids[t]``, a known bug). The last position of a document (the EOS, nothing to
predict) has no teacher (ids all -1).

Top-k lists are mapped to target ids with the vocab map (exact surface, else the longest target
byte prefix, else MinED; see :func:`fusekern.align.map_vocab`), unmappable ids dropped, the list
compacted to the left and padded with -1 (logit 0). Repeated target ids are kept in bytes mode
(the loss adds their probabilities); fusellm mode drops them keeping the first (highest-logit)
occurrence, as FuseLLM does.

Quality carried to target positions: ``source_ce[t, s]`` is the source's CE of the gold next
target token: the source's NLL of the group containing target token ``t+1`` (sum of its
per-token CE over the group's source tokens), shared equally by the group's predicted target
tokens. In a 1:1 group that is exactly the source's per-token CE. The same under every
``positions`` rule: it measures how well the source predicts the gold continuation (what
MinCE compares), whether or not its top-k is used at that position. (A document's first group
may hold target tokens but only the unpredicted first source token: those get the document
mean.)
``source_ce_doc[s]`` is the source's mean CE over the document (FuseLLM's ``metric_ce``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
import uuid
from typing import Any, NamedTuple, Sequence

import datasets
import numpy as np
import pyarrow as pa

from fusekern.pipeline.extract import check_token_ids, load_extract
from fusekern.pipeline.formats import ALIGN_META_FILE, ALIGNED_FORMAT, EXTRACT_TOKENIZER_DIR, MODES, POSITIONS
from fusekern.pipeline.io import (
    DataLike,
    check_unique_names,
    encode,
    load_texts,
    load_tokenizer,
    name_of,
    save_dataset_atomic,
    text_hashes,
    vocab_fingerprint,
)
from fusekern.pipeline.paths import OutputDir, prepare_output_dir
from fusekern.pipeline.vocab import load_vocab_map

OUTPUT = OutputDir("align", ALIGN_META_FILE, (ALIGNED_FORMAT,))


def aligned_features(num_sources: int, top_k: int) -> datasets.Features:
    seq, val = datasets.Sequence, datasets.Value
    return datasets.Features(
        {
            "doc_id": val("int64"),
            "input_ids": seq(val("int32")),
            "teacher_ids": seq(seq(seq(val("int32"), length=top_k), length=num_sources)),
            "teacher_logits": seq(seq(seq(val("float16"), length=top_k), length=num_sources)),
            "source_ce": seq(seq(val("float32"), length=num_sources)),
            "source_ce_doc": seq(val("float32"), length=num_sources),
            "n_aligned": seq(val("int32"), length=num_sources),
            "n_one_to_one": seq(val("int32"), length=num_sources),
            "used_dtw": seq(val("bool"), length=num_sources),
            "n_mid_token": seq(val("int32"), length=num_sources),
            "n_mid_beyond_gold": seq(val("int32"), length=num_sources),
        }
    )


# Per-document count columns (besides used_dtw) that _align_batch fills.
_PER_DOC = ("source_ce_doc", "n_aligned", "n_one_to_one", "n_mid_token", "n_mid_beyond_gold")


# ------------------------------------------------------------------------- per-tokenizer tables


class _Side:
    """What alignment needs to know about one tokenizer, picklable for ``num_proc`` workers
    (the packed native byte table and the lazily built tables are rebuilt in each process)."""

    def __init__(self, tok: Any):
        from fusekern.align.vocab import token_tables

        raw, surface = token_tables(tok)
        self.size = len(raw)
        self.raw = raw
        self.surface = surface
        # Ids size..2*size-1: the same tokens with one leading space removed (dummy prefix).
        self.bytes_ext = raw + [b[1:] if b[:1] == b" " else b for b in raw]
        self.starts_with_space = np.fromiter((b[:1] == b" " for b in raw), dtype=bool, count=len(raw))
        self.lens = np.fromiter(map(len, self.bytes_ext), dtype=np.int64, count=2 * len(raw))
        self._lazy: dict = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_lazy"] = {}
        return state

    def _get(self, key: str, build):
        if key not in self._lazy:
            self._lazy[key] = build()
        return self._lazy[key]

    @property
    def byte_vocab(self):
        from fusekern.align import ByteVocab

        return self._get("byte_vocab", lambda: ByteVocab(self.bytes_ext))

    @property
    def dtw_strings(self) -> list:
        """Surfaces without spaces (FuseLLM strips its markers): DTW's token strings."""
        return self._get("dtw", lambda: [s.replace(" ", "") for s in self.surface])

    @property
    def lstrip_strings(self) -> list:
        return self._get("lstrip", lambda: [s[1:] if s[:1] == " " else s for s in self.surface])

    @property
    def byte_table(self) -> tuple:
        """(all raw token bytes concatenated as uint8, start offset per id): the bytes of id
        ``i`` are ``buf[off[i] : off[i] + lens[i]]``."""

        def build():
            off = np.zeros(self.size + 1, dtype=np.int64)
            np.cumsum(self.lens[: self.size], out=off[1:])
            return np.frombuffer(b"".join(self.raw), dtype=np.uint8), off

        return self._get("byte_table", build)


class _Source:
    def __init__(self, name: str, path: str, ds: datasets.Dataset, meta: dict, side: _Side, lut, exact):
        self.name = name
        self.path = path
        self.ds = ds
        self.top_k = int(meta["top_k"])
        self.side = side
        self.lut = lut  # source id -> target id (int32, -1 = none), length = logits dim
        self.unmapped = bool((lut < 0).any())
        self.exact = exact  # source id -> surface identical to lut's target
        self.has_lse = "logsumexp" in ds.column_names  # extract format /2
        self.remainders: dict = {}  # (source id, bytes seen) -> target id: the mid-token projection


def _table(ds: datasets.Dataset) -> pa.Table:
    data = ds.data
    return data.table if hasattr(data, "table") else data


def _csr(column: pa.ChunkedArray) -> tuple:
    """(offsets int64 [n+1] starting at 0, flat values) of a list column slice."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = np.asarray(arr.offsets.to_numpy(), dtype=np.int64)
    offsets = offsets - offsets[0]
    return offsets, arr.flatten()


def _fixed(values: pa.Array, width: int, dtype) -> np.ndarray:
    flat = values.flatten() if pa.types.is_fixed_size_list(values.type) else values
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=dtype).reshape(-1, width)


def _flat_column(tab: pa.Table, name: str, dtype) -> np.ndarray:
    """A list column's values, all documents concatenated."""
    return np.asarray(_csr(tab.column(name))[1].to_numpy(zero_copy_only=False), dtype=dtype)


# ------------------------------------------------------------------------------------ groups


def _groups_from_path(a_idx: np.ndarray, b_idx: np.ndarray) -> np.ndarray:
    """DTW path cells (monotone, in order) -> groups: the path's connected runs, split at
    diagonal steps. Rows (a0, a1, b0, b1)."""
    if a_idx.size == 0:
        return np.zeros((0, 4), dtype=np.int64)
    diag = (np.diff(a_idx) != 0) & (np.diff(b_idx) != 0)
    starts = np.concatenate([[0], np.flatnonzero(diag) + 1])
    ends = np.concatenate([starts[1:], [a_idx.size]]) - 1
    return np.stack([a_idx[starts], a_idx[ends] + 1, b_idx[starts], b_idx[ends] + 1], axis=1).astype(np.int64)


def _dtw_cells(b_to_a: list) -> tuple:
    lens = np.fromiter((len(x) for x in b_to_a), dtype=np.int64, count=len(b_to_a))
    a_idx = np.fromiter(itertools.chain.from_iterable(b_to_a), dtype=np.int64, count=int(lens.sum()))
    b_idx = np.repeat(np.arange(len(b_to_a), dtype=np.int64), lens)
    return a_idx, b_idx, lens


def _dedupe_compact(ids: np.ndarray, logits: np.ndarray) -> tuple:
    """Drop -1 and repeated ids (keeping the first), compact left, pad with -1 / 0."""
    k = ids.shape[1]
    bad = ids < 0
    for j in range(1, k):
        bad[:, j] |= (ids[:, :j] == ids[:, j : j + 1]).any(axis=1)
    rows = np.flatnonzero(bad.any(axis=1))  # most rows need nothing
    if rows.size:
        b = bad[rows]
        order = np.argsort(b, axis=1, kind="stable")  # kept entries first, in their order
        sub_ids = np.take_along_axis(ids[rows], order, axis=1)
        sub_log = np.take_along_axis(logits[rows], order, axis=1)
        b = np.take_along_axis(b, order, axis=1)
        sub_ids[b] = -1
        sub_log[b] = 0
        ids[rows] = sub_ids
        logits[rows] = sub_log
    return ids, logits


def _compact(ids: np.ndarray, logits: np.ndarray) -> tuple:
    """Drop -1 ids, compact left, pad with -1 / 0. Repeated ids stay: the loss adds their
    probabilities (API contract), so source mass that lands on one target id adds up."""
    bad = ids < 0
    rows = np.flatnonzero(bad.any(axis=1))
    if rows.size:
        order = np.argsort(bad[rows], axis=1, kind="stable")
        sub_ids = np.take_along_axis(ids[rows], order, axis=1)
        sub_log = np.take_along_axis(logits[rows], order, axis=1)
        b = np.take_along_axis(bad[rows], order, axis=1)
        sub_ids[b] = -1
        sub_log[b] = 0
        ids[rows] = sub_ids
        logits[rows] = sub_log
    return ids, logits


def strip_dummy_prefix(flat: np.ndarray, off: np.ndarray, side: _Side, texts: Sequence[str]) -> np.ndarray:
    """Token ids with the first token of each document replaced by its space-less twin (id +
    ``side.size``) where that space is a SentencePiece dummy prefix, decided from the bytes: the
    first token starts with a space and either the text does not, or the tokens' bytes are
    exactly one byte longer than the text (Llama-2's ``Prepend('▁')`` normaliser adds the prefix
    even to a text that starts with a space: ``" Hello"`` → ``[" ", " Hello"]``)."""
    starts = off[:-1]
    first = flat[starts]
    joined = np.add.reduceat(side.lens[flat], starts) if flat.size else np.zeros(0, dtype=np.int64)
    text_len = np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))
    text_space = np.fromiter((t.startswith(" ") for t in texts), dtype=bool, count=len(texts))
    strip = side.starts_with_space[first] & (~text_space | (joined == text_len + 1))
    out = flat.copy()
    out[starts[strip]] += side.size
    return out


def _context_ends(flat: np.ndarray, off: np.ndarray, lens: np.ndarray) -> tuple:
    """Per position p: (document, byte offset inside it where the context ending with token p
    ends, whether token p+1 has bytes, whether p is its document's last position)."""
    width = lens[flat]
    doc = np.repeat(np.arange(off.size - 1, dtype=np.int64), np.diff(off))
    ends = np.cumsum(width)
    ends -= (ends - width)[off[:-1]][doc]
    last = np.zeros(flat.size, dtype=bool)
    last[off[1:] - 1] = True
    nxt = np.zeros(flat.size, dtype=np.int64)
    nxt[:-1] = width[1:] > 0
    nxt[last] = 0
    return doc, ends, nxt, last


def boundary_positions(
    a_flat: np.ndarray,
    a_off: np.ndarray,
    a_lens: np.ndarray,
    b_flat: np.ndarray,
    b_off: np.ndarray,
    b_lens: np.ndarray,
    *,
    contexts: tuple | None = None,
) -> np.ndarray:
    """For each position t of tokenisation b (ids into ``b_lens``; documents at ``b_off``), the
    position u of a whose context ends at the same byte offset of the same document, else -1:
    the positions where both tokenisations have a token boundary. Both must cover the same
    bytes per document. A document's last position (nothing to predict) gets -1. The next
    tokens must agree on being zero-width or not: where both are zero-width (the final EOS
    pair) u is a's first such position; otherwise u is unique. ``contexts``: the two
    :func:`_context_ends` where the caller has them (a batch computes the target's once)."""
    a_ctx, b_ctx = contexts or (_context_ends(a_flat, a_off, a_lens), _context_ends(b_flat, b_off, b_lens))
    a_doc, a_end, a_nxt, a_last = a_ctx
    b_doc, b_end, b_nxt, b_last = b_ctx
    width = 2 * (max(int(a_end.max(initial=0)), int(b_end.max(initial=0))) + 2)
    pos = np.flatnonzero(~a_last)
    keys = (a_doc * width + 2 * a_end + a_nxt)[pos]  # non-decreasing along the batch
    kb = b_doc * width + 2 * b_end + b_nxt
    out = np.full(b_flat.size, -1, dtype=np.int64)
    if keys.size:
        j = np.searchsorted(keys, kb)  # the first position with that key
        j_ok = np.minimum(j, keys.size - 1)
        hit = (j < keys.size) & (keys[j_ok] == kb) & ~b_last
        out[hit] = pos[j_ok[hit]]
    return out


def mid_token_positions(
    a_flat: np.ndarray,
    a_off: np.ndarray,
    a_lens: np.ndarray,
    b_flat: np.ndarray,
    b_off: np.ndarray,
    b_lens: np.ndarray,
    *,
    contexts: tuple | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each position t of tokenisation b (arguments as :func:`boundary_positions`): the
    position u of a whose next token u+1 holds t's context end o strictly inside (u+1 covers
    bytes [s, e) with s < o < e), and r = o - s, the bytes of that token already seen. u = -1
    (r = 0) where o is also a boundary of a, where o lies inside a document's first token of a
    (no position predicts it) and at b's last position of each document."""
    a_ctx, b_ctx = contexts or (_context_ends(a_flat, a_off, a_lens), _context_ends(b_flat, b_off, b_lens))
    a_doc, a_end, _, _ = a_ctx
    b_doc, b_end, _, b_last = b_ctx
    width = max(int(a_end.max(initial=0)), int(b_end.max(initial=0))) + 1
    keys = a_doc * width + a_end  # non-decreasing along the batch
    j = np.searchsorted(keys, b_doc * width + b_end, side="right") - 1  # a's last boundary <= o
    jj = np.maximum(j, 0)
    hit = (j >= 0) & (a_doc[jj] == b_doc) & (a_end[jj] < b_end) & ~b_last
    return np.where(hit, j, -1), np.where(hit, b_end - a_end[jj], 0)


def _consistent(cand: np.ndarray, seen: np.ndarray, gold: np.ndarray, side: _Side) -> np.ndarray:
    """``cand`` [M, C] source ids (-1: none): which candidates' bytes start with the first
    ``seen[m]`` bytes of ``gold[m]``'s and are longer than that (the bytes already read)."""
    buf, off = side.byte_table
    valid = (cand >= 0) & (cand < side.size)
    c = np.where(valid, cand, 0)
    ok = valid & (side.lens[c] > seen[:, None])
    rows, cols = np.nonzero(ok & (cand != gold[:, None]))  # the gold agrees with itself: no compare
    c_at, g_at, n_seen = off[c[rows, cols]], off[gold[rows]], seen[rows]
    same = np.ones(rows.size, dtype=bool)
    todo = np.arange(rows.size)
    j = 0
    while todo.size:  # byte j of every pair that has not differed yet and has seen > j bytes
        todo = todo[n_seen[todo] > j]
        differ = buf[c_at[todo] + j] != buf[g_at[todo] + j]
        same[todo[differ]] = False
        todo = todo[~differ]
        j += 1
    ok[rows, cols] = same
    return ok


class _TargetPrefix:
    """The vocab map's prefix rule for any byte string: the longest target token that is a byte
    prefix of it (exact match included), as the target's canonical id; -1 if none (a target
    without byte coverage)."""

    def __init__(self, target: _Side, canon: np.ndarray):
        self.by_bytes: dict = {}
        for t, b in enumerate(target.raw):
            if b and b not in self.by_bytes:  # specials have no bytes; lowest id, then canonical
                self.by_bytes[b] = int(canon[t])
        self.longest = max(map(len, self.by_bytes), default=0)

    def __call__(self, data: bytes) -> int:
        for n in range(min(len(data), self.longest), 0, -1):
            t = self.by_bytes.get(data[:n])
            if t is not None:
                return t
        return -1


def _project_remainders(
    side: _Side, cache: dict, cand: np.ndarray, seen: np.ndarray, prefix: _TargetPrefix
) -> np.ndarray:
    """Target id of each candidate's remainder ``bytes(cand)[seen:]`` (``cache``: per source)."""
    stride = int(side.lens.max(initial=0)) + 1
    uniq, inv = np.unique(cand.astype(np.int64) * stride + seen, return_inverse=True)
    out = np.empty(uniq.size, dtype=np.int64)
    raw = side.raw
    for i, key in enumerate(uniq.tolist()):
        hit = cache.get(key)
        if hit is None:
            c, r = divmod(key, stride)
            hit = cache[key] = prefix(raw[c][r:])
        out[i] = hit
    return out[inv.reshape(-1)]


class MidTokenTeacher(NamedTuple):
    """Teacher rows at positions whose context ends inside a source token."""

    ids: np.ndarray  # [M, K] int64 target ids, -1 = padding
    logits: np.ndarray  # [M, K] float16 raw source logits
    beyond_gold: np.ndarray  # [M] bool: holds a candidate other than the gold source token


def mid_token_teacher(
    side: _Side,
    cache: dict,
    u: np.ndarray,
    seen: np.ndarray,
    src_flat: np.ndarray,
    top_ids: np.ndarray,
    top_log: np.ndarray,
    gold_logit: np.ndarray | None,
    prefix: _TargetPrefix,
    k_out: int,
) -> MidTokenTeacher:
    """The source's distribution at positions ``u`` (into ``src_flat``, the source ids, and its
    ``top_ids``/``top_log`` rows) restricted to candidates consistent with the ``seen`` bytes of
    source token u+1 (the gold), each projected by its remainder onto the target token the target
    would start those bytes with (``prefix``; ``cache`` keeps the projections of this source).
    ``gold_logit`` (from the extract's logsumexp): the gold's raw logit at ``u``, added as a
    candidate where the top-k lacks it. At most ``k_out`` entries: the gold first, then the
    top-k in order."""
    gold = src_flat[u + 1]
    cand, logits = top_ids[u], top_log[u]
    if gold_logit is not None:
        missing = ~(cand == gold[:, None]).any(axis=1)
        cand = np.concatenate([np.where(missing, gold, -1)[:, None], cand], axis=1)
        logits = np.concatenate([gold_logit.astype(np.float16)[:, None], logits], axis=1)
    kept = _consistent(cand, seen, gold, side)
    tid = np.full(cand.shape, -1, dtype=np.int64)
    rows, cols = np.nonzero(kept)
    tid[rows, cols] = _project_remainders(side, cache, cand[rows, cols], seen[rows], prefix)
    kept &= tid >= 0
    slot = np.cumsum(kept, axis=1) - 1  # the column each kept entry moves to, order kept
    kept &= slot < k_out
    rows, cols = np.nonzero(kept)
    ids = np.full((u.size, k_out), -1, dtype=np.int64)
    out_log = np.zeros((u.size, k_out), dtype=np.float16)
    ids[rows, slot[rows, cols]] = tid[rows, cols]
    out_log[rows, slot[rows, cols]] = logits[rows, cols]
    return MidTokenTeacher(ids, out_log, (kept & (cand != gold[:, None])).any(axis=1))


# ------------------------------------------------------------------------------- the batch op


class _Context:
    """Everything a batch needs (picklable: sent to the ``num_proc`` workers)."""

    def __init__(
        self,
        tgt_tok,
        target: _Side,
        canon,
        sources,
        mode,
        positions,
        top_k,
        threads,
        text_column,
        batch_size,
        num_proc,
    ):
        self.batch_size = batch_size
        self.num_proc = num_proc
        self.tgt_tok = tgt_tok
        self.positions = positions
        self.target = target
        self.canon = canon
        self.sources = sources
        self.mode = mode
        self.top_k = top_k
        self.threads = threads
        self.text_column = text_column
        self.prefix = _TargetPrefix(target, canon) if positions == "all" else None


class _Batch(NamedTuple):
    """One batch of documents, tokenized by the target (shared by every source)."""

    texts: list
    lo: int  # index of the batch's first document
    hashes: np.ndarray
    tgt_flat: np.ndarray  # target ids, documents concatenated (text + EOS each)
    tgt_off: np.ndarray  # [n + 1] document offsets into tgt_flat
    tgt_adj: np.ndarray | None  # tgt_flat with the dummy prefix stripped (bytes mode)
    is_last: np.ndarray  # a document's last position (the EOS: nothing to predict)
    tgt_context: tuple | None  # _context_ends of tgt_adj (positions "boundary"/"all"), shared by the sources

    @property
    def n(self) -> int:
        return len(self.texts)


class _SourceRows(NamedTuple):
    """One source's extract rows for the batch, flattened like the target's."""

    off: np.ndarray
    flat: np.ndarray  # input ids
    top_ids: np.ndarray  # [L, K] int32
    top_log: np.ndarray  # [L, K] float16
    ce: np.ndarray  # [L] float64
    lse: np.ndarray | None  # [L] float64, None for extracts without the column
    doc_ce: np.ndarray  # [n] float32


class _Groups(NamedTuple):
    """Alignment groups of a batch: source tokens [a0, a1) ~ target tokens [b0, b1) of one
    document (local indices), with the document and global starts of each."""

    doc: np.ndarray
    a0: np.ndarray
    a1: np.ndarray
    b0: np.ndarray
    b1: np.ndarray
    ga0: np.ndarray
    gb0: np.ndarray
    dtw_docs: list  # documents aligned with DTW (bytes differ, or fusellm mode)
    single: np.ndarray  # fusellm: the one source token DTW maps each target token to, else -1
    a_adj: np.ndarray | None  # source ids with the dummy prefix stripped (bytes mode)
    contexts: tuple | None  # (source, target) _context_ends where the batch has the target's


def _read_source_rows(src: _Source, batch: _Batch) -> _SourceRows:
    tab = _table(src.ds).slice(batch.lo, batch.n)
    hashes = tab.column("text_hash").to_numpy()
    if not np.array_equal(hashes, batch.hashes):
        bad = int(np.flatnonzero(hashes != batch.hashes)[0])
        raise ValueError(
            f"document {batch.lo + bad}: source {src.name!r} was extracted from a different text than the "
            "data given to align (mismatched source/target documents: extract and align must read the same "
            "split output, in the same order)"
        )
    off, flat_pa = _csr(tab.column("input_ids"))
    flat = np.asarray(flat_pa.to_numpy(zero_copy_only=False), dtype=np.int64)
    where = f"source {src.name!r} input ids, documents from {batch.lo}"
    check_token_ids(flat, src.lut.size, where)
    top_ids = _fixed(_csr(tab.column("topk_ids"))[1], src.top_k, np.int32)  # as stored: no copy
    check_token_ids(top_ids, src.lut.size, f"source {src.name!r} top-k ids, documents from {batch.lo}")
    return _SourceRows(
        off,
        flat,
        top_ids,
        _fixed(_csr(tab.column("topk_logits"))[1], src.top_k, np.float16),
        _flat_column(tab, "ce", np.float64),
        _flat_column(tab, "logsumexp", np.float64) if src.has_lse else None,
        tab.column("doc_ce").to_numpy().astype(np.float32),
    )


def _source_groups(ctx: _Context, src: _Source, batch: _Batch, rows: _SourceRows) -> _Groups:
    """Byte groups (bytes mode, documents whose bytes agree), else DTW path groups."""
    n, tgt_off, tgt_flat = batch.n, batch.tgt_off, batch.tgt_flat
    groups: list = [None] * n
    dtw_docs: list = []
    a_adj = None
    if ctx.mode == "bytes":
        from fusekern.align import span_align_ids_batch

        a_adj = strip_dummy_prefix(rows.flat, rows.off, src.side, batch.texts)
        res = span_align_ids_batch(
            [a_adj[rows.off[d] : rows.off[d + 1]] for d in range(n)],
            [batch.tgt_adj[tgt_off[d] : tgt_off[d + 1]] for d in range(n)],
            src.side.byte_vocab,
            ctx.target.byte_vocab,
            threads=ctx.threads,
            on_mismatch="none",
        )
        for d, g in enumerate(res):
            if g is None:
                dtw_docs.append(d)
            else:
                groups[d] = g
    else:
        dtw_docs = list(range(n))

    single = np.full(tgt_flat.size, -1, dtype=np.int64)
    if dtw_docs:
        from fusekern.align import dtw_batch

        src_off, src_flat = rows.off, rows.flat
        a_str = [[src.side.dtw_strings[i] for i in src_flat[src_off[d] : src_off[d + 1]]] for d in dtw_docs]
        b_str = [[ctx.target.dtw_strings[i] for i in tgt_flat[tgt_off[d] : tgt_off[d + 1]]] for d in dtw_docs]
        for d, (_, b_to_a) in zip(dtw_docs, dtw_batch(a_str, b_str, threads=ctx.threads)):
            a_idx, b_idx, lens = _dtw_cells(b_to_a)
            groups[d] = _groups_from_path(a_idx, b_idx)
            if ctx.mode == "fusellm":
                first = np.concatenate([[0], np.cumsum(lens)[:-1]])
                one = lens == 1
                single[tgt_off[d] + np.flatnonzero(one)] = src_off[d] + a_idx[first[one]]

    counts = np.array([len(g) for g in groups], dtype=np.int64)
    g = np.concatenate(groups).astype(np.int64) if n else np.zeros((0, 4), dtype=np.int64)
    doc = np.repeat(np.arange(n), counts)
    a0, a1, b0, b1 = g[:, 0], g[:, 1], g[:, 2], g[:, 3]
    ga0, ga1 = a0 + rows.off[doc], a1 + rows.off[doc]
    if not np.array_equal(np.bincount(doc, weights=b1 - b0, minlength=n).astype(np.int64), np.diff(tgt_off)):
        raise RuntimeError("alignment groups do not cover the target tokens")  # aligner contract broken
    if not np.array_equal(ga1[:-1], ga0[1:]) or (ga1.size and ga1[-1] != rows.flat.size):
        raise RuntimeError("alignment groups do not tile the source tokens")  # aligner contract broken
    contexts = None
    if batch.tgt_context is not None:
        contexts = (_context_ends(a_adj, rows.off, src.side.lens), batch.tgt_context)
    return _Groups(doc, a0, a1, b0, b1, ga0, b0 + tgt_off[doc], dtw_docs, single, a_adj, contexts)


def _position_ce(batch: _Batch, rows: _SourceRows, g: _Groups) -> np.ndarray:
    """source_ce per target position: each group's source NLL shared by its predicted target
    tokens (module doc)."""
    # nll[j] = CE of source token j given its prefix = ce at position j-1.
    nll = np.concatenate([[0.0], rows.ce[:-1]]) if rows.ce.size else rows.ce.copy()
    nll[rows.off[:-1]] = 0.0  # a document's first token is predicted by nobody
    # Groups tile the batch's source tokens in order, so segment sums are exact group sums
    # (a 1:1 group gets exactly its token's CE).
    group_nll = np.add.reduceat(nll, g.ga0) if g.ga0.size else np.zeros(0)
    predicted = (g.b1 - g.b0) - (g.b0 == 0)
    share = group_nll / np.maximum(predicted, 1)
    # A first group whose only source token is the unpredicted first one has no source NLL for
    # the target tokens it holds: use the document mean rather than a flattering 0.
    no_src = (g.a1 - g.a0) - (g.a0 == 0) == 0
    share[no_src] = rows.doc_ce[g.doc[no_src]]
    per_tok = np.repeat(share, g.b1 - g.b0)
    pos_ce = np.zeros(batch.tgt_flat.size, dtype=np.float32)
    pos_ce[~batch.is_last] = per_tok[np.flatnonzero(~batch.is_last) + 1]
    return pos_ce


def _byte_doc_positions(batch: _Batch, g: _Groups) -> np.ndarray:
    """Target positions of the documents aligned by bytes (DTW ones keep the 1:1 rule)."""
    byte_doc = np.ones(batch.n, dtype=bool)
    byte_doc[g.dtw_docs] = False
    return byte_doc[np.repeat(np.arange(batch.n), np.diff(batch.tgt_off))]


def _teacher_positions(ctx: _Context, src: _Source, batch: _Batch, rows: _SourceRows, g: _Groups) -> tuple:
    """(source position taught at each target position, -1 = none; 1:1 groups per document)."""
    src_pos = np.full(batch.tgt_flat.size, -1, dtype=np.int64)
    n_one = np.zeros(batch.n, dtype=np.int32)
    if ctx.mode == "bytes":
        one = (g.a1 - g.a0 == 1) & (g.b1 - g.b0 == 1) & (g.a0 > 0) & (g.b0 > 0)
        if g.dtw_docs:  # DTW groups only count where the two tokens read the same
            ids = rows.flat[g.ga0]
            same = src.exact[ids] & (src.lut[ids] == ctx.canon[batch.tgt_flat[g.gb0]])
            one &= ~np.isin(g.doc, g.dtw_docs) | same
        src_pos[g.gb0[one] - 1] = g.ga0[one] - 1
        n_one = np.bincount(g.doc[one], minlength=batch.n).astype(np.int32)
        if ctx.positions != "span" and len(g.dtw_docs) < batch.n:
            # every shared token boundary of the byte-equal documents
            b_pos = boundary_positions(
                g.a_adj, rows.off, src.side.lens, batch.tgt_adj, batch.tgt_off, ctx.target.lens,
                contexts=g.contexts,
            )  # fmt: skip
            take = _byte_doc_positions(batch, g)
            src_pos[take] = b_pos[take]
    else:
        tgt_flat, tgt_off, single = batch.tgt_flat, batch.tgt_off, g.single
        ok = single >= 0
        ok[ok] = src.lut[rows.flat[single[ok]]] == ctx.canon[tgt_flat[ok]]
        # FuseLLM's first-token case (MPT/NeoX source, Llama target): "The" matches "▁The".
        for d in range(batch.n):
            t0 = tgt_off[d]
            if single[t0] >= 0 and not ok[t0]:
                a_s = src.side.lstrip_strings[rows.flat[single[t0]]]
                ok[t0] = a_s != "" and a_s == ctx.target.lstrip_strings[tgt_flat[t0]]
        src_pos[ok] = single[ok]
    src_pos[batch.is_last] = -1
    return src_pos, n_one


def _mid_token(ctx: _Context, src: _Source, batch: _Batch, rows: _SourceRows, g: _Groups, src_pos):
    """positions="all": (target positions, their MidTokenTeacher) where the context ends inside
    a source token of a byte-equal document and no shared boundary already teaches."""
    u, seen = mid_token_positions(
        g.a_adj, rows.off, src.side.lens, batch.tgt_adj, batch.tgt_off, ctx.target.lens, contexts=g.contexts
    )
    t = np.flatnonzero((u >= 0) & (src_pos < 0) & _byte_doc_positions(batch, g))
    u, seen = u[t], seen[t]
    gold_logit = (rows.lse[u] - rows.ce[u]) if rows.lse is not None else None
    teacher = mid_token_teacher(
        src.side,
        src.remainders,
        u,
        seen,
        rows.flat,
        rows.top_ids,
        rows.top_log,
        gold_logit,
        ctx.prefix,
        ctx.top_k,
    )
    return t, teacher


def _align_source(ctx: _Context, src: _Source, s: int, batch: _Batch, out: dict) -> None:
    """Fill source ``s``'s columns of ``out`` for the batch."""
    rows = _read_source_rows(src, batch)
    g = _source_groups(ctx, src, batch, rows)
    src_pos, n_one = _teacher_positions(ctx, src, batch, rows, g)

    ids, logits, ks = out["teacher_ids"][s], out["teacher_logits"][s], src.top_k  # [nt, K] each
    aligned = np.flatnonzero(src_pos >= 0)
    at = src_pos[aligned]
    m_ids = np.take(src.lut, np.take(rows.top_ids, at, axis=0))  # np.take: ~2x fancy indexing
    m_log = np.take(rows.top_log, at, axis=0)
    if ctx.mode != "bytes":
        m_ids, m_log = _dedupe_compact(m_ids, m_log)  # FuseLLM keeps the first of repeats
    elif src.unmapped:  # drop ids the map leaves at -1 (a LUT without any needs no pass)
        m_ids, m_log = _compact(m_ids, m_log)
    if ks == ids.shape[1]:
        ids[aligned], logits[aligned] = m_ids, m_log  # whole rows: numpy's faster scatter
    else:
        ids[aligned, :ks], logits[aligned, :ks] = m_ids, m_log
    taught = src_pos >= 0
    if ctx.positions == "all" and len(g.dtw_docs) < batch.n:
        t, mid = _mid_token(ctx, src, batch, rows, g, src_pos)
        has = mid.ids[:, 0] >= 0  # no consistent candidate: the one-hot fallback below
        ids[t[has]] = mid.ids[has]
        logits[t[has]] = mid.logits[has]
        taught[t[has]] = True
        doc_of = np.searchsorted(batch.tgt_off, t[has], side="right") - 1
        out["n_mid_token"][:, s] = np.bincount(doc_of, minlength=batch.n)
        out["n_mid_beyond_gold"][:, s] = np.bincount(doc_of[mid.beyond_gold[has]], minlength=batch.n)
    fallback = np.flatnonzero(~taught & ~batch.is_last)
    ids[fallback, 0] = batch.tgt_flat[fallback + 1]
    logits[fallback, 0] = 1.0
    out["source_ce"][s] = _position_ce(batch, rows, g)
    out["source_ce_doc"][:, s] = rows.doc_ce
    taught_doc = np.searchsorted(batch.tgt_off, np.flatnonzero(taught), side="right") - 1
    out["n_aligned"][:, s] = np.bincount(taught_doc, minlength=batch.n)
    out["n_one_to_one"][:, s] = n_one
    out["used_dtw"][g.dtw_docs, s] = True


def _target_batch(ctx: _Context, texts: list, lo: int) -> _Batch:
    """Tokenize a batch with the target (+ EOS per document) and check it."""
    n = len(texts)
    for j, t in enumerate(texts):
        if t is None or not t.strip():
            raise ValueError(
                f"document {lo + j} is empty; drop empty documents first (`fusekern split` does)"
            )
    eos = int(ctx.tgt_tok.eos_token_id)
    tgt_lists = encode(ctx.tgt_tok, texts)
    tgt_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(x) + 1 for x in tgt_lists], out=tgt_off[1:])
    tgt_flat = np.full(int(tgt_off[-1]), eos, dtype=np.int64)
    body = np.ones(tgt_flat.size, dtype=bool)
    body[tgt_off[1:] - 1] = False
    tgt_flat[body] = np.fromiter(
        itertools.chain.from_iterable(tgt_lists), dtype=np.int64, count=int(tgt_off[-1]) - n
    )
    if tgt_flat.size and tgt_flat.max() >= ctx.target.size:
        raise ValueError(f"target token id {int(tgt_flat.max())} beyond the target tokenizer's vocabulary")
    adj = strip_dummy_prefix(tgt_flat, tgt_off, ctx.target, texts) if ctx.mode == "bytes" else None
    context = None
    if adj is not None and ctx.positions != "span":
        context = _context_ends(adj, tgt_off, ctx.target.lens)
    return _Batch(texts, lo, text_hashes(texts), tgt_flat, tgt_off, adj, ~body, context)


def _align_batch(batch: pa.Table, indices: list, *, ctx: _Context) -> pa.Table:
    texts = batch.column(ctx.text_column).to_pylist()
    n = len(texts)
    lo = int(indices[0])
    if list(indices) != list(range(lo, lo + n)):
        raise RuntimeError("align expects contiguous batches")  # datasets.map guarantees this
    b = _target_batch(ctx, texts, lo)
    num_s, k, nt = len(ctx.sources), ctx.top_k, b.tgt_flat.size
    out = {  # per-token columns source-major (each source writes contiguous rows), per-doc ones [n, S]
        "teacher_ids": np.full((num_s, nt, k), -1, dtype=np.int32),
        "teacher_logits": np.zeros((num_s, nt, k), dtype=np.float16),
        "source_ce": np.zeros((num_s, nt), dtype=np.float32),
        **{
            name: np.zeros((n, num_s), dtype=np.float32 if name == "source_ce_doc" else np.int32)
            for name in _PER_DOC
        },
        "used_dtw": np.zeros((n, num_s), dtype=bool),
    }
    for s, src in enumerate(ctx.sources):
        _align_source(ctx, src, s, b, out)
    return _arrow_batch(b, out, num_s, k)


def _arrow_batch(b: _Batch, out: dict, num_s: int, k: int) -> pa.Table:
    offsets = pa.array(b.tgt_off.astype(np.int32), type=pa.int32())

    def per_token(values: np.ndarray, typ: pa.DataType, shape: tuple) -> pa.Array:
        # source-major [S, nt, ...] -> the column's token-major layout [nt, S, ...]
        arr = pa.array(np.ascontiguousarray(np.moveaxis(values, 0, 1)).reshape(-1), type=typ)
        for width in reversed(shape):
            arr = pa.FixedSizeListArray.from_arrays(arr, width)
        return pa.ListArray.from_arrays(offsets, arr)

    def per_doc(values: np.ndarray, typ: pa.DataType) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=typ), num_s)

    return pa.Table.from_arrays(
        [
            pa.array(np.arange(b.lo, b.lo + b.n, dtype=np.int64)),
            pa.ListArray.from_arrays(offsets, pa.array(b.tgt_flat.astype(np.int32), type=pa.int32())),
            per_token(out["teacher_ids"], pa.int32(), (num_s, k)),
            per_token(out["teacher_logits"], pa.float16(), (num_s, k)),
            per_token(out["source_ce"], pa.float32(), (num_s,)),
            per_doc(out["source_ce_doc"], pa.float32()),
            per_doc(out["n_aligned"], pa.int32()),
            per_doc(out["n_one_to_one"], pa.int32()),
            per_doc(out["used_dtw"], pa.bool_()),
            per_doc(out["n_mid_token"], pa.int32()),
            per_doc(out["n_mid_beyond_gold"], pa.int32()),
        ],
        schema=aligned_features(num_s, k).arrow_schema,
    )


# ------------------------------------------------------------------------------------ driver


def _source_lut(vmap: Any, logits_dim: int, target_size: int) -> tuple:
    if vmap.ids.size and int(vmap.ids.max()) >= target_size:
        raise ValueError(
            f"vocab map sends ids to {int(vmap.ids.max())}, beyond the target's {target_size} ids"
        )
    # int32 like the teacher columns: the top-k rows map without a wider copy
    lut = np.full(max(logits_dim, vmap.source_size), -1, dtype=np.int32)
    lut[: vmap.source_size] = vmap.ids
    exact = np.zeros(lut.size, dtype=bool)
    exact[: vmap.source_size] = vmap.exact & (vmap.ids >= 0)
    return lut, exact


def _check_options(source_extract_dirs, source_names, vocab_maps, mode, positions, num_proc) -> tuple:
    """Validate the options; returns (extract dirs, source names, vocab maps) as lists."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if mode == "fusellm" and positions != "span":
        raise ValueError(f"positions={positions!r} needs mode='bytes' (mode='fusellm' is FuseLLM's own rule)")
    if isinstance(source_extract_dirs, (str, os.PathLike)):
        source_extract_dirs = [source_extract_dirs]
    if not source_extract_dirs:
        raise ValueError("source_extract_dirs is empty: pass at least one extract directory")
    num_s = len(source_extract_dirs)
    if source_names is None:
        source_names = [os.path.basename(os.path.normpath(os.fspath(p))) for p in source_extract_dirs]
    if len(source_names) != num_s:
        raise ValueError(f"source_names has {len(source_names)} entries for {num_s} sources")
    check_unique_names(list(source_names), "source_names")
    if vocab_maps is None:
        vocab_maps = [None] * num_s
    if len(vocab_maps) != num_s:
        raise ValueError(f"vocab_maps has {len(vocab_maps)} entries for {num_s} sources")
    if not isinstance(num_proc, int) or num_proc < 1:
        raise ValueError(f"num_proc must be a positive int, got {num_proc!r}")
    return list(source_extract_dirs), list(source_names), list(vocab_maps)


def _load_source(
    name: str, path: str, vm_path, tgt_tok, target: _Side, target_fingerprint: str, num_docs: int, threads
) -> _Source:
    """One source's extract, tokenizer tables and vocab map (loaded and checked, or built now);
    each tokenizer is read once per call."""
    from fusekern.align.vocab import map_vocab

    ext_ds, meta = load_extract(path)
    if meta["num_docs"] != num_docs:
        raise ValueError(
            f"source {name!r}: its extract has {meta['num_docs']} documents but the data has {num_docs} "
            "(mismatched source/target documents: extract and align must read the same data)"
        )
    src_tok = load_tokenizer(os.path.join(path, EXTRACT_TOKENIZER_DIR))
    if vm_path is not None:
        fingerprints = {"source": vocab_fingerprint(src_tok), "target": target_fingerprint}
        vmap = load_vocab_map(vm_path, src_tok, tgt_tok, fingerprints=fingerprints)
    else:  # in memory only: no fingerprints to record (build_vocab_map's extra work)
        vmap = map_vocab(src_tok, tgt_tok, threads=threads)
    lut, exact = _source_lut(vmap, int(meta["vocab_size"]), target.size)
    return _Source(name, path, ext_ds, meta, _Side(src_tok), lut, exact)


def run_align(
    target_tokenizer: Any,
    data: DataLike,
    source_extract_dirs: Sequence[str],
    out_dir: str,
    *,
    source_names: Sequence[str] | None = None,
    vocab_maps: Sequence[str | None] | None = None,
    mode: str = "bytes",
    positions: str = "span",
    num_proc: int = 1,
    text_column: str = "text",
    split: str | None = None,
    batch_size: int = 256,
    threads: int | None = None,
    overwrite: bool = False,
) -> str:
    """Align the extracts in ``source_extract_dirs`` (made by :func:`run_extract` on the same
    ``data``) to ``target_tokenizer``'s tokens; write one row per document to ``out_dir``
    (``save_to_disk``, plus ``align_meta.json``). Returns ``out_dir``.

    ``vocab_maps``: one path (or None = compute now) per source, from :func:`run_vocab_map`
    or ``fusekern vocab-map``. ``mode``: ``"bytes"`` (default) or ``"fusellm"``; ``positions``:
    ``"span"`` (default), ``"boundary"`` or ``"all"`` (module doc).
    ``num_proc``: ``datasets.map`` worker processes; ``threads``: native threads per worker
    (default: all cores when ``num_proc == 1``, else 1). An existing ``out_dir`` is replaced
    only if it is an earlier align output and ``overwrite`` is set.
    """
    t0 = time.time()
    source_extract_dirs, source_names, vocab_maps = _check_options(
        source_extract_dirs, source_names, vocab_maps, mode, positions, num_proc
    )
    if threads is None:
        threads = None if num_proc == 1 else 1
    tgt_tok = load_tokenizer(target_tokenizer)
    if tgt_tok.eos_token_id is None:
        raise ValueError("target tokenizer has no eos_token (the pipeline appends EOS to every document)")
    ds = load_texts(data, text_column=text_column, split=split).select_columns([text_column])
    from fusekern.align.vocab import canonical_target_ids

    target = _Side(tgt_tok)
    target_fingerprint = vocab_fingerprint(tgt_tok)  # once per call: align meta and map checks
    canon = canonical_target_ids(tgt_tok)
    canon = np.concatenate([canon, np.arange(canon.size, target.size, dtype=np.int64)])
    sources = [
        _load_source(name, os.fspath(path), vm, tgt_tok, target, target_fingerprint, len(ds), threads)
        for name, path, vm in zip(source_names, source_extract_dirs, vocab_maps)
    ]
    top_k = max(s.top_k for s in sources)
    inputs = [("data", data), ("target_tokenizer", target_tokenizer)]
    inputs += [("source extract", p) for p in source_extract_dirs] + [("vocab map", v) for v in vocab_maps]
    out_dir = prepare_output_dir(out_dir, OUTPUT, inputs=inputs, overwrite=overwrite)
    ctx = _Context(
        tgt_tok, target, canon, sources, mode, positions, top_k, threads, text_column, batch_size, num_proc
    )

    meta = _write_aligned(ds, ctx, out_dir, overwrite, name_of(target_tokenizer), target_fingerprint, t0)
    print(
        f"align ({mode}, {positions}): {meta['num_docs']} documents, {meta['num_tokens']} target tokens, "
        "taught "
        + ", ".join(f"{k} {100 * v:.1f}%" for k, v in meta["aligned_fraction"].items())
        + f" in {meta['seconds']:.1f}s -> {out_dir}"
    )
    return out_dir


def _write_aligned(
    ds: datasets.Dataset,
    ctx: _Context,
    out_dir: str,
    overwrite: bool,
    target: str,
    target_fingerprint: str,
    t0,
) -> dict:
    """Align every batch (``datasets.map`` into a temporary cache next to ``out_dir``), save
    the result with its meta atomically; returns the meta (``t0``: when the call started)."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    cache = os.path.join(parent, f".tmp-align-cache-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(cache)
    try:
        aligned = (
            ds.with_format("arrow")
            .map(
                _align_batch,
                batched=True,
                batch_size=ctx.batch_size,
                with_indices=True,
                num_proc=ctx.num_proc if ctx.num_proc > 1 else None,
                remove_columns=[ctx.text_column],
                features=aligned_features(len(ctx.sources), ctx.top_k),
                fn_kwargs={"ctx": ctx},
                cache_file_name=os.path.join(cache, "aligned.arrow"),
                load_from_cache_file=False,
                new_fingerprint=f"fusekern-align-{uuid.uuid4().hex}",
                desc=f"align ({ctx.mode})",
            )
            .with_format(None)
        )
        meta = _align_meta(aligned, ctx, target, target_fingerprint)
        meta["seconds"] = round(time.time() - t0, 3)
        save_dataset_atomic(
            aligned, out_dir, {ALIGN_META_FILE: meta}, kind=OUTPUT, overwrite=overwrite, link_from=cache
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return meta


def _align_meta(aligned: datasets.Dataset, ctx: _Context, target: str, target_fingerprint: str) -> dict:
    """align_meta.json (docs/DATA_FORMAT.md), from the aligned table's per-document counts."""
    names = [src.name for src in ctx.sources]
    table = _table(aligned)
    num_s = len(names)
    n_tokens = int(pa.compute.sum(pa.compute.list_value_length(table.column("input_ids"))).as_py() or 0)

    def total(column: str, dtype=np.int64) -> np.ndarray:
        return _fixed(table.column(column).combine_chunks(), num_s, dtype).sum(axis=0)

    n_aligned, n_one, n_mid, n_beyond = (
        total(c) for c in ("n_aligned", "n_one_to_one", "n_mid_token", "n_mid_beyond_gold")
    )
    n_pred = max(n_tokens - len(aligned), 1)  # predicting positions (a document's EOS predicts nothing)

    def per_source(values, denominators) -> dict:
        return {n: round(float(v) / max(float(d), 1.0), 6) for n, v, d in zip(names, values, denominators)}

    return {
        "format": ALIGNED_FORMAT,
        "sources": names,
        "source_dirs": [os.path.abspath(src.path) for src in ctx.sources],
        "target": target,
        "target_vocab_sha256": target_fingerprint,
        "target_vocab_size": len(ctx.tgt_tok),
        "top_k": ctx.top_k,
        "mode": ctx.mode,
        "positions": ctx.positions,
        "num_docs": len(aligned),
        "num_tokens": n_tokens,
        # predicting positions that took the source's distribution (the rest: one-hot on the gold token)
        "aligned_fraction": per_source(n_aligned, [n_pred] * num_s),
        # ... of which the next target and source tokens form an exact 1:1 byte group
        "one_to_one_fraction": per_source(n_one, [n_pred] * num_s),
        # ... taught where the source also has a token boundary / inside a source token ("all")
        "boundary_fraction": per_source(n_aligned - n_mid, [n_pred] * num_s),
        "mid_token_fraction": per_source(n_mid, [n_pred] * num_s),
        # of the mid-token positions taught, those whose teacher holds more than the gold source
        # token (the rest teach one token: no more than CLM when it is the gold target token)
        "mid_token_beyond_gold_fraction": per_source(n_beyond, n_mid),
        "dtw_docs": {n: int(c) for n, c in zip(names, total("used_dtw", bool))},
    }
