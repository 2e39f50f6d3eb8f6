"""The demo's stage cache: each named stage runs once per distinct input, settings and code.

A stage's key hashes its settings, the keys of the stages it reads, and :func:`code_digest` of the
stage: the source of the fusekern modules it runs (``_CODE``), the native extension where it uses
it, and the fusekern/torch/transformers versions. An upgraded fusekern therefore never reuses a
stage its old code computed, while a new λ (a setting of the fused run only) reruns only that run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any, Callable

# The fusekern sources each stage runs, relative to the package: a file, a folder ("x/": its .py
# files, subfolders included) or "_C" (the native extension, wherever the package keeps it).
_CODE = {
    "corpus": ("demo/data.py", "demo/toy/corpus.py"),
    "model": ("demo/data.py", "demo/lm.py", "demo/toy/models.py", "demo/toy/tokenizers.py"),
    "held_out": ("pipeline/split.py", "pipeline/io.py"),
    "split": ("pipeline/split.py", "pipeline/formats.py", "pipeline/io.py"),
    "extract": ("pipeline/extract.py", "pipeline/formats.py", "pipeline/io.py"),
    "vocab_map": ("align/", "pipeline/vocab.py", "pipeline/io.py", "_C"),
    "align": (
        "align/",
        "pipeline/align.py",
        "pipeline/formats.py",
        "pipeline/vocab.py",
        "pipeline/io.py",
        "pipeline/extract.py",
        "_C",
    ),
    "pack": ("pipeline/pack.py", "pipeline/formats.py", "pipeline/io.py"),
    "train": (
        "demo/train.py",
        "trainer/",
        "loss.py",
        "linear_loss.py",
        "ops/",
        "pipeline/formats.py",
        "pipeline/io.py",
        "pipeline/paths.py",
    ),
    "score": ("demo/lm.py",),
    "validate": ("demo/lm.py",),
}


def package_dir() -> str:
    """The directory of the ``fusekern`` package this module belongs to."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _native_files(root: str) -> list:
    """The built native extension ``_C`` (``_C.<abi>.so`` / ``.pyd``) anywhere in the package."""
    found = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        found += [
            os.path.join(folder, f)
            for f in files
            if f.startswith("_C.") and any(f.endswith(s) for s in EXTENSION_SUFFIXES)
        ]
    return sorted(found)


def code_files(entry: str) -> list:
    """The files of a ``_CODE`` entry; an entry that names no file is an error (a moved module
    must not silently drop out of the stages' keys)."""
    root = package_dir()
    path = os.path.join(root, entry)
    if entry == "_C":
        files = _native_files(root)
    elif entry.endswith("/") and os.path.isdir(path):
        files = sorted(
            os.path.join(folder, f)
            for folder, subdirs, names in os.walk(path)
            for f in names
            if f.endswith(".py") and "__pycache__" not in folder
        )
    else:
        files = [path] if os.path.isfile(path) else []
    if not files:
        raise FileNotFoundError(f"demo stage code {entry!r}: no such file under {root}")
    return files


def code_digest(stage: str) -> str:
    """Hash of the fusekern sources (and native extension) that stage ``stage`` runs, and of the
    versions of fusekern, torch and transformers: part of every stage's cache key."""
    from importlib.metadata import PackageNotFoundError, version

    import fusekern

    h = hashlib.sha256()
    for entry in _CODE[stage]:
        for path in code_files(entry):
            h.update(os.path.relpath(path, package_dir()).encode())
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    h.update(fusekern.__version__.encode())
    for dist in ("torch", "transformers"):
        try:
            h.update(f"{dist}={version(dist)}".encode())
        except PackageNotFoundError:
            pass
    return h.hexdigest()[:16]


def say(msg: str) -> None:
    """A progress line of the demo on stderr."""
    print(f"[fusekern demo] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class StageResult:
    key: str  # the stage's cache key: stages that read its output hash it into theirs
    value: Any  # what the stage returned (JSON), stored with the key


class Stages:
    """Runs named stages once: a stage's result is stored with a key hashing its settings and
    the keys of the stages it reads; a matching stored result is reused."""

    def __init__(self, root: str, fresh: bool) -> None:
        self.dir = os.path.join(root, "stages")
        os.makedirs(self.dir, exist_ok=True)
        self.fresh = fresh
        self.seconds: dict = {}  # stage -> compute seconds (when it was computed, if cached)
        self.cached: list = []
        self.t0 = time.time()

    def run(self, name: str, params: dict, fn: Callable[[], Any], outputs: tuple = ()) -> StageResult:
        """Stage ``name`` (``"kind:detail"``; ``kind`` selects its code in ``_CODE``): the stored
        result if its key matches and its ``outputs`` exist, else ``fn()`` (stored)."""
        params = dict(params, code=code_digest(name.split(":")[0]))
        key = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]
        marker = os.path.join(self.dir, name.replace(":", "__") + ".json")
        if not self.fresh and os.path.isfile(marker):
            with open(marker, encoding="utf-8") as f:
                rec = json.load(f)
            if rec.get("key") == key and all(os.path.exists(p) for p in outputs):
                self.cached.append(name)
                self.seconds[name] = rec["seconds"]
                say(f"{name}: cached ({rec['seconds']:.1f}s when computed)")
                return StageResult(key, rec["result"])
        for path in outputs:  # stale output of other settings: never resume from it
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        say(f"{name} ... (t = {time.time() - self.t0:.0f}s)")
        start = time.time()
        result = fn()
        seconds = time.time() - start
        self.seconds[name] = seconds
        tmp = marker + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"key": key, "seconds": seconds, "result": result}, f)
        os.replace(tmp, marker)
        say(f"{name}: done in {seconds:.1f}s")
        return StageResult(key, result)
