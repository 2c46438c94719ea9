"""Beam search candidates against brute-force scoring by transformers.

For each prompt, transformers (CPU, float32) scores the shipped tiny model's
every integer from -99 to 999 (its tokens and the separator) and every
unfinished hypothesis of up to three tokens (any tokens but the stop ones),
teacher-forced, and each candidate the beam search returns. That gives,
independently of the beam search:

- each returned candidate's exact log-probability;
- the true top N integers, and the condition under which beam search with K
  beams must find exactly them: (a) each of them, at every length along its
  tokens, is among the K most likely unfinished hypotheses of that length
  (so no step prunes it), and (b) the N-th of them beats every unfinished
  3-token hypothesis, so no integer of 4 or more tokens can outrank it.
"""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nextterm_mlx
from nextterm_mlx.resolve import TINY_CHECKPOINT
from nextterm_mlx.vocab import EOS, NEG, PAD, SEP, encode_prompt, encode_term, strict_allowed

torch = pytest.importorskip("torch")

NON_STOP = [t for t in range(16) if t not in (SEP, EOS, PAD)]
BEAMS, TOP = 12, 3
PROMPTS = [
    [2, 4, 6, 8], [1, 2, 3], [5, 10, 15, 20], [1, 4, 9, 16], [3, 1, 4, 1, 5], [10, 20, 30],
    [1, 1, 2, 3, 5, 8], [7, 7, 7], [1, -1, 1, -1], [0, 3, 6, 9], [2, 4, 8, 16], [100, 200, 300],
    [1, 3, 6, 10], [9, 8, 7, 6], [5], [-2, -4, -6], [1, 2, 1, 2, 1], [11, 22, 33], [1, 8, 27], [40, 30, 20, 10],
]


@pytest.fixture(scope="module")
def tiny():
    return nextterm_mlx.load("tiny")


@pytest.fixture(scope="module")
def reference_model():
    from convert.reference import load_reference_model

    return load_reference_model(TINY_CHECKPOINT)


def logprobs_after(model, prompt: list[int], rows: list[list[int]]) -> np.ndarray:
    """log-softmax at the prompt's last position and after each token of each (equal-length) row."""
    ids = torch.tensor([prompt + row for row in rows])
    with torch.no_grad():
        logits = model(ids).logits[:, len(prompt) - 1 :].double()
    return torch.log_softmax(logits, dim=-1).numpy()


def sequence_logprob(model, prompt: list[int], tokens: list[int]) -> float:
    lp = logprobs_after(model, prompt, [tokens])[0]
    return float(sum(lp[i, t] for i, t in enumerate(tokens)))


def brute_force(model, terms):
    """(score of every integer in -99..999, scores of all unfinished hypotheses by length 1..3)."""
    prompt = encode_prompt(terms)
    rows2 = [list(r) for r in itertools.product(NON_STOP, repeat=2)]
    lp2 = logprobs_after(model, prompt, rows2)  # (n, 3, 16): before token 1, after 1, after 2
    unfinished = {1: {}, 2: {}, 3: {}}
    finished = {}
    for row, lp in zip(rows2, lp2):
        a, b = row
        unfinished[1][(a,)] = lp[0, a]
        finished[(a,)] = lp[0, a] + lp[1, SEP]
        unfinished[2][(a, b)] = lp[0, a] + lp[1, b]
        finished[(a, b)] = unfinished[2][(a, b)] + lp[2, SEP]
        for c in NON_STOP:
            unfinished[3][(a, b, c)] = unfinished[2][(a, b)] + lp[2, c]
    three = [encode_term(n) for n in range(-99, 1000) if len(encode_term(n)) == 3]
    lp3 = logprobs_after(model, prompt, three)
    for tokens, lp in zip(three, lp3):
        finished[tuple(tokens)] = unfinished[3][tuple(tokens)] + lp[3, SEP]
    scores = {n: finished[tuple(encode_term(n))] for n in range(-99, 1000)}
    ranked = {depth: sorted(hyps, key=lambda k: -hyps[k]) for depth, hyps in unfinished.items()}
    return scores, unfinished, ranked


def beam_must_find(truth, unfinished, ranked):
    """Condition (a) and (b) of the module docstring."""
    top = truth[:TOP]
    for value, _ in top:
        tokens = tuple(encode_term(value))
        for depth in range(1, len(tokens) + 1):
            if ranked[depth].index(tokens[:depth]) >= BEAMS:
                return False
    return top[-1][1] > max(unfinished[3].values())


def test_candidates_match_brute_force(tiny, reference_model):
    found_top = 0
    for terms in PROMPTS:
        scores, unfinished, ranked = brute_force(reference_model, terms)
        result = tiny.candidates(terms, beams=BEAMS, top=TOP)
        assert len(result.candidates) == TOP
        for candidate in result.candidates:
            assert candidate.tokens == encode_term(candidate.value) + [SEP]
            exact = sequence_logprob(reference_model, encode_prompt(terms), candidate.tokens)
            assert candidate.logprob == pytest.approx(exact, abs=1e-4)
        truth = sorted(scores.items(), key=lambda kv: -kv[1])
        if beam_must_find(truth, unfinished, ranked):
            found_top += 1
            assert [c.value for c in result.candidates] == [v for v, _ in truth[:TOP]], terms
    assert found_top >= len(PROMPTS) // 2, "the condition held too rarely to test anything"


def test_one_beam_is_greedy(tiny):
    for terms in PROMPTS:
        greedy = tiny.predict(terms)
        candidates = tiny.candidates(terms, beams=1).candidates
        assert [(c.value, c.tokens, c.logprob) for c in candidates] == (
            [(greedy.value, greedy.tokens, greedy.logprob)] if greedy.value is not None else [])


def canonical_prefix(tokens) -> bool:
    """Whether `tokens` can still be completed to a canonical integer, by regex."""
    text = "".join("-" if t == NEG else str(t) if t < 10 else "?" for t in tokens)
    return re.fullmatch(r"(-?[1-9][0-9]*|0|-?)", text) is not None


def test_strict_rule_by_enumeration():
    for length in range(4):
        for prefix in itertools.product(range(16), repeat=length):
            if not canonical_prefix(prefix):
                continue
            allowed = strict_allowed(list(prefix))
            for token in range(16):
                if token == SEP:
                    expected = canonical_prefix(prefix) and re.fullmatch(
                        r"-?[1-9][0-9]*|0", "".join("-" if t == NEG else str(t) for t in prefix)) is not None
                else:
                    expected = token < 11 and canonical_prefix(prefix + (token,))
                assert allowed[token] == expected, (prefix, token)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-10**6, 10**6), min_size=1, max_size=12))
def test_strict_never_yields_a_malformed_term(terms):
    predictor = nextterm_mlx.load("tiny", max_new_tokens=24)
    prediction = predictor.predict(terms, strict=True)
    assert prediction.stop in ("separator", "max_tokens")
    assert math.isfinite(prediction.logprob)
    if prediction.stop == "separator":
        assert prediction.tokens == encode_term(prediction.value) + [SEP]
    for candidate in predictor.candidates(terms, beams=4, top=2, strict=True).candidates:
        assert candidate.tokens == encode_term(candidate.value) + [SEP]
