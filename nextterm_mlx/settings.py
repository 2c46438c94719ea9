"""The NEXTTERM_MLX_* switches, read from the environment once.

The device to compute on, and the switches of the Linux-CPU path
(nextterm_mlx/cpu), each on unless its variable is "0". docs/environment.md
has the table of every variable. Tests may build kernels from Settings of
their own instead of the environment's (nextterm_mlx.cpu.kernels.CPUKernels).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Optional


@dataclass(frozen=True)
class Settings:
    # "cpu" or "gpu"; None: MLX's default device.
    device: Optional[str] = None
    # Compute products with the system OpenBLAS (else MLX's bundled BLAS).
    blas: bool = True
    # Products of a few rows through nextterm-mlx's kernel (else OpenBLAS's GEMM).
    skinny: bool = True
    # The kernel's workers fetch the next product's weights between two products.
    read_ahead: bool = True
    # The kernel multiplies several rows with its AVX-512 tile where the CPU has it.
    avx512: bool = True
    # nextterm-mlx's own SwiGLU and attention primitives.
    primitives: bool = True
    # SwiGLU and attention the primitives do not take, halved over two CPU streams.
    two_streams: bool = True
    # glibc keeps freed memory for the next operation (the command line only).
    keep_heap: bool = True
    # bfloat16 weights stay as stored and are multiplied as they are, in float32
    # (else they are widened to float32 when loaded).
    stored_weights: bool = True


VARIABLES = {
    "device": "NEXTTERM_MLX_DEVICE",
    "blas": "NEXTTERM_MLX_BLAS",
    "skinny": "NEXTTERM_MLX_SKINNY",
    "read_ahead": "NEXTTERM_MLX_READ_AHEAD",
    "avx512": "NEXTTERM_MLX_AVX512",
    "primitives": "NEXTTERM_MLX_PRIMITIVES",
    "two_streams": "NEXTTERM_MLX_TWO_STREAMS",
    "keep_heap": "NEXTTERM_MLX_KEEP_HEAP",
    "stored_weights": "NEXTTERM_MLX_STORED_WEIGHTS",
}


@lru_cache(maxsize=None)
def from_environment() -> Settings:
    """The settings the environment asks for, read on the first call only."""
    switches = {f.name: os.environ.get(VARIABLES[f.name], "1") != "0" for f in fields(Settings)
                if isinstance(f.default, bool)}
    return Settings(device=os.environ.get(VARIABLES["device"]) or None, **switches)
