"""How much each quantization changes a model: size, next-term agreement, logits.

For an HF checkpoint folder it converts the unquantized model and 8-bit,
4-bit (groups of 32 and 64) and mixed_4_8 variants into a scratch cache,
then compares each variant with the unquantized model, both computing in
float32 (the quantized weights dequantized exactly):

- size on disk of each converted folder;
- greedy next-term agreement over synthetic sequences (scripts/synthetic_sequences.py),
  and agreement of the generated tokens themselves (the measure that means
  something on random weights, which rarely complete a term);
- max and mean |logit difference| at the prompts' last positions;
- for each sequence where a variant's tokens differ, the unquantized model's
  top-1/top-2 logit gap at the first differing token: the largest of these
  says how sure the unquantized model was where quantization changed it.

    python scripts/quant_fidelity.py CHECKPOINT [--sequences 500] [--prompts 50]
        [--max-new-tokens 192] [--max-terms N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nextterm_mlx  # noqa: E402
from nextterm_mlx.decode import prefill  # noqa: E402

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

from scripts.synthetic_sequences import sample  # noqa: E402

VARIANTS = {
    "unquantized": {},
    "q8 g64": {"q_bits": 8},
    "q4 g64": {"q_bits": 4},
    "q4 g32": {"q_bits": 4, "q_group_size": 32},
    "mixed_4_8 g64": {"q_recipe": "mixed_4_8"},
}


def last_logits(predictor, sequences) -> np.ndarray:
    rows = []
    for terms in sequences:
        cache = make_prompt_cache(predictor.model)
        rows.append(np.array(prefill(predictor.model, mx.array([predictor.prompt(terms)]), cache)[0]))
    return np.stack(rows)


def gap_at_divergence(predictor, terms, base_tokens, tokens) -> float:
    """The top-1/top-2 logit gap of `predictor` at the first token where `tokens` leaves `base_tokens`."""
    same = next(i for i, (a, b) in enumerate(zip(base_tokens + [None], tokens + [None])) if a != b)
    cache = make_prompt_cache(predictor.model)
    logits = np.array(prefill(predictor.model, mx.array([predictor.prompt(terms) + base_tokens[:same]]), cache)[0])
    top2 = np.sort(logits)[-2:]
    return float(top2[1] - top2[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--sequences", type=int, default=500)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-terms", type=int, default=None, help="keep at most this many terms of each sequence")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    sequences = [sample(rng)[1][: args.max_terms] for _ in range(args.sequences)]
    given = [terms[:-1] for terms in sequences]
    cache_dir = Path(tempfile.mkdtemp(prefix="nextterm-fidelity-"))

    rows, base = [], None
    for name, options in VARIANTS.items():
        predictor = nextterm_mlx.load(args.checkpoint, dtype="float32", max_new_tokens=args.max_new_tokens,
                                      cache_dir=cache_dir, **options)
        size = sum(p.stat().st_size for p in predictor.path.iterdir() if p.name.endswith(".safetensors"))
        values, tokens = [], []
        for start in range(0, len(given), args.batch_size):
            batch = predictor.continue_batch(given[start : start + args.batch_size])
            values += [predictions[0].value for predictions in batch]
            tokens += [predictions[0].tokens for predictions in batch]
        logits = last_logits(predictor, given[: args.prompts])
        if base is None:
            base = {"predictor": predictor, "values": values, "tokens": tokens, "logits": logits}
        gaps = [gap_at_divergence(base["predictor"], terms, base_tokens, own)
                for terms, base_tokens, own in zip(given, base["tokens"], tokens) if own != base_tokens]
        difference = np.abs(logits - base["logits"])
        rows.append({
            "variant": name,
            "weights_mb": size / 1e6,
            "agreement": float(np.mean([a == b for a, b in zip(values, base["values"])])),
            "token_agreement": float(np.mean([a == b for a, b in zip(tokens, base["tokens"])])),
            "accuracy": float(np.mean([v == terms[-1] for v, terms in zip(values, sequences)])),
            "max_logit_diff": float(difference.max()),
            "mean_logit_diff": float(difference.mean()),
            "largest_gap_at_divergence": max(gaps, default=None),
        })
        print(json.dumps(rows[-1]), file=sys.stderr)

    print(f"| variant | weights MB | agreement ({args.sequences} seq) | same tokens | accuracy | "
          f"max abs logit diff | mean abs logit diff ({args.prompts} prompts) | largest gap where tokens differ |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['weights_mb']:.2f} | {row['agreement']:.2%} | {row['token_agreement']:.2%} | "
              f"{row['accuracy']:.2%} | "
              f"{row['max_logit_diff']:.4f} | {row['mean_logit_diff']:.5f} | "
              f"{'-' if row['largest_gap_at_divergence'] is None else format(row['largest_gap_at_divergence'], '.4f')} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
