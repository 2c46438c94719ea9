"""The halved SwiGLU and attention (nextterm_mlx/cpu/two_streams.py) give
exactly what MLX's whole operations give, and a model gives the same logits
with and without them."""

from __future__ import annotations

from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import BatchKVCache

import nextterm_mlx
from conftest import FIXTURES
from nextterm_mlx.cpu import two_streams
from nextterm_mlx.cpu.kernels import CPUKernels
from nextterm_mlx.settings import Settings
from nextterm_mlx.model import Kernels
from nextterm_mlx.vocab import PAD

# MLX's own SwiGLU and attention, as the model's default Kernels compute them.
MLX = Kernels()


def counted(function):
    """`function`, and the list of the argument shapes of each call to it."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(tuple(a.shape for a in args if isinstance(a, mx.array)))
        return function(*args, **kwargs)

    return wrapper, calls


def random(shape, seed):
    return mx.array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


@pytest.mark.parametrize("shape", [(2, 9, 48), (17, 1, 40), (1, 16, 24)])
def test_halved_swiglu_is_swiglu_on_two_halves(shape):
    gate, x = random(shape, 1), random(shape, 2)
    inner, calls = counted(MLX.swiglu)
    out = two_streams.halved_swiglu(inner, gate, x)
    assert out.shape == gate.shape
    assert mx.array_equal(out, MLX.swiglu(gate, x)).item()
    rows = shape[0] * shape[1]
    assert calls == [((rows // 2, shape[2]),) * 2, ((rows - rows // 2, shape[2]),) * 2]


def test_few_rows_are_not_split():
    swiglu, calls = counted(MLX.swiglu)
    gate, x = random((3, 5, 8), 1), random((3, 5, 8), 2)
    assert mx.array_equal(two_streams.halved_swiglu(swiglu, gate, x), MLX.swiglu(gate, x)).item()
    attention, attention_calls = counted(MLX.attention)
    queries, keys, values = random((1, 4, 15, 8), 3), random((1, 2, 15, 8), 4), random((1, 2, 15, 8), 5)
    out = two_streams.halved_attention(attention, queries, keys, values, None, 0.3, "causal")
    assert mx.array_equal(out, MLX.attention(queries, keys, values, None, 0.3, "causal")).item()
    assert len(calls) == 1 and len(attention_calls) == 1


def test_swiglu_of_broadcast_shapes_is_not_split():
    swiglu, calls = counted(MLX.swiglu)
    gate, x = random((32, 1), 1), random((32, 8), 2)
    assert mx.array_equal(two_streams.halved_swiglu(swiglu, gate, x), MLX.swiglu(gate, x)).item()
    assert len(calls) == 1


def by_position(output: mx.array) -> mx.array:
    """Attention's output by head, (B, H, L, D), as the kernels give it: (B, L, H * D)."""
    batch, heads, length, dim = output.shape
    return output.transpose(0, 2, 1, 3).reshape(batch, length, heads * dim)


def padding_mask(batch, length, keys):
    """Each row's first (row % 3) keys masked out, as left padding is."""
    columns = np.arange(keys)[None, None, None, :]
    first = (np.arange(batch) % 3)[:, None, None, None]
    return mx.array(np.broadcast_to(columns >= first, (batch, 1, length, keys)))


@pytest.mark.parametrize("batch, length, keys, heads, kv_heads, mask", [
    (16, 1, 11, 8, 4, "padding"),   # a decode step of 16 sequences
    (2, 9, 9, 4, 2, "causal"),      # a prefill
    (4, 5, 12, 6, 2, "padding"),    # three query heads per key head
    (16, 1, 7, 4, 4, None),         # no grouping
])
def test_halved_attention_is_attention_on_two_halves_of_the_heads(batch, length, keys, heads, kv_heads, mask):
    queries = random((batch, heads, length, 16), 1)
    key_states, values = random((batch, kv_heads, keys, 16), 2), random((batch, kv_heads, keys, 16), 3)
    if mask == "padding":
        mask = padding_mask(batch, length, keys)
    whole = mx.fast.scaled_dot_product_attention(queries, key_states, values, scale=0.25, mask=mask)
    attention, calls = counted(MLX.attention)
    out = two_streams.halved_attention(attention, queries, key_states, values, None, 0.25, mask)
    assert mx.array_equal(out, by_position(whole)).item()
    half = (batch, heads // 2, length, 16), (batch, kv_heads // 2, keys, 16), (batch, kv_heads // 2, keys, 16)
    assert [c[:3] for c in calls] == [half, half]


def test_odd_key_heads_are_not_split():
    attention, calls = counted(MLX.attention)
    queries, keys = random((16, 3, 1, 8), 1), random((16, 1, 5, 8), 2)
    out = two_streams.halved_attention(attention, queries, keys, keys, None, 0.3, None)
    assert len(calls) == 1
    assert mx.array_equal(out, by_position(mx.fast.scaled_dot_product_attention(queries, keys, keys, scale=0.3))).item()


def test_a_mask_per_head_is_not_split():
    attention, calls = counted(MLX.attention)
    queries, keys = random((16, 4, 1, 8), 1), random((16, 2, 5, 8), 2)
    mask = random((16, 4, 1, 5), 3)  # added scores, one row per query head: no half of it fits both halves
    out = two_streams.halved_attention(attention, queries, keys, keys, None, 0.3, mask)
    assert len(calls) == 1
    whole = mx.fast.scaled_dot_product_attention(queries, keys, keys, scale=0.3, mask=mask)
    assert mx.array_equal(out, by_position(whole)).item()


def test_a_quantized_cache_is_not_split():
    """mlx-lm's quantized attention takes the cache's packed keys whole."""
    def attention(queries, keys, values, cache, scale, mask):
        return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask)

    attention, calls = counted(attention)
    queries, keys = random((16, 4, 1, 8), 1), random((16, 2, 5, 8), 2)
    two_streams.halved_attention(attention, queries, keys, keys, SimpleNamespace(bits=8, group_size=64), 0.3, None)
    assert len(calls) == 1


def batch_forward(model):
    """The logits of a prefill and a decode step of 16 left-padded sequences."""
    prompts = [[3 + (i * j) % 10 for j in range(4 + i % 5)] for i in range(16)]
    longest = max(map(len, prompts))
    padding = [longest - len(p) for p in prompts]
    cache = [BatchKVCache(padding) for _ in model.layers]
    first = model(mx.array([[PAD] * pad + p for pad, p in zip(padding, prompts)]), cache=cache)
    step = model(mx.argmax(first[:, -1:], axis=-1), cache=cache)
    mx.eval(first, step)
    return first, step


def counting_halves(halved, splits: list):
    """`halved`, recording how many parts each call computed."""
    def wrapper(operation, *args):
        inner, calls = counted(operation)
        out = halved(inner, *args)
        splits.append(len(calls))
        return out

    return wrapper


def test_a_model_computes_the_same_logits_with_and_without_the_halves(monkeypatch):
    model = nextterm_mlx.load(FIXTURES / "untied-v4", dtype="float32").model
    swiglu_splits, attention_splits = [], []
    monkeypatch.setattr(two_streams, "halved_swiglu", counting_halves(two_streams.halved_swiglu, swiglu_splits))
    monkeypatch.setattr(two_streams, "halved_attention",
                        counting_halves(two_streams.halved_attention, attention_splits))
    # Without the primitives, SwiGLU and attention are all MLX's: whole, or halved.
    model.kernels = CPUKernels(Settings(primitives=False, two_streams=False))
    whole = batch_forward(model)
    assert swiglu_splits == attention_splits == []
    model.kernels = CPUKernels(Settings(primitives=False))
    with_halves = batch_forward(model)
    # every layer's SwiGLU and attention, in the prefill and the step, each in two halves
    assert swiglu_splits == [2] * 2 * len(model.layers)
    assert attention_splits == [2] * 2 * len(model.layers)
    for a, b in zip(with_halves, whole):
        assert mx.array_equal(a, b).item()
