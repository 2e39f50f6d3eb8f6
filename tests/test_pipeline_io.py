"""pipeline.io.encode: the one tokenisation every stage uses equals the tokenizer's own call."""

from __future__ import annotations

import pytest

from fusekern.demo.toy.corpus import EXOTIC_TEXT
from fusekern.pipeline.io import encode
from fusekern.testing.align_reference import mixed_text, real_tokenizer, toy_tokenizer

TEXTS = [EXOTIC_TEXT, " leading space", "\n\n  indented\n\tx", "日本語 and 👍🏽", mixed_text(3000, seed=3)]


@pytest.mark.parametrize("name", ["byte_bpe", "sp_bpe", "unigram", "wordpiece", "llama2", "mpt", "qwen2"])
def test_encode_equals_the_tokenizers_call(name):
    toy = name in ("byte_bpe", "sp_bpe", "unigram", "wordpiece")
    tok = toy_tokenizer(name) if toy else real_tokenizer(name)
    if tok is None:
        pytest.skip("../shared/tokenizers is absent")
    assert tok.is_fast  # encode goes to the Rust backend's batch call without offsets
    want = tok(TEXTS, add_special_tokens=False)["input_ids"]
    assert encode(tok, TEXTS) == [list(ids) for ids in want]
    assert encode(tok, []) == []


def _mapped(root, num_proc: int):
    import os

    import datasets

    ds = datasets.Dataset.from_dict({"a": list(range(50)), "t": [f"row {i}" for i in range(50)]})
    return ds.map(
        lambda b: {"b": [[x, x * 2] for x in b["a"]]},
        batched=True,
        batch_size=7,
        num_proc=num_proc,
        cache_file_name=os.path.join(root, "cache", "m.arrow"),
    )


@pytest.mark.parametrize("num_proc", [1, 2])
def test_save_links_map_outputs_instead_of_copying(tmp_path, num_proc):
    """A map output held in whole Arrow files under ``link_from`` is saved by hard links (the
    data is not written a second time); the directory loads as the same dataset."""
    import os

    import datasets

    from fusekern.pipeline.io import save_dataset_atomic
    from fusekern.pipeline.paths import OutputDir

    (tmp_path / "cache").mkdir()
    ds = _mapped(str(tmp_path), num_proc)
    kind = OutputDir("test", "meta.json", ("test/1",))
    inodes = {os.stat(f["filename"]).st_ino for f in ds.cache_files}
    assert len(inodes) == num_proc
    out = str(tmp_path / "out")
    meta = {"meta.json": {"format": "test/1"}}
    save_dataset_atomic(ds, out, meta, kind=kind, link_from=str(tmp_path / "cache"))
    data = sorted(f for f in os.listdir(out) if f.endswith(".arrow"))
    assert {os.stat(os.path.join(out, f)).st_ino for f in data} == inodes
    back = datasets.load_from_disk(out)
    assert back.features == ds.features and back.data.table.equals(ds.data.table)

    # not whole files of the caller's scratch directory: copied, same content
    cases = ((ds.select(range(3, 40)), str(tmp_path / "cache")), (ds, str(tmp_path / "elsewhere")))
    for other, link_from in cases:
        out2 = str(tmp_path / f"out-{len(other)}-{os.path.basename(link_from)}")
        save_dataset_atomic(other, out2, meta, kind=kind, link_from=link_from)
        files = [os.path.join(out2, f) for f in os.listdir(out2) if f.endswith(".arrow")]
        assert not {os.stat(f).st_ino for f in files} & inodes
        assert datasets.load_from_disk(out2).data.table.equals(other.flatten_indices().data.table)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_save_copies_where_hard_links_fail(tmp_path, monkeypatch):
    import os

    import datasets

    from fusekern.pipeline.io import save_dataset_atomic
    from fusekern.pipeline.paths import OutputDir

    (tmp_path / "cache").mkdir()
    ds = _mapped(str(tmp_path), 1)

    def no_links(*args, **kwargs):
        raise OSError("Operation not permitted")  # e.g. a file system without hard links

    monkeypatch.setattr(os, "link", no_links)
    out = str(tmp_path / "out")
    kind = OutputDir("test", "meta.json", ("test/1",))
    meta = {"meta.json": {"format": "test/1"}}
    save_dataset_atomic(ds, out, meta, kind=kind, link_from=str(tmp_path / "cache"))
    assert datasets.load_from_disk(out).data.table.equals(ds.data.table)
    assert os.stat(ds.cache_files[0]["filename"]).st_nlink == 1  # copied, not linked
    assert sorted(os.listdir(tmp_path)) == ["cache", "out"]  # no temporary left behind
