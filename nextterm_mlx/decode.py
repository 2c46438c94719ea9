"""What every decoding strategy shares: prefill, the greedy choice and its
log-probability, logits processors, term bookkeeping, stop reasons, timing.

The reference is the model card's call, `model.generate(ids,
max_new_tokens=192, do_sample=False, eos_token_id=[11, 13, 14])`: take the
most likely token until a separator, EOS or PAD comes out (it is kept) or
the token budget runs out. To continue a sequence, the separator that ended
a term is fed back through the same KV cache, as if the prompt had included
that term.

The strategies over this core: `batch` (several sequences, left-padded),
`static_cache` (one sequence, a compiled step), `speculative` (drafts
verified exactly) and `beam` (ranked candidates).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Iterator, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache

from .vocab import EOS, MAX_NEW_TOKENS, PAD, SEP, decode_term, strict_allowed

DEFAULT_MAX_NEW_TOKENS = MAX_NEW_TOKENS

# Prompts longer than this are prefilled in chunks, as mlx-lm does, to bound
# the attention scores' memory.
PREFILL_CHUNK = 2048


class StopReason(str, Enum):
    """Why a term's decoding stopped. A str, so JSON holds the bare value."""

    SEPARATOR = "separator"  # a term was completed
    EOS = "eos"  # the model ended the sequence
    PAD = "pad"  # likewise
    MAX_TOKENS = "max_tokens"  # the token budget ran out
    MALFORMED = "malformed"  # a separator came after tokens that spell no integer
    NO_CANDIDATE = "no_candidate"  # beam search found no integer

    def __str__(self) -> str:
        return self.value


# The stop reason each stop token gives.
STOPPED_BY = {SEP: StopReason.SEPARATOR, EOS: StopReason.EOS, PAD: StopReason.PAD}


@dataclass
class Prediction:
    """One predicted term.

    value: the integer, or None when the model gave no well-formed term.
    stop: why decoding stopped (a StopReason; "separator" when a term was
        completed).
    tokens: the generated token ids, the stop token included.
    logprob: the sum of the generated tokens' log-probabilities.
    """

    value: Optional[int]
    stop: StopReason
    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "stop": self.stop.value, "tokens": self.tokens, "logprob": self.logprob}


def make_prediction(tokens: list[int], logprob: float) -> Prediction:
    """Read the generated tokens as a term and say why decoding stopped."""
    last = tokens[-1]
    if last not in STOPPED_BY:
        return Prediction(None, StopReason.MAX_TOKENS, tokens, logprob)
    if last != SEP:
        return Prediction(None, STOPPED_BY[last], tokens, logprob)
    value = decode_term(tokens[:-1])
    return Prediction(value, StopReason.SEPARATOR if value is not None else StopReason.MALFORMED, tokens, logprob)


@dataclass
class DecodeStats:
    """Where decoding time goes: prompt processing vs token generation.
    generated_tokens counts the tokens the decoding steps chose; for beam
    search, those of every live hypothesis."""

    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    generated_tokens: int = 0
    decode_seconds: float = 0.0

    @contextmanager
    def prefilling(self, prompts: Sequence[Sequence[int]]) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.prefill_tokens += sum(len(prompt) for prompt in prompts)
        self.prefill_seconds += time.perf_counter() - started

    @contextmanager
    def decoding(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.decode_seconds += time.perf_counter() - started


def prefill(model: nn.Module, tokens: mx.array, cache: list[Any]) -> mx.array:
    """Run a (batch, length) array of tokens through the model into `cache`;
    the float32 logits at each row's last position."""
    chunk = prefill_chunk(model, tokens.shape[0])
    for start in range(0, tokens.shape[1], chunk):
        logits = model(tokens[:, start : start + chunk], cache=cache)
    return logits[:, -1].astype(mx.float32)


def prefill_chunk(model: nn.Module, sequences: int) -> int:
    """Positions per forward pass of a prefill of `sequences` at once. Where
    the kernels promise each row its own numbers up to some number of rows,
    a pass stays within them: its products then read the weights as stored
    (bfloat16 or 8 bits) rather than widened for a GEMM, and where a chunk
    ends changes no number, since attention sums in the order of the
    positions wherever the cache holds them."""
    alike_rows = model.kernels.alike_rows()
    return PREFILL_CHUNK if alike_rows is None else max(1, alike_rows // sequences)


def prefill_batch(model: nn.Module, prompts: list[list[int]], stats: DecodeStats) -> tuple[mx.array, list[Any]]:
    """The float32 logits at each prompt's last token and the KV cache to
    step on, computed (and timed in `stats`) before they are returned."""
    with stats.prefilling(prompts):
        logits, cache = prefill_unevaluated(model, prompts)
        mx.eval(logits, [(layer_cache.keys, layer_cache.values) for layer_cache in cache])
    return logits, cache


def prefill_unevaluated(model: nn.Module, prompts: list[list[int]]) -> tuple[mx.array, list[Any]]:
    """Prefill prompts of any lengths without computing any padding; the
    float32 logits at each prompt's last token and the KV cache to step on.

    Prompts of one length run as one batch. Their caches are then joined
    into one left-padded BatchKVCache per layer, so that only the decoding
    steps attend over (masked) padding, never a forward pass computes it.
    """
    if len(prompts) == 1:
        cache = make_prompt_cache(model)
        return prefill(model, mx.array(prompts), cache), cache
    by_length: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(index)
    logits: list[Any] = [None] * len(prompts)
    rows: list[Any] = [None] * len(prompts)  # each prompt's cache, layer by layer
    for length, same_length in by_length.items():
        for indices in alike_groups(same_length, length, model.kernels.alike_rows()):
            cache = make_prompt_cache(model)
            group_logits = prefill(model, mx.array([prompts[i] for i in indices]), cache)
            for line, index in enumerate(indices):
                logits[index] = group_logits[line]
                rows[index] = [cache_row(layer_cache, line) for layer_cache in cache]
    merged = [left_padded([row[layer] for row in rows]) for layer in range(len(model.layers))]
    return mx.stack(logits), merged


def alike_groups(indices: list[int], length: int, alike_rows: Optional[int]) -> list[list[int]]:
    """Prompts of `length` tokens in passes that compute each as it is
    computed alone: a prompt within `alike_rows` rows only with others that
    keep the pass within them too. A longer one takes a pass of its own rows
    anyway, and the GEMM then computes each row alike whatever their number."""
    if alike_rows is None or length > alike_rows:
        return [indices]
    per_pass = alike_rows // length
    return [indices[start : start + per_pass] for start in range(0, len(indices), per_pass)]


# Positions a joined cache has for the steps to come. Most terms take a few
# tokens; a longer one grows the cache as mlx-lm does, a whole step at once.
STEP_ROOM = 16


def left_padded(rows: list[KVCache]) -> BatchKVCache:
    """One layer's caches of single sequences joined into a left-padded
    batch, as mlx-lm's BatchKVCache.merge joins them, but with each row
    copied once and STEP_ROOM positions to step into: a merged cache ends at
    its last position, so its first step would grow every layer's buffers by
    mlx-lm's whole step, zeroing and copying them all."""
    length = max(row.offset for row in rows)
    capacity = length + STEP_ROOM
    padding = [length - row.offset for row in rows]

    def joined(buffers: list[mx.array]) -> mx.array:
        return mx.concatenate([mx.pad(buffer[..., : row.offset, :], [(0, 0), (0, 0), (pad, capacity - length), (0, 0)])
                               for buffer, row, pad in zip(buffers, rows, padding)])

    cache = BatchKVCache(padding)
    cache.keys, cache.values = joined([row.keys for row in rows]), joined([row.values for row in rows])
    cache.offset += length
    cache._idx = length
    return cache


def cache_row(cache: KVCache, line: int) -> KVCache:
    """One line of a batch's KV cache, as a cache of its own."""
    row = KVCache()
    row.keys, row.values, row.offset = cache.keys[line : line + 1], cache.values[line : line + 1], cache.offset
    return row


def greedy_step(logits: mx.array) -> tuple[mx.array, mx.array]:
    """The most likely token at each position of `logits` (..., vocab) and
    its log-probability (lazy)."""
    tokens = mx.argmax(logits, axis=-1)
    logprobs = mx.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0] - mx.logsumexp(logits, axis=-1)
    return tokens, logprobs


# A logits processor takes the logits (rows, vocab) and each row's partial
# term (the tokens generated since the last separator), and gives the logits
# to choose from. Log-probabilities are then over what it leaves.
LogitsProcessor = Callable[[mx.array, Sequence[Sequence[int]]], mx.array]


def only_integers(logits: mx.array, partial_terms: Sequence[Sequence[int]]) -> mx.array:
    """`strict` decoding: every token that cannot continue a row's partial
    term into a canonical integer is set to -inf."""
    allowed = mx.array([strict_allowed(term) for term in partial_terms])
    return mx.where(allowed, logits, -mx.inf)


def processors_for(strict: bool) -> tuple[LogitsProcessor, ...]:
    return (only_integers,) if strict else ()


def apply_processors(
    logits: mx.array, partial_terms: Sequence[Sequence[int]], processors: Sequence[LogitsProcessor]
) -> mx.array:
    for processor in processors:
        logits = processor(logits, partial_terms)
    return logits


def choose(
    logits: mx.array, partial_terms: Sequence[Sequence[int]], processors: Sequence[LogitsProcessor]
) -> tuple[mx.array, mx.array]:
    """The greedy token of each row and its log-probability, after the processors."""
    return greedy_step(apply_processors(logits, partial_terms, processors))


@dataclass
class Terms:
    """The terms one sequence has produced so far, fed token by token."""

    n_terms: int
    max_new_tokens: int
    predictions: list[Prediction] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # the partial term
    logprob: float = 0.0

    def add(self, token: int, logprob: float) -> bool:
        """Record a generated token; True when the sequence needs no more."""
        self.tokens.append(token)
        self.logprob += logprob
        if token not in STOPPED_BY and len(self.tokens) < self.max_new_tokens:
            return False
        prediction = make_prediction(self.tokens, self.logprob)
        self.predictions.append(prediction)
        self.tokens, self.logprob = [], 0.0
        return prediction.value is None or len(self.predictions) == self.n_terms


Step = tuple[mx.array, mx.array]  # each line's chosen token and its log-probability


def greedy_loop(
    rows: list[Terms],
    first: Step,
    step: Callable[[mx.array, list[int]], Step],
    stats: DecodeStats,
    pipelined: bool,
    keep_lines: Optional[Callable[[mx.array], None]] = None,
) -> None:
    """Feed each row's chosen tokens back until every row has its terms.

    `first` is the choice after the prefill; `step(tokens, lines)` feeds one
    token to each line of the batch and gives the next choice (`lines`: the
    row each line computes). Pipelined, each step's tokens are fed before
    the host reads them, so the next forward pass overlaps the bookkeeping;
    a pipelined step cannot depend on the rows' partial terms. A finished row
    stays in the batch, its tokens ignored, until no more than half the lines
    are still needed; then `keep_lines` (if given) drops the others: dropping
    copies every layer's cache, which costs more than a few spare rows.
    """
    lines = list(range(len(rows)))
    finished: set[int] = set()
    current = first
    with stats.decoding():
        while True:
            if pipelined:
                following = step(current[0], lines)
                mx.async_eval(*following)
            for index, token, logprob in zip(lines, current[0].tolist(), current[1].tolist()):
                if index not in finished:
                    stats.generated_tokens += 1
                    if rows[index].add(token, logprob):
                        finished.add(index)
            if len(finished) == len(rows):
                return
            needed = [line for line, index in enumerate(lines) if index not in finished]
            if keep_lines is not None and len(needed) <= len(lines) // 2:
                kept = mx.array(needed)
                keep_lines(kept)
                lines = [lines[line] for line in needed]
                current = (current[0][kept], current[1][kept])
                if pipelined:
                    following = (following[0][kept], following[1][kept])
            current = following if pipelined else step(current[0], lines)
