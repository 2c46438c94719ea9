"""A second CPU stream for the parts of a Qwen3 layer that MLX runs on one thread.

On a CPU, MLX runs a stream's operations one after another on the stream's
own thread. The BLAS spreads the matrix products over the cores, but the
SwiGLU activation (MLX's: a scalar exp per element here) and attention (one
small product per head and sequence) run on that one thread while the other
cores wait. With enough rows, each of the two is cut in halves and one half is
computed on a second stream, so that two threads work at once. The halves
are independent (rows of an elementwise operation; groups of query heads
with the key and value heads they share), so the result is bit-for-bit the
whole's.

Measured on the 440M shape, 2 cores: a decode step of 32 sequences took
332-356 ms instead of 380-433; at 8 sequences the two were within noise,
and at 2 sequences or 8 positions of one the split was no faster, hence
MIN_ROWS.

It serves where nextterm-mlx's own primitives (primitives.py) do not: with
them, halving neither gained nor lost for SwiGLU (a 32-sequence step 302
against 303 ms) and lost for attention (334 against 315 ms).

The model's layers look both functions up in mlx_lm.models.qwen3, so
install() replaces them there, for the whole process; below MIN_ROWS, or for
inputs they do not handle, the replacements call the originals.
NEXTTERM_MLX_TWO_STREAMS=0 leaves mlx-lm's functions alone.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Optional

import mlx.core as mx
from mlx_lm.models import qwen3

# Rows (sequences x positions) from which halving pays.
MIN_ROWS = 16

_second_stream: Optional[mx.Stream] = None
_installed = False


def second_stream() -> mx.Stream:
    global _second_stream
    if _second_stream is None:
        _second_stream = mx.new_stream(mx.cpu)
    return _second_stream


def enabled() -> bool:
    return os.environ.get("NEXTTERM_MLX_TWO_STREAMS", "1") != "0"


def halved_swiglu(swiglu: Callable[[mx.array, mx.array], mx.array]) -> Callable[[mx.array, mx.array], mx.array]:
    """swiglu(gate, x) with the first half of the rows on the second stream."""

    @functools.wraps(swiglu)
    def swiglu_on_two_streams(gate: mx.array, x: mx.array) -> mx.array:
        rows = gate.size // gate.shape[-1] if gate.ndim else 0
        if rows < MIN_ROWS or gate.shape != x.shape:
            return swiglu(gate, x)
        gate_rows, x_rows = gate.reshape(rows, -1), x.reshape(rows, -1)
        half = rows // 2
        with mx.stream(second_stream()):
            first = swiglu(gate_rows[:half], x_rows[:half])
        rest = swiglu(gate_rows[half:], x_rows[half:])
        return mx.concatenate([first, rest]).reshape(gate.shape)

    return swiglu_on_two_streams


def halved_attention(attention: Callable[..., mx.array]) -> Callable[..., mx.array]:
    """mlx-lm's scaled_dot_product_attention with the first half of the key
    and value heads, and the query heads that read them, on the second stream."""

    @functools.wraps(attention)
    def attention_on_two_streams(queries: mx.array, keys: mx.array, values: mx.array, cache: Any,
                                 scale: float, mask: Any, sinks: Optional[mx.array] = None) -> mx.array:
        batch, heads, length, _ = queries.shape
        kv_heads = keys.shape[1]
        per_head_mask = isinstance(mask, mx.array) and mask.ndim == 4 and mask.shape[1] != 1
        if (batch * length < MIN_ROWS or kv_heads % 2 or heads % kv_heads or sinks is not None
                or per_head_mask or hasattr(cache, "bits")):
            return attention(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
        # Query head i reads key head i // (heads // kv_heads): the first
        # half of the query heads reads exactly the first half of the keys.
        q_half, kv_half = heads // 2, kv_heads // 2
        with mx.stream(second_stream()):
            first = attention(queries[:, :q_half], keys[:, :kv_half], values[:, :kv_half],
                              cache=cache, scale=scale, mask=mask)
        rest = attention(queries[:, q_half:], keys[:, kv_half:], values[:, kv_half:],
                         cache=cache, scale=scale, mask=mask)
        return mx.concatenate([first, rest], axis=1)

    return attention_on_two_streams


def installed() -> bool:
    return _installed


def install() -> None:
    """Route mlx-lm's Qwen3 layers through the halved functions, once per process."""
    global _installed
    if enabled() and not _installed:
        qwen3.swiglu = halved_swiglu(qwen3.swiglu)
        qwen3.scaled_dot_product_attention = halved_attention(qwen3.scaled_dot_product_attention)
        _installed = True
