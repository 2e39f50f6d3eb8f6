"""split: pieces fit the block under every tokenizer, cut on whitespace, lossless."""

from __future__ import annotations

import json

import datasets
import pytest
from pipeline_helpers import BLOCK

from fusekern.demo.toy.corpus import EXOTIC_TEXT, stdlib_code, stdlib_prose
from fusekern.pipeline import run_split, split_texts

pytest_plugins = ["pipeline_fixtures"]  # shared, session-cached fixtures


def _ntok(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_pieces_fit_every_tokenizer_and_join_back(tiny_lms):
    toks = [lm.tokenizer for lm in tiny_lms.values()]
    raw = [stdlib_code(1)[0][:6000], stdlib_prose(50)[45], EXOTIC_TEXT * 3]
    for text in raw:
        stats = {}
        pieces = split_texts([text], toks, BLOCK, stats=stats)
        assert "".join(pieces) == text  # lossless: no whitespace-only piece here
        assert len(pieces) > 1 and stats["docs_split"] == 1 and stats["pieces"] == len(pieces)
        for p in pieces:
            assert max(_ntok(t, p) for t in toks) + 1 <= BLOCK  # + EOS
        for p in pieces[:-1]:
            assert p[-1].isspace(), f"piece does not end on whitespace: {p[-20:]!r}"
        # Cuts are not wastefully early: most pieces use over half the block somewhere.
        used = [max(_ntok(t, p) for t in toks) for p in pieces[:-1]]
        assert sum(u > BLOCK // 2 for u in used) >= len(used) * 0.7


def test_short_documents_pass_and_empty_ones_are_dropped(tiny_lms):
    toks = [lm.tokenizer for lm in tiny_lms.values()]
    stats = {}
    out = split_texts(["short text.", "", "   \n ", "another one"], toks, BLOCK, stats=stats)
    assert out == ["short text.", "another one"]
    assert stats == {"docs_in": 4, "docs_dropped_empty": 2, "docs_split": 0, "pieces": 2}


def test_text_without_whitespace_is_hard_cut(tiny_lms):
    toks = [lm.tokenizer for lm in tiny_lms.values()]
    text = "x7" * 300 + "\u65e5\u672c" * 40
    pieces = split_texts([text], toks, 32)
    assert "".join(pieces) == text and len(pieces) > 2
    assert all(max(_ntok(t, p) for t in toks) + 1 <= 32 for p in pieces)


def test_long_whitespace_run_pieces_are_dropped(tiny_lms):
    toks = [lm.tokenizer for lm in tiny_lms.values()]
    text = "alpha beta " + " " * 400 + " gamma delta"
    pieces = split_texts([text], toks, 24)
    assert all(p.strip() for p in pieces)
    assert "".join(pieces).split() == text.split()


def test_bad_arguments(tiny_lms):
    tok = tiny_lms["llama_sp"].tokenizer
    with pytest.raises(ValueError, match="block_size"):
        split_texts(["a b"], [tok], 4)
    with pytest.raises(ValueError, match="tokenizers is empty"):
        split_texts(["a b"], [], 64)
    with pytest.raises(TypeError, match="texts must be a sequence"):
        split_texts("a b", [tok], 64)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        split_texts(["a", 3], [tok], 64)


def test_run_split_jsonl_and_missing_text_column(tiny_lms, tmp_path):
    toks = [lm.path for lm in tiny_lms.values()]  # by path, as the CLI passes them
    src = tmp_path / "in.jsonl"
    rows = [{"text": stdlib_prose(50)[46], "id": 1}, {"text": ""}, {"text": "tiny"}]
    src.write_text("\n".join(json.dumps(r) for r in rows))
    out = run_split(str(src), str(tmp_path / "split"), toks, BLOCK)
    ds = datasets.load_from_disk(out)
    assert ds.column_names == ["text", "doc_index"]
    assert ds[-1] == {"text": "tiny", "doc_index": 2}
    assert set(ds["doc_index"]) == {0, 2}
    assert "".join(t for t, i in zip(ds["text"], ds["doc_index"]) if i == 0) == rows[0]["text"]
    meta = json.loads((tmp_path / "split" / "split_meta.json").read_text())
    assert meta["docs_in"] == 3 and meta["docs_dropped_empty"] == 1 and meta["pieces"] == len(ds)

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"content": "x"}))
    with pytest.raises(ValueError, match="no text column 'text'"):
        run_split(str(bad), str(tmp_path / "nope"), toks, BLOCK)
    with pytest.raises(FileNotFoundError):
        run_split(str(tmp_path / "missing.jsonl"), str(tmp_path / "nope"), toks, BLOCK)
