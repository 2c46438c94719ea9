"""The OpenBLAS preload and the skinny-product kernel: reported by `info`,
switched off by NEXTTERM_MLX_BLAS=0 and NEXTTERM_MLX_SKINNY=0, products checked
against numpy in float64, and the reference parity holds on every path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from nextterm_mlx import blas
from nextterm_mlx.blas import OPENBLAS_CANDIDATES

HAS_OPENBLAS = sys.platform == "linux" and any(os.path.exists(p) for p in OPENBLAS_CANDIDATES)
needs_kernel = pytest.mark.skipif(blas.skinny_kernel is None, reason="the skinny-product kernel is not loaded")
MAX_ROWS = blas.skinny_kernel.nextterm_skinny_max_rows() if blas.skinny_kernel is not None else 0

DESCRIBE = "import nextterm_mlx.blas as b, mlx.core; print(b.describe())"


def python(code: str, **env) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_openblas_is_loaded_when_present_and_can_be_disabled():
    assert python(DESCRIBE, NEXTTERM_MLX_BLAS="0").startswith("bundled reference BLAS (NEXTTERM_MLX_BLAS=0)")
    if HAS_OPENBLAS:
        assert python(DESCRIBE).startswith("OpenBLAS (")


def test_importing_mlx_first_is_reported():
    if not HAS_OPENBLAS:
        pytest.skip("no system OpenBLAS to load")
    described = python("import mlx.core, nextterm_mlx.blas as b; print(b.describe())")
    assert "mlx.core was imported before nextterm_mlx" in described


def test_the_skinny_kernel_is_loaded_with_openblas_and_can_be_disabled():
    if not HAS_OPENBLAS:
        pytest.skip("no system OpenBLAS to load")
    assert blas.skinny_kernel is not None, blas.describe()
    assert f"products of up to {MAX_ROWS} rows by nextterm-mlx's kernel" in blas.describe()
    bare = python(DESCRIBE, NEXTTERM_MLX_READ_AHEAD="0", NEXTTERM_MLX_AVX512="0")
    assert bare.endswith(f"{MAX_ROWS} rows by nextterm-mlx's kernel")
    assert "through its GEMM (NEXTTERM_MLX_SKINNY=0)" in python(DESCRIBE, NEXTTERM_MLX_SKINNY="0")


def test_without_a_built_kernel_openblas_still_serves_and_says_how_to_get_it():
    if not HAS_OPENBLAS:
        pytest.skip("no system OpenBLAS to load")
    described = python(
        "import importlib.util as util\n"
        "find_spec = util.find_spec\n"
        "util.find_spec = lambda name, *rest: None if name == 'nextterm_mlx._skinny' else find_spec(name, *rest)\n"
        "import nextterm_mlx.blas as b, mlx.core as mx\n"
        "assert b.skinny_kernel is None\n"
        "print(mx.matmul(mx.ones((1, 4)), mx.ones((4, 3))).tolist())\n"
        "print(b.describe())"
    )
    assert described.splitlines()[0] == "[[4.0, 4.0, 4.0]]"
    assert "the skinny-product kernel was not built: reinstall nextterm-mlx where a C compiler is present" in described


def kernel_calls() -> int:
    return blas.skinny_kernel.nextterm_skinny_calls()


def vector_calls() -> int:
    """Products the library computed itself as one small vector times a matrix."""
    return blas.skinny_kernel.nextterm_skinny_vector_calls()


def gemv_calls() -> int:
    """Products the library handed to OpenBLAS's sgemv."""
    return blas.skinny_kernel.nextterm_skinny_gemv_calls()


def random_array(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def linear(rows: int, depth: int, outputs: int, seed: int):
    """A Linear layer's product: rows of activations times a transposed (outputs, depth) weight."""
    return random_array((rows, depth), seed), random_array((outputs, depth), seed + 1).T


# (a, b) of products with few rows or one column, in each layout MLX hands to BLAS.
# The Linear shapes cover odd row counts, a depth that is not a multiple of
# the 8- and 16-float vectors and outputs that are not a multiple of the 4- and
# 6-row blocks; the larger ones are split between threads.
PRODUCTS = {
    "decode's Linear, one row": lambda: linear(1, 300, 70, 0),
    "three rows, ragged depth and outputs": lambda: linear(3, 301, 71, 2),
    "eight rows (verifying drafted tokens)": lambda: linear(8, 1024, 2048, 4),
    "sixteen rows, threaded": lambda: linear(16, 777, 1029, 6),
    "two rows, ragged depth and outputs": lambda: linear(2, 1043, 1027, 28),
    "four rows, shallower than one vector": lambda: linear(4, 12, 70, 32),
    "a batch of 32 sequences, the whole depth in one pass": lambda: linear(32, 1027, 515, 26),
    "as many rows as the kernel takes, threaded": lambda: linear(MAX_ROWS, 515, 1030, 24),
    "one row, threaded, ragged (about the 440M shape's down projection)": lambda: linear(1, 3071, 1027, 8),
    "batch of single rows": lambda: (random_array((3, 1, 300), 10), random_array((3, 70, 300), 11).transpose(0, 2, 1)),
    "row times matrix": lambda: (random_array((1, 300), 12), random_array((300, 70), 13)),
    "transposed column times matrix": lambda: (random_array((300, 1), 14).T, random_array((300, 70), 15)),
    "matrix times column": lambda: (random_array((70, 300), 16), random_array((300, 1), 17)),
    "transposed matrix times column": lambda: (random_array((300, 70), 18).T, random_array((300, 1), 19)),
    "matrix times transposed row": lambda: (random_array((70, 300), 20), random_array((1, 300), 21).T),
}


@needs_kernel
@pytest.mark.parametrize("product", PRODUCTS)
def test_skinny_products_go_through_the_kernel_and_match_numpy(product):
    a, b = PRODUCTS[product]()
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    before, gemv_before = kernel_calls(), gemv_calls()
    got = mx.matmul(mx.array(a), mx.array(b))
    mx.eval(got)
    assert kernel_calls() > before
    assert gemv_calls() == gemv_before
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-5, atol=1e-4)


READ_AHEADS = (
    "import nextterm_mlx.blas as b, mlx.core as mx\n"
    "pairs = [(mx.ones((1, 512)), mx.ones((512, 512))) for _ in range(2)]\n"
    "for _ in range(3):\n"
    "    for a, w in pairs:\n"
    "        mx.eval(mx.matmul(a, w.T))\n"
    "print(b.skinny_kernel.nextterm_skinny_read_aheads())"
)


@needs_kernel
def test_the_worker_reads_ahead_the_product_that_came_next_the_last_time_unless_told_not_to():
    if not blas.skinny_kernel.nextterm_skinny_read_ahead_bytes():
        pytest.skip("the kernel runs on one thread: no worker to read ahead")
    assert "next weights read ahead, " in blas.describe()
    # Two threaded products in turn: from the second round on, each one's
    # successor is known, so the worker fetches it ahead.
    assert int(python(READ_AHEADS)) >= 4
    assert int(python(READ_AHEADS, NEXTTERM_MLX_READ_AHEAD="0")) == 0


@needs_kernel
def test_several_rows_take_the_avx512_kernel_where_the_cpu_has_it_unless_told_not_to():
    if not blas.skinny_kernel.nextterm_skinny_avx512():
        pytest.skip("this CPU has no AVX-512 (or NEXTTERM_MLX_AVX512=0)")
    assert "(AVX-512 for several rows" in blas.describe()
    assert "AVX-512" not in python(DESCRIBE, NEXTTERM_MLX_AVX512="0")
    # The products above once more, on the AVX2 kernel.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_blas.py",
         "-k", "skinny_products_go_through_the_kernel or addmm_scales"],
        capture_output=True, text=True, cwd=Path(__file__).parents[1], env={**os.environ, "NEXTTERM_MLX_AVX512": "0"},
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert f"{len(PRODUCTS) + 3} passed" in done.stdout


# (a, b, where it is computed) of one vector times a matrix, in each layout
# MLX hands to BLAS: up to 65,536 multiply-adds the library computes them
# "here", on the calling thread (decoding a batch: each head's query times its
# cached keys, then its attention weights times its cached values); a larger
# Linear layer's product (the row times a transposed weight) goes to the
# "kernel", other larger ones to OpenBLAS's "sgemv".
VECTOR_PRODUCTS = {
    "query times cached keys": lambda: (random_array((1, 128), 70), random_array((83, 128), 71).T, "here"),
    "attention weights times cached values": lambda: (random_array((1, 83), 72), random_array((83, 128), 73), "here"),
    "a batch of heads": lambda: (random_array((4, 1, 128), 74), random_array((4, 37, 128), 75).transpose(0, 2, 1), "here"),
    "more columns than a block, ragged depth": lambda: (random_array((1, 61), 76), random_array((61, 1000), 77), "here"),
    "the largest computed here": lambda: (random_array((1, 512), 78), random_array((128, 512), 79).T, "here"),
    "one more, transposed, goes to the kernel": lambda: (random_array((1, 513), 80), random_array((128, 513), 81).T, "kernel"),
    "one more, untransposed, goes to sgemv": lambda: (random_array((1, 513), 88), random_array((513, 128), 89), "sgemv"),
    "matrix times column": lambda: (random_array((70, 300), 82), random_array((300, 1), 83), "here"),
    "transposed matrix times column": lambda: (random_array((300, 70), 84).T, random_array((300, 1), 85), "here"),
    "large matrix times column": lambda: (random_array((700, 300), 86), random_array((300, 1), 87), "sgemv"),
}


@needs_kernel
@pytest.mark.parametrize("product", VECTOR_PRODUCTS)
def test_vector_products_are_computed_where_their_size_and_layout_say_and_match_numpy(product):
    a, b, where = VECTOR_PRODUCTS[product]()
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    before, here_before, gemv_before = kernel_calls(), vector_calls(), gemv_calls()
    got = mx.matmul(mx.array(a), mx.array(b))
    mx.eval(got)
    assert kernel_calls() > before
    assert (vector_calls() > here_before) == (where == "here")
    assert (gemv_calls() > gemv_before) == (where == "sgemv")
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-5, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("rows, depth", [(1, 200), (1, 1000), (5, 200)])
def test_addmm_scales_both_terms_in_the_kernel(rows, depth):
    (a, b), c = linear(rows, depth, 90, 30), random_array((rows, 90), 32)
    before = kernel_calls()
    got = mx.addmm(mx.array(c), mx.array(a), mx.array(b), alpha=0.5, beta=2.0)
    mx.eval(got)
    assert kernel_calls() > before
    expected = 0.5 * a.astype(np.float64) @ b.astype(np.float64) + 2.0 * c
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-5, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("rows", [1, 5, 100])
def test_alpha_zero_reads_neither_factor(rows):
    (a, b), c = linear(rows, 64, 30, 60), random_array((rows, 30), 62)
    a[0, 3] = np.inf  # BLAS must not read a or b when alpha is 0: no inf * 0
    got = mx.addmm(mx.array(c), mx.array(a), mx.array(b), alpha=0.0, beta=0.5)
    np.testing.assert_allclose(np.array(got), 0.5 * c, rtol=1e-6)


@needs_kernel
@pytest.mark.parametrize("rows, outputs", [(1, 4096), (1, 64), (4, 4096)])
def test_a_recycled_buffer_full_of_nan_does_not_leak_into_the_product(rows, outputs):
    a, b = linear(rows, 128, outputs, 40)
    for _ in range(3):  # MLX hands a freed buffer of the same size to the next array
        poison = mx.full((rows, outputs), float("nan"))
        mx.eval(poison)
        del poison
        got = mx.matmul(mx.array(a), mx.array(b))
        mx.eval(got)
        assert np.isfinite(np.array(got)).all()


@needs_kernel
def test_products_with_many_rows_stay_with_openblas():
    before = kernel_calls()
    mx.eval(mx.matmul(*(mx.array(x) for x in linear(MAX_ROWS + 1, 300, 70, 50))))
    mx.eval(mx.matmul(mx.array(random_array((2, 300), 52)), mx.array(random_array((300, 2), 53))))
    assert kernel_calls() == before


@pytest.mark.parametrize("switches", [
    {"NEXTTERM_MLX_BLAS": "0"},
    {"NEXTTERM_MLX_SKINNY": "0"},
    {"NEXTTERM_MLX_AVX512": "0"},
    {"NEXTTERM_MLX_PRIMITIVES": "0"},  # MLX's SwiGLU and attention, halved over two streams
    {"NEXTTERM_MLX_PRIMITIVES": "0", "NEXTTERM_MLX_TWO_STREAMS": "0"},
], ids=["blas", "skinny", "avx512", "primitives", "primitives-and-two-streams"])
def test_reference_parity_holds_without_the_fast_paths(switches):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_reference_parity.py",
         "-k", "tokens_and_logits and eager and untied-v4"],
        capture_output=True, text=True, cwd=Path(__file__).parents[1], env={**os.environ, **switches},
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
