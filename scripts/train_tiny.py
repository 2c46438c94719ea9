"""Train a tiny NextTerm-compatible Qwen3 on synthetic integer sequences, on a CPU.

The model has NextTerm's 16-token vocabulary and prompt format, so the whole
runtime (conversion, decoding, evaluation) can be exercised on a model that
really predicts next terms, in minutes rather than GPU-days. Sequences come
from scripts/synthetic_sequences.py with a fixed seed; whole sequences are
packed into fixed-length blocks, each attending only to itself, and training
stops when the time budget runs out, with the learning rate decayed over it.

    python scripts/train_tiny.py [--minutes 29.5] [--out nextterm_mlx/models/tiny] [--optimizer adamw|muon]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections import deque
from pathlib import Path
from typing import Iterator

# OpenMP threads that spin while waiting made training ten times slower when
# another process shared the two cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from transformers import Qwen3Config, Qwen3ForCausalLM  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nextterm_mlx.vocab import BOS, EOS, PAD, VOCAB_SIZE, encode_prompt  # noqa: E402
from scripts.synthetic_sequences import FAMILIES, sample  # noqa: E402

IGNORE = -100  # label that cross-entropy skips


def family_weight(text: str) -> tuple[str, float]:
    """`name=weight` from the command line."""
    name, _, weight = text.partition("=")
    if name not in FAMILIES:
        raise argparse.ArgumentTypeError(f"unknown family {name!r}; families: {', '.join(FAMILIES)}")
    try:
        value = float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the weight must be a number, as in {name}=2") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the weight must be a non-negative number")
    return name, value


def make_model(hidden: int, layers: int, ffn: int, heads: int, kv_heads: int) -> Qwen3ForCausalLM:
    """A Qwen3 with NextTerm's token ids and untied embeddings, saved as NextTerm's checkpoints are."""
    config = Qwen3Config(
        vocab_size=VOCAB_SIZE,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attn_implementation="sdpa",
    )
    return Qwen3ForCausalLM(config)


class SequenceStream:
    """Token ids of synthetic sequences, [BOS, terms..., EOS], in the order the seed
    fixes. `generated` counts every sequence drawn, those dropped included, so
    that the evaluation can regenerate exactly the sequences training saw."""

    def __init__(self, seed: int, max_tokens: int, family_weights: dict[str, float] | None = None):
        self.rng = random.Random(seed)
        self.max_tokens = max_tokens
        self.family_weights = family_weights
        self.generated = 0
        self.dropped = 0

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            _, terms = sample(self.rng, self.family_weights)
            self.generated += 1
            ids = encode_prompt(terms) + [EOS]
            if len(ids) > self.max_tokens:
                self.dropped += 1
                continue
            yield ids


def packed_batches(stream: SequenceStream, batch: int, block: int, pool_size: int = 64) -> Iterator[tuple[torch.Tensor, ...]]:
    """(input_ids, position_ids, labels), each batch x block. Each row is filled
    with the first sequences of a small waiting pool that still fit, so little
    of it is padding. Positions restart at every BOS, which transformers reads
    as packed sequences and turns into a block-diagonal causal mask; labels
    skip BOS (nothing predicts it) and PAD."""
    sequences = iter(stream)
    pool: list[list[int]] = []
    while True:
        ids, positions = [], []
        for _ in range(batch):
            row, row_positions = [], []
            while True:
                pool += [next(sequences) for _ in range(pool_size - len(pool))]
                fitting = next((s for s in pool if len(row) + len(s) <= block), None)
                if fitting is None:
                    break
                pool.remove(fitting)
                row += fitting
                row_positions += range(len(fitting))
            row_positions += range(block - len(row))
            row += [PAD] * (block - len(row))
            ids.append(row)
            positions.append(row_positions)
        ids = torch.tensor(ids)
        labels = ids.masked_fill((ids == BOS) | (ids == PAD), IGNORE)
        yield ids, torch.tensor(positions), labels


class Optimizers:
    """Several optimizers over disjoint parameters, stepped together."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers
        self.param_groups = [group for optimizer in optimizers for group in optimizer.param_groups]

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


def make_optimizer(model: Qwen3ForCausalLM, name: str, lr: float) -> Optimizers:
    """AdamW, or Muon for the transformer layers' weight matrices with AdamW
    for the rest (embeddings, head, norms), as Muon is meant to be used. Muon's
    updates are scaled to AdamW's size, so one learning rate serves both."""
    named = list(model.named_parameters())
    hidden = [p for n, p in named if n.startswith("model.layers.") and p.dim() == 2] if name == "muon" else []
    hidden_ids = {id(p) for p in hidden}
    decay = [p for _, p in named if p.dim() >= 2 and id(p) not in hidden_ids]
    no_decay = [p for _, p in named if p.dim() < 2]
    adamw = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95),
    )
    if not hidden:
        return Optimizers(adamw)
    return Optimizers(adamw, torch.optim.Muon(hidden, lr=lr, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"))


def learning_rate(peak: float, step: int, warmup: int, progress: float) -> float:
    """Linear warm-up, then a cosine decay to zero over the time budget."""
    return peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=29.5, help="training time budget")
    parser.add_argument("--out", type=Path, default=Path("nextterm_mlx/models/tiny"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block", type=int, default=512, help="tokens per packed row; longer sequences are dropped")
    parser.add_argument("--batch", type=int, default=4, help="rows per step")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=100, help="warm-up steps")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=768)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--family-weight", type=family_weight, action="append", default=[], metavar="NAME=W",
                        help="relative share of a family in training, 1 unless given (the test set keeps "
                             "every family equally likely)")
    parser.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw",
                        help="muon: Muon for the layers' weight matrices, AdamW for the rest")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="skip torch.compile (it needs a C compiler)")
    args = parser.parse_args()

    family_weights = dict(args.family_weight) or None  # None: every family equally likely

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    model = make_model(args.hidden, args.layers, args.ffn, args.heads, args.kv_heads)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{parameters:,} parameters", flush=True)
    optimizer = make_optimizer(model, args.optimizer, args.lr)

    # At this size elementwise ops and dtype casts, not matmuls, take most of
    # a step; compiling fuses them: 1.33x the tokens/s here for ~45 s of
    # compiling, which counts against the budget.
    forward = torch.compile(model) if args.compile else model
    stream = SequenceStream(args.seed, args.block, family_weights)
    budget = args.minutes * 60
    start = last_report = time.monotonic()
    step = tokens = report_tokens = 0
    report_loss = report_steps = 0
    recent_losses: deque[float] = deque(maxlen=100)
    model.train()
    for ids, positions, labels in packed_batches(stream, args.batch, args.block):
        elapsed = time.monotonic() - start
        if elapsed >= budget:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args.lr, step, args.warmup, elapsed / budget)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = forward(input_ids=ids, position_ids=positions, labels=labels, use_cache=False).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

        step += 1
        trained = int((labels != IGNORE).sum())
        tokens += trained
        report_tokens += trained
        recent_losses.append(loss.item())
        report_loss += recent_losses[-1]
        report_steps += 1
        now = time.monotonic()
        if now - last_report >= 30:
            print(f"{now - start:6.0f}s step {step:5d}  loss {report_loss / report_steps:.4f}  "
                  f"{report_tokens / (now - last_report):,.0f} tokens/s  {tokens:,} tokens  "
                  f"lr {optimizer.param_groups[0]['lr']:.2e}", flush=True)
            last_report, report_tokens, report_loss, report_steps = now, 0, 0.0, 0

    minutes = (time.monotonic() - start) / 60
    print(f"done: {step} steps, {tokens:,} tokens in {minutes:.1f} min ({tokens / minutes / 60:,.0f} tokens/s), "
          f"{stream.generated:,} sequences drawn, {stream.dropped:,} longer than {args.block} tokens dropped",
          flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(args.out, safe_serialization=True)
    meta = {
        "tokens_trained": tokens,
        "sequences_generated": stream.generated,
        "sequences_dropped": stream.dropped,
        "seed": args.seed,
        "family_weights": family_weights,
        "minutes": round(minutes, 2),
        "steps": step,
        "final_loss": round(sum(recent_losses) / len(recent_losses), 4),
        "parameters": parameters,
        "script": "scripts/train_tiny.py",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    (args.out / "oeis_checkpoint_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
