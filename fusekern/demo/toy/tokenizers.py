"""Small tokenizers of each real-world family, trained locally with ``tokenizers``.

Families (what real models use):
- ``byte_bpe``: byte-level BPE (GPT-2, GPT-NeoX, Llama-3, Qwen): 'Ġ' = space, 'Ċ' = newline.
- ``sp_bpe``: SentencePiece-style BPE (Llama-2, Mistral): Metaspace '▁', dummy prefix,
  ``<0x00>``…``<0xFF>`` byte-fallback tokens as ordinary vocabulary entries.
- ``unigram``: SentencePiece unigram (T5, XLNet style) with an NFKC normaliser.
- ``wordpiece``: BERT-style WordPiece with '##' continuations (whitespace is not kept).
Each is wrapped as a ``PreTrainedTokenizerFast`` with bos/eos/unk/pad tokens.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

KINDS = ("byte_bpe", "sp_bpe", "unigram", "wordpiece")

_SPECIALS = {
    "byte_bpe": dict(
        bos_token="<|bos|>", eos_token="<|endoftext|>", unk_token="<|unk|>", pad_token="<|pad|>"
    ),
    "sp_bpe": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"),
    "unigram": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"),
    "wordpiece": dict(bos_token="[CLS]", eos_token="[SEP]", unk_token="[UNK]", pad_token="[PAD]"),
}


def _byte_bpe(texts: list, vocab_size: int, specials: list) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def _sp_bpe(texts: list, vocab_size: int, specials: list) -> Tokenizer:
    """Train a Metaspace BPE, then rebuild it with the 256 ``<0xNN>`` tokens placed right after
    the specials as ordinary vocabulary (as in Llama-2), so byte fallback covers any text."""
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    n_learn = max(vocab_size - 256, len(specials) + 64)
    trainer = trainers.BpeTrainer(vocab_size=n_learn, special_tokens=specials, show_progress=False)
    base.train_from_iterator(texts, trainer)

    import json

    model = json.loads(base.to_str())["model"]
    vocab = {}
    for s in specials:
        vocab[s] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(specials)
    return tok


def _unigram(texts: list, vocab_size: int, specials: list) -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    # Two sources of nondeterminism in the trainer reorder pieces (and so ids): scores vary in
    # the last bits (parallel EM), and the characters it must keep get made-up scores below all
    # learned pieces in hash order. Canonicalise: round scores, give those trailing characters
    # one common score, and order by (specials, -score, piece).
    import json

    raw = json.loads(tok.to_str())["model"]["vocab"]
    floor = min((s for p, s in raw if len(p) > 1 and p not in specials), default=0.0)
    pieces = [(p, round(floor - 1.0, 2) if s < floor else round(s, 2)) for p, s in raw]
    head = [p for p in pieces if p[0] in specials]
    head.sort(key=lambda p: specials.index(p[0]))
    rest = sorted((p for p in pieces if p[0] not in specials), key=lambda p: (-p[1], p[0]))
    ordered = [tuple(p) for p in head + rest]
    rebuilt = Tokenizer(models.Unigram(ordered, unk_id=specials.index("<unk>"), byte_fallback=False))
    rebuilt.normalizer = tok.normalizer
    rebuilt.pre_tokenizer = tok.pre_tokenizer
    rebuilt.decoder = tok.decoder
    rebuilt.add_special_tokens(specials)
    return rebuilt


def _wordpiece(texts: list, vocab_size: int, specials: list) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    # The trainer's id order depends on hash order; WordPiece encodes by greedy longest match, so
    # ids carry no meaning beyond identity: sort the pieces to make ids reproducible.
    pieces = sorted(p for p in tok.get_vocab() if p not in specials)
    vocab = {p: i for i, p in enumerate(specials + pieces)}
    rebuilt = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    rebuilt.normalizer = tok.normalizer
    rebuilt.pre_tokenizer = tok.pre_tokenizer
    rebuilt.decoder = tok.decoder
    rebuilt.add_special_tokens(specials)
    return rebuilt


_BUILDERS = {"byte_bpe": _byte_bpe, "sp_bpe": _sp_bpe, "unigram": _unigram, "wordpiece": _wordpiece}


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """Train a tokenizer of family ``kind`` (one of :data:`KINDS`) on ``texts``.

    ``byte_bpe`` and ``sp_bpe`` are deterministic for the same texts and size. ``unigram`` (EM on
    parallel threads) and ``wordpiece`` (hash-seeded pair counting) can differ between processes
    in a few pieces near the vocabulary cut; ids are canonicalised within one vocabulary. Save a
    trained tokenizer when reproducibility matters.
    The result is a ``PreTrainedTokenizerFast``; ``save_pretrained`` it and load it back with
    ``AutoTokenizer``.
    """
    if kind not in _BUILDERS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(vocab_size, int) or vocab_size < 300:
        raise ValueError(f"vocab_size must be an int >= 300, got {vocab_size!r}")
    names = _SPECIALS[kind]
    specials = [names["unk_token"], names["bos_token"], names["eos_token"], names["pad_token"]]
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty")
    backend = _BUILDERS[kind](texts, vocab_size, specials)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=backend, **names)
    # Byte-level BPE (GPT-2 family) and WordPiece don't add BOS; the SentencePiece families do.
    wrapped.add_bos_token = False
    return wrapped
