"""Input checks shared by the loss ops. Every failure names the offending argument.

Shape/dtype/device checks are host-only. Value checks (ids < V, finite teacher logits, valid
source CE, labels in range) run as a few reductions over the small teacher tensors. Non-finite
student logits are detected by the row pass itself while it streams the rows (no extra N×V
read). The Triton path reads all of these back with ONE device sync after its kernel (the kernel
masks ids/labels to [0, V), so nothing is read out of bounds before the check); the PyTorch path
checks the teacher before indexing with it.

Decisions (documented in the API docstrings too):
- padding entries (negative id) may hold any logit value, NaN included; valid entries must be finite;
- ``source_ce`` of a source present at a position must be >= 0 and not NaN (+inf is allowed and
  means "worst quality": MinCE never prefers it, AvgCE gives it the smallest weight);
  a CE of an absent source is never read;
- student logits must be finite on every row that contributes; rows that contribute nothing are
  not read by the Triton kernels, so they are not checked either.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)
IGNORE_INDEX = -100


def _tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_float(x: object, name: str) -> torch.Tensor:
    t = _tensor(x, name)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {t.dtype}")
    return t


def check_int(x: object, name: str, meaning: str = "negative = padding") -> torch.Tensor:
    t = _tensor(x, name)
    if t.dtype not in INT_DTYPES:
        raise TypeError(f"{name} must be a signed integer tensor ({meaning}), got {t.dtype}")
    return t


def check_shape(t: torch.Tensor, shape: Sequence[int | None], name: str, what: str = "") -> None:
    ok = t.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
    if not ok:
        want = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want}{what}, got {list(t.shape)}")


def check_device(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str = "student_logits") -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def check_logits(x: object, name: str, ndim: int) -> torch.Tensor:
    t = check_float(x, name)
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {list(t.shape)}")
    if t.shape[-1] < 1:
        raise ValueError(f"{name} must have a vocabulary dimension >= 1, got shape {list(t.shape)}")
    return t


def check_topk(
    ids: object,
    logits: object,
    lead: Sequence[int],
    ref: torch.Tensor,
    ids_name: str,
    logits_name: str,
    ref_name: str = "student_logits",
) -> None:
    """ids/logits: integer/float tensors of identical shape ``[*lead, K]`` (K >= 1) on ref's device."""
    ids = check_int(ids, ids_name)
    logits = check_float(logits, logits_name)
    shape = [*lead, None]
    check_shape(ids, shape, ids_name)
    if ids.shape[-1] < 1:
        raise ValueError(
            f"{ids_name} must have at least one top-k entry (K >= 1), got shape {list(ids.shape)}"
        )
    if logits.shape != ids.shape:
        raise ValueError(
            f"{logits_name} must have the same shape as {ids_name} {list(ids.shape)}, "
            f"got {list(logits.shape)}"
        )
    check_device(ids, ref, ids_name, ref_name)
    check_device(logits, ref, logits_name, ref_name)


def check_sources(ids: torch.Tensor, name: str = "teacher_ids") -> int:
    """S = ids.shape[-2] must be >= 1 (no source to merge is a caller bug, not an empty answer)."""
    S = ids.shape[-2]
    if S < 1:
        raise ValueError(f"{name} must have at least one source (S >= 1), got shape {list(ids.shape)}")
    return S


def check_mask(mask: object, n: int, ref: torch.Tensor, name: str = "ignore_mask") -> torch.Tensor:
    t = _tensor(mask, name)
    if t.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = ignore), got {t.dtype}")
    check_shape(t, [n], name)
    check_device(t, ref, name)
    return t


def check_teacher(
    teacher_ids: object,
    teacher_logits: object,
    source_ce: object,
    lead: Sequence[int],
    ref: torch.Tensor,
    ref_name: str = "student_logits",
    *,
    lead_dims: str = "N",
    ce_per_sequence: bool = False,
) -> torch.Tensor:
    """The multi-source teacher, checked once for every op and loss module: ``teacher_ids`` /
    ``teacher_logits`` ``[*lead, S, K]`` (S, K >= 1; ``lead_dims`` names the lead dims in
    messages) and ``source_ce`` ``[*lead, S]``, all on ``ref``'s device. With
    ``ce_per_sequence`` (lead = [B, T]) ``source_ce`` may also be ``[B, S]``; it is returned
    expanded to ``[B, T, S]`` (a view)."""
    ids = check_int(teacher_ids, "teacher_ids")
    if ids.dim() != len(lead) + 2:
        raise ValueError(f"teacher_ids must have shape [{lead_dims}, S, K], got {list(ids.shape)}")
    S = check_sources(ids)
    check_topk(ids, teacher_logits, (*lead, S), ref, "teacher_ids", "teacher_logits", ref_name)
    ce = check_float(source_ce, "source_ce")
    if not ce_per_sequence:
        check_shape(ce, [*lead, S], "source_ce", f" (matching teacher_ids [{lead_dims}, S, K])")
    elif ce.dim() == 2:
        check_shape(ce, [lead[0], S], "source_ce", " or [B, T, S]")
        ce = ce[:, None, :].expand(*lead, S)
    else:
        check_shape(ce, [*lead, S], "source_ce", " or [B, S]")
    check_device(ce, ref, "source_ce", ref_name)
    return ce


def value_checks(
    *,
    ids: torch.Tensor,
    logits: torch.Tensor,
    ids_name: str,
    logits_name: str,
    vocab: int | None = None,
    ce: torch.Tensor | None = None,
    ce_name: str = "source_ce",
    labels: torch.Tensor | None = None,
    labels_name: str = "labels",
) -> List[Tuple[torch.Tensor, str]]:
    """Value checks over the small teacher tensors as (0-dim bool "failed" tensor, message)
    pairs, still on the device; :func:`raise_failed` reads them back with one sync.

    ``ids``/``logits`` are ``[..., S, K]`` (or ``[..., K]`` when ``ce`` is None), ``ce`` is
    ``[..., S]``, ``labels`` any shape (``-100`` = ignored).
    """
    checks: List[Tuple[torch.Tensor, str]] = []
    if ids.numel():
        valid = ids >= 0
        if vocab is not None:
            checks.append(((ids >= vocab).any(), f"{ids_name} holds ids >= the vocabulary size V={vocab}"))
        checks.append(
            (
                (valid & ~torch.isfinite(logits)).any(),
                f"{logits_name} must be finite at every valid (non-negative id) entry",
            )
        )
        if ce is not None:
            bad_ce = valid.any(-1) & (torch.isnan(ce) | (ce < 0))
            checks.append(
                (bad_ce.any(), f"{ce_name} must be >= 0 and not NaN for every source present at a position")
            )
    if labels is not None and labels.numel():
        hi = vocab if vocab is not None else 2**62
        bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= hi))
        checks.append((bad.any(), f"{labels_name} must be {IGNORE_INDEX} or in [0, V={vocab})"))
    return checks


def raise_failed(
    checks: List[Tuple[torch.Tensor, str]],
    bad_rows: torch.Tensor | None = None,
    x_name: str = "student_logits",
) -> None:
    """Raise ValueError for the first failed check. ``bad_rows`` (bool [N], optional): rows whose
    student logits held NaN/inf. One device sync in total (two on the error path)."""
    flags = [c for c, _ in checks]
    if bad_rows is not None and bad_rows.numel():
        flags.append(bad_rows.any())
    if not flags:
        return
    got = torch.stack(flags).tolist()
    for hit, (_, msg) in zip(got, checks):
        if hit:
            raise ValueError(msg)
    if len(got) > len(checks) and got[-1]:
        row = int(bad_rows.nonzero()[0, 0])
        raise ValueError(f"{x_name} contains non-finite values (NaN/inf) at row {row} (and possibly others)")


def check_values(**kw) -> None:
    """:func:`value_checks` + :func:`raise_failed`."""
    raise_failed(value_checks(**kw))
