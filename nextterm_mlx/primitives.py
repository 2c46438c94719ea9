"""SwiGLU and attention as MLX primitives of our own, for MLX's CPU backend on Linux.

MLX's Linux wheel computes exp one element at a time (each multiply-add a
call into libm), ~13 ns an element here, and has no CPU kernel for
scaled-dot-product attention: it runs a dozen small operations instead,
each a task of its own on the stream's thread. Decoding, both cost more than
anything else besides the weight products. nextterm_mlx/_primitives.cpp
computes each as one primitive, with a vectorised exp:

- SwiGLU: an 8-token forward pass 104 ms instead of 119, a decode step of 32
  sequences 303 ms instead of 338, a 1-token one within noise;
- attention, on top of it: a decode step of 32 sequences 297 ms instead of
  326; one sequence, or 8 tokens of one, within noise

(440M shape, 2 cores, taken in turn in one process).

install() puts them in mlx-lm's Qwen3 layers, which look both functions up
in mlx_lm.models.qwen3, for float32 arrays on the CPU; anything else goes to
the functions they replace (two_streams' halves, or mlx-lm's own). They are
used on CPUs with AVX2 and FMA, and only with the MLX version whose headers
they were built against. NEXTTERM_MLX_PRIMITIVES=0 leaves the functions
they would replace alone.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from types import ModuleType
from typing import Any, Callable, Optional

import mlx.core as mx
from mlx_lm.models import qwen3


def _load() -> tuple[Optional[ModuleType], str]:
    """The compiled module, or None and why not."""
    if not sys.platform.startswith("linux") or platform.machine() != "x86_64":
        return None, "built on x86-64 Linux only"
    if os.environ.get("NEXTTERM_MLX_PRIMITIVES") == "0":
        return None, "disabled (NEXTTERM_MLX_PRIMITIVES=0)"
    try:
        from . import _primitives
    except ImportError:
        return None, "not built: reinstall nextterm-mlx on Linux where a C++ compiler is present"
    if _primitives.built_against != mx.__version__:
        # pip builds against the newest MLX unless told to use the installed one
        return None, (f"built against MLX {_primitives.built_against}, not the installed {mx.__version__}: "
                      f"upgrade MLX to {_primitives.built_against}, or reinstall nextterm-mlx with "
                      "`pip install nanobind==3.1.0` and then `pip install --no-build-isolation`")
    if not _primitives.vectorised:
        return None, "this CPU has no AVX2 and FMA, for which they are written"
    try:
        _primitives.swiglu(mx.zeros(8), mx.zeros(8))
    except TypeError:  # built with a nanobind whose ABI is not MLX's: it cannot take an mx.array
        return None, "built with a nanobind whose ABI MLX's bindings do not share: reinstall nextterm-mlx"
    return _primitives, "nextterm-mlx's SwiGLU and attention (float32)"


compiled, why = _load()
_installed = False


def on_cpu_in_float32(*arrays: mx.array) -> bool:
    return mx.default_device().type == mx.DeviceType.cpu and all(a.dtype == mx.float32 for a in arrays)


def vectorised_swiglu(stock: Callable[[mx.array, mx.array], mx.array]) -> Callable[[mx.array, mx.array], mx.array]:
    """swiglu(gate, x) through the primitive where it applies, else `stock`."""

    @functools.wraps(stock)
    def swiglu(gate: mx.array, x: mx.array) -> mx.array:
        if gate.shape == x.shape and on_cpu_in_float32(gate, x):
            return compiled.swiglu(gate, x)
        return stock(gate, x)

    return swiglu


def takes_mask(mask: Any) -> bool:
    if isinstance(mask, mx.array):
        return mask.dtype in (mx.bool_, mx.float32)
    return mask is None or mask == "causal"


def one_pass_attention(stock: Callable[..., mx.array]) -> Callable[..., mx.array]:
    """mlx-lm's scaled_dot_product_attention through the primitive where it applies, else `stock`."""

    @functools.wraps(stock)
    def attention(queries: mx.array, keys: mx.array, values: mx.array, cache: Any, scale: float, mask: Any,
                  sinks: Optional[mx.array] = None) -> mx.array:
        if takes_mask(mask) and sinks is None and not hasattr(cache, "bits") and on_cpu_in_float32(queries, keys, values):
            try:
                if isinstance(mask, mx.array):
                    return compiled.attention(queries, keys, values, scale, mask=mask)
                return compiled.attention(queries, keys, values, scale, mask_mode=mask or "")
            except ValueError:  # shapes it does not take, e.g. more queries than keys
                pass
        return stock(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)

    return attention


def installed() -> bool:
    return _installed


def install() -> None:
    """Route mlx-lm's Qwen3 layers through the primitives, once per process."""
    global _installed
    if compiled is not None and not _installed:
        qwen3.swiglu = vectorised_swiglu(qwen3.swiglu)
        qwen3.scaled_dot_product_attention = one_pass_attention(qwen3.scaled_dot_product_attention)
        _installed = True


def describe() -> str:
    """Which SwiGLU and attention the CPU computes, in words (for `info`)."""
    if _installed:
        return why
    return f"MLX's ({why})" if compiled is None else "MLX's (not installed: no model loaded on the CPU)"
