"""fusekern.align is the bottom layer: it imports its own modules (the native core through
align/_native.py only) and third-party packages, never the package root or a higher layer."""

from __future__ import annotations

import ast
import pathlib

import fusekern.align

ALIGN = pathlib.Path(fusekern.align.__file__).parent


def _fusekern_imports(path: pathlib.Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.split(".")[0] == "fusekern"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "fusekern":
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_align_imports_only_itself():
    files = sorted(ALIGN.glob("*.py"))
    assert len(files) >= 6
    for path in files:
        for name in _fusekern_imports(path):
            assert name.startswith("fusekern.align."), f"{path.name} imports {name}"
            if name.endswith("._C"):
                assert path.name == "_native.py", f"{path.name} imports the native module directly"
