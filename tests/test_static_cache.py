"""The compiled step's KV buffers follow each sequence's length, and what it
computes depends neither on their capacity nor on what earlier sequences
left in them."""

from __future__ import annotations

import pytest

import nextterm_mlx
from conftest import FIXTURES, greedy_steps
from nextterm_mlx import static_cache


@pytest.fixture(scope="module")
def model():
    return nextterm_mlx.load(FIXTURES / "untied-v4", dtype="float32").model


def digits(count: int) -> list[int]:
    return [i % 10 for i in range(count)]


def test_capacity_follows_each_sequence(model, monkeypatch):
    monkeypatch.setattr(static_cache, "CAPACITY_STEP", 32)
    decoder = static_cache.StaticDecoder(model)
    # 30 prompt positions, then one per step: the 33rd needs a second block.
    assert greedy_steps(decoder, digits(30), 4)[2] == [32, 32, 32, 64, 64]
    # A shorter sequence after it gets buffers of its own size again.
    assert greedy_steps(decoder, digits(5), 1)[2] == [32, 32]
    assert greedy_steps(decoder, digits(70), 1)[2] == [96, 96]


def test_results_do_not_depend_on_capacity_or_stale_positions(model, monkeypatch):
    prompt = digits(12)
    monkeypatch.setattr(static_cache, "CAPACITY_STEP", 32)
    tight = greedy_steps(static_cache.StaticDecoder(model), prompt, 24)

    monkeypatch.setattr(static_cache, "CAPACITY_STEP", 256)
    roomy = static_cache.StaticDecoder(model)
    greedy_steps(roomy, digits(100)[::-1], 24)  # leaves keys and values past position 12
    loose = greedy_steps(roomy, prompt, 24)

    assert set(tight[2]) == {32, 64} and set(loose[2]) == {256}
    assert loose[0] == tight[0]
    assert loose[1] == tight[1]
