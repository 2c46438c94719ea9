"""The vectorised SwiGLU primitive: built on Linux and used by a loaded model,
within a few float32 ulps of SiLU computed in float64 by numpy, the same
under mx.compile and on any stream, differentiable, and out of the way for
inputs it does not take. The reference parity with it switched off is in
test_blas.py."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.activations import swiglu as mlx_lm_swiglu

import nextterm_mlx
from conftest import FIXTURES
from nextterm_mlx import activation

needs_primitive = pytest.mark.skipif(activation.primitive is None, reason=activation.why)


def random(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def assert_close_to_float64(got: mx.array, gate: np.ndarray, x: np.ndarray, ulps: float = 4):
    g = gate.astype(np.float64)
    exact = g / (1 + np.exp(-g)) * x.astype(np.float64)
    # Values under 1e-30 (SiLU of a gate below -70) count as 0.
    allowed = ulps * np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64) + 1e-30
    error = np.abs(np.array(got).astype(np.float64) - exact)
    worst = np.argmax(error - allowed)
    assert (error <= allowed).all(), f"gate {g.flat[worst]}: got {np.array(got).flat[worst]}, exact {exact.flat[worst]}"


def test_the_primitive_is_built_on_linux_and_can_be_disabled():
    if sys.platform != "linux":
        pytest.skip("built on Linux only")
    assert activation.primitive is not None, activation.why
    assert activation.primitive.built_against == mx.__version__
    done = subprocess.run([sys.executable, "-c", "import nextterm_mlx.activation as a; print(a.why)"],
                          capture_output=True, text=True, env={**os.environ, "NEXTTERM_MLX_SWIGLU": "0"})
    assert done.stdout.strip() == "disabled (NEXTTERM_MLX_SWIGLU=0)", done.stderr


@needs_primitive
def test_a_loaded_model_goes_through_the_primitive(monkeypatch):
    model = nextterm_mlx.load(FIXTURES / "untied-v4", dtype="float32").model
    assert activation.installed()
    calls = []

    def counted(gate, x):
        calls.append(gate.shape)
        return swiglu(gate, x)

    swiglu = activation.primitive.swiglu
    monkeypatch.setattr(activation, "primitive", SimpleNamespace(swiglu=counted))
    mx.eval(model(mx.array([[3, 4, 5, 11, 6]])))
    assert len(calls) == len(model.layers)


@needs_primitive
@pytest.mark.parametrize("shape", [(1, 3072), (8, 3072), (3, 5, 7), (13,), (2, 1, 17)])
def test_random_gates_are_within_4_ulps(shape):
    gate, x = random(shape, 1, scale=8.0), random(shape, 2)
    assert_close_to_float64(activation.primitive.swiglu(mx.array(gate), mx.array(x)), gate, x)


@needs_primitive
def test_every_range_of_the_exp_is_within_4_ulps():
    gate = np.linspace(-100, 100, 400_003, dtype=np.float32)  # each interval of the range reduction, many times
    x = np.ones_like(gate)
    assert_close_to_float64(activation.primitive.swiglu(mx.array(gate), mx.array(x)), gate, x)


@needs_primitive
def test_special_values():
    gate = mx.array([0.0, -0.0, 1e-30, -1e-30, 200.0, -200.0, np.inf, -np.inf, np.nan])
    got = activation.primitive.swiglu(gate, mx.ones_like(gate)).tolist()
    assert np.allclose(got[:4], [0.0, 0.0, 5e-31, -5e-31], rtol=1e-6, atol=0)
    assert got[4] == 200.0 and got[5] == 0.0 and got[6] == np.inf and got[7] == 0.0
    assert np.isnan(got[8])


@needs_primitive
def test_strided_inputs_are_read_as_their_values():
    gate, x = random((6, 40), 3, scale=4.0), random((40, 6), 4)
    got = activation.primitive.swiglu(mx.array(gate)[:, ::2], mx.array(x).T[:, 1::2])
    assert_close_to_float64(got, gate[:, ::2], x.T[:, 1::2])


@needs_primitive
def test_compiled_and_on_another_stream_it_gives_the_same_values():
    gate, x = mx.array(random((4, 100), 5, scale=5.0)), mx.array(random((4, 100), 6))
    eager = activation.primitive.swiglu(gate, x)
    compiled = mx.compile(lambda g, x: activation.primitive.swiglu(g * 1.0, x) + 0.0)(gate, x)
    with mx.stream(mx.new_stream(mx.cpu)):
        other_stream = activation.primitive.swiglu(gate, x)
    assert mx.array_equal(compiled, eager).item() and mx.array_equal(other_stream, eager).item()


@needs_primitive
def test_gradients_match_mlx_lm_swiglu():
    gate, x = mx.array(random((3, 50), 7, scale=4.0)), mx.array(random((3, 50), 8))
    weights = mx.array(random((3, 50), 9))

    def loss(swiglu):
        return lambda g, x: (swiglu(g, x) * weights).sum()

    ours = mx.grad(loss(activation.primitive.swiglu), argnums=(0, 1))(gate, x)
    theirs = mx.grad(loss(mlx_lm_swiglu), argnums=(0, 1))(gate, x)
    for a, b in zip(ours, theirs):
        assert mx.allclose(a, b, rtol=1e-5, atol=1e-6).item()


@needs_primitive
def test_inputs_it_does_not_take_go_to_mlx_lm_swiglu(monkeypatch):
    monkeypatch.setattr(activation, "primitive", None)  # a call to it would fail
    swiglu = activation.vectorised_swiglu(mlx_lm_swiglu)
    half = mx.array(random((2, 24), 10)).astype(mx.bfloat16)
    assert mx.array_equal(swiglu(half, half), mlx_lm_swiglu(half, half)).item()
    column, row = mx.array(random((4, 1), 11)), mx.array(random((4, 3), 12))
    assert mx.array_equal(swiglu(column, row), mlx_lm_swiglu(column, row)).item()
