"""pack: the trainer's schema exactly, blocks never mix documents (or say so with position ids),
nothing lost or duplicated, FusionLoss consumes a batch."""

from __future__ import annotations

import json
import os

import datasets
import numpy as np
import pytest
import torch
from pipeline_helpers import TARGET, TOP_K

from fusekern.pipeline import formats, load_extract, load_packed, run_pack

S = 3  # sources in the `aligned` fixture

pytest_plugins = ["pipeline_fixtures"]  # shared, session-cached fixtures


def _aligned_rows(aligned_dir):
    return datasets.load_from_disk(aligned_dir).with_format("numpy")


def test_schema_is_exactly_the_trainer_contract(aligned, tmp_path):
    names, dirs = aligned
    out = run_pack(dirs["bytes"], str(tmp_path / "packed"), block_size=40)
    ds, meta = load_packed(out)
    types = {f.name: str(f.type) for f in ds.data.schema}
    tsk = "list<item: fixed_size_list<item: fixed_size_list<item: {}>[" + f"{TOP_K}]>[{S}]>"
    assert types == {
        "input_ids": "list<item: int32>",
        "labels": "list<item: int32>",
        "teacher_ids": tsk.format("int32"),
        "teacher_logits": tsk.format("halffloat"),
        "source_ce": f"list<item: fixed_size_list<item: float>[{S}]>",
        "source_ce_doc": f"list<item: fixed_size_list<item: float>[{S}]>",
    }
    on_disk = json.load(open(os.path.join(out, "fusion_meta.json")))
    assert on_disk == meta
    assert meta["sources"] == names and meta["top_k"] == TOP_K and meta["block_size"] == 40
    assert meta["mode"] == "bytes" and meta["packing"] == "document"
    assert meta["target"].endswith(TARGET) and meta["num_tokens"] >= sum(map(len, ds["input_ids"]))


@pytest.mark.parametrize("block", [40, 128])
def test_one_document_per_block_loses_and_duplicates_nothing(aligned, tmp_path, block):
    _, dirs = aligned
    al = _aligned_rows(dirs["bytes"])
    ds, meta = load_packed(run_pack(dirs["bytes"], str(tmp_path / f"p{block}"), block_size=block))
    rows = ds.with_format("numpy")
    assert meta["num_docs"] == len(al) and meta["num_blocks"] == len(ds)
    b = 0
    cut = 0
    for d in range(len(al)):
        a = al[d]
        n = len(a["input_ids"])
        pieces = []
        while True:  # blocks of this document, overlapping by one token
            r = rows[b]
            b += 1
            assert len(r["input_ids"]) <= block
            np.testing.assert_array_equal(r["labels"], r["input_ids"])
            np.testing.assert_array_equal(
                r["source_ce_doc"], np.broadcast_to(a["source_ce_doc"], (len(r["input_ids"]), S))
            )
            pieces.append(r)
            if sum(len(p["input_ids"]) for p in pieces) - (len(pieces) - 1) >= n:
                break
        cut += len(pieces) > 1
        for key in ("input_ids", "teacher_ids", "teacher_logits", "source_ce"):
            # Re-join: drop each continuation block's first token (the previous block's last).
            joined = np.concatenate([pieces[0][key]] + [p[key][1:] for p in pieces[1:]])
            np.testing.assert_array_equal(joined, a[key])
            # Every prediction made once: the positions whose label is inside the block.
            preds = sum(len(p["input_ids"]) - 1 for p in pieces)
            assert preds == n - 1
    assert b == len(ds) and cut == meta["docs_cut"]
    assert (cut > 0) == (block == 40)
    again, _ = load_packed(
        run_pack(dirs["bytes"], str(tmp_path / f"again{block}"), block_size=block, batch_size=5)
    )
    assert again.data.table.equals(ds.data.table)  # deterministic, whatever the batching


def test_packing_documents_restarts_positions_and_masks_first_tokens(aligned, tmp_path):
    _, dirs = aligned
    al = _aligned_rows(dirs["bytes"])
    out = run_pack(dirs["bytes"], str(tmp_path / "concat"), block_size=128, pack_documents=True)
    ds, meta = load_packed(out)
    assert meta["packing"] == "concat" and "position_ids" in ds.column_names
    assert str(ds.data.schema.field("position_ids").type) == "list<item: int32>"
    rows = ds.with_format("numpy")
    assert len(ds) < len(al)  # several documents share blocks
    flat_in = np.concatenate([al[d]["input_ids"] for d in range(len(al))])
    flat_t = np.concatenate([al[d]["teacher_ids"] for d in range(len(al))])
    flat_out = np.concatenate([rows[i]["input_ids"] for i in range(len(ds))])
    np.testing.assert_array_equal(flat_out, flat_in)  # docs fit the block here: nothing cut
    np.testing.assert_array_equal(np.concatenate([rows[i]["teacher_ids"] for i in range(len(ds))]), flat_t)
    starts = np.concatenate([[0], np.cumsum([len(al[d]["input_ids"]) for d in range(len(al))])[:-1]])
    pos = np.concatenate([rows[i]["position_ids"] for i in range(len(ds))])
    labels = np.concatenate([rows[i]["labels"] for i in range(len(ds))])
    assert set(np.flatnonzero(pos == 0)) == set(starts)
    assert set(np.flatnonzero(labels == -100)) == set(starts)
    for i in range(len(ds)):
        assert len(rows[i]["input_ids"]) <= 128 and rows[i]["position_ids"][0] == 0


def test_bad_inputs(aligned, tmp_path):
    _, dirs = aligned
    with pytest.raises(ValueError, match="block_size"):
        run_pack(dirs["bytes"], str(tmp_path / "x"), block_size=1)
    with pytest.raises(FileNotFoundError, match="not an aligned dataset"):
        run_pack(str(tmp_path), str(tmp_path / "y"), block_size=64)
    with pytest.raises(FileNotFoundError, match="not a packed fusion dataset"):
        load_packed(str(tmp_path))
    (tmp_path / "meta.json").write_text(json.dumps({"sources": []}))
    with pytest.raises(ValueError, match="'sources' must be a non-empty list"):
        formats.load_fusion_meta(str(tmp_path / "meta.json"))


def test_stage_outputs_follow_the_format_contract(aligned, extracts):
    """What extract and align write is what fusekern.pipeline.formats names (pack and the trainer
    read those directories by these names)."""
    _, dirs = aligned
    for rule, path in dirs.items():
        meta = json.load(open(os.path.join(path, formats.ALIGN_META_FILE)))
        assert meta["format"] == formats.ALIGNED_FORMAT, rule
        assert meta["mode"] in formats.MODES and meta["positions"] in formats.POSITIONS, rule
        assert tuple(datasets.load_from_disk(path).column_names) == formats.ALIGNED_COLUMNS, rule
    for name, path in extracts.items():
        ds, meta = load_extract(path)
        assert meta["format"] == formats.EXTRACT_FORMAT, name
        assert tuple(ds.column_names) == formats.EXTRACT_COLUMNS, name
        assert os.path.isdir(os.path.join(path, formats.EXTRACT_TOKENIZER_DIR)), name
        shards = [d for d in os.listdir(path) if d.startswith("shard-")]
        assert shards, name
        for shard in shards:
            files = sorted(os.listdir(os.path.join(path, shard)))
            assert files == sorted([formats.SHARD_DATA_FILE, formats.SHARD_META_FILE]), (name, shard)


def test_fusion_loss_consumes_a_packed_batch(aligned, tiny_lms, tmp_path):
    """The packed columns go straight into FusionLoss (right-padded like a collator would)."""
    from fusekern import FusionLoss

    _, dirs = aligned
    ds, _ = load_packed(run_pack(dirs["bytes"], str(tmp_path / "p"), block_size=64))
    rows = [ds.with_format("numpy")[i] for i in range(4)]
    t = max(len(r["input_ids"]) for r in rows)

    def pad(key, fill, dtype):
        out = np.full((len(rows), t, *rows[0][key].shape[1:]), fill, dtype=dtype)
        for i, r in enumerate(rows):
            out[i, : len(r[key])] = r[key]
        return torch.from_numpy(out)

    input_ids = pad("input_ids", 0, np.int64)
    labels = pad("labels", -100, np.int64)
    model = tiny_lms[TARGET].model
    logits = model(input_ids).logits.float()
    loss_fn = FusionLoss(lm_weight=0.5, backend="torch")
    loss = loss_fn(
        logits,
        labels,
        pad("teacher_ids", -1, np.int64),
        pad("teacher_logits", 0, np.float32),
        pad("source_ce", 0, np.float32),
    )
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(model.get_output_embeddings().weight.grad).all()
    model.zero_grad(set_to_none=True)
