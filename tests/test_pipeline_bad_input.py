"""Bad input gets a clear error, never a wrong answer: data for another target, vocab maps for
other tokenizers, damaged extracts and vocab maps, duplicate source names, BERT-like tokenizers,
bare tokenizer.json files, bad devices."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import TARGET

from fusekern.align import map_vocab
from fusekern.cli import main
from fusekern.pipeline import load_extract, load_packed, run_align, run_extract, run_pack, run_split
from fusekern.pipeline.extract import shard_name
from fusekern.pipeline.io import vocab_fingerprint
from fusekern.pipeline.vocab import load_vocab_map, run_vocab_map
from fusekern.testing.align_reference import toy_tokenizer

pytest_plugins = ["pipeline_fixtures"]  # shared, session-cached fixtures

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "tokenizers"


def _copy_extract(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def test_pack_records_the_target_and_train_refuses_other_targets(aligned, tiny_lms, tmp_path):
    from transformers import TrainingArguments

    from fusekern import FusionTrainer
    from fusekern.demo.toy.models import tiny_causal_lm

    names, dirs = aligned
    target = tiny_lms[TARGET]
    ds, meta = load_packed(run_pack(dirs["bytes"], str(tmp_path / "packed"), block_size=64))
    assert meta["target_vocab_sha256"] == vocab_fingerprint(target.tokenizer)
    assert meta["target_vocab_size"] == len(target.tokenizer)
    ids = np.concatenate([np.asarray(r).ravel() for r in list(ds["input_ids"]) + list(ds["teacher_ids"])])
    assert meta["max_token_id"] == int(ids.max())

    args = TrainingArguments(str(tmp_path / "o"), use_cpu=True, report_to=[], max_steps=1)
    common = dict(args=args, train_dataset=ds.with_format("numpy"), fusion_meta=meta)
    FusionTrainer(model=target.model, processing_class=target.tokenizer, **common)  # the right target: fine
    other = tiny_lms["neox_bbpe"]  # another tokenizer of the same size: only the fingerprint tells
    assert len(other.tokenizer) == len(target.tokenizer)
    with pytest.raises(ValueError, match="packed for another target tokenizer"):
        FusionTrainer(model=target.model, processing_class=other.tokenizer, **common)
    small = tiny_causal_lm("llama", meta["max_token_id"], hidden=16, layers=1, heads=2, max_positions=64)
    with pytest.raises(ValueError, match=f"holds token id {meta['max_token_id']} but the model has only"):
        FusionTrainer(model=small, processing_class=None, **common)


def test_duplicate_source_names_are_refused_at_align_and_pack(extracts, aligned, docs, tiny_lms, tmp_path):
    t_path = tiny_lms[TARGET].path
    paths = [extracts["neox_bbpe"], extracts["gpt2_uni"]]
    with pytest.raises(ValueError, match=r"source names must be unique, \['x'\]"):
        run_align(t_path, docs, paths, str(tmp_path / "a"), source_names=["x", "x"])
    with pytest.raises(ValueError, match=r"unique, \['gpt2_uni'\]"):  # default names: directory names
        run_align(t_path, docs, [extracts["gpt2_uni"], extracts["gpt2_uni"]], str(tmp_path / "b"))
    names, dirs = aligned
    dup = _copy_extract(dirs["bytes"], tmp_path / "aligned_dup")
    meta_path = os.path.join(dup, "align_meta.json")
    meta = json.load(open(meta_path))
    meta["sources"] = [names[0]] * len(names)
    json.dump(meta, open(meta_path, "w"))
    with pytest.raises(ValueError, match="source names must be unique"):
        run_pack(dup, str(tmp_path / "p"), block_size=64)


def test_negative_topk_ids_are_refused(extracts, docs, tiny_lms, tmp_path):
    import pyarrow as pa

    bad = _copy_extract(extracts["neox_bbpe"], tmp_path / "ext")
    path = os.path.join(bad, shard_name(1, 2), "data.arrow")
    table = pa.ipc.open_stream(open(path, "rb").read()).read_all()
    col = table.column("topk_ids").combine_chunks()
    inner = col.values.values.to_numpy().copy()
    inner[3] = -3  # would index the lookup table from its end: a silently wrong id
    k = col.type.value_type.list_size
    new = pa.ListArray.from_arrays(col.offsets, pa.FixedSizeListArray.from_arrays(pa.array(inner), k))
    table = table.set_column(table.schema.get_field_index("topk_ids"), "topk_ids", new)
    with pa.OSFile(path + ".new", "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    os.replace(path + ".new", path)  # never rewrite a memory-mapped file in place
    with pytest.raises(ValueError, match=r"top-k ids.*token id -3 outside \[0, "):
        run_align(tiny_lms[TARGET].path, docs, [bad], str(tmp_path / "a"))


def test_a_truncated_shard_is_named(extracts, tiny_lms, docs, tmp_path):
    bad = _copy_extract(extracts["gpt2_uni"], tmp_path / "ext")
    shard = os.path.join(bad, shard_name(1, 2))
    data = os.path.join(shard, "data.arrow")
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    with pytest.raises(ValueError, match=f"extract shard {shard!r} is damaged"):
        load_extract(bad)
    with pytest.raises(ValueError, match=f"extract shard {shard!r} is damaged"):  # and on resume
        run_extract(tiny_lms["gpt2_uni"].path, docs, bad, top_k=6, batch_size=4, num_shards=2, progress=False)


def test_vocab_maps_record_and_check_their_tokenizers(tmp_path):
    bpe, uni, tgt = toy_tokenizer("byte_bpe"), toy_tokenizer("unigram"), toy_tokenizer("sp_bpe")
    dirs = {}
    for name, tok in (("bpe", bpe), ("uni", uni), ("tgt", tgt)):
        dirs[name] = str(tmp_path / name)
        tok.save_pretrained(dirs[name])
    path = run_vocab_map(dirs["bpe"], dirs["tgt"], str(tmp_path / "bpe.npz"))
    vmap = load_vocab_map(path, bpe, tgt)
    assert vmap.source_size == len(bpe)
    with pytest.raises(ValueError, match="made for another source tokenizer"):
        load_vocab_map(path, uni, tgt)  # same size as bpe: sizes alone would pass
    other_tgt = toy_tokenizer("byte_bpe")
    with pytest.raises(ValueError, match="made for another target tokenizer"):
        load_vocab_map(path, bpe, other_tgt)
    # a damaged (truncated) map file: a message, not a zipfile traceback
    cut = str(tmp_path / "cut.npz")
    data = open(path, "rb").read()
    open(cut, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot be read"):
        load_vocab_map(cut, bpe, tgt)


def test_map_vocab_chunk_must_be_positive():
    tok = toy_tokenizer("byte_bpe")
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        map_vocab(tok, tok, chunk=0)


@pytest.mark.skipif(not (SHARED / "mpt").is_dir(), reason="shared tokenizers absent")
def test_bare_tokenizer_json_files_keep_their_special_tokens(tmp_path, capsys):
    # Copies without tokenizer_config.json: the roles come from the file's special tokens.
    mpt, llama = tmp_path / "mpt.json", tmp_path / "llama2.json"
    shutil.copy(SHARED / "mpt" / "tokenizer.json", mpt)
    shutil.copy(SHARED / "llama2" / "tokenizer.json", llama)
    out = str(tmp_path / "mpt_to_llama.npz")
    assert main(["vocab-map", "--source", str(mpt), "--target", str(llama), "--out", out]) == 0
    from fusekern.align import VocabMap
    from fusekern.pipeline.io import load_tokenizer

    vmap = VocabMap.load(out)
    src, tgt = load_tokenizer(str(mpt)), load_tokenizer(str(llama))
    assert src.convert_ids_to_tokens(0) == "<|endoftext|>" and src.eos_token_id == 0
    assert tgt.eos_token == "</s>" and tgt.bos_token == "<s>" and tgt.unk_token == "<unk>"
    assert vmap.special[0] and tgt.convert_ids_to_tokens(int(vmap.ids[0])) == "</s>"
    # in place, beside its tokenizer_config.json, the file takes the roles the config names
    ref = load_tokenizer(str(SHARED / "mpt" / "tokenizer.json"))
    assert ref.eos_token_id == src.eos_token_id and vocab_fingerprint(ref) == vocab_fingerprint(src)
    assert ref.bos_token == ref.unk_token == "<|endoftext|>"  # as MPT's config says
    capsys.readouterr()
    not_tok = tmp_path / "config.json"
    not_tok.write_text('{"hello": 1}')
    assert main(["vocab-map", "--source", str(not_tok), "--target", str(llama), "--out", out + "2.npz"]) == 2
    err = capsys.readouterr().err
    assert "is not a tokenizers tokenizer.json file" in err and "Traceback" not in err


def test_split_refuses_a_tokenizer_without_eos(tiny_lms, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "##b"])}
    wp = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    bert = PreTrainedTokenizerFast(
        tokenizer_object=wp, unk_token="[UNK]", sep_token="[SEP]", cls_token="[CLS]", pad_token="[PAD]",
        mask_token="[MASK]",
    )  # fmt: skip
    bert_dir = str(tmp_path / "bert")
    bert.save_pretrained(bert_dir)
    with pytest.raises(ValueError, match=f"tokenizer {bert_dir!r} has no eos_token"):
        run_split(["a b ab"], str(tmp_path / "s"), [tiny_lms[TARGET].path, bert_dir], 16)
    assert not os.path.exists(tmp_path / "s")


def test_bad_device_is_a_message(tiny_lms, docs, tmp_path, capsys):
    model = tiny_lms["gpt2_uni"].path
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": docs[0]}))
    for device, why in (("nonsense", "is not a torch device"), ("cuda:7", "no such CUDA device")):
        argv = [
            "extract",
            "--model",
            model,
            "--data",
            str(data),
            "--out",
            str(tmp_path / device),
            "--device",
            device,
        ]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"device {device!r}" in err and why in err and "Traceback" not in err
