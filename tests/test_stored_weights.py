"""bfloat16 weights read as stored on a Linux CPU (NEXTTERM_MLX_STORED_WEIGHTS):
the float32 path's numbers, exactly.

Each converted fixture (stored in bfloat16, as the published checkpoints are)
is loaded twice: with its Linear weights kept in bfloat16, which the kernel
widens as it reads them, and with them widened to float32 when loaded, the
float32 path and the reference here. Widening is exact and the kernel adds in
the float32 path's order, so prompt logits, greedy tokens and their
log-probabilities are equal, not close: for one sequence, a batch, and a
prompt longer than the kernel's rows (prefill, through OpenBLAS)."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.models.cache import make_prompt_cache

import nextterm_mlx
from conftest import CHECKPOINTS, reference
from nextterm_mlx import settings
from nextterm_mlx.decode import prefill
from nextterm_mlx.predictor import Predictor
from nextterm_mlx.vocab import encode_prompt
from test_blas import KERNEL, MAX_ROWS, needs_kernel_and_primitives

pytestmark = needs_kernel_and_primitives

# Long enough that its prompt has more tokens than the kernel takes rows.
LONG_TERMS = list(range(1, 40))


def linear_weight_dtypes(predictor: Predictor) -> set:
    return {layer.weight.dtype for _, layer in predictor.model.named_modules() if type(layer) is nn.Linear}


def load_both(folder, monkeypatch) -> tuple[Predictor, Predictor]:
    """The model with its bfloat16 weights as stored, and widened to float32."""
    as_stored = nextterm_mlx.load(folder, dtype="float32")
    widened_settings = dataclasses.replace(settings.from_environment(), stored_weights=False)
    with monkeypatch.context() as patch:
        patch.setattr(settings, "from_environment", lambda: widened_settings)
        widened = nextterm_mlx.load(folder, dtype="float32")
    assert linear_weight_dtypes(as_stored) == {mx.bfloat16}
    assert linear_weight_dtypes(widened) == {mx.float32}
    return as_stored, widened


def prompt_logits(predictor: Predictor, prompt: list[int]) -> np.ndarray:
    model = predictor.model
    return np.array(prefill(model, mx.array([prompt]), make_prompt_cache(model)))


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_bf16_weights_as_stored_give_the_float32_paths_logits_and_tokens(name, converted, monkeypatch):
    as_stored, widened = load_both(converted[name], monkeypatch)
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
