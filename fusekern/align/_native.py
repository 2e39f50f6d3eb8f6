"""The aligner's compiled core, ``fusekern.align._C`` (built from csrc/ by setup.py).

The one module through which the rest of :mod:`fusekern.align` reaches the extension, so a
missing build fails here with one clear line instead of deep inside another import.
"""

from __future__ import annotations

try:
    import fusekern.align._C as _C
except ImportError as exc:  # a source checkout whose extension was never built
    raise ImportError(
        f"fusekern.align._C, the aligner's C++ extension, cannot be imported ({exc}); build it with "
        "`pip install -e .` or `python setup.py build_ext --inplace`"
    ) from exc

ByteVocab = _C.ByteVocab
MAX_TOKEN_CHARS: int = _C.MAX_TOKEN_CHARS  # fk::kMaxTokenChars (csrc/align.h)
MAX_DTW_CELLS: int = _C.MAX_DTW_CELLS  # fk::kMaxDtwCells (csrc/align.h)
MAX_THREADS: int = _C.MAX_THREADS  # fk::kMaxThreads (csrc/parallel.h)

span_align = _C.span_align
span_align_batch = _C.span_align_batch
span_align_ids_batch = _C.span_align_ids_batch
dtw = _C.dtw
dtw_batch = _C.dtw_batch
mined_map = _C.mined_map
levenshtein = _C.levenshtein
