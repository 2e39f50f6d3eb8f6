"""Stage 3, vocab map: source id -> target id for every source.

The mapping (exact surface match, else the longest target byte prefix, else minimum edit
distance, specials by content/role, then same token string first and canonical duplicates) is
:func:`fusekern.align.map_vocab`; this module is the stage around it, so ``fusekern vocab-map``
and :func:`run_vocab_map` write the same map.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def build_vocab_map(source_tokenizer: Any, target_tokenizer: Any, *, threads: int | None = None):
    """The ``fusekern.align.VocabMap`` (source id -> target id, -1 = none) of two tokenizers
    (objects, paths or Hub names)."""
    from fusekern.align.vocab import load_tokenizer, map_vocab

    src = load_tokenizer(source_tokenizer, "source_tokenizer")
    tgt = load_tokenizer(target_tokenizer, "target_tokenizer")
    return map_vocab(src, tgt, threads=threads)


def run_vocab_map(
    source_tokenizer: Any, target_tokenizer: Any, out_file: str, *, threads: int | None = None
) -> str:
    """Write the map of ``source_tokenizer`` onto ``target_tokenizer`` (objects, paths or Hub
    names) to ``out_file`` (``.npz``, or ``.json`` by name; readable with
    ``fusekern.align.VocabMap.load``). Returns the path written."""
    vmap = build_vocab_map(source_tokenizer, target_tokenizer, threads=threads)
    parent = os.path.dirname(os.path.abspath(out_file))
    os.makedirs(parent, exist_ok=True)
    path = vmap.save(out_file)
    c = vmap.counts()
    print(
        f"vocab-map: {c['source_size']} source ids -> {c['target_size']} target ids: exact {c['exact']}, "
        f"prefix {c['prefix']}, MinED {c['mined']}, special {c['special']}, "
        f"unmapped {c['unmapped']} -> {path}"
    )
    return path


def load_vocab_map(path: str, source_tokenizer: Any, target_tokenizer: Any):
    """A saved map (from :func:`run_vocab_map` or ``fusekern vocab-map``), checked against the
    two tokenizers' sizes (``ValueError`` on a mismatch). The refinement is re-applied: it is
    idempotent, and brings a map written without it (older fusekern) up to date."""
    from fusekern.align.vocab import VocabMap, refine_vocab_map, token_tables

    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocab map {path!r} does not exist")
    vmap = refine_vocab_map(VocabMap.load(path), source_tokenizer, target_tokenizer)
    # Sizes alone do not tell tokenizers apart (a map of another source of the same size, e.g.
    # --vocab-maps given in another order than --sources): an exact entry must join equal surfaces.
    src_surface = token_tables(source_tokenizer)[1]
    tgt_surface = token_tables(target_tokenizer)[1]
    for s in np.flatnonzero(vmap.exact & ~vmap.special & (vmap.ids >= 0)):
        t = int(vmap.ids[s])
        if src_surface[s] != tgt_surface[t]:
            raise ValueError(
                f"vocab map {path!r} was not made for these tokenizers: it marks source id {s} "
                f"({src_surface[s]!r}) an exact match of target id {t} ({tgt_surface[t]!r}); "
                "is it another source's map (check the order of the vocab maps)?"
            )
    return vmap
