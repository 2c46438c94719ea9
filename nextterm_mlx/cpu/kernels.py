"""The operations the model hands to the CPU path, where they apply.

The model (nextterm_mlx/model.py) calls its Linear products, norms, SwiGLU,
attention and rotary embedding through a Kernels object. CPUKernels routes
each through the fastest piece that takes it and leaves the rest to MLX:

- products of float32 Linear layers go to the primitive in _linear.cpp,
  which calls the function blas.py chose (the skinny-product kernel in
  front of OpenBLAS); so do those of bfloat16 and 8-bit Linear layers kept
  as stored (reads_stored), which the kernel multiplies in float32; the
  products of several layers of one input (a layer's q, k and v, its gate
  and up) are one operation, one job of the kernel's threads;
- SwiGLU and attention in float32 go to the primitives in _swiglu.cpp and
  _attention.cpp, which take one pass with a vectorised exp where MLX's
  CPU backend runs a dozen small operations on one thread; so does RMSNorm
  to _rms_norm.cpp, one operation where MLX's backend composes a dozen;
- what those do not take is halved over two CPU streams (two_streams.py)
  when there are enough rows for the second thread to pay;
- the rotation is computed as tables once a forward pass and applied by
  every layer, where MLX's CPU RoPE recomputes them in each layer; the
  rotated_heads primitive in _rms_norm.cpp norms and rotates a layer's
  query or key heads in one operation.

Each piece gives the same numbers as the MLX operation it stands in for:
the products are the same BLAS calls MLX makes, the halves are independent
parts of the whole, and the tables rotate with the same products and sums.
SwiGLU and attention use their own exp, within a few ulps of the exact one,
and RMSNorm adds its squares in an order of its own.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Optional

import mlx.core as mx
import mlx.nn as nn

from ..model import Kernels
from . import blas, two_streams
from ..settings import Settings


def load_primitives() -> tuple[Optional[ModuleType], str]:
    """The compiled primitives, or None and why not."""
    try:
        from . import _primitives
    except ImportError:
        return None, "not built: reinstall nextterm-mlx on Linux where a C++ compiler is present"
    if _primitives.built_against != mx.__version__:
        # pip builds against the newest MLX unless told to use the installed one
        return None, (f"built against MLX {_primitives.built_against}, not the installed {mx.__version__}: "
                      f"install MLX {_primitives.built_against}, or reinstall nextterm-mlx with "
                      "`pip install nanobind==3.1.0` and then `pip install --no-build-isolation`")
    try:
        _primitives.linear(mx.zeros((1, 8)), mx.zeros((1, 8)), 0)
    except ValueError:  # the expected refusal of a null product function: it takes mx.array
        pass
    except TypeError:  # built with a nanobind whose ABI is not MLX's: it cannot take an mx.array
        return None, "built with a nanobind whose ABI MLX's bindings do not share: reinstall nextterm-mlx"
    return _primitives, ""


class CPUKernels(Kernels):
    """The model's operations on a Linux CPU, as the settings allow: the
    products through the Linear primitive as `blas` and `skinny` say, SwiGLU
    and attention through theirs as `primitives` says."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.primitives, why_not_built = load_primitives()
        products, why_no_products = blas.products(settings)
        self.products = products if self.primitives is not None else None
        if self.products is not None:
            self.products_described = products.description
        elif products is not None:
            self.products_described = f"MLX's own BLAS (the primitive that would call OpenBLAS: {why_not_built})"
        else:
            self.products_described = why_no_products
        self.vectorised = settings.primitives and self.primitives is not None and self.primitives.vectorised
        if self.vectorised:
            self.primitives_described = "nextterm-mlx's RMSNorm, SwiGLU and attention (float32)"
        elif not settings.primitives:
            self.primitives_described = "MLX's (NEXTTERM_MLX_PRIMITIVES=0)"
        elif self.primitives is None:
            self.primitives_described = f"MLX's (nextterm-mlx's {why_not_built})"
        else:
            self.primitives_described = "MLX's (nextterm-mlx's are written for x86-64 CPUs with AVX2 and FMA)"
        self.halves = settings.two_streams
        # The kernel's threads, for attention to share its heads with.
        self.parallel = self.products.parallel_address if self.products is not None else 0

    def reads_stored(self, layer: nn.Module) -> bool:
        """Whether the layer's weight can stay as stored for float32 inputs:
        bfloat16, which the kernel widens as it reads it (the float32 numbers),
        or 8 bits in groups of 64 (the dequantized weight's numbers, up to the
        order of the sums)."""
        if not (self.settings.stored_weights and self.products is not None and self.products.kernel is not None
                and "bias" not in layer):
            return False
        if type(layer) is nn.QuantizedLinear:
            return layer.bits == 8 and layer.group_size == 64 and layer.mode == "affine"
        return type(layer) is nn.Linear and layer.weight.dtype == mx.bfloat16

    def linear(self, layer: nn.Module, x: mx.array) -> mx.array:
        weight = layer.get("weight")
        plain = type(layer) in (nn.Linear, nn.Embedding) and "bias" not in layer
        if self.products is not None and plain and on_cpu_in_float32(x):
            if weight.dtype == mx.float32:
                return self.primitives.linear(x, weight, self.products.address)
            if weight.dtype == mx.bfloat16 and self.products.kernel is not None:
                return self.primitives.linear(x, weight, self.products.bf16_address)
        if (type(layer) is nn.QuantizedLinear and self.reads_stored(layer) and on_cpu_in_float32(x)
                and layer.scales.dtype == layer.biases.dtype == mx.float32):
            return self.primitives.quantized_linear(x, weight, layer.scales, layer.biases, self.products.q8_address)
        return super().linear(layer, x)

    def linears(self, layers: tuple[nn.Module, ...], x: mx.array) -> list[mx.array]:
        """One operation for the products of layers whose weights are all
        float32, all bfloat16 or all 8-bit ones kept as stored, which the
        kernel computes as one job of its threads; each layer's own product
        otherwise. Each output is the number `linear` gives."""
        if self.products is None or self.products.kernel is None or not on_cpu_in_float32(x):
            return super().linears(layers, x)
        if all(type(layer) is nn.Linear and "bias" not in layer for layer in layers):
            weights = [layer.weight for layer in layers]
            if len({weight.dtype for weight in weights}) == 1 and weights[0].dtype in (mx.float32, mx.bfloat16):
                return self.primitives.linears(x, weights, self.products.several_address)
        if all(type(layer) is nn.QuantizedLinear and self.reads_stored(layer)
               and layer.scales.dtype == layer.biases.dtype == mx.float32 for layer in layers):
            return self.primitives.quantized_linears(x, [layer.weight for layer in layers],
                                                     [layer.scales for layer in layers],
                                                     [layer.biases for layer in layers], self.products.several_address)
        return super().linears(layers, x)

    def alike_rows(self) -> Optional[int]:
        """The kernel's row limit, when it takes the products and attention is
        the primitive's: every output of a product up to that many rows is
        summed in one order, whatever the number of rows; attention sums
        each query's exps in the order of the positions, padding adding
        exact zeros. Beyond the limit OpenBLAS's GEMM computes, in an order
        of its own."""
        if self.products is None or self.products.kernel is None or not self.vectorised:
            return None
        return self.products.kernel.nextterm_skinny_max_rows()

    def rms_norm(self, layer: nn.RMSNorm, x: mx.array) -> mx.array:
        if self.vectorised and type(layer) is nn.RMSNorm and on_cpu_in_float32(x, layer.weight):
            return self.primitives.rms_norm(x, layer.weight, layer.eps)
        return super().rms_norm(layer, x)

    def rotated_heads(self, norm: nn.RMSNorm, x: mx.array, heads: int, rotate: Callable[[mx.array], mx.array]
                      ) -> mx.array:
        if (self.vectorised and type(norm) is nn.RMSNorm and isinstance(rotate, TableRotation)
                and x.shape[-1] == heads * rotate.rope.dims and on_cpu_in_float32(x, norm.weight, rotate.cosines)):
            return self.primitives.rotated_heads(x, norm.weight, rotate.cosines, rotate.sines, heads, norm.eps)
        return super().rotated_heads(norm, x, heads, rotate)

    def swiglu(self, gate: mx.array, x: mx.array) -> mx.array:
        if self.vectorised and gate.shape == x.shape and on_cpu_in_float32(gate, x):
            return self.primitives.swiglu(gate, x)
        if self.halves:
            return two_streams.halved_swiglu(super().swiglu, gate, x)
        return super().swiglu(gate, x)

    def attention(self, queries: mx.array, keys: mx.array, values: mx.array, cache: Any, scale: float,
                  mask: Any) -> mx.array:
        if (self.vectorised and takes_mask(mask) and not hasattr(cache, "bits")
                and on_cpu_in_float32(queries, keys, values)):
            try:
                options = {"as_rows": True, "parallel": self.parallel}
                if isinstance(mask, mx.array):
                    return self.primitives.attention(queries, keys, values, scale, mask=mask, **options)
                return self.primitives.attention(queries, keys, values, scale, mask_mode=mask or "", **options)
            except ValueError:  # shapes it does not take, e.g. more queries than keys
                pass
        if self.halves:
            return two_streams.halved_attention(super().attention, queries, keys, values, cache, scale, mask)
        return super().attention(queries, keys, values, cache, scale, mask)

    def rotation(self, rope: nn.Module, offset: Any, length: int, dtype: mx.Dtype) -> Callable[[mx.array], mx.array]:
        per_row_offsets = isinstance(offset, mx.array) and offset.ndim > 0
        if type(rope) is not nn.RoPE or rope.traditional or per_row_offsets or mx.default_device() != mx.cpu:
            return super().rotation(rope, offset, length, dtype)
        return rotation_from_tables(rope, offset, length, dtype)

    def describe(self) -> dict[str, Any]:
        return {"blas": self.products_described, "primitives": self.primitives_described,
                "two_streams": self.halves}


def on_cpu_in_float32(*arrays: mx.array) -> bool:
    return mx.default_device().type == mx.DeviceType.cpu and all(a.dtype == mx.float32 for a in arrays)


def takes_mask(mask: Any) -> bool:
    if isinstance(mask, mx.array):
        return mask.dtype in (mx.bool_, mx.float32)
    return mask is None or mask == "causal"


def rotation_from_tables(rope: nn.RoPE, offset: Any, length: int, dtype: mx.Dtype) -> "TableRotation":
    """RoPE for `length` positions from `offset`, from cosines and sines
    computed once. RoPE applied to the basis vector [1, ..., 1, 0, ..., 0]
    gives exactly the cosines (1 * cos - 0 * sin) and the sines (1 * sin +
    0 * cos) it computes itself."""
    half = rope.dims // 2
    basis = mx.concatenate([mx.ones((1, 1, length, half), dtype), mx.zeros((1, 1, length, half), dtype)], axis=-1)
    tables = rope(basis, offset=offset)
    cos, sin = tables[..., :half], tables[..., half:]
    cosines = mx.concatenate([cos, cos], axis=-1).reshape(length, rope.dims)
    sines = mx.concatenate([-sin, sin], axis=-1).reshape(length, rope.dims)
    return TableRotation(rope, offset, cosines, sines)


class TableRotation:
    """A rotation by tables of cosines [cos, cos] and sines [-sin, sin], one
    row a position: x * cosines + swap_halves(x) * sines makes the same
    products and sums as RoPE's x1 * cos - x2 * sin and x1 * sin + x2 * cos
    (negating and swapping the terms of a sum round alike), so the result is
    bit for bit RoPE's. The rotated_heads primitive takes the tables as they are."""

    def __init__(self, rope: nn.RoPE, offset: Any, cosines: mx.array, sines: mx.array):
        self.rope, self.offset, self.cosines, self.sines = rope, offset, cosines, sines
        # As the halves of a head, made once for every layer that rotates without the primitive.
        length, half = cosines.shape[0], rope.dims // 2
        self.halves_cos, self.halves_sin = cosines.reshape(length, 2, half), sines.reshape(length, 2, half)

    def __call__(self, x: mx.array) -> mx.array:
        *leading, dims = x.shape
        if dims != self.rope.dims:
            return self.rope(x, offset=self.offset)
        halves = x.reshape(*leading, 2, dims // 2)
        return (halves * self.halves_cos + halves[..., ::-1, :] * self.halves_sin).reshape(*leading, dims)
