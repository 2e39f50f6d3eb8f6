"""Teacher quality on the real tokenizers in ../shared/tokenizers (Llama-2, MPT, Qwen2): the
dummy-prefix rule, the vocab map's prefix rule, boundary positions and the mid-token teacher,
each against an independent Python reference; toy tokenizer pairs for the same properties."""

from __future__ import annotations

import os

import numpy as np
import pytest
from pipeline_helpers import ref_mid_token_positions, ref_mid_token_teacher, ref_target_prefix

from fusekern.align import span_align, span_align_ids_batch, token_bytes
from fusekern.align.vocab import canonical_target_ids
from fusekern.pipeline.align import (
    _Side,
    _TargetPrefix,
    boundary_positions,
    mid_token_positions,
    mid_token_teacher,
    strip_dummy_prefix,
)
from fusekern.pipeline.io import encode
from fusekern.testing.align_reference import toy_tokenizer

TOKS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "tokenizers")

SPACE_LED = [
    " Hello world",
    "  indented line\n",
    "    return x  # four spaces\n        deeper\n",
    "Hello world",
    "\tTabbed",
    "\n    def f(self):\n        pass\n",
    " 误差 and 력 ２",
    " ",
    "x",
]


@pytest.fixture(scope="module")
def real():
    if not os.path.isdir(os.path.join(TOKS, "llama2")):
        pytest.skip("../shared/tokenizers is absent")
    from transformers import AutoTokenizer

    return {n: AutoTokenizer.from_pretrained(os.path.join(TOKS, n)) for n in ("llama2", "mpt", "qwen2")}


def reference_strip(tok_bytes: list, ids: list, text: str) -> list:
    """Token bytes of ``ids``, the first token without one leading space when that space is not
    the text's: the text does not start with one, or the tokens hold one byte too many."""
    out = [tok_bytes[i] for i in ids]
    if out and out[0].startswith(b" "):
        if not text.startswith(" ") or len(b"".join(out)) == len(text.encode()) + 1:
            out[0] = out[0][1:]
    return out


def _flat(tok, texts):
    lists = encode(tok, texts)
    off = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in lists], out=off[1:])
    return np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]), off


def _stripped(tok, texts):
    side = _Side(tok)
    ids, off = _flat(tok, texts)
    return side, strip_dummy_prefix(ids, off, side, texts), off


def test_llama2_adds_the_prefix_even_to_space_led_text(real):
    tok = real["llama2"]
    ids = tok(" Hello world", add_special_tokens=False)["input_ids"]
    assert [token_bytes(tok)[i] for i in ids] == [b" ", b" Hello", b" world"]  # the genuine layout
    side, adj, _ = _stripped(tok, [" Hello world"])
    assert [side.bytes_ext[i] for i in adj] == [b"", b" Hello", b" world"]


@pytest.mark.parametrize("name", ["llama2", "mpt", "qwen2"])
def test_dummy_prefix_rule_matches_reference_and_gives_the_text(real, name, stdlib_pieces):
    tok = real[name]
    texts = SPACE_LED + stdlib_pieces
    side, adj, off = _stripped(tok, texts)
    table = token_bytes(tok)
    for d, text in enumerate(texts):
        ids = adj[off[d] : off[d + 1]]
        raw = [int(i) % side.size for i in ids]
        assert [side.bytes_ext[i] for i in ids] == reference_strip(table, raw, text), (name, text)
        assert b"".join(side.bytes_ext[i] for i in ids) == text.encode(), (name, text)


@pytest.fixture(scope="module")
def stdlib_pieces(real):
    """`fusekern split` pieces (block 512 under all three tokenizers) of stdlib code: indented
    lines start many of them with spaces."""
    from fusekern.demo.toy.corpus import stdlib_code
    from fusekern.pipeline import split_texts

    pieces = split_texts([c[:6000] for c in stdlib_code(3)], list(real.values()), 512)
    assert sum(p.startswith(" ") for p in pieces) >= 1
    return pieces


@pytest.mark.parametrize("source", ["mpt", "qwen2"])
def test_no_byte_equal_piece_falls_back_to_dtw(real, source, stdlib_pieces):
    texts = SPACE_LED + stdlib_pieces
    t_side, t_adj, t_off = _stripped(real["llama2"], texts)
    s_side, s_adj, s_off = _stripped(real[source], texts)
    groups = span_align_ids_batch(
        [s_adj[s_off[d] : s_off[d + 1]] for d in range(len(texts))],
        [t_adj[t_off[d] : t_off[d + 1]] for d in range(len(texts))],
        s_side.byte_vocab,
        t_side.byte_vocab,
        on_mismatch="none",
    )
    assert [texts[d] for d, g in enumerate(groups) if g is None] == []


def reference_boundary(a: list, b: list) -> list:
    """For each position t of b (token byte strings), the first position u of a whose context
    ends at the same byte offset and whose next token is zero-width exactly when b's is; None
    for b's last position or where a has no such position."""
    a_end = [len(b"".join(a[: u + 1])) for u in range(len(a))]
    b_end = [len(b"".join(b[: t + 1])) for t in range(len(b))]
    out = []
    for t in range(len(b) - 1):
        hits = [
            u for u in range(len(a) - 1) if a_end[u] == b_end[t] and (a[u + 1] == b"") == (b[t + 1] == b"")
        ]
        out.append(hits[0] if hits else None)
    return out + [None]


def _check_boundary(t_tok, s_tok, texts):
    t_side, t_adj, t_off = _stripped(t_tok, texts)
    s_side, s_adj, s_off = _stripped(s_tok, texts)
    got = boundary_positions(s_adj, s_off, s_side.lens, t_adj, t_off, t_side.lens)
    taught = total = one_to_one = 0
    for d in range(len(texts)):
        a = [s_side.bytes_ext[i] for i in s_adj[s_off[d] : s_off[d + 1]]]
        b = [t_side.bytes_ext[i] for i in t_adj[t_off[d] : t_off[d + 1]]]
        ref = reference_boundary(a, b)
        mine = [int(u) - s_off[d] if u >= 0 else None for u in got[t_off[d] : t_off[d + 1]]]
        assert mine == ref, texts[d]
        # boundary ⊇ span: every 1:1 group's position, with the same source position
        for a0, a1, b0, b1 in span_align(a, b):
            if a1 - a0 == 1 and b1 - b0 == 1 and a0 > 0 and b0 > 0:
                assert ref[b0 - 1] == a0 - 1
                one_to_one += 1
        taught += sum(u is not None for u in ref)
        total += len(ref) - 1
    assert taught >= one_to_one
    return taught / total, one_to_one / total


@pytest.mark.parametrize("source", ["mpt", "qwen2", "llama2"])
def test_boundary_positions_match_reference_on_real_tokenizers(real, source, stdlib_pieces):
    frac, span = _check_boundary(real["llama2"], real[source], SPACE_LED + stdlib_pieces)
    if source == "llama2":
        assert frac == span == 1.0  # identity: every position is a shared boundary and a 1:1 group
    else:
        # Measured on stdlib code: 0.78-0.85 (the 90% target is not reached: Llama-2 cuts
        # newline runs, digits and punctuation+newline inside MPT/Qwen2 tokens); a regression floor.
        assert frac >= 0.75 and frac > span + 0.05, (frac, span)


@pytest.mark.parametrize(("target", "source"), [("sp_bpe", "byte_bpe"), ("byte_bpe", "unigram")])
def test_boundary_positions_match_reference_on_toy_pairs(target, source):
    from fusekern.demo.toy.corpus import stdlib_prose

    texts = [t[:800] for t in stdlib_prose(12)[:12]] + [" leading space", "x"]
    _check_boundary(toy_tokenizer(target), toy_tokenizer(source), texts)
    assert _check_boundary(toy_tokenizer(target), toy_tokenizer(target), texts) == (1.0, 1.0)


def _flat_eos(tok, texts):
    """Ids of each text + EOS (the pipeline's tokenisation), flattened, and document offsets."""
    lists = [x + [tok.eos_token_id] for x in encode(tok, texts)]
    off = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in lists], out=off[1:])
    return np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]), off


def _check_mid_token(t_tok, s_tok, texts, seed: int = 0) -> float:
    """mid_token_positions and mid_token_teacher against the plain-Python reference, on
    synthetic top-k rows mixing the gold, source tokens that extend the bytes seen, and random
    ids (the gold left out of half of them). Returns the share of predicting positions taught by
    boundary or mid-token rule."""
    t_side, s_side = _Side(t_tok), _Side(s_tok)
    t_ids, t_off = _flat_eos(t_tok, texts)
    s_ids, s_off = _flat_eos(s_tok, texts)
    t_adj = strip_dummy_prefix(t_ids, t_off, t_side, texts)
    s_adj = strip_dummy_prefix(s_ids, s_off, s_side, texts)
    u, seen = mid_token_positions(s_adj, s_off, s_side.lens, t_adj, t_off, t_side.lens)
    bound = boundary_positions(s_adj, s_off, s_side.lens, t_adj, t_off, t_side.lens)
    assert not ((u >= 0) & (bound >= 0)).any()  # a position is inside a source token or on a boundary
    for d in range(len(texts)):
        a = [s_side.bytes_ext[i] for i in s_adj[s_off[d] : s_off[d + 1]]]
        b = [t_side.bytes_ext[i] for i in t_adj[t_off[d] : t_off[d + 1]]]
        mine = [
            (int(x) - s_off[d], int(r)) if x >= 0 else None
            for x, r in zip(u[t_off[d] : t_off[d + 1]], seen[t_off[d] : t_off[d + 1]])
        ]
        assert mine == ref_mid_token_positions(a, b), texts[d]
    # synthetic top-k rows at every source position
    rng = np.random.default_rng(seed)
    k = 6
    by_prefix: dict = {}
    for i, tb in enumerate(s_side.raw):
        for n in range(1, min(len(tb), 3) + 1):
            by_prefix.setdefault(tb[:n], []).append(i)
    top_ids = rng.integers(0, s_side.size, size=(s_ids.size, k))
    mid = np.flatnonzero(u >= 0)
    for j, t in enumerate(mid):
        gold, r = s_ids[u[t] + 1], int(seen[t])
        ext = by_prefix.get(s_side.raw[gold][: min(r, 3)], [])
        row = [gold] if j % 2 else []
        row += [int(x) for x in rng.choice(ext, size=min(3, len(ext)), replace=False)] if ext else []
        top_ids[u[t], : min(k, len(row))] = row[:k]
    top_log = np.sort(rng.normal(size=top_ids.shape), axis=1)[:, ::-1].astype(np.float16)
    gold_logit = rng.normal(size=s_ids.size).astype(np.float32)
    canon = canonical_target_ids(t_tok)
    got = mid_token_teacher(
        s_side,
        {},
        u[mid],
        seen[mid],
        s_ids,
        top_ids,
        top_log,
        gold_logit[u[mid]],
        _TargetPrefix(t_side, canon),
        k,
    )
    project = ref_target_prefix(t_side.raw, canon)
    n_taught = n_beyond = 0
    for j, t in enumerate(mid):
        v, r = int(u[t]), int(seen[t])
        gold = int(s_ids[v + 1])
        ids, logits, kept = ref_mid_token_teacher(
            s_side.raw[gold][:r], gold, top_ids[v], top_log[v], gold_logit[v], s_side.raw, project, k
        )
        n = len(ids)
        assert got.ids[j, :n].tolist() == ids and (got.ids[j, n:] == -1).all(), (t, ids)
        np.testing.assert_array_equal(got.logits[j, :n], np.array(logits, dtype=np.float16))
        assert got.beyond_gold[j] == any(c != gold for c in kept)
        n_taught += n > 0
        n_beyond += got.beyond_gold[j]
    assert n_taught == mid.size  # the gold always extends the bytes seen (and is always added here)
    last = np.zeros(t_ids.size, dtype=bool)
    last[t_off[1:] - 1] = True
    return ((bound >= 0).sum() + n_taught) / (~last).sum()


@pytest.mark.parametrize("source", ["mpt", "qwen2", "llama2"])
def test_mid_token_rule_matches_reference_on_real_tokenizers(real, source, stdlib_pieces):
    texts = SPACE_LED + stdlib_pieces[:4]
    covered = _check_mid_token(real["llama2"], real[source], texts)
    # Every predicting position is a shared boundary or inside a source token that is not a
    # document's first: with the gold always available, all but the few inside a first token.
    assert covered > 0.97, covered
    if source == "llama2":  # identity: no position inside a source token
        assert covered == 1.0


@pytest.mark.parametrize(("target", "source"), [("sp_bpe", "byte_bpe"), ("byte_bpe", "unigram")])
def test_mid_token_rule_matches_reference_on_toy_pairs(target, source):
    from fusekern.demo.toy.corpus import stdlib_prose

    texts = [t[:800] for t in stdlib_prose(8)[:8]] + [" leading space", "x"]
    assert _check_mid_token(toy_tokenizer(target), toy_tokenizer(source), texts) > 0.97
    assert _check_mid_token(toy_tokenizer(target), toy_tokenizer(target), texts) == 1.0


def test_coverage_per_rule_through_tiny_models_of_the_real_vocab_sizes(real, tmp_path):
    """benchmarks/teacher_quality.py's coverage part on two short pieces (prose, code): tiny
    random models with the real vocabulary sizes, extracted and aligned with positions="all"
    (whose meta also gives the span and boundary positions)."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "teacher_quality.py")
    spec = importlib.util.spec_from_file_location("teacher_quality", path)
    tq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tq)
    pieces = [
        "The quick brown fox, 1234 times.\n\nIt jumped: over 56 lazy dogs.\n",
        "def f(x):\n    return x + 1  # add 1\n\n\nclass A:\n    pass\n",
    ]
    res = tq.coverage(pieces, real, str(tmp_path), rules=("all",))["all"]
    for name in tq.SOURCES:
        # span's positions (1:1 groups) < boundary's (shared boundaries) < all's
        span, bound, every = (res[key][name] for key in ("one_to_one", "boundary", "aligned"))
        assert span < bound < every and every >= 0.9, (name, span, bound, every)
        assert res["mid_token"][name] == pytest.approx(every - bound, abs=1e-5)


def test_vocab_map_onto_llama2_never_invents_nul(real):
    """MPT → Llama-2: each source token maps to the target token with its bytes, else to the
    longest target token its bytes start with (characters Llama-2 lacks: their first UTF-8
    byte piece), never to <0x00> unless it is NUL."""
    from fusekern.align import map_vocab

    src, tgt = real["mpt"], real["llama2"]
    vm = map_vocab(src, tgt, threads=1)
    s_raw, t_raw = token_bytes(src), token_bytes(tgt)
    nul = tgt.convert_tokens_to_ids("<0x00>")
    onto_nul = [s for s in np.flatnonzero(vm.ids == nul)]
    assert all(s_raw[s] == b"\x00" for s in onto_nul)
    normal = np.flatnonzero(~vm.special & (vm.ids >= 0))
    for s in normal:
        t = t_raw[vm.ids[s]]
        if vm.exact[s]:
            assert t == s_raw[s]
        else:
            assert vm.prefix[s] and s_raw[s].startswith(t) and len(t) < len(s_raw[s])
    assert vm.counts()["mined"] == 0  # byte fallback: some prefix always exists
    t_set = set(t_raw)

    def lone_cjk(b: bytes) -> bool:
        text = b.decode("utf-8", errors="replace")
        return len(text) == 1 and "\u4e00" <= text <= "\u9fff"

    lacking = [s for s in normal if lone_cjk(s_raw[s]) and s_raw[s] not in t_set]
    assert lacking  # MPT has CJK characters that Llama-2 spells with byte pieces
    for s in lacking:
        assert tgt.convert_ids_to_tokens(int(vm.ids[s])) == f"<0x{s_raw[s][0]:02X}>"


def test_positions_option_is_one_contract(tmp_path):
    from fusekern.cli import build_parser
    from fusekern.pipeline.align import run_align
    from fusekern.pipeline.formats import POSITIONS

    assert POSITIONS == ("span", "boundary", "all")
    subcommands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command in ("align", "demo"):  # the CLI offers exactly the values run_align takes
        option = next(a for a in subcommands[command]._actions if a.dest == "positions")
        assert tuple(option.choices) == POSITIONS, command
    with pytest.raises(ValueError, match="positions must be one of"):
        run_align("unused", ["x"], ["unused"], str(tmp_path / "o"), positions="every")
    for positions in ("boundary", "all"):
        with pytest.raises(ValueError, match="needs mode='bytes'"):
            run_align("unused", ["x"], ["unused"], str(tmp_path / "o"), mode="fusellm", positions=positions)
