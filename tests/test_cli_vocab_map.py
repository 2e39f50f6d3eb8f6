"""``fusekern vocab-map`` end to end on locally trained tokenizers, and map_vocab's rules."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein as RFLev

from fusekern.align import VocabMap, map_vocab, token_bytes
from fusekern.align.vocab import surface_strings
from fusekern.cli import main
from fusekern.testing.align_reference import reference_vocab_rule, toy_tokenizer


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("toks")
    dirs = {}
    for kind in ("byte_bpe", "sp_bpe", "unigram"):
        d = root / kind
        toy_tokenizer(kind).save_pretrained(str(d))
        dirs[kind] = str(d)
    return dirs


def refined_pick(s: int, src, tgt, t_cands: list) -> int:
    """The target id the refinement should pick among ``t_cands`` (all with one surface):
    the source token's own string if the target has it with that surface, else the first
    non-``<0xNN>`` id, else the lowest."""
    t = tgt.get_vocab().get(src.convert_ids_to_tokens(s))
    if t in t_cands:
        return t
    plain = [c for c in t_cands if not re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", tgt.convert_ids_to_tokens(c))]
    return min(plain or t_cands)


def check_map(vmap: VocabMap, src, tgt, *, refined: bool = True):
    s_surf, t_surf = surface_strings(src), surface_strings(tgt)
    s_raw, t_raw = token_bytes(src), token_bytes(tgt)
    t_special = set(tgt.all_special_ids)
    cand = [t for t in range(len(t_surf)) if t not in t_special and t_surf[t]]
    todo = [s for s in range(len(s_surf)) if s not in set(src.all_special_ids) and s_surf[s]]
    ref_ids, ref_d, ref_prefix = reference_vocab_rule(
        [s_raw[s] for s in todo], [t_raw[t] for t in cand], RFLev.distance
    )
    ref = np.asarray(cand)[ref_ids]
    np.testing.assert_array_equal(vmap.prefix[todo], ref_prefix)
    if refined:  # same surface as brute force's pick, and the policy's choice among those ids
        by_surface: dict = {}
        for t in cand:
            by_surface.setdefault(t_surf[t], []).append(t)
        ref = np.asarray([refined_pick(s, src, tgt, by_surface[t_surf[r]]) for s, r in zip(todo, ref)])
    np.testing.assert_array_equal(vmap.ids[todo], ref)
    np.testing.assert_array_equal(vmap.distance[todo], ref_d)
    np.testing.assert_array_equal(vmap.exact[todo], ref_d == 0)
    # special tokens map by role
    for role in ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id"):
        sid = getattr(src, role)
        assert vmap.special[sid] and vmap.ids[sid] == getattr(tgt, role)


def test_cli_writes_npz_and_json(tok_dirs, tmp_path, capsys):
    out = str(tmp_path / "map.npz")
    rc = main(["vocab-map", "--source", tok_dirs["byte_bpe"], "--target", tok_dirs["sp_bpe"], "--out", out])
    assert rc == 0
    captured = capsys.readouterr()
    assert "exact" in captured.out and "MinED" in captured.out and out in captured.out
    assert "source tokens mapped" in captured.err
    vmap = VocabMap.load(out)
    src, tgt = toy_tokenizer("byte_bpe"), toy_tokenizer("sp_bpe")
    assert vmap.source_size == len(src) and vmap.target_size == len(tgt)
    check_map(vmap, src, tgt)
    c = vmap.counts()
    assert f"exact {c['exact']}" in captured.out and f"MinED {c['mined']}" in captured.out
    assert f"prefix {c['prefix']}" in captured.out and c["prefix"] > 0
    assert c["exact"] + c["prefix"] + c["mined"] + c["special"] + c["unmapped"] == vmap.source_size

    out_json = str(tmp_path / "map.json")
    rc = main(
        [
            "vocab-map",
            "--source",
            tok_dirs["byte_bpe"],
            "--target",
            tok_dirs["sp_bpe"],
            "--out",
            out_json,
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    vj = VocabMap.load(out_json)
    for field in ("ids", "distance", "exact", "special"):
        np.testing.assert_array_equal(getattr(vj, field), getattr(vmap, field))


def test_cli_creates_missing_output_directory(tok_dirs, tmp_path, capsys):
    # README recipe: `fusekern vocab-map ... --out $W/vocab/NAME.npz` into a fresh $W/vocab/.
    out = tmp_path / "work" / "vocab" / "src.npz"
    argv = ["vocab-map", "--source", tok_dirs["byte_bpe"], "--target", tok_dirs["sp_bpe"], "--out", str(out)]
    rc = main(argv)
    assert rc == 0, capsys.readouterr().err
    assert VocabMap.load(str(out)).source_size == len(toy_tokenizer("byte_bpe"))


def test_map_vocab_other_families():
    src, tgt = toy_tokenizer("unigram"), toy_tokenizer("byte_bpe")
    vmap = map_vocab(src, tgt, threads=2)
    check_map(vmap, src, tgt)
    assert vmap.counts()["exact"] > 0.3 * vmap.source_size
    raw = map_vocab(src, tgt, threads=2, refine=False)  # the rule alone: lowest id among equal bytes
    check_map(raw, src, tgt, refined=False)
    np.testing.assert_array_equal(raw.distance, vmap.distance)


def test_byte_fallback_duplicates_go_to_the_learned_token():
    # sp_bpe's <0xNN> pieces come first in its vocabulary and share surfaces with learned
    # single characters: the rule alone (lowest id) picks the byte piece, the refined map the
    # learned token.
    src, tgt = toy_tokenizer("byte_bpe"), toy_tokenizer("sp_bpe")
    raw, vmap = map_vocab(src, tgt, refine=False), map_vocab(src, tgt)
    t_tokens = tgt.convert_ids_to_tokens(list(range(len(tgt))))
    byte_piece = np.asarray([re.fullmatch(r"<0x[0-9A-F]{2}>", t) is not None for t in t_tokens])
    moved = (raw.ids >= 0) & byte_piece[np.maximum(raw.ids, 0)] & ~byte_piece[np.maximum(vmap.ids, 0)]
    assert moved.sum() >= 10
    check_map(vmap, src, tgt)


def test_map_onto_itself_is_identity_with_byte_fallback_pieces():
    from fusekern.demo.toy.corpus import stdlib_prose
    from fusekern.demo.toy.tokenizers import train_tokenizer

    tok = train_tokenizer("sp_bpe", stdlib_prose(max_docs=300), vocab_size=800)
    strings = tok.convert_ids_to_tokens(list(range(len(tok))))
    pieces = {i for i, t in enumerate(strings) if re.fullmatch(r"<0x[0-9A-F]{2}>", t)}
    surf = surface_strings(tok)
    learned = {surf[i] for i in range(len(tok)) if i not in pieces and surf[i]}
    assert len(pieces) == 256 and sum(surf[i] in learned for i in pieces) >= 20  # real duplicates
    vmap = map_vocab(tok, tok)
    np.testing.assert_array_equal(vmap.ids, np.arange(len(tok)))
    assert vmap.exact[~vmap.special].all() and (vmap.distance[~vmap.special] == 0).all()
    assert not (map_vocab(tok, tok, refine=False).ids == np.arange(len(tok))).all()


def test_cli_and_pipeline_write_identical_maps(tok_dirs, tmp_path, capsys):
    from fusekern.pipeline import run_vocab_map
    from fusekern.pipeline.vocab import load_vocab_map

    for src, tgt in (("byte_bpe", "sp_bpe"), ("sp_bpe", "unigram")):
        for ext in ("json", "npz"):
            cli_out, pipe_out = str(tmp_path / f"cli-{src}.{ext}"), str(tmp_path / f"pipe-{src}.{ext}")
            argv = ["vocab-map", "--source", tok_dirs[src], "--target", tok_dirs[tgt], "--out", cli_out]
            assert main(argv) == 0
            assert run_vocab_map(tok_dirs[src], tok_dirs[tgt], pipe_out) == pipe_out
            a, b = VocabMap.load(cli_out), VocabMap.load(pipe_out)
            for field in ("ids", "distance", "exact", "special"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
            assert a.counts() == b.counts()
            if ext == "json":
                assert open(cli_out, "rb").read() == open(pipe_out, "rb").read()
            else:
                with np.load(cli_out) as za, np.load(pipe_out) as zb:
                    assert sorted(za.files) == sorted(zb.files) and str(za["meta"]) == str(zb["meta"])
        check_map(a, toy_tokenizer(src), toy_tokenizer(tgt))
    capsys.readouterr()

    # load_vocab_map: checks sizes; re-refining a refined map changes nothing; an unrefined
    # file (older fusekern) is brought up to date
    s_tok, t_tok = toy_tokenizer("byte_bpe"), toy_tokenizer("sp_bpe")
    refined = map_vocab(s_tok, t_tok)
    old = map_vocab(s_tok, t_tok, refine=False).save(str(tmp_path / "old.npz"))
    new = refined.save(str(tmp_path / "new.npz"))
    for path in (old, new):
        np.testing.assert_array_equal(load_vocab_map(path, s_tok, t_tok).ids, refined.ids)
    bigger = copy.deepcopy(t_tok)
    bigger.add_tokens(["zqzqx"])
    with pytest.raises(ValueError, match="source tokenizer has 1001"):
        load_vocab_map(new, bigger, t_tok)
    with pytest.raises(ValueError, match="target tokenizer has 1001"):
        load_vocab_map(new, s_tok, bigger)


def test_load_vocab_map_refuses_another_sources_map(tmp_path):
    # Same sizes, other tokenizer (e.g. --vocab-maps in another order than --sources): the sizes
    # pass, so the exact entries must be checked, else the top-k ids are mapped silently wrong.
    from fusekern.pipeline.vocab import load_vocab_map

    bpe, uni, tgt = toy_tokenizer("byte_bpe"), toy_tokenizer("unigram"), toy_tokenizer("sp_bpe")
    assert len(bpe) == len(uni)
    path = map_vocab(bpe, tgt).save(str(tmp_path / "bpe.npz"))
    assert load_vocab_map(path, bpe, tgt).source_size == len(bpe)
    with pytest.raises(ValueError, match="was not made for these tokenizers"):
        load_vocab_map(path, uni, tgt)


def test_special_without_counterpart(tmp_path):
    from transformers import AutoTokenizer

    toy_tokenizer("sp_bpe").save_pretrained(str(tmp_path))
    src = AutoTokenizer.from_pretrained(str(tmp_path))
    src.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    tgt = toy_tokenizer("byte_bpe")
    vmap = map_vocab(src, tgt)
    tid = src.convert_tokens_to_ids("<|tool|>")
    assert vmap.special[tid] and vmap.ids[tid] == -1 and vmap.counts()["unmapped"] == 1
    # the same special string in the target maps by content
    vmap2 = map_vocab(tgt, tgt)
    np.testing.assert_array_equal(vmap2.ids, np.arange(len(tgt)))


def test_cli_errors(tok_dirs, tmp_path, capsys):
    rc = main(
        ["vocab-map", "--source", str(tmp_path / "nope"), "--target", tok_dirs["sp_bpe"], "--out", "x.npz"]
    )
    assert rc == 2 and "--source: no such file or directory" in capsys.readouterr().err
    rc = main(
        [
            "vocab-map",
            "--source",
            tok_dirs["sp_bpe"],
            "--target",
            tok_dirs["sp_bpe"],
            "--out",
            "x.npz",
            "--threads",
            "0",
        ]
    )
    assert rc == 2 and "--threads must be >= 1" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(str(bad), ids=np.zeros(2), meta=np.array('{"format": "other"}'))
    with pytest.raises(ValueError, match="not a fusekern vocabulary map"):
        VocabMap.load(str(bad))


def test_console_command(tok_dirs, tmp_path):
    out = str(tmp_path / "m.npz")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusekern",
            "vocab-map",
            "--source",
            tok_dirs["unigram"],
            "--target",
            tok_dirs["sp_bpe"],
            "--out",
            out,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "exact" in proc.stdout
    assert VocabMap.load(out).source_size == len(toy_tokenizer("unigram"))


def test_load_vocab_map_uses_a_fingerprinted_refined_map_as_saved(tok_dirs, tmp_path, monkeypatch, capsys):
    """A map from run_vocab_map records both fingerprints and the refinement it carries: align
    loads it as saved (no second refinement, no surface check: a per-call cost of the align
    stage). A map lacking either is refined again and its exact entries are checked."""
    import fusekern.align.vocab as vocab_mod
    from fusekern.pipeline import run_vocab_map
    from fusekern.pipeline.vocab import load_vocab_map

    s_tok, t_tok = toy_tokenizer("byte_bpe"), toy_tokenizer("sp_bpe")
    path = run_vocab_map(tok_dirs["byte_bpe"], tok_dirs["sp_bpe"], str(tmp_path / "m.npz"))
    capsys.readouterr()
    saved = VocabMap.load(path)
    assert saved.refined == vocab_mod.REFINE_VERSION
    assert {"source_vocab_sha256", "target_vocab_sha256"} <= set(saved.tokenizers)
    want = map_vocab(s_tok, t_tok)
    np.testing.assert_array_equal(saved.ids, want.ids)

    def no_refine(*args, **kwargs):
        raise AssertionError("refined again")

    monkeypatch.setattr(vocab_mod, "refine_vocab_map", no_refine)
    got = load_vocab_map(path, s_tok, t_tok)
    for field in ("ids", "distance", "exact", "special", "prefix"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    bigger = copy.deepcopy(s_tok)
    bigger.add_tokens(["zqzqx"])  # the fast path still checks what the fingerprints would
    with pytest.raises(ValueError, match="another source tokenizer"):
        load_vocab_map(path, bigger, t_tok)

    # written by an older fusekern (no refinement recorded), or without fingerprints: refined again
    older = VocabMap(**{**saved.__dict__, "refined": 0}).save(str(tmp_path / "older.npz"))
    bare = VocabMap(**{**saved.__dict__, "tokenizers": None}).save(str(tmp_path / "bare.npz"))
    for other in (older, bare):
        with pytest.raises(AssertionError, match="refined again"):
            load_vocab_map(other, s_tok, t_tok)
    monkeypatch.undo()
    for other in (older, bare):
        np.testing.assert_array_equal(load_vocab_map(other, s_tok, t_tok).ids, want.ids)
    assert VocabMap.load(str(tmp_path / "older.npz")).refined == 0
