"""SwiGLU and attention cut in halves, one computed on a second CPU stream.

On a CPU, MLX runs a stream's operations one after another on the stream's
own thread: an elementwise activation or a per-head attention runs on that
one thread while the other cores wait. With enough rows, each of the two is cut in halves and one half
is computed on a second stream, so that two threads work at once. The
halves are independent (rows of an elementwise operation; groups of query
heads with the key and value heads they share), so the result is bit for
bit the whole's. kernels.py uses them for what its primitives do not take.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import mlx.core as mx

# Rows (sequences x positions) from which a second thread pays for the split.
MIN_ROWS = 16


@lru_cache(maxsize=None)
def second_stream() -> mx.Stream:
    return mx.new_stream(mx.cpu)


def halved_swiglu(swiglu: Callable[[mx.array, mx.array], mx.array], gate: mx.array, x: mx.array) -> mx.array:
    """swiglu(gate, x) with the first half of the rows on the second stream."""
    rows = gate.size // gate.shape[-1] if gate.ndim else 0
    if rows < MIN_ROWS or gate.shape != x.shape:
        return swiglu(gate, x)
    gate_rows, x_rows = gate.reshape(rows, -1), x.reshape(rows, -1)
    half = rows // 2
    with mx.stream(second_stream()):
        first = swiglu(gate_rows[:half], x_rows[:half])
    rest = swiglu(gate_rows[half:], x_rows[half:])
    return mx.concatenate([first, rest]).reshape(gate.shape)


def halved_attention(attention: Callable[..., mx.array], queries: mx.array, keys: mx.array, values: mx.array,
                     cache: Any, scale: float, mask: Any) -> mx.array:
    """attention(...) with the first half of the key and value heads, and
    the query heads that read them, on the second stream."""
    batch, heads, length, _ = queries.shape
    kv_heads = keys.shape[1]
    per_head_mask = isinstance(mask, mx.array) and mask.ndim == 4 and mask.shape[1] != 1
    if batch * length < MIN_ROWS or kv_heads % 2 or heads % kv_heads or per_head_mask or hasattr(cache, "bits"):
        return attention(queries, keys, values, cache, scale, mask)
    # Query head i reads key head i // (heads // kv_heads): the first half
    # of the query heads reads exactly the first half of the keys.
    q_half, kv_half = heads // 2, kv_heads // 2
    with mx.stream(second_stream()):
        first = attention(queries[:, :q_half], keys[:, :kv_half], values[:, :kv_half], cache, scale, mask)
    rest = attention(queries[:, q_half:], keys[:, kv_half:], values[:, kv_half:], cache, scale, mask)
    # Each half is (B, L, its heads * head_dim): side by side, the heads are in order.
    return mx.concatenate([first, rest], axis=-1)
