"""Path rules shared by every stage and every CLI option (each rule is defined here only).

Inputs. A model/tokenizer/dataset argument is a local path or a Hub name; a value that *looks
local* and does not exist is an immediate ``FileNotFoundError`` naming the argument, never a
Hub lookup. That rule (:func:`looks_local`, :func:`check_name_or_path`) is defined beside the
tokenizer loader in :mod:`fusekern.align.tokenizer`, the lowest layer that applies it, and
re-exported here.

Outputs. A stage never deletes what it did not write:

- an output may not equal, contain or lie inside one of the stage's local inputs;
- an existing output directory is used only when it is empty, or when it is recognisably the
  same stage's own output (its meta file with its format, and nothing but the files that
  stage writes) *and* the caller asked to replace it (``overwrite=True``, ``--overwrite``);
- anything else is refused with one line naming the path.

Replacement renames the old output aside, renames the new one into place, then deletes the
old one, so a crash never leaves neither.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

from fusekern.align.tokenizer import check_name_or_path, looks_local

__all__ = [
    "OutputDir",
    "check_name_or_path",
    "check_no_overlap",
    "looks_local",
    "prepare_output_dir",
    "prepare_output_file",
    "replace_output_dir",
]

# What `datasets.Dataset.save_to_disk` writes.
_SAVE_TO_DISK = re.compile(r"^(data-\d{5}-of-\d{5}\.arrow|dataset_info\.json|state\.json)$")


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


def _inside(inner: str, outer: str) -> bool:
    return inner != outer and os.path.commonpath([inner, outer]) == outer


def check_no_overlap(
    out: str | os.PathLike, inputs: Iterable[tuple[str, Any]], out_what: str = "out"
) -> None:
    """``ValueError`` if the output path equals, contains or lies inside an existing local input.
    ``inputs``: ``(argument name, value)`` pairs; objects, Hub names and None are skipped."""
    o = _real(out)
    for what, value in inputs:
        if not isinstance(value, (str, os.PathLike)) or not os.path.exists(
            os.path.expanduser(os.fspath(value))
        ):
            continue
        i = _real(value)
        if o == i:
            relation = "is"
        elif _inside(i, o):
            relation = "contains"
        elif _inside(o, i):
            relation = "lies inside"
        else:
            continue
        raise ValueError(
            f"{out_what} {os.fspath(out)!r} {relation} the input {what} {os.fspath(value)!r}: "
            "writing there could destroy or change the input; choose another output path"
        )


@dataclass(frozen=True)
class OutputDir:
    """What a stage's output directory looks like, so that it can be recognised later."""

    stage: str  # the subcommand, for messages
    meta_file: str  # its meta JSON, e.g. "split_meta.json"
    formats: tuple  # accepted values of the meta's "format" (or "stage") key
    extra: re.Pattern | None = None  # other entry names the stage writes (default: save_to_disk's)

    def foreign_entries(self, path: str) -> list[str]:
        """Entries of ``path`` this stage does not write."""
        return sorted(
            name
            for name in os.listdir(path)
            if name != self.meta_file
            and not (self.extra.match(name) if self.extra is not None else _SAVE_TO_DISK.match(name))
        )

    def is_own(self, path: str) -> bool:
        meta_path = os.path.join(path, self.meta_file)
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return False
        if not isinstance(meta, dict):
            return False
        tag = meta.get("format", meta.get("stage"))
        return tag in self.formats and not self.foreign_entries(path)


def _check_existing_dir(out_dir: str, kind: OutputDir, overwrite: bool) -> None:
    if not os.path.exists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise ValueError(f"output {out_dir!r} exists and is not a directory; choose another output path")
    if not os.listdir(out_dir):
        return
    if not kind.is_own(out_dir):
        raise ValueError(
            f"output directory {out_dir!r} exists and is not a `fusekern {kind.stage}` output (no "
            f"{kind.meta_file}, or files fusekern did not write); refusing to replace it: choose a new "
            "or empty directory"
        )
    if not overwrite:
        raise ValueError(
            f"output directory {out_dir!r} holds an earlier `fusekern {kind.stage}` output; pass "
            "--overwrite (overwrite=True) to replace it, or choose a new directory"
        )


def prepare_output_dir(
    out_dir: str | os.PathLike,
    kind: OutputDir,
    *,
    inputs: Iterable[tuple[str, Any]] = (),
    overwrite: bool = False,
) -> str:
    """Check, before any work, that ``out_dir`` may be written (module doc); returns it as a
    string. Raises ``ValueError`` naming the path otherwise."""
    out_dir = os.fspath(out_dir)
    check_no_overlap(out_dir, inputs)
    _check_existing_dir(out_dir, kind, overwrite)
    return out_dir


def replace_output_dir(tmp_dir: str, out_dir: str, kind: OutputDir, *, overwrite: bool) -> None:
    """Move the finished ``tmp_dir`` to ``out_dir``, replacing an old output only under the
    rules of :func:`prepare_output_dir` (checked again: the directory may have changed)."""
    _check_existing_dir(out_dir, kind, overwrite)
    if not os.path.isdir(out_dir):
        os.replace(tmp_dir, out_dir)
        return
    if not os.listdir(out_dir):
        os.rmdir(out_dir)
        os.replace(tmp_dir, out_dir)
        return
    parent, base = os.path.split(os.path.abspath(out_dir))
    trash = os.path.join(parent, f".old-{base}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.replace(out_dir, trash)
    os.replace(tmp_dir, out_dir)
    shutil.rmtree(trash, ignore_errors=True)


def prepare_output_file(
    out_file: str | os.PathLike,
    *,
    suffixes: tuple,
    is_own,
    stage: str,
    inputs: Iterable[tuple[str, Any]] = (),
    overwrite: bool = False,
) -> str:
    """The single-file twin of :func:`prepare_output_dir`: ``out_file`` must end with one of
    ``suffixes``, may not be or sit inside an input, and an existing file is replaced only if
    ``is_own(path)`` says this stage wrote it and ``overwrite`` is set."""
    out_file = os.fspath(out_file)
    if not out_file.endswith(tuple(suffixes)):
        raise ValueError(f"output {out_file!r} must end with one of {', '.join(suffixes)}")
    check_no_overlap(out_file, inputs)
    if os.path.isdir(out_file):
        raise ValueError(f"output {out_file!r} is a directory; give a file name")
    if os.path.exists(out_file):
        if not is_own(out_file):
            raise ValueError(
                f"output {out_file!r} exists and is not a `fusekern {stage}` output; refusing to replace "
                "it: choose another file name"
            )
        if not overwrite:
            raise ValueError(
                f"output {out_file!r} holds an earlier `fusekern {stage}` output; pass --overwrite "
                "(overwrite=True) to replace it"
            )
    return out_file
