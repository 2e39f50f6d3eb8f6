"""Pipeline benchmarks: align-stage throughput and on-disk storage, against FuseLLM.

Run: ``pytest benchmarks/bench_pipeline.py -s`` (prints a summary; numbers recorded in
benchmarks/RESULTS.md, sections "Pipeline: align throughput and storage against FuseLLM's
formats" and "Align throughput: a steady rate").

Setup, built once: a Llama-2-style target tokenizer (SentencePiece BPE, 8k) and two sources
(byte-level BPE 8k as GPT-NeoX/MPT, SentencePiece BPE 5k as OpenLLaMA), trained on standard-
library text; documents split to block 512 under all three. Extracts hold the sources' real
tokenisations with K = 10 synthetic top-k rows and a synthetic logsumexp (random ids and logits:
what alignment costs hardly depends on the values; the ``all`` rule's mid-token rows then keep
mostly the gold) written in the exact ``fusekern extract`` format.

- ``test_align_throughput``: ``run_align`` end to end as ``fusekern align --vocab-maps`` runs
  it after ``fusekern vocab-map`` (the README's pipeline): read the tokenizers, extracts and
  vocab maps, tokenize the target, byte alignment, top-k vocab mapping, write the aligned
  dataset; S = 2, K = 10, one worker process and one native thread; target tokens per second
  of wall time and per CPU second (= per core), against a FuseLLM-style Python alignment (its
  DTW + per-id token lookups) on a few documents of the same data. The steady rate is the
  median of ``ROUNDS`` calls after one discarded warm-up call (the first call of a process
  pays its lazy imports), each into a fresh output directory removed outside the timing; the
  best call is reported beside it. Also timed: the same call without ``vocab_maps`` (align
  builds both maps itself: a fixed cost per call).
- ``test_align_throughput_positions``: the three ``positions`` rules in the same run (prebuilt
  maps), alternating, medians of ``ROUNDS`` calls each.
- ``test_storage``: bytes per token per source on disk, ours (extract shards; the packed
  training set) vs FuseLLM's formats measured by writing them with ``datasets`` the way its
  scripts do (extract: per-step top-k as torch tensors padded to the block, so int64 ids and
  fp16 logits; aligned: Python lists, so int64 ids and float64 logits).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import statistics
import time
import tracemalloc

import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch

from fusekern.demo.toy import corpus, tokenizers
from fusekern.pipeline import run_align, run_pack, run_vocab_map, split_texts
from fusekern.pipeline.extract import ExtractRow, _record_batch, extract_features, shard_name
from fusekern.pipeline.formats import EXTRACT_FORMAT, POSITIONS
from fusekern.pipeline.io import encode, text_hashes
from fusekern.testing.align_reference import (  # FuseLLM's DTW, shared with the tests
    fusellm_dist_fn,
    fusellm_dtw,
)

K = 10
BLOCK = 512
SOURCES = {"s_bbpe": ("byte_bpe", 8000), "s_sp": ("sp_bpe", 5000)}
TARGET = ("sp_bpe", 8000)
N_REF_DOCS = 3
ROUNDS = 5  # timed align calls per configuration: the median is the steady rate


def _dir_bytes(path: str, pattern: str = "**/*.arrow") -> int:
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(path, pattern), recursive=True))


def _write_synthetic_extract(path: str, tok, texts: list, seed: int) -> int:
    """An extract directory in the exact `fusekern extract` layout; returns its token count."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(path, shard_name(0, 1)))
    tok.save_pretrained(os.path.join(path, "tokenizer"))
    schema = extract_features(K).arrow_schema
    eos = tok.eos_token_id
    hashes = text_hashes(texts)
    n_tokens = 0
    with pa.OSFile(os.path.join(path, shard_name(0, 1), "data.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, schema) as writer:
            for w0 in range(0, len(texts), 256):
                rows = []
                for j, ids in enumerate(encode(tok, texts[w0 : w0 + 256])):
                    ids = np.asarray(ids + [eos], dtype=np.int32)
                    n = len(ids)
                    top = rng.integers(0, len(tok), size=(n, K)).astype(np.int32)
                    logits = np.sort(rng.normal(size=(n, K)), axis=1)[:, ::-1].astype(np.float16)
                    ce = rng.gamma(2.0, 1.0, size=n).astype(np.float32)
                    ce[-1] = 0
                    lse = (logits[:, 0] + rng.gamma(1.0, 1.0, size=n)).astype(np.float32)
                    doc = ExtractRow(
                        w0 + j, int(hashes[w0 + j]), ids, top, logits, ce, float(ce[:-1].mean()), lse
                    )
                    rows.append(doc)
                    n_tokens += n
                writer.write_batch(_record_batch(schema, K, rows))
    with open(os.path.join(path, shard_name(0, 1), "shard.json"), "w") as f:
        json.dump({"shard": 0}, f)
    meta = {
        "format": EXTRACT_FORMAT,
        "num_docs": len(texts),
        "num_shards": 1,
        "top_k": K,
        "vocab_size": len(tok),
        "tokenizer_size": len(tok),
        "eos_token_id": eos,
        "model": "synthetic",
    }
    with open(os.path.join(path, "extract_meta.json"), "w") as f:
        json.dump(meta, f)
    return n_tokens


def build_setup(root) -> dict:
    """The benchmark's data under ``root`` (a ``pathlib.Path``): tokenizers, split documents,
    synthetic extracts and prebuilt vocab maps (also used by ``align_ab.py``)."""
    prose, code = corpus.stdlib_prose(2000), corpus.stdlib_code(150)
    train = prose[:1500] + code[:100]
    toks = {"target": tokenizers.train_tokenizer(TARGET[0], train, vocab_size=TARGET[1])}
    for name, (kind, size) in SOURCES.items():
        toks[name] = tokenizers.train_tokenizer(kind, train, vocab_size=size)
    docs = split_texts(prose[1500:] + code[100:150], list(toks.values()), BLOCK)
    data = str(root / "data")
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(data)
    extracts, src_tokens = {}, {}
    for i, name in enumerate(SOURCES):
        extracts[name] = str(root / name)
        src_tokens[name] = _write_synthetic_extract(extracts[name], toks[name], docs, seed=i)
    target_path = str(root / "target_tok")
    toks["target"].save_pretrained(target_path)
    maps = {n: run_vocab_map(toks[n], toks["target"], str(root / f"{n}.npz")) for n in SOURCES}
    return {
        "maps": maps,
        "root": root,
        "toks": toks,
        "docs": docs,
        "data": data,
        "extracts": extracts,
        "src_tokens": src_tokens,
        "target": target_path,
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return build_setup(tmp_path_factory.mktemp("bench_pipeline"))


# ------------------------------------------------------------------ FuseLLM-style reference


def _fusellm_align_doc(base_tok, blend_tok, base_ids, blend_ids, blend_top_ids, blend_top_logits, mapping):
    """FuseLLM's per-document teacher alignment ("soft" vocab mode): its DTW with its dist_fn
    (each side's marker removed, editdistance per cell) on the raw token strings, then per base
    position a Python loop over the K ids with
    convert_ids_to_tokens, the mapping dict and the base vocab dict."""
    base_tokens = base_tok.convert_ids_to_tokens(base_ids)
    blend_tokens = blend_tok.convert_ids_to_tokens(blend_ids)
    base_vocab = base_tok.get_vocab()
    dist = fusellm_dist_fn(_marker(blend_tok), _marker(base_tok))
    base_to_blend = fusellm_dtw(blend_tokens, base_tokens, dist)[1]
    out_ids, out_logits = [], []
    for i, js in enumerate(base_to_blend):
        ids, logits = [], []
        if len(js) == 1 and mapping.get(blend_tokens[js[0]]) == base_tokens[i]:
            for logit, idx in zip(blend_top_logits[js[0]], blend_top_ids[js[0]]):
                t = mapping.get(blend_tok.convert_ids_to_tokens([int(idx)])[0])
                if t in base_vocab and base_vocab[t] not in ids:
                    ids.append(base_vocab[t])
                    logits.append(float(logit))
        else:
            ids, logits = [base_vocab[base_tokens[i]]], [1.0]
        out_ids.append(ids)
        out_logits.append(logits)
    return out_ids, out_logits


def _marker(tok) -> str:
    """FuseLLM's TOKENIZER_TO_SPECIAL_TOKEN: 'Ġ' for byte-level BPE, '▁' for SentencePiece."""
    return "Ġ" if "Ġ" in "".join(tok.convert_ids_to_tokens(list(range(min(len(tok), 2000))))) else "▁"


def _align(s: dict, out: str, *, prebuilt_maps: bool = True, **kw) -> None:
    """One align stage of the benchmarks: both sources, 1 process, 1 thread, the vocab maps
    from files (``prebuilt_maps``) or built in the call; replaces an earlier output in ``out``."""
    names = list(SOURCES)
    paths = [s["extracts"][n] for n in names]
    maps = [s["maps"][n] for n in names] if prebuilt_maps else None
    run_align(
        s["target"], s["data"], paths, out, source_names=names, vocab_maps=maps, num_proc=1, threads=1,
        overwrite=True, **kw,
    )  # fmt: skip


def _timed_align(s: dict, out: str, **kw) -> tuple:
    """(CPU seconds of this process, wall seconds) of one ``_align`` into a fresh ``out``, which
    is then removed (outside the timing: deleting 50 MB is not the align stage's work)."""
    shutil.rmtree(out, ignore_errors=True)
    c0, w0 = time.process_time(), time.perf_counter()
    _align(s, out, **kw)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0  # CPU: all threads of the process
    return cpu, wall


def test_align_throughput(benchmark, setup):
    from fusekern.pipeline import build_vocab_map, load_extract

    s = setup
    names = list(SOURCES)
    out = str(s["root"] / "aligned")
    cpu, wall, peak = [], [], []
    _align(s, out)  # warm-up, not timed: the process's lazy imports

    def run():
        c, w = _timed_align(s, out)
        cpu.append(c)
        wall.append(w)

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    cpu_built = [_timed_align(s, out, prebuilt_maps=False)[0] for _ in range(3)]  # no --vocab-maps
    tracemalloc.start()  # a separate run: tracing slows Python allocations several-fold
    _align(s, out)
    peak.append(tracemalloc.get_traced_memory()[1])
    tracemalloc.stop()
    meta = json.load(open(os.path.join(out, "align_meta.json")))
    n_tgt = meta["num_tokens"]

    # FuseLLM-style reference on a few documents of the same data (its cost is ~O(n·m) per doc).
    tgt_tok = s["toks"]["target"]
    ref_tokens, ref_seconds = 0, 0.0
    for n in names:
        src_tok = s["toks"][n]
        vmap = build_vocab_map(src_tok, tgt_tok)
        src_strings = src_tok.convert_ids_to_tokens(list(range(len(src_tok))))
        tgt_strings = tgt_tok.convert_ids_to_tokens(list(range(len(tgt_tok))))
        mapping = {src_strings[i]: tgt_strings[t] for i, t in enumerate(vmap.ids.tolist()) if t >= 0}
        ext = load_extract(s["extracts"][n])[0].with_format("numpy")
        for d in range(N_REF_DOCS):
            row = ext[d]
            base_ids = tgt_tok(s["docs"][d], add_special_tokens=False)["input_ids"] + [tgt_tok.eos_token_id]
            t0 = time.process_time()
            _fusellm_align_doc(
                tgt_tok,
                src_tok,
                base_ids,
                row["input_ids"].tolist(),
                row["topk_ids"],
                row["topk_logits"],
                mapping,
            )
            ref_seconds += time.process_time() - t0
            ref_tokens += len(base_ids)
    ours_cpu = n_tgt / statistics.median(cpu)
    ref_rate = ref_tokens / len(names) / ref_seconds  # target tokens/s with both sources, like ours
    info = {
        "target_tokens": n_tgt,
        "docs": meta["num_docs"],
        "aligned_fraction": meta["aligned_fraction"],
        "rounds": ROUNDS,
        "tokens_per_s_wall_median": round(n_tgt / statistics.median(wall)),
        "tokens_per_cpu_s_median": round(ours_cpu),
        "tokens_per_cpu_s_best": round(n_tgt / min(cpu)),
        "tokens_per_cpu_s_worst": round(n_tgt / max(cpu)),
        "tokens_per_cpu_s_maps_built_in_call_median": round(n_tgt / statistics.median(cpu_built)),
        "fusellm_ref_tokens_per_cpu_s": round(ref_rate),
        "ratio_vs_fusellm": round(ours_cpu / ref_rate, 1),
        "peak_traced_mb": round(max(peak) / 2**20, 1),
    }
    benchmark.extra_info.update(info)
    print(f"\nalign throughput (S=2, K=10, block 512, 1 process, 1 thread, prebuilt maps, {ROUNDS} calls):")
    print(json.dumps(info, indent=1))


def test_align_throughput_fusellm_mode(benchmark, setup):
    s = setup
    out = str(s["root"] / "aligned_fusellm")
    cpu = []
    _align(s, out, mode="fusellm")  # warm-up, not timed

    def run():
        cpu.append(_timed_align(s, out, mode="fusellm")[0])

    benchmark.pedantic(run, rounds=3, iterations=1)
    meta = json.load(open(os.path.join(out, "align_meta.json")))
    info = {
        "target_tokens": meta["num_tokens"],
        "tokens_per_cpu_s_median": round(meta["num_tokens"] / statistics.median(cpu)),
        "aligned_fraction": meta["aligned_fraction"],
    }
    benchmark.extra_info.update(info)
    print("\nalign throughput, mode=fusellm (full DTW):", json.dumps(info, indent=1))


def test_align_throughput_positions(benchmark, setup):
    """The positions rules in the same run: same data, S = 2, K = 10, 1 process, 1 thread,
    prebuilt vocab maps; medians of ``ROUNDS`` alternating calls each."""
    s = setup
    cpu: dict = {p: [] for p in POSITIONS}
    metas = {}

    def one(positions):
        out = str(s["root"] / f"aligned_{positions}")
        cpu[positions].append(_timed_align(s, out, positions=positions)[0])
        metas[positions] = json.load(open(os.path.join(out, "align_meta.json")))

    _align(s, str(s["root"] / "aligned_warm"), positions="all")  # warm-up, not timed
    benchmark.pedantic(lambda: [one(p) for p in POSITIONS], rounds=ROUNDS, iterations=1)
    n_tgt = metas["span"]["num_tokens"]
    info = {"target_tokens": n_tgt, "one_to_one": metas["span"]["one_to_one_fraction"]}
    for p in POSITIONS:
        info[f"tokens_per_cpu_s_median_{p}"] = round(n_tgt / statistics.median(cpu[p]))
        info[f"tokens_per_cpu_s_best_{p}"] = round(n_tgt / min(cpu[p]))
        info[f"{p}_over_span_time"] = round(statistics.median(cpu[p]) / statistics.median(cpu["span"]), 3)
        info[f"taught_{p}"] = metas[p]["aligned_fraction"]
    info["mid_token_all"] = metas["all"]["mid_token_fraction"]
    benchmark.extra_info.update(info)
    print("\nalign throughput by positions rule:", json.dumps(info, indent=1))


def test_storage(benchmark, setup):
    s = setup
    names = list(SOURCES)
    aligned = str(s["root"] / "aligned_storage")
    run_align(s["target"], s["data"], [s["extracts"][n] for n in names], aligned, source_names=names)
    packed = str(s["root"] / "packed")
    benchmark.pedantic(lambda: run_pack(aligned, packed, block_size=BLOCK), rounds=1, iterations=1)

    n_src = s["src_tokens"][names[0]]
    ours_extract = _dir_bytes(s["extracts"][names[0]]) / n_src

    # FuseLLM's extract output for the same tokens: its forward_for_logits returns torch tensors
    # padded to the block (per_step_logits fp16, per_step_indices int64) next to the tokenized
    # columns, and keeps the text; datasets stores what it is given.
    from fusekern.pipeline import load_extract

    ext = load_extract(s["extracts"][names[0]])[0]
    texts = s["docs"]

    def fusellm_forward(batch, idx):
        b = len(idx)
        ids = torch.zeros((b, BLOCK), dtype=torch.long)
        mask = torch.zeros((b, BLOCK), dtype=torch.long)
        labels = torch.full((b, BLOCK), -100, dtype=torch.long)
        top_i = torch.zeros((b, BLOCK, K), dtype=torch.long)
        top_v = torch.zeros((b, BLOCK, K), dtype=torch.float16)
        for r, d in enumerate(idx):
            row = ext[d]
            n = len(row["input_ids"])
            ids[r, :n] = torch.tensor(row["input_ids"])
            mask[r, :n] = 1
            labels[r, :n] = ids[r, :n]
            top_i[r, :n] = torch.tensor(row["topk_ids"])
            top_v[r, :n] = torch.tensor(np.asarray(row["topk_logits"], dtype=np.float16))
        return {
            "text": batch["text"],
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "per_step_logits": top_v,
            "per_step_indices": top_i,
            "metric_ce": torch.tensor(np.asarray(ext[list(idx)]["doc_ce"]), dtype=torch.float16),
        }

    fl_dir = str(s["root"] / "fusellm_extract")
    fl = datasets.Dataset.from_dict({"text": texts}).map(
        fusellm_forward, batched=True, batch_size=64, with_indices=True
    )
    fl.save_to_disk(fl_dir)
    fl_types = {f.name: str(f.type) for f in fl.data.schema}
    fl_total = _dir_bytes(fl_dir) / n_src
    table = fl.data.table
    topk_cols = sum(table.column(c).nbytes for c in ("per_step_logits", "per_step_indices")) / n_src
    ours_topk = sum(ext.data.table.column(c).nbytes for c in ("topk_ids", "topk_logits")) / n_src

    # FuseLLM's aligned (and then packed) training data: Python lists -> int64 ids, float64 logits.
    al = datasets.load_from_disk(aligned).with_format("numpy")
    n_tgt = sum(len(x) for x in al["input_ids"])
    lists_ids, lists_logits = [], []
    for d in range(len(al)):
        t_ids, t_log = al[d]["teacher_ids"][:, 0], al[d]["teacher_logits"][:, 0]
        lists_ids.append([[int(v) for v in row if v >= 0] for row in t_ids])
        lists_logits.append([[float(v) for v, i in zip(lr, row) if i >= 0] for lr, row in zip(t_log, t_ids)])
    fl_al = datasets.Dataset.from_dict(
        {"per_step_aligned_indices_0": lists_ids, "per_step_aligned_logits_0": lists_logits}
    )
    fl_al_dir = str(s["root"] / "fusellm_aligned")
    fl_al.save_to_disk(fl_al_dir)
    fl_al_types = {f.name: str(f.type) for f in fl_al.data.schema}
    fl_aligned = _dir_bytes(fl_al_dir) / n_tgt

    pk = datasets.load_from_disk(packed).data.table
    per_source_cols = ("teacher_ids", "teacher_logits", "source_ce", "source_ce_doc")
    ours_packed = sum(pk.column(c).nbytes for c in per_source_cols) / n_tgt / len(names)
    ours_packed_total = _dir_bytes(packed) / n_tgt

    info = {
        "source_tokens": n_src,
        "padding_factor_fusellm": round(len(texts) * BLOCK / n_src, 2),
        "ours_extract_B_per_token": round(ours_extract, 1),
        "fusellm_extract_B_per_token": round(fl_total, 1),
        "extract_ratio": round(ours_extract / fl_total, 3),
        "ours_topk_payload_B_per_token": round(ours_topk, 1),
        "fusellm_topk_payload_B_per_token": round(topk_cols, 1),
        "topk_payload_ratio": round(ours_topk / topk_cols, 3),
        "fusellm_extract_types": {k: fl_types[k] for k in ("per_step_logits", "per_step_indices")},
        "ours_packed_B_per_token_per_source": round(ours_packed, 1),
        "ours_packed_B_per_token_total_S2": round(ours_packed_total, 1),
        "fusellm_aligned_B_per_token_per_source": round(fl_aligned, 1),
        "aligned_ratio": round(ours_packed / fl_aligned, 3),
        "fusellm_aligned_types": fl_al_types,
    }
    benchmark.extra_info.update(info)
    print("\nstorage:", json.dumps(info, indent=1))
