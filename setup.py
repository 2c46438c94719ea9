"""Build the compiled pieces for MLX's CPU backend on Linux:

- the skinny-product kernel (nextterm_mlx/cpu/_skinny.c), in C;
- MLX primitives in C++ for a Linear layer's product and, on x86-64,
  RMSNorm, SwiGLU and attention, written for AVX2 and FMA (nextterm_mlx/cpu/_primitives.cpp
  and the files it names), built against the MLX headers and nanobind that
  pyproject.toml's build requirements bring.

Both are optional: where they cannot be built the install still succeeds,
and the model runs on MLX's own operations (docs/cpu.md says what that
costs). macOS uses Accelerate and Metal and needs neither.
"""

import platform
import sys
from pathlib import Path

from setuptools import Extension, setup


def skinny_extension() -> Extension:
    return Extension(
        "nextterm_mlx.cpu._skinny",
        sources=["nextterm_mlx/cpu/_skinny.c"],
        extra_compile_args=["-O3"],
        optional=True,
    )


def primitives_extension() -> list[Extension]:
    # RMSNorm, SwiGLU and attention are built for x86-64 only; elsewhere
    # the module holds the Linear product alone.
    x86_64 = platform.machine() == "x86_64"
    sources = ["_primitives.cpp", "_linear.cpp", "_nanobind.cpp"] + (["_rms_norm.cpp", "_swiglu.cpp", "_attention.cpp"] if x86_64 else [])
    try:
        import mlx
        import nanobind
    except ImportError as e:
        print(f"nextterm-mlx: not building the MLX primitives ({e})", file=sys.stderr)
        return []
    mlx_dir = Path(mlx.__path__[0])
    nanobind_dir = Path(nanobind.__file__).parent
    return [Extension(
        "nextterm_mlx.cpu._primitives",
        sources=[f"nextterm_mlx/cpu/{name}" for name in sources],
        depends=["nextterm_mlx/cpu/_vector_exp.h", "nextterm_mlx/cpu/_row_major.h"],
        include_dirs=[str(mlx_dir / "include"), nanobind.include_dir(), str(nanobind_dir / "src"),
                      str(nanobind_dir / "ext" / "robin_map" / "include")],
        library_dirs=[str(mlx_dir / "lib")],
        libraries=["mlx"],
        # MLX's headers need C++20. NB_DOMAIN: share MLX's own nanobind
        # bindings (its mx.array type), which live in the domain "mlx".
        extra_compile_args=["-std=c++20", "-O3", "-fvisibility=hidden", "-fno-strict-aliasing",
                            "-DNB_DOMAIN=mlx", *([] if x86_64 else ["-DNEXTTERM_LINEAR_ONLY"])],
        language="c++",
        optional=True,
    )]


INTEL_MAC = sys.platform == "darwin" and platform.machine() != "arm64"
if INTEL_MAC:
    sys.exit("nextterm-mlx needs an Apple silicon Mac (or Linux): MLX has no build for Intel Macs")

on_linux = sys.platform.startswith("linux")
setup(ext_modules=[skinny_extension(), *primitives_extension()] if on_linux else [])
