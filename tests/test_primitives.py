"""nextterm-mlx's MLX primitives, SwiGLU and attention: built on x86-64 Linux and
used by a loaded model, close to the same functions computed in float64 by
numpy, the same under mx.compile and on any stream, differentiable, and out
of the way for inputs they do not take. The reference parity with them
switched off is in test_blas.py."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.activations import swiglu as mlx_lm_swiglu
from mlx_lm.models.base import scaled_dot_product_attention as mlx_lm_attention

import nextterm_mlx
from conftest import FIXTURES
from nextterm_mlx import primitives

needs_primitives = pytest.mark.skipif(primitives.compiled is None, reason=primitives.why)


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


def test_the_primitives_are_built_on_linux_and_can_be_disabled():
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("built on x86-64 Linux only")
    assert primitives.compiled is not None, primitives.why
    assert primitives.compiled.built_against == mx.__version__
    done = subprocess.run([sys.executable, "-c", "import nextterm_mlx.primitives as p; print(p.why)"],
                          capture_output=True, text=True, env={**os.environ, "NEXTTERM_MLX_PRIMITIVES": "0"})
    assert done.stdout.strip() == "disabled (NEXTTERM_MLX_PRIMITIVES=0)", done.stderr


@needs_primitives
def test_a_loaded_model_goes_through_the_primitives(monkeypatch):
    model = nextterm_mlx.load(FIXTURES / "untied-v4", dtype="float32").model
    assert primitives.installed()
    calls = []

    def counted(name):
        function = getattr(primitives.compiled, name)

        def call(*args, **kwargs):
            calls.append(name)
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(primitives, "compiled", SimpleNamespace(swiglu=counted("swiglu"), attention=counted("attention")))
    mx.eval(model(mx.array([[3, 4, 5, 11, 6]])))
    assert sorted(calls) == ["attention"] * len(model.layers) + ["swiglu"] * len(model.layers)


@needs_primitives
@pytest.mark.parametrize("shape", [(1, 3072), (8, 3072), (3, 5, 7), (13,), (2, 1, 17)])
def test_swiglu_of_random_gates_is_within_4_ulps(shape):
    gate, x = random(shape, 1, scale=8.0), random(shape, 2)
    assert_close_to_float64(primitives.compiled.swiglu(mx.array(gate), mx.array(x)), gate, x)


@needs_primitives
def test_swiglu_over_every_range_of_the_exp_is_within_4_ulps():
    gate = np.linspace(-100, 100, 400_003, dtype=np.float32)  # each interval of the range reduction, many times
    x = np.ones_like(gate)
    assert_close_to_float64(primitives.compiled.swiglu(mx.array(gate), mx.array(x)), gate, x)


@needs_primitives
def test_swiglu_of_special_values():
    special = [0.0, -0.0, 1e-30, -1e-30, 200.0, -200.0, np.inf, -np.inf, np.nan]
    gate = mx.array(special * 2)  # the first 16 through the vectorised loop, the last 2 through the plain one
    got = primitives.compiled.swiglu(gate, mx.ones_like(gate)).tolist()
    for at in (0, 9):
        value = got[at:at + 9]
        assert np.allclose(value[:4], [0.0, 0.0, 5e-31, -5e-31], rtol=1e-6, atol=0)
        assert value[4] == 200.0 and value[5] == 0.0 and value[6] == np.inf and value[7] == 0.0
        assert np.isnan(value[8])


@needs_primitives
def test_swiglu_reads_strided_inputs_as_their_values():
    gate, x = random((6, 40), 3, scale=4.0), random((40, 6), 4)
    got = primitives.compiled.swiglu(mx.array(gate)[:, ::2], mx.array(x).T[:, 1::2])
    assert_close_to_float64(got, gate[:, ::2], x.T[:, 1::2])


@needs_primitives
def test_swiglu_compiled_and_on_another_stream_gives_the_same_values():
    gate, x = mx.array(random((4, 100), 5, scale=5.0)), mx.array(random((4, 100), 6))
    eager = primitives.compiled.swiglu(gate, x)
    compiled = mx.compile(lambda g, x: primitives.compiled.swiglu(g * 1.0, x) + 0.0)(gate, x)
    with mx.stream(mx.new_stream(mx.cpu)):
        other_stream = primitives.compiled.swiglu(gate, x)
    assert mx.array_equal(compiled, eager).item() and mx.array_equal(other_stream, eager).item()


@needs_primitives
def test_swiglu_gradients_match_mlx_lm_swiglu():
    gate, x = mx.array(random((3, 50), 7, scale=4.0)), mx.array(random((3, 50), 8))
    weights = mx.array(random((3, 50), 9))

    def loss(swiglu):
        return lambda g, x: (swiglu(g, x) * weights).sum()

    ours = mx.grad(loss(primitives.compiled.swiglu), argnums=(0, 1))(gate, x)
    theirs = mx.grad(loss(mlx_lm_swiglu), argnums=(0, 1))(gate, x)
    for a, b in zip(ours, theirs):
        assert mx.allclose(a, b, rtol=1e-5, atol=1e-6).item()


@needs_primitives
def test_inputs_it_does_not_take_go_to_mlx_lm_swiglu(monkeypatch):
    monkeypatch.setattr(primitives, "compiled", None)  # a call to it would fail
    swiglu = primitives.vectorised_swiglu(mlx_lm_swiglu)
    half = mx.array(random((2, 24), 10)).astype(mx.bfloat16)
    assert mx.array_equal(swiglu(half, half), mlx_lm_swiglu(half, half)).item()
    column, row = mx.array(random((4, 1), 11)), mx.array(random((4, 3), 12))
    assert mx.array_equal(swiglu(column, row), mlx_lm_swiglu(column, row)).item()


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
        return primitives.compiled.attention(mx.array(q), mx.array(k), mx.array(v), scale, mask_mode=mask or "")
    return primitives.compiled.attention(mx.array(q), mx.array(k), mx.array(v), scale, mask=mx.array(mask))


@needs_primitives
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


@needs_primitives
def test_attention_reads_slices_and_transposes_where_they_lie():
    rng = np.random.default_rng(1)
    cache = rng.standard_normal((2, 4, 64, 32)).astype(np.float32)  # 40 of 64 positions written
    q = rng.standard_normal((2, 8, 1, 32)).astype(np.float32)
    got = primitives.compiled.attention(mx.array(q), mx.array(cache)[:, :, :40], mx.array(cache)[:, :, 24:], 0.2)
    assert np.allclose(np.array(got), attention_in_float64(q, cache[:, :, :40], cache[:, :, 24:], 0.2, None),
                       rtol=1e-5, atol=2e-6)
    transposed = rng.standard_normal((2, 4, 32, 40)).astype(np.float32)
    got = primitives.compiled.attention(mx.array(q), mx.array(transposed).swapaxes(2, 3),
                                        mx.array(transposed).swapaxes(2, 3), 0.2)
    expected = attention_in_float64(q, transposed.swapaxes(2, 3), transposed.swapaxes(2, 3), 0.2, None)
    assert np.allclose(np.array(got), expected, rtol=1e-5, atol=2e-6)


@needs_primitives
def test_attention_compiled_and_on_another_stream_gives_the_same_values():
    q, k, v, mask = (mx.array(a) for a in attention_problem(2, 4, 2, 3, 7, 16, "padding", seed=2))
    eager = primitives.compiled.attention(q, k, v, 0.3, mask=mask)
    compiled = mx.compile(lambda q, k, v, m: primitives.compiled.attention(q * 1.0, k, v, 0.3, mask=m))(q, k, v, mask)
    with mx.stream(mx.new_stream(mx.cpu)):
        other_stream = primitives.compiled.attention(q, k, v, 0.3, mask=mask)
    assert mx.array_equal(compiled, eager).item() and mx.array_equal(other_stream, eager).item()


@needs_primitives
def test_attention_gradients_match_finite_differences_in_float64():
    q, k, v, mask = attention_problem(1, 2, 1, 2, 4, 8, "padding", seed=3)
    weights = np.random.default_rng(4).standard_normal((1, 2, 2, 8))

    def loss(q, k, v):
        return (attention_in_float64(q, k, v, 0.3, mask) * weights).sum()

    grads = mx.grad(lambda q, k, v: (primitives.compiled.attention(q, k, v, 0.3, mask=mx.array(mask))
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


@needs_primitives
def test_attention_keeps_a_nan_where_it_came_from():
    q, k, v, mask = attention_problem(1, 4, 2, 3, 16, 16, "padding", seed=6)  # 16 keys: no plain tail
    q[0, 1, 2, 5] = np.nan  # one query row of one head
    got = np.array(call_attention(q, k, v, 0.3, mask))
    assert np.isnan(got[0, 1, 2]).all()
    got[0, 1, 2] = 0.0
    expected = attention_in_float64(np.nan_to_num(q), k, v, 0.3, mask)
    expected[0, 1, 2] = 0.0
    assert np.allclose(got, expected, rtol=1e-5, atol=2e-6)


@needs_primitives
def test_attention_it_does_not_take_goes_to_mlx_lm(monkeypatch):
    q, k, v = (mx.array(a) for a in attention_problem(1, 4, 2, 2, 5, 16, "none", seed=5)[:3])
    more_queries_than_keys = mx.array(np.ones((1, 4, 6, 16), dtype=np.float32))
    attention = primitives.one_pass_attention(mlx_lm_attention)
    # the primitive refuses it, and the wrapper passes it on
    assert mx.array_equal(attention(more_queries_than_keys, k, v, cache=None, scale=0.3, mask=None),
                          mlx_lm_attention(more_queries_than_keys, k, v, cache=None, scale=0.3, mask=None)).item()

    def not_to_be_called(*args, **kwargs):
        raise AssertionError("the primitive was called")

    monkeypatch.setattr(primitives, "compiled", SimpleNamespace(attention=not_to_be_called))
    half = [a.astype(mx.bfloat16) for a in (q, k, v)]
    assert mx.array_equal(attention(*half, cache=None, scale=0.3, mask=None),
                          mlx_lm_attention(*half, cache=None, scale=0.3, mask=None)).item()
    sinks = mx.zeros((4,))
    assert mx.array_equal(attention(q, k, v, cache=None, scale=0.3, mask=None, sinks=sinks),
                          mlx_lm_attention(q, k, v, cache=None, scale=0.3, mask=None, sinks=sinks)).item()
    integer_mask = mx.array([[1, 0, 1, 1, 1], [1, 1, 0, 1, 1]])
    assert mx.array_equal(attention(q, k, v, cache=None, scale=0.3, mask=integer_mask),
                          mlx_lm_attention(q, k, v, cache=None, scale=0.3, mask=integer_mask)).item()
    quantized_cache = SimpleNamespace(bits=8, group_size=64)
    with pytest.raises(Exception) as raised:  # mlx-lm's quantized path, which these plain keys do not fit
        attention(q, k, v, cache=quantized_cache, scale=0.3, mask=None)
    assert not isinstance(raised.value, AssertionError), raised.value
