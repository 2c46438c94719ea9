"""How often computing in bfloat16 (or float16) changes a next term against float32.

float32 is the default because the reference computes in it; bfloat16 is
the opt-in for speed on a GPU. For each model this predicts the next term of
each sequence twice, on the default device unless --device says otherwise,
and counts the sequences whose greedy answer differs.

    python scripts/dtype_agreement.py [--model NAME|PATH ...] [--sequences 500] [--dtype bfloat16]
        [--device cpu|gpu] [--json PATH]

The sequences are synthetic (scripts/synthetic_sequences.py), or, with
--fixtures, the prompts of the committed reference cases in tests/fixtures.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nextterm_mlx  # noqa: E402

from scripts.synthetic_sequences import sample  # noqa: E402


def agreement(model: str, sequences: list[list[int]], dtype: str, device: str | None, batch: int) -> dict:
    exact = nextterm_mlx.load(model, dtype="float32", device=device)
    fast = nextterm_mlx.load(model, dtype=dtype, device=device)
    changed = []
    for start in range(0, len(sequences), batch):
        chunk = sequences[start : start + batch]
        for terms, a, b in zip(chunk, exact.continue_batch(chunk), fast.continue_batch(chunk)):
            if a[0].tokens != b[0].tokens:
                changed.append({"terms": terms, "float32": a[0].value, dtype: b[0].value})
    return {"model": model, "dtype": dtype, "device": exact.info()["device"], "sequences": len(sequences),
            "changed": len(changed), "changed_fraction": len(changed) / len(sequences), "examples": changed[:5]}


def fixture_prompts() -> dict[str, list[list[int]]]:
    prompts = {}
    for path in sorted((ROOT / "tests" / "fixtures").glob("*.reference.json")):
        name = path.name.removesuffix(".reference.json")
        folder = "tiny" if name == "tiny" else str(ROOT / "tests" / "fixtures" / name)
        prompts[folder] = [case["terms"] for case in json.loads(path.read_text())["cases"]]
    return prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="default: tiny")
    parser.add_argument("--fixtures", action="store_true", help="the fixture checkpoints and their reference prompts")
    parser.add_argument("--sequences", type=int, default=500)
    parser.add_argument("--terms", type=int, default=12, help="terms given per synthetic sequence")
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--device", choices=["cpu", "gpu"], default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    if args.fixtures:
        work = fixture_prompts()
    else:
        rng = random.Random(args.seed)
        sequences = [sample(rng)[1][: args.terms] for _ in range(args.sequences)]
        work = {model: sequences for model in args.model or ["tiny"]}
    results = [agreement(model, sequences, args.dtype, args.device, args.batch_size) for model, sequences in work.items()]
    for r in results:
        print(f"{Path(r['model']).name}: {args.dtype} changed {r['changed']} of {r['sequences']} next terms "
              f"({r['changed_fraction']:.1%}) against float32 on {r['device']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
