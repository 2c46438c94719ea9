"""Give MLX's Linux CPU backend a real BLAS.

The `mlx[cpu]` wheel links a reference BLAS (about 8 GFLOP/s for float32
GEMM on our 2-core machines). Loading the system OpenBLAS with RTLD_GLOBAL
before `mlx.core` is imported makes MLX resolve its BLAS symbols there
instead (about 250 GFLOP/s): prefill gets ~25x faster, decode ~2x.
This module must therefore be imported before anything imports mlx.
Set NEXTTERM_MLX_BLAS=0 to keep MLX's own BLAS.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Optional

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

# The library loaded, or None: what `nextterm-mlx info` reports.
loaded_blas: Optional[str] = None
# Set when mlx.core was imported before this module, so OpenBLAS could not be loaded.
imported_too_late = False


def describe() -> str:
    """Which BLAS MLX's CPU backend uses, in words."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    if loaded_blas:
        return f"OpenBLAS ({loaded_blas})"
    if os.environ.get("NEXTTERM_MLX_BLAS") == "0":
        return "bundled reference BLAS (NEXTTERM_MLX_BLAS=0)"
    if imported_too_late:
        return "bundled reference BLAS (mlx.core was imported before nextterm_mlx; import nextterm_mlx first)"
    return "bundled reference BLAS (install libopenblas0-pthread for a ~25x faster prefill)"


def _preload_openblas() -> None:
    global loaded_blas, imported_too_late
    if sys.platform != "linux" or os.environ.get("NEXTTERM_MLX_BLAS") == "0":
        return
    if "mlx.core" in sys.modules:  # MLX has already bound its BLAS
        imported_too_late = True
        return
    for path in OPENBLAS_CANDIDATES:
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            loaded_blas = path
            return


_preload_openblas()
