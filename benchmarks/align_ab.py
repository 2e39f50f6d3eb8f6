"""Align throughput of two checkouts of fusekern, compared process by process.

This machine's speed drifts by up to 2x over minutes, so an old/new comparison is only fair when
the two codes alternate: each worker process imports one checkout, runs one positions rule on
``bench_pipeline``'s data (S = 2, K = 10, prebuilt vocab maps, 1 process, 1 native thread), drops
one warm-up call and times ``--calls`` calls into fresh output directories (removed outside the
timing); per rule the workers alternate old, new for ``--rounds`` rounds. Prints per rule the
median, best and worst target tokens per CPU-second and the new/old ratio of median CPU time.

Run: ``python benchmarks/align_ab.py OLD_CHECKOUT NEW_CHECKOUT`` (each checkout's native module
built, e.g. ``python setup.py build_ext --inplace`` there; the data is built once with the
installed fusekern under ``--data``). Results: benchmarks/RESULTS.md, "Align throughput: a
steady rate".
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

NAMES = ["s_bbpe", "s_sp"]


def worker(checkout: str, rule: str, calls: int, data: str) -> None:
    sys.path.insert(0, os.path.abspath(checkout))  # the checkout under test, ahead of any install
    import fusekern
    from fusekern.pipeline import run_align

    assert fusekern.__file__.startswith(os.path.abspath(checkout)), fusekern.__file__
    setup = json.load(open(os.path.join(data, "setup.json")))

    def call(out: str) -> None:
        run_align(
            setup["target"], setup["data"], [setup["extracts"][n] for n in NAMES], out, source_names=NAMES,
            vocab_maps=[setup["maps"][n] for n in NAMES], num_proc=1, threads=1, positions=rule,
        )  # fmt: skip

    scratch = os.path.join(data, f"out-{os.getpid()}")
    call(scratch + "-warm")  # the process's lazy imports
    cpu = []
    for i in range(calls):
        out = f"{scratch}-{i}"
        c0 = time.process_time()
        call(out)
        cpu.append(time.process_time() - c0)
        shutil.rmtree(out)
    shutil.rmtree(scratch + "-warm")
    print(json.dumps({"cpu": cpu}))


def build(data: str) -> None:
    if os.path.isfile(os.path.join(data, "setup.json")):
        return
    from bench_pipeline import build_setup  # beside this script: on sys.path when run as a script

    os.makedirs(data, exist_ok=True)
    s = build_setup(pathlib.Path(data))
    keep = {k: s[k] for k in ("target", "data", "extracts", "maps")}
    with open(os.path.join(data, "setup.json"), "w") as f:
        json.dump(keep, f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--rules", nargs="+", default=["span", "boundary", "all"])
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--data", default="/tmp/fusekern_align_ab")
    p.add_argument("--worker", nargs=4, metavar=("CHECKOUT", "RULE", "CALLS", "DATA"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        checkout, rule, calls, data = a.worker
        worker(checkout, rule, int(calls), data)
        return
    build(a.data)
    setup = json.load(open(os.path.join(a.data, "setup.json")))
    from fusekern.pipeline.io import encode, load_texts, load_tokenizer

    texts = load_texts(setup["data"])["text"]
    n_tokens = sum(len(x) + 1 for x in encode(load_tokenizer(setup["target"]), texts))  # + EOS each
    print(time.strftime("%Y-%m-%d %H:%M"), f"{n_tokens} target tokens, {a.calls} calls x {a.rounds} rounds")
    for rule in a.rules:
        cpu: dict = {"old": [], "new": []}
        for _ in range(a.rounds):
            for which in ("old", "new"):
                job = ["--worker", getattr(a, which), rule, str(a.calls), a.data]
                cmd = [sys.executable, __file__, "old", "new", *job]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                cpu[which] += json.loads(out.strip().splitlines()[-1])["cpu"]
        med = {k: statistics.median(v) for k, v in cpu.items()}
        for which in ("old", "new"):
            c = cpu[which]
            print(
                f"{rule:9s} {which}: median {n_tokens / med[which] / 1e3:.0f} k tokens/CPU-s "
                f"(best {n_tokens / min(c) / 1e3:.0f} k, worst {n_tokens / max(c) / 1e3:.0f} k, n = {len(c)})"
            )
        print(f"{rule:9s} new/old median CPU time {med['new'] / med['old']:.3f}")


if __name__ == "__main__":
    main()
