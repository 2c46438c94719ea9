"""Greedy decoding of one term at a time, as the model card's generate call.

The reference is `model.generate(ids, max_new_tokens=192, do_sample=False,
eos_token_id=[11, 13, 14])`: take the most likely token until a separator,
EOS or PAD comes out (it is kept) or the token budget runs out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn

from .vocab import SEP, STOP_REASONS, decode_term

DEFAULT_MAX_NEW_TOKENS = 192

# Prompts longer than this are prefilled in chunks, as mlx-lm does, to bound
# the attention scores' memory.
PREFILL_CHUNK = 2048


@dataclass
class Prediction:
    """One predicted term.

    value: the integer, or None when the model gave no well-formed term.
    stop: "separator" (a term was completed), "eos" or "pad" (the model ended
        the sequence), "max_tokens" (the budget ran out) or "malformed" (a
        separator came after tokens that spell no integer).
    tokens: the generated token ids, the stop token included.
    logprob: the sum of the generated tokens' log-probabilities.
    """

    value: Optional[int]
    stop: str
    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "stop": self.stop, "tokens": self.tokens, "logprob": self.logprob}


def prefill(model: nn.Module, tokens: list[int], cache: list[Any]) -> mx.array:
    """Run `tokens` through the model into `cache`; the last position's logits."""
    for start in range(0, len(tokens), PREFILL_CHUNK):
        logits = model(mx.array(tokens[start : start + PREFILL_CHUNK])[None], cache=cache)
    return logits[0, -1].astype(mx.float32)


def next_term(model: nn.Module, cache: list[Any], feed: list[int], max_new_tokens: int) -> Prediction:
    """Decode the next term after feeding `feed` (the prompt, or the previous
    term's separator) into `cache`. The stop token is not fed: the next call
    feeds it, so a continuation never re-reads the prompt."""
    logits = prefill(model, feed, cache)
    tokens: list[int] = []
    logprob = 0.0
    while True:
        token = mx.argmax(logits)
        token_logprob = logits[token] - mx.logsumexp(logits)
        token, token_logprob = token.item(), token_logprob.item()
        tokens.append(token)
        logprob += token_logprob
        if token in STOP_REASONS or len(tokens) == max_new_tokens:
            break
        logits = prefill(model, [token], cache)
    return make_prediction(tokens, logprob)


def make_prediction(tokens: list[int], logprob: float) -> Prediction:
    """Read the generated tokens as a term and say why decoding stopped."""
    last = tokens[-1]
    if last not in STOP_REASONS:
        return Prediction(None, "max_tokens", tokens, logprob)
    if last != SEP:
        return Prediction(None, STOP_REASONS[last], tokens, logprob)
    value = decode_term(tokens[:-1])
    return Prediction(value, "separator" if value is not None else "malformed", tokens, logprob)
