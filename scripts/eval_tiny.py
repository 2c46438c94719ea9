"""Next-term accuracy of the tiny model on synthetic sequences it never saw, and on OEIS.

The test sequences come from another seed than training; any that the
training stream also drew (regenerated from the seed, count and family
weights in the checkpoint's oeis_checkpoint_meta.json) are removed, so the figures measure
generalisation, not recall. The last term of each sequence is predicted from
the others through the public API, `nextterm_mlx.load(folder).predict(terms)`.

    python scripts/eval_tiny.py [--model nextterm_mlx/models/tiny] [--n 2000] [--seed 1] [--beams K]
                                [--oeis /work/shared/data/oeis_sample_10k.txt] [--json PATH]

Greedy decoding by default; `--beams K` takes the most likely candidate of a
K-beam search instead.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nextterm_mlx  # noqa: E402
from nextterm_mlx.vocab import encode_prompt  # noqa: E402
from scripts.synthetic_sequences import sample  # noqa: E402


def training_sequences(meta: dict) -> set[tuple[int, ...]]:
    """Every sequence the training run drew, regenerated from its seed."""
    rng = random.Random(meta["seed"])
    weights = meta.get("family_weights")  # absent: every family equally likely
    return {tuple(sample(rng, weights)[1]) for _ in range(meta["sequences_generated"])}


def unseen_test_set(seed: int, n: int, seen: set[tuple[int, ...]]) -> tuple[list[tuple[str, list[int]]], int]:
    """n sequences from `seed`, minus those training saw; returns them and how many were removed."""
    rng = random.Random(seed)
    drawn = [sample(rng) for _ in range(n)]
    kept = [(family, terms) for family, terms in drawn if tuple(terms) not in seen]
    return kept, len(drawn) - len(kept)


def accuracy_rows(results: list[tuple[str, bool]]) -> list[dict]:
    """Correct / total per group, in the groups' sorted order."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for group, correct in results:
        groups[group].append(correct)
    return [{"group": g, "n": len(v), "correct": sum(v), "accuracy": sum(v) / len(v)} for g, v in sorted(groups.items())]


def markdown(title: str, rows: list[dict]) -> str:
    lines = [f"| {title} | n | correct | accuracy |", "|---|---:|---:|---:|"]
    lines += [f"| {r['group']} | {r['n']} | {r['correct']} | {100 * r['accuracy']:.1f}% |" for r in rows]
    return "\n".join(lines)


def next_term(predictor: nextterm_mlx.Predictor, terms: list[int], beams: int) -> int | None:
    """The most likely candidate of a `beams`-beam search (one beam is greedy decoding)."""
    best = predictor.candidates(terms, beams=beams, top=1).candidates
    return best[0].value if best else None


def evaluate_synthetic(predictor: nextterm_mlx.Predictor, tests: list[tuple[str, list[int]]], beams: int) -> dict:
    by_family, by_digits = [], []
    start = time.monotonic()
    for i, (family, terms) in enumerate(tests, 1):
        answer = terms[-1]
        correct = next_term(predictor, terms[:-1], beams) == answer
        by_family.append((family, correct))
        by_digits.append((f"{len(str(abs(answer))):2d} digits", correct))
        if i % 500 == 0:
            print(f"  {i}/{len(tests)} in {time.monotonic() - start:.0f}s", file=sys.stderr, flush=True)
    overall = accuracy_rows([("all", c) for _, c in by_family])
    return {"by_family": accuracy_rows(by_family) + overall, "by_answer_digits": accuracy_rows(by_digits) + overall}


def evaluate_oeis(predictor: nextterm_mlx.Predictor, path: Path, limit: int, beams: int) -> dict:
    """The last term of each of the first `limit` lines (`A000045 ,0,1,1,2,3,5,`) from the rest."""
    correct = evaluated = too_long = 0
    for line in path.read_text().splitlines()[:limit]:
        terms = [int(t) for t in line.split(",")[1:] if t.strip()]
        if len(encode_prompt(terms[:-1])) > predictor.max_positions:
            too_long += 1
            continue
        evaluated += 1
        correct += next_term(predictor, terms[:-1], beams) == terms[-1]
    return {"sequences": limit, "evaluated": evaluated, "skipped_too_long": too_long, "correct": correct,
            "accuracy": correct / evaluated if evaluated else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("nextterm_mlx/models/tiny"))
    parser.add_argument("--n", type=int, default=2000, help="test sequences drawn before removing seen ones")
    parser.add_argument("--seed", type=int, default=1, help="test seed; must differ from the training seed")
    parser.add_argument("--beams", type=int, default=1, help="beam search with this many beams (1: greedy)")
    parser.add_argument("--oeis", type=Path, help="also report accuracy on the first 1,000 sequences of this file")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    meta = json.loads((args.model / "oeis_checkpoint_meta.json").read_text())
    if args.seed == meta["seed"]:
        parser.error(f"the test seed {args.seed} is the training seed; pick another")
    seen = training_sequences(meta)
    tests, removed = unseen_test_set(args.seed, args.n, seen)
    print(f"{removed} of {args.n} test sequences (seed {args.seed}) were among the {meta['sequences_generated']:,} "
          f"drawn in training (seed {meta['seed']}) and were removed; {len(tests)} remain\n")

    predictor = nextterm_mlx.load(args.model)
    figures = {"model": str(args.model), "test_seed": args.seed, "drawn": args.n, "removed_as_seen": removed,
               "beams": args.beams}
    figures.update(evaluate_synthetic(predictor, tests, args.beams))
    print(markdown("family", figures["by_family"]) + "\n")
    print(markdown("answer length", figures["by_answer_digits"]) + "\n")

    if args.oeis:
        figures["oeis"] = evaluate_oeis(predictor, args.oeis, 1000, args.beams)
        oeis = figures["oeis"]
        print(f"OEIS, first {oeis['sequences']} of {args.oeis.name}: {oeis['correct']}/{oeis['evaluated']} = "
              f"{100 * oeis['accuracy']:.1f}% ({oeis['skipped_too_long']} skipped: prompt longer than "
              f"{predictor.max_positions} tokens)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
