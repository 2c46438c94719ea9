"""Ranked candidate next terms by beam search.

A hypothesis is the tokens of a partial term. Each step extends every live
hypothesis by every token: one that emits the separator after a canonical
integer becomes a candidate, scored by the sum of its tokens' log-
probabilities separator included; one that emits EOS or PAD, or a separator
after tokens that spell no integer, or that can no longer become one ("05",
"1-"), adds its probability to `no_term_prob`; the `beams` best of the rest
live on. Each prompt is prefilled once, and the live hypotheses of every
prompt searched together run as one batch over copies of its KV cache.

Beam search finds an answer whenever each of its prefixes is among the
`beams` most likely hypotheses of its length; it stops once no live
hypothesis can beat the `top`-th candidate (scores only fall).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import BatchKVCache

from .decode import (DecodeStats, LogitsProcessor, Prediction, StopReason, apply_processors,
                     prefill_batch)
from .vocab import EOS, PAD, SEP, STOP_TOKENS, VOCAB_SIZE, decode_term, strict_allowed

CONTINUING = np.array([t not in STOP_TOKENS for t in range(VOCAB_SIZE)])


@dataclass
class Candidate:
    """A candidate next term, its tokens (the separator included) and the sum
    of their log-probabilities."""

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

    @property
    def stop(self) -> StopReason:
        return StopReason.SEPARATOR if self.candidates else StopReason.NO_CANDIDATE

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": [c.to_dict() for c in self.candidates], "no_term_prob": self.no_term_prob}


@dataclass
class Search:
    """One prompt's beam search: its live hypotheses and what it has found."""

    beams: int
    top: int
    live: list[list[int]] = field(default_factory=lambda: [[]])
    scores: np.ndarray = field(default_factory=lambda: np.zeros(1))
    found: list[Candidate] = field(default_factory=list)
    no_term: float = 0.0
    done: bool = False

    def extend(self, logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score every extension of the live hypotheses (`logprobs`: the
        next token's, one row each); the parents (rows of `live`) and tokens
        of the hypotheses that live on, none once the search is done."""
        scores = self.scores[:, None] + logprobs
        for row, tokens in enumerate(self.live):
            for stop in (EOS, PAD):
                self.no_term += math.exp(scores[row, stop])
            value = decode_term(tokens)
            if value is None:
                self.no_term += math.exp(scores[row, SEP])
            else:
                self.found.append(Candidate(value, float(scores[row, SEP]), tokens + [SEP]))
        self.found.sort(key=lambda c: -c.logprob)

        # A hypothesis that can no longer become a canonical integer ("05",
        # "1-", a BOS) is no candidate's prefix: its mass is no term's.
        viable = CONTINUING[None, :] & np.array([strict_allowed(tokens) for tokens in self.live])
        self.no_term += float(np.exp(scores[CONTINUING[None, :] & ~viable]).sum())
        continuing = np.where(viable, scores, -np.inf).ravel()
        order = np.argsort(-continuing, kind="stable")[: self.beams]
        order = order[np.isfinite(continuing[order])]
        beaten = len(self.found) >= self.top and len(order) and continuing[order[0]] < self.found[self.top - 1].logprob
        if len(order) == 0 or beaten:  # beaten: no live hypothesis can overtake the top-th candidate
            self.done = True
            return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
        parents, tokens = np.divmod(order, VOCAB_SIZE)
        self.live = [self.live[p] + [int(t)] for p, t in zip(parents, tokens)]
        self.scores = continuing[order]
        return parents, tokens

    def result(self) -> Candidates:
        return Candidates(self.found[: self.top], self.no_term)


def beam_search_batch(
    model: nn.Module,
    prompts: list[list[int]],
    beams: int,
    top: int,
    max_new_tokens: int,
    processors: Sequence[LogitsProcessor] = (),
    stats: Optional[DecodeStats] = None,
) -> list[Candidates]:
    """Beam search for each prompt, all prompts' hypotheses in one batch."""
    stats = stats if stats is not None else DecodeStats()
    logits, cache = prefill_batch(model, prompts, stats)
    searches = [Search(beams, top) for _ in prompts]
    searching = searches  # the searches still running, their live hypotheses in this order in the batch
    with stats.decoding():
        for _ in range(max_new_tokens):
            logits = apply_processors(logits, [tokens for search in searching for tokens in search.live], processors)
            logprobs = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True), dtype=np.float64)
            parents, tokens, first_row = [], [], 0
            for search in searching:
                rows = len(search.live)
                search_parents, search_tokens = search.extend(logprobs[first_row : first_row + rows])
                parents.append(first_row + search_parents)
                tokens.append(search_tokens)
                first_row += rows
            searching = [search for search in searching if not search.done]
            if not searching:
                break
            select_rows(cache, mx.array(np.concatenate(parents)))
            fed = np.concatenate(tokens)
            stats.generated_tokens += len(fed)
            logits = model(mx.array(fed)[:, None], cache=cache)[:, -1].astype(mx.float32)
    return [search.result() for search in searches]


def beam_search(
    model: nn.Module,
    prompt: list[int],
    beams: int,
    top: int,
    max_new_tokens: int,
    processors: Sequence[LogitsProcessor] = (),
    stats: Optional[DecodeStats] = None,
) -> Candidates:
    return beam_search_batch(model, [prompt], beams, top, max_new_tokens, processors, stats)[0]


def select_rows(cache: list[Any], rows: mx.array) -> None:
    """Each layer's KV cache rows taken from `rows` (the live hypotheses' parents)."""
    for layer_cache in cache:
        if isinstance(layer_cache, BatchKVCache):
            layer_cache.filter(rows)
        else:
            layer_cache.keys = layer_cache.keys[rows]
            layer_cache.values = layer_cache.values[rows]


def greedy_candidates(prediction: Prediction) -> Candidates:
    """One beam is greedy decoding: its answer, if it is an integer."""
    if prediction.value is not None:
        return Candidates([Candidate(prediction.value, prediction.logprob, prediction.tokens)], 0.0)
    ended = prediction.stop in (StopReason.EOS, StopReason.PAD, StopReason.MALFORMED)
    return Candidates([], math.exp(prediction.logprob) if ended else 0.0)
