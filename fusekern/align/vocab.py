"""Vocabulary mapping between two tokenizers (source id → target id), FuseLLM's MinED step.

Tokens are compared on their *surface strings*: :func:`~fusekern.align.token_bytes` decoded
as UTF-8 with ``errors="surrogateescape"``, so 'Ġthe', '▁the' and WordPiece's word-initial
'the' all read ' the', and a byte that is not valid UTF-8 on its own (a byte-level BPE
fragment, a ``<0xE6>`` byte-fallback piece) becomes the lone surrogate U+DC80+byte: two such
fragments match exactly when they are the same byte, and never collide with real text.

- Non-special source tokens, in this order (the target's non-special tokens with a non-empty
  surface are the candidates):

  1. **exact**: the target token with the same bytes;
  2. **prefix**: else the target token that is the *longest byte prefix* of the source token:
     the token a target starts those bytes with (``误`` onto Llama-2: ``<0xE8>``, its first
     UTF-8 byte; ``" thereby"`` onto a target that has ``" there"``: ``" there"``). This is
     what the target could really emit where the source predicts that token;
  3. **MinED**: else (no target token is a prefix: a target without byte fallback) the target
     token at minimum Levenshtein distance of the surfaces, ties going to the token sharing
     the most leading characters with the source, then the lowest id (the native
     ``mined_map(..., prefer_prefix=True)``; :func:`~fusekern.align.mined_map` itself keeps
     lowest-id ties).

  FuseLLM maps by MinED alone, over raw vocabulary strings (its '▁'/'Ġ' markers included; a
  newline can land on a space, ``<|endoftext|>`` on the word "Context") and breaks ties
  nondeterministically. Plain MinED with lowest-id ties sends every character a byte-fallback
  target lacks to ``<0x00>`` (its byte pieces sit at the lowest ids: 18,057 Qwen2 tokens onto
  Llama-2's NUL), which would teach the target to emit NUL bytes; the prefix rule sends them
  to the byte the target would really start them with.
- Special source tokens (bos/eos/unk/pad/…, empty surface): the target special token with
  the same content, else the one with the same role (eos, bos, unk, pad, sep, cls, mask in
  that order); ``-1`` if there is none (-1 is padding in the teacher-id convention).
- Non-special source tokens with an empty surface (unused ids): ``-1``.

Then a vocabulary-level policy picks *which* target id among those with the mapped surface
(:func:`refine_vocab_map`; on by default in :func:`map_vocab`):

1. **Same token string first.** A source token whose vocabulary string also exists in the
   target with the same surface maps to that id. Two tokenizers of one family then map 1:1
   (a tokenizer mapped onto itself is the identity).
2. **Canonical duplicates.** Several target ids can share one surface: SentencePiece byte
   fallback pieces ``<0x65>`` and the learned token ``e`` both read ``b"e"``. The target's
   tokenizer never produces the byte piece where a learned token exists, so otherwise a
   match goes to the non-``<0xNN>`` id, then the lowest id (:func:`canonical_target_ids`).

Both only move a source id between target ids with *identical* surfaces, so ``distance``
and ``exact`` (functions of the two surfaces) are kept. ``distance`` is always the edit
distance of the two surfaces (0 = exact), whichever rule chose the target.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from fusekern.align import _native
from fusekern.align._validate import threads_arg
from fusekern.align.token_bytes import _special_ids, token_bytes

__all__ = [
    "VocabMap",
    "canonical_target_ids",
    "check_map_sizes",
    "map_vocab",
    "refine_vocab_map",
    "surface_strings",
    "token_tables",
]

_ROLES = ("eos_token", "bos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
FORMAT = "fusekern-vocab-map/1"
REFINE_VERSION = 1  # bump when refine_vocab_map's policy changes: saved maps are then refined again
_TABLES: dict = {}


def _size(tok: Any) -> int | None:
    try:
        return len(tok)
    except TypeError:  # a bare tokenizers.Tokenizer
        get = getattr(tok, "get_vocab_size", None)
        return get(True) if get is not None else None


def token_tables(tokenizer: Any) -> tuple[list[bytes], list[str]]:
    """``(token_bytes(tokenizer), surface strings)``, computed once per tokenizer object and
    size (reading a tokenizer's JSON is the slow part of small runs). The lists are shared:
    do not modify them."""
    key, size = id(tokenizer), _size(tokenizer)
    hit = _TABLES.get(key)
    if hit is None or hit[0] is not tokenizer or hit[1] != size:
        raw = token_bytes(tokenizer)
        surface = [b.decode("utf-8", errors="surrogateescape") for b in raw]
        if len(_TABLES) > 16:
            _TABLES.clear()
        hit = _TABLES[key] = (tokenizer, size, raw, surface)
    return hit[2], hit[3]


def surface_strings(tokenizer: Any) -> list[str]:
    """``token_bytes(tokenizer)`` decoded with ``errors="surrogateescape"`` (see module doc)."""
    return list(token_tables(tokenizer)[1])


@dataclass
class VocabMap:
    """Source id → target id. All arrays have one entry per source id.

    ``ids`` int64 (``-1`` = no counterpart), ``distance`` int64 edit distance of the surface
    strings (0 = exact; -1 for special/unmapped ids), ``exact`` bool, ``special`` bool (the
    source id is a special token, mapped by content or role), ``prefix`` bool (mapped to its
    longest target byte prefix; all False in maps written before that rule existed).
    ``tokenizers``: what the map was made for (``{"source": ..., "target": ...}``, free-form,
    saved with it; see ``fusekern.pipeline.vocab``), or None. ``refined``: the version of the
    :func:`refine_vocab_map` policy applied (``REFINE_VERSION``), 0 = not refined (and maps
    written before this was recorded); saved with it, so a loader can tell whether it must
    refine again.
    """

    ids: np.ndarray
    distance: np.ndarray
    exact: np.ndarray
    special: np.ndarray
    target_size: int
    tokenizers: dict | None = None
    prefix: np.ndarray | None = None
    refined: int = 0

    def __post_init__(self) -> None:
        if self.prefix is None:
            self.prefix = np.zeros(self.ids.shape[0], dtype=bool)

    @property
    def source_size(self) -> int:
        return int(self.ids.shape[0])

    def counts(self) -> dict:
        mapped = self.ids >= 0
        return {
            "source_size": self.source_size,
            "target_size": int(self.target_size),
            "exact": int(np.count_nonzero(self.exact)),
            "prefix": int(np.count_nonzero(mapped & self.prefix & ~self.exact)),
            "mined": int(np.count_nonzero(mapped & ~self.exact & ~self.special & ~self.prefix)),
            "special": int(np.count_nonzero(self.special & mapped)),
            "unmapped": int(np.count_nonzero(~mapped)),
        }

    def save(self, path: str) -> str:
        """Writes ``.json`` (readable lists) if the name ends with .json, else ``.npz``."""
        counts = self.counts()
        if self.tokenizers:
            counts["tokenizers"] = self.tokenizers
        if self.refined:
            counts["refined"] = self.refined
        if path.endswith(".json"):
            doc = {
                "format": FORMAT,
                **counts,
                "ids": self.ids.tolist(),
                "distance": self.distance.tolist(),
                "exact": self.exact.tolist(),
                "special": self.special.tolist(),
                "prefix": self.prefix.tolist(),
            }
            with open(path, "w", encoding="utf-8") as f:
                json.dump(doc, f)
        else:
            if not path.endswith(".npz"):
                path += ".npz"  # what np.savez would do anyway; return the real name
            meta = json.dumps({"format": FORMAT, **counts})
            np.savez(
                path,
                ids=self.ids,
                distance=self.distance,
                exact=self.exact,
                special=self.special,
                prefix=self.prefix,
                meta=np.array(meta),
            )
        return path

    @classmethod
    def load(cls, path: str) -> VocabMap:
        fields = ("ids", "distance", "exact", "special")

        def check(meta: dict, keys) -> None:
            if meta.get("format") != FORMAT or any(k not in keys for k in fields):
                raise ValueError(f"{path} is not a fusekern vocabulary map (format {meta.get('format')!r})")

        if path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
            check(meta, meta)
            arrays = {k: meta[k] for k in (*fields, "prefix") if k in meta}
        else:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
                check(meta, z.files)
                arrays = {k: z[k] for k in (*fields, "prefix") if k in z.files}
        return cls(
            ids=np.asarray(arrays["ids"], dtype=np.int64),
            distance=np.asarray(arrays["distance"], dtype=np.int64),
            exact=np.asarray(arrays["exact"], dtype=bool),
            special=np.asarray(arrays["special"], dtype=bool),
            target_size=int(meta["target_size"]),
            tokenizers=meta.get("tokenizers"),
            prefix=np.asarray(arrays["prefix"], dtype=bool) if "prefix" in arrays else None,
            refined=meta["refined"] if isinstance(meta.get("refined"), int) else 0,
        )


def _special_target(src: Any, tgt: Any, sid: int, tgt_content: dict) -> int:
    content = src.convert_ids_to_tokens(sid) if hasattr(src, "convert_ids_to_tokens") else None
    if isinstance(content, str) and content in tgt_content:
        return tgt_content[content]
    for role in _ROLES:
        if getattr(src, role + "_id", None) == sid:
            tid = getattr(tgt, role + "_id", None)
            if isinstance(tid, int) and tid >= 0:
                return tid
    return -1


def _id_strings(tok: Any, n: int) -> list[str | None]:
    """The vocabulary string of each id below ``n`` (None where the tokenizer has none),
    computed once per tokenizer object, size and ``n`` (a shared list: do not modify)."""
    key, size = ("strings", id(tok), n), _size(tok)
    hit = _TABLES.get(key)
    if hit is None or hit[0] is not tok or hit[1] != size:
        hit = _TABLES[key] = (tok, size, _read_id_strings(tok, n))
    return hit[2]


def _read_id_strings(tok: Any, n: int) -> list[str | None]:
    if hasattr(tok, "convert_ids_to_tokens"):
        strings = tok.convert_ids_to_tokens(list(range(n)))
    elif hasattr(tok, "id_to_token"):
        strings = [tok.id_to_token(i) for i in range(n)]
    else:
        strings = [None] * n
    return [s if isinstance(s, str) else None for s in strings]


def canonical_target_ids(target_tokenizer: Any) -> np.ndarray:
    """For each target id, the id the target itself would use for that surface: non-byte-piece
    first, then lowest id. Special and empty-surface ids map to themselves. Computed once per
    tokenizer object and size (a read-only array)."""
    key, size = ("canon", id(target_tokenizer)), _size(target_tokenizer)
    hit = _TABLES.get(key)
    if hit is None or hit[0] is not target_tokenizer or hit[1] != size:
        canon = _canonical_target_ids(target_tokenizer)
        canon.flags.writeable = False
        hit = _TABLES[key] = (target_tokenizer, size, canon)
    return hit[2]


def _canonical_target_ids(target_tokenizer: Any) -> np.ndarray:
    surface = token_tables(target_tokenizer)[1]
    n = len(surface)
    strings = _id_strings(target_tokenizer, n)
    specials = _special_ids(target_tokenizer)
    best: dict = {}
    for t in range(n):
        if t in specials or not surface[t]:
            continue
        rank = (bool(strings[t] and _BYTE_PIECE.match(strings[t])), t)
        cur = best.get(surface[t])
        if cur is None or rank < cur:
            best[surface[t]] = rank
    canon = np.arange(n, dtype=np.int64)
    for t in range(n):
        if t not in specials and surface[t]:
            canon[t] = best[surface[t]][1]
    return canon


def check_map_sizes(vmap: VocabMap, source_tokenizer: Any, target_tokenizer: Any) -> None:
    """Raise ``ValueError`` if the map's sizes do not match the two tokenizers'."""
    ns, nt = len(token_tables(source_tokenizer)[0]), len(token_tables(target_tokenizer)[0])
    if vmap.source_size != ns:
        raise ValueError(f"vocab map covers {vmap.source_size} source ids but the source tokenizer has {ns}")
    if vmap.target_size != nt:
        raise ValueError(f"vocab map targets {vmap.target_size} ids but the target tokenizer has {nt}")


def refine_vocab_map(vmap: VocabMap, source_tokenizer: Any, target_tokenizer: Any) -> VocabMap:
    """Apply the same-string and canonical-duplicate rules (module doc) to a map of these two
    tokenizers. Idempotent; ``distance``/``exact``/``special`` are kept. Raises ``ValueError``
    if the map's sizes do not match the tokenizers."""
    check_map_sizes(vmap, source_tokenizer, target_tokenizer)
    src_surface = token_tables(source_tokenizer)[1]
    tgt_surface = token_tables(target_tokenizer)[1]
    canon = canonical_target_ids(target_tokenizer)
    ids = vmap.ids.copy()
    normal = (ids >= 0) & ~vmap.special
    ids[normal] = canon[ids[normal]]
    get_vocab = getattr(target_tokenizer, "get_vocab", None)
    tgt_vocab = get_vocab() if get_vocab is not None else {}
    src_strings = _id_strings(source_tokenizer, len(src_surface))
    for s in np.flatnonzero(~vmap.special):
        t = tgt_vocab.get(src_strings[s]) if src_strings[s] is not None else None
        if t is not None and t < len(tgt_surface) and src_surface[s] and tgt_surface[t] == src_surface[s]:
            ids[s] = t
    return VocabMap(
        ids=ids,
        distance=vmap.distance,
        exact=vmap.exact,
        special=vmap.special,
        target_size=vmap.target_size,
        tokenizers=vmap.tokenizers,
        prefix=vmap.prefix,
        refined=REFINE_VERSION,
    )


def map_vocab(
    source_tokenizer: Any,
    target_tokenizer: Any,
    *,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 8192,
    refine: bool = True,
) -> VocabMap:
    """Map every source id to a target id (see module doc): exact bytes, else the longest
    target byte prefix, else MinED over surface strings with ties towards shared leading
    characters.

    With ``refine=True`` (default) the vocabulary-level policy of :func:`refine_vocab_map` then
    chooses among target ids with the same surface (same token string first, else no
    ``<0xNN>`` byte-fallback piece, else lowest id). ``distance``/``exact`` are the same
    either way. ``progress(done, total)`` is called after each chunk of MinED searches.
    """
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")

    src_surface = token_tables(source_tokenizer)[1]
    tgt_surface = token_tables(target_tokenizer)[1]
    src_specials = _special_ids(source_tokenizer)
    tgt_specials = _special_ids(target_tokenizer)
    ns, nt = len(src_surface), len(tgt_surface)

    ids = np.full(ns, -1, dtype=np.int64)
    dist = np.full(ns, -1, dtype=np.int64)
    special = np.zeros(ns, dtype=bool)

    cand = [t for t in range(nt) if t not in tgt_specials and tgt_surface[t]]
    if not cand:
        raise ValueError("target tokenizer has no non-special tokens with a surface string")
    cand_ids = np.asarray(cand, dtype=np.int64)
    cand_strings = [tgt_surface[t] for t in cand]

    tgt_content = {}
    if hasattr(target_tokenizer, "convert_ids_to_tokens"):
        for t in sorted(tgt_specials):
            tok = target_tokenizer.convert_ids_to_tokens(t)
            if isinstance(tok, str):
                tgt_content.setdefault(tok, t)
    for s in sorted(src_specials):
        if 0 <= s < ns:
            special[s] = True
            ids[s] = _special_target(source_tokenizer, target_tokenizer, s, tgt_content)

    # exact bytes, else the longest target byte prefix (lowest id among equal bytes: the
    # refinement then picks among them, as for the MinED matches)
    src_raw, tgt_raw = token_tables(source_tokenizer)[0], token_tables(target_tokenizer)[0]
    by_bytes: dict = {}
    for t in cand:
        by_bytes.setdefault(tgt_raw[t], t)
    longest = max(map(len, by_bytes))
    prefix = np.zeros(ns, dtype=bool)
    todo = []
    for s in range(ns):
        if special[s] or not src_surface[s]:
            continue
        raw = src_raw[s]
        for n in range(min(len(raw), longest), 0, -1):
            t = by_bytes.get(raw[:n])
            if t is not None:
                ids[s] = t
                prefix[s] = n < len(raw)
                dist[s] = _native.levenshtein(src_surface[s], tgt_surface[t]) if n < len(raw) else 0
                break
        else:
            todo.append(s)
    total = len(todo)
    if progress is not None:
        progress(0, total)
    for start in range(0, total, max(1, chunk)):
        part = todo[start : start + chunk]
        found, d = _native.mined_map([src_surface[s] for s in part], cand_strings, threads_arg(threads), True)
        ids[part] = cand_ids[found]
        dist[part] = d
        if progress is not None:
            progress(min(start + chunk, total), total)
    exact = dist == 0
    vmap = VocabMap(ids=ids, distance=dist, exact=exact, special=special, target_size=nt, prefix=prefix)
    return refine_vocab_map(vmap, source_tokenizer, target_tokenizer) if refine else vmap
