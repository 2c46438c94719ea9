"""The rotation computed as tables once a forward pass (rotation_from_tables in
nextterm_mlx/cpu/kernels.py) gives exactly what MLX's RoPE gives."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.models.rope_utils import initialize_rope

import nextterm_mlx
from conftest import FIXTURES, greedy_steps
from nextterm_mlx import static_cache
from nextterm_mlx.cpu import kernels as cpu_kernels
from nextterm_mlx.cpu.kernels import CPUKernels, rotation_from_tables
from nextterm_mlx.settings import Settings
from nextterm_mlx.model import Kernels


@pytest.fixture(autouse=True)
def on_cpu():
    """The rotation comes from tables only where the model runs on the CPU."""
    device = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(device)


@pytest.mark.parametrize("offset_type", [int, mx.array])  # a KV cache's offset, or a static cache's position
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
@pytest.mark.parametrize("dims, base", [(16, 10000.0), (128, 1000000.0)])
@pytest.mark.parametrize("position", [0, 7, 300, 5000])
@pytest.mark.parametrize("length", [1, 3])
def test_rotation_from_tables_is_bit_for_bit_mlx_rope(dtype, dims, base, position, length, offset_type):
    rope = nn.RoPE(dims, base=base)
    x = mx.array(np.random.default_rng(dims + position).standard_normal((1, 4, length, dims)), dtype)
    offset = offset_type(position)
    expected = mx.fast.rope(x, dims, traditional=False, base=base, scale=1.0, offset=offset)
    rotate = rotation_from_tables(rope, offset, length, dtype)
    for rotated in (rotate(x), rotate(x[:, :2])):  # one table for every layer, and any number of heads
        assert rotated.dtype == expected.dtype
        assert mx.array_equal(rotated, expected[:, :rotated.shape[1]]).item()
    assert mx.array_equal(CPUKernels(Settings()).rotation(rope, offset, length, dtype)(x), expected).item()


def not_from_tables(*args):
    raise AssertionError("rotated from tables")


@pytest.mark.parametrize("case", ["traditional", "per-sequence offsets", "scaled (Llama 3)"])
def test_ropes_it_cannot_reproduce_are_left_to_themselves(case, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "rotation_from_tables", not_from_tables)
    x = mx.array(np.random.default_rng(1).standard_normal((3, 4, 2, 16)), mx.float32)
    rope, offset = nn.RoPE(16), mx.array(5)
    if case == "traditional":
        rope = nn.RoPE(16, traditional=True)
    elif case == "per-sequence offsets":  # a batch's KV cache
        offset = mx.array([2, 0, 7])
    else:
        rope = initialize_rope(16, 10000.0, False, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0,
                                                    "original_max_position_embeddings": 64}, 2048)
        assert type(rope) is not nn.RoPE
    rotated = CPUKernels(Settings()).rotation(rope, offset, 2, mx.float32)(x)
    assert mx.array_equal(rotated, rope(x, offset=offset)).item()


def test_a_rope_over_part_of_the_head_is_left_to_itself():
    rope, x = nn.RoPE(8), mx.array(np.random.default_rng(2).standard_normal((1, 4, 2, 16)), mx.float32)
    rotated = CPUKernels(Settings()).rotation(rope, mx.array(9), 2, mx.float32)(x)
    assert mx.array_equal(rotated, rope(x, offset=mx.array(9))).item()


def logprobs_and_caches(decoder, prompt, steps):
    """Log-probabilities of `steps` greedy steps, and the caches after them."""
    logprobs = greedy_steps(decoder, prompt, steps)[1][1:]
    return logprobs, [np.array(buffer) for buffer in decoder.buffers]


class RotatingWithMLXRoPE(CPUKernels):
    """The Linux-CPU kernels, but the rotation MLX's RoPE applied in each layer."""

    rotation = Kernels.rotation


def test_compiled_step_is_bit_for_bit_the_step_with_mlx_rope(monkeypatch):
    predictor = nextterm_mlx.load(FIXTURES / "untied-v4", dtype="float32")
    prompt = predictor.prompt([3, 1, 4, 1, 5, 9, 2, 6])
    tables = []

    def counted(*args):
        tables.append(args[1:3])
        return rotation_from_tables(*args)

    monkeypatch.setattr(cpu_kernels, "rotation_from_tables", counted)
    predictor.model.kernels = CPUKernels(Settings())
    from_tables = logprobs_and_caches(static_cache.StaticDecoder(predictor.model), prompt, 12)
    # the prefill's and the compiled step's, at the positions the static cache holds as an array
    assert {length for _, length in tables} == {len(prompt), 1}
    assert all(isinstance(offset, mx.array) for offset, _ in tables)

    predictor.model.kernels = RotatingWithMLXRoPE(Settings())
    calls = len(tables)
    own = logprobs_and_caches(static_cache.StaticDecoder(predictor.model), prompt, 12)
    assert len(tables) == calls
    assert from_tables[0] == own[0]
    assert all(np.array_equal(a, b) for a, b in zip(from_tables[1], own[1]))
