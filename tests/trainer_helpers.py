"""Synthetic packed fusion data (the schema `fusekern pack` writes) for the trainer tests."""

from __future__ import annotations

import json
import os

import numpy as np


def packed_rows(
    n: int,
    *,
    vocab: int = 64,
    block: int = 16,
    sources: int = 2,
    top_k: int = 4,
    seed: int = 0,
    ragged: bool = False,
    position_ids: bool = False,
) -> list:
    """``n`` blocks with random tokens and a random sparse teacher (some padding entries)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        t = int(rng.integers(block // 2, block + 1)) if ragged else block
        ids = rng.integers(0, vocab, size=t).astype(np.int32)
        labels = ids.copy()
        if ragged and t > 2:
            labels[0] = -100
        tid = rng.integers(0, vocab, size=(t, sources, top_k)).astype(np.int32)
        tid[rng.random((t, sources, top_k)) < 0.15] = -1
        row = {
            "input_ids": ids,
            "labels": labels,
            "teacher_ids": tid,
            "teacher_logits": (rng.standard_normal((t, sources, top_k)) * 3).astype(np.float16),
            "source_ce": rng.uniform(0.5, 5.0, size=(t, sources)).astype(np.float32),
            "source_ce_doc": np.repeat(rng.uniform(1.0, 4.0, size=(1, sources)), t, 0).astype(np.float32),
        }
        if position_ids:
            cut = t // 2
            row["position_ids"] = np.concatenate([np.arange(cut), np.arange(t - cut)]).astype(np.int32)
        rows.append(row)
    return rows


def packed_dataset(n: int, **kwargs):
    import datasets

    List = getattr(datasets, "List", None) or datasets.Sequence
    rows = packed_rows(n, **kwargs)
    cols = {k: [r[k].tolist() for r in rows] for k in rows[0]}
    features = {
        "input_ids": List(datasets.Value("int32")),
        "labels": List(datasets.Value("int32")),
        "teacher_ids": List(List(List(datasets.Value("int32")))),
        "teacher_logits": List(List(List(datasets.Value("float16")))),
        "source_ce": List(List(datasets.Value("float32"))),
        "source_ce_doc": List(List(datasets.Value("float32"))),
    }
    if "position_ids" in cols:
        features["position_ids"] = List(datasets.Value("int32"))
    return datasets.Dataset.from_dict(cols, features=datasets.Features(features))


def save_packed(path: str, n: int, names=("src_a", "src_b"), target: str = "tgt", **kwargs) -> str:
    ds = packed_dataset(n, sources=len(names), **kwargs)
    ds.save_to_disk(path)
    meta = {
        "sources": list(names),
        "target": target,
        "top_k": kwargs.get("top_k", 4),
        "block_size": kwargs.get("block", 16),
        "mode": "bytes",
    }
    with open(os.path.join(path, "fusion_meta.json"), "w") as f:
        json.dump(meta, f)
    return path


def tiny_lm(vocab: int = 64, seed: int = 0, arch: str = "llama"):
    from fusekern.demo.toy.models import tiny_causal_lm

    return tiny_causal_lm(arch, vocab, hidden=16, layers=1, heads=2, max_positions=64, seed=seed)
