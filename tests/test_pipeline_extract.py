"""extract: top-k and CE equal a direct forward, vocab size from the logits, sharding,
determinism, bad inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pipeline_helpers import MODELS, TOP_K, assert_valid_topk, direct_forward

from fusekern.demo.toy.models import tiny_causal_lm
from fusekern.pipeline import load_extract, run_extract
from fusekern.pipeline.extract import shard_name

pytest_plugins = ["pipeline_fixtures"]  # shared, session-cached fixtures


@pytest.mark.parametrize("name", list(MODELS))
def test_topk_and_ce_equal_a_direct_forward(name, tiny_lms, docs, extracts):
    lm = tiny_lms[name]
    ds, meta = load_extract(extracts[name])
    assert meta["vocab_size"] == lm.model.config.vocab_size and meta["top_k"] == TOP_K
    assert meta["dtype"] == "float32" and len(ds) == len(docs)
    schema = ds.data.schema  # the stored types (datasets' numpy/torch formatters upcast)
    assert str(schema.field("input_ids").type) == "list<item: int32>"
    assert str(schema.field("topk_ids").type) == f"list<item: fixed_size_list<item: int32>[{TOP_K}]>"
    assert str(schema.field("topk_logits").type) == f"list<item: fixed_size_list<item: halffloat>[{TOP_K}]>"
    assert str(schema.field("ce").type) == "list<item: float>"
    rows = ds.with_format("numpy")
    for i in (0, 5, len(docs) - 1):
        r = rows[i]
        ids, logits = direct_forward(lm, docs[i])
        assert r["doc_id"] == i
        np.testing.assert_array_equal(r["input_ids"], ids)  # text + EOS, no BOS
        assert r["topk_ids"].shape == (len(ids), TOP_K)
        assert_valid_topk(r["topk_ids"], r["topk_logits"], logits)
        ce = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none").numpy()
        np.testing.assert_allclose(r["ce"][:-1], ce, rtol=1e-4, atol=1e-5)
        assert r["ce"][-1] == 0
        np.testing.assert_allclose(r["doc_ce"], ce.mean(), rtol=1e-5)


def test_vocab_size_is_the_logits_dimension(tiny_lms, docs, tmp_path):
    """A Qwen-style model with more logit rows than tokenizer ids: the extract's vocabulary is
    the logits dimension and top-k may hold ids the tokenizer does not have."""
    tok = tiny_lms["llama_sp"].tokenizer
    model = tiny_causal_lm("qwen2", len(tok) + 40, hidden=32, heads=2, max_positions=256, seed=3)
    with torch.no_grad():  # make the padded rows win sometimes
        model.lm_head.weight[len(tok) :] *= 6
    out = run_extract(model, docs[:4], str(tmp_path / "q"), tokenizer=tok, top_k=TOP_K, progress=False)
    ds, meta = load_extract(out)
    assert meta["vocab_size"] == len(tok) + 40 and meta["tokenizer_size"] == len(tok)
    top = np.concatenate([np.asarray(x) for x in ds.with_format("numpy")["topk_ids"]])
    assert top.max() >= len(tok)
    ids, logits = direct_forward(type("LM", (), {"tokenizer": tok, "model": model})(), docs[1])
    row = ds.with_format("numpy")[1]
    assert_valid_topk(row["topk_ids"], row["topk_logits"], logits)


def test_tokenizer_with_more_ids_than_logits_is_an_error(tiny_lms, docs, tmp_path):
    tok = tiny_lms["neox_bbpe"].tokenizer
    small = tiny_causal_lm("gpt_neox", len(tok) - 10, hidden=32, heads=2, max_positions=256)
    msg = rf"tokenizer has {len(tok)} ids but the model's logits dimension is {len(tok) - 10}"
    with pytest.raises(ValueError, match=msg):
        run_extract(small, docs[:2], str(tmp_path / "x"), tokenizer=tok, progress=False)


def test_bad_inputs(tiny_lms, docs, tmp_path):
    lm = tiny_lms["gpt2_uni"]
    with pytest.raises(ValueError, match="document 1 is empty"):
        run_extract(lm.path, [docs[0], "  ", docs[1]], str(tmp_path / "a"), progress=False)
    with pytest.raises(ValueError, match="no text column 'text'"):
        import datasets

        no_text = datasets.Dataset.from_dict({"body": docs[:2]})
        run_extract(lm.path, no_text, str(tmp_path / "b"), progress=False)
    with pytest.raises(ValueError, match="more than the model's"):
        run_extract(lm.path, [docs[0]], str(tmp_path / "c"), max_length=5, progress=False)
    with pytest.raises(TypeError, match="tokenizer= is required"):
        run_extract(lm.model, docs[:2], str(tmp_path / "d"), progress=False)
    with pytest.raises(ValueError, match="top_k"):
        run_extract(lm.path, docs[:2], str(tmp_path / "e"), top_k=0, progress=False)
    with pytest.raises(ValueError, match="shard_index"):
        run_extract(lm.path, docs[:4], str(tmp_path / "f"), num_shards=2, shard_index=2, progress=False)


def test_missing_model_or_tokenizer_files_are_clear_errors(tiny_lms, docs, tmp_path):
    """User errors on paths: no raw transformers traceback, a FileNotFoundError naming the path."""
    import shutil

    lm = tiny_lms["gpt2_uni"]
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError, match="model: no such file or directory"):
        run_extract(missing, docs[:2], str(tmp_path / "a"), tokenizer=lm.path, progress=False)
    # a model directory without tokenizer files: transformers would build an empty tokenizer
    bare = tmp_path / "weights_only"
    bare.mkdir()
    for name in os.listdir(lm.path):
        if name == "config.json" or name.endswith(".safetensors"):
            shutil.copy(os.path.join(lm.path, name), bare / name)
    # (older transformers fail earlier, looking for a slow tokenizer's files: also a clear error)
    with pytest.raises(FileNotFoundError, match="holds no tokenizer vocabulary|cannot load a tokenizer from"):
        run_extract(str(bare), docs[:2], str(tmp_path / "c"), progress=False)
    out = run_extract(str(bare), docs[:2], str(tmp_path / "d"), tokenizer=lm.path, progress=False)
    assert len(load_extract(out)[0]) == 2


def test_resume_into_another_sources_directory_is_refused(tiny_lms, docs, tmp_path):
    """Same sizes (the meta check passes), another vocabulary: the finished shards are another
    source's, so reusing them would be silently wrong."""
    a, b = tiny_lms["llama_sp"], tiny_lms["neox_bbpe"]
    assert len(a.tokenizer) == len(b.tokenizer) and a.tokenizer.get_vocab() != b.tokenizer.get_vocab()
    model_b = tiny_causal_lm("gpt_neox", len(a.tokenizer), hidden=32, heads=2, max_positions=256)
    out = str(tmp_path / "src")
    run_extract(a.path, docs[:3], out, top_k=TOP_K, progress=False)
    with pytest.raises(ValueError, match="made with another tokenizer"):
        run_extract(model_b, docs[:3], out, tokenizer=b.tokenizer, top_k=TOP_K, progress=False)
    assert run_extract(a.path, docs[:3], out, top_k=TOP_K, progress=False) == out  # a true resume


def test_sharding_by_index_and_by_rank_is_deterministic(tiny_lms, docs, extracts, tmp_path, monkeypatch):
    lm = tiny_lms["neox_bbpe"]
    ref_dir = extracts["neox_bbpe"]  # num_shards=2, computed in one call
    out = str(tmp_path / "ranked")
    # Two "ranks" of an accelerate/torchrun launch, one after the other.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    run_extract(lm.path, docs, out, top_k=TOP_K, batch_size=4, progress=False)
    assert not os.path.exists(os.path.join(out, shard_name(0, 2)))
    with pytest.raises(ValueError, match=r"incomplete: shards \[0\] of 2 are missing"):
        load_extract(out)
    monkeypatch.setenv("RANK", "0")
    run_extract(lm.path, docs, out, top_k=TOP_K, batch_size=4, progress=False)
    # Byte-identical to the single-process run with the same settings. (Another batch size pads
    # differently, which may move fp32 results by an ulp; the batch size is part of "settings".)
    for i in range(2):
        a = open(os.path.join(ref_dir, shard_name(i, 2), "data.arrow"), "rb").read()
        b = open(os.path.join(out, shard_name(i, 2), "data.arrow"), "rb").read()
        assert a == b
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    with pytest.raises(ValueError, match="other settings"):
        run_extract(lm.path, docs, out, top_k=TOP_K + 1, progress=False)
    with pytest.raises(ValueError, match="different documents"):
        run_extract(lm.path, docs[::-1], out, top_k=TOP_K, num_shards=2, progress=False)
