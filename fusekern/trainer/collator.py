"""Batching packed fusion blocks: pads the sparse teacher arrays, never densifies them.

FuseLLM's collator scatters every source's top-k into a dense ``[B, T, V]`` tensor per source;
this one keeps the teacher as it is stored: ``[B, T, S, K]`` ids/logits and ``[B, T, S]`` CE.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, NamedTuple, Sequence, Union

import numpy as np
import torch

from fusekern.pipeline.formats import load_fusion_meta
from fusekern.trainer.args import CE_LEVELS, FusionArguments

TEACHER_INPUTS = ("teacher_ids", "teacher_logits", "source_ce")
"""Keys the collator emits for the loss (``source_ce`` holds the CE of the chosen ``ce_level``)."""


class _TeacherRow(NamedTuple):
    """One block's teacher, its selected sources only: ``[T, S', K]``, ``[T, S', K]``, ``[T, S']``."""

    ids: np.ndarray
    logits: np.ndarray
    ce: np.ndarray


def _array(feature: Mapping[str, Any], key: str, ndim: int, index: int) -> np.ndarray:
    value = feature[key]
    arr = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.ndim != ndim:
        raise ValueError(f"features[{index}][{key!r}] must have {ndim} dims, got shape {arr.shape}")
    return arr


class FusionDataCollator:
    """Pads packed blocks into a batch for :class:`~fusekern.FusionLoss`.

    Output (``L`` = longest block in the batch, rounded up to ``pad_to_multiple_of``):
    ``input_ids``/``attention_mask``/``labels`` ``[B, L]`` (labels −100 on padding), ``position_ids``
    ``[B, L]`` when the blocks have them, and — when the blocks carry a teacher —
    ``teacher_ids`` ``[B, L, S', K]`` int64 (−1 = padding), ``teacher_logits`` ``[B, L, S', K]`` float32
    and ``source_ce`` ``[B, L, S']`` float32, where ``S'`` are the selected sources and ``source_ce``
    comes from the ``source_ce`` (``ce_level="token"``) or ``source_ce_doc`` (``"sequence"``) column.
    Blocks without teacher columns (e.g. held-out text) give only the LM keys.
    """

    def __init__(
        self,
        pad_token_id: int = 0,
        *,
        source_indices: Sequence[int] | None = None,
        ce_level: str = "token",
        pad_to_multiple_of: int | None = None,
    ) -> None:
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, (int, np.integer)):
            raise TypeError(f"pad_token_id must be an int, got {type(pad_token_id).__name__}")
        if ce_level not in CE_LEVELS:
            raise ValueError(f"ce_level must be one of {CE_LEVELS}, got {ce_level!r}")
        if pad_to_multiple_of is not None and (
            not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1
        ):
            raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}")
        if source_indices is not None:
            source_indices = [int(i) for i in source_indices]
            if (
                not source_indices
                or min(source_indices) < 0
                or len(set(source_indices)) != len(source_indices)
            ):
                raise ValueError(f"source_indices must be distinct non-negative ints, got {source_indices}")
        self.pad_token_id = int(pad_token_id)
        self.source_indices = source_indices
        self.ce_level = ce_level
        self.pad_to_multiple_of = pad_to_multiple_of

    @classmethod
    def from_meta(
        cls,
        meta: Union[Mapping[str, Any], str, os.PathLike],
        fusion_args: FusionArguments | None = None,
        pad_token_id: int = 0,
        **kwargs: Any,
    ) -> FusionDataCollator:
        """A collator that picks ``fusion_args``' sources by name from a packed dataset's metadata
        (a ``fusion_meta.json`` dict, or the dataset directory)."""
        if not isinstance(meta, Mapping):
            meta = load_fusion_meta(meta)
        fusion_args = fusion_args if fusion_args is not None else FusionArguments()
        indices = fusion_args.select_sources(meta["sources"], meta.get("target"))
        return cls(pad_token_id, source_indices=indices, ce_level=fusion_args.ce_level, **kwargs)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("features is empty")
        with_teacher = _all_or_none(
            features,
            "teacher_ids",
            "some features have teacher columns and some don't; batch them separately",
        )
        with_pos = _all_or_none(
            features, "position_ids", "position_ids must be present in all features or in none"
        )
        ids = [_array(f, "input_ids", 1, i) for i, f in enumerate(features)]
        length = max(len(x) for x in ids)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = self._lm_batch(features, ids, length, with_pos)
        if with_teacher:
            rows = [self._teacher_row(f, b, len(x)) for b, (f, x) in enumerate(zip(features, ids))]
            batch.update(_pad_teacher(rows, length))
        return batch

    def _lm_batch(
        self, features: Sequence[Mapping[str, Any]], ids: list, length: int, with_pos: bool
    ) -> dict[str, torch.Tensor]:
        """``input_ids``/``attention_mask``/``labels`` (and ``position_ids``) padded to ``length``."""
        bsz = len(features)
        input_ids = np.full((bsz, length), self.pad_token_id, dtype=np.int64)
        labels = np.full((bsz, length), -100, dtype=np.int64)
        attention = np.zeros((bsz, length), dtype=np.int64)
        position = np.zeros((bsz, length), dtype=np.int64) if with_pos else None
        for b, (f, x) in enumerate(zip(features, ids)):
            n = len(x)
            input_ids[b, :n] = x
            attention[b, :n] = 1
            labels[b, :n] = _token_column(f, "labels", b, n) if "labels" in f else x
            if position is not None:
                pos = _token_column(f, "position_ids", b, n)
                position[b, :n] = pos
                # padding continues the last document's positions (masked out anyway)
                start = int(pos[-1]) + 1 if n else 0
                position[b, n:] = np.arange(start, start + length - n)
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
            "labels": torch.from_numpy(labels),
        }
        if position is not None:
            batch["position_ids"] = torch.from_numpy(position)
        return batch

    def _teacher_row(self, feature: Mapping[str, Any], b: int, n: int) -> _TeacherRow:
        """Block ``b``'s teacher (``n`` tokens), checked, with the selected sources only."""
        ce_key = "source_ce" if self.ce_level == "token" else "source_ce_doc"
        for key in ("teacher_logits", ce_key):
            if key not in feature:
                raise ValueError(
                    f"features[{b}] has no {key!r} column"
                    + (" (needed by ce_level='sequence')" if key == "source_ce_doc" else "")
                )
        tid = _array(feature, "teacher_ids", 3, b)
        tlg = _array(feature, "teacher_logits", 3, b)
        tce = _array(feature, ce_key, 2, b)
        if tid.shape[0] != n or tlg.shape != tid.shape:
            raise ValueError(
                f"features[{b}]: teacher_ids {tid.shape} and teacher_logits {tlg.shape} must both be "
                f"[T={n}, S, K]"
            )
        if tce.shape != tid.shape[:2]:
            raise ValueError(f"features[{b}]: {ce_key} has shape {tce.shape}, expected {tid.shape[:2]}")
        sel = self.source_indices
        if sel is None:
            return _TeacherRow(tid, tlg, tce)
        if max(sel) >= tid.shape[1]:
            raise ValueError(f"source_indices {sel} out of range for {tid.shape[1]} sources in features[{b}]")
        return _TeacherRow(tid[:, sel], tlg[:, sel], tce[:, sel])


def _all_or_none(features: Sequence[Mapping[str, Any]], key: str, error: str) -> bool:
    """Whether the features have ``key``: all of them or none, else ``ValueError(error)``."""
    present = [key in f for f in features]
    if any(present) and not all(present):
        raise ValueError(error)
    return present[0]


def _token_column(feature: Mapping[str, Any], key: str, b: int, n: int) -> np.ndarray:
    """A per-token column of block ``b``, which must have ``n`` tokens like its ``input_ids``."""
    arr = _array(feature, key, 1, b)
    if len(arr) != n:
        raise ValueError(f"features[{b}][{key!r}] has length {len(arr)}, input_ids {n}")
    return arr


def _pad_teacher(rows: Sequence[_TeacherRow], length: int) -> dict[str, torch.Tensor]:
    """The blocks' teachers right-padded to ``length`` positions (ids -1, logits and CE 0)."""
    shapes = {r.ids.shape[1:] for r in rows}
    if len(shapes) != 1:
        raise ValueError(f"features disagree on the teacher's [S, K] shape: {sorted(shapes)}")
    n_src, k = rows[0].ids.shape[1:]
    teacher_ids = np.full((len(rows), length, n_src, k), -1, dtype=np.int64)
    teacher_logits = np.zeros((len(rows), length, n_src, k), dtype=np.float32)
    source_ce = np.zeros((len(rows), length, n_src), dtype=np.float32)
    for b, r in enumerate(rows):
        n = len(r.ids)
        teacher_ids[b, :n] = r.ids
        teacher_logits[b, :n] = r.logits
        source_ce[b, :n] = r.ce
    return {
        "teacher_ids": torch.from_numpy(teacher_ids),
        "teacher_logits": torch.from_numpy(teacher_logits),
        "source_ce": torch.from_numpy(source_ce),
    }
