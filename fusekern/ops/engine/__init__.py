"""The loss engine shared by ``sparse_kl_loss``, ``fusion_loss``, ``FusionLoss`` and
``LinearFusionLoss``: per row, one logsumexp of the student logits, the sparse (merged) teacher,
the distillation and CLM terms and the gradient, written in forward.

- ``triton_teacher.py``: the merged teacher in registers (``@triton.jit`` helpers) and the
  ``merge_topk`` kernel;
- ``triton_rows.py``: the row loss kernel and its launcher;
- ``torch_teacher.py`` / ``torch_rows.py``: the same in PyTorch (teacher for all rows at once,
  row pass chunked over rows);
- ``linear_rows.py``: the row pass from hidden states and a linear head, a chunk of logits at a
  time;
- ``plan.py``: which rows count, the counts and gradient coefficients, fixed before any row;
- ``function.py``: the autograd Functions (tensors in, loss parts out; backward scales the
  precomputed gradients) and the entry points ``row_loss`` / ``linear_row_loss``.

Gradient storage (given logits): a separate ``[N, V]`` buffer in the logits' dtype, not written
over the logits: overwriting a tensor the caller (or the HF model output) still holds would be
silently wrong, and autograd needs an N×V gradient for the logits anyway, so the buffer is the
gradient that flows on to ``lm_head`` — nothing beyond it is allocated. (LinearFusionLoss owns
its logits chunk, so there the gradient is written over it.)
"""
