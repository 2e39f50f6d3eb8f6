"""Nothing a user owns is ever deleted (outputs vs inputs and foreign directories), extract's
locks, mistyped local paths, and the CLI's flag spellings."""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
from pipeline_helpers import TARGET, run_cli

from fusekern.cli import build_parser, main
from fusekern.pipeline import load_extract, load_packed, run_align, run_extract, run_pack, run_split
from fusekern.pipeline.extract import _check_or_write_meta, shard_name
from fusekern.pipeline.formats import EXTRACT_META_FILE
from fusekern.pipeline.paths import check_name_or_path, looks_local

pytest_plugins = ["pipeline_fixtures"]  # shared, session-cached fixtures


def _tree(path) -> dict:
    """Every file under ``path`` with its bytes: what must survive a refused command."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            out[os.path.relpath(full, path)] = open(full, "rb").read()
    return out


def test_split_never_replaces_its_input_or_a_foreign_directory(tiny_lms, tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    proj.mkdir()
    corpus = proj / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"document {i} with some words"}) for i in range(4)))
    (proj / "notes.txt").write_text("mine")
    toks = [tiny_lms[TARGET].path]
    before = _tree(proj)
    for out, why in ((proj, "contains the input data"), (corpus, "is the input data")):
        with pytest.raises(ValueError, match=why):
            run_split(str(corpus), str(out), toks, 64)
    monkeypatch.chdir(proj)
    assert (
        main(["split", "--data", "corpus.jsonl", "--tokenizers", *toks, "--block-size", "64", "--out", "."])
        == 2
    )
    with pytest.raises(ValueError, match="lies inside the input tokenizers"):
        run_split(str(corpus), os.path.join(toks[0], "split"), toks, 64)
    # a foreign non-empty directory, even with --overwrite
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a `fusekern split` output"):
        run_split(str(corpus), str(foreign), toks, 64, overwrite=True)
    assert _tree(proj) == before and (foreign / "keep.txt").read_text() == "mine"

    # its own output: replaced only when asked, and never when the user put something inside
    out = str(tmp_path / "split")
    run_split(str(corpus), out, toks, 64)
    with pytest.raises(ValueError, match="pass --overwrite"):
        run_split(str(corpus), out, toks, 64)
    run_split(str(corpus), out, toks, 32, overwrite=True)
    assert json.load(open(os.path.join(out, "split_meta.json")))["block_size"] == 32
    assert not [n for n in os.listdir(tmp_path) if n.startswith((".old-", ".tmp-"))]
    with open(os.path.join(out, "my_notes.txt"), "w") as f:
        f.write("mine")
    with pytest.raises(ValueError, match="files fusekern did not write"):
        run_split(str(corpus), out, toks, 64, overwrite=True)
    assert open(os.path.join(out, "my_notes.txt")).read() == "mine"
    # an empty directory is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    run_split(str(corpus), str(empty), toks, 64)


def test_align_and_pack_never_replace_inputs(
    extracts, aligned, docs, tiny_lms, tmp_path, monkeypatch, capsys
):
    names, dirs = aligned
    t_path = tiny_lms[TARGET].path
    src = extracts["neox_bbpe"]
    before = _tree(src)
    for out in (src, os.path.dirname(src), os.path.join(src, "aligned")):
        with pytest.raises(ValueError, match="the input source extract"):
            run_align(t_path, docs, [src], out)
    assert _tree(src) == before and len(load_extract(src)[0]) == len(docs)

    # pack --out . in a project folder holding the aligned input; and --out at the input itself
    proj = tmp_path / "proj"
    shutil.copytree(dirs["bytes"], proj / "aligned")
    before = _tree(proj)
    monkeypatch.chdir(proj)
    for out in (".", "aligned", "aligned/packed"):
        rc = main(["pack", "--aligned", "aligned", "--block-size", "32", "--out", out])
        assert rc == 2 and "the input aligned" in capsys.readouterr().err
    assert _tree(proj) == before

    # pack's own output: --overwrite replaces it; an align output is not pack's to replace
    out = str(tmp_path / "packed")
    assert main(["pack", "--aligned", "aligned", "--block-size", "32", "--out", out]) == 0
    assert main(["pack", "--aligned", "aligned", "--block-size", "32", "--out", out]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["pack", "--aligned", "aligned", "--block-size", "24", "--out", out, "--overwrite"]) == 0
    assert load_packed(out)[1]["block_size"] == 24
    other_align = str(tmp_path / "aligned_copy")
    shutil.copytree(dirs["bytes"], other_align)
    with pytest.raises(ValueError, match="is not a `fusekern pack` output"):
        run_pack(dirs["bytes"], other_align, block_size=32, overwrite=True)
    assert _tree(other_align) == _tree(dirs["bytes"])


def test_extract_refuses_foreign_directories_and_inputs(tiny_lms, docs, tmp_path):
    lm = tiny_lms["gpt2_uni"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no extract"):
        run_extract(lm.path, docs[:2], str(foreign), progress=False)
    with pytest.raises(ValueError, match="lies inside the input model"):
        run_extract(lm.path, docs[:2], os.path.join(lm.path, "ext"), progress=False)
    assert os.listdir(foreign) == ["keep.txt"]


def test_two_extract_processes_on_one_directory(tiny_lms, docs, tmp_path, capsys):
    import datasets

    data = str(tmp_path / "data")
    datasets.Dataset.from_dict({"text": docs[:16]}).save_to_disk(data)
    out = str(tmp_path / "ext")

    def args(top_k: int = 5) -> list:
        return ["extract", "--model", tiny_lms["gpt2_uni"].path, "--data", data, "--out", out, "--num-shards",
                "2", "--top-k", str(top_k), "--batch-size", "2", "--no-progress"]  # fmt: skip

    proc = run_cli(args(), extract_pause=30)  # sits inside shard 0
    try:
        deadline = time.time() + 180

        def live() -> list:
            names = os.listdir(out) if os.path.isdir(out) else []
            return [n for n in names if n.startswith(".tmp-" + shard_name(0, 2))]

        while not live():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "the first process never started shard 0"
            time.sleep(0.05)
        started = live()
        assert main(args()) == 2  # the second process: a clear error, the live temporary untouched
        err = capsys.readouterr().err
        assert "being computed by another extract process" in err and f"pid {proc.pid}" in err
        assert live() == started
        assert main(args(top_k=7)) == 2  # other settings: refused, meta unchanged
        assert "other settings" in capsys.readouterr().err
        assert json.load(open(os.path.join(out, EXTRACT_META_FILE)))["top_k"] == 5
    finally:
        proc.kill()
        proc.communicate()


def test_extract_meta_is_created_atomically(tmp_path, monkeypatch):
    """Two processes that both saw no meta: the second one's create fails and it is checked
    against the first one's settings instead of overwriting them."""
    out = str(tmp_path)
    first = {"format": "fusekern-extract/1", "num_docs": 3, "num_shards": 1, "top_k": 5}
    first.update(vocab_size=10, tokenizer_size=10, eos_token_id=1)
    _check_or_write_meta(out, first)
    second = dict(first, top_k=7)
    real_exists = os.path.exists
    monkeypatch.setattr(
        os.path, "exists", lambda p: False if p.endswith(EXTRACT_META_FILE) else real_exists(p)
    )
    with pytest.raises(ValueError, match="top_k: 5 there vs 7 now"):
        _check_or_write_meta(out, second)
    assert json.load(open(os.path.join(out, EXTRACT_META_FILE)))["top_k"] == 5
    assert os.listdir(out) == [EXTRACT_META_FILE]  # no temporary left behind


def test_vocab_map_output_file_rules(tmp_path, capsys):
    from fusekern.testing.align_reference import toy_tokenizer

    src, tgt = str(tmp_path / "src"), str(tmp_path / "tgt")
    toy_tokenizer("byte_bpe").save_pretrained(src)
    toy_tokenizer("sp_bpe").save_pretrained(tgt)
    base = ["vocab-map", "--source", src, "--target", tgt, "--out"]
    assert main([*base, str(tmp_path / "map.txt")]) == 2
    assert "must end with one of .npz, .json" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "map.txt") and not os.path.exists(tmp_path / "map.txt.npz")
    tok_json = os.path.join(src, "tokenizer.json")
    before = open(tok_json, "rb").read()
    assert main(["vocab-map", "--source", tok_json, "--target", tgt, "--out", tok_json]) == 2
    assert "is the input --source" in capsys.readouterr().err and open(tok_json, "rb").read() == before
    other = tmp_path / "other.npz"
    np.savez(str(other), x=np.arange(3))
    assert main([*base, str(other)]) == 2 and "not a `fusekern vocab-map` output" in capsys.readouterr().err
    out = str(tmp_path / "map.npz")
    assert main([*base, out]) == 0
    assert main([*base, out]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*base, out, "--overwrite"]) == 0


def test_mistyped_local_paths_fail_at_once_naming_the_flag(tiny_lms, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    os.mkdir("W")
    assert looks_local("W/nosplit") and looks_local("./x") and looks_local("a/b/c") and looks_local("c.jsonl")
    assert not looks_local("meta-llama/Llama-2-7b-hf") and not looks_local("gpt2")
    check_name_or_path("meta-llama/Llama-2-7b-hf", "--model")  # a Hub name: left to the Hub
    tok = tiny_lms[TARGET].path
    t0 = time.time()
    cases = [
        (["split", "--data", "W/nosplit", "--tokenizers", tok, "--block-size", "64", "--out", "s"], "--data"),
        (
            ["split", "--data", tok, "--tokenizers", "W/tok", "--block-size", "64", "--out", "s"],
            "--tokenizers",
        ),
        (["extract", "--model", "W/model", "--data", tok, "--out", "e"], "--model"),
        (
            ["align", "--target-tokenizer", "./tgt", "--data", "d", "--sources", "e", "--out", "a"],
            "--target-tokenizer",
        ),
        (["pack", "--aligned", "aligned", "--block-size", "8", "--out", "p"], "--aligned"),
        (["vocab-map", "--source", "W/src", "--target", tok, "--out", "m.npz"], "--source"),
        (
            ["train", "--model_name_or_path", "W/m", "--data_path", "W/p", "--output_dir", "o"],
            "--model_name_or_path",
        ),
    ]
    for argv, flag in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"error: {flag}: no such file or directory" in err and "Traceback" not in err, err
    assert time.time() - t0 < 60  # no Hub retries (each would take 30 s or more)


def test_every_flag_accepts_underscores():
    parser = build_parser()
    a = parser.parse_args(["pack", "--aligned", "x", "--out", "o", "--block_size", "8", "--pack_documents"])
    b = parser.parse_args(["pack", "--aligned", "x", "--out", "o", "--block-size", "8", "--pack-documents"])
    assert vars(a) == vars(b) and a.block_size == 8 and a.pack_documents
    a = parser.parse_args(
        ["extract", "--model", "m", "--data", "d", "--out", "o", "--top_k", "3", "--num_shards", "2"]
    )
    assert a.top_k == 3 and a.num_shards == 2
    a = parser.parse_args(["align", "--target_tokenizer", "t", "--data", "d", "--sources", "s", "--out", "o",
                           "--source_names", "n", "--vocab_maps", "v"])  # fmt: skip
    assert a.target_tokenizer == "t" and a.source_names == ["n"] and a.vocab_maps == ["v"]
    a = parser.parse_args(["split", "--data", "d", "--tokenizers", "t", "--block_size", "8", "--out", "o",
                           "--text_column", "body", "--num_proc", "2"])  # fmt: skip
    assert a.text_column == "body" and a.num_proc == 2
    a = parser.parse_args(["demo", "--lm_weight", "0.5", "--train_steps", "3"])
    assert a.lm_weight == 0.5 and a.train_steps == 3
    help_text = parser._subparsers._group_actions[0].choices["pack"].format_help()
    assert "--block-size" in help_text and "--block_size" not in help_text  # help shows one spelling
