"""Make the tiny random checkpoints and transformers reference outputs the tests use.

Three tiny random checkpoints in the published format (scripts/random_checkpoint.py):
untied embeddings with a transformers 4.x config and non-default rope_theta
and rms_norm_eps, untied with a 5.x config, and tied. Only cases whose every
generated step keeps a top-1/top-2 logit gap of at least MIN_MARGIN are kept.

    python scripts/make_fixtures.py [tests/fixtures]

Writes, for each fixture NAME: NAME/ (the checkpoint) and NAME.reference.json,
and tiny.reference.json for the shipped tiny model (nextterm_mlx/models/tiny).
Needs torch and transformers (pip install -e '.[reference]').
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nextterm_mlx.convert.reference import reference_outputs  # noqa: E402
from nextterm_mlx.resolve import TINY_CHECKPOINT  # noqa: E402
from scripts.random_checkpoint import make_random_checkpoint  # noqa: E402

MIN_MARGIN = 0.05

FIXTURES = {
    "untied-v4": dict(seed=1, tied=False, style="v4", rope_theta=50000.0, rms_norm_eps=1e-5),
    "untied-v5": dict(seed=2, tied=False, style="v5", rope_theta=10000.0, rms_norm_eps=1e-6),
    "tied-v5": dict(seed=3, tied=True, style="v5", rope_theta=1000000.0, rms_norm_eps=1e-6),
}


def candidate_cases(rng: random.Random) -> list[dict]:
    """Hand-made prompts for each required shape, then random ones."""
    cases = [
        {"terms": [1, 1, 2, 3, 5, 8]},
        {"terms": [7]},
        {"terms": [0]},
        {"terms": [-3, 0, 3, 0, -3]},
        {"terms": [-1, 2, -4, 8, -16]},
        {"terms": [int("9" * 25 + "1" * 25), 2, 0]},
        {"terms": [-int("31415926535897932384626433832795028841971693993751058209")]},
        {"terms": list(range(0, 300, 2)) + [-5, 0]},  # a prompt of 500+ tokens
        {"terms": [1, 2, 3], "continue": 4},
        {"terms": [5, 0, -5], "continue": 3},
        {"terms": [2, 4, 6, 8], "max_new_tokens": 3},
    ]
    for _ in range(120):
        length = rng.randint(1, 30)
        digits = rng.choice([1, 2, 3, 6, 20])
        terms = [rng.randint(-(10**digits), 10**digits) for _ in range(length)]
        cases.append({"terms": terms, "max_new_tokens": rng.choice([4, 8, 16, 192]), "continue": rng.choice([1, 1, 2])})
    return cases


def trained_cases(rng: random.Random) -> list[dict]:
    """Sequences a trained model should continue, for the shipped tiny model."""
    cases = [{"terms": [2, 4, 6, 8]}, {"terms": [1, 2, 3], "continue": 3}, {"terms": [1, 1, 2, 3, 5, 8], "continue": 2},
             {"terms": [1, 4, 9, 16, 25]}, {"terms": [-5, -10, -15]}, {"terms": [3, -6, 12, -24]}]
    for _ in range(60):
        start, step = rng.randint(-999, 999), rng.randint(-99, 99)
        cases.append({"terms": [start + k * step for k in range(rng.randint(3, 20))], "continue": rng.choice([1, 2])})
    return cases


def stop_kind(tokens: list[int]) -> str:
    return {11: "separator", 13: "eos", 14: "pad"}.get(tokens[-1], "max_tokens")


def write_reference(folder: Path, candidates: list[dict], out: Path) -> None:
    reference = reference_outputs(folder, candidates)
    kept = [case for case in reference["cases"] if case["min_margin"] >= MIN_MARGIN]
    reference["cases"] = kept
    reference["min_margin_kept"] = MIN_MARGIN
    out.write_text(json.dumps(reference, indent=1))
    stops = sorted({stop_kind(g) for case in kept for g in case["generated"]})
    longest = max(len(case["prompt"]) for case in kept)
    print(f"{out.name}: kept {len(kept)}/{len(candidates)} cases, stops {stops}, longest prompt {longest}")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
    out.mkdir(parents=True, exist_ok=True)
    for name, spec in FIXTURES.items():
        make_random_checkpoint(out / name, "tiny", **spec)
        write_reference(out / name, candidate_cases(random.Random(spec["seed"])), out / f"{name}.reference.json")
    # The shipped tiny model: trained, so its logits are far from uniform.
    rng = random.Random(4)
    write_reference(TINY_CHECKPOINT, trained_cases(rng) + candidate_cases(rng)[:40], out / "tiny.reference.json")


if __name__ == "__main__":
    main()
