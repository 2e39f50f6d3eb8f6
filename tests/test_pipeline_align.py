"""align: a hand-checked case, the target as its own source, a pure-Python reference of both
modes on three tokenizer families, num_proc, determinism, vocab maps, bad inputs."""

from __future__ import annotations

import json
import os

import datasets
import numpy as np
import pyarrow as pa
import pytest
from pipeline_helpers import (
    TARGET,
    TOP_K,
    ref_mid_token_positions,
    ref_mid_token_teacher,
    ref_target_prefix,
)
from transformers import PreTrainedTokenizerFast

from fusekern.align import dtw, token_bytes
from fusekern.align.vocab import canonical_target_ids, surface_strings
from fusekern.pipeline import build_vocab_map, load_extract, run_align, run_extract, run_vocab_map
from fusekern.pipeline.extract import ExtractRow, _record_batch, extract_features, shard_name
from fusekern.pipeline.formats import EXTRACT_FORMAT
from fusekern.pipeline.io import text_hash

# ------------------------------------------------------------------------------ hand-made case

pytest_plugins = ["pipeline_fixtures"]  # shared, session-cached fixtures


def _hand_tokenizer(tokens: list, merges: list) -> PreTrainedTokenizerFast:
    """BPE over the whole text (no pre-tokenizer), ids: <unk>=0, </s>=1, then ``tokens``."""
    from tokenizers import Tokenizer, models

    vocab = {"<unk>": 0, "</s>": 1}
    for t in tokens:
        vocab[t] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.add_special_tokens(["<unk>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")


def _fake_extract(path, tok, text, ids, top_ids, top_logits, ce, vocab_size, lse=None):
    """An extract directory written by hand (what run_extract would write for these numbers;
    ``lse=None``: the format without the logsumexp column)."""
    k = top_ids.shape[1]
    shard = os.path.join(path, shard_name(0, 1))
    os.makedirs(shard)
    meta = {
        "format": EXTRACT_FORMAT if lse is not None else "fusekern-extract/1",
        "num_docs": 1,
        "num_shards": 1,
        "top_k": k,
        "vocab_size": vocab_size,
        "tokenizer_size": len(tok),
        "eos_token_id": tok.eos_token_id,
    }
    with open(os.path.join(path, "extract_meta.json"), "w") as f:
        json.dump(meta, f)
    tok.save_pretrained(os.path.join(path, "tokenizer"))
    row = ExtractRow(
        0,
        text_hash(text),
        np.array(ids, np.int32),
        np.array(top_ids, np.int32),
        np.array(top_logits, np.float16),
        np.array(ce, np.float32),
        float(np.mean(ce[:-1])),
        None if lse is None else np.array(lse, np.float32),
    )
    schema = extract_features(k, logsumexp=lse is not None).arrow_schema
    with pa.OSFile(os.path.join(shard, "data.arrow"), "wb") as sink, pa.ipc.new_stream(sink, schema) as w:
        w.write_batch(_record_batch(schema, k, [row]))
    with open(os.path.join(shard, "shard.json"), "w") as f:
        json.dump({"shard": 0}, f)
    return path


@pytest.fixture(scope="module")
def hand_case(tmp_path_factory):
    """Text "abccxyz". Target: ab|cc|xyz|</s> (ids 8, 9, 11, 1). Source: ab|cc|xy|z|</s>
    (ids 8, 9, 10, 7, 1; same strings as the target for ids 0..10, so the vocab map is the
    identity there), plus a token "q" (id 11) that MinED sends to target "a" (distance 1 to
    every single letter, lowest id wins) and one padded logit row (id 12, no token)."""
    root = tmp_path_factory.mktemp("hand")
    text = "abccxyz"
    letters = ["a", "b", "c", "x", "y", "z", "ab", "cc", "xy"]
    tgt = _hand_tokenizer([*letters, "xyz"], [("a", "b"), ("c", "c"), ("x", "y"), ("xy", "z")])
    src = _hand_tokenizer([*letters, "q"], [("a", "b"), ("c", "c"), ("x", "y")])
    assert tgt(text, add_special_tokens=False)["input_ids"] == [8, 9, 11]
    assert src(text, add_special_tokens=False)["input_ids"] == [8, 9, 10, 7]
    top_ids = np.array([[9, 11, 2, 12], [10, 5, 4, 2], [7, 6, 5, 4], [1, 7, 11, 2], [2, 3, 4, 5]])
    top_logits = np.array([[3, 2, 1.5, 1], [2, 1, 0, -1], [1, 0, -1, -2], [5, 1, 0.5, 0.25], [1, 1, 1, 1]])
    ce = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
    src_ids = [8, 9, 10, 7, 1]
    path = _fake_extract(str(root / "src"), src, text, src_ids, top_ids, top_logits, ce, vocab_size=13)
    return root, tgt, text, path


def _row(out_dir, i=0):
    return datasets.load_from_disk(out_dir).with_format("numpy")[i]


def test_hand_checked_bytes_mode(hand_case):
    root, tgt, text, path = hand_case
    r = _row(run_align(tgt, [text], [path], str(root / "bytes")))
    np.testing.assert_array_equal(r["input_ids"], [8, 9, 11, 1])
    ids, logits = r["teacher_ids"][:, 0], r["teacher_logits"][:, 0]
    # Byte groups: [ab]~[ab], [cc]~[cc], [xyz]~[xy, z], [</s>]~[</s>].
    # t=0 predicts "cc", a 1:1 group with source token 1: source position 0's top-k
    #   [cc, q, a, padded row] -> [9, 2 (q->a), 2 (a: kept, the loss adds the two), -1 (no token)].
    np.testing.assert_array_equal(ids[0], [9, 2, 2, -1])
    np.testing.assert_array_equal(logits[0], [3, 2, 1.5, 0])
    # t=1 predicts "xyz", cut in two by the source: one-hot on the NEXT gold token "xyz" (11).
    np.testing.assert_array_equal(ids[1], [11, -1, -1, -1])
    np.testing.assert_array_equal(logits[1], [1, 0, 0, 0])
    # t=2 predicts </s>: 1:1 with source </s>; source position 3's top-k [</s>, z, q, a].
    np.testing.assert_array_equal(ids[2], [1, 7, 2, 2])
    np.testing.assert_array_equal(logits[2], [5, 1, 0.5, 0.25])
    np.testing.assert_array_equal(ids[3], [-1, -1, -1, -1])  # the EOS predicts nothing
    # Gold-token CE: "cc" -> ce[0]; "xyz" -> ce[1] + ce[2] (the group's NLL); </s> -> ce[3].
    np.testing.assert_allclose(r["source_ce"][:, 0], [0.1, 0.5, 0.4, 0.0], rtol=1e-6)
    np.testing.assert_allclose(r["source_ce_doc"], [0.25], rtol=1e-6)
    assert r["n_aligned"].tolist() == [2] and r["used_dtw"].tolist() == [False]
    assert r["n_one_to_one"].tolist() == [2]

    # positions="boundary": t=1's context "abcc" also ends at a source boundary (after source
    # token 1), so it takes source position 1's top-k [xy, x, c, a] (ids equal in both vocabs)
    # although the next tokens differ ("xyz" vs "xy"); the other positions are as above.
    out = str(root / "boundary")
    rb = _row(run_align(tgt, [text], [path], out, positions="boundary"))
    np.testing.assert_array_equal(rb["teacher_ids"][:, 0], [ids[0], [10, 5, 4, 2], ids[2], ids[3]])
    np.testing.assert_array_equal(
        rb["teacher_logits"][:, 0], [logits[0], [2, 1, 0, -1], logits[2], logits[3]]
    )
    np.testing.assert_array_equal(rb["source_ce"], r["source_ce"])  # the gold token's CE: same rule
    assert rb["n_aligned"].tolist() == [3] and rb["n_one_to_one"].tolist() == [2]
    meta = json.load(open(os.path.join(out, "align_meta.json")))
    assert meta["positions"] == "boundary"
    assert meta["aligned_fraction"] == {"src": 1.0} and meta["one_to_one_fraction"] == {
        "src": pytest.approx(2 / 3)
    }


@pytest.fixture(scope="module")
def mid_case(tmp_path_factory):
    """Text "abccxyz". Target: ab|cc|xy|z|</s>; source: ab|cc|xyz|</s> (ids as in hand_case,
    the source also has "xyy", id 12): the target's context "abccxy" ends inside the source's
    "xyz". Two extracts of the source, with and without the logsumexp column."""
    root = tmp_path_factory.mktemp("mid")
    text = "abccxyz"
    letters = ["a", "b", "c", "x", "y", "z", "ab", "cc", "xy"]
    tgt = _hand_tokenizer(letters, [("a", "b"), ("c", "c"), ("x", "y")])
    src = _hand_tokenizer([*letters, "xyz", "xyy"], [("a", "b"), ("c", "c"), ("x", "y"), ("xy", "z")])
    assert tgt(text, add_special_tokens=False)["input_ids"] == [8, 9, 10, 7]
    assert src(text, add_special_tokens=False)["input_ids"] == [8, 9, 11]
    # position 1 (context "abcc") predicts "xyz" (11): its top-k lacks it
    top_ids = np.array([[9, 2, 3, 4], [10, 12, 5, 7], [1, 7, 6, 5], [2, 3, 4, 5]])
    top_logits = np.array([[3, 2, 1, 0], [3, 2, 1, 0], [4, 1, 0, -1], [1, 1, 1, 1]])
    ce = np.array([0.25, 2.5, 0.5, 0.0])
    lse = np.array([3.5, 4.0, 4.25, 2.0])  # gold logit at position 1: 4.0 - 2.5 = 1.5
    args = (text, [8, 9, 11, 1], top_ids, top_logits, ce)
    with_lse = _fake_extract(str(root / "lse"), src, *args, vocab_size=13, lse=lse)
    without = _fake_extract(str(root / "old"), src, *args, vocab_size=13)
    return root, tgt, text, with_lse, without


def test_hand_checked_mid_token_rule(mid_case):
    root, tgt, text, with_lse, without = mid_case
    r = _row(run_align(tgt, [text], [with_lse], str(root / "all"), positions="all"))
    ids, logits = r["teacher_ids"][:, 0], r["teacher_logits"][:, 0]
    # t0, t1 (contexts "ab", "abcc"): shared boundaries, as positions="boundary": source
    # positions 0 and 1, top-k through the vocab map (xyy -> its longest target prefix "xy").
    np.testing.assert_array_equal(ids[0], [9, 2, 3, 4])
    np.testing.assert_array_equal(ids[1], [10, 10, 5, 7])
    # t2 (context "abccxy") ends 2 bytes into the source's "xyz": source position 1, candidates
    # extending "xy": the gold "xyz" (added from logsumexp - ce, logit 1.5) -> remainder "z" ->
    # target "z" (7), and "xyy" (logit 2) -> "y" (6); "xy" (no byte beyond), "x", "z" dropped.
    np.testing.assert_array_equal(ids[2], [7, 6, -1, -1])
    np.testing.assert_array_equal(logits[2], [1.5, 2, 0, 0])
    np.testing.assert_array_equal(ids[3], [1, 7, 6, 5])  # "</s>": a shared boundary again
    assert (ids[4] == -1).all()
    assert r["n_aligned"].tolist() == [4] and r["n_one_to_one"].tolist() == [2]
    assert r["n_mid_token"].tolist() == [1] and r["n_mid_beyond_gold"].tolist() == [1]
    rb = _row(run_align(tgt, [text], [with_lse], str(root / "boundary"), positions="boundary"))
    for t in (0, 1, 3):  # shared boundaries: exactly the boundary rule
        np.testing.assert_array_equal(rb["teacher_ids"][t], r["teacher_ids"][t])
        np.testing.assert_array_equal(rb["teacher_logits"][t], r["teacher_logits"][t])
    np.testing.assert_array_equal(rb["teacher_ids"][2, 0], [7, -1, -1, -1])  # one-hot, gold "z"
    np.testing.assert_array_equal(rb["source_ce"], r["source_ce"])  # same group rule
    meta = json.load(open(os.path.join(root / "all", "align_meta.json")))
    fractions = ("aligned", "boundary", "mid_token", "mid_token_beyond_gold")
    assert [meta[f"{k}_fraction"]["lse"] for k in fractions] == [1.0, 0.75, 0.25, 1.0]

    # An extract without logsumexp (format /1): only the top-k's candidates, so "xyy" alone.
    r1 = _row(run_align(tgt, [text], [without], str(root / "all_old"), positions="all"))
    np.testing.assert_array_equal(r1["teacher_ids"][2, 0], [6, -1, -1, -1])
    np.testing.assert_array_equal(r1["teacher_logits"][2, 0], [2, 0, 0, 0])
    for t in (0, 1, 3):
        np.testing.assert_array_equal(r1["teacher_ids"][t], r["teacher_ids"][t])


def test_hand_checked_fusellm_mode(hand_case):
    root, tgt, text, path = hand_case
    r = _row(run_align(tgt, [text], [path], str(root / "fusellm"), mode="fusellm"))
    ids, logits = r["teacher_ids"][:, 0], r["teacher_logits"][:, 0]
    # DTW: ab~ab, cc~cc, xyz~xy, </s>~{z, </s>}. FuseLLM's current-token rule: target position
    # i takes source position j when target token i maps to source token j alone and the vocab
    # map agrees. So t=0 <- u=0 (as in bytes mode), t=1 <- u=1 (the source predicts "xy" where
    # the target's next token is "xyz": a different cut, taken anyway), and t=2 ("xyz" maps to
    # "xy", which the vocab map does not send to "xyz") falls back to a one-hot on </s>.
    np.testing.assert_array_equal(ids[0], [9, 2, -1, -1])
    np.testing.assert_array_equal(ids[1], [10, 5, 4, 2])
    np.testing.assert_array_equal(logits[1], [2, 1, 0, -1])
    np.testing.assert_array_equal(ids[2], [1, -1, -1, -1])
    np.testing.assert_array_equal(ids[3], [-1, -1, -1, -1])
    assert r["n_aligned"].tolist() == [2] and r["used_dtw"].tolist() == [True]


# ------------------------------------------------------------------------- pure-Python reference


def _first_bytes(tok_bytes: list, ids, text: str) -> list:
    """Token bytes, the first token without a SentencePiece dummy-prefix space: one the text
    lacks, or one too many (Llama-2 prepends it to a text that starts with a space too)."""
    out = [tok_bytes[i] for i in ids]
    extra = len(b"".join(out)) == len(text.encode()) + 1
    if out and out[0][:1] == b" " and (not text.startswith(" ") or extra):
        out[0] = out[0][1:]
    return out


def _spans(pieces: list) -> list:
    ends = np.cumsum([len(p) for p in pieces]).tolist()
    return [(e - len(p), e) for p, e in zip(pieces, ends)]


def _ref_bytes_source(text, t_ids, s_ids, t_bytes, s_bytes):
    """For each target position t, the source position u whose next token is cut exactly like
    target token t+1 (a 1:1 byte group), else None; "dtw" if the byte strings differ."""
    tp, sp = _first_bytes(t_bytes, t_ids, text), _first_bytes(s_bytes, s_ids, text)
    if b"".join(tp) != b"".join(sp):
        return "dtw"
    ts, ss = _spans(tp), _spans(sp)
    zero_t = {a for a, b in ts if a == b}
    zero_s = {a for a, b in ss if a == b}
    out = []
    for t in range(len(t_ids) - 1):
        a, b = ts[t + 1]
        u = None
        if t + 1 == len(t_ids) - 1 and a == b:  # the final EOS pair: zero-width on both sides
            if ss[-1] == (a, a) and ss.count((a, a)) == 1 and ts.count((a, a)) == 1:
                u = len(s_ids) - 2
        elif a < b and (a in zero_t) == (a in zero_s):
            # Zero-width tokens at one side only join the group starting there (not 1:1); at
            # both sides they form a group of their own.
            hits = [j for j, x in enumerate(ss) if x == (a, b)]
            if len(hits) == 1 and hits[0] >= 1:
                u = hits[0] - 1
        out.append(u)
    return out + [None]


def _ref_boundary_source(text, t_ids, s_ids, t_bytes, s_bytes):
    """For each target position t, the first source position u whose context ends at the same
    byte and whose next token is zero-width exactly when target token t+1 is; "dtw" if the byte
    strings differ."""
    tp, sp = _first_bytes(t_bytes, t_ids, text), _first_bytes(s_bytes, s_ids, text)
    if b"".join(tp) != b"".join(sp):
        return "dtw"
    t_end = [len(b"".join(tp[: t + 1])) for t in range(len(tp))]
    s_end = [len(b"".join(sp[: u + 1])) for u in range(len(sp))]
    out = []
    for t in range(len(tp) - 1):
        hits = [
            u for u in range(len(sp) - 1) if s_end[u] == t_end[t] and (sp[u + 1] == b"") == (tp[t + 1] == b"")
        ]
        out.append(hits[0] if hits else None)
    return out + [None]


def _ref_dtw_bytes_source(t_ids, s_ids, t_tok, s_tok, lut, exact, canon):
    """Byte strings differ: DTW; target token t+1 and source token u+1 matched only to each
    other on the path, with identical surfaces."""
    ts = [x.replace(" ", "") for x in surface_strings(t_tok)]
    ss = [x.replace(" ", "") for x in surface_strings(s_tok)]
    a_to_b, b_to_a = dtw([ss[i] for i in s_ids], [ts[i] for i in t_ids])
    out = []
    for t in range(len(t_ids) - 1):
        j = t + 1
        u = None
        if len(b_to_a[j]) == 1:
            i = b_to_a[j][0]
            if a_to_b[i] == [j] and i >= 1 and exact[s_ids[i]] and lut[s_ids[i]] == canon[t_ids[j]]:
                u = i - 1
        out.append(u)
    return out + [None]


def _ref_fusellm_source(t_ids, s_ids, t_tok, s_tok, lut, canon):
    ts = [x.replace(" ", "") for x in surface_strings(t_tok)]
    ss = [x.replace(" ", "") for x in surface_strings(s_tok)]
    _, b_to_a = dtw([ss[i] for i in s_ids], [ts[i] for i in t_ids])
    t_surf, s_surf = surface_strings(t_tok), surface_strings(s_tok)
    out = []
    for i in range(len(t_ids)):
        j = b_to_a[i][0] if len(b_to_a[i]) == 1 else None
        ok = j is not None and lut[s_ids[j]] == canon[t_ids[i]]
        if j is not None and i == 0 and not ok:  # FuseLLM's first-token marker case
            a, b = s_surf[s_ids[j]], t_surf[t_ids[i]]
            ok = a.removeprefix(" ") != "" and a.removeprefix(" ") == b.removeprefix(" ")
        out.append(j if ok and i < len(t_ids) - 1 else None)
    return out


def _expected_teacher(u, t, t_ids, top_ids, top_logits, lut, k, keep_repeats):
    """The source's top-k at u through the vocab map, unmapped ids dropped; a repeated target id
    is kept (bytes mode: the loss adds its probabilities) or dropped (FuseLLM keeps the first)."""
    if t == len(t_ids) - 1:
        return [], []
    if u is None:
        return [t_ids[t + 1]], [1.0]
    ids, logits = [], []
    for i, v in zip(top_ids[u], top_logits[u]):
        m = int(lut[i]) if i < len(lut) else -1
        if m >= 0 and (keep_repeats or m not in ids):
            ids.append(m)
            logits.append(float(v))
    return ids, logits


@pytest.mark.parametrize("rule", ["bytes", "fusellm", "boundary", "all"])
def test_matches_python_reference_on_three_tokenizer_families(rule, aligned, extracts, docs, tiny_lms):
    names, out = aligned
    mode = "fusellm" if rule == "fusellm" else "bytes"
    ds = datasets.load_from_disk(out[rule]).with_format("numpy")
    span_ds = datasets.load_from_disk(out["bytes"]).with_format("numpy")
    meta = json.load(open(os.path.join(out[rule], "align_meta.json")))
    assert meta["sources"] == names and meta["mode"] == mode and meta["top_k"] == TOP_K
    assert meta["positions"] == (rule if rule in ("boundary", "all") else "span")
    t_tok = tiny_lms[TARGET].tokenizer
    t_bytes = token_bytes(t_tok)
    canon = canonical_target_ids(t_tok)
    project = ref_target_prefix(t_bytes, canon)
    n_mid = 0
    n_checked = {n: 0 for n in names}
    n_dtw = {n: 0 for n in names}
    n_conserved = 0
    for s, name in enumerate(names):
        s_tok = tiny_lms[name].tokenizer
        s_bytes = token_bytes(s_tok)
        vmap = build_vocab_map(s_tok, t_tok)
        lut, exact = vmap.ids, vmap.exact
        ext = load_extract(extracts[name])[0].with_format("numpy")
        for d, text in enumerate(docs):
            r, e = ds[d], ext[d]
            t_ids, s_ids = r["input_ids"].tolist(), e["input_ids"].tolist()
            mid = [None] * len(t_ids)
            if mode == "bytes":
                ref = _ref_bytes_source(text, t_ids, s_ids, t_bytes, s_bytes)
                assert r["used_dtw"][s] == (ref == "dtw")
                if ref == "dtw":
                    n_dtw[name] += 1
                    ref = _ref_dtw_bytes_source(t_ids, s_ids, t_tok, s_tok, lut, exact, canon)
                one_to_one = ref
                if rule in ("boundary", "all") and not r["used_dtw"][s]:
                    ref = _ref_boundary_source(text, t_ids, s_ids, t_bytes, s_bytes)
                    if rule == "all":
                        sp, tp = _first_bytes(s_bytes, s_ids, text), _first_bytes(t_bytes, t_ids, text)
                        mid = ref_mid_token_positions(sp, tp)
                    # boundary ⊇ span, with the same source position where span teaches
                    assert all(b == u for u, b in zip(one_to_one, ref) if u is not None)
                assert r["n_one_to_one"][s] == sum(u is not None for u in one_to_one)
            else:
                ref = _ref_fusellm_source(t_ids, s_ids, t_tok, s_tok, lut, canon)
            taught = doc_mid = doc_beyond = 0
            for t, u in enumerate(ref):
                ids, logits = _expected_teacher(
                    u, t, t_ids, e["topk_ids"], e["topk_logits"], lut, TOP_K, keep_repeats=mode == "bytes"
                )
                if u is None and mid[t] is not None:  # positions="all": inside source token u+1
                    v, seen = mid[t]
                    gold, lse = s_ids[v + 1], e["logsumexp"][v]
                    m_ids, m_log, kept = ref_mid_token_teacher(
                        s_bytes[gold][:seen], gold, e["topk_ids"][v], e["topk_logits"][v],
                        lse - e["ce"][v], s_bytes, project, TOP_K,
                    )  # fmt: skip
                    if m_ids:
                        ids, logits = m_ids, m_log
                        taught += 1
                        doc_mid += 1
                        doc_beyond += any(c != gold for c in kept)
                taught += u is not None
                got = r["teacher_ids"][t, s]
                assert got[: len(ids)].tolist() == ids and (got[len(ids) :] == -1).all(), (name, d, t)
                np.testing.assert_array_equal(r["teacher_logits"][t, s][: len(ids)], np.float16(logits))
                if u is not None and rule == "bytes":  # exactly the source's CE of that token
                    assert r["source_ce"][t, s] == np.float32(e["ce"][u])
            if rule in ("boundary", "all"):  # the gold token's CE does not depend on the positions rule
                np.testing.assert_array_equal(r["source_ce"][:, s], span_ds[d]["source_ce"][:, s])
            # Each group's source NLL is shared by its target tokens: with identical bytes and a 1:1
            # first group, the document's total NLL is kept exactly.
            tp, sp = _first_bytes(t_bytes, t_ids, text), _first_bytes(s_bytes, s_ids, text)
            if mode == "bytes" and tp[0] == sp[0] and b"".join(tp) == b"".join(sp):
                np.testing.assert_allclose(r["source_ce"][:, s].sum(), e["ce"].sum(), rtol=1e-5)
                n_conserved += 1
            assert r["n_aligned"][s] == taught
            assert (r["n_mid_token"][s], r["n_mid_beyond_gold"][s]) == (doc_mid, doc_beyond)
            n_mid += doc_mid
            np.testing.assert_array_equal(r["source_ce_doc"][s], e["doc_ce"])
            n_checked[name] += 1
    assert all(n_checked[n] == len(docs) for n in names), n_checked
    assert mode != "bytes" or n_conserved >= len(docs)  # the target itself at least
    if mode == "bytes":
        assert n_dtw[TARGET] == 0 and n_dtw["neox_bbpe"] == 0
        assert 1 <= n_dtw["gpt2_uni"] < len(docs)  # NFKC and <unk>: some unigram byte strings differ
    frac = meta["aligned_fraction"]
    assert frac[TARGET] == 1.0 and 0.3 < frac["neox_bbpe"] < 1 and 0.3 < frac["gpt2_uni"] < 1, frac
    span_frac = json.load(open(os.path.join(out["bytes"], "align_meta.json")))["aligned_fraction"]
    if rule in ("boundary", "all"):
        assert all(frac[n] > span_frac[n] for n in names if n != TARGET), (frac, span_frac)
    if rule == "all":
        bound = json.load(open(os.path.join(out["boundary"], "align_meta.json")))["aligned_fraction"]
        assert meta["boundary_fraction"] == bound  # shared boundaries: exactly the boundary rule
        assert all(frac[n] > bound[n] for n in names if n != TARGET), (frac, bound)
        assert n_mid > 0 and sum(meta["mid_token_fraction"].values()) > 0
    if mode == "bytes":
        assert meta["one_to_one_fraction"] == span_frac


@pytest.mark.parametrize("rule", ["bytes", "boundary", "all"])
def test_teacher_distributions_are_distributions(rule, aligned, tiny_lms):
    """Where a teacher exists, its probabilities (softmax of the listed logits, repeated ids
    adding, -1 entries ignored) sum to 1 over valid target ids; the EOS position has none."""
    names, out = aligned
    vocab = len(tiny_lms[TARGET].tokenizer)
    ds = datasets.load_from_disk(out[rule]).with_format("numpy")
    for d in range(len(ds)):
        ids, logits = ds[d]["teacher_ids"], ds[d]["teacher_logits"].astype(np.float64)
        valid = ids >= 0
        assert (ids[valid] < vocab).all()
        assert not valid[-1].any() and valid[:-1, :, 0].all()  # every predicting position has one
        assert (np.sort(~valid, axis=-1, kind="stable") == ~valid).all()  # compacted to the left
        for t, s in zip(*np.nonzero(valid[:, :, 0])):
            v = valid[t, s]
            q = np.exp(logits[t, s][v] - logits[t, s][v].max())
            dense = np.bincount(ids[t, s][v], weights=q / q.sum(), minlength=vocab)
            assert dense.shape == (vocab,) and dense.sum() == pytest.approx(1.0, rel=1e-12)


def test_target_as_its_own_source_gives_its_own_topk(aligned, extracts):
    names, out = aligned
    s = names.index(TARGET)
    ext = load_extract(extracts[TARGET])[0].with_format("numpy")
    for mode in ("bytes", "fusellm", "boundary", "all"):
        ds = datasets.load_from_disk(out[mode]).with_format("numpy")
        for d in range(len(ds)):
            r, e = ds[d], ext[d]
            n = len(r["input_ids"]) - 1
            np.testing.assert_array_equal(r["input_ids"], e["input_ids"])
            np.testing.assert_array_equal(r["teacher_ids"][:n, s], e["topk_ids"][:n])
            np.testing.assert_array_equal(r["teacher_logits"][:n, s], e["topk_logits"][:n])
            np.testing.assert_array_equal(r["source_ce"][:n, s], e["ce"][:n])
            assert (r["teacher_ids"][n, s] == -1).all()
            assert r["n_aligned"][s] == n


def test_num_proc_vocab_map_files_and_reruns_give_identical_output(
    aligned, extracts, docs, tiny_lms, tmp_path
):
    names, out = aligned
    t_path = tiny_lms[TARGET].path
    maps = [run_vocab_map(tiny_lms[n].path, t_path, str(tmp_path / f"{n}.npz")) for n in names]
    again = run_align(
        t_path,
        docs,
        [extracts[n] for n in names],
        str(tmp_path / "again"),
        source_names=names,
        vocab_maps=maps,
        num_proc=2,
        batch_size=7,
    )
    a = datasets.load_from_disk(out["bytes"]).data.table
    b = datasets.load_from_disk(again).data.table
    assert a.equals(b)


def test_mismatched_documents_are_errors(extracts, docs, tiny_lms, tmp_path):
    t_path = tiny_lms[TARGET].path
    changed = list(docs)
    changed[3] = changed[3] + " extra"
    with pytest.raises(
        ValueError, match=r"document 3: source 'neox_bbpe' was extracted from a different text"
    ):
        run_align(t_path, changed, [extracts["neox_bbpe"]], str(tmp_path / "a"))
    with pytest.raises(ValueError, match=r"its extract has \d+ documents but the data has"):
        run_align(t_path, docs[:-1], [extracts["neox_bbpe"]], str(tmp_path / "b"))
    with pytest.raises(ValueError, match="mode"):
        run_align(t_path, docs, [extracts["neox_bbpe"]], str(tmp_path / "c"), mode="dp")
    with pytest.raises(FileNotFoundError, match="not an extract directory"):
        run_align(t_path, docs, [str(tmp_path)], str(tmp_path / "d"))
    with pytest.raises(ValueError, match="no text column 'text'"):
        run_align(
            t_path, datasets.Dataset.from_dict({"x": docs}), [extracts["neox_bbpe"]], str(tmp_path / "e")
        )
    incomplete = str(tmp_path / "inc")
    run_extract(tiny_lms["neox_bbpe"].path, docs, incomplete, num_shards=3, shard_index=1, progress=False)
    with pytest.raises(ValueError, match="incomplete"):
        run_align(t_path, docs, [incomplete], str(tmp_path / "f"))
