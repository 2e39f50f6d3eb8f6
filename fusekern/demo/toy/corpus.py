"""Text that is already on every machine: Python's standard library.

Two domains: *prose* (module/class/function docstrings, read with ``ast`` so no module is
imported, plus the ``pydoc_data`` help topics) and *code* (the library's source files).
Order is deterministic (sorted paths), so corpora are reproducible across runs.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from functools import cache

# CJK, emoji (incl. ZWJ sequence and skin tone), combining marks, RTL scripts, tabs,
# newlines and runs of spaces: the cases that break naive token alignment.
EXOTIC_TEXT = (
    "Tokenizers disagree on 日本語のテキスト and 中文分词, on emoji 👩‍💻🚀👍🏽 and on "
    "combining marks: e\u0301, a\u0308, n\u0303 vs é ä ñ.\n"
    "Right-to-left: עברית and العربية mixed with ASCII.\n"
    "\tTabs\tand  double  spaces,   triple   spaces,\n\n\nblank lines, trailing spaces   \n"
    "Code: def f(x):\n    return {'k': [1, 2, 3]}  # comment\n"
    "Numbers 3.14159 1e-10 0xFF; URL https://example.org/a?b=c&d=e.\n"
)


def _stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


@cache
def _source_files() -> tuple:
    """Top-level stdlib packages' .py files, excluding tests, site-packages and idle/tk demos."""
    root = _stdlib_dir()
    skip = {"site-packages", "test", "tests", "idlelib", "turtledemo", "lib2to3", "__pycache__", "ensurepip"}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".py"):
                out.append(os.path.join(dirpath, name))
    return tuple(sorted(out))


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (UnicodeDecodeError, OSError):
        return None


def _docstrings(source: str) -> list:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= 40:
                docs.append(doc)
    return docs


def stdlib_prose(max_docs: int | None = None) -> list[str]:
    """Docstrings of the standard library and the ``pydoc_data`` help topics, one per document."""
    from pydoc_data.topics import topics

    docs = [topics[k].strip() for k in sorted(topics) if topics[k].strip()]
    for path in _source_files():
        if max_docs is not None and len(docs) >= max_docs:
            break
        src = _read(path)
        if src:
            docs.extend(_docstrings(src))
    return docs[:max_docs] if max_docs is not None else docs


def stdlib_code(max_docs: int | None = None) -> list[str]:
    """Source files of the standard library, one per document (non-empty, UTF-8 only)."""
    docs = []
    for path in _source_files():
        if max_docs is not None and len(docs) >= max_docs:
            break
        src = _read(path)
        if src and src.strip():
            docs.append(src)
    return docs
