#!/usr/bin/env python
"""GPU check of the fusekern loss kernels (issue 3). Run through benchmarks/gpu_check.sh.

For every op (sparse_kl_loss, fusion_loss, FusionLoss, merge_topk) at N=8192, V in {32000,
128256}, S=3, K=10, dtype in {bf16, fp32}:
  1. correctness of the Triton path against the dense FuseLLM-style reference, computed in fp32
     in row chunks (so the reference never needs N×V×S memory): loss and every gradient row;
  2. fwd+bwd time (triton.testing.do_bench, median, L2 flushed) of the Triton op, of the bare
     kernel, of the chunked PyTorch path and of the dense reference (run in the logits' dtype, the
     way FuseLLM trains; if it would not fit in memory it runs on N/k rows and is scaled by k);
  3. peak extra memory of each (torch.cuda.max_memory_allocated over the call);
  4. the fraction of the memory-bandwidth floor (read the logits once + write the gradient once,
     2·N·V·bytes) reached, against the nominal peak of the card (from its name) and against the
     copy bandwidth measured here;
  5. a sweep of kernel launch configurations (single-read vs streaming, block size, warps);
  6. (issue 12) ``LinearFusionLoss`` — the loss straight from the LM head — against the logits
     path (``h @ W.T`` in bf16 + ``FusionLoss``) at B·T=8192, H=4096, V=128256, S=3, K=10, bf16:
     loss and gradients of hidden/weight, fwd+bwd time and extra peak memory, with PASS/FAIL for
     memory ≤ 1/8 and time ≤ 1.1x of the logits path.
Prints a short table last; writes gpu_check.json under $OUT (or --out) when set.

``--smoke`` runs the same code paths on the CPU under TRITON_INTERPRET=1 at tiny sizes.
Imports the installed ``fusekern`` (gpu_check.sh installs it, or puts the checkout on PYTHONPATH).
"""

from __future__ import annotations

import os
import sys

SMOKE = "--smoke" in sys.argv
if SMOKE:  # must happen before triton is imported anywhere
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Any, Callable, Dict, List, Tuple  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fusekern  # noqa: E402
from fusekern.ops._backend import launch_config  # noqa: E402
from fusekern.ops.engine.triton_rows import triton_rows  # noqa: E402
from fusekern.testing import ops_reference as R  # noqa: E402
from fusekern.testing.ops_override import override_config  # noqa: E402

S, K = 3, 10
LM_WEIGHT = 0.9
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
TOL = {"bf16": (2e-4, 2e-2), "fp16": (2e-4, 5e-3), "fp32": (2e-5, 2e-4)}  # (loss rel, grad rel-to-max)
PEAK_BW = [  # (substrings that must all appear in the device name, bytes/s)
    (("H200",), 4.8e12),
    (("H100", "NVL"), 3.9e12),
    (("H100", "PCIE"), 2.0e12),
    (("H100",), 3.35e12),
    (("GH200",), 4.0e12),
    (("A100", "80GB", "PCIE"), 1.935e12),
    (("A100", "80GB"), 2.039e12),
    (("A100",), 1.555e12),
]


def nominal_bandwidth(name: str) -> float | None:
    up = name.upper()
    for keys, bw in PEAK_BW:
        if all(k in up for k in keys):
            return bw
    return None


# ----------------------------------------------------------------------------------------------
# environment: timing and memory on CUDA, plain timers on the CPU (smoke)
# ----------------------------------------------------------------------------------------------
class Env:
    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        self.device = torch.device("cpu" if smoke else "cuda")

    def sync(self) -> None:
        if not self.smoke:
            torch.cuda.synchronize()

    def bench(self, fn: Callable[[], Any], grad_to_none: List[torch.Tensor]) -> float:
        """Median ms of fn()."""
        if self.smoke:
            ts = []
            for _ in range(1):
                for t in grad_to_none:
                    t.grad = None
                t0 = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(ts)
        import triton.testing

        return float(
            triton.testing.do_bench(fn, warmup=10, rep=60, grad_to_none=grad_to_none, return_mode="median")
        )

    def peak_extra(self, fn: Callable[[], Any]) -> float | None:
        """Peak bytes allocated during fn() beyond what was allocated before it."""
        if self.smoke:  # no allocator statistics on the CPU: nothing to measure
            return None
        self.sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        self.sync()
        return float(torch.cuda.max_memory_allocated() - base)

    def free_bytes(self) -> float:
        if self.smoke:
            return float("inf")
        torch.cuda.empty_cache()
        return float(torch.cuda.mem_get_info()[0])


# ----------------------------------------------------------------------------------------------
# inputs and ops
# ----------------------------------------------------------------------------------------------
def make_inputs(
    N: int, V: int, dtype: torch.dtype, T: int, dev: torch.device, seed: int = 0
) -> Dict[str, Any]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    gx = torch.Generator(device=dev).manual_seed(seed)  # the big tensor is generated in place
    x = (torch.randn(N, V, generator=gx, device=dev, dtype=torch.float32) * 2).to(dtype)
    ids = torch.randint(0, V, (N, S, K), generator=g, dtype=torch.int64)
    ids[torch.rand(N, S, K, generator=g) < 0.05] = -1
    ids[torch.rand(N, S, generator=g) < 0.05] = -1
    ids[:: max(N // 16, 1)] = -1  # some positions without any teacher
    lg = (torch.randn(N, S, K, generator=g) * 3).half()
    ce = torch.rand(N, S, generator=g) * 3
    mask = torch.rand(N, generator=g) < 0.05
    labels = torch.randint(0, V, (N // T, T), generator=g)
    labels[torch.rand(N // T, T, generator=g) < 0.05] = -100
    # the gold token among the teacher ids at some positions (shared gradient column)
    nxt = torch.full_like(labels, -100)
    nxt[:, :-1] = labels[:, 1:]
    nxt = nxt.reshape(N)
    sel = (torch.arange(N) % 3 == 0) & (nxt >= 0)
    ids[sel, 0, 0] = nxt[sel]
    d = {
        "x": x,
        "ids": ids.to(torch.int32),
        "lg": lg,
        "ce": ce,
        "mask": mask,
        "labels": labels.to(torch.int32),
        "nxt": nxt,
        "T": T,
    }
    return {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in d.items()}


def subset(d: Dict[str, Any], rows: int) -> Dict[str, Any]:
    """The first ``rows`` positions (whole sequences, for FusionLoss)."""
    T = d["T"]
    rows = max(T, rows // T * T)
    out = {k: (v[:rows] if isinstance(v, torch.Tensor) and k != "labels" else v) for k, v in d.items()}
    out["labels"] = d["labels"][: rows // T]
    return out


def run_op(op: str, x: torch.Tensor, d: Dict[str, Any], backend: str) -> Any:
    if op == "sparse_kl":
        return fusekern.sparse_kl_loss(
            x, d["ids"][:, 0], d["lg"][:, 0], ignore_mask=d["mask"], backend=backend
        )
    if op == "fusion_loss":
        return fusekern.fusion_loss(
            x, d["ids"], d["lg"], d["ce"], method="min_ce", ignore_mask=d["mask"], backend=backend
        )
    if op == "FusionLoss":
        T = d["T"]
        B = x.shape[0] // T
        mod = fusekern.FusionLoss(LM_WEIGHT, "avg_ce", backend=backend)
        return mod(
            x.view(B, T, -1),
            d["labels"],
            d["ids"].view(B, T, S, K),
            d["lg"].view(B, T, S, K),
            d["ce"].view(B, T, S),
        )
    if op == "merge_topk":
        return fusekern.merge_topk(d["ids"], d["lg"], d["ce"], method="min_ce", backend=backend)
    raise ValueError(op)


def run_dense(op: str, x: torch.Tensor, d: Dict[str, Any]) -> torch.Tensor:
    """The FuseLLM recipe in the logits' dtype (dense targets, autograd)."""
    if op == "sparse_kl":
        return R.sparse_kl_loss_ref(x, d["ids"][:, 0], d["lg"][:, 0], ignore_mask=d["mask"])
    if op == "fusion_loss":
        return R.fusion_loss_ref(x, d["ids"], d["lg"], d["ce"], method="min_ce", ignore_mask=d["mask"])
    T = d["T"]
    B = x.shape[0] // T
    return R.fusion_module_ref(
        x.view(B, T, -1),
        d["labels"],
        d["ids"].view(B, T, S, K),
        d["lg"].view(B, T, S, K),
        d["ce"].view(B, T, S),
        lm_weight=LM_WEIGHT,
        method="avg_ce",
    )


def kernel_fn(op: str, x: torch.Tensor, d: Dict[str, Any]) -> Callable[[], Any]:
    """The bare Triton kernel (no validation, no autograd): what the bandwidth floor measures."""
    ids, lg, ce = d["ids"], d["lg"], d["ce"]
    keep = ~d["mask"]
    labels = None
    method: str | None = "min_ce"
    if op == "sparse_kl":
        ids, lg, ce, method = ids[:, :1].contiguous(), lg[:, :1].contiguous(), None, None
    elif op == "FusionLoss":
        labels = torch.where(d["nxt"] < 0, -1, d["nxt"]).to(torch.int32)
        keep = d["nxt"] >= 0
        method = "avg_ce"
    use = (ids >= 0).flatten(1).any(1) & keep  # what the op computes on the host
    coef = torch.tensor([0.01, 0.001], device=x.device)
    xd = x.detach()
    return lambda: triton_rows(xd, ids, lg, ce, use, labels, coef, method, 1.0, True, True)


# ----------------------------------------------------------------------------------------------
# chunked fp32 reference: loss and gradient rows without N×V×S memory
# ----------------------------------------------------------------------------------------------
def check_against_reference(
    op: str, d: Dict[str, Any], loss: torch.Tensor, grad: torch.Tensor, rows: int
) -> Tuple[float, float]:
    N = d["x"].shape[0]
    ids, lg, ce, mask, nxt = d["ids"], d["lg"], d["ce"], d["mask"], d["nxt"]
    present = (ids >= 0).flatten(1).any(1)
    if op == "sparse_kl":
        n = ((ids[:, 0] >= 0).any(-1) & ~mask).sum().clamp_min(1)
    elif op == "fusion_loss":
        n = (present & ~mask).sum().clamp_min(1)
    else:
        n_lm = (nxt != -100).sum().clamp_min(1)
        n_f = ((nxt != -100) & present).sum().clamp_min(1)
    total = 0.0
    err = 0.0
    gmax = 0.0
    for r0 in range(0, N, rows):
        r = slice(r0, min(N, r0 + rows))
        xc = d["x"][r].float().requires_grad_()
        if op == "sparse_kl":
            part = R.sparse_kl_loss_ref(xc, ids[r, 0], lg[r, 0], ignore_mask=mask[r], reduction="sum") / n
        elif op == "fusion_loss":
            part = R.fusion_loss_ref(
                xc, ids[r], lg[r], ce[r], method="min_ce", ignore_mask=mask[r], reduction="sum"
            )
            part = part / n
        else:
            clm = F.cross_entropy(xc, nxt[r].long(), ignore_index=-100, reduction="sum")
            fus = R.fusion_loss_ref(
                xc, ids[r], lg[r], ce[r], method="avg_ce", ignore_mask=nxt[r] == -100, reduction="sum"
            )
            part = LM_WEIGHT * clm / n_lm + (1 - LM_WEIGHT) * fus / n_f
        part.backward()
        total += float(part)
        err = max(err, float((xc.grad - grad[r].float()).abs().max()))
        gmax = max(gmax, float(xc.grad.abs().max()))
    return abs(float(loss) - total) / max(abs(total), 1e-6), err / max(gmax, 1e-30)


def check_merge(d: Dict[str, Any], V: int, rows: int) -> Tuple[float, float]:
    m_ids, m_p = run_op("merge_topk", None, d, "triton")  # type: ignore[arg-type]
    r = slice(0, min(rows, m_ids.shape[0]))
    dense = torch.zeros(r.stop, V, device=m_ids.device).scatter_add_(
        1, m_ids[r].clamp_min(0).long(), m_p[r] * (m_ids[r] >= 0)
    )
    ref = R.merge_topk_ref(d["ids"][r], d["lg"][r], d["ce"][r], V, method="min_ce", dtype=torch.float32)
    t_ids, t_p = run_op("merge_topk", None, d, "torch")  # type: ignore[arg-type]
    same_ids = float((t_ids != m_ids).sum())
    return float((dense - ref).abs().max()), same_ids


# ----------------------------------------------------------------------------------------------
# measurement of one (op, V, dtype)
# ----------------------------------------------------------------------------------------------
def measure_case(
    env: Env, op: str, d: Dict[str, Any], dt: str, args: argparse.Namespace, bw: Dict[str, float | None]
) -> Dict[str, Any]:
    N, V = d["x"].shape
    T = d["T"]
    res: Dict[str, Any] = {"op": op, "N": N, "V": V, "dtype": dt, "notes": []}
    if op == "merge_topk":
        err, ndiff = check_merge(d, V, args.ref_rows)
        res.update(ok=err < 1e-5 and ndiff == 0, merge_dense_err=err, ids_differing_from_torch=ndiff)
        for impl in ("triton", "torch"):
            res[f"{impl}_ms"] = env.bench(lambda impl=impl: run_op(op, None, d, impl), [])  # type: ignore[arg-type]
        return res

    # 1. correctness
    x = d["x"].clone().requires_grad_()
    loss = run_op(op, x, d, "triton")
    loss.backward()
    env.sync()
    rel_loss, rel_grad = check_against_reference(op, d, loss.detach(), x.grad, args.ref_rows)
    tl_, tg_ = TOL[dt]
    res.update(rel_loss_err=rel_loss, rel_grad_err=rel_grad, ok=rel_loss <= tl_ and rel_grad <= tg_)
    x.grad = None
    del loss

    # 2./3. time and memory of fwd+bwd per implementation
    def fwd_bwd(impl: str, dd: Dict[str, Any], xx: torch.Tensor) -> Callable[[], Any]:
        if impl == "dense":
            return lambda: run_dense(op, xx, dd).backward()
        return lambda: run_op(op, xx, dd, impl).backward()

    for impl in ("triton", "torch"):
        f = fwd_bwd(impl, d, x)
        res[f"{impl}_ms"] = env.bench(f, [x])
        x.grad = None
        res[f"{impl}_peak_mb"] = _mb(env.peak_extra(f))
        x.grad = None
    kf = kernel_fn(op, x, d)
    res["kernel_ms"] = env.bench(kf, [])
    res["kernel_config"] = launch_config(V, x.element_size())

    # dense reference: scale down N if it would not fit
    est = args.dense_buffers * N * V * x.element_size()
    free = min(env.free_bytes(), args.dense_mem_budget or float("inf"))
    k = 1
    while est / k > 0.8 * free and N // (2 * k) >= T:
        k *= 2
    for _attempt in range(3):
        dd = subset(d, N // k)
        xd = dd["x"].clone().requires_grad_()
        f = None
        try:
            f = fwd_bwd("dense", dd, xd)
            ms = env.bench(f, [xd])
            xd.grad = None
            mem = env.peak_extra(f)
            res["dense_ms"] = ms * k
            res["dense_peak_mb"] = None if mem is None else _mb(mem * k)
            if k > 1:
                res["notes"].append(f"dense reference measured on N/{k} rows and scaled x{k} (memory)")
            break
        except torch.cuda.OutOfMemoryError:
            k *= 2
        finally:
            del xd, f
            env.free_bytes()
    if "dense_ms" not in res:
        res["notes"].append("dense reference did not fit in memory")

    # 4. bandwidth floor
    floor_bytes = 2 * N * V * x.element_size()
    res["floor_bytes"] = floor_bytes
    for key, b in bw.items():
        if b:
            res[f"floor_frac_{key}"] = floor_bytes / b / (res["triton_ms"] / 1e3)
            res[f"kernel_floor_frac_{key}"] = floor_bytes / b / (res["kernel_ms"] / 1e3)
    if "dense_ms" in res:
        res["speedup_vs_dense"] = res["dense_ms"] / res["triton_ms"]
        if res.get("dense_peak_mb") and res.get("triton_peak_mb"):
            res["mem_ratio_vs_dense"] = res["dense_peak_mb"] / res["triton_peak_mb"]
    res["speedup_vs_torch"] = res["torch_ms"] / res["triton_ms"]
    return res


def check_linear(env: Env, args: argparse.Namespace) -> Dict[str, Any]:
    """LinearFusionLoss vs the logits path (h @ W.T + FusionLoss), bf16, Triton row pass.

    Memory = peak allocated during fwd+bwd beyond what was allocated before, *minus* the
    gradients of hidden and weight that both paths must return ("beyond grads"; the raw figures
    are reported too)."""
    smoke = env.smoke
    B, T, H, V = (2, 5, 16, 64) if smoke else (4, 2048, 4096, 128256)
    dt = torch.float32 if smoke else torch.bfloat16
    dev = env.device
    g = torch.Generator(device="cpu").manual_seed(0)
    h0 = (torch.randn(B, T, H, generator=g) * 1.0).to(dev, dt)
    w0 = (torch.randn(V, H, generator=g) * H**-0.5).to(dev, dt)
    ids = torch.randint(0, V, (B, T, S, K), generator=g)
    ids[torch.rand(B, T, S, K, generator=g) < 0.05] = -1
    lg = (torch.randn(B, T, S, K, generator=g) * 3).half()
    ce = torch.rand(B, T, S, generator=g) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) < 0.05] = -100
    ids, lg, ce, labels = (t.to(dev) for t in (ids, lg, ce, labels))
    backend = "triton"
    logits_mod = fusekern.FusionLoss(LM_WEIGHT, backend=backend)
    chunk = 4 if smoke else None  # smoke: several chunks, some splitting a sequence
    fused_mod = fusekern.LinearFusionLoss(LM_WEIGHT, chunk_size=chunk, backend=backend)

    def logits_path(h, w):
        return logits_mod(h @ w.T, labels, ids, lg, ce)

    def fused_path(h, w):
        return fused_mod(h, w, labels, ids, lg, ce)

    res: Dict[str, Any] = {
        "op": "LinearFusionLoss",
        "N": B * T,
        "H": H,
        "V": V,
        "dtype": str(dt),
        "notes": [],
    }
    outs = {}
    for name, fn in (("logits", logits_path), ("fused", fused_path)):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        loss = fn(h, w)
        loss.backward()
        env.sync()
        outs[name] = (float(loss), h.grad.float(), w.grad.float())
        del h, w, loss
    (l0, gh0, gw0), (l1, gh1, gw1) = outs["logits"], outs["fused"]
    res["rel_loss_err"] = abs(l1 - l0) / max(abs(l0), 1e-6)
    res["rel_grad_h_err"] = float((gh1 - gh0).abs().max() / gh0.abs().max().clamp_min(1e-30))
    res["rel_grad_w_err"] = float((gw1 - gw0).abs().max() / gw0.abs().max().clamp_min(1e-30))
    tol = (1e-5, 1e-4) if dt == torch.float32 else (2e-3, 5e-2)
    res["ok"] = res["rel_loss_err"] <= tol[0] and max(res["rel_grad_h_err"], res["rel_grad_w_err"]) <= tol[1]
    del outs, gh0, gw0, gh1, gw1

    grads_bytes = (h0.numel() + w0.numel()) * h0.element_size()
    for name, fn in (("logits", logits_path), ("fused", fused_path)):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()

        def step(fn=fn, h=h, w=w):
            fn(h, w).backward()

        res[f"{name}_ms"] = env.bench(step, [h, w])
        h.grad = w.grad = None
        peak = env.peak_extra(step)
        res[f"{name}_peak_mb"] = _mb(peak)
        res[f"{name}_beyond_grads_mb"] = None if peak is None else _mb(peak - grads_bytes)
        del h, w
        env.free_bytes()
    res["time_ratio"] = res["fused_ms"] / res["logits_ms"]
    if res["logits_beyond_grads_mb"] is not None:
        res["mem_ratio"] = res["fused_beyond_grads_mb"] / res["logits_beyond_grads_mb"]
        res["mem_ratio_raw"] = res["fused_peak_mb"] / res["logits_peak_mb"]
        res["mem_pass"] = res["mem_ratio"] <= 1 / 8
    res["time_pass"] = res["time_ratio"] <= 1.1
    return res


def _mb(b: float | None) -> float | None:
    return None if b is None else b / 2**20


def sweep(env: Env, N: int, V: int, dt: str, variants: List[Dict[str, Any]], T: int) -> List[Dict[str, Any]]:
    d = make_inputs(N, V, DTYPES[dt], T, env.device, seed=1)
    x = d["x"]
    out = []
    for v in variants:
        try:
            with override_config(**v):
                cfg = launch_config(V, x.element_size())
                ms = env.bench(kernel_fn("fusion_loss", x, d), [])
            out.append({"V": V, "dtype": dt, **cfg, "kernel_ms": ms})
        except Exception as e:  # a variant that fails to compile/run is reported, not fatal
            out.append({"V": V, "dtype": dt, **v, "error": repr(e)[:200]})
    return out


def copy_bandwidth(env: Env) -> float | None:
    if env.smoke:
        return None
    n = 1 << 30
    bufs = [torch.empty(n, dtype=torch.uint8, device="cuda") for _ in range(2)]
    ms = env.bench(lambda: bufs[1].copy_(bufs[0]), [])
    bufs.clear()
    return 2 * n / (ms / 1e3)


def main() -> int:
    ap = argparse.ArgumentParser(description="GPU check of the fusekern loss kernels")
    ap.add_argument("--smoke", action="store_true", help="CPU + TRITON_INTERPRET=1, tiny sizes")
    ap.add_argument("--N", type=int, default=None)
    ap.add_argument("--vocab", type=int, nargs="+", default=None)
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES))
    ap.add_argument("--ops", nargs="+", default=["sparse_kl", "fusion_loss", "FusionLoss", "merge_topk"])
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument(
        "--linear", choices=["yes", "no", "only"], default="yes", help="the LinearFusionLoss check"
    )
    ap.add_argument("--ref-rows", type=int, default=None, help="row chunk of the fp32 reference")
    ap.add_argument(
        "--dense-buffers", type=float, default=12, help="estimated N×V buffers of the dense recipe"
    )
    ap.add_argument("--dense-mem-budget", type=float, default=None, help="bytes (forces scaled dense runs)")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args()
    env = Env(args.smoke)
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device; use --smoke for a CPU dry run", file=sys.stderr)
        return 2
    N = args.N or (24 if args.smoke else 8192)
    vocabs = args.vocab or ([300, 1000] if args.smoke else [32000, 128256])
    T = 8 if args.smoke else 2048
    args.ref_rows = args.ref_rows or (10 if args.smoke else 1024)
    if args.smoke and args.dense_mem_budget is None:
        args.dense_mem_budget = args.dense_buffers * N * vocabs[-1] * 4 / 3  # exercise the scaled path
    t_start = time.time()

    import triton

    name = "cpu (TRITON_INTERPRET=1)" if args.smoke else torch.cuda.get_device_name()
    bw = {"nominal": nominal_bandwidth(name) if not args.smoke else None, "copy": copy_bandwidth(env)}
    print(
        f"device: {name}; torch {torch.__version__}, triton {triton.__version__}; "
        f"nominal bandwidth {bw['nominal'] and bw['nominal'] / 1e12} TB/s, "
        f"measured copy {bw['copy'] and round(bw['copy'] / 1e12, 3)} TB/s",
        flush=True,
    )

    results: List[Dict[str, Any]] = []
    linear: Dict[str, Any] | None = None
    if args.linear != "no":
        t0 = time.time()
        try:
            linear = check_linear(env, args)
        except Exception as e:
            traceback.print_exc()
            linear = {"op": "LinearFusionLoss", "ok": False, "error": repr(e)[:300]}
        linear["seconds"] = round(time.time() - t0, 1)
        print(json.dumps(linear, default=str), flush=True)
        env.free_bytes()
    if args.linear == "only":
        vocabs, args.no_sweep = [], True
    for V in vocabs:
        for dt in args.dtypes:
            d = make_inputs(N, V, DTYPES[dt], T, env.device, seed=V + N)
            for op in args.ops:
                if op == "merge_topk" and dt != args.dtypes[0]:
                    continue  # dtype-independent (teacher is fp16)
                t0 = time.time()
                try:
                    r = measure_case(env, op, d, dt, args, bw)
                except Exception as e:
                    traceback.print_exc()
                    r = {"op": op, "N": N, "V": V, "dtype": dt, "ok": False, "error": repr(e)[:300]}
                r["seconds"] = round(time.time() - t0, 1)
                results.append(r)
                print(json.dumps(r, default=str), flush=True)
                env.free_bytes()
            del d
            env.free_bytes()

    sweeps: List[Dict[str, Any]] = []
    if not args.no_sweep:
        small = 64 if args.smoke else None
        for V in vocabs:
            if args.smoke:
                variants = [
                    {},
                    {"single": False, "block_v": 64},
                    {"single": False, "block_v": 128, "num_warps": 2},
                ]
            elif V <= 32768:
                variants = [
                    {},
                    {"num_warps": 32},
                    {"single": False, "block_v": 4096, "num_warps": 4},
                    {"single": False, "block_v": 8192, "num_warps": 8},
                    {"single": False, "block_v": 16384, "num_warps": 16},
                ]
            else:
                variants = [
                    {},
                    {"single": False, "block_v": 4096, "num_warps": 4},
                    {"single": False, "block_v": 4096, "num_warps": 8},
                    {"single": False, "block_v": 16384, "num_warps": 16},
                    {"single": False, "block_v": 32768, "num_warps": 16},
                ]
            sweeps += sweep(env, small or N, V, "bf16", variants, T)
        for s_ in sweeps:
            print("sweep", json.dumps(s_), flush=True)

    ok = all(r.get("ok") for r in results) and (linear is None or bool(linear.get("ok")))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
            json.dump(
                {
                    "device": name,
                    "bandwidth": bw,
                    "N": N,
                    "S": S,
                    "K": K,
                    "results": results,
                    "sweep": sweeps,
                    "linear": linear,
                    "ok": ok,
                    "seconds": round(time.time() - t_start, 1),
                },
                f,
                indent=1,
                default=str,
            )

    print(f"\n=== fusekern loss kernels on {name} (N={N}, S={S}, K={K}; times fwd+bwd, median ms) ===")
    hdr = (
        "op",
        "V",
        "dtype",
        "ok",
        "triton",
        "kernel",
        "torch",
        "dense",
        "x_dense",
        "floor%",
        "floor%kern",
        "MB triton",
        "MB dense",
        "mem_x",
    )
    print(" ".join(f"{h:>11}" for h in hdr))
    fk = "nominal" if bw["nominal"] else "copy"
    for r in results:
        cells = [
            r["op"],
            r["V"],
            r["dtype"],
            "OK" if r.get("ok") else "FAIL",
            _f(r.get("triton_ms")),
            _f(r.get("kernel_ms")),
            _f(r.get("torch_ms")),
            _f(r.get("dense_ms")),
            _f(r.get("speedup_vs_dense")),
            _pct(r.get(f"floor_frac_{fk}")),
            _pct(r.get(f"kernel_floor_frac_{fk}")),
            _f(r.get("triton_peak_mb")),
            _f(r.get("dense_peak_mb")),
            _f(r.get("mem_ratio_vs_dense")),
        ]
        print(" ".join(f"{str(c):>11}" for c in cells))
    best = {}
    for s_ in sweeps:
        if "kernel_ms" in s_ and (s_["V"] not in best or s_["kernel_ms"] < best[s_["V"]]["kernel_ms"]):
            best[s_["V"]] = s_
    for V, s_ in best.items():
        print(
            f"best config V={V}: BLOCK_V={s_['BLOCK_V']} SINGLE={s_['SINGLE']} warps={s_['num_warps']} "
            f"{s_['kernel_ms']:.3f} ms"
        )
    if linear is not None and "fused_ms" in linear:
        r = linear
        print(
            f"\nLinearFusionLoss vs logits path (N={r['N']}, H={r['H']}, V={r['V']}, {r['dtype']}): "
            f"{'OK' if r['ok'] else 'FAIL'} (loss rel err {r['rel_loss_err']:.1e}, "
            f"grad h {r['rel_grad_h_err']:.1e}, grad W {r['rel_grad_w_err']:.1e})"
        )
        verdict = "n/a (--smoke)" if args.smoke else "PASS" if r["time_pass"] else "FAIL"
        print(f"  fwd+bwd: fused {_f(r['fused_ms'])} ms, logits path {_f(r['logits_ms'])} ms -> "
              f"{r['time_ratio']:.2f}x: time <= 1.1x {verdict}")  # fmt: skip
        if r.get("mem_ratio") is not None:
            print(
                f"  extra peak beyond the h/W gradients: fused {_f(r['fused_beyond_grads_mb'])} MB, logits "
                f"{_f(r['logits_beyond_grads_mb'])} MB -> {r['mem_ratio']:.3f} "
                f"(raw {r['mem_ratio_raw']:.3f}): memory <= 1/8 {'PASS' if r['mem_pass'] else 'FAIL'}"
            )
        else:
            print("  memory: not measured in --smoke (CPU)")
    elif linear is not None:
        print(f"\nLinearFusionLoss check: FAIL ({linear.get('error')})")
    print(f"floor% = (2·N·V·bytes / {fk} bandwidth) / time; all correct: {ok}; {time.time() - t_start:.0f} s")
    return 0 if ok else 1


def _f(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


if __name__ == "__main__":
    sys.exit(main())
