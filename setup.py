"""Build the one compiled piece: the skinny-product kernel for MLX on Linux
(see nextterm_mlx/_skinny.c).

It is optional: where no C compiler is found the install still succeeds and
decoding runs through OpenBLAS's GEMM, about 2-2.4x slower. macOS uses
Accelerate and needs no kernel.
"""

import sys

from setuptools import Extension, setup

skinny = Extension(
    "nextterm_mlx._skinny",
    sources=["nextterm_mlx/_skinny.c"],
    extra_compile_args=["-O3"],
    optional=True,
)

setup(ext_modules=[skinny] if sys.platform.startswith("linux") else [])
