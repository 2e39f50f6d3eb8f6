"""dtw / dtw_batch against a FuseLLM-style Python DTW (same matrix, same tie order)."""

from __future__ import annotations

import random

import editdistance
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusekern.align import MAX_TOKEN_CHARS, dtw, dtw_batch, token_bytes
from fusekern.testing.align_reference import (
    MARKERS,
    fusellm_dist_fn,
    fusellm_dtw,
    fusellm_tokens,
    toy_texts,
    toy_tokenizer,
)

# Short strings over a tiny alphabet: many equal costs, so the tie order is exercised.
tie_tokens = st.lists(st.text(alphabet="ab", max_size=3), min_size=1, max_size=9)
# Mixed scripts, astral code points, empty strings.
wide_tokens = st.lists(st.text(alphabet=st.sampled_from("aé日👍 \n"), max_size=5), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(tie_tokens, tie_tokens)
def test_matches_fusellm_with_ties(a, b):
    a_to_b, b_to_a, cost = fusellm_dtw(a, b)
    assert dtw(a, b) == (a_to_b, b_to_a)
    assert dtw(a, b, return_cost=True) == (a_to_b, b_to_a, cost)


@settings(max_examples=150, deadline=None)
@given(wide_tokens, wide_tokens)
def test_matches_fusellm_unicode(a, b):
    a_to_b, b_to_a, cost = fusellm_dtw(a, b)
    assert dtw(a, b, return_cost=True) == (a_to_b, b_to_a, cost)


@settings(max_examples=150, deadline=None)
@given(tie_tokens, tie_tokens, st.integers(0, 3))
def test_band(a, b, k):
    full = dtw(a, b, return_cost=True)
    # a band at least as wide as the longer side is the full DTW
    assert dtw(a, b, band=max(len(a), len(b)), return_cost=True) == full
    # a narrow band can only find a path at least as expensive, and a valid one
    a_to_b, b_to_a, cost = dtw(a, b, band=k, return_cost=True)
    assert cost >= full[2]
    assert all(a_to_b) and all(b_to_a) and a_to_b[0][0] == 0 and a_to_b[-1][-1] == len(b) - 1
    path = [(i, j) for i, js in enumerate(a_to_b) for j in js]
    for (i0, j0), (i1, j1) in zip(path, path[1:]):
        assert (i1 - i0, j1 - j0) in ((1, 1), (1, 0), (0, 1))
    assert cost == sum(editdistance.eval(a[i], b[j]) for i, j in path)


def test_longer_noisy_pairs():
    """Longer pairs with repeated and near-identical strings (the distance table is shared
    by many cells); a narrow band misses the optimum on some of them (checked below)."""
    rng = random.Random(3)
    loose = 0
    for _ in range(6):
        words = ["".join(rng.choice("abcdeé日") for _ in range(rng.randint(0, 6))) for _ in range(70)]
        a = [w for w in words if rng.random() > 0.1]
        b = [w[: len(w) // 2] if rng.random() < 0.3 else w + rng.choice(["", "x"]) for w in words]
        b = [t for t in b if rng.random() > 0.1]
        ref = fusellm_dtw(a, b, editdistance.eval)
        assert dtw(a, b, return_cost=True) == ref
        loose += dtw(a, b, band=4, return_cost=True)[2] > ref[2]
    assert loose > 0


def test_long_tokens_use_multiword_path():
    a = ["x" * 70 + "y", "ab" * 40, "日本" * 50, "z"]
    b = ["x" * 71, "ab" * 39 + "c", "z" * 3, "日本" * 49]
    assert dtw(a, b, return_cost=True) == fusellm_dtw(a, b, editdistance.eval)
    # a token longer than 255 code points: distances no longer fit one byte
    a2, b2 = a + ["q" * 300, "z"], b + ["q" * 299 + "r", "", "q"]
    assert dtw(a2, b2, return_cost=True) == fusellm_dtw(a2, b2, editdistance.eval)


# Few distinct strings, many repeats: most cells share a distance-table entry.
pool_tokens = st.lists(
    st.sampled_from(["", "a", "ab", "ba", "abc", "日", "日本", "👍", "x" * 70, "x" * 69 + "y", " "]),
    min_size=1,
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(pool_tokens, pool_tokens)
def test_matches_fusellm_repeated_tokens(a, b):
    assert dtw(a, b, return_cost=True) == fusellm_dtw(a, b, editdistance.eval)


def test_too_many_distinct_strings_for_one_table():
    """Over 2^24 distinct pairs: each row's distances are computed when the row is reached.
    Checked against the band DP covering the whole grid (a separate code path)."""
    a = [f"{i:x}" for i in range(4100)]
    b = [f"{i * 7:x}g" for i in range(4100)]
    assert dtw(a, b, return_cost=True) == dtw(a, b, band=len(b), return_cost=True)


@pytest.mark.parametrize("source", ["mpt", "qwen2"])
def test_real_tokenizers_on_mixed_text(source):
    """FuseLLM's setting: Llama-2 (SentencePiece BPE, byte fallback) as the base, a byte-level
    BPE model as the blending side, raw token strings and FuseLLM's own dist_fn in the
    reference; text with CJK, emoji, numbers, URLs and code. Mappings must be identical."""
    checked = 0
    for seed, offset in ((0, 0), (1, 3000)):
        got = fusellm_tokens("llama2", source, 160, seed=seed, offset=offset)
        if got is None:
            pytest.skip("../shared/tokenizers is absent")
        raw_a, raw_b, _, _ = got
        ref = fusellm_dtw(raw_a, raw_b, fusellm_dist_fn(MARKERS[source], MARKERS["llama2"]))
        a = [t.replace(MARKERS[source], "") for t in raw_a]
        b = [t.replace(MARKERS["llama2"], "") for t in raw_b]
        assert dtw(a, b, return_cost=True) == ref
        checked += 1
    assert checked == 2


def _fusellm_tokens(kind: str, text: str) -> tuple:
    """Token strings as FuseLLM compares them (the tokenizer's pieces, space markers
    removed) and the tokens' byte widths for the band guide."""
    tok = toy_tokenizer(kind)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    table = token_bytes(tok)
    return [p.replace("Ġ", "").replace("▁", "") for p in pieces], [len(table[i]) for i in ids]


def test_real_text_full_and_banded():
    """Full DTW equals the FuseLLM reference on real tokenisations; a band gives what the
    docstring guarantees: a path no cheaper than the optimum, and the full result once it
    covers the grid (no width in between is promised to be exact)."""
    docs = [d[:600] for d in toy_texts()[:5]] + [toy_texts()[-1]]
    pairs = [("byte_bpe", "sp_bpe"), ("unigram", "byte_bpe"), ("sp_bpe", "unigram"), ("sp_bpe", "wordpiece")]
    for ka, kb in pairs:
        for text in docs:
            (a, wa), (b, wb) = _fusellm_tokens(ka, text), _fusellm_tokens(kb, text)
            ref = fusellm_dtw(a, b, editdistance.eval)
            assert dtw(a, b, return_cost=True) == ref
            assert dtw(a, b, band=len(b), a_widths=wa, b_widths=wb, return_cost=True) == ref
            narrow = dtw(a, b, band=1, a_widths=wa, b_widths=wb, return_cost=True)
            assert narrow[2] >= ref[2]
            assert dtw(a, b, band=1, return_cost=True)[2] >= ref[2]


def test_widths_arguments():
    a, b = ["ab", "c", "d"], ["a", "bc", "d"]
    full = dtw(a, b)
    assert dtw(a, b, band=0, a_widths=[2, 1, 1], b_widths=np.array([1, 2, 1], dtype=np.uint8)) == full
    with pytest.raises(ValueError, match="one width per token"):
        dtw(a, b, band=1, a_widths=[1, 2])
    with pytest.raises(ValueError, match=r"b_widths\[1\] is negative"):
        dtw(a, b, band=1, b_widths=[1, -2, 1])
    with pytest.raises(TypeError, match="integer token widths"):
        dtw(a, b, band=1, a_widths=[1.5, 2, 1])
    out = dtw_batch([a, a], [b, b], band=1, a_widths=[[2, 1, 1], None], b_widths=None)
    assert out == [full, full]
    with pytest.raises(ValueError, match="one entry per pair"):
        dtw_batch([a], [b], band=1, a_widths=[])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(wide_tokens, wide_tokens), max_size=5), st.sampled_from([None, 1, 2]))
def test_batch_equals_single(pairs, threads):
    a_seqs = [p[0] for p in pairs]
    b_seqs = [p[1] for p in pairs]
    for band in (None, 2):
        out = dtw_batch(a_seqs, b_seqs, band=band, threads=threads)
        assert out == [dtw(a, b, band=band) for a, b in pairs]
    out = dtw_batch(a_seqs, b_seqs, return_cost=True)
    assert out == [dtw(a, b, return_cost=True) for a, b in pairs]


def test_bad_input():
    with pytest.raises(ValueError, match="a is empty"):
        dtw([], ["x"])
    with pytest.raises(ValueError, match="b is empty"):
        dtw(["x"], [])
    with pytest.raises(TypeError, match=r"b\[1\] must be str, got bytes"):
        dtw(["x"], ["y", b"z"])
    with pytest.raises(TypeError, match=r"a\[0\] must be str, got NoneType"):
        dtw([None], ["y"])
    with pytest.raises(TypeError, match="not a single str"):
        dtw("abc", ["abc"])
    with pytest.raises(ValueError, match="band must be >= 0"):
        dtw(["x"], ["y"], band=-1)
    with pytest.raises(TypeError, match="band must be an int"):
        dtw(["x"], ["y"], band=2.5)
    with pytest.raises(ValueError, match=r"a\[0\] has \d+ code points"):
        dtw(["x" * (MAX_TOKEN_CHARS + 1)], ["y"])
    with pytest.raises(ValueError, match=r"pair 1: b is empty"):
        dtw_batch([["x"], ["y"]], [["x"], []])
    with pytest.raises(ValueError, match="same length"):
        dtw_batch([["x"]], [])
    with pytest.raises(ValueError, match="needs more than 1 GiB"):
        dtw(["a"] * 40_000, ["b"] * 40_000)
    # the same size is fine with a band
    a_to_b, _ = dtw(["a"] * 40_000, ["a"] * 40_000, band=1)
    assert a_to_b[-1] == [39_999]
    # the largest accepted token still works
    assert dtw(["x" * MAX_TOKEN_CHARS], ["x"], return_cost=True)[2] == MAX_TOKEN_CHARS - 1


def test_band_is_subject_to_the_memory_limit():
    """A huge band used to bypass the full DTW's backtrace limit (and could overflow)."""
    a, b = ["a"] * 40_000, ["b"] * 40_000
    for band in (40_000, 10**9, 2**80):
        with pytest.raises(ValueError, match=r"band=\d+ covers 1600000000 cells .* pass a smaller band"):
            dtw(a, b, band=band)
    with pytest.raises(ValueError, match=r"pair 1: dtw with band=\d+ covers"):
        dtw_batch([["x"], a], [["y"], b], band=10**9, threads=1)
    # a band wider than the sequences is the full DTW
    x, y = ["ab", "c", "", "d"], ["a", "bc", "d"]
    assert dtw(x, y, band=2**80, return_cost=True) == dtw(x, y, return_cost=True)


def test_wide_cost_path():
    """A 65,536-code-point token makes 4·cost overflow int32 bounds: the DP switches to int64
    keys. Checked against the band DP covering the whole grid (a separate code path)."""
    a = ["x" * MAX_TOKEN_CHARS, "a", "b"] + ["a", "b", "xx"] * 700
    b = ["a", "b", "x" * 100] * 700
    full = dtw(a, b, return_cost=True)
    assert full == dtw(a, b, band=len(b), return_cost=True)
    assert full[2] >= MAX_TOKEN_CHARS - 100
