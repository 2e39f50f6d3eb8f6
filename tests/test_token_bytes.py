"""token_bytes on real tokenizers of every family: joined bytes reproduce the text."""

from __future__ import annotations

import os

import pytest

from fusekern.align import adds_dummy_prefix, token_bytes
from fusekern.demo.toy.corpus import EXOTIC_TEXT
from fusekern.testing.align_reference import toy_texts, toy_tokenizer

KINDS = ("byte_bpe", "sp_bpe", "unigram", "wordpiece")
EDGE_TEXTS = [
    " leading space",
    "trailing spaces   ",
    "\n\n\nx",
    "a\tb",
    "x",
    "  \t  ",
    "日本語",
    "e\u0301👍🏽",
]


def expected_bytes(tok, text: str) -> bytes:
    """The text as the tokenizer sees it: normalised, plus the dummy-prefix space."""
    norm = tok.backend_tokenizer.normalizer
    text = norm.normalize_str(text) if norm is not None else text
    if adds_dummy_prefix(tok) and not text.startswith(" "):
        text = " " + text
    return text.encode("utf-8")


@pytest.mark.parametrize("kind", KINDS)
def test_join_reproduces_text(kind):
    tok = toy_tokenizer(kind)
    table = token_bytes(tok)
    assert len(table) == len(tok)
    texts = [EXOTIC_TEXT, *EDGE_TEXTS, *toy_texts()[:20]]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids  # every character was in the training text
        joined = b"".join(table[i] for i in ids)
        want = expected_bytes(tok, text)
        if kind == "wordpiece":  # WordPiece keeps no whitespace: compare what it keeps
            assert b"".join(joined.split()) == b"".join(want.split()), text
        else:
            assert joined == want, text


def test_byte_level_pieces():
    tok = toy_tokenizer("byte_bpe")
    table = token_bytes(tok)
    vocab = tok.get_vocab()
    assert table[vocab["Ġ"]] == b" " and table[vocab["Ċ"]] == b"\n"
    # a piece holding part of a UTF-8 character gives that raw byte
    assert table[vocab["æ"]] == b"\xe6"
    # all 256 byte values have a single-character piece
    singles = {table[i] for t, i in vocab.items() if len(t) == 1 and i not in tok.all_special_ids}
    assert {bytes([b]) for b in range(256)} <= singles


def test_sentencepiece_pieces():
    tok = toy_tokenizer("sp_bpe")
    table = token_bytes(tok)
    vocab = tok.get_vocab()
    assert table[vocab["<0xE6>"]] == b"\xe6" and table[vocab["<0x0A>"]] == b"\n"
    assert table[vocab["▁"]] == b" "
    assert adds_dummy_prefix(tok) and not adds_dummy_prefix(toy_tokenizer("byte_bpe"))
    uni = toy_tokenizer("unigram")
    assert token_bytes(uni)[uni.get_vocab()["▁"]] == b" "


def test_wordpiece_pieces():
    tok = toy_tokenizer("wordpiece")
    table = token_bytes(tok)
    vocab = tok.get_vocab()
    cont = next(t for t in vocab if t.startswith("##") and len(t) > 3)
    word = next(t for t in vocab if t.isalpha() and len(t) > 3)
    assert table[vocab[cont]] == cont[2:].encode()
    assert table[vocab[word]] == b" " + word.encode()  # a word-initial piece starts a word


@pytest.mark.parametrize("kind", KINDS)
def test_special_and_added_tokens(kind, tmp_path):
    toy_tokenizer(kind).save_pretrained(str(tmp_path))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp_path))  # also checks a reloaded tokenizer
    tok.add_tokens(["<plain_added>"])  # non-special: matched verbatim in the text
    tok.add_special_tokens({"additional_special_tokens": ["<|special_added|>"]})
    table = token_bytes(tok)
    for i in tok.all_special_ids:
        assert table[i] == b""
    assert table[tok.convert_tokens_to_ids("<plain_added>")] == b"<plain_added>"
    assert table[tok.convert_tokens_to_ids("<|special_added|>")] == b""
    # the raw tokenizers.Tokenizer gives the same table for the model vocabulary
    raw = token_bytes(tok.backend_tokenizer)
    assert raw[: len(toy_tokenizer(kind))] == table[: len(toy_tokenizer(kind))]


def test_slow_wordpiece_matches_fast(tmp_path):
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    fast = toy_tokenizer("wordpiece")
    vocab = sorted(fast.get_vocab().items(), key=lambda kv: kv[1])
    path = os.path.join(str(tmp_path), "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t, _ in vocab)
    slow = BertTokenizerLegacy(
        path, do_lower_case=False, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]"
    )
    assert not slow.is_fast
    assert token_bytes(slow)[: len(fast)] == token_bytes(fast)


def test_slow_byte_level_tokenizer():
    from transformers import ByT5Tokenizer

    tok = ByT5Tokenizer()
    table = token_bytes(tok)
    for text in (EXOTIC_TEXT, "héllo"):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert b"".join(table[i] for i in ids) == text.encode()
    assert all(table[i] == b"" for i in tok.all_special_ids)


def test_not_a_tokenizer():
    with pytest.raises(TypeError, match="tokenizer must be"):
        token_bytes("gpt2")


def _real_or_toy():
    from fusekern.testing.align_reference import real_tokenizer

    toks = {kind: toy_tokenizer(kind) for kind in KINDS}
    toks.update({n: real_tokenizer(n) for n in ("llama2", "mpt", "qwen2") if real_tokenizer(n) is not None})
    return toks


def test_spec_without_merges_is_the_tokenizer_json_minus_merges():
    """token_bytes reads tokenizer.json without parsing the BPE merges: everything else must be
    what the full parse gives, also when a token's text spells the key it looks for."""
    import copy
    import json

    from fusekern.align.token_bytes import _spec

    toks = _real_or_toy()
    tricky = copy.deepcopy(toks["byte_bpe"])
    tricky.add_tokens([',"merges":[', '"merges"'])
    toks["tricky"] = tricky
    for name, tok in toks.items():
        backend = tok.backend_tokenizer
        full = json.loads(backend.to_str())
        full["model"].pop("merges", None)
        assert _spec(backend) == full, name  # token_bytes reads nothing else of the backend
    assert b',"merges":[' in token_bytes(tricky)


def test_byte_level_pieces_match_a_per_character_decode():
    """The one-pass ByteLevel decode equals the per-character rule (alphabet character → its
    byte, any other character → its UTF-8) on every piece of the byte-level vocabularies, and on
    pieces mixing both."""
    from fusekern.align.token_bytes import _byte_level, bytes_to_unicode

    to_byte = {c: b for b, c in bytes_to_unicode().items()}

    def reference(piece: str) -> bytes:
        return b"".join(bytes([to_byte[ch]]) if ch in to_byte else ch.encode("utf-8") for ch in piece)

    pieces = ["ĠHello", "Ċ", "æĹ¥", "<plain_added>", "a b", "\u00a0x", "é", "日本", "ĠÿĀ", ""]
    for tok in _real_or_toy().values():
        if type(tok.backend_tokenizer.decoder).__name__ == "ByteLevel":
            pieces += list(tok.get_vocab())
    assert len(pieces) > 1000
    for piece in pieces:
        assert _byte_level(piece) == reference(piece), piece
