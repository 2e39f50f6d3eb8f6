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
    with open(os.path.join(demo_dir, "data", "packed_span", "fusion_meta.json")) as f:
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


def test_tiny_gives_no_verdict(demo_dir, capsys):
    assert main(["demo", "--size", "tiny", "--out", demo_dir]) == 0  # all cached
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
    from fusekern.demo import run as demo_run

    real = demo_run.code_digest
    monkeypatch.setattr(demo_run, "code_digest", lambda stage: real(stage) + ("x" if stage == "pack" else ""))
    assert main(["demo", "--size", "tiny", "--out", demo_dir]) == 0
    res = _results(demo_dir)
    rerun = set(res["stage_seconds"]) - set(res["cached_stages"])
    assert rerun == {"pack:span", "train:fused:span", "score:fused:span", "validate:fused:span"}
    # the digest covers every file a stage runs and the library versions
    assert real("pack") != real("align") and real("train") == real("train")


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
