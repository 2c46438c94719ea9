"""Give MLX's Linux CPU backend a real BLAS.

The `mlx[cpu]` wheel links a reference BLAS (about 8 GFLOP/s for float32
GEMM on our 2-core machines). Loading the system OpenBLAS with RTLD_GLOBAL
before `mlx.core` is imported makes MLX resolve its BLAS symbols there
instead (about 250 GFLOP/s): prefill gets ~25x faster, decode ~2x.
This module must therefore be imported before anything imports mlx.
Set NEXTTERM_MLX_BLAS=0 to keep MLX's own BLAS.

MLX computes even a one-row product (a decode step) with sgemm, which this
OpenBLAS runs at a quarter of the memory bandwidth. The small compiled
library nextterm_mlx/_skinny.c computes a Linear layer on up to 64 rows with
its own kernel, which streams the weights once on every core, computes small
one-vector products such as decoding's per-head attention itself, hands other
one-vector products to OpenBLAS's sgemv and everything else to OpenBLAS's
sgemm. It is loaded
first so MLX's cblas_sgemm resolves to it. NEXTTERM_MLX_SKINNY=0 leaves it out.
Between two products its worker fetches the next product's first weights into
cache (a decode step multiplies by the same matrices in the same order every
step); NEXTTERM_MLX_READ_AHEAD=0 turns that off. On CPUs with AVX-512 it
multiplies several rows with a wider kernel; NEXTTERM_MLX_AVX512=0 keeps them
on the AVX2 one.
"""

from __future__ import annotations

import ctypes
import importlib.util
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
# The skinny-product kernel, when MLX's cblas_sgemm goes through it.
skinny_kernel: Optional[ctypes.CDLL] = None
# Set when mlx.core was imported before this module, so OpenBLAS could not be loaded.
imported_too_late = False


def describe() -> str:
    """Which BLAS MLX's CPU backend uses, in words."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    if loaded_blas and skinny_kernel is not None:
        rows = skinny_kernel.nextterm_skinny_max_rows()
        ahead = skinny_kernel.nextterm_skinny_read_ahead_bytes()
        notes = ["AVX-512 for several rows"] if skinny_kernel.nextterm_skinny_avx512() else []
        notes += [f"next weights read ahead, {ahead / 2**20:g} MB"] if ahead else []
        how = f" ({'; '.join(notes)})" if notes else ""
        return f"OpenBLAS ({loaded_blas}), products of up to {rows} rows by nextterm-mlx's kernel{how}"
    if loaded_blas:
        return f"OpenBLAS ({loaded_blas}){_why_no_kernel()}"
    if os.environ.get("NEXTTERM_MLX_BLAS") == "0":
        return "bundled reference BLAS (NEXTTERM_MLX_BLAS=0)"
    if imported_too_late:
        return "bundled reference BLAS (mlx.core was imported before nextterm_mlx; import nextterm_mlx first)"
    return "bundled reference BLAS (install libopenblas0-pthread for a ~25x faster prefill)"


def _why_no_kernel() -> str:
    if os.environ.get("NEXTTERM_MLX_SKINNY") == "0":
        return ", every product through its GEMM (NEXTTERM_MLX_SKINNY=0)"
    return (", every product through its GEMM (the skinny-product kernel was not built: "
            "reinstall nextterm-mlx where a C compiler is present)")


def _load_skinny_kernel(openblas: ctypes.CDLL) -> Optional[ctypes.CDLL]:
    """Put the kernel, wired to this OpenBLAS, first in line for MLX's cblas_sgemm."""
    if os.environ.get("NEXTTERM_MLX_SKINNY") == "0":
        return None
    spec = importlib.util.find_spec("nextterm_mlx._skinny")
    if spec is None or spec.origin is None:
        return None
    try:
        # Wired up privately first: once global, an unwired library would take
        # MLX's products with nowhere to send them.
        kernel = ctypes.CDLL(spec.origin, mode=ctypes.RTLD_LOCAL)
        # As many threads as OpenBLAS uses (OPENBLAS_NUM_THREADS, else every core).
        kernel.nextterm_skinny_init(openblas.cblas_sgemm, openblas.cblas_sgemv,
                                    openblas.openblas_get_num_threads(),
                                    os.environ.get("NEXTTERM_MLX_READ_AHEAD") != "0",
                                    os.environ.get("NEXTTERM_MLX_AVX512") != "0")
        kernel.nextterm_skinny_calls.restype = ctypes.c_ulong
        kernel.nextterm_skinny_vector_calls.restype = ctypes.c_ulong
        kernel.nextterm_skinny_gemv_calls.restype = ctypes.c_ulong
        kernel.nextterm_skinny_read_aheads.restype = ctypes.c_ulong
        kernel.nextterm_skinny_read_ahead_bytes.restype = ctypes.c_long
        kernel.nextterm_skinny_avx512.restype = ctypes.c_int
        ctypes.CDLL(spec.origin, mode=ctypes.RTLD_GLOBAL)
    except (OSError, AttributeError):  # a stale build, or an OpenBLAS without these symbols
        return None
    return kernel


def _preload_openblas() -> None:
    global loaded_blas, imported_too_late, skinny_kernel
    if sys.platform != "linux" or os.environ.get("NEXTTERM_MLX_BLAS") == "0":
        return
    if "mlx.core" in sys.modules:  # MLX has already bound its BLAS
        imported_too_late = True
        return
    for path in OPENBLAS_CANDIDATES:
        if os.path.exists(path):
            try:
                # Privately first: the kernel must enter the global scope before OpenBLAS does.
                openblas = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
            except OSError:
                continue
            skinny_kernel = _load_skinny_kernel(openblas)
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            loaded_blas = path
            return


_preload_openblas()
