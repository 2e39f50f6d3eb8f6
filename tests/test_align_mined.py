"""Levenshtein core and mined_map against brute force."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Levenshtein as RFLev
from rapidfuzz.process import cdist

from fusekern.align import _C, MAX_TOKEN_CHARS, mined_map
from fusekern.align.vocab import surface_strings
from fusekern.testing.align_reference import brute_mined, common_prefix, levenshtein, toy_tokenizer

ALPHABET = "abé日👍\udce6 "  # Latin-1, BMP, astral, a lone surrogate (a raw byte), space


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=80), st.text(alphabet=ALPHABET, max_size=80))
def test_levenshtein_matches_reference(a, b):
    assert _C.levenshtein(a, b) == levenshtein(a, b)


def test_levenshtein_lengths_around_word_boundaries():
    """Single-word (<= 64), blocked (> 64) and plain-DP fallback (> 8192) paths."""
    rng = random.Random(1)
    for la in (1, 2, 63, 64, 65, 127, 128, 129, 300):
        for lb in (0, 1, 64, la - 1, la, la + 3, 2 * la):
            a = "".join(rng.choice("abc日") for _ in range(la))
            b = "".join(rng.choice("abc日") for _ in range(max(lb, 0)))
            assert _C.levenshtein(a, b) == RFLev.distance(a, b), (la, lb)
    a = "".join(rng.choice("abcd") for _ in range(9000))
    b = a[:3000] + "x" + a[3500:] + "yz"
    assert _C.levenshtein(a, b) == RFLev.distance(a, b)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(alphabet="ab日", max_size=4), max_size=12),
    st.lists(st.text(alphabet="ab日", max_size=4), min_size=1, max_size=12),
    st.sampled_from([None, 1, 2]),
)
def test_matches_brute_force_with_ties(source, target, threads):
    ids, dist = mined_map(source, target, threads=threads, return_distance=True)
    ref_ids, ref_dist = brute_mined(source, target)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(dist, ref_dist)
    assert ids.dtype == np.int64 and dist.dtype == np.int64


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(alphabet="ab日", max_size=4), max_size=12),
    st.lists(st.text(alphabet="ab日", max_size=4), min_size=1, max_size=12),
    st.sampled_from([0, 1, 2]),
)
def test_prefer_prefix_ties_match_brute_force(source, target, threads):
    """The vocab map's MinED step: equal distances go to the most shared leading characters,
    then the lowest index (mined_map itself keeps plain lowest-index ties)."""
    ids, dist = _C.mined_map(source, target, threads, True)
    for s, x in enumerate(source):
        key = [(levenshtein(x, y), -common_prefix(x, y), t) for t, y in enumerate(target)]
        d, _, t = min(key)
        assert (ids[s], dist[s]) == (t, d), (x, target)


def test_prefer_prefix_breaks_ties_by_shared_leading_characters():
    # "ab" is at distance 1 from "b" (index 1), "abc" (2) and "a" (3): plain MinED takes index 1,
    # prefer_prefix "abc" (2 shared leading characters); "ba" ties "b" and "bz" (1 each): lowest
    ids, _ = _C.mined_map(["ab", "ba"], ["x", "b", "abc", "a", "bz"], 1, True)
    assert ids.tolist() == [2, 1]
    assert mined_map(["ab", "ba"], ["x", "b", "abc", "a", "bz"]).tolist() == [1, 1]


def _random_vocab(rng: random.Random, n: int, alphabet: str) -> list:
    return [
        "".join(rng.choice(alphabet) for _ in range(rng.choice([1, 2, 3, 4, 5, 6, 8, 12, 70])))
        for _ in range(n)
    ]


def test_larger_random_vocab_matches_rapidfuzz_brute_force():
    rng = random.Random(7)
    source = _random_vocab(rng, 600, "abcdefg日")
    target = _random_vocab(rng, 900, "abcdefgh日")
    target[5] = target[17] = source[3]  # duplicate exact matches: the lowest index wins
    d = cdist(source, target, scorer=RFLev.distance, workers=1)
    ids, dist = mined_map(source, target, return_distance=True)
    np.testing.assert_array_equal(ids, d.argmin(axis=1))
    np.testing.assert_array_equal(dist, d.min(axis=1))
    assert ids[3] == 5 and dist[3] == 0


def test_real_vocabularies_of_different_families():
    src = surface_strings(toy_tokenizer("byte_bpe"))
    tgt = surface_strings(toy_tokenizer("sp_bpe"))
    src = [s for s in src if s]
    tgt = [t for t in tgt if t]
    d = cdist(src, tgt, scorer=RFLev.distance, workers=1)
    for threads in (1, 2):
        ids, dist = mined_map(src, tgt, threads=threads, return_distance=True)
        np.testing.assert_array_equal(ids, d.argmin(axis=1))
        np.testing.assert_array_equal(dist, d.min(axis=1))
    assert (dist == 0).mean() > 0.3  # 'Ġthe' and '▁the' both read ' the'


def test_bad_input():
    assert mined_map([], ["a"]).shape == (0,)
    assert mined_map([], []).shape == (0,)
    with pytest.raises(ValueError, match="target is empty"):
        mined_map(["a"], [])
    with pytest.raises(TypeError, match=r"source\[2\] must be str, got int"):
        mined_map(["a", "b", 3], ["a"])
    with pytest.raises(TypeError, match=r"target\[0\] must be str, got bytes"):
        mined_map(["a"], [b"a"])
    with pytest.raises(TypeError, match="not a single str"):
        mined_map("abc", ["a"])
    with pytest.raises(ValueError, match=r"target\[1\] has \d+ code points"):
        mined_map(["a"], ["b", "c" * (MAX_TOKEN_CHARS + 1)])
    with pytest.raises(ValueError, match="threads must be >= 1"):
        mined_map(["a"], ["a"], threads=0)
    with pytest.raises(TypeError, match="threads must be an int"):
        mined_map(["a"], ["a"], threads="2")
    # huge but accepted tokens
    big = "ab" * (MAX_TOKEN_CHARS // 2)
    ids, dist = mined_map([big, "a"], ["a", big[:-1], "b" * 10], return_distance=True)
    assert ids.tolist() == [1, 0] and dist.tolist() == [1, 0]
