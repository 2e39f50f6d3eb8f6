"""Plain-Python references for the aligner tests and benchmarks (slow, obviously correct),
plus the small tokenizers of each family that the tests share (trained once per process).

The peers' packages these references call (``editdistance``, ``rapidfuzz``: test extras) are
imported only inside the functions that use them, so importing this module needs numpy alone.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Callable, Sequence

import numpy as np

# ---------------------------------------------------------------- edit distance


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Textbook unit-cost edit distance over code points (or any items)."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        diag, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            up = row[j]
            row[j] = min(up + 1, row[j - 1] + 1, diag + (ca != cb))
            diag = up
    return row[-1]


# ---------------------------------------------------------------- DTW


def fusellm_dtw(series_1: Sequence, series_2: Sequence, norm_func: Callable = levenshtein):
    """FuseLLM's ``dtw()`` (FuseLLM/src/utils/others.py), step for step: a float64 numpy
    matrix with an infinite border and a zero corner, one Python-level ``norm_func`` call per
    cell in a double loop, then a backtrace from the last cell that takes ``np.argmin`` over
    (diagonal, up = series_1 - 1, left = series_2 - 1) — the first minimum — while collecting
    the matches and both mappings.

    FuseLLM calls it as ``dtw(blending_tokens, base_tokens, norm_func=dist_fn)`` with the raw
    token strings (see :func:`fusellm_dist_fn`). Returns ``(mappings_1, mappings_2, cost)``.
    """
    matrix = np.zeros((len(series_1) + 1, len(series_2) + 1))
    matrix[0, :] = np.inf
    matrix[:, 0] = np.inf
    matrix[0, 0] = 0
    for i, x in enumerate(series_1):
        for j, y in enumerate(series_2):
            cost = norm_func(x, y)
            matrix[i + 1, j + 1] = cost + min(matrix[i, j + 1], matrix[i + 1, j], matrix[i, j])
    matrix = matrix[1:, 1:]
    i, j = matrix.shape[0] - 1, matrix.shape[1] - 1
    matches = []
    map_1: list = [[] for _ in range(matrix.shape[0])]
    map_2: list = [[] for _ in range(matrix.shape[1])]
    while i > 0 or j > 0:
        matches.append((i, j))
        map_1[i].append(j)
        map_2[j].append(i)
        diag = matrix[i - 1, j - 1] if i > 0 and j > 0 else np.inf
        up = matrix[i - 1, j] if i > 0 else np.inf
        left = matrix[i, j - 1] if j > 0 else np.inf
        move = np.argmin([diag, up, left])
        if move == 0:
            i, j = i - 1, j - 1
        elif move == 1:
            i -= 1
        else:
            j -= 1
    matches.append((0, 0))
    map_1[0].append(0)
    map_2[0].append(0)
    matches.reverse()
    for lst in map_1 + map_2:
        lst.reverse()
    return map_1, map_2, int(matrix[-1, -1])


def fusellm_dist_fn(blending_marker: str, base_marker: str) -> Callable[[str, str], int]:
    """FuseLLM's per-cell cost (``transform_step_logits``'s ``dist_fn``): each side's own space
    marker ('Ġ' for GPT-NeoX/MPT, '▁' for Llama) removed, then ``editdistance.eval``."""
    import editdistance

    def dist_fn(a: str, b: str) -> int:
        return editdistance.eval(a.replace(blending_marker, ""), b.replace(base_marker, ""))

    return dist_fn


# ---------------------------------------------------------------- MinED


def brute_mined(
    source: Sequence[str], target: Sequence[str], dist: Callable[[str, str], int] = levenshtein
) -> tuple[np.ndarray, np.ndarray]:
    """Every source against every target; first (lowest-index) minimum wins."""
    ids = np.zeros(len(source), dtype=np.int64)
    best = np.zeros(len(source), dtype=np.int64)
    for s, x in enumerate(source):
        d = [dist(x, y) for y in target]
        ids[s] = int(np.argmin(d))
        best[s] = d[ids[s]]
    return ids, best


def rapidfuzz_mined(
    source: Sequence[str], target: Sequence[str], chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """MinED by brute force with rapidfuzz's ``cdist`` (Levenshtein, all workers, uint8
    distances, ``chunk`` source rows at a time) + argmin: the first minimum, as
    :func:`brute_mined`. Returns int64 ``(ids, distances)``."""
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    ids = np.empty(len(source), dtype=np.int64)
    dist = np.empty(len(source), dtype=np.int64)
    for s in range(0, len(source), chunk):
        d = cdist(source[s : s + chunk], target, scorer=Levenshtein.distance, workers=-1, dtype=np.uint8)
        ids[s : s + chunk] = d.argmin(axis=1)
        dist[s : s + chunk] = d.min(axis=1)
    return ids, dist


def common_prefix(a: Sequence, b: Sequence) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def reference_vocab_rule(
    source: Sequence[bytes], target: Sequence[bytes], dist: Callable[[str, str], int] = levenshtein
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The vocab-map rule by brute force, for non-empty byte strings: the target with the same
    bytes (lowest index), else the longest target that is a byte prefix of the source (lowest
    index among equal ones), else minimum edit distance of the surrogateescape surfaces, ties
    to the most shared leading characters, then the lowest index. Returns (index, distance,
    prefix rule used)."""
    surf = [t.decode("utf-8", errors="surrogateescape") for t in target]
    ids = np.zeros(len(source), dtype=np.int64)
    best = np.zeros(len(source), dtype=np.int64)
    by_prefix = np.zeros(len(source), dtype=bool)
    for s, x in enumerate(source):
        xs = x.decode("utf-8", errors="surrogateescape")
        heads = [(len(y), -t) for t, y in enumerate(target) if x.startswith(y)]
        if heads:
            n, neg_t = max(heads)
            ids[s], by_prefix[s] = -neg_t, n < len(x)
        else:
            ids[s] = min(
                range(len(target)), key=lambda t: (dist(xs, surf[t]), -common_prefix(xs, surf[t]), t)
            )
        best[s] = dist(xs, surf[ids[s]])
    return ids, best, by_prefix


# ---------------------------------------------------------------- span alignment


def span_reference(a: Sequence[bytes], b: Sequence[bytes]) -> list[tuple[int, int, int, int]]:
    """Groups from the set of common cut offsets (not two pointers, so it checks them).

    Byte segments run between consecutive offsets where both sides have a token boundary.
    A token with bytes belongs to the segment holding its bytes. A zero-width token at an
    offset that is not a common cut lies inside a segment; at a cut, zero-width tokens form
    their own group if both sides have some there, else they join the segment that starts at
    the cut (the last segment at the end of the text).
    """
    ja, jb = b"".join(a), b"".join(b)
    if ja != jb:
        k = next((i for i, (x, y) in enumerate(zip(ja, jb)) if x != y), min(len(ja), len(jb)))
        raise ValueError(f"texts differ at byte {k}")
    total = len(ja)

    def starts(seq):
        out, pos = [], 0
        for t in seq:
            out.append(pos)
            pos += len(t)
        return out

    sa, sb = starts(a), starts(b)
    cuts = sorted(
        ({0, total} | {s + len(t) for s, t in zip(sa, a)})
        & ({0, total} | {s + len(t) for s, t in zip(sb, b)})
    )
    cut_set = set(cuts)
    seg_start = {c: k for k, c in enumerate(cuts[:-1])}  # segment k = (cuts[k], cuts[k+1]]
    n_seg = len(cuts) - 1

    def segment_of(start: int) -> int:
        # the last segment starting at or before `start` holds a token that starts there
        return max(i for i, c in enumerate(cuts[:-1]) if c <= start)

    za = {s for s, t in zip(sa, a) if not t}
    zb = {s for s, t in zip(sb, b) if not t}
    keys_a, keys_b = [], []
    for seq, starts_, keys, other_z in ((a, sa, keys_a, zb), (b, sb, keys_b, za)):
        for s, t in zip(starts_, seq):
            if t:
                keys.append((segment_of(s), 1))
            elif s not in cut_set:
                keys.append((segment_of(s), 1))
            elif s in other_z:
                keys.append((seg_start.get(s, n_seg), 0))  # zero-width group just before segment
            elif s in seg_start:
                keys.append((seg_start[s], 1))
            else:  # at the very end: the last segment (or one group if there is none)
                keys.append((max(n_seg - 1, 0), 1))
    groups: dict = {}
    for side, keys in ((0, keys_a), (1, keys_b)):
        for idx, key in enumerate(keys):
            g = groups.setdefault(key, [[], []])
            g[side].append(idx)
    out = []
    for key in sorted(groups):
        ga, gb = groups[key]
        a0 = ga[0] if ga else (out[-1][1] if out else 0)
        b0 = gb[0] if gb else (out[-1][3] if out else 0)
        out.append((a0, ga[-1] + 1 if ga else a0, b0, gb[-1] + 1 if gb else b0))
    return out


def span_two_pointer(a: Sequence[bytes], b: Sequence[bytes]) -> list[tuple[int, int, int, int]]:
    """The documented rules as plain two pointers over byte lengths (the speed baseline for
    the benchmarks; equal to :func:`span_reference`, which the tests check)."""
    if b"".join(a) != b"".join(b):
        raise ValueError("texts differ")
    n, m = len(a), len(b)
    i = j = 0
    out: list = []
    while i < n or j < m:
        gi, gj = i, j
        zi, zj = i, j
        while zi < n and not a[zi]:
            zi += 1
        while zj < m and not b[zj]:
            zj += 1
        if zi > i and zj > j:
            out.append((i, zi, j, zj))
            i, j = zi, zj
            continue
        i, j = zi, zj
        if i == n or j == m:
            if out:
                out[-1] = (out[-1][0], n, out[-1][2], m)
            else:
                out.append((gi, n, gj, m))
            break
        pa, pb = len(a[i]), len(b[j])
        i += 1
        j += 1
        while pa != pb:
            if pa < pb:
                pa += len(a[i])
                i += 1
            else:
                pb += len(b[j])
                j += 1
        out.append((gi, i, gj, j))
    return out


# ---------------------------------------------------------------- real-looking mixed text

# Short multilingual lines (written for these tests): scripts, numbers, dates, URLs, emoji.
MIXED_SNIPPETS = (
    "東京都の人口は約1400万人です。データは https://www.metro.tokyo.lg.jp/ にあります。",
    "机器学习模型需要大量的训练数据，例如 2023 年发布的 MiniPile 数据集（约 6GB）。",
    "한국어 텍스트도 토큰화됩니다: 서울 2024년 3월 15일.",
    "Привет, мир! Цена: 1 234,56 ₽ — см. https://example.ru/страница?id=42",
    "مرحبا بالعالم، هذا نص عربي مع أرقام ٣٫١٤ و 2.718",
    "Emoji: 🎉🚀 👩‍💻 ✅ ❤️ 🇯🇵 and 🤖 (robot) 👍🏽",
    "Version 3.11.7 released 2026-11-30T12:34:56Z; sha256=9f86d081884c7d659a2feaa0c55ad015",
    "See https://github.com/fanqiwan/FuseLLM/blob/main/README.md#data-construction and RFC 3986.",
    "Ελληνικά: αβγδε, Ω ≈ 3.14159; math ∑ᵢ xᵢ² ≤ ∞",
    "Tiếng Việt có dấu: Hà Nội, Đà Nẵng; Français: déjà vu, naïve, œuvre.",
    "price=$1,299.99 | discount 15% | total: 1104.99 USD (≈ 161 000 ¥)",
    "ログ: [INFO] 2026/12/01 10:00:00 処理完了 ✓ — 所要時間 0.42 秒",
)


@cache
def mixed_text(n_chars: int, seed: int = 0) -> str:
    """Deterministic text like a real pre-training mix: stdlib docstrings (40%), slices of
    stdlib source code (30%), multilingual lines with numbers, URLs and emoji (25%) and the
    toy corpus's exotic sample (5%), in paragraphs, until ``n_chars`` characters."""
    import random

    from fusekern.demo.toy.corpus import EXOTIC_TEXT, stdlib_code, stdlib_prose

    rng = random.Random(seed)
    prose, code = stdlib_prose(max_docs=600)[40:], stdlib_code(max_docs=80)
    parts, n = [], 0
    while n < n_chars:
        r = rng.random()
        if r < 0.4:
            p = rng.choice(prose)[:600]
        elif r < 0.7:
            c = rng.choice(code)
            s = rng.randrange(max(1, len(c) - 500))
            p = c[s : s + 500]
        elif r < 0.95:
            p = " ".join(rng.sample(MIXED_SNIPPETS, 2))
        else:
            p = EXOTIC_TEXT
        parts.append(p)
        n += len(p)
    return "\n\n".join(parts)


# ../shared/tokenizers beside the repository (this file is fusekern/testing/align_reference.py)
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REAL_TOKENIZERS = os.path.join(_REPO, "..", "shared", "tokenizers")
MARKERS = {"llama2": "▁", "mpt": "Ġ", "qwen2": "Ġ"}


@cache
def real_tokenizer(name: str):
    """One of the real tokenizers in ``../shared/tokenizers`` (None if the folder is absent)."""
    path = os.path.join(REAL_TOKENIZERS, name)
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@cache
def _byte_table(name: str) -> list:
    from fusekern.align import token_bytes

    return token_bytes(real_tokenizer(name))


def fusellm_tokens(base: str, blending: str, n_base: int, seed: int = 0, offset: int = 0):
    """FuseLLM's DTW inputs for one piece of :func:`mixed_text`: the first ``n_base`` tokens of
    the base (target) tokenizer from character ``offset`` on, and the blending (source)
    tokenizer's tokens of the same text. Returns ``(blending_pieces, base_pieces)`` (raw token
    strings as ``convert_ids_to_tokens`` gives them, markers and ``<0xNN>`` pieces included)
    and the byte widths of each side's tokens, or None if a tokenizer is absent."""
    base_tok, blend_tok = real_tokenizer(base), real_tokenizer(blending)
    if base_tok is None or blend_tok is None:
        return None
    text = mixed_text(offset + n_base * 8, seed)[offset:]
    base_ids = base_tok(text, add_special_tokens=False)["input_ids"][:n_base]
    piece = base_tok.decode(base_ids)
    blend_ids = blend_tok(piece, add_special_tokens=False)["input_ids"]
    tb, tl = _byte_table(base), _byte_table(blending)
    return (
        blend_tok.convert_ids_to_tokens(blend_ids),
        base_tok.convert_ids_to_tokens(base_ids),
        [len(tl[i]) for i in blend_ids],
        [len(tb[i]) for i in base_ids],
    )


# ---------------------------------------------------------------- shared toy tokenizers


@cache
def toy_texts(chars: int = 60_000) -> tuple:
    """About ``chars`` characters of stdlib docstrings plus the exotic sample."""
    from fusekern.demo.toy.corpus import EXOTIC_TEXT, stdlib_prose

    docs = stdlib_prose(max_docs=400)
    out, n = [], 0
    for d in docs[40:]:  # skip the long pydoc topics at the front: small corpus, fast training
        out.append(d)
        n += len(d)
        if n > chars:
            break
    return tuple(out) + (EXOTIC_TEXT,)


@cache
def toy_tokenizer(kind: str, vocab_size: int = 1000):
    from fusekern.demo.toy.tokenizers import train_tokenizer

    return train_tokenizer(kind, list(toy_texts()), vocab_size=vocab_size)
