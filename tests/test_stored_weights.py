"""bfloat16 and 8-bit weights read as stored on a Linux CPU
(NEXTTERM_MLX_STORED_WEIGHTS): the float32 path's numbers, exactly for
bfloat16, and its tokens for 8 bits.

Each converted fixture (stored in bfloat16, as the published checkpoints are)
is loaded twice: with its Linear weights kept in bfloat16, which the kernel
widens as it reads them, and with them widened to float32 when loaded, the
float32 path and the reference here. Widening is exact and the kernel adds in
the float32 path's order, so prompt logits, greedy tokens and their
log-probabilities are equal, not close: for one sequence, a batch, and a
prompt longer than the kernel's rows (prefill, through OpenBLAS).

An 8-bit model (mlx-lm's affine format, groups of 64) is loaded with its
weights as stored and dequantized to float32 when loaded, the path the
8-bit kernel stands in for: the sums differ in order only, so the greedy
tokens are the same on the fixtures."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.models.cache import make_prompt_cache

import nextterm_mlx
from conftest import CHECKPOINTS, FIXTURES, reference
from nextterm_mlx import settings
from nextterm_mlx.decode import prefill
from nextterm_mlx.predictor import Predictor
from nextterm_mlx.vocab import encode_prompt
from test_blas import KERNEL, MAX_ROWS, needs_kernel_and_primitives

pytestmark = needs_kernel_and_primitives

# Long enough that its prompt has more tokens than the kernel takes rows.
LONG_TERMS = list(range(1, 40))


def linear_weights(predictor: Predictor) -> set:
    """The Linear layers' weights' dtypes, and their bits when quantized."""
    return {layer.bits if isinstance(layer, nn.QuantizedLinear) else layer.weight.dtype
            for _, layer in predictor.model.named_modules() if isinstance(layer, (nn.Linear, nn.QuantizedLinear))}


def load_both(folder, monkeypatch, **options) -> tuple[Predictor, Predictor]:
    """The model with its weights as stored, and converted to float32 when loaded."""
    as_stored = nextterm_mlx.load(folder, dtype="float32", **options)
    converted_settings = dataclasses.replace(settings.from_environment(), stored_weights=False)
    with monkeypatch.context() as patch:
        patch.setattr(settings, "from_environment", lambda: converted_settings)
        converted = nextterm_mlx.load(folder, dtype="float32", **options)
    assert linear_weights(converted) == {mx.float32}
    return as_stored, converted


def prompt_logits(predictor: Predictor, prompt: list[int]) -> np.ndarray:
    model = predictor.model
    return np.array(prefill(model, mx.array([prompt]), make_prompt_cache(model)))


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_bf16_weights_as_stored_give_the_float32_paths_logits_and_tokens(name, converted, monkeypatch):
    as_stored, widened = load_both(converted[name], monkeypatch)
    assert linear_weights(as_stored) == {mx.bfloat16}
    cases = reference(name)["cases"] if name != "tiny" else []
    prompts = [case["prompt"] for case in cases] + [encode_prompt(LONG_TERMS)]
    assert max(len(prompt) for prompt in prompts) > MAX_ROWS
    bf16_calls = KERNEL.nextterm_skinny_bf16_calls()
    for prompt in prompts:
        assert np.array_equal(prompt_logits(as_stored, prompt), prompt_logits(widened, prompt))
    sequences = [case["terms"] for case in cases] or [[1, 2, 3], [1, 1, 2, 3, 5, 8], [2, 4, 8, 16]]
    for predictor in (as_stored, widened):
        predictor.static_decoder = None  # the eager loop for one sequence too, as batches decode
    for terms in [*sequences, LONG_TERMS]:
        assert as_stored.continue_sequence(terms, 3) == widened.continue_sequence(terms, 3), terms
    assert as_stored.continue_batch(sequences, 3) == widened.continue_batch(sequences, 3)
    assert KERNEL.nextterm_skinny_bf16_calls() > bf16_calls


@pytest.mark.parametrize("name", [name for name in CHECKPOINTS if name != "tiny"])
def test_8_bit_weights_as_stored_give_the_dequantized_float32_paths_tokens(name, monkeypatch):
    as_stored, dequantized = load_both(FIXTURES / name, monkeypatch, q_bits=8)
    # The output head is never quantized: an untied one stays in bfloat16.
    assert linear_weights(as_stored) - {mx.bfloat16} == {8}
    cases = reference(name)["cases"]
    for predictor in (as_stored, dequantized):
        predictor.static_decoder = None
    q8_calls = KERNEL.nextterm_skinny_q8_calls()
    for case in cases:
        got, expected = (p.continue_sequence(case["terms"], case["continue"]) for p in (as_stored, dequantized))
        assert [p.tokens for p in got] == [p.tokens for p in expected], case["terms"]
    sequences = [case["terms"] for case in cases]
    assert ([p.tokens for row in as_stored.continue_batch(sequences, 2) for p in row]
            == [p.tokens for row in dequantized.continue_batch(sequences, 2) for p in row])
    assert KERNEL.nextterm_skinny_q8_calls() > q8_calls
