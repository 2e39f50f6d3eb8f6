"""Stage 3, vocab map: source id -> target id for every source.

The mapping (exact surface match, else the longest target byte prefix, else minimum edit
distance, specials by content/role, then same token string first and canonical duplicates) is
:func:`fusekern.align.map_vocab`; this module is the stage around it, so ``fusekern vocab-map``
and :func:`run_vocab_map` write the same map. The file records the two tokenizers' vocabulary
fingerprints (:func:`fusekern.pipeline.io.vocab_fingerprint`); align refuses a map made for
other tokenizers.
"""

from __future__ import annotations

import os
import time
import zipfile
from typing import Any, Callable

import numpy as np

from fusekern.pipeline.io import load_tokenizer, name_of, vocab_fingerprint
from fusekern.pipeline.paths import prepare_output_file

SUFFIXES = (".npz", ".json")


def build_vocab_map(
    source_tokenizer: Any,
    target_tokenizer: Any,
    *,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    arg_names: tuple = ("source_tokenizer", "target_tokenizer"),
):
    """The ``fusekern.align.VocabMap`` (source id -> target id, -1 = none) of two tokenizers
    (objects, paths, ``tokenizer.json`` files or Hub names), with their fingerprints.
    ``arg_names``: how errors name the two arguments."""
    from fusekern.align.vocab import map_vocab

    source_name, target_name = arg_names
    src = load_tokenizer(source_tokenizer, name=source_name)
    tgt = load_tokenizer(target_tokenizer, name=target_name)
    vmap = map_vocab(src, tgt, threads=threads, progress=progress)
    vmap.tokenizers = {
        "source": name_of(source_tokenizer),
        "target": name_of(target_tokenizer),
        "source_vocab_sha256": vocab_fingerprint(src),
        "target_vocab_sha256": vocab_fingerprint(tgt),
    }
    return vmap


def _is_vocab_map(path: str) -> bool:
    from fusekern.align.vocab import VocabMap

    try:
        VocabMap.load(path)
    except Exception:  # any unreadable or foreign file
        return False
    return True


def run_vocab_map(
    source_tokenizer: Any,
    target_tokenizer: Any,
    out_file: str,
    *,
    threads: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    arg_names: tuple = ("source_tokenizer", "target_tokenizer"),
) -> str:
    """Write the map of ``source_tokenizer`` onto ``target_tokenizer`` (objects, paths or Hub
    names) to ``out_file`` (``.npz``, or ``.json`` for readable lists; readable with
    ``fusekern.align.VocabMap.load``). An existing file is replaced only if it is a vocab map and
    ``overwrite`` is set. Returns the path written."""
    out_file = prepare_output_file(
        out_file,
        suffixes=SUFFIXES,
        is_own=_is_vocab_map,
        stage="vocab-map",
        inputs=list(zip(arg_names, (source_tokenizer, target_tokenizer))),
        overwrite=overwrite,
    )
    t0 = time.perf_counter()
    vmap = build_vocab_map(
        source_tokenizer, target_tokenizer, threads=threads, progress=progress, arg_names=arg_names
    )
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    tmp = f"{out_file}.tmp-{os.getpid()}{os.path.splitext(out_file)[1]}"
    try:
        path = vmap.save(tmp)
        os.replace(path, out_file)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    c = vmap.counts()
    n = max(1, c["source_size"])
    mined = (vmap.distance > 0) & ~vmap.special & ~vmap.prefix
    mean_d = float(vmap.distance[mined].mean()) if mined.any() else 0.0
    print(
        f"vocab-map: {c['source_size']} source -> {c['target_size']} target ids in "
        f"{time.perf_counter() - t0:.2f}s: exact {c['exact']} ({100 * c['exact'] / n:.1f}%), "
        f"prefix {c['prefix']}, MinED {c['mined']} (mean distance {mean_d:.2f}), special {c['special']}, "
        f"unmapped {c['unmapped']} -> {out_file}"
    )
    return out_file


def load_vocab_map(
    path: str, source_tokenizer: Any, target_tokenizer: Any, *, fingerprints: dict | None = None
):
    """A saved map (from :func:`run_vocab_map` or ``fusekern vocab-map``), checked against the
    two tokenizers (``ValueError`` on a mismatch): their fingerprints where the file records them,
    and always the sizes. A map that records both fingerprints and the current refinement
    (``REFINE_VERSION``) is used as saved: the fingerprints say it was made from exactly these
    vocabularies. Any other map (older fusekern, or written without fingerprints) is refined again
    (idempotent) and its exact entries are checked against the tokenizers' surfaces.
    ``fingerprints``: the tokenizers' :func:`vocab_fingerprint` by side (``"source"``,
    ``"target"``) where the caller has computed them already."""
    from fusekern.align.vocab import REFINE_VERSION, VocabMap, check_map_sizes, refine_vocab_map, token_tables

    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocab map {path!r} does not exist")
    try:
        loaded = VocabMap.load(path)
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"vocab map {path!r} cannot be read ({exc}): damaged or not a vocab map") from None
    recorded = loaded.tokenizers or {}
    known = fingerprints or {}
    checked = 0
    for side, tok in (("source", source_tokenizer), ("target", target_tokenizer)):
        want = recorded.get(f"{side}_vocab_sha256")
        if want and want != (known.get(side) or vocab_fingerprint(tok)):
            raise ValueError(
                f"vocab map {path!r} was made for another {side} tokenizer ({recorded.get(side)!r}, a "
                "different vocabulary); is it another source's map (check the order of the vocab maps)?"
            )
        checked += bool(want)
    if checked == 2 and loaded.refined == REFINE_VERSION:
        check_map_sizes(loaded, source_tokenizer, target_tokenizer)
        return loaded
    vmap = refine_vocab_map(loaded, source_tokenizer, target_tokenizer)
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
