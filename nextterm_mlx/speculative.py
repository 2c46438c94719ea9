"""Exact speculative decoding with drafts from prompt lookup.

Decoding one token reads every weight, so checking several drafted tokens in
one forward pass costs about as much as one step. Drafts come from the
sequence itself: the tokens that followed the last earlier occurrence of its
final n-gram (integer sequences repeat digit patterns). The model's choice
at every drafted position is computed in one pass, logits processors
applied as plain decoding applies them; drafts are kept up to the first
disagreement, where the model's own token is taken instead, so the output
is exactly plain greedy decoding's. The cache is trimmed back past the
rejected drafts.

One sequence at a time: the sequences of a batch would keep different
numbers of drafts, and so need caches of different lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import mlx.core as mx
import mlx.nn as nn

from .decode import DecodeStats, LogitsProcessor, Prediction, Terms, choose, prefill_batch
from .vocab import STOP_TOKENS

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


def partial_terms_along(term: list[int], draft: list[int]) -> list[list[int]]:
    """The partial term before each drafted token and after the last, were
    the drafts accepted: a stop token starts a new term."""
    partials = [term]
    for token in draft:
        partials.append([] if token in STOP_TOKENS else partials[-1] + [token])
    return partials


def decode_speculative(
    model: nn.Module,
    prompt: list[int],
    n_terms: int,
    max_new_tokens: int,
    stats: Optional[DecodeStats] = None,
    speculation: Optional[SpeculationStats] = None,
    processors: Sequence[LogitsProcessor] = (),
) -> list[Prediction]:
    """The same predictions as `decode_batch(model, [prompt], n_terms, ...)`, in fewer forward passes."""
    stats = stats if stats is not None else DecodeStats()
    speculation = speculation if speculation is not None else SpeculationStats()
    logits, cache = prefill_batch(model, [prompt], stats)  # (1, vocab): the next token's
    context = list(prompt)
    terms = Terms(n_terms, max_new_tokens)
    draft: list[int] = []
    with stats.decoding():
        while True:
            choices, logprobs = choose(logits, partial_terms_along(terms.tokens, draft), processors)
            choices, logprobs = choices.tolist(), logprobs.tolist()
            accepted = 0
            while accepted < len(draft) and draft[accepted] == choices[accepted]:
                accepted += 1
            speculation.drafted += len(draft)
            speculation.accepted += accepted
            emitted = choices[: accepted + 1]

            for token, logprob in zip(emitted, logprobs):
                stats.generated_tokens += 1
                if terms.add(token, logprob):
                    return terms.predictions

            # The cache holds the context up to the last emitted token, which is fed next.
            rejected = len(draft) - accepted
            if rejected:
                for layer_cache in cache:
                    layer_cache.trim(rejected)
            context += emitted
            draft = lookup_draft(context, DRAFT_TOKENS)
            speculation.forward_passes += 1
            logits = model(mx.array([[context[-1]] + draft]), cache=cache)[0].astype(mx.float32)
