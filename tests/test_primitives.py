"""nextterm-mlx's MLX primitives for the CPU (nextterm_mlx/cpu/_primitives.cpp):
a Linear layer's product, SwiGLU and attention. Built on x86-64 Linux,
switched off by the settings and used by a loaded model through its
CPUKernels; the Linear product is bit for bit the product function called
as MLX calls it, SwiGLU and attention close to the same functions computed
in float64 by numpy; all three the same under mx.compile and on any stream,
differentiable, and out of the way for inputs they do not take. Which
product function the Linear primitive calls, and the reference parity with
the primitives switched off, are in test_blas.py."""

from __future__ import annotations

import ctypes
import platform
import sys
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import nextterm_mlx
from conftest import FIXTURES
from nextterm_mlx.cpu import blas
from nextterm_mlx.cpu.kernels import CPUKernels, load_primitives
from nextterm_mlx.settings import Settings
from nextterm_mlx.model import Kernels

PRIMITIVES, WHY_NOT = load_primitives()
needs_primitives = pytest.mark.skipif(PRIMITIVES is None, reason=WHY_NOT)
vectorised = pytest.mark.skipif(PRIMITIVES is None or not PRIMITIVES.vectorised,
                                reason=WHY_NOT or "this CPU has no AVX2 and FMA, for which SwiGLU and attention "
                                                  "are written")
PRODUCTS = blas.products(Settings())[0]
needs_products = pytest.mark.skipif(PRIMITIVES is None or PRODUCTS is None,
                                    reason=WHY_NOT or "no product function (OpenBLAS) to hand the Linear primitive")

# MLX's own operations: what the primitives stand in for.
MLX = Kernels()


def random(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def not_to_be_called(*args, **kwargs):
    raise AssertionError("a primitive was called")


def test_the_primitives_are_built_on_linux_and_can_be_switched_off():
    kernels = CPUKernels(Settings(primitives=False))
    assert not kernels.vectorised
    assert kernels.describe()["primitives"] == "MLX's (NEXTTERM_MLX_PRIMITIVES=0)"
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("built on x86-64 Linux only")
    assert PRIMITIVES is not None, WHY_NOT
    assert PRIMITIVES.built_against == mx.__version__
    if PRIMITIVES.vectorised:
        assert CPUKernels(Settings()).describe()["primitives"] == "nextterm-mlx's RMSNorm, SwiGLU and attention (float32)"


def assert_same_gradients(ours, theirs, inputs, weights, rtol, atol):
    """The gradients of sum(f(*inputs) * weights) with respect to every input
    are alike, f being ours or theirs."""
    def loss(function):
        return lambda *args: (function(*args) * weights).sum()

    argnums = tuple(range(len(inputs)))
    for a, b in zip(mx.grad(loss(ours), argnums)(*inputs), mx.grad(loss(theirs), argnums)(*inputs)):
        assert a.shape == b.shape and mx.allclose(a, b, rtol=rtol, atol=atol).item()


def counting(primitives, calls: list):
    """`primitives` with each function recording its calls' names."""

    def counted(name):
        function = getattr(primitives, name)

        def call(*args, **kwargs):
            calls.append((name, args[-1] if "linear" in name else None))  # a product's function
            return function(*args, **kwargs)

        return call

    names = ("linear", "linears", "quantized_linear", "quantized_linears", "rms_norm", "rotated_heads", "swiglu",
             "attention")
    return SimpleNamespace(**{name: counted(name) for name in names})


@needs_products
@vectorised
@pytest.mark.parametrize("name", ["untied-v4", "tied-v5"])  # the head a Linear layer, or the embedding
def test_a_loaded_model_goes_through_the_primitives(name):
    model = nextterm_mlx.load(FIXTURES / name, dtype="float32").model
    kernels = model.kernels
    assert isinstance(kernels, CPUKernels) and kernels.primitives is not None
    calls = []
    kernels.primitives = counting(kernels.primitives, calls)
    mx.eval(model(mx.array([[3, 4, 5, 11, 6]])))
    layers = len(model.layers)
    # Per layer: the query, key and value projections as one operation, and
    # gate and up as another; the output and down projections; two norms
    # (input, before the MLP); the queries' and keys' heads normed and
    # rotated; SwiGLU; attention. Then the final norm and the head.
    assert sorted(call for call, _ in calls) == ["attention"] * layers + ["linear"] * (2 * layers + 1) + [
        "linears"] * (2 * layers) + ["rms_norm"] * (2 * layers + 1) + ["rotated_heads"] * (2 * layers) + [
        "swiglu"] * layers
    # The fixtures are stored in bfloat16, as their Linear layers' weights stay;
    # a tied head is the embedding, cast to float32.
    products = kernels.products
    expected = {products.bf16_address} | ({products.address} if model.args.tie_word_embeddings else set())
    assert {address for call, address in calls if call == "linear"} == expected
    assert {address for call, address in calls if call == "linears"} == {products.several_address}


# --- Linear ---------------------------------------------------------------------------------

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
SGEMM = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                         ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                         ctypes.c_float, ctypes.c_void_p, ctypes.c_int)


def product_as_mlx_calls_it(address: int, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """x @ weight.T by the function at `address`, with the arguments MLX's
    matmul passes for it: row-major, x as it lies, the weight transposed."""
    rows, depth = x.reshape(-1, x.shape[-1]).shape
    outputs = weight.shape[0]
    out = np.empty((rows, outputs), np.float32)
    SGEMM(address)(ROW_MAJOR, NO_TRANS, TRANS, rows, outputs, depth, 1.0, x.ctypes.data, depth, weight.ctypes.data,
                   depth, 0.0, out.ctypes.data, outputs)
    return out.reshape(*x.shape[:-1], outputs)


def product_functions():
    """The kernel in front of OpenBLAS, and OpenBLAS's own sgemm."""
    functions = {"openblas": blas.products(Settings(skinny=False))[0].address}
    if PRODUCTS.kernel is not None:
        functions["kernel"] = PRODUCTS.address
    return functions


@needs_products
@pytest.mark.parametrize("x_shape, outputs", [((1, 300), 70), ((1, 3071), 1027), ((5, 301), 71),
                                              ((2, 3, 40), 17), ((100, 64), 33)])
def test_linear_is_bit_for_bit_the_product_function_called_as_mlx_calls_it(x_shape, outputs):
    x, weight = random(x_shape, 1), random((outputs, x_shape[-1]), 2)
    for through, address in product_functions().items():
        got = PRIMITIVES.linear(mx.array(x), mx.array(weight), address)
        assert got.shape == (*x_shape[:-1], outputs)
        assert np.array_equal(np.array(got), product_as_mlx_calls_it(address, x, weight)), through


@needs_products
def test_linear_reads_strided_and_transposed_inputs_as_their_values():
    x, stored = random((6, 80), 3), random((40, 30), 4)  # the weight stored transposed
    got = PRIMITIVES.linear(mx.array(x)[:, ::2], mx.array(stored).T, PRODUCTS.address)
    expected = x[:, ::2].astype(np.float64) @ stored.astype(np.float64)
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-5, atol=1e-4)


@needs_products
def test_stored_weights_strided_or_transposed_are_read_as_their_values():
    x, stored = random((6, 256), 5), random((128, 40), 6)
    # bfloat16, stored transposed: a strided 2-byte array to copy.
    weight = mx.array(stored).astype(mx.bfloat16)
    got = PRIMITIVES.linear(mx.array(x)[:, ::2], weight.T, PRODUCTS.bf16_address)
    widened = np.array(weight.astype(mx.float32), dtype=np.float64)
    np.testing.assert_allclose(np.array(got), x[:, ::2].astype(np.float64) @ widened, rtol=1e-5, atol=1e-4)
    # 8 bits, with every other input column and scales and biases taken from a wider array.
    quantized, scales, biases = mx.quantize(mx.array(stored.T), 64, 8)
    wide_scales, wide_biases = (mx.repeat(a, 2, axis=1) for a in (scales, biases))
    got = PRIMITIVES.quantized_linear(mx.array(x)[:, ::2], quantized, wide_scales[:, ::2], wide_biases[:, ::2],
                                      PRODUCTS.q8_address)
    dequantized = np.array(mx.dequantize(quantized, scales, biases, 64, 8), dtype=np.float64)
    np.testing.assert_allclose(np.array(got), x[:, ::2].astype(np.float64) @ dequantized.T, rtol=1e-5, atol=1e-3)


@needs_products
def test_linear_compiled_and_on_another_stream_gives_the_same_values():
    x, weight = mx.array(random((4, 300), 5)), mx.array(random((70, 300), 6))
    eager = PRIMITIVES.linear(x, weight, PRODUCTS.address)
    compiled = mx.compile(lambda x, w: PRIMITIVES.linear(x * 1.0, w, PRODUCTS.address) + 0.0)(x, weight)
    with mx.stream(mx.new_stream(mx.cpu)):
        other_stream = PRIMITIVES.linear(x, weight, PRODUCTS.address)
    assert mx.array_equal(compiled, eager).item() and mx.array_equal(other_stream, eager).item()


@needs_products
def test_linear_gradients_match_mlx_matmul():
    x, weight = mx.array(random((2, 3, 50), 7)), mx.array(random((20, 50), 8))
    assert_same_gradients(lambda x, w: PRIMITIVES.linear(x, w, PRODUCTS.address), lambda x, w: x @ w.T,
                          (x, weight), mx.array(random((2, 3, 20), 9)), rtol=1e-5, atol=1e-5)


@needs_products
def test_linear_refuses_what_it_does_not_take():
    x, weight = mx.array(random((2, 8), 10)), mx.array(random((3, 8), 11))
    for arguments in [(x, weight, 0), (x.astype(mx.bfloat16), weight, PRODUCTS.address),
                      (x, weight.astype(mx.float16), PRODUCTS.address), (x, weight.T, PRODUCTS.address),
                      (x, weight.reshape(1, 3, 8), PRODUCTS.address), (x[:, :0], weight[:, :0], PRODUCTS.address)]:
        with pytest.raises(ValueError):
            PRIMITIVES.linear(*arguments)


@needs_products
def test_layers_the_linear_primitive_takes_go_through_it():
    kernels = CPUKernels(Settings())
    calls = []
    kernels.primitives = counting(kernels.primitives, calls)
    x = mx.array(random((1, 3, 32), 12))
    linear, embedding = nn.Linear(32, 24, bias=False), nn.Embedding(24, 32)
    for layer, mlx_product in [(linear, linear(x)), (embedding, embedding.as_linear(x))]:
        got = kernels.linear(layer, x)
        np.testing.assert_allclose(np.array(got), np.array(mlx_product), rtol=1e-5, atol=1e-5)
    assert [call for call, _ in calls] == ["linear", "linear"]


@needs_products
def test_layers_the_linear_primitive_does_not_take_go_to_mlx():
    kernels = CPUKernels(Settings())
    kernels.primitives = SimpleNamespace(linear=not_to_be_called)
    x = mx.array(random((1, 3, 64), 13))
    half = nn.Linear(64, 24, bias=False)
    half.set_dtype(mx.bfloat16)
    quantized = nn.QuantizedLinear.from_linear(nn.Linear(64, 24, bias=False))
    for layer, inputs in [(nn.Linear(64, 24), x), (half, x.astype(mx.bfloat16)), (quantized, x),
                          (nn.Linear(64, 24, bias=False), x.astype(mx.bfloat16))]:
        assert mx.array_equal(kernels.linear(layer, inputs), MLX.linear(layer, inputs)).item(), layer


needs_kernel = pytest.mark.skipif(PRODUCTS is None or PRODUCTS.kernel is None or PRIMITIVES is None,
                                  reason=WHY_NOT or "the skinny-product kernel is not loaded")


@needs_kernel
def test_layers_of_one_weight_type_go_through_one_operation_and_others_each_through_their_own():
    kernels = CPUKernels(Settings())
    x = mx.array(random((1, 3, 64), 14))

    def linear(width, dtype=mx.float32, bias=False):
        layer = nn.Linear(64, width, bias=bias)
        layer.set_dtype(dtype)
        return layer

    quantized = [nn.QuantizedLinear.from_linear(linear(width), group_size=64, bits=8) for width in (24, 40)]
    for layers, operations in [([linear(24), linear(40), linear(8)], ["linears"]),
                               ([linear(24, mx.bfloat16), linear(40, mx.bfloat16)], ["linears"]),
                               (quantized, ["quantized_linears"]),
                               ([linear(24), linear(40, mx.bfloat16)], ["linear", "linear"]),
                               ([linear(24), linear(40, bias=True)], ["linear"]),
                               ([quantized[0], linear(40)], ["quantized_linear", "linear"])]:
        calls = []
        kernels.primitives = counting(CPUKernels(Settings()).primitives, calls)
        got = kernels.linears(layers, x)
        assert [name for name, _ in calls] == operations
        for layer, output in zip(layers, got):
            np.testing.assert_allclose(np.array(output), np.array(MLX.linear(layer, x)), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_linears_gradients_match_mlx_matmul():
    x, first, second = (mx.array(random(shape, seed)) for shape, seed in [((2, 3, 50), 15), ((20, 50), 16),
                                                                          ((7, 50), 17)])

    def ours(x, a, b):
        return mx.concatenate(PRIMITIVES.linears(x, [a, b], PRODUCTS.several_address), axis=-1)

    assert_same_gradients(ours, lambda x, a, b: mx.concatenate([x @ a.T, x @ b.T], axis=-1), (x, first, second),
                          mx.array(random((2, 3, 27), 18)), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_linears_refuse_what_they_do_not_take():
    x, weight = mx.array(random((2, 64), 19)), mx.array(random((3, 64), 20))
    for arguments in [(x, [weight, weight], 0), (x, [weight], PRODUCTS.several_address),
                      (x, [weight, weight.astype(mx.bfloat16)], PRODUCTS.several_address),
                      (x, [weight, weight[:, :32]], PRODUCTS.several_address)]:
        with pytest.raises(ValueError):
            PRIMITIVES.linears(*arguments)
    quantized, scales, biases = mx.quantize(weight, 64, 8)
    with pytest.raises(ValueError):
        PRIMITIVES.quantized_linears(x, [quantized, quantized], [scales], [biases, biases], PRODUCTS.several_address)


# --- RMSNorm -------------------------------------------------------------------------------

def rms_norm_in_float64(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    return x64 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps) * weight.astype(np.float64)


@vectorised
@pytest.mark.parametrize("shape", [(1, 1, 1024), (3, 5, 128), (2, 37), (4, 7)])
def test_rms_norm_matches_float64(shape):
    x, weight = random(shape, 20, scale=3.0), random(shape[-1:], 21)
    got = np.array(PRIMITIVES.rms_norm(mx.array(x), mx.array(weight), 1e-6))
    np.testing.assert_allclose(got, rms_norm_in_float64(x, weight, 1e-6), rtol=2e-6, atol=1e-6)


@vectorised
def test_rms_norm_gives_a_row_alone_the_numbers_it_gets_among_others():
    x, weight = random((40, 1024), 22), random((1024,), 23)
    together = np.array(PRIMITIVES.rms_norm(mx.array(x), mx.array(weight), 1e-6))
    for row in (0, 17, 39):
        alone = np.array(PRIMITIVES.rms_norm(mx.array(x[row : row + 1]), mx.array(weight), 1e-6))
        assert np.array_equal(together[row : row + 1], alone), row


@vectorised
def test_rms_norm_reads_strided_inputs_as_their_values():
    x, weight = random((64, 6), 24), random((64,), 25)
    got = np.array(PRIMITIVES.rms_norm(mx.array(x).T, mx.array(weight), 1e-5))
    np.testing.assert_allclose(got, rms_norm_in_float64(x.T, weight, 1e-5), rtol=2e-6, atol=1e-6)


@vectorised
def test_rms_norm_gradients_match_mlx_rms_norm():
    x, weight = mx.array(random((3, 64), 26)), mx.array(random((64,), 27))
    assert_same_gradients(lambda x, w: PRIMITIVES.rms_norm(x, w, 1e-6), lambda x, w: mx.fast.rms_norm(x, w, 1e-6),
                          (x, weight), mx.array(random((3, 64), 28)), rtol=1e-4, atol=1e-5)


@vectorised
def test_the_kernels_hand_float32_rms_norm_to_the_primitive_and_the_rest_to_mlx():
    kernels = CPUKernels(Settings())
    calls = []
    kernels.primitives = counting(kernels.primitives, calls)
    norm = nn.RMSNorm(48, eps=1e-5)
    norm.weight = mx.array(random((48,), 29))
    x = mx.array(random((2, 48), 30))
    assert mx.array_equal(kernels.rms_norm(norm, x), PRIMITIVES.rms_norm(x, norm.weight, 1e-5)).item()
    assert calls == [("rms_norm", None)]
    half = x.astype(mx.bfloat16)
    assert mx.array_equal(kernels.rms_norm(norm, half), MLX.rms_norm(norm, half)).item()
    assert calls == [("rms_norm", None)]


@vectorised
def test_rms_norm_refuses_what_it_does_not_take():
    for x, weight in [(mx.zeros((2, 8), mx.bfloat16), mx.zeros((8,))), (mx.zeros((2, 8)), mx.zeros((4,))),
                      (mx.zeros((2, 8)), mx.zeros((2, 8)))]:
        with pytest.raises(ValueError, match="rms_norm"):
            PRIMITIVES.rms_norm(x, weight, 1e-6)


# --- The heads of queries and keys, normed and rotated ------------------------------------

def rotated_heads_in_float64(x: np.ndarray, weight: np.ndarray, heads: int, eps: float, base: float,
                             first_position: int) -> np.ndarray:
    """RMSNorm of each head, then RoPE (non-traditional: the halves of a head
    rotate together), written out in float64 from their definitions."""
    batch, length, _ = x.shape
    width = weight.shape[0]
    normed = rms_norm_in_float64(x.reshape(batch, length, heads, width), weight, eps).transpose(0, 2, 1, 3)
    half = width // 2
    angles = (first_position + np.arange(length))[:, None] * base ** (-np.arange(half) / half)
    cos, sin = np.cos(angles), np.sin(angles)
    x1, x2 = normed[..., :half], normed[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def tables(width: int, base: float, first_position: int, length: int):
    """The cosines and sines the kernels hand the primitive (TableRotation's)."""
    from nextterm_mlx.cpu.kernels import rotation_from_tables

    rotation = rotation_from_tables(nn.RoPE(width, base=base), first_position, length, mx.float32)
    return rotation.cosines, rotation.sines


@vectorised
@pytest.mark.parametrize("batch, length, heads, width, first_position",
                         [(1, 1, 16, 128, 99), (2, 7, 8, 128, 0), (1, 64, 2, 16, 300), (3, 2, 1, 6, 5)])
def test_rotated_heads_match_float64(batch, length, heads, width, first_position):
    x, weight = random((batch, length, heads * width), 40, scale=2.0), random((width,), 41)
    cosines, sines = tables(width, 10000.0, first_position, length)
    got = np.array(PRIMITIVES.rotated_heads(mx.array(x), mx.array(weight), cosines, sines, heads, 1e-6))
    expected = rotated_heads_in_float64(x, weight, heads, 1e-6, 10000.0, first_position)
    assert got.shape == (batch, heads, length, width)
    # float32 angles of positions in the hundreds are off by some 1e-5 radians
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@vectorised
def test_rotated_heads_are_mlx_rope_of_the_rms_norm_primitive_bit_for_bit():
    """With the norm's sum order aside (the same per row as the RMSNorm
    primitive's), the rotation rounds each product and sum as mlx.nn.RoPE."""
    rope = nn.RoPE(128, base=1e6)
    x, weight = mx.array(random((2, 5, 4 * 128), 42)), mx.array(random((128,), 43))
    cosines, sines = tables(128, 1e6, 17, 5)
    got = PRIMITIVES.rotated_heads(x, weight, cosines, sines, 4, 1e-6)
    normed = PRIMITIVES.rms_norm(x.reshape(2, 5, 4, 128), weight, 1e-6).transpose(0, 2, 1, 3)
    assert mx.array_equal(got, rope(normed, offset=17)).item()


@vectorised
def test_rotated_heads_read_strided_inputs_as_their_values():
    x, weight = random((6, 1, 2 * 16), 44), random((16,), 45)
    cosines, sines = tables(16, 10000.0, 3, 6)
    strided = mx.array(x).transpose(1, 0, 2)  # (1, 6, 32) with the positions' stride
    got = np.array(PRIMITIVES.rotated_heads(strided, mx.array(weight), cosines, sines, 2, 1e-6))
    expected = rotated_heads_in_float64(x.transpose(1, 0, 2), weight, 2, 1e-6, 10000.0, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@vectorised
def test_rotated_heads_gradients_match_mlx_operations():
    rope = nn.RoPE(16, base=10000.0)
    cosines, sines = tables(16, 10000.0, 0, 3)
    x, weight = mx.array(random((2, 3, 2 * 16), 46)), mx.array(random((16,), 47))

    weights = mx.array(random((2, 2, 3, 16), 48))
    # Against RoPE of MLX's rms_norm, for x and the norm's weight.
    assert_same_gradients(lambda x, w: PRIMITIVES.rotated_heads(x, w, cosines, sines, 2, 1e-6),
                          lambda x, w: rope(mx.fast.rms_norm(x.reshape(2, 3, 2, 16), w, 1e-6).transpose(0, 2, 1, 3)),
                          (x, weight), weights, rtol=1e-4, atol=1e-5)

    # The tables' gradients too, against the rotation written with MLX's operations.
    def by_mlx(x, w, cosines, sines):
        normed = mx.fast.rms_norm(x.reshape(2, 3, 2, 16), w, 1e-6).transpose(0, 2, 1, 3)
        return normed * cosines + mx.concatenate([normed[..., 8:], normed[..., :8]], axis=-1) * sines

    assert_same_gradients(lambda *a: PRIMITIVES.rotated_heads(*a, 2, 1e-6), by_mlx, (x, weight, cosines, sines),
                          weights, rtol=1e-4, atol=1e-5)


@vectorised
def test_the_kernels_hand_rotated_heads_to_the_primitive_only_with_tables_in_float32():
    from nextterm_mlx.cpu.kernels import rotation_from_tables

    kernels = CPUKernels(Settings())
    calls = []
    kernels.primitives = counting(kernels.primitives, calls)
    norm, rope = nn.RMSNorm(16, eps=1e-5), nn.RoPE(16, base=10000.0)
    norm.weight = mx.array(random((16,), 49))
    x = mx.array(random((1, 3, 4 * 16), 50))
    rotation = rotation_from_tables(rope, 2, 3, mx.float32)
    expected = rope(mx.fast.rms_norm(x.reshape(1, 3, 4, 16), norm.weight, 1e-5).transpose(0, 2, 1, 3), offset=2)
    got = kernels.rotated_heads(norm, x, 4, rotation)
    assert calls == [("rotated_heads", None)]
    assert mx.allclose(got, expected, rtol=1e-5, atol=1e-6).item()
    calls.clear()
    # Per-row offsets (a batch at different positions) rotate through RoPE itself.
    kernels.rotated_heads(norm, x, 4, lambda heads: rope(heads, offset=2))
    assert [name for name, _ in calls] == ["rms_norm"]
    calls.clear()
    # A partial rotation (RoPE over fewer dims than a head) is RoPE's too.
    partial = rotation_from_tables(nn.RoPE(8, base=10000.0), 2, 3, mx.float32)
    kernels.rotated_heads(norm, x, 4, partial)
    assert [name for name, _ in calls] == ["rms_norm"]


@vectorised
def test_rotated_heads_refuse_what_they_do_not_take():
    cosines, sines = tables(8, 10000.0, 0, 2)
    cases = [(mx.zeros((1, 2, 16), mx.bfloat16), mx.zeros((8,)), cosines, sines, 2),  # not float32
             (mx.zeros((1, 2, 16)), mx.zeros((8,)), cosines, sines, 3),  # heads do not divide
             (mx.zeros((1, 3, 16)), mx.zeros((8,)), cosines, sines, 2),  # tables for 2 positions
             (mx.zeros((1, 2, 14)), mx.zeros((7,)), cosines[:, :7], sines[:, :7], 2),  # odd width
             (mx.zeros((2, 16)), mx.zeros((8,)), cosines, sines, 2)]  # no positions axis
    for x, weight, cos, sin, heads in cases:
        with pytest.raises(ValueError, match="rotated_heads"):
            PRIMITIVES.rotated_heads(x, weight, cos, sin, heads, 1e-6)


# --- SwiGLU ---------------------------------------------------------------------------------

def assert_close_to_float64(got: mx.array, gate: np.ndarray, x: np.ndarray, ulps: float = 4):
    g = gate.astype(np.float64)
    exact = g / (1 + np.exp(-g)) * x.astype(np.float64)
    # Values under 1e-30 (SiLU of a gate below -70) count as 0.
    allowed = ulps * np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64) + 1e-30
    error = np.abs(np.array(got).astype(np.float64) - exact)
    worst = np.argmax(error - allowed)
    assert (error <= allowed).all(), f"gate {g.flat[worst]}: got {np.array(got).flat[worst]}, exact {exact.flat[worst]}"


@vectorised
@pytest.mark.parametrize("shape", [(1, 3072), (8, 3072), (3, 5, 7), (13,), (2, 1, 17)])
def test_swiglu_of_random_gates_is_within_4_ulps(shape):
    gate, x = random(shape, 1, scale=8.0), random(shape, 2)
    assert_close_to_float64(PRIMITIVES.swiglu(mx.array(gate), mx.array(x)), gate, x)


@vectorised
def test_swiglu_over_every_range_of_the_exp_is_within_4_ulps():
    gate = np.linspace(-100, 100, 400_003, dtype=np.float32)  # each interval of the range reduction, many times
    x = np.ones_like(gate)
    assert_close_to_float64(PRIMITIVES.swiglu(mx.array(gate), mx.array(x)), gate, x)


@vectorised
def test_swiglu_of_special_values():
    special = [0.0, -0.0, 1e-30, -1e-30, 200.0, -200.0, np.inf, -np.inf, np.nan]
    gate = mx.array(special * 2)  # the first 16 through the vectorised loop, the last 2 through the plain one
    got = PRIMITIVES.swiglu(gate, mx.ones_like(gate)).tolist()
    for at in (0, 9):
        value = got[at:at + 9]
        assert np.allclose(value[:4], [0.0, 0.0, 5e-31, -5e-31], rtol=1e-6, atol=0)
        assert value[4] == 200.0 and value[5] == 0.0 and value[6] == np.inf and value[7] == 0.0
        assert np.isnan(value[8])


@vectorised
def test_swiglu_reads_strided_inputs_as_their_values():
    gate, x = random((6, 40), 3, scale=4.0), random((40, 6), 4)
    got = PRIMITIVES.swiglu(mx.array(gate)[:, ::2], mx.array(x).T[:, 1::2])
    assert_close_to_float64(got, gate[:, ::2], x.T[:, 1::2])


@vectorised
def test_swiglu_compiled_and_on_another_stream_gives_the_same_values():
    gate, x = mx.array(random((4, 100), 5, scale=5.0)), mx.array(random((4, 100), 6))
    eager = PRIMITIVES.swiglu(gate, x)
    compiled = mx.compile(lambda g, x: PRIMITIVES.swiglu(g * 1.0, x) + 0.0)(gate, x)
    with mx.stream(mx.new_stream(mx.cpu)):
        other_stream = PRIMITIVES.swiglu(gate, x)
    assert mx.array_equal(compiled, eager).item() and mx.array_equal(other_stream, eager).item()


@vectorised
def test_swiglu_gradients_match_mlx_swiglu():
    gate, x = mx.array(random((3, 50), 7, scale=4.0)), mx.array(random((3, 50), 8))
    assert_same_gradients(PRIMITIVES.swiglu, MLX.swiglu, (gate, x), mx.array(random((3, 50), 9)),
                          rtol=1e-5, atol=1e-6)


@vectorised
def test_the_kernels_hand_float32_swiglu_to_the_primitive():
    kernels = CPUKernels(Settings())
    calls = []
    kernels.primitives = counting(kernels.primitives, calls)
    gate, x = mx.array(random((3, 40), 10, scale=4.0)), mx.array(random((3, 40), 11))
    assert mx.array_equal(kernels.swiglu(gate, x), PRIMITIVES.swiglu(gate, x)).item()
    assert calls == [("swiglu", None)]


@needs_primitives
def test_swiglu_it_does_not_take_goes_to_mlx_swiglu():
    kernels = CPUKernels(Settings())
    kernels.primitives = SimpleNamespace(swiglu=not_to_be_called)
    half = mx.array(random((2, 24), 10)).astype(mx.bfloat16)
    assert mx.array_equal(kernels.swiglu(half, half), MLX.swiglu(half, half)).item()
    column, row = mx.array(random((4, 1), 11)), mx.array(random((4, 3), 12))
    assert mx.array_equal(kernels.swiglu(column, row), MLX.swiglu(column, row)).item()


# --- attention ----------------------------------------------------------------------------

def attention_in_float64(queries, keys, values, scale, mask):
    """softmax(q k^T scale + mask) v, as MLX defines it: hidden positions get
    float32's lowest score, so a row that may see nothing averages all values."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (queries, keys, values))
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = q @ k.swapaxes(-1, -2) * scale
    if isinstance(mask, str):  # "causal": the queries are the last positions
        length, keys_length = q.shape[2], k.shape[2]
        mask = np.arange(keys_length)[None] <= np.arange(keys_length - length, keys_length)[:, None]
    if mask is not None and np.asarray(mask).dtype == bool:
        scores = np.where(np.asarray(mask), scores, np.finfo(np.float32).min)
    elif mask is not None:
        scores = scores + np.asarray(mask, dtype=np.float64)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (weights / weights.sum(axis=-1, keepdims=True)) @ v


def attention_problem(batch, heads, kv_heads, length, keys, dim, mask, seed):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for shape in
               [(batch, heads, length, dim), (batch, kv_heads, keys, dim), (batch, kv_heads, keys, dim)])
    masks = {
        "none": None,
        "causal": "causal",
        "positions": rng.random((length, keys)) > 0.3,             # one mask for every sequence and head
        "padding": rng.random((batch, 1, length, keys)) > 0.3,     # per sequence, as a batch's left padding
        "added": rng.standard_normal((batch, heads, length, keys)).astype(np.float32),
        "nothing visible": np.zeros((length, keys), dtype=bool),
    }
    return q, k, v, masks[mask]


def call_attention(q, k, v, scale, mask):
    if mask is None or isinstance(mask, str):
        return PRIMITIVES.attention(mx.array(q), mx.array(k), mx.array(v), scale, mask_mode=mask or "")
    return PRIMITIVES.attention(mx.array(q), mx.array(k), mx.array(v), scale, mask=mx.array(mask))


@vectorised
@pytest.mark.parametrize("mask", ["none", "causal", "positions", "padding", "added", "nothing visible"])
@pytest.mark.parametrize("batch, heads, kv_heads, length, keys, dim", [
    (1, 16, 8, 1, 100, 128),   # a decode step of the 440M shape
    (32, 16, 8, 1, 57, 128),   # a batch of 32
    (1, 16, 8, 8, 120, 128),   # 8 drafted tokens to verify
    (2, 6, 3, 3, 9, 20),       # three query heads per key head; a dimension that is no multiple of 8
    (3, 4, 4, 5, 5, 64),       # no grouping; a prefill
])
def test_attention_matches_float64(batch, heads, kv_heads, length, keys, dim, mask):
    q, k, v, mask = attention_problem(batch, heads, kv_heads, length, keys, dim, mask, seed=keys)
    got = np.array(call_attention(q, k, v, 0.09, mask))
    assert np.allclose(got, attention_in_float64(q, k, v, 0.09, mask), rtol=1e-5, atol=2e-6)


@vectorised
def test_a_row_whose_visible_scores_overflow_weighs_every_hidden_position_alike_as_mlx_does():
    """MLX gives hidden positions float32's lowest score: when the scores a
    row may see overflow to -inf, each hidden position, those after the last
    visible one too, gets the same weight, and the visible ones none."""
    queries, keys = np.full((1, 2, 1, 16), 1e20, np.float32), np.full((1, 1, 10, 16), -1e20, np.float32)
    values = random((1, 1, 10, 16), 21)
    mask = np.zeros((1, 10), dtype=bool)
    mask[0, [0, 3]] = True
    got = np.array(call_attention(queries, keys, values, 1.0, mask))
    np.testing.assert_allclose(got, attention_in_float64(queries, keys, values, 1.0, mask), rtol=1e-6, atol=1e-6)


@vectorised
@pytest.mark.parametrize("visible", [1, 5, 8, 13, 40])
def test_attention_over_the_same_positions_is_the_same_wherever_the_buffer_holds_them(visible):
    """A query sees `visible` positions: alone in a buffer of their size,
    after a batch's left padding, or followed by a fixed-size cache's unused
    room. Bit for bit the same output, so that a sequence decodes in a
    batch exactly as it does alone."""
    q, k, v, _ = attention_problem(1, 4, 2, 1, visible, 64, "none", seed=visible)

    def placed(before: int, after: int) -> np.ndarray:
        junk = np.random.default_rng(before + after).standard_normal((1, 2, before + visible + after, 64))
        keys, values = junk.astype(np.float32), junk[..., ::-1].astype(np.float32)
        keys[:, :, before : before + visible], values[:, :, before : before + visible] = k, v
        mask = np.zeros((1, 1, 1, before + visible + after), dtype=bool)
        mask[..., before : before + visible] = True
        return np.array(call_attention(q, keys, values, 0.125, mask))

    alone = placed(0, 0)
    for before, after in [(3, 0), (11, 0), (0, 19), (0, 32 - visible % 32), (7, 9)]:
        assert np.array_equal(placed(before, after), alone), (before, after)


@vectorised
def test_attention_reads_slices_and_transposes_where_they_lie():
    rng = np.random.default_rng(1)
    cache = rng.standard_normal((2, 4, 64, 32)).astype(np.float32)  # 40 of 64 positions written
    q = rng.standard_normal((2, 8, 1, 32)).astype(np.float32)
    got = PRIMITIVES.attention(mx.array(q), mx.array(cache)[:, :, :40], mx.array(cache)[:, :, 24:], 0.2)
    assert np.allclose(np.array(got), attention_in_float64(q, cache[:, :, :40], cache[:, :, 24:], 0.2, None),
                       rtol=1e-5, atol=2e-6)
    transposed = rng.standard_normal((2, 4, 32, 40)).astype(np.float32)
    got = PRIMITIVES.attention(mx.array(q), mx.array(transposed).swapaxes(2, 3),
                                        mx.array(transposed).swapaxes(2, 3), 0.2)
    expected = attention_in_float64(q, transposed.swapaxes(2, 3), transposed.swapaxes(2, 3), 0.2, None)
    assert np.allclose(np.array(got), expected, rtol=1e-5, atol=2e-6)


@vectorised
def test_attention_compiled_and_on_another_stream_gives_the_same_values():
    q, k, v, mask = (mx.array(a) for a in attention_problem(2, 4, 2, 3, 7, 16, "padding", seed=2))
    eager = PRIMITIVES.attention(q, k, v, 0.3, mask=mask)
    compiled = mx.compile(lambda q, k, v, m: PRIMITIVES.attention(q * 1.0, k, v, 0.3, mask=m))(q, k, v, mask)
    with mx.stream(mx.new_stream(mx.cpu)):
        other_stream = PRIMITIVES.attention(q, k, v, 0.3, mask=mask)
    assert mx.array_equal(compiled, eager).item() and mx.array_equal(other_stream, eager).item()


@vectorised
def test_attention_gradients_match_finite_differences_in_float64():
    q, k, v, mask = attention_problem(1, 2, 1, 2, 4, 8, "padding", seed=3)
    weights = np.random.default_rng(4).standard_normal((1, 2, 2, 8))

    def loss(q, k, v):
        return (attention_in_float64(q, k, v, 0.3, mask) * weights).sum()

    grads = mx.grad(lambda q, k, v: (PRIMITIVES.attention(q, k, v, 0.3, mask=mx.array(mask))
                                     * mx.array(weights.astype(np.float32))).sum(),
                    argnums=(0, 1, 2))(mx.array(q), mx.array(k), mx.array(v))
    inputs = [q.astype(np.float64), k.astype(np.float64), v.astype(np.float64)]
    for which, grad in enumerate(grads):
        numeric = np.zeros_like(inputs[which])
        for index in np.ndindex(*numeric.shape):
            step = [x.copy() for x in inputs], [x.copy() for x in inputs]
            step[0][which][index] += 1e-5
            step[1][which][index] -= 1e-5
            numeric[index] = (loss(*step[0]) - loss(*step[1])) / 2e-5
        assert np.allclose(np.array(grad), numeric, rtol=1e-3, atol=1e-4)


@vectorised
def test_attention_keeps_a_nan_where_it_came_from():
    q, k, v, mask = attention_problem(1, 4, 2, 3, 16, 16, "padding", seed=6)  # 16 keys: no plain tail
    q[0, 1, 2, 5] = np.nan  # one query row of one head
    got = np.array(call_attention(q, k, v, 0.3, mask))
    assert np.isnan(got[0, 1, 2]).all()
    got[0, 1, 2] = 0.0
    expected = attention_in_float64(np.nan_to_num(q), k, v, 0.3, mask)
    expected[0, 1, 2] = 0.0
    assert np.allclose(got, expected, rtol=1e-5, atol=2e-6)


@vectorised
@pytest.mark.parametrize("mask", ["none", "causal", "padding"])
def test_attention_as_rows_is_its_output_by_head_laid_out_by_position(mask):
    q, k, v, mask = attention_problem(2, 4, 2, 3, 7, 16, mask, seed=8)
    by_head = np.array(call_attention(q, k, v, 0.3, mask))
    if mask is None or isinstance(mask, str):
        rows = PRIMITIVES.attention(mx.array(q), mx.array(k), mx.array(v), 0.3, mask_mode=mask or "", as_rows=True)
    else:
        rows = PRIMITIVES.attention(mx.array(q), mx.array(k), mx.array(v), 0.3, mask=mx.array(mask), as_rows=True)
    assert rows.shape == (2, 3, 4 * 16)
    assert np.array_equal(np.array(rows), by_head.transpose(0, 2, 1, 3).reshape(2, 3, 4 * 16))


@vectorised
def test_attention_as_rows_has_the_gradients_of_mlx_attention_laid_out_by_position():
    q, k, v, mask = (mx.array(a) for a in attention_problem(1, 4, 2, 2, 5, 8, "padding", seed=9))

    def theirs(q, k, v):
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask)
        return out.transpose(0, 2, 1, 3).reshape(1, 2, 4 * 8)

    assert_same_gradients(lambda q, k, v: PRIMITIVES.attention(q, k, v, 0.3, mask=mask, as_rows=True), theirs,
                          (q, k, v), mx.array(random((1, 2, 4 * 8), 10)), rtol=1e-4, atol=1e-5)


@needs_products
@vectorised
@pytest.mark.parametrize("batch, heads, kv_heads, length, keys, mask", [
    (1, 16, 8, 1, 100, "padding"),   # a decode step of the 440M shape
    (1, 4, 2, 1, 9, "none"),         # too little work to share
    (3, 6, 3, 4, 40, "causal"),      # groups that do not halve evenly
    (32, 16, 8, 1, 57, "positions"),
])
def test_attention_shared_with_the_kernels_threads_gives_the_same_numbers(batch, heads, kv_heads, length, keys, mask):
    q, k, v, mask = attention_problem(batch, heads, kv_heads, length, keys, 64, mask, seed=keys)
    q, k, v = mx.array(q), mx.array(k), mx.array(v)
    options = {"mask": mx.array(mask)} if isinstance(mask, np.ndarray) else {"mask_mode": mask or ""}
    alone = PRIMITIVES.attention(q, k, v, 0.2, **options)
    shared = PRIMITIVES.attention(q, k, v, 0.2, parallel=PRODUCTS.parallel_address, **options)
    assert mx.array_equal(shared, alone).item()


@vectorised
def test_the_kernels_hand_float32_attention_to_the_primitive():
    kernels = CPUKernels(Settings())
    calls = []
    kernels.primitives = counting(kernels.primitives, calls)
    q, k, v, mask = (mx.array(a) for a in attention_problem(2, 4, 2, 3, 7, 16, "padding", seed=7))
    assert mx.array_equal(kernels.attention(q, k, v, None, 0.3, mask),
                          PRIMITIVES.attention(q, k, v, 0.3, mask=mask, as_rows=True)).item()
    assert mx.array_equal(kernels.attention(q, k, v, None, 0.3, "causal"),
                          PRIMITIVES.attention(q, k, v, 0.3, mask_mode="causal", as_rows=True)).item()
    assert calls == [("attention", None)] * 2
    # with the skinny-product kernel's threads to share the heads, where it is loaded
    options = []
    kernels.primitives = SimpleNamespace(attention=lambda *args, **kwargs: options.append(kwargs))
    kernels.attention(q, k, v, None, 0.3, mask)
    assert options[0]["parallel"] == (kernels.products.parallel_address if kernels.products else 0)
    if kernels.products is not None and kernels.products.kernel is not None:
        assert options[0]["parallel"] != 0


@vectorised
def test_attention_it_does_not_take_goes_to_mlx():
    kernels = CPUKernels(Settings())
    q, k, v = (mx.array(a) for a in attention_problem(1, 4, 2, 2, 5, 16, "none", seed=5)[:3])
    more_queries_than_keys = mx.array(np.ones((1, 4, 6, 16), dtype=np.float32))
    with pytest.raises(ValueError):
        PRIMITIVES.attention(more_queries_than_keys, k, v, 0.3)
    for mask in (mx.ones((2, 4), mx.bool_), mx.ones((1, 1, 1, 2, 5), mx.bool_)):  # 4 keys, not 5; five dimensions
        with pytest.raises(ValueError, match="broadcasts"):
            PRIMITIVES.attention(q, k, v, 0.3, mask=mask)
    # the primitive refuses it, and the kernels pass it on
    assert mx.array_equal(kernels.attention(more_queries_than_keys, k, v, None, 0.3, None),
                          MLX.attention(more_queries_than_keys, k, v, None, 0.3, None)).item()

    kernels.primitives = SimpleNamespace(attention=not_to_be_called)
    half = [a.astype(mx.bfloat16) for a in (q, k, v)]
    assert mx.array_equal(kernels.attention(*half, None, 0.3, None), MLX.attention(*half, None, 0.3, None)).item()
    integer_mask = mx.array([[1, 0, 1, 1, 1], [1, 1, 0, 1, 1]])
    assert mx.array_equal(kernels.attention(q, k, v, None, 0.3, integer_mask),
                          MLX.attention(q, k, v, None, 0.3, integer_mask)).item()
    quantized_cache = SimpleNamespace(bits=8, group_size=64)
    with pytest.raises(Exception) as raised:  # mlx-lm's quantized path, which these plain keys do not fit
        kernels.attention(q, k, v, quantized_cache, 0.3, None)
    assert not isinstance(raised.value, AssertionError), raised.value
