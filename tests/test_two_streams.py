"""The halved SwiGLU and attention give exactly what MLX's whole operations give."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import nextterm_mlx
from conftest import FIXTURES
from mlx_lm.models import qwen3
from mlx_lm.models.activations import swiglu
from mlx_lm.models.base import scaled_dot_product_attention
from mlx_lm.models.cache import BatchKVCache

from nextterm_mlx import two_streams
from nextterm_mlx.vocab import PAD


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
    inner, calls = counted(swiglu)
    out = two_streams.halved_swiglu(inner)(gate, x)
    assert mx.array_equal(out, swiglu(gate, x)).item()
    rows = shape[0] * shape[1]
    assert calls == [((rows // 2, shape[2]),) * 2, ((rows - rows // 2, shape[2]),) * 2]


def test_few_rows_are_not_split():
    inner, calls = counted(swiglu)
    two_streams.halved_swiglu(inner)(random((3, 5, 8), 1), random((3, 5, 8), 2))
    attention, attention_calls = counted(scaled_dot_product_attention)
    queries = random((1, 4, 15, 8), 3)
    two_streams.halved_attention(attention)(queries, random((1, 2, 15, 8), 4), random((1, 2, 15, 8), 5),
                                            cache=None, scale=0.3, mask="causal")
    assert len(calls) == 1 and len(attention_calls) == 1


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
    attention, calls = counted(scaled_dot_product_attention)
    out = two_streams.halved_attention(attention)(queries, key_states, values, cache=None, scale=0.25, mask=mask)
    assert mx.array_equal(out, whole).item()
    half = (batch, heads // 2, length, 16), (batch, kv_heads // 2, keys, 16), (batch, kv_heads // 2, keys, 16)
    assert [c[:3] for c in calls] == [half, half]


def test_odd_key_heads_are_not_split():
    attention, calls = counted(scaled_dot_product_attention)
    queries, keys = random((16, 3, 1, 8), 1), random((16, 1, 5, 8), 2)
    out = two_streams.halved_attention(attention)(queries, keys, keys, cache=None, scale=0.3, mask=None)
    assert len(calls) == 1
    assert mx.array_equal(out, mx.fast.scaled_dot_product_attention(queries, keys, keys, scale=0.3)).item()


def batch_forward(model):
    """The logits of a prefill and a decode step of 16 left-padded sequences."""
    prompts = [[3 + (i * j) % 10 for j in range(4 + i % 5)] for i in range(16)]
    longest = max(map(len, prompts))
    padding = [longest - len(p) for p in prompts]
    cache = [BatchKVCache(padding) for _ in model.layers]
    first = model(mx.array([[PAD] * pad + p for pad, p in zip(padding, prompts)]), cache=cache)
    step = model(mx.argmax(first[:, -1:], axis=-1), cache=cache)
    return first, step


def test_a_model_computes_the_same_logits_with_and_without_the_halves(monkeypatch):
    model = nextterm_mlx.load(FIXTURES / "untied-v4", dtype="float32").model
    assert two_streams.installed()  # behind the primitives, if they are built: what they do not take
    # mlx-lm's own functions, whatever load() put in their place
    monkeypatch.setattr(qwen3, "swiglu", swiglu)
    monkeypatch.setattr(qwen3, "scaled_dot_product_attention", scaled_dot_product_attention)
    whole = batch_forward(model)
    counted_swiglu, calls = counted(two_streams.halved_swiglu(swiglu))
    monkeypatch.setattr(qwen3, "swiglu", counted_swiglu)
    monkeypatch.setattr(qwen3, "scaled_dot_product_attention", two_streams.halved_attention(scaled_dot_product_attention))
    with_halves = batch_forward(model)
    assert calls  # the model went through the halved functions
    for a, b in zip(with_halves, whole):
        assert mx.array_equal(a, b).item()
