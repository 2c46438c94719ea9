"""Greedy decoding of next terms, for one sequence or a batch of them.

The reference is the model card's call, `model.generate(ids,
max_new_tokens=192, do_sample=False, eos_token_id=[11, 13, 14])`: take the
most likely token until a separator, EOS or PAD comes out (it is kept) or
the token budget runs out. To continue a sequence, the separator that ended
a term is fed back through the same KV cache, as if the prompt had included
that term.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import BatchKVCache, make_prompt_cache

from .vocab import PAD, SEP, STOP_REASONS, decode_term, strict_allowed

DEFAULT_MAX_NEW_TOKENS = 192

# Prompts longer than this are prefilled in chunks, as mlx-lm does, to bound
# the attention scores' memory.
PREFILL_CHUNK = 2048

# Batches smaller than this feed each step's tokens before the host reads
# them. Larger ones wait for each step: building the next graph early saves
# little against a long step, and on two cores the host thread then competes
# with the ones computing. 440M shape, both ways taken in turn: a batch-32
# forward 363 ms waiting against 382 pipelined (separate runs: 366 against
# 406-423); at batches of 1, 4 and 8 the two were within noise.
PIPELINE_MAX_ROWS = 16


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


@dataclass
class DecodeStats:
    """Where decoding time goes: prompt processing vs token generation."""

    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    generated_tokens: int = 0
    decode_seconds: float = 0.0


def make_prediction(tokens: list[int], logprob: float) -> Prediction:
    """Read the generated tokens as a term and say why decoding stopped."""
    last = tokens[-1]
    if last not in STOP_REASONS:
        return Prediction(None, "max_tokens", tokens, logprob)
    if last != SEP:
        return Prediction(None, STOP_REASONS[last], tokens, logprob)
    value = decode_term(tokens[:-1])
    return Prediction(value, "separator" if value is not None else "malformed", tokens, logprob)


def prefill(model: nn.Module, tokens: mx.array, cache: list[Any]) -> mx.array:
    """Run a (batch, length) array of tokens through the model into `cache`;
    the float32 logits at each row's last position."""
    for start in range(0, tokens.shape[1], PREFILL_CHUNK):
        logits = model(tokens[:, start : start + PREFILL_CHUNK], cache=cache)
    return logits[:, -1].astype(mx.float32)


def greedy_step(logits: mx.array) -> tuple[mx.array, mx.array]:
    """The most likely token of each row and its log-probability (lazy)."""
    tokens = mx.argmax(logits, axis=-1)
    logprobs = mx.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0] - mx.logsumexp(logits, axis=-1)
    return tokens, logprobs


def mask_to_integers(logits: mx.array, terms: list[list[int]]) -> mx.array:
    """Logits with every token that cannot continue each row's partial term
    into a canonical integer set to -inf."""
    allowed = mx.array([strict_allowed(term) for term in terms])
    return mx.where(allowed, logits, -mx.inf)


@dataclass
class Terms:
    """The terms one sequence has produced so far, fed token by token."""

    n_terms: int
    max_new_tokens: int
    predictions: list[Prediction] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0

    def add(self, token: int, logprob: float) -> bool:
        """Record a generated token; True when the sequence needs no more."""
        self.tokens.append(token)
        self.logprob += logprob
        if token not in STOP_REASONS and len(self.tokens) < self.max_new_tokens:
            return False
        prediction = make_prediction(self.tokens, self.logprob)
        self.predictions.append(prediction)
        self.tokens, self.logprob = [], 0.0
        return prediction.value is None or len(self.predictions) == self.n_terms


def decode(
    model: nn.Module,
    prompts: list[list[int]],
    n_terms: int = 1,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    stats: Optional[DecodeStats] = None,
    strict: bool = False,
) -> list[list[Prediction]]:
    """The next `n_terms` terms of each prompt, decoded greedily in one batch.

    Prompts of different lengths are left-padded; a row leaves the batch when
    it has its terms or the model gives no next term (the last prediction's
    `stop` says why). `strict` masks the logits so that only canonical
    integers can come out (log-probabilities are then over allowed tokens).
    """
    stats = stats if stats is not None else DecodeStats()
    started = time.perf_counter()
    longest = max(len(p) for p in prompts)
    padding = [longest - len(p) for p in prompts]
    if len(prompts) == 1:
        cache = make_prompt_cache(model)
    else:
        cache = [BatchKVCache(padding) for _ in model.layers]
    tokens = mx.array([[PAD] * pad + prompt for pad, prompt in zip(padding, prompts)])
    logits = prefill(model, tokens, cache)
    mx.eval(logits)
    stats.prefill_tokens += sum(len(p) for p in prompts)
    stats.prefill_seconds += time.perf_counter() - started

    started = time.perf_counter()
    rows = [Terms(n_terms, max_new_tokens) for _ in prompts]
    # The row each line of the batch computes. A finished row stays in the
    # batch, its tokens ignored, until no more than half the lines are still
    # needed: dropping lines copies every layer's cache, which costs more
    # than computing a few spare rows.
    lines = list(range(len(prompts)))
    finished: set[int] = set()
    if strict:
        logits = mask_to_integers(logits, [[] for _ in prompts])
    step = greedy_step(logits)
    pipelined = not strict and len(prompts) < PIPELINE_MAX_ROWS
    while True:
        if pipelined:
            # Feed this step's tokens before reading them on the host, so the
            # next forward pass overlaps the bookkeeping.
            following = greedy_step(model(step[0][:, None], cache=cache)[:, -1].astype(mx.float32))
            mx.async_eval(*following)
        for index, token, logprob in zip(lines, step[0].tolist(), step[1].tolist()):
            if index not in finished:
                stats.generated_tokens += 1
                if rows[index].add(token, logprob):
                    finished.add(index)
        if len(finished) == len(rows):
            break
        needed = [line for line, index in enumerate(lines) if index not in finished]
        if len(needed) <= len(lines) // 2:
            kept = mx.array(needed)
            for layer_cache in cache:
                layer_cache.filter(kept)
            lines = [lines[line] for line in needed]
            step = (step[0][kept], step[1][kept])
            if pipelined:
                following = (following[0][kept], following[1][kept])
        if pipelined:
            step = following
        else:
            logits = model(step[0][:, None], cache=cache)[:, -1].astype(mx.float32)
            if strict:
                logits = mask_to_integers(logits, [rows[index].tokens for index in lines])
            step = greedy_step(logits)
    stats.decode_seconds += time.perf_counter() - started
    return [row.predictions for row in rows]
