"""Plain-Python references for the aligner tests and benchmarks (slow, obviously correct),
plus the small tokenizers of each family that the tests share (trained once per process)."""

from __future__ import annotations

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


def fusellm_dtw(a: Sequence[str], b: Sequence[str], dist: Callable[[str, str], int] = levenshtein):
    """DTW as FuseLLM's ``dtw()`` does it: a numpy cost-to-here matrix with an infinite
    border, one Python-level distance call per cell, and a backtrace from the last cell that
    takes the first minimum among (diagonal, up = a-1, left = b-1).

    Returns ``(a_to_b, b_to_a, cost)``.
    """
    n, m = len(a), len(b)
    acc = np.zeros((n + 1, m + 1))
    acc[0, :] = np.inf
    acc[:, 0] = np.inf
    acc[0, 0] = 0
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            acc[i + 1, j + 1] = dist(x, y) + min(acc[i, j + 1], acc[i + 1, j], acc[i, j])
    grid = acc[1:, 1:]
    i, j = n - 1, m - 1
    a_to_b = [[] for _ in range(n)]
    b_to_a = [[] for _ in range(m)]
    while i > 0 or j > 0:
        a_to_b[i].append(j)
        b_to_a[j].append(i)
        options = [
            grid[i - 1, j - 1] if i > 0 and j > 0 else np.inf,
            grid[i - 1, j] if i > 0 else np.inf,
            grid[i, j - 1] if j > 0 else np.inf,
        ]
        move = int(np.argmin(options))
        if move == 0:
            i, j = i - 1, j - 1
        elif move == 1:
            i -= 1
        else:
            j -= 1
    a_to_b[0].append(0)
    b_to_a[0].append(0)
    for lst in a_to_b + b_to_a:
        lst.reverse()
    return a_to_b, b_to_a, int(grid[-1, -1])


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


# ---------------------------------------------------------------- shared toy tokenizers


@cache
def toy_texts(chars: int = 60_000) -> tuple:
    """About ``chars`` characters of stdlib docstrings plus the exotic sample."""
    from fusekern.toy.corpus import EXOTIC_TEXT, stdlib_prose

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
    from fusekern.toy.tokenizers import train_tokenizer

    return train_tokenizer(kind, list(toy_texts()), vocab_size=vocab_size)
