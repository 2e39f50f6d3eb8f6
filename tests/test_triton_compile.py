"""Ahead-of-time compilation of every loss kernel for Hopper (sm_90) and Ampere (sm_80), no GPU
needed: each configuration the launcher really uses (fusekern.ops._backend.launch_config) must
compile without local-memory spills, and the student-logit loads/gradient stores must be 128-bit
vector accesses (the divisibility-16 specialisation Triton's JIT applies to 16-aligned pointers,
strides and V is reproduced with ``attrs``)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fusekern.ops._backend import launch_config, next_pow2  # noqa: E402
from fusekern.ops.engine.triton_rows import row_loss_kernel  # noqa: E402
from fusekern.ops.engine.triton_teacher import merge_topk_kernel  # noqa: E402

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
TT = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}
ITEMSIZE = {"bf16": 2, "fp16": 2, "fp32": 4}


def _compile(kernel, types, constexprs, divisible, arch, num_warps):
    names = kernel.arg_names
    sig = {n: types.get(n, "constexpr") for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in divisible}
    src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def _inspect(compiled, tmp_path: Path):
    f = tmp_path / "k.cubin"
    f.write_bytes(compiled.asm["cubin"])
    usage = subprocess.run(
        [str(BIN / "cuobjdump"), "--dump-resource-usage", str(f)], capture_output=True, text=True, check=True
    ).stdout
    sass = subprocess.run(
        [str(BIN / "cuobjdump"), "--dump-sass", str(f)], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
    assert m, usage
    regs, _stack, _shared, local = map(int, m.groups())
    ops = re.findall(r"\b((?:LDG|STG|LDL|STL)\.E[.\w]*)", sass)
    return regs, local, ops


# (name, logits dtype, V, METHOD, HAS_LABELS, S, K, WANT_GRAD)
LOSS_CASES = [
    ("sparse_kl", "bf16", 32000, 0, False, 1, 10, True),
    ("sparse_kl", "fp32", 128256, 0, False, 1, 10, True),
    ("fusion_min", "bf16", 128256, 1, False, 3, 10, True),
    ("fusion_avg", "fp32", 32000, 2, False, 3, 10, True),
    ("fusionloss", "bf16", 32000, 1, True, 3, 10, True),
    ("fusionloss", "bf16", 128256, 2, True, 3, 10, True),
    ("fusionloss", "fp32", 32000, 1, True, 3, 10, True),
    ("fusionloss", "fp16", 128256, 1, True, 3, 10, True),
    ("no_grad_k1", "bf16", 32000, 0, False, 1, 1, False),
    # duplicate-id sums by sort + segmented scan: S·K up to 2048 (S <= 8, K <= 256)
    ("fusionloss_sk192", "bf16", 32000, 1, True, 3, 64, True),
    ("fusionloss_sk512", "bf16", 128256, 2, True, 8, 64, True),
    ("fusionloss_sk2048", "bf16", 128256, 1, True, 8, 256, True),
    ("fusionloss_sk2048", "fp32", 32000, 2, True, 8, 256, True),
]


@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: f"{c[0]}-{c[1]}-V{c[2]}")
def test_loss_kernel_compiles_without_spills_and_vectorised(case, arch, tmp_path):
    _name, dt, V, method, labels, S, K, want_grad = case
    cfg = launch_config(V, ITEMSIZE[dt])
    types = {
        "logits_ptr": f"*{TT[dt]}",
        "grad_ptr": f"*{TT[dt]}",
        "ids_ptr": "*i32",
        "teacher_logits_ptr": "*fp16",
        "ce_ptr": "*fp32",
        "use_ptr": "*i1",
        "label_ptr": "*i32",
        "coef_ptr": "*fp32",
        "distill_ptr": "*fp32",
        "clm_ptr": "*fp32",
        "nonfinite_ptr": "*i32",
        "logits_stride": "i32",
        "grad_stride": "i32",
        "V": "i32",
        "S": "i32",
        "K": "i32",
        "inv_temp": "fp32",
    }
    const = dict(
        METHOD=method,
        KL=True,
        HAS_LABELS=labels,
        WANT_GRAD=want_grad,
        BLOCK_S=next_pow2(S),
        BLOCK_K=next_pow2(K),
        BLOCK_V=cfg["BLOCK_V"],
        SINGLE=cfg["SINGLE"],
    )
    for n, v in (("S", S), ("K", K)):
        if v == 1:  # Triton's JIT turns an int argument equal to 1 into a constant
            const[n] = 1
            types.pop(n)
    divisible = [n for n in types if n.endswith("_ptr")] + ["logits_stride", "grad_stride", "V"]
    k = _compile(row_loss_kernel, types, const, divisible, arch, cfg["num_warps"])
    regs, local, ops = _inspect(k, tmp_path)
    print(f"sm_{arch} {case} {cfg}: {regs} registers, {local} B local")
    assert local == 0, f"register spills: LOCAL={local}"
    assert not [o for o in ops if o.startswith(("LDL", "STL"))], "local-memory traffic in SASS"
    # every thread moves BLOCK_V·itemsize/threads bytes of logits per pass, all as 128-bit accesses
    per_thread = cfg["BLOCK_V"] * ITEMSIZE[dt] // (32 * cfg["num_warps"] * 16)
    wide_ld = sum(o.startswith("LDG") and o.endswith(".128") for o in ops)
    passes = 1 if cfg["SINGLE"] or not want_grad else 2
    assert wide_ld == passes * per_thread, (wide_ld, ops)
    if want_grad:
        wide_st = sum(o.startswith("STG") and o.endswith(".128") for o in ops)
        assert wide_st == 2 * per_thread, (wide_st, ops)  # gradient + zero-fill of inactive rows
    narrow_ld = sum(o.startswith("LDG") and not o.endswith((".128", ".64")) for o in ops)
    # teacher gathers (ids, logits, student logits at the ids) are scalar: a few per teacher lane
    teacher_lanes = next_pow2(S) * next_pow2(K) // (32 * cfg["num_warps"])
    assert narrow_ld <= 32 + 4 * teacher_lanes, f"too many scalar loads ({narrow_ld}): not vectorised? {ops}"
    assert regs <= 255


@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("S,K", [(3, 10), (1, 1), (8, 256)])
def test_merge_kernel_compiles(arch, S, K, tmp_path):
    types = {
        "ids_ptr": "*i32",
        "logits_ptr": "*fp16",
        "ce_ptr": "*fp32",
        "out_ids_ptr": "*i32",
        "out_probs_ptr": "*fp32",
        "S": "i32",
        "K": "i32",
        "inv_temp": "fp32",
    }
    const = dict(METHOD=1, BLOCK_S=next_pow2(S), BLOCK_K=next_pow2(K))
    for n, v in (("S", S), ("K", K)):
        if v == 1:
            const[n] = 1
            types.pop(n)
    k = _compile(merge_topk_kernel, types, const, [n for n in types if n.endswith("_ptr")], arch, 1)
    regs, local, ops = _inspect(k, tmp_path)
    assert local == 0 and not [o for o in ops if o.startswith(("LDL", "STL"))]
    assert any(o.startswith("STG") for o in ops)
