"""Exact speculative decoding with drafts from prompt lookup.

Decoding one token reads every weight, so checking several drafted tokens in
one forward pass costs about as much as one step. Drafts come from the
sequence itself: the tokens that followed the last earlier occurrence of its
final n-gram (integer sequences repeat digit patterns). The model's greedy
choice at every drafted position is computed in one pass; drafts are kept up
to the first disagreement, where the model's own token is taken instead, so
the output is exactly plain greedy decoding's. The cache is trimmed back
past the rejected drafts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache

from .decode import DecodeStats, Prediction, Terms, prefill

DRAFT_TOKENS = 8
NGRAM_SIZES = (3, 2, 1)


@dataclass
class SpeculationStats:
    drafted: int = 0
    accepted: int = 0
    forward_passes: int = 0


def lookup_draft(context: list[int], size: int) -> list[int]:
    """The tokens that followed the most recent earlier occurrence of the
    context's last n-gram (longest n first), at most `size` of them."""
    for n in NGRAM_SIZES:
        if len(context) <= n:
            continue
        tail = context[-n:]
        for start in range(len(context) - n - 1, -1, -1):
            if context[start : start + n] == tail:
                return context[start + n : start + n + size]
    return []


def decode_speculative(
    model: nn.Module,
    prompt: list[int],
    n_terms: int,
    max_new_tokens: int,
    stats: Optional[DecodeStats] = None,
    speculation: Optional[SpeculationStats] = None,
) -> list[Prediction]:
    """The same predictions as `decode(model, [prompt], n_terms, ...)`, in fewer forward passes."""
    stats = stats if stats is not None else DecodeStats()
    speculation = speculation if speculation is not None else SpeculationStats()
    started = time.perf_counter()
    cache = make_prompt_cache(model)
    logits = prefill(model, mx.array([prompt]), cache)[None]  # (1, 1, vocab): the next token's
    mx.eval(logits)
    stats.prefill_tokens += len(prompt)
    stats.prefill_seconds += time.perf_counter() - started
    started = time.perf_counter()
    context = list(prompt)
    terms = Terms(n_terms, max_new_tokens)
    draft: list[int] = []
    while True:
        logprobs = logits[0] - mx.logsumexp(logits[0], axis=-1, keepdims=True)
        choices = mx.argmax(logprobs, axis=-1)
        chosen_logprobs = mx.take_along_axis(logprobs, choices[:, None], axis=-1)[:, 0]
        choices, chosen_logprobs = choices.tolist(), chosen_logprobs.tolist()
        accepted = 0
        while accepted < len(draft) and draft[accepted] == choices[accepted]:
            accepted += 1
        speculation.drafted += len(draft)
        speculation.accepted += accepted
        emitted = choices[: accepted + 1]

        for token, logprob in zip(emitted, chosen_logprobs):
            stats.generated_tokens += 1
            if terms.add(token, logprob):
                stats.decode_seconds += time.perf_counter() - started
                return terms.predictions

        # The cache holds the context up to the last emitted token, which is fed next.
        rejected = len(draft) - accepted
        if rejected:
            for layer_cache in cache:
                layer_cache.trim(rejected)
        context += emitted
        draft = lookup_draft(context, DRAFT_TOKENS)
        speculation.forward_passes += 1
        logits = model(mx.array([[context[-1]] + draft]), cache=cache).astype(mx.float32)
