"""Eval-shaped batches side by side: sequences/s, prefill and decode seconds per batch size.

    python scripts/eval_batch_speed.py MODEL PROMPTS.json [--batches 1,8,32] [--new-tokens 8] [--sorted]

PROMPTS.json is the benchmark's (scripts/bench.py writes it into its --work
folder): its "eval" list of term lists. Each batch size runs over all of
them in one process, as scripts/bench.py's eval figures do.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nextterm_mlx  # noqa: E402
from nextterm_mlx.cli import keep_freed_memory  # noqa: E402
from nextterm_mlx.decode import DecodeStats  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("prompts", type=Path)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--sorted", action="store_true", help="by length, as eval orders them")
    args = parser.parse_args()

    keep_freed_memory()  # as the command line does
    prompts = json.loads(args.prompts.read_text())["eval"]
    if args.sorted:
        prompts.sort(key=len)
    predictor = nextterm_mlx.load(args.model, dtype="float32", max_new_tokens=args.new_tokens)
    predictor.continue_batch(prompts[:8], 1)  # warm-up
    for batch in map(int, args.batches.split(",")):
        stats, started = DecodeStats(), time.perf_counter()
        for start in range(0, len(prompts), batch):
            predictor.continue_batch(prompts[start : start + batch], 1, stats)
        seconds = time.perf_counter() - started
        print(json.dumps({"batch": batch, "sequences_per_second": round(len(prompts) / seconds, 2),
                          "prefill_seconds": round(stats.prefill_seconds, 1),
                          "decode_seconds": round(stats.decode_seconds, 1)}))


if __name__ == "__main__":
    main()
