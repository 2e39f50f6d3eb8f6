"""The surface bytes of every vocabulary id, read from the tokenizer's own definition.

For a fast tokenizer (``tokenizers`` backend) the table is derived from its JSON:

- the *model* gives the token strings (BPE / WordPiece / WordLevel vocab, Unigram pieces),
  the unknown token, and ``byte_fallback`` (``<0xNN>`` pieces are single bytes);
- the *decoder* says how a token string becomes text, applied per token: ``ByteLevel``
  inverts GPT-2's byte-to-unicode table ('Ġ' → b' ', 'Ċ' → b'\\n', and partial UTF-8 bytes
  come back as the raw bytes), ``Metaspace``/``Replace`` turn '▁' into a space,
  ``ByteFallback`` maps ``<0xNN>`` to one byte, ``WordPiece`` drops the '##' of a
  continuation and gives a word-initial piece a leading space, ``BPEDecoder`` turns the
  end-of-word suffix into a space, ``CTC`` drops padding;
- *added tokens*: special ones → ``b""``; non-special ones are matched verbatim in the input,
  so they give their content's UTF-8.

Sequence-level decoder steps (``Strip``, ``Fuse``, WordPiece ``cleanup``, the Metaspace rule
that drops the first token's leading space) are **not** applied: a token keeps its space.
So for a tokenizer that adds a SentencePiece *dummy prefix* (see :func:`adds_dummy_prefix`),
joining the bytes of ``tokenizer(text)`` gives ``b" " + text`` — also when ``text`` already
starts with a space if the prefix comes from a ``Prepend('▁')`` normaliser (genuine Llama-2 /
OpenLLaMA: ``" Hello world"`` → ``[b" ", b" Hello", b" world"]``), but not with a Metaspace
pre-tokenizer, which adds none to a text that starts with one. Which case holds is decided per
document from the bytes (:func:`fusekern.pipeline.align.strip_dummy_prefix`). Otherwise the
join equals the text after the tokenizer's normaliser (NFKC, lowercasing, …). WordPiece does
not keep whitespace, so only the non-whitespace bytes match there.

Slow (Python) tokenizers are read through their own tables: a ``byte_decoder`` (GPT-2 style)
or a ``sp_model`` (SentencePiece: byte pieces, control/unknown pieces, '▁'); otherwise each
token is converted with ``convert_tokens_to_string`` next to an anchor token so that a
leading space or a '##' continuation shows, and tokens that this leaves empty or invalid are
resolved as single bytes when encoding one character gives one such token per UTF-8 byte
(byte-level tokenizers like ByT5).
"""

from __future__ import annotations

import json
import re
import warnings
from functools import lru_cache
from typing import Any, Callable, Union

__all__ = ["token_bytes", "adds_dummy_prefix", "bytes_to_unicode"]

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")

Piece = Union[str, bytes]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict:
    """GPT-2's reversible byte → printable character table (the ByteLevel alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict:
    return {c: b for b, c in bytes_to_unicode().items()}


def _to_bytes(piece: Piece) -> bytes:
    return piece if isinstance(piece, bytes) else piece.encode("utf-8")


# ---------------------------------------------------------------- decoder steps (per token)


@lru_cache(maxsize=1)
def _byte_level_fast() -> tuple:
    """(str.translate table: ByteLevel character → the code point of its byte, a regex finding
    any character outside the ByteLevel alphabet)."""
    to_byte = _unicode_to_byte()
    alphabet = "".join(sorted(to_byte))
    return {ord(c): b for c, b in to_byte.items()}, re.compile(f"[^{re.escape(alphabet)}]")


def _byte_level(piece: Piece) -> Piece:
    if isinstance(piece, bytes):
        return piece
    table, foreign = _byte_level_fast()
    if foreign.search(piece) is None:  # every character is a byte: one C-level pass
        return piece.translate(table).encode("latin-1")
    table = _unicode_to_byte()
    out = bytearray()
    for ch in piece:
        b = table.get(ch)
        if b is None:  # not a byte-level character (e.g. an added piece): keep its UTF-8
            out += ch.encode("utf-8")
        else:
            out.append(b)
    return bytes(out)


def _byte_fallback(piece: Piece) -> Piece:
    if isinstance(piece, str):
        m = _BYTE_PIECE.match(piece)
        if m:
            return bytes([int(m.group(1), 16)])
    return piece


def _replace(pattern: dict, content: str) -> Callable[[Piece], Piece]:
    if "String" in pattern:
        old = pattern["String"]
        return lambda p: p.replace(old, content) if isinstance(p, str) else p
    regex = re.compile(pattern["Regex"])
    return lambda p: regex.sub(content, p) if isinstance(p, str) else p


def _wordpiece(prefix: str) -> Callable[[Piece], Piece]:
    def step(p: Piece) -> Piece:
        if not isinstance(p, str):
            return p
        return p[len(prefix) :] if p.startswith(prefix) else " " + p

    return step


def _decoder_steps(spec: dict | None, backend: Any) -> list:
    """Per-token functions for a decoder spec (in order). Unknown decoders fall back to the
    backend's own decoder run on the single token."""
    if spec is None:
        return []
    kind = spec.get("type")
    if kind == "Sequence":
        steps = []
        for sub in spec.get("decoders", []):
            steps += _decoder_steps(sub, backend)
        return steps
    if kind == "ByteLevel":
        return [_byte_level]
    if kind == "ByteFallback":
        return [_byte_fallback]
    if kind in ("Fuse", "Strip"):
        return []  # sequence-level: joining pieces / dropping the dummy-prefix space
    if kind == "Replace":
        return [_replace(spec["pattern"], spec["content"])]
    if kind == "Metaspace":
        rep = spec.get("replacement", "▁")
        return [lambda p: p.replace(rep, " ") if isinstance(p, str) else p]
    if kind == "WordPiece":
        return [_wordpiece(spec.get("prefix", "##"))]
    if kind == "BPEDecoder":
        suffix = spec.get("suffix", "</w>")
        return [lambda p: p.replace(suffix, " ") if isinstance(p, str) else p]
    if kind == "CTC":
        pad, delim = spec.get("pad_token", "<pad>"), spec.get("word_delimiter_token", "|")
        return [lambda p: p if not isinstance(p, str) else ("" if p == pad else p.replace(delim, " "))]
    warnings.warn(
        f"token_bytes: decoder type {kind!r} is not interpreted; decoding each token on its own",
        stacklevel=3,
    )
    return [lambda p: backend.decoder.decode([p]) if isinstance(p, str) else p]


# ---------------------------------------------------------------- fast tokenizers


def _backend_of(tokenizer: Any) -> Any:
    """The ``tokenizers.Tokenizer`` behind a tokenizer, or None for a slow one."""
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - tokenizers is a dependency
        Tokenizer = ()
    if Tokenizer and isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        backend = getattr(tokenizer, "_tokenizer", None)
    return backend if (Tokenizer and isinstance(backend, Tokenizer)) else None


def _model_pieces(model: dict) -> tuple:
    """(id → piece, unknown-token id or None) from the model part of tokenizer.json."""
    kind = model.get("type")
    vocab = model.get("vocab")
    unk_id = None
    if kind == "Unigram":
        pieces = {i: p[0] for i, p in enumerate(vocab or [])}
        unk_id = model.get("unk_id")
    elif isinstance(vocab, dict):
        pieces = {int(i): p for p, i in vocab.items()}
        unk = model.get("unk_token")
        if unk is not None and unk in vocab:
            unk_id = vocab[unk]
    else:
        raise ValueError(f"token_bytes: unsupported tokenizer model {kind!r}")
    return pieces, unk_id


def _spec(backend: Any) -> dict:
    """The backend's ``tokenizer.json`` as a dict, without the BPE ``merges`` where they can be
    left out (nothing here reads them; on a 150k vocabulary they are most of the parsing time).
    The serialisation ends with the model, whose last key is ``merges``; ``,"merges":[`` can
    only be that key (a quote inside a JSON string is escaped). Anything else parses it whole."""
    text = backend.to_str()
    cut = text.rfind(',"merges":[')
    if cut > 0:
        try:
            spec = json.loads(text[:cut] + "}}")
        except ValueError:
            spec = None
        model = spec.get("model") if isinstance(spec, dict) else None
        needed = {"added_tokens", "decoder", "normalizer", "pre_tokenizer"}
        if isinstance(model, dict) and "vocab" in model and needed <= spec.keys():
            return spec
    return json.loads(text)


def _from_backend(backend: Any) -> list:
    spec = _spec(backend)
    model = spec.get("model") or {}
    pieces, unk_id = _model_pieces(model)
    added = spec.get("added_tokens") or []
    size = max([*pieces.keys(), *(a["id"] for a in added), -1]) + 1
    steps = _decoder_steps(spec.get("decoder"), backend)
    if model.get("byte_fallback") and _byte_fallback not in steps:
        steps = [_byte_fallback, *steps]
    table = [b""] * size
    for i, piece in pieces.items():
        p: Piece = piece
        for step in steps:
            p = step(p)
        table[i] = _to_bytes(p)
    if unk_id is not None and 0 <= unk_id < size:
        table[unk_id] = b""
    for a in added:
        table[a["id"]] = b"" if a.get("special") else a["content"].encode("utf-8")
    return table


# ---------------------------------------------------------------- slow tokenizers


def _from_slow(tokenizer: Any) -> list:
    size = len(tokenizer)
    ids = list(range(size))
    tokens = tokenizer.convert_ids_to_tokens(ids)
    byte_decoder = getattr(tokenizer, "byte_decoder", None)
    sp = getattr(tokenizer, "sp_model", None)
    table = [b""] * size
    if isinstance(byte_decoder, dict):
        for i, tok in enumerate(tokens):
            if tok is None:
                continue
            if all(c in byte_decoder for c in tok):
                table[i] = bytes(byte_decoder[c] for c in tok)
            else:  # an added piece written as plain text
                table[i] = tok.encode("utf-8")
    elif sp is not None and hasattr(sp, "IdToPiece"):
        n_sp = sp.GetPieceSize()
        for i, tok in enumerate(tokens):
            if i < n_sp and (sp.IsControl(i) or sp.IsUnknown(i) or sp.IsUnused(i)):
                continue
            if i < n_sp and sp.IsByte(i):
                table[i] = _byte_fallback(sp.IdToPiece(i))  # type: ignore[assignment]
            elif tok is not None:
                table[i] = _to_bytes(_byte_fallback(tok.replace("▁", " ")))
    else:
        table = _probe_slow(tokenizer, tokens)
        _recover_bytes(tokenizer, table, tokens)
    for i, tok in enumerate(tokens):  # non-special added tokens are matched verbatim
        if tok is not None and tok in getattr(tokenizer, "added_tokens_encoder", {}):
            table[i] = tok.encode("utf-8")
    return table


def _probe_slow(tokenizer: Any, tokens: list) -> list:
    """convert_tokens_to_string of [anchor, token] minus that of [anchor]: shows a token's
    leading space (word-initial WordPiece, '▁') and removes a '##' continuation marker."""
    anchor = next((t for t in tokens if t and t.isascii() and t.isalpha() and len(t) == 1), None)
    base = tokenizer.convert_tokens_to_string([anchor]) if anchor is not None else ""
    table = []
    for tok in tokens:
        if tok is None:
            table.append(b"")
            continue
        if anchor is None:
            table.append(tokenizer.convert_tokens_to_string([tok]).encode("utf-8"))
            continue
        both = tokenizer.convert_tokens_to_string([anchor, tok])
        s = both[len(base) :] if both.startswith(base) else tokenizer.convert_tokens_to_string([tok])
        table.append(s.encode("utf-8"))
    return table


def _utf8_probes() -> list:
    """Characters whose UTF-8 encodings use every lead and continuation byte."""
    probes = [bytes([0xC2, c]).decode() for c in range(0x80, 0xC0)]
    probes += [bytes([lead, 0x80]).decode() for lead in range(0xC2, 0xE0)]
    probes += [bytes([lead, 0xA0 if lead == 0xE0 else 0x80, 0x80]).decode() for lead in range(0xE0, 0xF0)]
    probes += [
        bytes([lead, 0x90 if lead == 0xF0 else 0x80, 0x80, 0x80]).decode() for lead in range(0xF0, 0xF5)
    ]
    return probes


def _recover_bytes(tokenizer: Any, table: list, tokens: list) -> None:
    """Byte-level slow tokenizers whose string conversion drops partial UTF-8 (ByT5 style):
    encode single characters; when a character comes back as exactly one unresolved token per
    UTF-8 byte, those tokens are those bytes."""
    unresolved = {i for i, b in enumerate(table) if (not b or b"\xef\xbf\xbd" in b) and tokens[i] is not None}
    if not unresolved:
        return
    for ch in _utf8_probes():
        try:
            ids = tokenizer.encode(ch, add_special_tokens=False)
        except Exception:  # a tokenizer that cannot encode this character: nothing to learn
            continue
        raw = ch.encode("utf-8")
        if len(ids) == len(raw) and all(i in unresolved for i in ids):
            for i, byte in zip(ids, raw):
                table[i] = bytes([byte])


# ---------------------------------------------------------------- public


def _special_ids(tokenizer: Any) -> set:
    ids = set()
    for i in getattr(tokenizer, "all_special_ids", None) or []:
        if isinstance(i, int):
            ids.add(i)
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for i, tok in decoder.items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def token_bytes(tokenizer: Any) -> list[bytes]:
    """The surface bytes each vocabulary id contributes to decoded text (see module doc).

    Accepts a ``transformers`` tokenizer (fast or slow) or a ``tokenizers.Tokenizer``. The list
    is indexed by token id and covers every id up to the largest one (gaps → ``b""``).
    Special tokens (and the unknown token) give ``b""``.
    """
    backend = _backend_of(tokenizer)
    if backend is not None:
        table = _from_backend(backend)
    elif hasattr(tokenizer, "convert_ids_to_tokens") and hasattr(tokenizer, "__len__"):
        table = _from_slow(tokenizer)
    else:
        raise TypeError(
            "tokenizer must be a transformers tokenizer or a tokenizers.Tokenizer, "
            f"got {type(tokenizer).__name__}"
        )
    for i in _special_ids(tokenizer):
        if 0 <= i < len(table):
            table[i] = b""
    return table


def _pre_tokenizer_prefix(spec: dict | None) -> bool:
    if not spec:
        return False
    kind = spec.get("type")
    if kind == "Sequence":
        return any(_pre_tokenizer_prefix(s) for s in spec.get("pretokenizers", []))
    if kind == "Metaspace":
        scheme = spec.get("prepend_scheme")
        if scheme is None:
            return bool(spec.get("add_prefix_space", True))
        return scheme in ("always", "first")
    if kind == "ByteLevel":
        return bool(spec.get("add_prefix_space", False))
    return False


def _normalizer_prefix(spec: dict | None) -> bool:
    if not spec:
        return False
    if spec.get("type") == "Sequence":
        return any(_normalizer_prefix(s) for s in spec.get("normalizers", []))
    return spec.get("type") == "Prepend" and spec.get("prepend", "").strip(" ▁") == ""


def adds_dummy_prefix(tokenizer: Any) -> bool:
    """Whether encoding prepends a space to the text (SentencePiece "dummy prefix": a
    Metaspace pre-tokenizer with ``prepend_scheme`` 'always'/'first', a ``Prepend('▁')``
    normaliser, or ByteLevel ``add_prefix_space``). Then the joined :func:`token_bytes` of
    an encoding start with that space — with a ``Prepend`` normaliser even when the text
    already starts with one, so whether a first token's space is the text's own cannot be told
    from this flag: the pipeline decides it per document from the bytes."""
    backend = _backend_of(tokenizer)
    if backend is None:
        return bool(getattr(tokenizer, "add_prefix_space", False) or getattr(tokenizer, "sp_model", None))
    spec = _spec(backend)
    return _pre_tokenizer_prefix(spec.get("pre_tokenizer")) or _normalizer_prefix(spec.get("normalizer"))
