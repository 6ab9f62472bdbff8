"""The C++ CPU backend (zokernels._C): raw pointers in, OpenMP loops, the GIL released.

Its hot loops exist once per instruction set (baseline, AVX2, AVX-512 on x86-64); the fastest this CPU
supports is chosen at import, or the one ZOKERNELS_CPU_ISA names. `_C.isa()` says which runs.

The extension is optional at import time: if it failed to build or load, `import zokernels` still
works and only a call that needs it raises, saying why and how to fix it.
"""

from __future__ import annotations

import torch

try:
    from . import _C
except ImportError as exc:  # not built, or built for another Python/CPU
    _C = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

DIST_CODES = {"gaussian": 0, "rademacher": 1, "uniform": 2}
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def available() -> bool:
    return _C is not None


def require():
    if _C is None:
        raise RuntimeError(
            "zokernels' C++ CPU backend (zokernels._C) is not available: "
            f"{type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR}. Build it with `make build` (or "
            "`pip install --no-build-isolation -e .`), or pass backend='torch' to use the pure-torch reference."
        )
    return _C


def noise(out: torch.Tensor, offset: int, seed: int, key: int, dist: str, version: int) -> None:
    require().noise(out.data_ptr(), out.numel(), offset, seed, key, DIST_CODES[dist], torch.get_num_threads(),
                    version)


def update_(tensors, seeds, coeffs, keys, offsets, dist: str, rounding: str, sources, version: int) -> list[int]:
    """Returns one int per tensor, nonzero where the tensor holds an inf or NaN after the pass."""
    return require().update(
        [t.data_ptr() for t in tensors],
        [t.numel() for t in tensors],
        list(offsets),
        list(keys),
        [DTYPE_CODES[t.dtype] for t in tensors],
        list(seeds),
        list(coeffs),
        DIST_CODES[dist],
        1 if rounding == "stochastic" else 0,
        torch.get_num_threads(),
        [t.data_ptr() for t in sources] if sources else [],
        version,
    )
