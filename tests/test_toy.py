"""The offline stand-ins used by tests and the demo must be deterministic and loadable."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fusekern.demo.toy.corpus import EXOTIC_TEXT, stdlib_code, stdlib_prose
from fusekern.demo.toy.models import ARCHS, tiny_causal_lm
from fusekern.demo.toy.tokenizers import KINDS, train_tokenizer


def test_corpus_is_deterministic_and_nonempty():
    a, b = stdlib_prose(50), stdlib_prose(50)
    assert a == b and len(a) == 50 and all(isinstance(t, str) and t for t in a)
    code = stdlib_code(5)
    assert len(code) == 5 and all(("def " in c or "import" in c or "=" in c) for c in code)


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_roundtrip_and_reload(kind, tmp_path):
    texts = stdlib_prose(200) + [EXOTIC_TEXT]
    tok = train_tokenizer(kind, texts, vocab_size=600)
    assert len(tok) <= 600 + 8
    ids = tok(EXOTIC_TEXT)["input_ids"]
    assert all(0 <= i < len(tok) for i in ids)
    assert tok.unk_token_id not in ids or kind in ("unigram", "wordpiece")
    if kind in ("byte_bpe", "sp_bpe"):  # lossless families decode back to the exact text
        assert tok.decode(ids) == EXOTIC_TEXT
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(EXOTIC_TEXT)["input_ids"] == ids
    if kind in ("byte_bpe", "sp_bpe"):  # the others may vary: see train_tokenizer's docstring
        assert train_tokenizer(kind, texts, vocab_size=600).get_vocab() == tok.get_vocab()


def test_sp_bpe_has_byte_fallback_pieces_in_vocab():
    tok = train_tokenizer("sp_bpe", stdlib_prose(100), vocab_size=600)
    vocab = tok.get_vocab()
    assert all(f"<0x{b:02X}>" in vocab for b in range(256))
    # A character never seen in training falls back to its UTF-8 bytes.
    pieces = tok.convert_ids_to_tokens(tok("\U0001f9ec")["input_ids"])
    assert pieces[-4:] == ["<0xF0>", "<0x9F>", "<0xA7>", "<0xAC>"]


def test_train_tokenizer_rejects_bad_input():
    with pytest.raises(ValueError, match="kind"):
        train_tokenizer("bpe?", ["x"])
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer("byte_bpe", ["x"], vocab_size=10)
    with pytest.raises(ValueError, match="texts"):
        train_tokenizer("byte_bpe", [], vocab_size=400)


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_models_deterministic_and_reloadable(arch, tmp_path):
    m = tiny_causal_lm(arch, 300, hidden=32, layers=1, heads=2, seed=3)
    x = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    logits = m(input_ids=x).logits
    assert logits.shape == (2, 9, 300)
    assert torch.equal(
        logits, tiny_causal_lm(arch, 300, hidden=32, layers=1, heads=2, seed=3)(input_ids=x).logits
    )
    assert not torch.equal(
        logits, tiny_causal_lm(arch, 300, hidden=32, layers=1, heads=2, seed=4)(input_ids=x).logits
    )
    m.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.allclose(again(input_ids=x).logits, logits)
