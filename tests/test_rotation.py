"""The rotation computed once a step gives exactly what mx.fast.rope gives."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import nextterm_mlx
from conftest import FIXTURES, greedy_steps
from nextterm_mlx import static_cache
from nextterm_mlx.rotation import TabledRoPE, rotation_shared_by_layers, shareable


@pytest.fixture(autouse=True)
def on_cpu():
    """The rotation is shared only where the step runs on the CPU."""
    device = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(device)


def layers_with(rope: nn.RoPE, head_dim: int, dtype: mx.Dtype, count: int = 3):
    """What rotation_shared_by_layers reads of a model: its layers' RoPE,
    its head size and its compute type."""
    layers = [SimpleNamespace(self_attn=SimpleNamespace(rope=rope)) for _ in range(count)]
    return SimpleNamespace(layers=layers, args=SimpleNamespace(head_dim=head_dim),
                           model=SimpleNamespace(embed_tokens=SimpleNamespace(weight=mx.zeros((1,), dtype))))


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
@pytest.mark.parametrize("dims, base", [(16, 10000.0), (128, 1000000.0)])
@pytest.mark.parametrize("position", [0, 7, 300, 5000])
@pytest.mark.parametrize("length", [1, 3])
def test_shared_rotation_is_bit_for_bit_mlx_rope(dtype, dims, base, position, length):
    rope = nn.RoPE(dims, base=base)
    model = layers_with(rope, dims, dtype)
    x = mx.array(np.random.default_rng(dims + position).standard_normal((1, 4, length, dims)), dtype)
    offset = mx.array(position)
    expected = mx.fast.rope(x, dims, traditional=False, base=base, scale=1.0, offset=offset)
    with rotation_shared_by_layers(model, offset, length):
        shared = model.layers[0].self_attn.rope
        assert isinstance(shared, TabledRoPE)
        assert all(layer.self_attn.rope is shared for layer in model.layers)
        rotated = shared(x, offset=offset)
    assert rotated.dtype == expected.dtype
    assert mx.array_equal(rotated, expected).item()
    assert all(layer.self_attn.rope is rope for layer in model.layers)


def test_ropes_it_cannot_reproduce_are_left_alone():
    for rope, head_dim in [(nn.RoPE(16, traditional=True), 16), (nn.RoPE(8), 16)]:
        model = layers_with(rope, head_dim, mx.float32)
        with rotation_shared_by_layers(model, mx.array(3), 1):
            assert model.layers[0].self_attn.rope is rope


def logprobs_and_caches(decoder, prompt, steps):
    """Log-probabilities of `steps` greedy steps, and the caches after them."""
    logprobs = greedy_steps(decoder, prompt, steps)[1][1:]
    return logprobs, [np.array(buffer) for buffer in decoder.buffers]


def test_compiled_step_is_bit_for_bit_the_step_with_mlx_rope(monkeypatch):
    predictor = nextterm_mlx.load(FIXTURES / "untied-v4", dtype="float32")
    prompt = predictor.prompt([3, 1, 4, 1, 5, 9, 2, 6])
    assert shareable(predictor.model)
    ropes = [layer.self_attn.rope for layer in predictor.model.layers]
    shared = logprobs_and_caches(static_cache.StaticDecoder(predictor.model), prompt, 12)
    assert all(layer.self_attn.rope is rope for layer, rope in zip(predictor.model.layers, ropes))

    monkeypatch.setattr(static_cache, "rotation_shared_by_layers", lambda *_: contextlib.nullcontext())
    own = logprobs_and_caches(static_cache.StaticDecoder(predictor.model), prompt, 12)
    assert shared[0] == own[0]
    assert all(np.array_equal(a, b) for a, b in zip(shared[1], own[1]))
