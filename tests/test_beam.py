"""Beam search candidates against brute-force scoring by transformers.

For each prompt, transformers (CPU, float32) scores every integer from -999
to 9999 (its tokens and the separator) and every unfinished hypothesis of up
to four tokens (any tokens but the stop ones) on the shipped tiny model,
teacher-forced, and each candidate the beam search returns. The scoring walks
the tree of prefixes one token deep at a time, each prefix's row reusing its
parent's key/value cache, so every prefix is computed once. That gives,
independently of the beam search:

- each returned candidate's exact log-probability;
- the true top N integers, and the condition under which beam search with K
  beams must find exactly them: (a) each of them, at every length along its
  tokens, is among the K most likely unfinished hypotheses of that length
  (so no step prunes it), and (b) the N-th of them beats every unfinished
  4-token hypothesis, so no integer of 5 or more tokens can outrank it (every
  integer of at most 4 tokens lies in -999..9999 and was scored).
"""

from __future__ import annotations

import inspect
import itertools
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nextterm_mlx
from nextterm_mlx.vocab import EOS, NEG, PAD, SEP, encode_prompt, encode_term, strict_allowed

torch = pytest.importorskip("torch")

NON_STOP = [t for t in range(16) if t not in (SEP, EOS, PAD)]
INTEGERS = range(-999, 10000)  # exactly the integers of at most 4 tokens
DEPTH = 4
BEAMS, TOP = 12, 3
PROMPTS = [
    [2, 4, 6, 8], [1, 2, 3], [5, 10, 15, 20], [1, 4, 9, 16], [3, 1, 4, 1, 5], [10, 20, 30],
    [1, 1, 2, 3, 5, 8], [7, 7, 7], [1, -1, 1, -1], [0, 3, 6, 9], [2, 4, 8, 16], [100, 200, 300],
    [1, 3, 6, 10], [9, 8, 7, 6], [5], [-2, -4, -6], [1, 2, 1, 2, 1], [11, 22, 33], [1, 8, 27], [40, 30, 20, 10],
]


def forward(model, ids: list[list[int]], cache) -> np.ndarray:
    """log-softmax after each row's last token; `cache` (transformers' own) grows by the rows."""
    name = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    with torch.no_grad():
        logits = model(torch.tensor(ids), use_cache=True, **{name: cache}).logits[:, -1].double()
    return torch.log_softmax(logits, dim=-1).numpy()


def next_token_logprobs(model, prompt: list[int], levels: list[list[tuple[int, ...]]]) -> dict:
    """{prefix: log-softmax over the token after prompt + prefix} for the empty
    prefix and every prefix in `levels` (levels[d] holds prefixes of d + 1
    tokens, each extending one in levels[d - 1])."""
    from transformers import DynamicCache

    cache = DynamicCache()
    logprobs = {(): forward(model, [prompt], cache)[0]}
    rows = {(): 0}  # the cache row of each prefix of the previous level
    for level in levels:
        cache.batch_select_indices(torch.tensor([rows[prefix[:-1]] for prefix in level]))
        for prefix, lp in zip(level, forward(model, [[prefix[-1]] for prefix in level], cache)):
            logprobs[prefix] = lp
        rows = {prefix: i for i, prefix in enumerate(level)}
    return logprobs


def sequence_logprob(model, prompt: list[int], tokens: list[int]) -> float:
    """Teacher-forced log-probability of `tokens` after `prompt`, in one plain forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 :].double()
    lp = torch.log_softmax(logits, dim=-1).numpy()
    return float(sum(lp[i, t] for i, t in enumerate(tokens)))


def brute_force(model, terms):
    """(score of every integer in -999..9999, scores of all unfinished hypotheses by length 1..4)."""
    unfinished_levels = [list(itertools.product(NON_STOP, repeat=d)) for d in range(1, DEPTH)]
    longest_integers = [tuple(encode_term(n)) for n in INTEGERS if len(encode_term(n)) == DEPTH]
    after = next_token_logprobs(model, encode_prompt(terms), unfinished_levels + [longest_integers])
    unfinished = {0: {(): 0.0}}
    for depth in range(1, DEPTH + 1):
        unfinished[depth] = {prefix + (t,): score + after[prefix][t]
                             for prefix, score in unfinished[depth - 1].items() for t in NON_STOP}
    scores = {}
    for n in INTEGERS:
        tokens = tuple(encode_term(n))
        scores[n] = unfinished[len(tokens)][tokens] + after[tokens][SEP]
    del unfinished[0]
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
    return top[-1][1] > max(unfinished[DEPTH].values())


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
            if candidate.value in scores:  # the tree walk agrees with plain teacher forcing
                assert scores[candidate.value] == pytest.approx(exact, abs=1e-4)
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
