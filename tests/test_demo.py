"""`fusekern demo` at toy size (--size tiny): every stage runs, results and plot are written,
stages are cached and a recipe change reruns only what it affects; the recorded scores, bits per
byte and verdict match an independent rescoring of the saved models, and the verdict logic is
checked on constructed scores. The full demo is not run here."""

from __future__ import annotations

import json
import math
import os
import time

import pytest

from fusekern.cli import main
from fusekern.demo.report import print_table
from fusekern.demo.results import score_tables

VARIANTS = ("target_before", "clm_baseline", "fused")
SOURCES = ("prose_neox", "code_mpt")
DOMAINS = ("prose", "code")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """The first (uncached) tiny demo: its directory, its results and its wall time seen from here."""
    out = str(tmp_path_factory.mktemp("demo"))
    start = time.time()
    assert main(["demo", "--size", "tiny", "--out", out]) == 0
    return {"dir": out, "wall": time.time() - start, "results": _results(out)}


@pytest.fixture(scope="module")
def demo_dir(first_run):
    return first_run["dir"]


def _results(out):
    return _json(out, "results.json")


def _json(out, *path):
    with open(os.path.join(out, *path), encoding="utf-8") as f:
        return json.load(f)


def _rescore(model_dir, pieces):
    """Per domain: summed next-token NLL (nats), scored tokens and UTF-8 bytes of ``pieces``, one
    piece at a time through the model's own loss: ``[EOS] + tokens``, every token predicted."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = {}
    for domain, texts in pieces.items():
        nll, tokens, nbytes = 0.0, 0, 0
        for text in texts:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if not ids:
                continue
            x = torch.tensor([[tok.eos_token_id, *ids]])
            with torch.no_grad():
                nll += float(model(input_ids=x, labels=x).loss) * len(ids)
            tokens += len(ids)
            nbytes += len(text.encode("utf-8"))
        out[domain] = {"nll": nll, "tokens": tokens, "bytes": nbytes}
    return out


def _bpb(counts, domains=DOMAINS):
    return sum(counts[d]["nll"] for d in domains) / math.log(2) / sum(counts[d]["bytes"] for d in domains)


def test_results_plot_and_artifacts(demo_dir):
    res = _results(demo_dir)
    for metric in ("held_out_ppl", "held_out_bpb"):
        table = res[metric]
        assert set(SOURCES) == set(table["sources"])
        for name in (*VARIANTS, *SOURCES):
            row = table["by_domain"][name]
            assert set(row) == {"prose", "code", "overall"}
            assert all(math.isfinite(v) and v > 0 for v in row.values())
        for v in VARIANTS:
            assert table[v] == table["by_domain"][v]["overall"]
    # bpb is comparable across tokenizers because every model scored exactly the same bytes
    counts = res["held_out_counts"]
    for domain in ("prose", "code"):
        assert len({counts[m][domain]["bytes"] for m in counts}) == 1
        for m in counts:
            c = counts[m][domain]
            assert res["held_out_bpb"]["by_domain"][m][domain] == pytest.approx(
                c["nll"] / math.log(2) / c["bytes"]
            )
            assert res["held_out_ppl"]["by_domain"][m][domain] == pytest.approx(
                math.exp(c["nll"] / c["tokens"])
            )
    # the three target variants share a tokenizer (same token counts), the sources do not
    assert len({counts[v]["prose"]["tokens"] for v in VARIANTS}) == 1
    # both continual-training runs really trained, and differently
    bpb = res["held_out_bpb"]
    assert len({bpb["target_before"], bpb["clm_baseline"], bpb["fused"]}) == 3
    # same steps for both runs, the fused one with its λ, the control with λ = 1
    logs = res["train_log_history"]
    fused_w = {h["lm_weight"] for h in logs["fused"] if "lm_weight" in h}
    base_w = {h["lm_weight"] for h in logs["clm_baseline"] if "lm_weight" in h}
    assert fused_w == {res["config"]["lm_weight"]} and base_w == {1.0}
    with open(os.path.join(demo_dir, "demo.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # the pipeline stages' outputs are there, with the sources fused into the target
    with open(os.path.join(demo_dir, "data", "packed_span", "fusion_meta.json")) as f:
        meta = json.load(f)
    assert meta["sources"] == list(SOURCES) and meta["target"]
    for name in SOURCES:
        assert os.path.isfile(os.path.join(demo_dir, "data", "vocab_maps", f"{name}.npz"))


def test_timing_is_this_invocations(first_run):
    res, wall = first_run["results"], first_run["wall"]
    assert res["cached_stages"] == [] and len(res["stage_seconds"]) > 10
    # every stage ran inside this invocation, which ran inside the wall time measured here
    assert sum(res["stage_seconds"].values()) == pytest.approx(res["seconds_all_stages"], abs=0.05 * 20)
    assert res["seconds_all_stages"] <= res["seconds"] <= wall + 0.05


def test_scores_match_an_independent_rescoring(demo_dir):
    """Every recorded count, bits-per-byte and the verdict, recomputed from the saved models and
    pieces with the models' own loss, one piece at a time (the demo batches and pads)."""
    res = _results(demo_dir)
    runs = {
        "fused": os.path.join(demo_dir, "runs", f"fused_{res['config']['positions']}"),
        "clm_baseline": os.path.join(demo_dir, "runs", "clm_baseline"),
    }
    model_dirs = {
        "code_mpt": os.path.join(demo_dir, "models", "code_mpt"),
        "target_before": os.path.join(demo_dir, "models", "target_llama"),
        **runs,
    }
    pieces = _json(demo_dir, "held_out_pieces.json")
    bpb = {}
    for name, path in model_dirs.items():
        counts = _rescore(path, pieces)
        recorded = res["held_out_counts"][name]
        for d in DOMAINS:
            assert recorded[d]["tokens"] == counts[d]["tokens"] and recorded[d]["bytes"] == counts[d]["bytes"]
            assert recorded[d]["nll"] == pytest.approx(counts[d]["nll"], rel=1e-5)
            assert res["held_out_bpb"]["by_domain"][name][d] == pytest.approx(_bpb(counts, [d]), rel=1e-5)
        bpb[name] = _bpb(counts)  # overall pools the domains' counts
        assert res["held_out_bpb"]["by_domain"][name]["overall"] == pytest.approx(bpb[name], rel=1e-5)
    cmp = res["fused_vs_clm_baseline"]
    change = 100 * (bpb["fused"] - bpb["clm_baseline"]) / bpb["clm_baseline"]
    assert cmp["bpb_change_percent"] == pytest.approx(change, abs=1e-3)
    assert abs(change) > 1e-3 and cmp["fused_better"] == (change < 0)
    validation = _json(demo_dir, "validation_pieces.json")
    val = {run: _bpb(_rescore(path, validation)) for run, path in runs.items()}
    for run in runs:
        assert res["validation_bpb"][run]["overall"] == pytest.approx(val[run], rel=1e-5)
    val_change = 100 * (val["fused"] - val["clm_baseline"]) / val["clm_baseline"]
    assert cmp["validation_bpb_change_percent"] == pytest.approx(val_change, abs=1e-3)


def test_recorded_statistics_match_the_files(demo_dir):
    import datasets
    from transformers import AutoTokenizer

    res = _results(demo_dir)
    corpus = _json(demo_dir, "corpus.json")
    pieces = _json(demo_dir, "held_out_pieces.json")
    for split, domains in corpus.items():
        for d in DOMAINS:
            texts = domains[d]
            assert res["corpus"][split][d] == {"docs": len(texts), "chars": sum(len(t) for t in texts)}
    for d in DOMAINS:
        # the held-out pieces are cut from the held-out split, which shares no text with training
        assert all(any(p in chunk for chunk in corpus["held_out"][d]) for p in pieces[d])
        trained = {t for split in ("pretrain", "fusion", "validation", "tokenizer") for t in corpus[split][d]}
        assert not trained & set(corpus["held_out"][d])
        nbytes = sum(len(p.encode("utf-8")) for p in pieces[d])
        assert res["held_out"][d] == {"pieces": len(pieces[d]), "bytes": nbytes}
    # the trainers' eval set: the same pieces, as the target sees them ([EOS] + its tokens)
    tok = AutoTokenizer.from_pretrained(os.path.join(demo_dir, "models", "target_llama"))
    rows = datasets.load_from_disk(os.path.join(demo_dir, "data", "held_out_target"))["input_ids"]
    assert list(rows) == [
        [tok.eos_token_id, *tok(p, add_special_tokens=False)["input_ids"]] for d in DOMAINS for p in pieces[d]
    ]


def _constructed_results(fused_code_bpb, control_code_bpb, size="full"):
    """results.json's tables from made-up counts: 100 prose bytes (50 tokens) and 1000 code bytes
    (500 tokens) per model; the fused run is worse on prose (1.0 vs 0.8 bits per byte)."""
    ln2 = math.log(2)

    def counts(prose_bpb, code_bpb):
        return {
            "prose": {"nll": prose_bpb * ln2 * 100, "tokens": 50, "bytes": 100},
            "code": {"nll": code_bpb * ln2 * 1000, "tokens": 500, "bytes": 1000},
        }

    held = {
        "src": counts(1.5, 1.5),
        "target_before": counts(1.2, 1.2),
        "clm_baseline": counts(0.8, control_code_bpb),
        "fused": counts(1.0, fused_code_bpb),
    }
    validation = {"clm_baseline": counts(1.0, 1.0), "fused": counts(1.1, 1.1)}
    tables = score_tables(held, validation, ["src"])
    return {
        "held_out_ppl": tables.ppl,
        "held_out_bpb": tables.bpb,
        "fused_vs_clm_baseline": tables.comparison,
        "validation_bpb": tables.validation_bpb,
        "config": {"size": size, "positions": "span"},
        "seconds": 1.0,
    }


def test_verdict_pools_bytes_across_domains(capsys):
    # fused: 100 + 900 bits over 1100 bytes; control: 80 + 950. Per-domain means would say the
    # opposite (0.95 vs 0.875), pooling says fused is better by 30 bits.
    res = _constructed_results(0.9, 0.95)
    cmp = res["fused_vs_clm_baseline"]
    assert res["held_out_bpb"]["fused"] == pytest.approx(1000 / 1100)
    assert res["held_out_bpb"]["sources"] == {"src": pytest.approx(1.5)}
    assert cmp["bpb_change_percent"] == pytest.approx(-100 * 30 / 1030)
    assert cmp["ppl_change_percent"] == pytest.approx(100 * (2 ** (-30 / 550) - 1))
    assert cmp["fused_better"] is True
    assert cmp["by_domain_bpb"]["prose"] == {"fused": pytest.approx(1.0), "clm_baseline": pytest.approx(0.8)}
    assert cmp["validation_bpb_change_percent"] == pytest.approx(10.0)
    assert res["validation_bpb"]["fused"] == {c: pytest.approx(1.1) for c in ("prose", "code", "overall")}
    print_table(res)
    out = capsys.readouterr().out
    assert "fused (span positions) beats the CLM-only control: overall bpb -2.91%" in out

    worse = _constructed_results(0.95, 0.9)  # 1050 vs 980 bits
    assert worse["fused_vs_clm_baseline"]["fused_better"] is False
    assert worse["fused_vs_clm_baseline"]["bpb_change_percent"] == pytest.approx(100 * 70 / 980)
    print_table(worse)
    assert "does NOT beat the CLM-only control: overall bpb +7.14%" in capsys.readouterr().out


def test_rerun_uses_cache_and_recipe_change_reruns_only_training(demo_dir):
    first = _results(demo_dir)
    assert main(["demo", "--size", "tiny", "--out", demo_dir]) == 0
    again = _results(demo_dir)
    assert set(again["cached_stages"]) == set(again["stage_seconds"])
    assert again["held_out_bpb"] == first["held_out_bpb"]
    # compute times are those recorded when the stages ran, not this invocation's
    assert again["stage_seconds"] == first["stage_seconds"]
    assert again["seconds_all_stages"] == first["seconds_all_stages"]

    assert main(["demo", "--size", "tiny", "--out", demo_dir, "--lm-weight", "0.2"]) == 0
    changed = _results(demo_dir)
    rerun = set(changed["stage_seconds"]) - set(changed["cached_stages"])
    assert rerun == {"train:fused:span", "score:fused:span", "validate:fused:span"}
    assert changed["config"]["lm_weight"] == 0.2
    assert changed["held_out_bpb"]["clm_baseline"] == first["held_out_bpb"]["clm_baseline"]
    assert changed["held_out_bpb"]["fused"] != first["held_out_bpb"]["fused"]


def test_results_record_environment_validation_and_threads(demo_dir):
    import torch
    import transformers

    import fusekern

    res = _results(demo_dir)
    env = res["environment"]
    assert env["fusekern"] == fusekern.__version__
    assert env["torch"] == torch.__version__ and env["transformers"] == transformers.__version__
    assert "git_commit" in env  # None outside a git checkout
    assert set(res["validation_bpb"]) == {"clm_baseline", "fused"}
    assert all(v > 0 for r in res["validation_bpb"].values() for v in r.values())
    assert isinstance(res["threads"], int) and res["threads"] >= 1
    assert res["config"]["positions"] == "span" and res["config"]["size"] == "tiny"


def test_tiny_gives_no_verdict(capsys):
    for fused, control in ((0.9, 1.0), (1.0, 0.9)):
        print_table(_constructed_results(fused, control, size="tiny"))
        out = capsys.readouterr().out
        assert "numbers mean nothing" in out
        assert "beat" not in out.lower()  # no verdict either way


def test_positions_rule_shares_everything_upstream_and_the_control(demo_dir):
    first = _results(demo_dir)
    assert main(["demo", "--size", "tiny", "--out", demo_dir, "--positions", "boundary"]) == 0
    res = _results(demo_dir)
    rerun = set(res["stage_seconds"]) - set(res["cached_stages"])
    assert rerun == {
        "align:boundary",
        "pack:boundary",
        "train:fused:boundary",
        "score:fused:boundary",
        "validate:fused:boundary",
    }
    assert res["config"]["positions"] == "boundary"
    assert res["held_out_bpb"]["clm_baseline"] == first["held_out_bpb"]["clm_baseline"]
    meta = json.load(open(os.path.join(demo_dir, "data", "aligned_boundary", "align_meta.json")))
    span = json.load(open(os.path.join(demo_dir, "data", "aligned_span", "align_meta.json")))
    for name in SOURCES:
        assert meta["aligned_fraction"][name] >= span["aligned_fraction"][name]
        assert meta["one_to_one_fraction"][name] == span["aligned_fraction"][name]


def test_stage_cache_is_keyed_on_code(demo_dir, monkeypatch):
    """A changed pack stage (new code) reruns pack and what reads it, nothing upstream."""
    from fusekern.demo import cache

    real = cache.code_digest
    monkeypatch.setattr(cache, "code_digest", lambda stage: real(stage) + ("x" if stage == "pack" else ""))
    assert main(["demo", "--size", "tiny", "--out", demo_dir]) == 0
    res = _results(demo_dir)
    rerun = set(res["stage_seconds"]) - set(res["cached_stages"])
    assert rerun == {"pack:span", "train:fused:span", "score:fused:span", "validate:fused:span"}
    # the digest covers every file a stage runs and the library versions
    assert real("pack") != real("align") and real("train") == real("train")


def test_stage_code_resolves_to_the_files_each_stage_runs(tmp_path, monkeypatch):
    """Every stage's code names existing files (a moved module must not drop out of the keys), the
    native extension is found wherever the package keeps it, and editing a file changes exactly
    the digests of the stages that run it."""
    import shutil
    from importlib.machinery import EXTENSION_SUFFIXES

    import fusekern
    from fusekern.demo import cache

    for stage, entries in cache._CODE.items():
        for entry in entries:
            assert cache.code_files(entry), (stage, entry)
        assert cache.code_digest(stage) == cache.code_digest(stage)
    natives = cache.code_files("_C")
    assert all(any(n.endswith(s) for s in EXTENSION_SUFFIXES) for n in natives)
    native = natives[0]

    copy = tmp_path / "fusekern"
    shutil.copytree(os.path.dirname(fusekern.__file__), copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "package_dir", lambda: str(copy))
    before = {stage: cache.code_digest(stage) for stage in cache._CODE}
    with open(copy / "demo" / "toy" / "corpus.py", "a") as f:
        f.write("\n# edited\n")
    after = {stage: cache.code_digest(stage) for stage in cache._CODE}
    assert {s for s in before if before[s] != after[s]} == {"corpus"}
    moved = copy / os.path.relpath(native, os.path.dirname(fusekern.__file__))
    shutil.move(moved, copy if moved.parent != copy else copy / "align")  # to another folder
    assert cache.code_digest("align") != after["align"]  # found in its new place, under its new path
    monkeypatch.setitem(cache._CODE, "score", ("demo/gone.py",))
    with pytest.raises(FileNotFoundError, match="demo/gone.py"):
        cache.code_digest("score")


def test_default_threads_follow_the_free_cores(monkeypatch):
    from fusekern.demo.run import default_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert default_threads() == 4
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert default_threads() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert default_threads() == 1


def test_one_colour_per_run_in_every_panel():
    from fusekern.demo.report import run_colors

    names = ["prose_neox", "code_mpt", "target_before", "clm_baseline", "fused"]
    colors = run_colors(names)
    assert len(set(colors.values())) == len(names)
    assert colors["clm_baseline"] == "tab:gray" and colors["fused"] == "tab:red"
    assert run_colors(names) == colors


def test_bad_flags(tmp_path, capsys):
    assert main(["demo", "--size", "tiny", "--out", str(tmp_path), "--lm-weight", "1.5"]) == 2
    assert "--lm-weight" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--size", "huge"])
