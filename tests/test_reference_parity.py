"""MLX greedy decoding against transformers' CPU float32 reference outputs.

The references in fixtures/*.reference.json were written by
convert/reference.py (transformers, the model card's generate call) from the
committed random checkpoints; test_reference_live.py regenerates them.
Tokens must be equal exactly. Logits at the prompt's last position must agree
within LOGIT_ATOL: both sides compute in float32 from the same bf16 weights,
so they differ only by summation order (about 1e-5 on these logits, whose
magnitude is up to ~30).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import nextterm_mlx
from conftest import CHECKPOINTS, reference
from mlx_lm.models.cache import make_prompt_cache

from nextterm_mlx.decode import make_prediction, prefill

LOGIT_ATOL = 1e-3
LOGPROB_ATOL = 1e-3


def stop_of(tokens):
    return make_prediction(tokens, 0.0).stop


@pytest.mark.parametrize("path", ["compiled step", "eager loop"])
@pytest.mark.parametrize("name", CHECKPOINTS)
def test_tokens_and_logits_equal_transformers(name, path, converted):
    """Both one-sequence paths: the compiled step (what one sequence uses)
    and the eager loop (what batches use)."""
    ref = reference(name)
    cases = ref["cases"]
    assert len(cases) >= 20
    predictor = nextterm_mlx.load(converted[name], dtype="float32")
    assert predictor.static_decoder is not None
    if path == "eager loop":
        predictor.static_decoder = None
    for case in cases:
        predictor.max_new_tokens = case["max_new_tokens"]
        predictions = predictor.continue_sequence(case["terms"], case["continue"])
        assert [p.tokens for p in predictions] == case["generated"], case["terms"]
        np.testing.assert_allclose([p.logprob for p in predictions], case["logprobs"], atol=LOGPROB_ATOL)

        prompt = mx.array([case["prompt"]])
        logits = np.array(prefill(predictor.model, prompt, make_prompt_cache(predictor.model))[0])
        np.testing.assert_allclose(logits, case["logits"], atol=LOGIT_ATOL, rtol=0)


def test_fixtures_cover_the_required_shapes():
    """The cases above include each kind of prompt and each way of stopping."""
    cases = [case for name in CHECKPOINTS for case in reference(name)["cases"]]
    terms = [t for case in cases for t in case["terms"]]
    assert any(t < 0 for t in terms)
    assert 0 in terms
    assert any(len(str(abs(t))) >= 50 for t in terms)
    assert any(len(case["terms"]) == 1 for case in cases)
    assert any(len(case["prompt"]) >= 500 for case in cases)
    assert any(case["continue"] > 1 and len(case["generated"]) > 1 for case in cases)
    stops = {stop_of(g) for case in cases for g in case["generated"]}
    assert {"separator", "eos", "pad", "max_tokens", "malformed"} <= stops


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_batched_decoding_equals_transformers(name, converted):
    """All of a fixture's cases in left-padded batches of mixed lengths."""
    predictor = nextterm_mlx.load(converted[name], dtype="float32")
    groups = {}
    for case in reference(name)["cases"]:
        groups.setdefault((case["max_new_tokens"], case["continue"]), []).append(case)
    for (max_new_tokens, n_terms), cases in groups.items():
        predictor.max_new_tokens = max_new_tokens
        for start in range(0, len(cases), 16):
            batch = cases[start : start + 16]
            results = predictor.continue_batch([case["terms"] for case in batch], n_terms)
            for case, predictions in zip(batch, results):
                assert [p.tokens for p in predictions] == case["generated"], case["terms"]
                np.testing.assert_allclose([p.logprob for p in predictions], case["logprobs"], atol=LOGPROB_ATOL)


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_speculative_decoding_equals_transformers(name, converted):
    """Drafts from prompt lookup, verified greedily: the same tokens as the reference."""
    predictor = nextterm_mlx.load(converted[name], dtype="float32", speculate=True)
    for case in reference(name)["cases"]:
        predictor.max_new_tokens = case["max_new_tokens"]
        predictions = predictor.continue_sequence(case["terms"], case["continue"])
        assert [p.tokens for p in predictions] == case["generated"], case["terms"]
        np.testing.assert_allclose([p.logprob for p in predictions], case["logprobs"], atol=LOGPROB_ATOL)
    if name != "tied-v5":  # whose every answer is an empty term: nothing to draft
        assert predictor.speculation.accepted > 0
