"""CPU benchmark of the loss ops: chunked PyTorch path vs the dense FuseLLM recipe, fwd+bwd.

Sizes from issue 3: N=2048 positions, V=32000, S=3 sources, K=10, fp32 student logits, fp16
teacher logits. "Extra peak memory" = peak resident memory during fwd+bwd minus the resident
memory before it (inputs already allocated), read from /proc/self/status (VmHWM, reset through
/proc/self/clear_refs), so it counts every buffer either implementation touches, the final
gradient included.

Also (issue 12): the loss pass alone — ``FusionLoss``'s PyTorch row pass, fwd+bwd on given
logits — against ``F.cross_entropy`` fwd+bwd on the same logits, N=4096, V=32000, S=3, K=64, at 1
thread and at the default thread count.

Run either way (both print the tables):
    python benchmarks/bench_loss.py            # table + targets, for RESULTS.md
    pytest benchmarks/bench_loss.py -s         # the same, via pytest-benchmark
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from _memory import timed_peak  # benchmarks/, on sys.path under pytest and as a script

import fusekern
from fusekern.testing.ops_reference import fusion_loss_ref, fusion_module_ref

N, V, S, K = 2048, 32000, 3, 10


def make_inputs(seed: int = 0, n: int = N, v: int = V) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, v, (n, S, K), generator=g)
    ids[torch.rand(n, S, K, generator=g) < 0.05] = -1
    labels = torch.randint(0, v, (2, n // 2), generator=g)
    labels[:, :3] = -100
    return {
        "x": torch.randn(n, v, generator=g) * 2,
        "ids": ids,
        "lg": (torch.randn(n, S, K, generator=g) * 3).half(),
        "ce": torch.rand(n, S, generator=g) * 3,
        "labels": labels,
    }


def _fusion(impl: str) -> Callable[[torch.Tensor, Dict[str, torch.Tensor]], torch.Tensor]:
    if impl == "dense":
        return lambda x, d: fusion_loss_ref(x, d["ids"], d["lg"], d["ce"], method="min_ce")
    return lambda x, d: fusekern.fusion_loss(x, d["ids"], d["lg"], d["ce"], method="min_ce", backend="torch")


def _module(impl: str) -> Callable[[torch.Tensor, Dict[str, torch.Tensor]], torch.Tensor]:
    def shape(d):
        b, t = d["labels"].shape
        return b, t

    if impl == "dense":

        def run(x, d):
            b, t = shape(d)
            return fusion_module_ref(
                x.view(b, t, -1),
                d["labels"],
                d["ids"].view(b, t, S, K),
                d["lg"].view(b, t, S, K),
                d["ce"].view(b, t, S),
                lm_weight=0.9,
            )

        return run
    mod = fusekern.FusionLoss(0.9, backend="torch")

    def run(x, d):
        b, t = shape(d)
        return mod(
            x.view(b, t, -1),
            d["labels"],
            d["ids"].view(b, t, S, K),
            d["lg"].view(b, t, S, K),
            d["ce"].view(b, t, S),
        )

    return run


OPS = {"fusion_loss": _fusion, "FusionLoss": _module}


def measure(op: str, impl: str, d: Dict[str, torch.Tensor], reps: int = 3) -> Tuple[float, int]:
    """Best-of-``reps`` wall time (s) and extra peak memory (bytes) of one fwd+bwd."""
    fn = OPS[op](impl)
    best_t, peak = float("inf"), 0
    for _ in range(reps):
        x = d["x"].clone().requires_grad_()
        dt, p = timed_peak(lambda: fn(x, d).backward())  # noqa: B023 (called at once)
        peak = max(peak, p)
        best_t = min(best_t, dt)
    return best_t, peak


def compare(op: str, d: Dict[str, torch.Tensor], reps: int = 3) -> Dict[str, float]:
    # warm both (first-touch page faults, lazy init), then interleave so load spikes hit both
    for impl in ("torch", "dense"):
        measure(op, impl, d, reps=1)
    res = {"dense_s": float("inf"), "torch_s": float("inf"), "dense_mb": 0.0, "torch_mb": 0.0}
    for _ in range(reps):
        for impl in ("dense", "torch"):
            t, m = measure(op, impl, d, reps=1)
            res[f"{impl}_s"] = min(res[f"{impl}_s"], t)
            res[f"{impl}_mb"] = max(res[f"{impl}_mb"], m / 2**20)
    res["time_ratio"] = res["dense_s"] / res["torch_s"]
    res["mem_ratio"] = res["dense_mb"] / max(res["torch_mb"], 1e-9)
    return res


def loss_pass(reps: int, n: int = 4096, v: int = 32000, k: int = 64) -> Dict[str, float]:
    """Best-of-reps fwd+bwd time of FusionLoss's row pass and of F.cross_entropy, same logits."""
    g = torch.Generator().manual_seed(5)
    b, t = 2, n // 2
    ids = torch.randint(0, v, (b, t, S, k), generator=g)
    ids[torch.rand(b, t, S, k, generator=g) < 0.05] = -1
    lg = (torch.randn(b, t, S, k, generator=g) * 3).half()
    ce = torch.rand(b, t, S, generator=g) * 3
    labels = torch.randint(0, v, (b, t), generator=g)
    x0 = torch.randn(n, v, generator=g) * 2
    mod = fusekern.FusionLoss(0.9, backend="torch")
    lab = labels.reshape(n)
    fns = {
        "fusion": lambda x: mod(x.view(b, t, v), labels, ids, lg, ce),
        "cross_entropy": lambda x: F.cross_entropy(x, lab),
    }
    best = {name: float("inf") for name in fns}
    for i in range(reps + 1):  # first round: warm-up
        for name, fn in fns.items():
            x = x0.clone().requires_grad_()
            t0 = time.perf_counter()
            fn(x).backward()
            if i:
                best[name] = min(best[name], time.perf_counter() - t0)
            del x
    best["ratio"] = best["cross_entropy"] / best["fusion"]
    return best


def report(reps: int) -> None:
    """Print every table of this benchmark (python benchmarks/bench_loss.py or pytest -s)."""
    d = make_inputs()
    print(
        f"\nN={N} V={V} S={S} K={K} fp32 logits, fp16 teacher, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
        f"grad N×V = {N * V * 4 / 2**20:.0f} MiB"
    )
    cols = ["op (fwd+bwd)", "dense time", "torch time", "time ratio", "dense extra peak", "torch extra peak"]
    print("| " + " | ".join(cols + ["mem ratio"]) + " |")
    print("|---|---|---|---|---|---|---|")
    for op in OPS:
        r = compare(op, d, reps=reps)
        print(
            f"| {op} | {r['dense_s']:.3f} s | {r['torch_s']:.3f} s | {r['time_ratio']:.1f}x | "
            f"{r['dense_mb']:.0f} MiB | {r['torch_mb']:.0f} MiB | {r['mem_ratio']:.1f}x |"
        )
        ok = r["mem_ratio"] >= 4 and r["time_ratio"] >= 2
        print(f"  targets (>=4x less memory, <=1/2 time): {'met' if ok else 'MISSED'}")
    threads = torch.get_num_threads()
    print("\nloss pass only (FusionLoss row pass vs F.cross_entropy, fwd+bwd, N=4096, V=32000, S=3, K=64)")
    print("| threads | FusionLoss | F.cross_entropy | FusionLoss faster by |")
    print("|---|---|---|---|")
    for nt in sorted({1, threads}):
        torch.set_num_threads(nt)
        try:
            lp = loss_pass(reps)
        finally:
            torch.set_num_threads(threads)
        print(f"| {nt} | {lp['fusion']:.3f} s | {lp['cross_entropy']:.3f} s | {lp['ratio']:.2f}x |")
    print("  target: >= 1.5x")


# ---------------------------------------------------------------------------------------------
# pytest-benchmark entry points (not collected by the default test run: testpaths = tests)
# ---------------------------------------------------------------------------------------------
def _bench(benchmark, op: str) -> None:
    d = make_inputs()
    res = compare(op, d, reps=2)
    benchmark.extra_info.update({k: round(v, 4) for k, v in res.items()})
    fn = OPS[op]("torch")

    def setup():
        return (d["x"].clone().requires_grad_(), d), {}

    benchmark.pedantic(lambda x, dd: fn(x, dd).backward(), setup=setup, rounds=3, iterations=1)


def test_bench_fusion_loss_torch_vs_dense(benchmark):
    _bench(benchmark, "fusion_loss")


def test_bench_fusion_module_torch_vs_dense(benchmark):
    _bench(benchmark, "FusionLoss")


def test_bench_loss_tables(benchmark):
    """Prints every table RESULTS.md reports for the loss ops (run with -s)."""
    benchmark.pedantic(lambda: report(reps=2), rounds=1, iterations=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report(args.reps)


if __name__ == "__main__":
    main()
