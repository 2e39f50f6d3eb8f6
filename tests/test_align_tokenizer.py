"""The one tokenizer loader (fusekern.align.tokenizer): every kind of argument, every bad path."""

from __future__ import annotations

import json
import os

import pytest

from fusekern.align.tokenizer import load_tokenizer
from fusekern.testing.align_reference import toy_tokenizer


def test_pipeline_names_the_same_loader():
    from fusekern.pipeline import io

    assert io.load_tokenizer is load_tokenizer


def test_object_directory_and_json_file(tmp_path):
    tok = toy_tokenizer("sp_bpe")
    assert load_tokenizer(tok) is tok
    tok.save_pretrained(tmp_path / "tok")
    for arg in (tmp_path / "tok", str(tmp_path / "tok"), str(tmp_path / "tok" / "tokenizer.json")):
        loaded = load_tokenizer(arg)
        assert loaded.get_vocab() == tok.get_vocab(), arg
        assert loaded.eos_token == tok.eos_token, arg  # the config beside tokenizer.json names the roles


def test_bad_arguments_name_the_argument_and_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match="src must be a path, a Hub name or a tokenizer, got int"):
        load_tokenizer(3, name="src")
    # looks local and does not exist: at once, never a Hub lookup
    for missing in ("./nope", "a/b/c", "nope.json", str(tmp_path / "nope")):
        with pytest.raises(FileNotFoundError, match=f"src: no such file or directory: {missing!r}"):
            load_tokenizer(missing, name="src")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match="src: 'notes.txt' is a file; pass a tokenizer directory"):
        load_tokenizer("notes.txt", name="src")
    (tmp_path / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="src: .*config.json' is not a tokenizers tokenizer.json file"):
        load_tokenizer("config.json", name="src")
    os.mkdir("empty")
    with pytest.raises(FileNotFoundError, match="src: cannot load a tokenizer from 'empty'"):
        load_tokenizer("empty", name="src")
