"""The decoding strategies over one core, against independent references.

`strict` decoding is checked against greedy decoding by transformers
(float32, CPU, one full forward pass a token) whose logits are masked by a
regular expression for canonical integers, not by the project's rule.
Beam search for several prompts at once is checked against each candidate's
log-probability teacher-forced by transformers.
"""

from __future__ import annotations

import re

import mlx.core as mx
import numpy as np
import pytest

import nextterm_mlx
from nextterm_mlx.errors import LongPromptWarning
from nextterm_mlx.vocab import NEG, SEP, encode_prompt

torch = pytest.importorskip("torch")

PROMPTS = [[1, 2, 3], [1, 1, 2, 3, 5, 8], [7], [2, 4, 8, 16, 32], [3, 1, 4, 1, 5], [1, -1, 1, -1], [100, 200, 300],
           [0, 0, 0], [1, 2, 3]]  # two of equal length, and a repeated one
N_TERMS, MAX_NEW_TOKENS = 3, 6


def spelled(tokens) -> str:
    return "".join("-" if t == NEG else str(t) if t < 10 else "?" for t in tokens)


def may_follow(term: list[int], token: int) -> bool:
    """Whether `token` may follow the partial term in strict decoding, by regular expression."""
    if token == SEP:
        return re.fullmatch(r"-?[1-9][0-9]*|0", spelled(term)) is not None
    return token <= NEG and re.fullmatch(r"-?[1-9][0-9]*|0|-?", spelled(term + [token])) is not None


def strict_reference(model, terms: list[int]) -> list[tuple[list[int], float]]:
    """Each term's tokens and log-probability, decoded greedily by transformers over the allowed tokens."""
    ids, terms_out = encode_prompt(terms), []
    for _ in range(N_TERMS):
        term, logprob = [], 0.0
        while True:
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, -1].double()
            logits[[not may_follow(term, t) for t in range(16)]] = -torch.inf
            token = int(torch.argmax(logits))
            logprob += float(torch.log_softmax(logits, dim=-1)[token])
            term.append(token)
            ids.append(token)
            if token == SEP or len(term) == MAX_NEW_TOKENS:
                break
        terms_out.append((term, logprob))
        if token != SEP:
            break
    return terms_out


def test_strict_decoding_equals_masked_transformers_in_every_strategy(reference_model):
    plain = nextterm_mlx.load("tiny", max_new_tokens=MAX_NEW_TOKENS)
    speculative = nextterm_mlx.load("tiny", max_new_tokens=MAX_NEW_TOKENS, speculate=True)
    batched = plain.continue_batch(PROMPTS, N_TERMS, strict=True)
    drafted = speculative.continue_batch(PROMPTS, N_TERMS, strict=True)
    for terms, in_batch, with_drafts in zip(PROMPTS, batched, drafted):
        expected = strict_reference(reference_model, terms)
        for predictions in (plain.continue_sequence(terms, N_TERMS, strict=True), in_batch, with_drafts):
            assert [p.tokens for p in predictions] == [tokens for tokens, _ in expected], terms
            np.testing.assert_allclose([p.logprob for p in predictions], [lp for _, lp in expected], atol=1e-4)
    assert speculative.speculation.accepted > 0


def teacher_forced_logprob(model, prompt: list[int], tokens: list[int]) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 :].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return float(sum(logprobs[i, t] for i, t in enumerate(tokens)))


def test_beam_search_of_several_prompts_at_once(reference_model):
    predictor = nextterm_mlx.load("tiny")
    together = predictor.candidates_batch(PROMPTS, beams=6, top=3)
    for terms, found in zip(PROMPTS, together):
        alone = predictor.candidates(terms, beams=6, top=3)
        assert [c.tokens for c in found.candidates] == [c.tokens for c in alone.candidates], terms
        assert found.no_term_prob == pytest.approx(alone.no_term_prob, abs=1e-5)
        for candidate in found.candidates:
            exact = teacher_forced_logprob(reference_model, encode_prompt(terms), candidate.tokens)
            assert candidate.logprob == pytest.approx(exact, abs=1e-4)


def test_a_prompt_longer_than_the_training_context_warns(converted):
    predictor = nextterm_mlx.load(converted["untied-v5"])
    predictor.config = {**predictor.config, "max_position_embeddings": 8192}
    with pytest.warns(LongPromptWarning, match="4096"):
        prompt = predictor.prompt([123456789] * 420)
    assert len(prompt) == 4201


def test_a_batch_of_prompts_of_equal_and_unequal_lengths_equals_transformers(converted):
    """Prefilled by length without padding, then decoded together: each prompt's
    logits and tokens are transformers' (fixture references)."""
    from conftest import reference
    from nextterm_mlx.decode import DecodeStats, prefill_batch

    name = "untied-v5"
    predictor = nextterm_mlx.load(converted[name], dtype="float32")
    cases = [c for c in reference(name)["cases"] if c["max_new_tokens"] == 192 and c["continue"] == 1][:8]
    batch = cases + cases[::-1]  # every length at least twice
    assert len({len(c["prompt"]) for c in batch}) > 1
    logits, _ = prefill_batch(predictor.model, [c["prompt"] for c in batch], DecodeStats())
    np.testing.assert_allclose(np.array(logits), [c["logits"] for c in batch], atol=1e-3, rtol=0)
    for case, predictions in zip(batch, predictor.continue_batch([c["terms"] for c in batch], 1)):
        assert [p.tokens for p in predictions] == case["generated"], case["terms"]
        np.testing.assert_allclose([p.logprob for p in predictions], case["logprobs"], atol=1e-3)


def test_where_a_prefill_is_cut_into_passes_changes_no_number():
    """On a CPU whose kernels promise alike rows, a prompt longer than they
    take is prefilled in passes within them; cutting it anywhere else, down
    to a token a pass, gives the same logits to the last bit."""
    from mlx_lm.models.cache import make_prompt_cache

    from nextterm_mlx.decode import prefill

    model = nextterm_mlx.load("tiny").model
    if model.kernels.alike_rows() is None:
        pytest.skip("MLX's own operations promise no such thing")
    prompt = encode_prompt([3**k for k in range(40)])
    assert len(prompt) > model.kernels.alike_rows()
    reference = np.array(prefill(model, mx.array([prompt]), make_prompt_cache(model)))
    for chunk in (1, 7, 50):
        cache = make_prompt_cache(model)
        for start in range(0, len(prompt), chunk):
            logits = model(mx.array([prompt[start : start + chunk]]), cache=cache)
        assert np.array_equal(np.array(logits[:, -1].astype(mx.float32)), reference), chunk


def test_a_batch_decodes_each_sequence_with_the_numbers_it_gets_alone():
    """On a CPU whose kernels promise it (Kernels.alike_rows), a sequence
    gets the same log-probabilities, to the last bit, in a batch as alone:
    here 80 short prompts (groups of one length past the kernel's rows),
    more sequences than it takes, and beams."""
    predictor = nextterm_mlx.load("tiny")
    if predictor.model.kernels.alike_rows() is None:
        pytest.skip("MLX's own operations promise no such thing")
    rng = np.random.default_rng(7)
    sequences = [rng.integers(-20, 20, size=int(rng.integers(2, 6))).tolist() for _ in range(80)]
    together = predictor.continue_batch(sequences, 2)
    beams = predictor.candidates_batch(sequences[:24], beams=4)
    for terms, in_batch in zip(sequences, together):
        alone = predictor.continue_sequence(terms, 2)
        assert [(p.tokens, p.logprob) for p in in_batch] == [(p.tokens, p.logprob) for p in alone], terms
    for terms, in_batch in zip(sequences, beams):
        alone = predictor.candidates(terms, beams=4)
        assert in_batch.to_dict() == alone.to_dict(), terms
