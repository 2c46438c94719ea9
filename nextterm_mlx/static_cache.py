"""One-sequence decoding with a compiled step over a fixed-capacity KV cache.

Per-token work besides the weight products (building and dispatching the
graph of some 28 x 15 operations; on a CPU, MLX's one-thread elementwise
kernels too) limits a small or GPU-resident model. mx.compile fuses and
replays it. But a compiled function is traced once per input shape, and
mlx-lm's KV cache grows by one position a step. Here the cache is a buffer
of fixed capacity (a multiple of CAPACITY_STEP positions) and the write
position is an array, so one traced step serves every position up to the
capacity; positions past the written ones are masked out. The model sees
an ordinary KV cache interface (PositionedCache) whose offset is an array,
and rotates the step's position with it.

The step chooses its token inside the compiled function, so it takes no
logits processors: `strict` decoding of one sequence runs as a batch of one.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from .decode import DecodeStats, Prediction, Terms, greedy_loop, greedy_step, prefill_chunk

# The step attends over the buffers' whole capacity, written or not, so
# unwritten positions cost time; but each capacity is traced once per
# process. The capacity follows the sequence in steps of this many positions.
CAPACITY_STEP = 32


class PositionedCache:
    """The KV cache interface mlx-lm's attention uses, over one layer's
    buffers, writing at an array position."""

    def __init__(self, keys: mx.array, values: mx.array, position: mx.array):
        self.keys, self.values, self.offset = keys, values, position

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        self.keys = mx.slice_update(self.keys, keys, self.offset, axes=(2,))
        self.values = mx.slice_update(self.values, values, self.offset, axes=(2,))
        self.offset = self.offset + keys.shape[2]
        return self.keys, self.values

    def make_mask(self, length: int, **_) -> mx.array:
        """Query i (at position offset + i) sees the positions up to its own."""
        return mx.arange(self.keys.shape[2])[None] <= self.offset + mx.arange(length)[:, None]


class StaticDecoder:
    """Prefill and greedy steps for one sequence at a time, reused across
    sequences so the step is traced once; `length` positions are filled."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.buffers: list[mx.array] = []  # keys and values of each layer
        self.length = 0
        self._step = mx.compile(partial(greedy_step_over_buffers, model))

    def reset(self) -> None:
        """Start a new sequence; the buffers' stale contents are masked out."""
        self.length = 0

    def _reserve(self, positions: int) -> None:
        """Room for `positions` more: a new sequence gets buffers sized for
        it (not for the longest one before it), a growing one more at the end."""
        needed = self.length + positions
        capacity = -(-needed // CAPACITY_STEP) * CAPACITY_STEP
        current = self.buffers[0].shape[2] if self.buffers else 0
        if self.length == 0 and current != capacity:
            self.buffers = [self._empty(capacity) for _ in range(2 * len(self.model.layers))]
        elif needed > current:
            self.buffers = [mx.concatenate([b, self._empty(capacity - current)], axis=2) for b in self.buffers]

    def _empty(self, positions: int) -> mx.array:
        args = self.model.args
        shape = (1, args.num_key_value_heads, positions, args.head_dim)
        return mx.zeros(shape, self.model.model.embed_tokens.weight.dtype)

    def prefill(self, tokens: list[int]) -> mx.array:
        """Feed `tokens` eagerly, in chunks; float32 logits at the last."""
        self._reserve(len(tokens))
        positions = prefill_chunk(self.model, 1)
        for start in range(0, len(tokens), positions):
            chunk = tokens[start : start + positions]
            views = views_over(self.buffers, mx.array(self.length))
            logits = self.model(mx.array([chunk]), cache=views)
            self.buffers = [b for view in views for b in (view.keys, view.values)]
            self.length += len(chunk)
        return logits[:, -1].astype(mx.float32)

    def step(self, token: mx.array) -> tuple[mx.array, mx.array]:
        """Feed one token (an array: it may not be computed yet); the next
        greedy token and its log-probability, lazily."""
        self._reserve(1)
        choice, logprob, *self.buffers = self._step(token, mx.array(self.length), *self.buffers)
        self.length += 1
        return choice, logprob


def views_over(buffers: list[mx.array], position: mx.array) -> list[PositionedCache]:
    return [PositionedCache(buffers[i], buffers[i + 1], position) for i in range(0, len(buffers), 2)]


def greedy_step_over_buffers(model: nn.Module, token: mx.array, position: mx.array, *buffers: mx.array):
    """The function that is compiled: one token in at `position`, the greedy
    next token, its log-probability and the updated buffers out."""
    views = views_over(list(buffers), position)
    logits = model(token.reshape(1, 1), cache=views)[:, -1].astype(mx.float32)
    choice, logprob = greedy_step(logits)
    return (choice, logprob, *[b for view in views for b in (view.keys, view.values)])


def decode_one(
    decoder: StaticDecoder,
    prompt: list[int],
    n_terms: int,
    max_new_tokens: int,
    stats: Optional[DecodeStats] = None,
) -> list[Prediction]:
    """Greedy decoding of one sequence with the compiled step, pipelined (a
    feed past the last token costs only time: the next sequence starts over)."""
    stats = stats if stats is not None else DecodeStats()
    with stats.prefilling([prompt]):
        decoder.reset()
        first = greedy_step(decoder.prefill(prompt))
        mx.eval(*first)
    terms = Terms(n_terms, max_new_tokens)
    greedy_loop([terms], first, lambda token, _: decoder.step(token), stats, pipelined=True)
    return terms.predictions
