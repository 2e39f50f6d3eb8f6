"""span_align and its batch forms against the reference and the contract's properties."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusekern.align import (
    ByteVocab,
    adds_dummy_prefix,
    span_align,
    span_align_batch,
    span_align_ids_batch,
    token_bytes,
)
from fusekern.testing.align_reference import span_reference, span_two_pointer, toy_tokenizer

# ---------------------------------------------------------------- helpers


def check_groups(a, b, groups):
    """Groups are in order, cover both sides exactly, hold equal bytes, and every group with
    bytes ends at a common boundary with nothing smaller possible (minimality)."""
    ia = ib = 0
    for a0, a1, b0, b1 in groups:
        assert (a0, b0) == (ia, ib), "groups must be contiguous and in order"
        assert a1 >= a0 and b1 >= b0 and (a1 > a0 or b1 > b0)
        assert b"".join(a[a0:a1]) == b"".join(b[b0:b1])
        ia, ib = a1, b1
    assert (ia, ib) == (len(a), len(b))

    def ends(seq):
        out, pos = set(), 0
        for t in seq:
            pos += len(t)
            out.add(pos)
        return out

    common = ends(a) & ends(b)
    group_ends = set()
    pos = 0
    for a0, a1, _, _ in groups:
        width = sum(len(t) for t in a[a0:a1])
        pos += width
        if width:
            group_ends.add(pos)
            # no common boundary strictly inside a group (else it could be split)
            start = pos - width
            assert not any(start < c < pos for c in common)
    assert group_ends == {c for c in common if c > 0}


def split(data: bytes, cuts: list) -> list:
    cuts = sorted(set(c for c in cuts if 0 < c < len(data)))
    out, prev = [], 0
    for c in cuts + [len(data)]:
        out.append(data[prev:c])
        prev = c
    return [t for t in out if t]


@st.composite
def tokenisations(draw):
    """Two random tokenisations of the same random text, with zero-width tokens sprinkled in
    (at the start, middle and end), multi-byte UTF-8 characters split anywhere."""
    text = draw(st.text(alphabet=st.sampled_from("ab é日👍\n"), max_size=30)).encode()
    seqs = []
    for _ in range(2):
        cuts = draw(st.lists(st.integers(0, max(len(text), 1)), max_size=len(text) + 1))
        toks = split(text, cuts)
        for pos in draw(st.lists(st.integers(0, len(toks)), max_size=3)):
            toks.insert(pos, b"")
        seqs.append(toks)
    return seqs


# ---------------------------------------------------------------- examples


def test_examples():
    assert span_align([b"ab", b"c"], [b"a", b"bc"]) == [(0, 2, 0, 2)]
    assert span_align([b"a", b"b", b"c"], [b"a", b"bc"]) == [(0, 1, 0, 1), (1, 3, 1, 2)]
    assert span_align([b"hello", b" world"], [b"hello", b" world"]) == [(0, 1, 0, 1), (1, 2, 1, 2)]
    assert span_align([], []) == []


def test_zero_width_rules():
    # zero-width on both sides at the same offset: a group of their own
    assert span_align([b"", b"ab"], [b"", b"a", b"b"]) == [(0, 1, 0, 1), (1, 2, 1, 3)]
    assert span_align([b"x", b""], [b"x", b""]) == [(0, 1, 0, 1), (1, 2, 1, 2)]
    # one side only: joins the group starting at its offset ...
    assert span_align([b"", b"ab"], [b"a", b"b"]) == [(0, 2, 0, 2)]
    assert span_align([b"a", b"", b"b"], [b"a", b"b"]) == [(0, 1, 0, 1), (1, 3, 1, 2)]
    # ... or the last group at the very end
    assert span_align([b"a", b"b", b""], [b"a", b"b"]) == [(0, 1, 0, 1), (1, 3, 1, 2)]
    # inside a group (not at a common boundary) it simply belongs to that group
    assert span_align([b"a", b"", b"bc"], [b"ab", b"c"]) == [(0, 3, 0, 2)]
    # nothing but zero-width tokens
    assert span_align([b""], []) == [(0, 1, 0, 0)]
    assert span_align([b"", b""], [b""]) == [(0, 2, 0, 1)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokenisations())
def test_matches_reference_and_properties(pair):
    a, b = pair
    groups = span_align(a, b)
    assert groups == span_reference(a, b) == span_two_pointer(a, b)
    check_groups(a, b, groups)
    # symmetric: swapping the sides swaps the columns
    assert span_align(b, a) == [(b0, b1, a0, a1) for a0, a1, b0, b1 in groups]


# ---------------------------------------------------------------- real tokenizers


def _bytes_of(kind: str, text: str) -> list:
    tok = toy_tokenizer(kind)
    table = token_bytes(tok)
    toks = [table[i] for i in tok(text, add_special_tokens=False)["input_ids"]]
    if adds_dummy_prefix(tok) and not text.startswith(" ") and toks and toks[0].startswith(b" "):
        toks[0] = toks[0][1:]  # the dummy-prefix space is not part of the text
    return toks


def test_real_tokenizers():
    from fusekern.demo.toy.corpus import EXOTIC_TEXT
    from fusekern.testing.align_reference import toy_texts

    texts = [EXOTIC_TEXT, *toy_texts()[:5]]
    for text in texts:
        a = _bytes_of("byte_bpe", text)
        b = _bytes_of("sp_bpe", text)
        assert b"".join(a) == text.encode()
        groups = span_align(a, b)
        check_groups(a, b, groups)
        assert groups == span_reference(a, b)
        assert sum(1 for g in groups if g[1] - g[0] == 1 and g[3] - g[2] == 1) > len(groups) // 2


# ---------------------------------------------------------------- batch entry points


@settings(max_examples=40, deadline=None)
@given(st.lists(tokenisations(), max_size=6), st.sampled_from([None, 1, 2, 3]))
def test_batch_equals_single(pairs, threads):
    a_seqs = [p[0] for p in pairs]
    b_seqs = [p[1] for p in pairs]
    out = span_align_batch(a_seqs, b_seqs, threads=threads)
    assert len(out) == len(pairs)
    for (a, b), arr in zip(pairs, out):
        assert arr.dtype == np.int64 and arr.shape[1] == 4
        assert [tuple(r) for r in arr.tolist()] == span_align(a, b)

    # the same through ids into vocabularies
    vocab = sorted({t for a, b in pairs for t in a + b})
    index = {t: i for i, t in enumerate(vocab)}
    a_ids = [np.array([index[t] for t in a], dtype=np.int32) for a in a_seqs]
    b_ids = [[index[t] for t in b] for b in b_seqs]  # plain lists work too
    out_ids = span_align_ids_batch(a_ids, b_ids, vocab, ByteVocab(vocab), threads=threads)
    for x, y in zip(out, out_ids):
        np.testing.assert_array_equal(x, y)


def test_batch_mismatch_modes():
    a_seqs = [[b"ab"], [b"xy"], [b"c"]]
    b_seqs = [[b"a", b"b"], [b"xz"], [b"c"]]
    out = span_align_batch(a_seqs, b_seqs, on_mismatch="none")
    assert out[1] is None and out[0].tolist() == [[0, 1, 0, 2]] and out[2].tolist() == [[0, 1, 0, 1]]
    with pytest.raises(ValueError, match=r"pair 1: .*byte 1"):
        span_align_batch(a_seqs, b_seqs)
    vocab = [b"ab", b"a", b"b", b"xy", b"xz", b"c"]
    out = span_align_ids_batch([[0], [3]], [[1, 2], [4]], vocab, vocab, on_mismatch="none")
    assert out[1] is None and out[0].tolist() == [[0, 1, 0, 2]]
    with pytest.raises(ValueError, match=r"a_ids\[1\]\[0\] = 6 is outside the vocabulary \(size 6\)"):
        span_align_ids_batch([[0], [6]], [[1, 2], [4]], vocab, vocab, on_mismatch="none")
    with pytest.raises(ValueError, match=r"b_ids\[0\]\[1\] = -1"):
        span_align_ids_batch([[0]], [[1, -1]], vocab, vocab)
    with pytest.raises(TypeError, match=r"a_ids\[0\] must hold integer token ids"):
        span_align_ids_batch([np.array([0.0])], [[0]], vocab, vocab)
    with pytest.raises(ValueError, match="must be 1-D"):
        span_align_ids_batch([np.zeros((1, 1), dtype=np.int64)], [[0]], vocab, vocab)
    with pytest.raises(ValueError, match="same length"):
        span_align_batch([[b"a"]], [], on_mismatch="none")
    with pytest.raises(ValueError, match="on_mismatch"):
        span_align_batch([], [], on_mismatch="skip")
    with pytest.raises(ValueError, match="threads"):
        span_align_batch([], [], threads=0)
    with pytest.raises(TypeError, match="a_vocab"):
        span_align_ids_batch([[0]], [[0]], ["a"], [b"a"])
    assert span_align_batch([], []) == []


# ---------------------------------------------------------------- bad input


def test_mismatch_errors_name_the_offset():
    with pytest.raises(ValueError, match=r"diverge at byte 3 \(a token 1, b token 0\)"):
        span_align([b"abc", b"de"], [b"abcx"])
    with pytest.raises(ValueError, match=r"a ends at byte 3 but b continues"):
        span_align([b"abc"], [b"ab", b"cd"])
    with pytest.raises(ValueError, match=r"b ends at byte 0 but a continues"):
        span_align([b"x"], [])
    # a multi-byte character split differently but changed in one byte
    with pytest.raises(ValueError, match=r"byte 1 \(a token 1, b token 0\)"):
        span_align(["é".encode()[:1], "é".encode()[1:] + b"!"], ["è".encode() + b"!"])


def test_type_errors():
    with pytest.raises(TypeError, match=r"a\[1\] must be bytes, got str"):
        span_align([b"a", "b"], [b"ab"])
    with pytest.raises(TypeError, match=r"b\[0\] must be bytes, got int"):
        span_align([b"a"], [97])
    with pytest.raises(TypeError, match="not a single bytes"):
        span_align(b"ab", [b"ab"])
    with pytest.raises(TypeError, match="sequence of bytes"):
        span_align({b"a"}, [b"a"])
    with pytest.raises(TypeError, match=r"a_seqs\[0\]\[0\] must be bytes"):
        span_align_batch([[1]], [[b"a"]])


def test_huge_tokens():
    big = bytes(range(256)) * 40_000  # 10 MB in one token
    pieces = [big[i : i + 7] for i in range(0, len(big), 7)]
    assert span_align([big], pieces) == [(0, 1, 0, len(pieces))]
    with pytest.raises(ValueError, match="byte 10240000"):
        span_align([big + b"!"], pieces)


# ---------------------------------------------------------------- threads and shared arrays


def test_threads_are_capped():
    from fusekern.align._validate import MAX_THREADS

    a = [[b"ab"]]
    assert span_align_batch(a, a, threads=MAX_THREADS)[0].tolist() == [[0, 1, 0, 1]]
    with pytest.raises(ValueError, match=rf"threads must be <= {MAX_THREADS}, got {MAX_THREADS + 1}"):
        span_align_batch(a, a, threads=MAX_THREADS + 1)
    with pytest.raises(ValueError, match="threads must be <="):
        span_align_ids_batch([[0]], [[0]], [b"a"], [b"a"], threads=10**6)


_THREAD_START_FAILS = r"""
import resource
from fusekern.align import span_align_batch

def vm_bytes():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))

pairs = [[b"ab", b"c"]] * 4000
span_align_batch(pairs, pairs, threads=2)
# room for a few 8 MiB thread stacks, not for 64
resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + 48 * 2**20, resource.RLIM_INFINITY))
try:
    span_align_batch(pairs, pairs, threads=64)
except RuntimeError as exc:
    print("RuntimeError:", exc)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_AS")
def test_thread_start_failure_is_an_exception():
    """The OS refusing a worker thread used to abort the process (`terminate called`)."""
    proc = subprocess.run(
        [sys.executable, "-c", _THREAD_START_FAILS], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RuntimeError: could not start worker thread" in proc.stdout
    assert "pass fewer threads" in proc.stdout


def test_ids_are_copied_before_the_gil_is_released():
    """Another thread rewriting the id arrays during the call must not reach the native code:
    the ids are checked and used from a private copy (an out-of-range write used to be read
    after the check)."""
    vocab = [b"a", b"b", b"ab"]
    a_ids = [np.zeros(20_000, dtype=np.int64) for _ in range(8)]
    b_ids = [np.zeros(20_000, dtype=np.int64) for _ in range(8)]
    stop = threading.Event()

    def scribble():
        big = np.int64(2**40)
        while not stop.is_set():
            for arr in a_ids + b_ids:
                arr[::97] = big
                arr[::97] = 0

    writer = threading.Thread(target=scribble)
    writer.start()
    try:
        for _ in range(30):
            try:
                out = span_align_ids_batch(a_ids, b_ids, vocab, vocab, threads=2, on_mismatch="none")
            except ValueError as exc:  # the snapshot caught the writer mid-way: a clean error
                assert "outside the vocabulary" in str(exc)
                continue
            assert all(g is None or len(g) == 20_000 for g in out)
    finally:
        stop.set()
        writer.join()
