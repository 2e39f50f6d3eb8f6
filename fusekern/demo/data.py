"""The demo's corpus: two stdlib domains cut into pretraining, fusion and held-out splits.

A document's split is decided by a hash of its text, so duplicates (the same docstring in two
places) always land in the same split and nothing held out is ever trained on.
"""

from __future__ import annotations

import hashlib

from fusekern.demo.config import DOMAINS, DemoConfig
from fusekern.demo.toy import corpus

# hash bucket (of 20) -> split: 10% held out, 5% validation, 25% fusion corpus, 60% pretraining
# pool. Validation is the fusion corpus's sibling: choices (a rule, a recipe) are made on it, so
# the held-out numbers the README reports stay untouched by them.
_HELD_OUT, _VALIDATION, _FUSION = range(0, 2), range(2, 3), range(3, 8)


def _bucket(text: str) -> int:
    return int.from_bytes(hashlib.md5(text.encode("utf-8")).digest()[:4], "little") % 20


def _order(docs: list) -> list:
    """Deterministic shuffle (by content hash), so every slice mixes modules and help topics."""
    return sorted(docs, key=lambda d: hashlib.md5(d.encode("utf-8")).digest())


def _chunks(text: str, max_chars: int) -> list:
    """``text`` cut after newlines into consecutive chunks of at most ``max_chars`` (a line longer
    than that is cut where it must)."""
    out, start = [], 0
    while len(text) - start > max_chars:
        cut = text.rfind("\n", start, start + max_chars)
        end = cut + 1 if cut > start else start + max_chars
        out.append(text[start:end])
        start = end
    out.append(text[start:])
    return [c for c in out if c.strip()]


def _take(docs: list, budget: int, max_doc_chars: int) -> list:
    """Up to ``budget`` characters of chunks (``max_doc_chars`` at most) of ``docs``, the chunks
    shuffled by content hash so that a budget samples many documents (code files are long)."""
    return cap(_order([c for d in docs for c in _chunks(d, max_doc_chars)]), budget)


def cap(docs: list, chars: int) -> list:
    """The leading ``docs`` until ``chars`` characters are reached (the last one may cross it)."""
    out, used = [], 0
    for d in docs:
        if used >= chars:
            break
        out.append(d)
        used += len(d)
    return out


def domain_docs() -> dict:
    """All documents per domain, deterministically shuffled."""
    return {"prose": _order(corpus.stdlib_prose()), "code": _order(corpus.stdlib_code())}


def split_corpus(cfg: DemoConfig) -> dict:
    """``{"pretrain"|"fusion"|"validation"|"held_out"|"tokenizer": {domain: [text, ...]}}``.

    held_out, validation and fusion hold up to ``cfg.held_out_chars`` / ``cfg.validation_chars``
    / ``cfg.fusion_chars`` characters per domain, as chunks of at most ``cfg.max_doc_chars``
    sampled across their documents; pretrain holds the rest of the pool (whole documents);
    tokenizer is a ``cfg.tokenizer_chars`` sample of pretrain. Chunks of one document never
    straddle two splits.
    """
    out: dict = {"pretrain": {}, "fusion": {}, "validation": {}, "held_out": {}, "tokenizer": {}}
    taken = (*_HELD_OUT, *_VALIDATION, *_FUSION)
    for domain, docs in domain_docs().items():
        held = [d for d in docs if _bucket(d) in _HELD_OUT]
        valid = [d for d in docs if _bucket(d) in _VALIDATION]
        fusion = [d for d in docs if _bucket(d) in _FUSION]
        pool = [d for d in docs if _bucket(d) not in taken]
        out["held_out"][domain] = _take(held, cfg.held_out_chars, cfg.max_doc_chars)
        out["validation"][domain] = _take(valid, cfg.validation_chars, cfg.max_doc_chars)
        out["fusion"][domain] = _take(fusion, cfg.fusion_chars, cfg.max_doc_chars)
        out["pretrain"][domain] = pool
        out["tokenizer"][domain] = _take(pool, cfg.tokenizer_chars, cfg.max_doc_chars)
    for split in out.values():
        assert set(split) == set(DOMAINS)
    return out
