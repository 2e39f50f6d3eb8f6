"""benchmarks/gpu_check.sh in its CPU smoke mode (TRITON_INTERPRET=1, tiny sizes): the
LinearFusionLoss check (fused path vs logits path, through the Triton row pass) runs and is
correct, so the script is ready for a GPU session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("triton")


def test_gpu_check_smoke_linear(tmp_path):
    env = dict(os.environ, FUSEKERN_SKIP_INSTALL="1", PYTHON=sys.executable, OUT=str(tmp_path))
    r = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--linear", "only"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "LinearFusionLoss vs logits path" in r.stdout and ": OK (" in r.stdout, r.stdout[-3000:]
    assert "time <= 1.1x n/a (--smoke)" in r.stdout
    assert (tmp_path / "gpu_check.json").exists()
