"""FusionDataCollator and FusionArguments: padding, source selection, CE level, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from trainer_helpers import packed_dataset, packed_rows

from fusekern import FusionArguments, FusionDataCollator


def test_pads_sparse_teacher_to_batch():
    rows = packed_rows(5, ragged=True, vocab=50, block=12, sources=3, top_k=4, seed=1)
    batch = FusionDataCollator(pad_token_id=7)(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    L = max(lengths)
    assert batch["input_ids"].shape == (5, L) and batch["input_ids"].dtype == torch.int64
    assert batch["teacher_ids"].shape == (5, L, 3, 4) and batch["teacher_ids"].dtype == torch.int64
    assert batch["teacher_logits"].shape == (5, L, 3, 4) and batch["teacher_logits"].dtype == torch.float32
    assert batch["source_ce"].shape == (5, L, 3) and batch["source_ce"].dtype == torch.float32
    assert "position_ids" not in batch
    for b, (r, n) in enumerate(zip(rows, lengths)):
        assert batch["input_ids"][b, :n].tolist() == r["input_ids"].tolist()
        assert (batch["input_ids"][b, n:] == 7).all()
        assert batch["attention_mask"][b].tolist() == [1] * n + [0] * (L - n)
        assert batch["labels"][b, :n].tolist() == r["labels"].tolist()
        assert (batch["labels"][b, n:] == -100).all()
        np.testing.assert_array_equal(batch["teacher_ids"][b, :n].numpy(), r["teacher_ids"])
        assert (batch["teacher_ids"][b, n:] == -1).all()
        np.testing.assert_array_equal(
            batch["teacher_logits"][b, :n].numpy(), r["teacher_logits"].astype(np.float32)
        )
        np.testing.assert_array_equal(batch["source_ce"][b, :n].numpy(), r["source_ce"])
    # sparse: nothing of vocabulary size is ever built
    assert all(50 not in t.shape for t in batch.values())


def test_selects_sources_by_name_and_ce_level():
    rows = packed_rows(3, sources=3, top_k=2, seed=2)
    meta = {"sources": ["a", "tgt", "c"], "target": "tgt"}
    coll = FusionDataCollator.from_meta(meta, FusionArguments(fusion_sources=["c", "a"], ce_level="sequence"))
    assert coll.source_indices == [0, 2]  # data order, not the order asked for
    batch = coll(rows)
    np.testing.assert_array_equal(batch["teacher_ids"][1].numpy(), rows[1]["teacher_ids"][:, [0, 2]])
    np.testing.assert_array_equal(batch["source_ce"][2].numpy(), rows[2]["source_ce_doc"][:, [0, 2]])
    # the target's own distribution: dropped, kept, or required
    assert FusionDataCollator.from_meta(meta, FusionArguments(target_as_source=False)).source_indices == [
        0,
        2,
    ]
    assert FusionDataCollator.from_meta(meta, FusionArguments()).source_indices == [0, 1, 2]
    args = FusionArguments(fusion_sources=["a"], target_as_source=True)
    assert FusionDataCollator.from_meta(meta, args).source_indices == [0, 1]
    with pytest.raises(ValueError, match="target_as_source"):
        FusionArguments(target_as_source=True).select_sources(["a", "c"], "tgt")
    with pytest.raises(ValueError, match="fusion_sources"):
        FusionArguments(fusion_sources=["zzz"]).select_sources(["a", "c"], "tgt")
    # an extract directory named like the target's Hub name / path is the target's own distribution
    hub = FusionArguments(target_as_source=False)
    assert hub.select_sources(["open_llama", "Llama-2-7b-hf", "mpt"], "meta-llama/Llama-2-7b-hf") == [0, 2]
    assert hub.select_sources(["a", "tgt"], "/data/models/tgt/") == [0]
    assert hub.select_sources(["a", "tgt2"], "/data/models/tgt") == [0, 1]
    with pytest.raises(ValueError, match="no source left"):
        FusionArguments(fusion_sources=["tgt"], target_as_source=False).select_sources(["a", "tgt"], "tgt")


def test_position_ids_and_plain_lm_rows():
    rows = packed_rows(2, ragged=True, block=10, position_ids=True, seed=3)
    batch = FusionDataCollator()(rows)
    n0 = len(rows[0]["input_ids"])
    assert batch["position_ids"][0, :n0].tolist() == rows[0]["position_ids"].tolist()
    plain = [{"input_ids": [5, 6, 7]}, {"input_ids": [1, 2]}]
    batch = FusionDataCollator(pad_token_id=0)(plain)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["labels"].tolist() == [[5, 6, 7], [1, 2, -100]]


def test_accepts_dataset_rows_lists_and_tensors():
    ds = packed_dataset(4, ragged=True, seed=4)
    from_numpy = FusionDataCollator()([ds.with_format("numpy")[i] for i in range(4)])
    from_lists = FusionDataCollator()([ds[i] for i in range(4)])
    from_torch = FusionDataCollator()([ds.with_format("torch")[i] for i in range(4)])
    for key in from_numpy:
        assert torch.equal(from_numpy[key], from_lists[key]), key
        assert torch.equal(from_numpy[key], from_torch[key]), key


def test_pad_to_multiple_of():
    rows = packed_rows(2, block=10)
    assert FusionDataCollator(pad_to_multiple_of=8)(rows)["teacher_ids"].shape[1] == 16


def test_bad_input_names_the_problem():
    rows = packed_rows(2, sources=2, seed=5)
    with pytest.raises(ValueError, match="source_indices"):
        FusionDataCollator(source_indices=[0, 5])(rows)
    bad = [dict(rows[0]), rows[1]]
    bad[0]["teacher_logits"] = bad[0]["teacher_logits"][:, :, :2]
    with pytest.raises(ValueError, match="teacher_logits"):
        FusionDataCollator()(bad)
    bad = [dict(rows[0]), rows[1]]
    bad[0]["source_ce"] = bad[0]["source_ce"][:-1]
    with pytest.raises(ValueError, match="source_ce"):
        FusionDataCollator()(bad)
    no_doc = [{k: v for k, v in r.items() if k != "source_ce_doc"} for r in rows]
    with pytest.raises(ValueError, match="source_ce_doc"):
        FusionDataCollator(ce_level="sequence")(no_doc)
    with pytest.raises(ValueError, match="some features"):
        FusionDataCollator()([rows[0], {"input_ids": [1, 2]}])
    bad = [dict(rows[0])]
    bad[0]["labels"] = bad[0]["labels"][:-1]
    with pytest.raises(ValueError, match="labels"):
        FusionDataCollator()(bad)
    with pytest.raises(ValueError, match="ce_level"):
        FusionDataCollator(ce_level="doc")
    with pytest.raises(TypeError, match="pad_token_id"):
        FusionDataCollator(pad_token_id=None)
    with pytest.raises(ValueError, match="features is empty"):
        FusionDataCollator()([])


def test_fusion_arguments_validate_and_schedule():
    with pytest.raises(ValueError, match="lm_weight"):
        FusionArguments(lm_weight=1.5)
    with pytest.raises(ValueError, match="fusion_method"):
        FusionArguments(fusion_method="max")
    with pytest.raises(ValueError, match="teacher_temperature"):
        FusionArguments(teacher_temperature=0)
    with pytest.raises(ValueError, match="weight_schedule"):
        FusionArguments(weight_schedule="cosine")
    with pytest.raises(ValueError, match="duplicates"):
        FusionArguments(fusion_sources=["a", "a"])
    assert FusionArguments(fusion_sources="a,b").fusion_sources == ["a", "b"]
    const = FusionArguments(lm_weight=0.7)
    assert const.lm_weight_at(0.0) == const.lm_weight_at(0.9) == 0.7
    decay = FusionArguments(lm_weight=0.6, weight_schedule="linear_decay")
    # the fusion weight 1 - λ falls linearly from 0.4 to 0
    for progress, fusion_weight in [(0.0, 0.4), (0.25, 0.3), (0.5, 0.2), (1.0, 0.0), (2.0, 0.0)]:
        assert 1 - decay.lm_weight_at(progress) == pytest.approx(fusion_weight)
