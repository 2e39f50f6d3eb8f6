"""`fusekern demo` at toy size (--size tiny): every stage runs, results and plot are written,
stages are cached and a recipe change reruns only what it affects. The full demo is not run here."""

from __future__ import annotations

import json
import math
import os

import pytest

from fusekern.cli import main

VARIANTS = ("target_before", "clm_baseline", "fused")
SOURCES = ("prose_neox", "code_mpt")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    assert main(["demo", "--size", "tiny", "--out", out]) == 0
    return out


def _results(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


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
    assert res["seconds"] > 0
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
    cmp = res["fused_vs_clm_baseline"]
    assert cmp["fused_better"] == (bpb["fused"] < bpb["clm_baseline"])
    # same steps for both runs, the fused one with its λ, the control with λ = 1
    logs = res["train_log_history"]
    fused_w = {h["lm_weight"] for h in logs["fused"] if "lm_weight" in h}
    base_w = {h["lm_weight"] for h in logs["clm_baseline"] if "lm_weight" in h}
    assert fused_w == {res["config"]["lm_weight"]} and base_w == {1.0}
    with open(os.path.join(demo_dir, "demo.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # the pipeline stages' outputs are there, with the sources fused into the target
    with open(os.path.join(demo_dir, "data", "packed", "fusion_meta.json")) as f:
        meta = json.load(f)
    assert meta["sources"] == list(SOURCES) and meta["target"]
    for name in SOURCES:
        assert os.path.isfile(os.path.join(demo_dir, "data", "vocab_maps", f"{name}.npz"))


def test_rerun_uses_cache_and_recipe_change_reruns_only_training(demo_dir):
    first = _results(demo_dir)
    assert main(["demo", "--size", "tiny", "--out", demo_dir]) == 0
    again = _results(demo_dir)
    assert set(again["cached_stages"]) == set(again["stage_seconds"])
    assert again["held_out_bpb"] == first["held_out_bpb"]

    assert main(["demo", "--size", "tiny", "--out", demo_dir, "--lm-weight", "0.2"]) == 0
    changed = _results(demo_dir)
    rerun = set(changed["stage_seconds"]) - set(changed["cached_stages"])
    assert rerun == {"train:fused", "score:fused"}
    assert changed["config"]["lm_weight"] == 0.2
    assert changed["held_out_bpb"]["clm_baseline"] == first["held_out_bpb"]["clm_baseline"]
    assert changed["held_out_bpb"]["fused"] != first["held_out_bpb"]["fused"]


def test_bad_flags(tmp_path, capsys):
    assert main(["demo", "--size", "tiny", "--out", str(tmp_path), "--lm-weight", "1.5"]) == 2
    assert "--lm-weight" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--size", "huge"])
