"""The pipeline subcommands end to end, their errors, and an extraction killed part-way and
resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import datasets
import pytest
from pipeline_helpers import TARGET, run_cli

from fusekern.cli import main
from fusekern.demo.toy.corpus import stdlib_prose
from fusekern.pipeline import load_extract, load_packed
from fusekern.pipeline.extract import shard_name
from fusekern.pipeline.formats import EXTRACT_LOG_FILE

pytest_plugins = ["pipeline_fixtures"]  # shared, session-cached fixtures


def test_cli_stages_end_to_end(tiny_lms, tmp_path, capsys):
    src = tmp_path / "corpus.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in stdlib_prose(50)[46:49]))
    tgt, s1 = tiny_lms[TARGET].path, tiny_lms["neox_bbpe"].path
    d = {k: str(tmp_path / k) for k in ("split", "ext_t", "ext_s", "aligned", "packed")}
    vm = str(tmp_path / "s1.npz")
    assert (
        main(
            ["split", "--data", str(src), "--tokenizers", tgt, s1, "--block-size", "64", "--out", d["split"]]
        )
        == 0
    )
    n = len(datasets.load_from_disk(d["split"]))
    assert n > 3
    for model, out in ((tgt, d["ext_t"]), (s1, d["ext_s"])):
        rc = main(
            [
                "extract",
                "--model",
                model,
                "--data",
                d["split"],
                "--out",
                out,
                "--top-k",
                "4",
                "--num-shards",
                "2",
                "--no-progress",
            ]
        )
        assert rc == 0
    assert main(["vocab-map", "--source", s1, "--target", tgt, "--out", vm]) == 0
    rc = main(
        [
            "align",
            "--target-tokenizer",
            tgt,
            "--data",
            d["split"],
            "--sources",
            d["ext_t"],
            d["ext_s"],
            "--source-names",
            "self",
            "neox",
            "--vocab-maps",
            "none",
            vm,
            "--out",
            d["aligned"],
        ]
    )
    assert rc == 2 and "--vocab-maps: no such file or directory: 'none'" in capsys.readouterr().err
    rc = main(
        [
            "align",
            "--target-tokenizer",
            tgt,
            "--data",
            d["split"],
            "--sources",
            d["ext_t"],
            d["ext_s"],
            "--source-names",
            "self",
            "neox",
            "--out",
            d["aligned"],
            "--mode",
            "fusellm",
        ]
    )
    assert rc == 0
    assert main(["pack", "--aligned", d["aligned"], "--block-size", "64", "--out", d["packed"]]) == 0
    ds, meta = load_packed(d["packed"])
    assert meta["sources"] == ["self", "neox"] and meta["top_k"] == 4 and meta["mode"] == "fusellm"
    assert len(ds) == n and all(len(x) <= 64 for x in ds["input_ids"])


def test_cli_parses_without_the_heavy_libraries():
    """The option choices come from light modules: building and using the parser imports neither
    torch, transformers, datasets nor numpy (they load when a command runs)."""
    code = (
        "import sys\n"
        "from fusekern.cli import build_parser\n"
        "p = build_parser()\n"
        "p.parse_args(['align', '--target-tokenizer', 't', '--data', 'd', '--sources', 's', '--out', 'o',\n"
        "              '--mode', 'fusellm', '--positions', 'span'])\n"
        "p.parse_args(['pack', '--aligned', 'a', '--out', 'o', '--block-size', '8'])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_cli_reports_bad_input(tiny_lms, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "no text column here"}))
    rc = main(["extract", "--model", tiny_lms[TARGET].path, "--data", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "fusekern extract: error:" in err and "no text column 'text'" in err
    rc = main(["pack", "--aligned", str(tmp_path), "--block-size", "8", "--out", str(tmp_path / "p")])
    assert rc == 2 and "not an aligned dataset" in capsys.readouterr().err


def test_extract_killed_part_way_resumes_without_recomputing(tiny_lms, docs, tmp_path):
    data = str(tmp_path / "data")
    datasets.Dataset.from_dict({"text": docs[:16]}).save_to_disk(data)
    model = tiny_lms["gpt2_uni"].path
    out = str(tmp_path / "ext")
    args = [
        "extract",
        "--model",
        model,
        "--data",
        data,
        "--out",
        out,
        "--num-shards",
        "4",
        "--top-k",
        "5",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    # Pause after each written window so that the kill lands inside shard 1.
    proc = run_cli(args, extract_pause=1.5)
    first = os.path.join(out, shard_name(0, 4))
    deadline = time.time() + 180

    def inside_shard_1() -> bool:  # shard 0 renamed into place, shard 1's temporary started
        names = os.listdir(out) if os.path.isdir(out) else []
        return os.path.isdir(first) and any(n.startswith(".tmp-" + shard_name(1, 4)) for n in names)

    while not inside_shard_1():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "shard 1 never started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    st0 = os.stat(os.path.join(first, "data.arrow"))
    assert not os.path.isdir(os.path.join(out, shard_name(3, 4)))
    assert any(n.startswith(".tmp-" + shard_name(1, 4)) for n in os.listdir(out))  # half-written
    with pytest.raises(ValueError, match="incomplete"):
        load_extract(out)

    assert main(args) == 0  # the rerun finishes the job ...
    ds, meta = load_extract(out)
    assert len(ds) == 16 and meta["num_shards"] == 4
    st1 = os.stat(os.path.join(first, "data.arrow"))
    assert (st1.st_ino, st1.st_mtime_ns) == (st0.st_ino, st0.st_mtime_ns)  # ... without redoing shard 0
    log = open(os.path.join(out, EXTRACT_LOG_FILE)).read()
    assert log.count("computed " + shard_name(0, 4)) == 1 and log.count("computed " + shard_name(3, 4)) == 1
    assert not any(n.startswith(".tmp-") for n in os.listdir(out))

    ref = str(tmp_path / "ref")  # identical to an uninterrupted run
    assert main([*args[:6], ref, *args[7:]]) == 0
    for i in range(4):
        a = open(os.path.join(out, shard_name(i, 4), "data.arrow"), "rb").read()
        b = open(os.path.join(ref, shard_name(i, 4), "data.arrow"), "rb").read()
        assert a == b, i
