"""Teacher quality on the real tokenizers (issue 9): what share of a Llama-2 target's positions
get a faithful teacher from MPT and Qwen2 sources. Not a timing benchmark; numbers go to
benchmarks/RESULTS.md ("Teacher quality on real tokenizers (issue 9)").

Run: ``python benchmarks/teacher_quality.py [--docs N] [--out FILE.json]`` from the repo root
(needs ../shared/tokenizers/{llama2,mpt,qwen2}).

1. Leading spaces: the share of ``fusekern split`` pieces (block 512, stdlib prose + code) whose
   byte strings differ after dropping the dummy-prefix space, i.e. that fall back to DTW, with
   the old rule (drop it only when the text does not start with a space) and the new one
   (:func:`fusekern.pipeline.align.strip_dummy_prefix`: decided from the bytes).
2. Vocab map: how many source tokens map onto Llama-2's ``<0x00>``, plain MinED + refinement
   (the old map) vs :func:`fusekern.align.map_vocab` (exact, longest byte prefix, MinED).
3. Coverage: ``run_align`` on those pieces, prose and code separately, with tiny random models
   of the tokenizers' vocabulary sizes (``fusekern.demo.toy.models.tiny_causal_lm``, extracted by
   ``run_extract``): per source and rule (``positions`` "span", "boundary", "all"), the share
   of predicting target positions taught (``aligned_fraction``), of exact 1:1 groups, taught at
   shared boundaries vs inside a source token, and of the mid-token positions whose teacher
   holds more than the gold source token (random models rarely rank it in their top-k, so
   most mid-token teachers are the gold alone: a one-hot, i.e. CLM).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TOKS = os.path.join(HERE, "..", "..", "shared", "tokenizers")
TARGET, SOURCES = "llama2", ("mpt", "qwen2")


def _pieces(tokenizers: list, n_docs: int, block: int) -> dict:
    """``fusekern split`` pieces of stdlib prose (``n_docs`` documents) and code (a quarter as
    many files), by kind."""
    from fusekern.demo.toy.corpus import stdlib_code, stdlib_prose
    from fusekern.pipeline import split_texts

    return {
        "prose": split_texts(stdlib_prose(n_docs)[:n_docs], tokenizers, block),
        "code": split_texts([c[:20_000] for c in stdlib_code(n_docs // 4)], tokenizers, block),
    }


def dtw_fallback(pieces: list, toks: dict) -> dict:
    """Per source: pieces whose bytes differ from the target's after the dummy-prefix rule."""
    from fusekern.align import span_align_ids_batch
    from fusekern.pipeline.align import _Side, strip_dummy_prefix
    from fusekern.pipeline.io import encode

    def flat(tok):
        lists = encode(tok, pieces)
        off = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in lists], out=off[1:])
        return np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]), off

    def old_rule(ids, off, side):
        out = ids.copy()
        for d, t in enumerate(pieces):
            if not t.startswith(" ") and side.starts_with_space[ids[off[d]]]:
                out[off[d]] += side.size
        return out

    sides = {n: _Side(t) for n, t in toks.items()}
    enc = {n: flat(t) for n, t in toks.items()}
    res = {"pieces": len(pieces), "space_led_pieces": sum(p.startswith(" ") for p in pieces)}
    tgt_ids, tgt_off = enc[TARGET]
    for rule, fn in (("old", old_rule), ("new", lambda i, o, s: strip_dummy_prefix(i, o, s, pieces))):
        b = fn(tgt_ids, tgt_off, sides[TARGET])
        for name in SOURCES:
            ids, off = enc[name]
            a = fn(ids, off, sides[name])
            out = span_align_ids_batch(
                [a[off[d] : off[d + 1]] for d in range(len(pieces))],
                [b[tgt_off[d] : tgt_off[d + 1]] for d in range(len(pieces))],
                sides[name].byte_vocab,
                sides[TARGET].byte_vocab,
                on_mismatch="none",
            )
            res[f"{name}_{rule}"] = round(sum(g is None for g in out) / len(pieces), 4)
    return res


def nul_mapping(toks: dict) -> dict:
    from fusekern.align import mined_map
    from fusekern.align.vocab import VocabMap, _special_ids, map_vocab, refine_vocab_map, token_tables

    tgt = toks[TARGET]
    nul = tgt.convert_tokens_to_ids("<0x00>")
    surf_t = token_tables(tgt)[1]
    specials_t = _special_ids(tgt)
    cand = np.array([t for t in range(len(surf_t)) if t not in specials_t and surf_t[t]])
    res = {}
    for name in SOURCES:
        src = toks[name]
        surf_s = token_tables(src)[1]
        specials_s = _special_ids(src)
        todo = [s for s in range(len(surf_s)) if s not in specials_s and surf_s[s]]
        ids = np.full(len(surf_s), -1, dtype=np.int64)
        found, dist = mined_map([surf_s[s] for s in todo], [surf_t[t] for t in cand], return_distance=True)
        ids[todo] = cand[found]
        d = np.full(len(surf_s), -1, dtype=np.int64)
        d[todo] = dist
        spec = np.zeros(len(surf_s), dtype=bool)
        spec[list(specials_s)] = True
        old = refine_vocab_map(VocabMap(ids, d, d == 0, spec, len(surf_t)), src, tgt)
        t0 = time.perf_counter()
        new = map_vocab(src, tgt)
        seconds = time.perf_counter() - t0
        res[name] = {
            "onto_nul_old": int((old.ids == nul).sum()),
            "onto_nul_new": int((new.ids == nul).sum()),
            "map_vocab_seconds": round(seconds, 2),
            "counts": new.counts(),
        }
    return res


def coverage(pieces: list, toks: dict, workdir: str, rules: tuple | None = None) -> dict:
    """Per rule (default: every ``positions`` value): the align_meta fractions of ``pieces``
    (tiny random source models of the tokenizers' vocabulary sizes; align builds the vocab maps).
    One ``"all"`` run also gives ``span``'s coverage (``one_to_one``) and ``boundary``'s
    (``boundary``)."""
    from fusekern.demo.toy.models import tiny_causal_lm
    from fusekern.pipeline import run_align, run_extract
    from fusekern.pipeline.formats import POSITIONS

    os.makedirs(workdir, exist_ok=True)
    extracts = {}
    for i, name in enumerate(SOURCES):
        tok = toks[name]
        model = tiny_causal_lm(
            "llama",
            len(tok),
            hidden=16,
            layers=1,
            heads=2,
            max_positions=1024,
            seed=i,
            eos_token_id=tok.eos_token_id,
        )
        extracts[name] = run_extract(
            model,
            pieces,
            tempfile.mkdtemp(prefix=f"ext_{name}_", dir=workdir),
            tokenizer=tok,
            top_k=8,
            batch_size=8,
            num_shards=1,
            device="cpu",
            progress=False,
        )
    res = {}
    for positions in rules or POSITIONS:
        out = os.path.join(workdir, f"aligned_{positions}")
        t0 = time.process_time()
        run_align(
            toks[TARGET],
            pieces,
            [extracts[n] for n in SOURCES],
            out,
            source_names=list(SOURCES),
            positions=positions,
            threads=1,
            overwrite=True,
        )
        meta = json.load(open(os.path.join(out, "align_meta.json")))
        res[positions] = {
            key: meta[f"{key}_fraction"]
            for key in ("aligned", "one_to_one", "boundary", "mid_token", "mid_token_beyond_gold")
        }
        res[positions].update(
            dtw_docs=meta["dtw_docs"],
            num_tokens=meta["num_tokens"],
            cpu_seconds=round(time.process_time() - t0, 2),
        )
    return res


def main() -> None:
    from transformers import AutoTokenizer

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--docs", type=int, default=120, help="stdlib prose documents (code: a quarter as many files)"
    )
    p.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--skip-coverage", action="store_true", help="parts 1 and 2 only (no models)")
    args = p.parse_args()
    if not os.path.isdir(os.path.join(TOKS, TARGET)):
        sys.exit(f"no tokenizers at {TOKS}")
    toks = {n: AutoTokenizer.from_pretrained(os.path.join(TOKS, n)) for n in (TARGET, *SOURCES)}
    by_kind = _pieces([toks[TARGET], *(toks[n] for n in SOURCES)], args.docs, 512)
    pieces = by_kind["prose"] + by_kind["code"]
    res = {"dtw_fallback": dtw_fallback(pieces, toks)}
    print(json.dumps(res, indent=1), flush=True)
    res["vocab_map"] = nul_mapping(toks)
    print(json.dumps(res["vocab_map"], indent=1), flush=True)
    if not args.skip_coverage:
        with tempfile.TemporaryDirectory() as tmp:
            res["coverage"] = {kind: coverage(p, toks, tmp) for kind, p in by_kind.items()}
        print(json.dumps(res["coverage"], indent=1), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
