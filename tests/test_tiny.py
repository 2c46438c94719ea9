"""The shipped tiny model: it answers the easy sequences a person would check,
and batched eval predicts exactly what one-at-a-time prediction does."""

from __future__ import annotations

import json
import random
import subprocess

import nextterm_mlx


def nextterm(*args):
    done = subprocess.run(["nextterm-mlx", *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_it_continues_simple_progressions():
    assert nextterm("predict", "--model", "tiny", 2, 4, 6, 8) == "10"
    assert nextterm("predict", "--model", "tiny", "--terms", 3, 1, 2, 3) == "4 5 6"


def mixed_sequences(count: int) -> list[list[int]]:
    """Arithmetic, geometric and arbitrary sequences of 3 to 40 terms."""
    rng = random.Random(11)
    sequences = []
    for index in range(count):
        length = rng.randint(3, 40)
        kind = index % 3
        if kind == 0:
            start, step = rng.randint(-500, 500), rng.randint(-50, 50)
            sequences.append([start + k * step for k in range(length)])
        elif kind == 1:
            ratio = rng.choice([-3, -2, 2, 3])
            sequences.append([rng.randint(1, 9) * ratio**k for k in range(min(length, 25))])
        else:
            sequences.append([rng.randint(-10**6, 10**6) for _ in range(length)])
    return sequences


def test_batched_eval_predicts_what_predict_does(tmp_path):
    sequences = mixed_sequences(210)
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{i}", "seq": s}) + "\n" for i, s in enumerate(sequences)))
    out = tmp_path / "results.jsonl"
    nextterm("eval", path, "--model", "tiny", "--batch-size", 16, "--out", out)
    results = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(results) == len(sequences)

    predictor = nextterm_mlx.load("tiny")
    for i, terms in enumerate(sequences):
        assert results[f"s{i}"]["predicted"] == predictor.predict(terms[:-1]).value, terms
    assert sum(r["correct"] for r in results.values()) > len(sequences) // 4  # it does predict something
