"""SwiGLU with a vectorised exp for MLX's CPU backend on Linux.

MLX's Linux wheel computes exp one element at a time, ~13 ns an element
here, and every layer's MLP takes one per element of its 3072-wide hidden
layer: at 8 or 32 rows a forward pass, SwiGLU costs more than anything else
besides the weight products. nextterm_mlx/_swiglu.cpp computes it as an MLX
primitive, eight elements at a time. Measured on the 440M shape, 2 cores,
taken in turn in one process: an 8-token forward pass 104 ms instead of 119,
a decode step of 32 sequences 303 ms instead of 338, a 1-token one within
noise (78 against 79).

install() puts it in mlx-lm's Qwen3 layers, which look swiglu up in
mlx_lm.models.qwen3, for float32 arrays on the CPU; anything else goes to
mlx-lm's own. The primitive is used only with the MLX version whose headers
it was built against. NEXTTERM_MLX_SWIGLU=0 leaves mlx-lm's function alone.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Callable, Optional

import mlx.core as mx
from mlx_lm.models import qwen3


def _load_primitive() -> tuple[Optional[ModuleType], str]:
    """The compiled primitive, or None and why not."""
    if os.environ.get("NEXTTERM_MLX_SWIGLU") == "0":
        return None, "disabled (NEXTTERM_MLX_SWIGLU=0)"
    try:
        from . import _swiglu
    except ImportError:
        return None, "not built: reinstall nextterm-mlx on Linux where a C++ compiler is present"
    if _swiglu.built_against != mx.__version__:
        return None, (f"built against MLX {_swiglu.built_against}, not the installed {mx.__version__}: "
                      "reinstall nextterm-mlx")
    try:
        _swiglu.swiglu(mx.zeros(8), mx.zeros(8))
    except TypeError:  # built with a nanobind whose ABI is not MLX's: it cannot take an mx.array
        return None, "built with a nanobind MLX's bindings do not share: reinstall nextterm-mlx"
    return _swiglu, "nextterm-mlx's vectorised SwiGLU"


primitive, why = _load_primitive()
_installed = False


def vectorised_swiglu(stock: Callable[[mx.array, mx.array], mx.array]) -> Callable[[mx.array, mx.array], mx.array]:
    """swiglu(gate, x) through the primitive where it applies, else `stock`."""

    @functools.wraps(stock)
    def swiglu(gate: mx.array, x: mx.array) -> mx.array:
        if (gate.dtype == mx.float32 and x.dtype == mx.float32 and gate.shape == x.shape
                and mx.default_device().type == mx.DeviceType.cpu):
            return primitive.swiglu(gate, x)
        return stock(gate, x)

    return swiglu


def installed() -> bool:
    return _installed


def install() -> None:
    """Route mlx-lm's Qwen3 layers through the primitive, once per process."""
    global _installed
    if primitive is not None and not _installed:
        qwen3.swiglu = vectorised_swiglu(qwen3.swiglu)
        _installed = True


def describe() -> str:
    """Which SwiGLU the CPU computes, in words (for `info`)."""
    if installed():
        return why
    return f"MLX's ({why})" if primitive is None else "MLX's (not installed: no model loaded on the CPU)"
