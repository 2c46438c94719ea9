"""The model's probability for given next terms, by teacher forcing.

A value is scored as beam search scores a candidate: the sum of the log-
probabilities of its tokens and the separator after them, each token read
after the prompt and the tokens before it. The prompt is prefilled once;
each value's tokens then run through the same cache, which is trimmed back
to the prompt afterwards.
"""

from __future__ import annotations

from typing import Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache

from .beam import Candidate
from .decode import LogitsProcessor, apply_processors, prefill
from .vocab import SEP, encode_term


def score_values(
    model: nn.Module, prompt: list[int], values: Sequence[int], processors: Sequence[LogitsProcessor] = ()
) -> list[Candidate]:
    """Each value as a candidate next term after `prompt`, with its log-probability."""
    cache = make_prompt_cache(model)
    after_prompt = prefill(model, mx.array([prompt]), cache)
    scored = []
    for value in values:
        tokens = encode_term(value) + [SEP]
        logits = after_prompt
        if len(tokens) > 1:
            following = model(mx.array([tokens[:-1]]), cache=cache)[0].astype(mx.float32)
            logits = mx.concatenate([after_prompt, following])
        logits = apply_processors(logits, [tokens[:k] for k in range(len(tokens))], processors)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        chosen = mx.take_along_axis(logprobs, mx.array(tokens)[:, None], axis=-1)[:, 0]
        scored.append(Candidate(value, sum(chosen.tolist()), tokens))
        for layer_cache in cache:
            layer_cache.trim(len(tokens) - 1)
    return scored
