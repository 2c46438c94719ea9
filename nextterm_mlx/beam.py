"""Ranked candidate next terms by beam search.

A hypothesis is the tokens of a partial term. Each step extends every live
hypothesis by every token: one that emits the separator after a canonical
integer becomes a candidate, scored by the sum of its tokens' log-
probabilities separator included; one that emits EOS or PAD, or a separator
after tokens that spell no integer, or that can no longer become one ("05",
"1-"), adds its probability to `no_term_prob`; the `beams` best of the rest
live on. The prompt is prefilled once and the
live hypotheses run as one batch over copies of its KV cache.

Beam search finds an answer whenever each of its prefixes is among the
`beams` most likely hypotheses of its length; it stops once no live
hypothesis can beat the `top`-th candidate (scores only fall).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import make_prompt_cache

from .decode import mask_to_integers, prefill
from .vocab import EOS, PAD, SEP, STOP_TOKENS, VOCAB_SIZE, decode_term, strict_allowed

CONTINUING = np.array([t not in STOP_TOKENS for t in range(VOCAB_SIZE)])


@dataclass
class Candidate:
    value: int
    logprob: float
    tokens: list[int]

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "logprob": self.logprob, "prob": self.prob, "tokens": self.tokens}


@dataclass
class Candidates:
    """The most likely next terms, best first, and the probability (found
    by the search, so a lower bound) that the model gives no integer."""

    candidates: list[Candidate] = field(default_factory=list)
    no_term_prob: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": [c.to_dict() for c in self.candidates], "no_term_prob": self.no_term_prob}


def beam_search(
    model: nn.Module,
    prompt: list[int],
    beams: int,
    top: int,
    max_new_tokens: int,
    strict: bool = False,
) -> Candidates:
    cache = make_prompt_cache(model)
    logits = prefill(model, mx.array([prompt]), cache)
    live: list[list[int]] = [[]]
    live_scores = np.zeros(1)
    found: list[Candidate] = []
    no_term = 0.0
    for _ in range(max_new_tokens):
        if strict:
            logits = mask_to_integers(logits, live)
        logprobs = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True), dtype=np.float64)
        scores = live_scores[:, None] + logprobs

        for row, tokens in enumerate(live):
            for stop in (EOS, PAD):
                no_term += math.exp(scores[row, stop])
            value = decode_term(tokens)
            if value is None:
                no_term += math.exp(scores[row, SEP])
            else:
                found.append(Candidate(value, float(scores[row, SEP]), tokens + [SEP]))
        found.sort(key=lambda c: -c.logprob)

        # A hypothesis that can no longer become a canonical integer ("05",
        # "1-", a BOS) is no candidate's prefix: its mass is no term's.
        viable = CONTINUING[None, :] & np.array([strict_allowed(tokens) for tokens in live])
        no_term += float(np.exp(scores[CONTINUING[None, :] & ~viable]).sum())
        continuing = np.where(viable, scores, -np.inf).ravel()
        order = np.argsort(-continuing, kind="stable")[:beams]
        order = order[np.isfinite(continuing[order])]
        if len(order) == 0:
            break
        if len(found) >= top and continuing[order[0]] < found[top - 1].logprob:
            break  # no live hypothesis can overtake the top-th candidate
        parents, tokens = np.divmod(order, VOCAB_SIZE)
        live = [live[p] + [int(t)] for p, t in zip(parents, tokens)]
        live_scores = continuing[order]
        reorder_cache(cache, mx.array(parents))
        logits = model(mx.array(tokens)[:, None], cache=cache)[:, -1].astype(mx.float32)
    return Candidates(found[:top], no_term)


def reorder_cache(cache: list[Any], rows: mx.array) -> None:
    """Each layer's KV cache rows taken from `rows` (the live hypotheses' parents)."""
    for layer_cache in cache:
        layer_cache.keys = layer_cache.keys[rows]
        layer_cache.values = layer_cache.values[rows]


def greedy_candidates(prediction) -> Candidates:
    """One beam is greedy decoding: its answer, if it is an integer."""
    if prediction.value is not None:
        return Candidates([Candidate(prediction.value, prediction.logprob, prediction.tokens)], 0.0)
    ended = prediction.stop in ("eos", "pad", "malformed")
    return Candidates([], math.exp(prediction.logprob) if ended else 0.0)
