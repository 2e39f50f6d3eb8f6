"""Aligner benchmarks: DTW, span alignment and MinED vocabulary mapping.

Run: ``pytest benchmarks/bench_align.py -s`` (prints a summary table at the end; numbers are
recorded in benchmarks/RESULTS.md, section "Aligner").

Setup: two 32k tokenizers of different families (byte-level BPE as GPT-NeoX/Llama-3, and
SentencePiece BPE with byte fallback as Llama-2) trained with ``fusekern.demo.toy`` on the standard
library's docstrings + 600 source files, cached under ``$FUSEKERN_BENCH_CACHE`` (default: the
temp dir) so later runs skip the ~40 s of training. Text: stdlib docstrings (not the pydoc
topics, which lead the prose corpus).

- DTW: FuseLLM's setting on real-looking data: ``mixed_text`` of
  :mod:`fusekern.testing.align_reference` (stdlib docstrings and code, multilingual lines with
  CJK, Cyrillic, Arabic, numbers, URLs, emoji),
  the first 512 / 2048 tokens of the real Llama-2 tokenizer (SentencePiece BPE, byte fallback:
  the base/target) and the same text under the real MPT (byte-level BPE) or Qwen2 tokenizer
  (the blending/source model), from ``../shared/tokenizers``. References, timed in the same run:
  (1) FuseLLM's ``dtw()`` as released (``align_reference.fusellm_dtw``: numpy matrix, double
  loop, its backtrace) with its ``dist_fn`` (markers removed, ``editdistance.eval``, per cell) on
  the raw token strings; (2) the same with the strings stripped beforehand, so each cell is
  ``editdistance.eval`` alone (the strictest reference: the ratio targets are against it);
  (3) at 512 only, the same loops with a pure-Python Levenshtein (labelled; the old baseline).
  fusekern full (``band=None``; mappings must be identical, checked) and banded (``band=4/16/64``
  with byte widths; exactness reported, not assumed).
- span_align: 100 documents of ~2k tokens per side; tokens per second on one thread (both sides'
  tokens counted) for ``span_align`` (lists of tuples), ``span_align_batch`` and
  ``span_align_ids_batch`` (ids + ``ByteVocab``); reference: the pure-Python two-pointer aligner.
- mined_map: the two 32k vocabularies' surface strings (specials dropped), against
  ``rapidfuzz.process.cdist`` (Levenshtein, ``workers=-1``, uint8, chunks of 2048 rows) +
  argmin (``align_reference.rapidfuzz_mined``); same answers checked.

Peak memory: growth of peak RSS during one call in a fresh interpreter (Linux /proc), so C++
allocations count and earlier work cannot hide it; measured for representative cases only.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from functools import cache

import editdistance
import numpy as np
import pytest

from fusekern.align import (
    ByteVocab,
    dtw,
    mined_map,
    span_align,
    span_align_batch,
    span_align_ids_batch,
    token_bytes,
)
from fusekern.align.vocab import surface_strings
from fusekern.testing.align_reference import (
    MARKERS,
    fusellm_dist_fn,
    fusellm_dtw,
    fusellm_tokens,
    levenshtein,
    rapidfuzz_mined,
    span_two_pointer,
)

RESULTS: list = []


# ---------------------------------------------------------------- setup


def _cache_dir() -> str:
    d = os.environ.get("FUSEKERN_BENCH_CACHE") or os.path.join(tempfile.gettempdir(), "fusekern_bench_cache")
    os.makedirs(d, exist_ok=True)
    return d


@cache
def tokenizer32k(kind: str):
    from transformers import AutoTokenizer

    path = os.path.join(_cache_dir(), f"{kind}_32000")
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        from fusekern.demo.toy.corpus import EXOTIC_TEXT, stdlib_code, stdlib_prose
        from fusekern.demo.toy.tokenizers import train_tokenizer

        texts = stdlib_prose() + stdlib_code(max_docs=600) + [EXOTIC_TEXT]
        train_tokenizer(kind, texts, vocab_size=32000).save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


@cache
def docs() -> tuple:
    from fusekern.demo.toy.corpus import stdlib_prose

    prose = stdlib_prose(max_docs=1000)[40:]
    return tuple("\n\n".join(prose[i * 8 : i * 8 + 8]) for i in range(100))


_PEAK_SCRIPT = r"""
import pickle
import numpy as np
from fusekern import align
from fusekern.testing.align_reference import fusellm_dtw, rapidfuzz_mined
import editdistance
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])

args = pickle.load(open({path!r}, "rb"))
before = status("VmRSS:")
{call}
print((status("VmHWM:") - before) / 1024)
"""


def fresh_peak(call: str, args) -> str:
    """Peak RSS growth (MiB) of one call in a fresh interpreter, so allocator reuse from
    earlier work cannot hide it and C++ allocations count too. ``call`` uses ``args``."""
    import pickle
    import subprocess

    with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as f:
        pickle.dump(args, f)
        path = f.name
    try:
        code = _PEAK_SCRIPT.format(path=path, call=call)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not proc.stdout.strip():
            return "n/a"
        return f"{float(proc.stdout.split()[-1]):.1f} MiB"
    finally:
        os.unlink(path)


def pedantic_min(benchmark, fn, rounds: int, warmup_rounds: int = 0) -> float:
    """Run ``fn`` through pytest-benchmark and return its fastest timed round in seconds, timed
    here: with ``--benchmark-disable`` pytest-benchmark runs it once and keeps no statistics."""
    times = []

    def run():
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)

    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
    return min(times[warmup_rounds:] or times)


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def record(name: str, ours: str, ref: str, ratio: str, mem: str = "") -> None:
    RESULTS.append((name, ours, ref, ratio, mem))


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    print("\n\n| benchmark | fusekern | reference | ratio | peak RSS growth |")
    print("|---|---|---|---|---|")
    for row in RESULTS:
        print("| " + " | ".join(row) + " |")


# ---------------------------------------------------------------- DTW

DTW_CASES = [(512, "mpt"), (2048, "mpt"), (512, "qwen2")]


@cache
def dtw_case(n: int, source: str):
    """(raw blending pieces, raw base pieces, stripped a, stripped b, byte widths a, b)."""
    got = fusellm_tokens("llama2", source, n)
    if got is None:
        pytest.skip("../shared/tokenizers is absent")
    raw_a, raw_b, wa, wb = got
    a = [t.replace(MARKERS[source], "") for t in raw_a]
    b = [t.replace(MARKERS["llama2"], "") for t in raw_b]
    return raw_a, raw_b, a, b, wa, wb


@cache
def dtw_reference(n: int, source: str):
    """Times (s) of FuseLLM's dtw with its dist_fn, with editdistance alone, and (512 only)
    with pure-Python Levenshtein; its result; its peak memory."""
    raw_a, raw_b, a, b, _, _ = dtw_case(n, source)
    repeat = 3 if n <= 512 else 1
    out = {}

    def run(key, x, y, fn):
        def call():
            out[key] = fusellm_dtw(x, y, fn)

        return best_time(call, repeat if key != "python" else 1)

    times = {
        "fusellm": run("fusellm", raw_a, raw_b, fusellm_dist_fn(MARKERS[source], MARKERS["llama2"])),
        "editdistance": run("editdistance", a, b, editdistance.eval),
    }
    if n <= 512:
        times["python"] = run("python", a, b, levenshtein)
    assert all(v == out["editdistance"] for v in out.values()), "the references disagree"
    mem = (
        fresh_peak("fusellm_dtw(args[0], args[1], editdistance.eval)", (a, b))
        if n <= 512
        else "n/a, not rerun"
    )
    return times, out["editdistance"], mem


@pytest.mark.parametrize("n,source", DTW_CASES)
@pytest.mark.parametrize("band", [None, 4, 16, 64])
def test_dtw(benchmark, n, source, band):
    _, _, a, b, wa, wb = dtw_case(n, source)
    t_ref, ref, ref_mem = dtw_reference(n, source)
    kw = {} if band is None else {"band": band, "a_widths": wa, "b_widths": wb}
    out = dtw(a, b, return_cost=True, **kw)
    exact = out == ref
    if band is None:
        assert exact, "full DTW must reproduce FuseLLM's mappings"
    t = pedantic_min(benchmark, lambda: dtw(a, b, **kw), rounds=30 if n <= 512 else 8, warmup_rounds=1)
    mem = fresh_peak("align.dtw(args[0], args[1], **args[2])", (a, b, kw)) if band is None else ""
    benchmark.extra_info.update(
        speedup_fusellm=t_ref["fusellm"] / t, speedup_editdistance=t_ref["editdistance"] / t, exact=exact
    )
    label = "full" if band is None else f"band={band}"
    case = f"llama2 vs {source}, {len(a)}x{len(b)} tokens"
    record(
        f"dtw {label}, {case}" + ("" if band is None else f" (exact: {exact})"),
        f"{t * 1e3:.2f} ms",
        f"FuseLLM dtw+dist_fn {t_ref['fusellm'] * 1e3:.0f} ms; "
        f"editdistance only {t_ref['editdistance'] * 1e3:.0f} ms",
        f"{t_ref['fusellm'] / t:.0f}x / {t_ref['editdistance'] / t:.0f}x",
        mem,
    )
    if band is None and "python" in t_ref:
        record(
            f"  (second reference) same DTW loops, pure-Python Levenshtein, {case}",
            f"{t * 1e3:.2f} ms",
            f"{t_ref['python'] * 1e3:.0f} ms (peak {ref_mem} for the editdistance one)",
            f"{t_ref['python'] / t:.0f}x",
        )


# ---------------------------------------------------------------- span_align


@cache
def span_case():
    a_tok, b_tok = tokenizer32k("byte_bpe"), tokenizer32k("sp_bpe")
    ta, tb = token_bytes(a_tok), token_bytes(b_tok)
    ea = a_tok(list(docs()), add_special_tokens=False)["input_ids"]
    eb = b_tok(list(docs()), add_special_tokens=False)["input_ids"]
    # the SentencePiece side starts with its dummy-prefix space: give the other side one too
    space = a_tok.convert_tokens_to_ids("Ġ")
    a_ids = [np.asarray([space, *x], dtype=np.int32) for x in ea]
    b_ids = [np.asarray(x, dtype=np.int32) for x in eb]
    a_seqs = [[ta[i] for i in x] for x in a_ids]
    b_seqs = [[tb[i] for i in x] for x in b_ids]
    n_tokens = sum(map(len, a_ids)) + sum(map(len, b_ids))
    return ta, tb, a_ids, b_ids, a_seqs, b_seqs, n_tokens


@cache
def span_reference_time() -> float:
    _, _, _, _, a_seqs, b_seqs, _ = span_case()
    return best_time(lambda: [span_two_pointer(x, y) for x, y in zip(a_seqs, b_seqs)], 2)


@pytest.mark.parametrize("entry", ["span_align", "span_align_batch", "span_align_ids_batch"])
def test_span(benchmark, entry):
    ta, tb, a_ids, b_ids, a_seqs, b_seqs, n_tokens = span_case()
    va, vb = ByteVocab(ta), ByteVocab(tb)
    calls = {
        "span_align": lambda: [span_align(x, y) for x, y in zip(a_seqs, b_seqs)],
        "span_align_batch": lambda: span_align_batch(a_seqs, b_seqs, threads=1),
        "span_align_ids_batch": lambda: span_align_ids_batch(a_ids, b_ids, va, vb, threads=1),
    }
    fn = calls[entry]
    out = fn()
    want = [span_two_pointer(x, y) for x, y in zip(a_seqs[:5], b_seqs[:5])]
    got = [[tuple(r) for r in np.asarray(g).tolist()] for g in out[:5]]
    assert got == want
    t = pedantic_min(benchmark, fn, rounds=10, warmup_rounds=1)
    t_ref = span_reference_time()
    rate = n_tokens / t
    benchmark.extra_info.update(tokens_per_s=rate, speedup=t_ref / t)
    record(
        f"{entry}, {n_tokens} tokens in 100 pairs, 1 thread",
        f"{rate / 1e6:.1f} M tokens/s",
        f"{n_tokens / t_ref / 1e6:.2f} M tokens/s (Python two pointers)",
        f"{t_ref / t:.0f}x",
        fresh_peak("align.span_align_batch(args[0], args[1], threads=1)", (a_seqs, b_seqs))
        if entry == "span_align_batch"
        else "",
    )


# ---------------------------------------------------------------- mined_map


@cache
def vocab_case():
    src = [s for s in surface_strings(tokenizer32k("byte_bpe")) if s]
    tgt = [s for s in surface_strings(tokenizer32k("sp_bpe")) if s]
    return src, tgt


@cache
def rapidfuzz_reference():
    src, tgt = vocab_case()
    out = None

    def run():
        nonlocal out
        out = rapidfuzz_mined(src, tgt)

    t = best_time(run, 1)
    return t, out, fresh_peak("rapidfuzz_mined(args[0], args[1])", (src, tgt))


@pytest.mark.parametrize("threads", [None, 1])
def test_mined_map(benchmark, threads):
    src, tgt = vocab_case()
    t_ref, (ref_ids, ref_dist), ref_mem = rapidfuzz_reference()
    ids, dist = mined_map(src, tgt, threads=threads, return_distance=True)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(dist, ref_dist)
    t = pedantic_min(benchmark, lambda: mined_map(src, tgt, threads=threads), rounds=3)
    benchmark.extra_info.update(speedup=t_ref / t, exact_fraction=float((dist == 0).mean()))
    record(
        f"mined_map {len(src)} -> {len(tgt)}, threads={threads or 'all'}",
        f"{t:.2f} s",
        f"{t_ref:.2f} s (rapidfuzz cdist, all workers; peak {ref_mem})",
        f"{t_ref / t:.1f}x",
        fresh_peak("align.mined_map(args[0], args[1], threads=1)", (src, tgt)) if threads == 1 else "",
    )
