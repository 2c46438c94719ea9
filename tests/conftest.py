"""Shared fixtures: the committed random checkpoints and their transformers references."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
import pytest

# Exactness is checked on the CPU, in this process and in every command the
# tests start; test_default_device.py checks agreement on the device MLX
# would choose (the GPU on a Mac).
DEFAULT_DEVICE = mx.default_device()
os.environ["NEXTTERM_MLX_DEVICE"] = "cpu"
mx.set_default_device(mx.cpu)

from nextterm_mlx.decode import greedy_step
from nextterm_mlx.resolve import TINY_CHECKPOINT

FIXTURES = Path(__file__).parent / "fixtures"
# Three random checkpoints (scripts/make_fixtures.py) and the shipped tiny model.
CHECKPOINTS = ("untied-v4", "untied-v5", "tied-v5", "tiny")


def checkpoint_folder(name: str) -> Path:
    return TINY_CHECKPOINT if name == "tiny" else FIXTURES / name


def reference(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.reference.json").read_text())


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """Each fixture checkpoint converted once with the project's converter."""
    from nextterm_mlx.convert.converter import convert_checkpoint

    root = tmp_path_factory.mktemp("converted")
    return {name: convert_checkpoint(checkpoint_folder(name), root / name) for name in CHECKPOINTS}


@pytest.fixture(scope="module")
def tiny():
    """The shipped tiny model, loaded as users load it."""
    import nextterm_mlx

    return nextterm_mlx.load("tiny")


@pytest.fixture(scope="module")
def reference_model():
    """The shipped tiny checkpoint in transformers (CPU, float32): the reference."""
    from nextterm_mlx.convert.reference import load_reference_model

    return load_reference_model(TINY_CHECKPOINT)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """No test reads or writes the user's converted-model cache."""
    monkeypatch.setenv("NEXTTERM_MLX_CACHE", str(tmp_path / "nextterm-cache"))


def greedy_steps(decoder, prompt: list[int], steps: int):
    """Greedy decoding of `prompt` with a StaticDecoder: the tokens and
    log-probabilities of the prefill's choice and of `steps` compiled steps,
    and the KV buffers' capacity after the prefill and after each step."""
    decoder.reset()
    choice, logprob = greedy_step(decoder.prefill(prompt))
    tokens, logprobs, capacities = [choice.item()], [logprob.item()], [decoder.buffers[0].shape[2]]
    for _ in range(steps):
        choice, logprob = decoder.step(choice)
        tokens.append(choice.item())
        logprobs.append(logprob.item())
        capacities.append(decoder.buffers[0].shape[2])
    return tokens, logprobs, capacities
