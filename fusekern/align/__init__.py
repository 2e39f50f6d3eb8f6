"""Token alignment across tokenizers and vocabulary mapping (native core in ``fusekern.align._C``).

- :func:`token_bytes`: the bytes each vocabulary id contributes to decoded text.
- :func:`span_align` / :func:`span_align_batch` / :func:`span_align_ids_batch`: exact
  alignment of two tokenisations of the same bytes, O(n + m).
- :func:`dtw` / :func:`dtw_batch`: FuseLLM-compatible DTW with edit-distance costs.
- :func:`mined_map`: minimum-edit-distance mapping of one vocabulary's strings onto another's.
- :func:`map_vocab`: tokenizer-level vocabulary mapping (``fusekern vocab-map`` and the pipeline).
- :func:`fusekern.align.tokenizer.load_tokenizer`: the one tokenizer loader (object, directory,
  ``tokenizer.json`` or Hub name; a mistyped local path fails at once, naming the argument).

The native calls copy their inputs up front (another Python thread may change the caller's
lists or arrays meanwhile), release the GIL for the work, and the batch calls spread pairs over
``threads`` worker threads (``None`` = all cores; at most ``MAX_THREADS`` = 1024, more is a
``ValueError``; if the OS refuses to start a thread the call raises ``RuntimeError``).
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from fusekern.align import _native
from fusekern.align._validate import band_arg, on_mismatch_arg, threads_arg
from fusekern.align.token_bytes import adds_dummy_prefix, token_bytes
from fusekern.align.vocab import VocabMap, map_vocab

ByteVocab = _native.ByteVocab
MAX_TOKEN_CHARS: int = _native.MAX_TOKEN_CHARS
MAX_THREADS: int = _native.MAX_THREADS

__all__ = [
    "ByteVocab",
    "MAX_THREADS",
    "MAX_TOKEN_CHARS",
    "VocabMap",
    "adds_dummy_prefix",
    "dtw",
    "dtw_batch",
    "map_vocab",
    "mined_map",
    "span_align",
    "span_align_batch",
    "span_align_ids_batch",
    "token_bytes",
]


def span_align(a: Sequence[bytes], b: Sequence[bytes]) -> list[tuple[int, int, int, int]]:
    """Group two tokenisations of the same bytes into the smallest runs covering equal bytes.

    Returns ``(a_start, a_end, b_start, b_end)`` half-open runs, in order, covering both
    sequences. Zero-width tokens (``b""``, e.g. special tokens): where both sides have
    zero-width tokens at the same byte offset, they form a group of their own; zero-width
    tokens on one side only join the group that starts at their offset, or the last group
    when they end the text. Every group thus has tokens on both sides, except when one
    sequence is empty and the other holds only zero-width tokens.

    Raises ``ValueError`` naming the byte offset (and tokens) where the two texts diverge,
    ``TypeError`` if an entry is not ``bytes``.
    """
    return _native.span_align(a, b)


def span_align_batch(
    a_seqs: Sequence[Sequence[bytes]],
    b_seqs: Sequence[Sequence[bytes]],
    *,
    threads: int | None = None,
    on_mismatch: str = "raise",
) -> list[np.ndarray | None]:
    """:func:`span_align` over many pairs: one int64 ``[G, 4]`` array per pair.

    With ``on_mismatch="none"`` a pair whose bytes differ gives ``None``; with ``"raise"``
    the first such pair raises ``ValueError``.
    """
    return _native.span_align_batch(a_seqs, b_seqs, threads_arg(threads), on_mismatch_arg(on_mismatch))


def _as_byte_vocab(vocab: Union[ByteVocab, Sequence[bytes]], name: str) -> ByteVocab:
    if isinstance(vocab, ByteVocab):
        return vocab
    try:
        return ByteVocab(vocab)
    except TypeError as exc:
        raise TypeError(f"{name}: {exc}") from None


def span_align_ids_batch(
    a_ids: Sequence[np.ndarray],
    b_ids: Sequence[np.ndarray],
    a_vocab: Union[ByteVocab, Sequence[bytes]],
    b_vocab: Union[ByteVocab, Sequence[bytes]],
    *,
    threads: int | None = None,
    on_mismatch: str = "raise",
) -> list[np.ndarray | None]:
    """:func:`span_align_batch` with tokens given as integer ids into two ``token_bytes`` tables.

    No per-token Python objects are created. Pass ``ByteVocab(token_bytes(tok))`` instead of
    the list to pack a vocabulary once for many calls. Ids outside a vocabulary raise
    ``ValueError`` (whatever ``on_mismatch`` says).
    """
    av = _as_byte_vocab(a_vocab, "a_vocab")
    bv = _as_byte_vocab(b_vocab, "b_vocab")
    return _native.span_align_ids_batch(
        a_ids, b_ids, av, bv, threads_arg(threads), on_mismatch_arg(on_mismatch)
    )


def dtw(
    a: Sequence[str],
    b: Sequence[str],
    *,
    band: int | None = None,
    a_widths: Sequence[int] | None = None,
    b_widths: Sequence[int] | None = None,
    return_cost: bool = False,
) -> tuple:
    """FuseLLM-compatible DTW between two token-string sequences.

    Cell cost = Levenshtein distance between the two strings (code points, so strip space
    markers such as 'Ġ'/'▁' first if they should not count). Returns ``(a_to_b, b_to_a)``:
    for each a index the b indices on the warping path (ascending), and vice versa; with
    ``return_cost=True`` also the path's total cost.

    ``band=None`` is the full O(n·m) DTW and gives exactly the mappings of FuseLLM's
    ``dtw()`` (backtrace tie order: diagonal, then a−1, then b−1). It needs one backtrace
    byte per cell: ``n·m`` above ``fusekern.align._C.MAX_DTW_CELLS`` (2³⁰) raises ``ValueError``.

    ``band=k`` searches an offset-guided band instead, O((n + m)·k) cells: row i keeps the b
    tokens whose span meets a_i's span (positions from ``a_widths``/``b_widths`` — pass the
    tokens' byte lengths, ``len(token_bytes(tok)[id])`` — or else the strings' code-point
    lengths; scaled by the totals), widened by ``k`` non-empty tokens on each side; runs of
    empty strings, which tie with their neighbours, are added whole. What is guaranteed:

    - a valid warping path from (0, 0) to (n−1, m−1) that is optimal among the paths inside
      the band, so its cost is never below the full DTW's;
    - exactly the full result (mappings and cost) when the path the full DTW returns lies
      inside the band (each of its cells keeps its exact value and every backtrace choice is
      unchanged) — in particular whenever ``k >= len(b)``, which covers the whole grid.

    Nothing else: whether a given ``k`` is wide enough depends on the tokenizers and the text,
    and is only known by running the full DTW. Measured on 512-token pieces of mixed text
    (code, CJK, emoji, numbers, URLs) with byte widths, Llama-2 vs MPT needed k up to 16 and
    Llama-2 vs Qwen2 up to 32 (with code-point widths: 64); on English prose a few tokens do.
    The band's cells count against the same limit as the full DTW (``ValueError`` beyond it).
    """
    return _native.dtw(a, b, band_arg(band), bool(return_cost), a_widths, b_widths)


def dtw_batch(
    a_seqs: Sequence[Sequence[str]],
    b_seqs: Sequence[Sequence[str]],
    *,
    band: int | None = None,
    a_widths: Sequence[Sequence[int]] | None = None,
    b_widths: Sequence[Sequence[int]] | None = None,
    threads: int | None = None,
    return_cost: bool = False,
) -> list[tuple]:
    """:func:`dtw` over many pairs, spread over ``threads`` worker threads (``a_widths`` /
    ``b_widths``: one width sequence per pair, or None)."""
    return _native.dtw_batch(
        a_seqs, b_seqs, band_arg(band), threads_arg(threads), bool(return_cost), a_widths, b_widths
    )


def mined_map(
    source: Sequence[str],
    target: Sequence[str],
    *,
    threads: int | None = None,
    return_distance: bool = False,
) -> Union[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """For each source string, the index of the target string at minimum Levenshtein distance.

    An exact match wins (distance 0); ties go to the lowest target index, so the result is
    deterministic and equals brute force. Returns int64 ``ids`` (and, with
    ``return_distance=True``, the int64 distances too).
    """
    ids, dist = _native.mined_map(source, target, threads_arg(threads))
    return (ids, dist) if return_distance else ids
