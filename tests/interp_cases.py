"""Triton-interpreter cases run in a child pytest: ``TRITON_INTERPRET`` must be set before
triton is imported, and the main test process has imported it already."""

import os
import subprocess
import sys

# True inside the child: the test file then defines its ``interp_`` cases instead.
INTERP = os.environ.get("FUSEKERN_INTERP_CASES") == "1"


def run_interpreter_cases(test_file: str) -> None:
    """Run ``test_file``'s ``interp_`` tests under ``TRITON_INTERPRET=1``; fail with their output."""
    env = dict(os.environ, TRITON_INTERPRET="1", FUSEKERN_INTERP_CASES="1")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "interp_", test_file],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "failed" not in r.stdout
