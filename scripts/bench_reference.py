"""transformers' side of the benchmark: CPU prefill and decode, one at a time and batched.

    python scripts/bench_reference.py CHECKPOINT DTYPE PROMPTS.json [--batch 32] [--new-tokens 16] [--no-eval]

Prints one JSON object. Decoding is forced to run the full number of new
tokens (random weights would stop anywhere), so tok/s compare like for like.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nextterm_mlx.vocab import PAD, encode_prompt  # noqa: E402
from scripts.timing import median_time  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("dtype", choices=["bfloat16", "float32"])
    parser.add_argument("prompts")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-new-tokens", type=int, default=8)
    parser.add_argument("--no-eval", action="store_true", help="skip the batched eval")
    args = parser.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=getattr(torch, args.dtype)).eval()
    sequences = json.load(open(args.prompts))
    prompt = torch.tensor([encode_prompt(sequences["single"])])

    def generate(ids, new_tokens, attention_mask=None):
        with torch.no_grad():
            return model.generate(ids, attention_mask=attention_mask if attention_mask is not None
                                  else torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  do_sample=False, pad_token_id=PAD)

    with torch.no_grad():
        prefill = median_time(lambda: model(prompt), args.repeats)
    total = median_time(lambda: generate(prompt, args.new_tokens + 1), args.repeats)
    decode_tok_s = args.new_tokens / max(total - prefill, 1e-9)

    result = {"prompt_tokens": prompt.shape[1], "prefill_seconds": prefill, "decode_tok_s": decode_tok_s,
              "torch_threads": torch.get_num_threads()}
    if not args.no_eval:
        eval_prompts = [encode_prompt(terms) for terms in sequences["eval"]]
        started = time.perf_counter()
        for start in range(0, len(eval_prompts), args.batch):
            batch = eval_prompts[start : start + args.batch]
            longest = max(map(len, batch))
            ids = torch.tensor([[PAD] * (longest - len(p)) + p for p in batch])
            mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in batch])
            generate(ids, args.eval_new_tokens, mask)
        result["eval_batch"] = args.batch
        result["eval_sequences_per_second"] = len(eval_prompts) / (time.perf_counter() - started)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
