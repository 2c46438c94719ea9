"""The function that computes the model's matrix products on a Linux CPU.

The `mlx[cpu]` wheel links a reference BLAS, tens of times slower than
OpenBLAS at GEMM. Rather than put OpenBLAS first in the process's global
symbol scope before mlx.core is imported (which then depends on import
order, and changes every MLX user in the process), OpenBLAS is loaded
privately here and the model's Linear layers hand their products to it
through an MLX primitive of ours (kernels.py).

In front of OpenBLAS sits the skinny-product kernel (_skinny.c): a product
of a few rows, as in decoding, only has to stream each weight once, which
the kernel does with every core, while OpenBLAS's GEMM packs the weights
into panels first. Larger products go on to OpenBLAS's sgemm.

The kernel also multiplies bfloat16 weights as they are stored, in float32
(nextterm_linear_bf16), with the numbers of their float32 product, and
8-bit weights in mlx-lm's affine format (nextterm_linear_q8).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Optional

from ..settings import Settings

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)


@dataclass(frozen=True)
class Products:
    """A cblas_sgemm-compatible function, by address, and what it is. The
    kernel's addresses are looked up once: the model asks for them at every
    product of every forward pass."""

    address: int
    description: str
    kernel: Optional[ctypes.CDLL]  # the skinny-product kernel, when it is in front

    @cached_property
    def bf16_address(self) -> Optional[int]:
        """The kernel's product of float32 rows and a bfloat16 weight, by address."""
        return address_of(self.kernel.nextterm_linear_bf16) if self.kernel is not None else None

    @cached_property
    def q8_address(self) -> Optional[int]:
        """The kernel's product of float32 rows and an 8-bit weight, by address."""
        return address_of(self.kernel.nextterm_linear_q8) if self.kernel is not None else None

    @cached_property
    def several_address(self) -> Optional[int]:
        """The kernel's products of several Linear layers of the same rows, as one job, by address."""
        return address_of(self.kernel.nextterm_linear_several) if self.kernel is not None else None

    @cached_property
    def parallel_address(self) -> int:
        """The kernel's way to run a task's parts on its threads, by address; 0 without the kernel."""
        return address_of(self.kernel.nextterm_skinny_parallel) if self.kernel is not None else 0


def products(settings: Settings) -> tuple[Optional[Products], str]:
    """The product function the settings ask for, or None and why not."""
    if not sys.platform.startswith("linux"):
        return None, "MLX's own BLAS (OpenBLAS is used on Linux only)"
    if not settings.blas:
        return None, "MLX's bundled reference BLAS (NEXTTERM_MLX_BLAS=0)"
    openblas = load_openblas()
    if openblas is None:
        return None, "MLX's bundled reference BLAS (install libopenblas0-pthread for a much faster prefill)"
    path, library = openblas
    if not settings.skinny:
        return Products(address_of(library.cblas_sgemm), f"OpenBLAS ({path}), every product through its GEMM "
                        "(NEXTTERM_MLX_SKINNY=0)", None), ""
    kernel = load_kernel(path, settings.read_ahead, settings.avx512)
    if kernel is None:
        return Products(address_of(library.cblas_sgemm), f"OpenBLAS ({path}), every product through its GEMM (the "
                        "skinny-product kernel was not built: reinstall nextterm-mlx where a C compiler is "
                        "present)", None), ""
    return Products(address_of(kernel.cblas_sgemm), f"OpenBLAS ({path}), {describe_kernel(kernel)}", kernel), ""


def address_of(function: ctypes._CFuncPtr) -> int:
    return ctypes.cast(function, ctypes.c_void_p).value


@lru_cache(maxsize=None)
def load_openblas() -> Optional[tuple[str, ctypes.CDLL]]:
    """The system OpenBLAS, loaded into a scope of its own, and its path."""
    for path in OPENBLAS_CANDIDATES:
        if os.path.exists(path):
            try:
                return path, ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
            except OSError:
                continue
    return None


@lru_cache(maxsize=None)
def load_kernel(openblas_path: str, read_ahead: bool, avx512: bool) -> Optional[ctypes.CDLL]:
    """The skinny-product kernel, wired to OpenBLAS for what it does not
    compute itself. Its worker pool starts with the first kernel loaded, so
    a process gets the read-ahead and AVX-512 choices of its first call."""
    spec = importlib.util.find_spec("nextterm_mlx.cpu._skinny")
    if spec is None or spec.origin is None:
        return None
    _, openblas = load_openblas()
    try:
        kernel = ctypes.CDLL(spec.origin, mode=ctypes.RTLD_LOCAL)
        # As many threads as OpenBLAS uses (OPENBLAS_NUM_THREADS, else every core).
        kernel.nextterm_skinny_init(openblas.cblas_sgemm, openblas.cblas_sgemv, openblas.openblas_get_num_threads(),
                                    read_ahead, avx512)
        for counter in ("calls", "vector_calls", "gemv_calls", "read_aheads", "bf16_calls", "q8_calls",
                        "several_jobs"):
            getattr(kernel, f"nextterm_skinny_{counter}").restype = ctypes.c_ulong
        kernel.nextterm_skinny_read_ahead_bytes.restype = ctypes.c_long
        kernel.nextterm_skinny_parallel.restype = None
        kernel.nextterm_linear_several.restype = None
        kernel.nextterm_skinny_avx512.restype = ctypes.c_int
    except (OSError, AttributeError):  # a stale build, or an OpenBLAS without these symbols
        return None
    return kernel


def describe_kernel(kernel: ctypes.CDLL) -> str:
    notes = ["AVX-512 for several rows and 8-bit weights"] if kernel.nextterm_skinny_avx512() else []
    ahead = kernel.nextterm_skinny_read_ahead_bytes()
    notes += [f"next weights read ahead, {ahead / 2**20:g} MB"] if ahead else []
    how = f" ({'; '.join(notes)})" if notes else ""
    return f"products of up to {kernel.nextterm_skinny_max_rows()} rows by nextterm-mlx's kernel{how}"
