"""The products of the model's Linear layers on a Linux CPU (nextterm_mlx/cpu/blas.py):
OpenBLAS and the skinny-product kernel loaded privately and described for
`info`, switched off by the settings; the kernel's cblas_sgemm checked
against numpy in float64, through the Linear primitive for a Linear layer's
layout and called directly for the others, with its counters saying where
each product was computed; the reference parity on every path; and the
same path whichever of mlx.core and nextterm_mlx is imported first."""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import make_prompt_cache

import nextterm_mlx
from conftest import FIXTURES, reference
from nextterm_mlx import settings
from nextterm_mlx.cpu import blas
from nextterm_mlx.cpu.blas import OPENBLAS_CANDIDATES
from nextterm_mlx.cpu.kernels import CPUKernels, load_primitives
from nextterm_mlx.settings import Settings
from nextterm_mlx.decode import prefill
from test_reference_parity import LOGIT_ATOL, LOGPROB_ATOL

TESTS = Path(__file__).parent
HAS_OPENBLAS = sys.platform == "linux" and any(os.path.exists(p) for p in OPENBLAS_CANDIDATES)

# Every path on, with the kernel's read-ahead and AVX-512 choices of this
# process's environment: the kernel's worker pool takes them once per process
# (a subprocess below runs these checks again with NEXTTERM_MLX_AVX512=0).
SETTINGS = dataclasses.replace(settings.from_environment(), blas=True, skinny=True, primitives=True)
PRODUCTS, WHY_NO_PRODUCTS = blas.products(SETTINGS)
KERNEL = PRODUCTS.kernel if PRODUCTS is not None else None
PRIMITIVES, WHY_NO_PRIMITIVES = load_primitives()
MAX_ROWS = KERNEL.nextterm_skinny_max_rows() if KERNEL is not None else 64

needs_openblas = pytest.mark.skipif(not HAS_OPENBLAS, reason="no system OpenBLAS to load")
needs_kernel = pytest.mark.skipif(KERNEL is None, reason=f"the skinny-product kernel is not loaded: {WHY_NO_PRODUCTS}")
needs_kernel_and_primitives = pytest.mark.skipif(
    KERNEL is None or PRIMITIVES is None,
    reason=f"the skinny-product kernel or the Linear primitive is not loaded: {WHY_NO_PRODUCTS} {WHY_NO_PRIMITIVES}")


def python(code: str, **env) -> str:
    """What `code` prints in a fresh process, with SETTINGS's paths on and `env`'s switches."""
    on = {settings.VARIABLES[name]: "1" for name in ("blas", "skinny", "primitives")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=TESTS,
                          env={**os.environ, **on, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def openblas_sgemm_address() -> int:
    return blas.address_of(blas.load_openblas()[1].cblas_sgemm)


# --- what is loaded, and the switches ------------------------------------------------------

@pytest.mark.parametrize("name", [name for name in settings.VARIABLES if name != "device"])
def test_each_switch_is_read_from_its_variable(name, monkeypatch):
    for variable in settings.VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(settings.VARIABLES[name], "0")
    read = settings.from_environment.__wrapped__()  # not the process's cached settings
    assert read == dataclasses.replace(Settings(), **{name: False})


def test_openblas_is_used_when_present_and_can_be_switched_off():
    off = "MLX's bundled reference BLAS (NEXTTERM_MLX_BLAS=0)"
    assert blas.products(Settings(blas=False)) == (None, off)
    kernels = CPUKernels(Settings(blas=False))
    assert kernels.products is None and kernels.describe()["blas"] == off
    if HAS_OPENBLAS:
        assert PRODUCTS is not None, WHY_NO_PRODUCTS
        assert PRODUCTS.description.startswith("OpenBLAS (")
        assert blas.load_openblas()[0] in PRODUCTS.description
        if PRIMITIVES is not None:
            assert CPUKernels(SETTINGS).describe()["blas"] == PRODUCTS.description


@needs_openblas
def test_the_skinny_kernel_is_in_front_of_openblas_and_can_be_switched_off():
    assert KERNEL is not None, WHY_NO_PRODUCTS
    assert f"products of up to {MAX_ROWS} rows by nextterm-mlx's kernel" in PRODUCTS.description
    assert PRODUCTS.address == blas.address_of(KERNEL.cblas_sgemm)
    without, why = blas.products(Settings(skinny=False))
    assert why == "" and without.kernel is None
    assert without.address == openblas_sgemm_address() != PRODUCTS.address
    assert "every product through its GEMM (NEXTTERM_MLX_SKINNY=0)" in without.description


@needs_kernel
def test_without_read_ahead_and_avx512_the_kernel_is_described_bare():
    bare = python("from nextterm_mlx import settings\nfrom nextterm_mlx.cpu import blas\n"
                  "print(blas.products(settings.from_environment())[0].description)",
                  NEXTTERM_MLX_READ_AHEAD="0", NEXTTERM_MLX_AVX512="0")
    assert bare.endswith(f"products of up to {MAX_ROWS} rows by nextterm-mlx's kernel")


@needs_openblas
def test_without_a_built_kernel_openblas_still_serves_and_says_how_to_get_it(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "nextterm_mlx.cpu._skinny" else find_spec(name, *rest))
    monkeypatch.setattr(blas, "load_kernel", blas.load_kernel.__wrapped__)  # not the process's loaded kernel
    assert blas.load_kernel(blas.load_openblas()[0], True, True) is None
    products, why = blas.products(Settings())
    assert why == "" and products.kernel is None
    assert products.address == openblas_sgemm_address()
    assert ("every product through its GEMM (the skinny-product kernel was not built: reinstall nextterm-mlx "
            "where a C compiler is present)") in products.description
    if PRIMITIVES is not None:
        got = PRIMITIVES.linear(mx.ones((1, 4)), mx.ones((3, 4)), products.address)
        assert got.tolist() == [[4.0, 4.0, 4.0]]


def test_switching_off_swiglu_and_attention_keeps_the_products_on_openblas():
    if PRIMITIVES is None or not HAS_OPENBLAS:
        pytest.skip("needs the primitives and a system OpenBLAS")
    kernels = CPUKernels(Settings(primitives=False))
    assert kernels.products is not None and not kernels.vectorised
    assert kernels.describe()["blas"] == CPUKernels(Settings()).describe()["blas"]
    assert kernels.describe()["primitives"] == "MLX's (NEXTTERM_MLX_PRIMITIVES=0)"


# --- the kernel's products against numpy in float64 ---------------------------------------

def random_array(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


COUNTERS = ("calls", "vector_calls", "gemv_calls")

# Where a product is computed, by how much each counter moves: the kernel's
# Linear kernel; one vector times a small matrix "here", on the calling
# thread; OpenBLAS's sgemv; OpenBLAS's sgemm, which the kernel does not count.
WHERE = {"kernel": (1, 0, 0), "here": (1, 1, 0), "sgemv": (1, 0, 1), "openblas": (0, 0, 0)}


def counters() -> tuple[int, ...]:
    return tuple(getattr(KERNEL, f"nextterm_skinny_{name}")() for name in COUNTERS)


def moved_since(before: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(after - then for after, then in zip(counters(), before))


def in_float64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.matmul(a.astype(np.float64), b.astype(np.float64))


# A Linear layer's product (x @ weight.T), as the Linear primitive hands it
# to the kernel: (shape of x, outputs, where it is computed). The shapes cover
# odd row counts, a depth that is not a multiple of the 8- and 16-float
# vectors and outputs that are not a multiple of the 4- and 6-row blocks; the
# larger ones are split between threads. One row whose product takes up to
# 65,536 multiply-adds is computed "here", a larger one by the kernel; more
# than MAX_ROWS rows go on to OpenBLAS.
LINEAR_PRODUCTS = {
    "decode's Linear, one row, small enough to compute here": ((1, 300), 70, "here"),
    "query times cached keys": ((1, 128), 83, "here"),
    "the largest one-row product computed here": ((1, 512), 128, "here"),
    "one multiply-add more, to the kernel": ((1, 513), 128, "kernel"),
    "one row, threaded, ragged (about the 440M shape's down projection)": ((1, 3071), 1027, "kernel"),
    "three rows, ragged depth and outputs": ((3, 301), 71, "kernel"),
    "two rows, ragged depth and outputs": ((2, 1043), 1027, "kernel"),
    "four rows, shallower than one vector": ((4, 12), 70, "kernel"),
    "eight rows (verifying drafted tokens)": ((8, 1024), 2048, "kernel"),
    "sixteen rows, threaded": ((16, 777), 1029, "kernel"),
    "a batch of 32 sequences, the whole depth in one pass": ((32, 1027), 515, "kernel"),
    "as many rows as the kernel takes, threaded": ((MAX_ROWS, 515), 1030, "kernel"),
    "two sequences of three positions (the model's 3-D input)": ((2, 3, 301), 71, "kernel"),
    "one row more than the kernel takes, to OpenBLAS": ((MAX_ROWS + 1, 300), 70, "openblas"),
}


def check_linear_product(name: str) -> None:
    """x @ weight.T through the Linear primitive and the kernel's address:
    computed where the table says, and equal to numpy's in float64."""
    x_shape, outputs, where = LINEAR_PRODUCTS[name]
    seed = list(LINEAR_PRODUCTS).index(name) * 2
    x, weight = random_array(x_shape, seed), random_array((outputs, x_shape[-1]), seed + 1)
    before = counters()
    got = PRIMITIVES.linear(mx.array(x), mx.array(weight), PRODUCTS.address)
    mx.eval(got)
    assert moved_since(before) == WHERE[where], dict(zip(COUNTERS, moved_since(before)))
    assert got.shape == (*x_shape[:-1], outputs)
    np.testing.assert_allclose(np.array(got), in_float64(x, weight.T), rtol=1e-5, atol=1e-4)


@needs_kernel_and_primitives
@pytest.mark.parametrize("name", LINEAR_PRODUCTS)
def test_linear_products_are_computed_where_their_rows_and_size_say_and_match_numpy(name):
    check_linear_product(name)


def check_bf16_product(name: str) -> None:
    """x @ weight.T for a bfloat16 weight, through the Linear primitive and
    the kernel's bfloat16 product: computed where the float32 product of the
    widened weight is, and equal to it bit for bit."""
    x_shape, outputs, where = LINEAR_PRODUCTS[name]
    seed = list(LINEAR_PRODUCTS).index(name) * 2
    x = mx.array(random_array(x_shape, seed))
    weight = mx.array(random_array((outputs, x_shape[-1]), seed + 1)).astype(mx.bfloat16)
    widened = weight.astype(mx.float32)
    mx.eval(weight, widened)
    bf16_calls, before = KERNEL.nextterm_skinny_bf16_calls(), counters()
    got = PRIMITIVES.linear(x, weight, PRODUCTS.bf16_address)
    mx.eval(got)
    assert KERNEL.nextterm_skinny_bf16_calls() == bf16_calls + 1
    assert moved_since(before) == WHERE[where], dict(zip(COUNTERS, moved_since(before)))
    assert np.array_equal(np.array(got), np.array(PRIMITIVES.linear(x, widened, PRODUCTS.address)))


@needs_kernel_and_primitives
@pytest.mark.parametrize("name", LINEAR_PRODUCTS)
def test_bf16_weights_give_the_float32_products_of_their_widened_values(name):
    check_bf16_product(name)


def several_rows(shape: tuple[int, ...]) -> bool:
    rows = int(np.prod(shape[:-1]))
    return 1 < rows <= MAX_ROWS


@needs_kernel_and_primitives
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", [name for name, (shape, *_) in LINEAR_PRODUCTS.items() if several_rows(shape)])
def test_every_row_of_a_product_is_the_product_of_that_row_alone(name, dtype):
    """Bit for bit: a sequence then decodes in a batch exactly as it does
    alone, whether its one-row products are computed here or by the kernel."""
    x_shape, outputs, _ = LINEAR_PRODUCTS[name]
    seed = list(LINEAR_PRODUCTS).index(name) * 2
    x = mx.array(random_array(x_shape, seed)).reshape(-1, x_shape[-1])
    weight = mx.array(random_array((outputs, x_shape[-1]), seed + 1)).astype(getattr(mx, dtype))
    address = PRODUCTS.address if dtype == "float32" else PRODUCTS.bf16_address
    whole = np.array(PRIMITIVES.linear(x, weight, address))
    for row in range(x.shape[0]):
        alone = np.array(PRIMITIVES.linear(x[row : row + 1], weight, address))
        assert np.array_equal(whole[row : row + 1], alone), row


# An 8-bit Linear layer's product: (shape of x, outputs); depths are groups of 64.
Q8_PRODUCTS = {
    "one row, one group, ragged outputs": ((1, 64), 7),
    "one row, threaded (about the 440M shape's up projection)": ((1, 1024), 3072),
    "four rows, threaded": ((4, 3072), 1027),
    "three rows, groups past a multiple of sixteen": ((3, 1600), 130),
    "as many rows as the kernel takes": ((MAX_ROWS, 1024), 515),
    "more rows, dequantized for OpenBLAS": ((MAX_ROWS + 36, 1024), 512),
}


@needs_kernel_and_primitives
@pytest.mark.parametrize("name", Q8_PRODUCTS)
def test_8_bit_products_match_numpy_on_the_dequantized_weights(name):
    x_shape, outputs = Q8_PRODUCTS[name]
    seed = list(Q8_PRODUCTS).index(name) * 2
    x = random_array(x_shape, seed)
    weight, scales, biases = mx.quantize(mx.array(random_array((outputs, x_shape[-1]), seed + 1)), 64, 8)
    dequantized = np.array(mx.dequantize(weight, scales, biases, 64, 8))
    q8_calls = KERNEL.nextterm_skinny_q8_calls()
    got = PRIMITIVES.quantized_linear(mx.array(x), weight, scales, biases, PRODUCTS.q8_address)
    mx.eval(got)
    assert KERNEL.nextterm_skinny_q8_calls() == q8_calls + 1
    np.testing.assert_allclose(np.array(got), in_float64(x, dequantized.T), rtol=1e-5, atol=1e-3)
    if x_shape[0] <= MAX_ROWS:  # each row as alone, bit for bit
        for row in range(x_shape[0]):
            alone = PRIMITIVES.quantized_linear(mx.array(x[row : row + 1]), weight, scales, biases, PRODUCTS.q8_address)
            assert np.array_equal(np.array(got)[row : row + 1], np.array(alone)), row


# Several Linear layers of the same rows, as a layer's query, key and value
# projections, or its gate and up projections: (shape of x, each layer's
# outputs, whether the kernel takes every float32 or bfloat16 product, so
# that they are one job of its threads). It takes every 8-bit product of up
# to MAX_ROWS rows.
SEVERAL_PRODUCTS = {
    "one row, threaded (about the 440M shape's q, k and v)": ((1, 1024), (2048, 512, 512), True),
    "three rows, ragged outputs": ((3, 320), (71, 130, 65), True),
    "two sequences of three positions": ((2, 3, 128), (70, 33), True),
    "gate and up of a batch as large as the kernel takes": ((MAX_ROWS, 256), (515, 515), True),
    "one row, one product small enough to compute here": ((1, 256), (70, 1030), False),
    "more rows than the kernel takes, to OpenBLAS": ((MAX_ROWS + 3, 128), (70, 33), False),
}


@needs_kernel_and_primitives
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "8 bits"])
@pytest.mark.parametrize("name", SEVERAL_PRODUCTS)
def test_several_layers_give_each_layer_its_own_products_bit_for_bit(name, dtype):
    """Each output of the Linears primitive is the Linear primitive's for
    that layer alone, and near numpy's in float64; the products are one job
    of the kernel's threads when it takes every one of them."""
    x_shape, widths, kernel_takes_them = SEVERAL_PRODUCTS[name]
    seed = list(SEVERAL_PRODUCTS).index(name) * 4
    x = mx.array(random_array(x_shape, seed))
    dense = [mx.array(random_array((width, x_shape[-1]), seed + 1 + i)) for i, width in enumerate(widths)]
    jobs = KERNEL.nextterm_skinny_several_jobs()
    if dtype == "8 bits":
        layers = [mx.quantize(weight, 64, 8) for weight in dense]
        alone = [PRIMITIVES.quantized_linear(x, *layer, PRODUCTS.q8_address) for layer in layers]
        got = PRIMITIVES.quantized_linears(x, *map(list, zip(*layers)), PRODUCTS.several_address)
        as_float = [mx.dequantize(*layer, 64, 8) for layer in layers]
        one_job = int(np.prod(x_shape[:-1])) <= MAX_ROWS
    else:
        weights = [weight.astype(getattr(mx, dtype)) for weight in dense]
        address = PRODUCTS.address if dtype == "float32" else PRODUCTS.bf16_address
        alone = [PRIMITIVES.linear(x, weight, address) for weight in weights]
        got = PRIMITIVES.linears(x, weights, PRODUCTS.several_address)
        as_float = [weight.astype(mx.float32) for weight in weights]
        one_job = kernel_takes_them
    mx.eval(got)
    assert KERNEL.nextterm_skinny_several_jobs() == jobs + one_job
    assert len(got) == len(widths)
    for output, single, weight in zip(got, alone, as_float):
        assert output.shape == (*x_shape[:-1], weight.shape[0])
        assert np.array_equal(np.array(output), np.array(single))
        np.testing.assert_allclose(np.array(output), in_float64(np.array(x), np.array(weight).T), rtol=1e-5,
                                   atol=1e-3)


ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

SGEMM = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                         ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                         ctypes.c_float, ctypes.c_void_p, ctypes.c_int)


def layout(operand: np.ndarray) -> tuple[int, int]:
    """CBLAS's transposition flag and leading dimension for a 2-D float32
    operand, read from its strides as MLX reads an array's: rows of adjacent
    elements (C order) are passed as they lie, columns of adjacent elements
    (Fortran order: the transpose of a C-ordered matrix) transposed."""
    rows, cols = operand.shape
    row_stride, col_stride = (stride // operand.itemsize for stride in operand.strides)
    if col_stride == 1 and row_stride >= cols:
        return NO_TRANS, row_stride
    if row_stride == 1 and col_stride >= rows:
        return TRANS, col_stride
    raise ValueError(f"strides {operand.strides} are no BLAS layout")


def sgemm(address: int, a: np.ndarray, b: np.ndarray, c: np.ndarray = None, alpha: float = 1.0,
          beta: float = 0.0) -> np.ndarray:
    """alpha * a @ b + beta * c, by the cblas_sgemm at `address`, row-major."""
    (m, k), n = a.shape, b.shape[1]
    assert a.dtype == b.dtype == np.float32 and b.shape[0] == k
    out = np.zeros((m, n), np.float32) if c is None else np.array(c, dtype=np.float32, order="C")
    (trans_a, lda), (trans_b, ldb) = layout(a), layout(b)
    SGEMM(address)(ROW_MAJOR, trans_a, trans_b, m, n, k, alpha, a.ctypes.data, lda, b.ctypes.data, ldb, beta,
                   out.ctypes.data, n)
    return out


# (a, b, where it is computed) of the kernel's other layouts, and of a Linear
# layer's that the primitive never makes (a slice of a wider weight):
# one vector times a matrix of up to 65,536 multiply-adds is computed "here"
# (decoding a batch: each head's query times its cached keys, then its
# attention weights times its cached values), a larger one, or a strided
# vector, by OpenBLAS's sgemv; other products go to OpenBLAS's sgemm.
SGEMM_PRODUCTS = {
    "row times matrix": lambda: (random_array((1, 300), 12), random_array((300, 70), 13), "here"),
    "transposed column times matrix": lambda: (random_array((300, 1), 14).T, random_array((300, 70), 15), "here"),
    "matrix times column": lambda: (random_array((70, 300), 16), random_array((300, 1), 17), "here"),
    "transposed matrix times column": lambda: (random_array((300, 70), 18).T, random_array((300, 1), 19), "here"),
    "matrix times transposed row": lambda: (random_array((70, 300), 20), random_array((1, 300), 21).T, "here"),
    "attention weights times cached values": lambda: (random_array((1, 83), 72), random_array((83, 128), 73),
                                                      "here"),
    "more columns than a block, ragged depth": lambda: (random_array((1, 61), 76), random_array((61, 1000), 77),
                                                        "here"),
    "one multiply-add more than computed here, untransposed, to sgemv": lambda: (
        random_array((1, 513), 88), random_array((513, 128), 89), "sgemv"),
    "large matrix times column, to sgemv": lambda: (random_array((700, 300), 86), random_array((300, 1), 87),
                                                    "sgemv"),
    "every other element of a column, transposed, to sgemv": lambda: (
        random_array((300, 2), 90)[:, :1].T, random_array((300, 70), 91), "sgemv"),
    "three rows times a slice of a wider weight": lambda: (
        random_array((3, 301), 92), random_array((71, 400), 93)[:, :301].T, "kernel"),
    "two rows times two columns, to OpenBLAS": lambda: (random_array((2, 300), 52), random_array((300, 2), 53),
                                                        "openblas"),
}


def check_sgemm_product(name: str) -> None:
    a, b, where = SGEMM_PRODUCTS[name]()
    before = counters()
    got = sgemm(PRODUCTS.address, a, b)
    assert moved_since(before) == WHERE[where], dict(zip(COUNTERS, moved_since(before)))
    np.testing.assert_allclose(got, in_float64(a, b), rtol=1e-5, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("name", SGEMM_PRODUCTS)
def test_other_layouts_are_computed_where_their_size_and_layout_say_and_match_numpy(name):
    check_sgemm_product(name)


def linear_layout(rows: int, depth: int, outputs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A Linear layer's operands: rows of activations and a transposed (outputs, depth) weight."""
    return random_array((rows, depth), seed), random_array((outputs, depth), seed + 1).T


ADDMM = [(1, 200, "here"), (1, 1000, "kernel"), (5, 200, "kernel")]


def check_addmm(rows: int, depth: int, where: str) -> None:
    (a, b), c = linear_layout(rows, depth, 90, 30), random_array((rows, 90), 32)
    before = counters()
    got = sgemm(PRODUCTS.address, a, b, c, alpha=0.5, beta=2.0)
    assert moved_since(before) == WHERE[where]
    np.testing.assert_allclose(got, 0.5 * in_float64(a, b) + 2.0 * c.astype(np.float64), rtol=1e-5, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("rows, depth, where", ADDMM)
def test_alpha_and_beta_scale_both_terms(rows, depth, where):
    check_addmm(rows, depth, where)


ALPHA_ZERO = [(1, 0.5), (5, 0.5), (100, 0.5), (1, 0.0), (5, 0.0), (100, 0.0)]


def check_alpha_zero(rows: int, beta: float) -> None:
    """BLAS reads neither factor when alpha is 0 (no inf * 0), nor, when beta
    is 0 too, the output (a NaN there must not survive)."""
    a, b = linear_layout(rows, 64, 30, 60)
    a[0, 3] = np.inf
    c = random_array((rows, 30), 62) if beta else np.full((rows, 30), np.nan, np.float32)
    got = sgemm(PRODUCTS.address, a, b, c, alpha=0.0, beta=beta)
    np.testing.assert_array_equal(got, beta * c if beta else np.zeros_like(c))


@needs_kernel
@pytest.mark.parametrize("rows, beta", ALPHA_ZERO)
def test_alpha_zero_reads_neither_factor(rows, beta):
    check_alpha_zero(rows, beta)


# (a, b) whose product overwrites an output full of NaN (beta 0): MLX hands
# the Linear primitive an uninitialised buffer, often one just freed.
NAN_OUTPUTS = {
    "one row, the kernel": lambda: linear_layout(1, 128, 4096, 40),
    "one row, computed here": lambda: linear_layout(1, 128, 64, 42),
    "four rows, the kernel": lambda: linear_layout(4, 128, 4096, 44),
    "many rows, OpenBLAS": lambda: linear_layout(100, 128, 300, 46),
    "one row untransposed, sgemv": lambda: (random_array((1, 513), 48), random_array((513, 128), 49)),
    "matrix times column, sgemv": lambda: (random_array((700, 300), 50), random_array((300, 1), 51)),
}


def check_nan_output(name: str) -> None:
    a, b = NAN_OUTPUTS[name]()
    got = sgemm(PRODUCTS.address, a, b, np.full((a.shape[0], b.shape[1]), np.nan, np.float32), beta=0.0)
    np.testing.assert_allclose(got, in_float64(a, b), rtol=1e-5, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("name", NAN_OUTPUTS)
def test_an_output_full_of_nan_does_not_leak_into_the_product(name):
    check_nan_output(name)


@needs_kernel_and_primitives
@pytest.mark.parametrize("through", ["kernel", "openblas"])
@pytest.mark.parametrize("rows, outputs", [(1, 4096), (1, 64), (4, 4096), (100, 300)])
def test_a_recycled_buffer_full_of_nan_does_not_leak_into_the_linear_product(rows, outputs, through):
    address = PRODUCTS.address if through == "kernel" else openblas_sgemm_address()
    x, weight = random_array((rows, 128), 40), random_array((outputs, 128), 41)
    for _ in range(3):  # MLX hands a freed buffer of the same size to the next array
        poison = mx.full((rows, outputs), float("nan"))
        mx.eval(poison)
        del poison
        got = PRIMITIVES.linear(mx.array(x), mx.array(weight), address)
        mx.eval(got)
        np.testing.assert_allclose(np.array(got), in_float64(x, weight.T), rtol=1e-5, atol=1e-4)


@needs_openblas
@pytest.mark.skipif(PRIMITIVES is None, reason=f"the Linear primitive is not loaded: {WHY_NO_PRIMITIVES}")
@pytest.mark.parametrize("rows", [1, 5, MAX_ROWS + 1])
def test_without_the_kernel_every_product_goes_to_openblas_and_matches_numpy(rows):
    products, _ = blas.products(Settings(skinny=False))
    x, weight = random_array((rows, 513), 54), random_array((129, 513), 55)
    before = counters() if KERNEL is not None else None
    got = PRIMITIVES.linear(mx.array(x), mx.array(weight), products.address)
    mx.eval(got)
    if KERNEL is not None:
        assert moved_since(before) == WHERE["openblas"]
    np.testing.assert_allclose(np.array(got), in_float64(x, weight.T), rtol=1e-5, atol=1e-4)


def check_every_product() -> int:
    """Every check above, once each: what the subprocess on the AVX2 kernel runs."""
    checks = ([(check_linear_product, (name,)) for name in LINEAR_PRODUCTS]
              + [(check_bf16_product, (name,)) for name in LINEAR_PRODUCTS]
              + [(check_sgemm_product, (name,)) for name in SGEMM_PRODUCTS]
              + [(check_addmm, case) for case in ADDMM] + [(check_alpha_zero, case) for case in ALPHA_ZERO]
              + [(check_nan_output, (name,)) for name in NAN_OUTPUTS])
    for check, arguments in checks:
        check(*arguments)
    return len(checks)


READ_AHEADS = (
    "import mlx.core as mx\n"
    "from nextterm_mlx import settings\nfrom nextterm_mlx.cpu import blas\n"
    "from nextterm_mlx.cpu.kernels import load_primitives\n"
    "products = blas.products(settings.from_environment())[0]\n"
    "primitives = load_primitives()[0]\n"
    "pairs = [(mx.ones((1, 512)), mx.ones((512, 512))) for _ in range(2)]\n"
    "for _ in range(3):\n"
    "    for x, weight in pairs:\n"
    "        mx.eval(primitives.linear(x, weight, products.address))\n"
    "print(products.kernel.nextterm_skinny_read_aheads())"
)


@needs_kernel_and_primitives
def test_the_worker_reads_ahead_the_product_that_came_next_the_last_time_unless_told_not_to():
    if not KERNEL.nextterm_skinny_read_ahead_bytes():
        pytest.skip("the kernel runs on one thread (or NEXTTERM_MLX_READ_AHEAD=0): no worker to read ahead")
    assert "next weights read ahead, " in PRODUCTS.description
    # Two threaded products in turn: from the second round on, each one's
    # successor is known, so the worker fetches it ahead.
    assert int(python(READ_AHEADS)) >= 4
    assert int(python(READ_AHEADS, NEXTTERM_MLX_READ_AHEAD="0")) == 0


PARTS = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_int)


@needs_kernel
def test_the_kernels_threads_run_every_part_of_a_task_once():
    """nextterm_skinny_parallel, as attention calls it: part i of n for every
    i, each once, on n different threads when the pool has n."""
    import threading

    for _ in range(3):  # with the workers asleep and awake
        seen = []

        def part(context, index, parts):
            seen.append((index, parts, threading.get_ident()))

        KERNEL.nextterm_skinny_parallel(PARTS(part), None)
        parts = seen[0][1]
        assert sorted(index for index, _, _ in seen) == list(range(parts))
        assert all(n == parts for _, n, _ in seen)
        assert len({thread for _, _, thread in seen}) == parts


ON_THE_AVX2_KERNEL = (
    "import test_blas\n"
    "assert test_blas.KERNEL is not None and not test_blas.KERNEL.nextterm_skinny_avx512()\n"
    "assert 'AVX-512' not in test_blas.PRODUCTS.description, test_blas.PRODUCTS.description\n"
    "print(test_blas.check_every_product())"
)


@needs_kernel_and_primitives
def test_several_rows_take_the_avx512_kernel_where_the_cpu_has_it_unless_told_not_to():
    if not KERNEL.nextterm_skinny_avx512():
        pytest.skip("this CPU has no AVX-512 (or NEXTTERM_MLX_AVX512=0)")
    assert "(AVX-512 for several rows" in PRODUCTS.description
    # The products above once more, on the AVX2 kernel.
    checked = python(ON_THE_AVX2_KERNEL, NEXTTERM_MLX_AVX512="0")
    assert int(checked) == (2 * len(LINEAR_PRODUCTS) + len(SGEMM_PRODUCTS) + len(ADDMM) + len(ALPHA_ZERO)
                            + len(NAN_OUTPUTS))


# --- the model on every path ---------------------------------------------------------------

def assert_reference_parity(predictor) -> None:
    """Eager greedy decoding of every untied-v4 case gives the transformers
    reference's tokens, and its log-probabilities and prompt logits within
    test_reference_parity.py's tolerances."""
    predictor.static_decoder = None  # the eager loop, as batches decode
    for case in reference("untied-v4")["cases"]:
        predictor.max_new_tokens = case["max_new_tokens"]
        predictions = predictor.continue_sequence(case["terms"], case["continue"])
        assert [p.tokens for p in predictions] == case["generated"], case["terms"]
        np.testing.assert_allclose([p.logprob for p in predictions], case["logprobs"], atol=LOGPROB_ATOL)
        logits = np.array(prefill(predictor.model, mx.array([case["prompt"]]), make_prompt_cache(predictor.model))[0])
        np.testing.assert_allclose(logits, case["logits"], atol=LOGIT_ATOL, rtol=0)


# The settings, and what the model's kernels then lack.
WITHOUT = {
    "blas": (Settings(blas=False), lambda kernels: kernels.products is None),
    "skinny": (Settings(skinny=False), lambda kernels: kernels.products is None or kernels.products.kernel is None),
    "primitives": (Settings(primitives=False), lambda kernels: not kernels.vectorised and kernels.halves),
    "primitives-and-two-streams": (Settings(primitives=False, two_streams=False),
                                   lambda kernels: not kernels.vectorised and not kernels.halves),
}


@pytest.mark.parametrize("without", WITHOUT)
def test_reference_parity_holds_without_the_fast_paths(without):
    switches, switched = WITHOUT[without]
    predictor = nextterm_mlx.load(FIXTURES / "untied-v4", dtype="float32")
    predictor.model.kernels = CPUKernels(switches)
    assert switched(predictor.model.kernels), predictor.model.kernels.describe()
    assert_reference_parity(predictor)


@needs_kernel
def test_reference_parity_holds_on_the_avx2_kernel(tmp_path):
    checked = python(
        "import nextterm_mlx, test_blas\n"
        "predictor = nextterm_mlx.load(test_blas.FIXTURES / 'untied-v4', dtype='float32')\n"
        "assert not predictor.model.kernels.products.kernel.nextterm_skinny_avx512()\n"
        "test_blas.assert_reference_parity(predictor)\n"
        "print('parity')",
        NEXTTERM_MLX_AVX512="0", NEXTTERM_MLX_CACHE=str(tmp_path))
    assert checked.endswith("parity")


PREDICT_ONCE = """
import ctypes, json
predictor = nextterm_mlx.load("tiny")
predictor.predict([1, 1, 2, 3, 5, 8])
process = ctypes.CDLL(None)
print(json.dumps({
    "calls": predictor.model.kernels.products.kernel.nextterm_skinny_calls(),
    "blas": predictor.info()["blas"],
    "global": [name for name in ("nextterm_skinny_calls", "openblas_get_num_threads") if hasattr(process, name)],
}))
"""


@needs_kernel_and_primitives
def test_the_products_take_the_same_path_whichever_is_imported_first(tmp_path):
    """Neither OpenBLAS nor the kernel enters the process's global symbol
    scope, so that MLX resolves nothing to them: the model reaches them
    through the Linear primitive, whatever was imported first."""
    runs = {first: json.loads(python(imports + PREDICT_ONCE, NEXTTERM_MLX_CACHE=str(tmp_path / "cache")))
            for first, imports in {"mlx.core": "import mlx.core\nimport nextterm_mlx\n",
                                   "nextterm_mlx": "import nextterm_mlx\nimport mlx.core\n"}.items()}
    for run in runs.values():
        assert run["blas"] == PRODUCTS.description
        assert run["calls"] > 0
        assert run["global"] == []
