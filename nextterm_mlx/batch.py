"""Greedy decoding of several sequences at once, in one left-padded batch."""

from __future__ import annotations

from typing import Optional, Sequence

import mlx.core as mx
import mlx.nn as nn

from .decode import (DEFAULT_MAX_NEW_TOKENS, DecodeStats, LogitsProcessor, Prediction, Terms, choose,
                     greedy_loop, prefill_batch)

# On a CPU, batches smaller than this feed each step's tokens before the
# host reads them. Larger ones wait for each step: building the next graph
# early saves little against a long step, and on a CPU with few cores the
# host thread then competes with the ones computing. A GPU computes while
# the host builds, so there every batch is fed ahead.
CPU_PIPELINE_MAX_ROWS = 16


def feeds_ahead(rows: int) -> bool:
    return mx.default_device().type == mx.DeviceType.gpu or rows < CPU_PIPELINE_MAX_ROWS


def decode_batch(
    model: nn.Module,
    prompts: list[list[int]],
    n_terms: int = 1,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    stats: Optional[DecodeStats] = None,
    processors: Sequence[LogitsProcessor] = (),
) -> list[list[Prediction]]:
    """The next `n_terms` terms of each prompt, decoded greedily in one batch.

    The prompts are prefilled without padding (see `prefill_unevaluated`);
    a row leaves the batch when it has its terms or the model gives no next
    term (the last prediction's `stop` says why). `processors` (e.g.
    `only_integers`) shape each step's logits.
    """
    stats = stats if stats is not None else DecodeStats()
    logits, cache = prefill_batch(model, prompts, stats)
    rows = [Terms(n_terms, max_new_tokens) for _ in prompts]

    def step(tokens: mx.array, lines: list[int]):
        logits = model(tokens[:, None], cache=cache)[:, -1].astype(mx.float32)
        return choose(logits, [rows[index].tokens for index in lines], processors)

    def keep_lines(kept: mx.array) -> None:
        for layer_cache in cache:
            layer_cache.filter(kept)

    first = choose(logits, [[] for _ in prompts], processors)
    pipelined = not processors and feeds_ahead(len(prompts))
    greedy_loop(rows, first, step, stats, pipelined, keep_lines if len(prompts) > 1 else None)
    return [row.predictions for row in rows]
