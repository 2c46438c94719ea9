"""The local OEIS index at the real OEIS's size: build time, size, search latency, recall.

    python scripts/oeis_bench.py /work/shared/data/oeis_sample_10k.txt [--work DIR] [--sequences 390000]

The OEIS's own files can't be fetched here, so the script makes a stripped
file of that size (about 390,000 sequences): the sample's sequences, plus
sequences of the same lengths and magnitudes made from random sample ones:
- 60% random terms with the digit counts and signs of a sample sequence's,
- 30% a sample sequence times a small factor plus a small constant (its
  structure kept),
- 10% short periodic patterns of small numbers (the many 0/1 sequences of the
  OEIS, whose windows recur in many sequences).
It builds the index from stripped.gz and names.gz in --work, then times 1,000
queries of 4 to 12 terms cut from random places of random sequences (limit
10, the command's default), and checks that each query, searched without a
limit, finds the sequence it was cut from. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nextterm_mlx.oeis import Index, build_index  # noqa: E402
from nextterm_mlx.sequence_files import read_sequence_file  # noqa: E402

ALL = 10**9  # a limit no query reaches: every match


def shaped_like(rng: random.Random, template: list[int]) -> list[int]:
    def term(t: int) -> int:
        digits = len(str(abs(t)))
        value = rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)
        return -value if t < 0 else value

    return [term(t) for t in template]


def made_sequence(rng: random.Random, template: list[int]) -> list[int]:
    kind = rng.random()
    if kind < 0.6:
        return shaped_like(rng, template)
    if kind < 0.9:
        factor, constant = rng.randint(2, 9), rng.randint(-9, 9)
        return [factor * t + constant for t in template]
    period = [rng.randint(0, 3) for _ in range(rng.randint(1, 6))]
    return [period[i % len(period)] for i in range(len(template))]


def make_files(sample: Path, work: Path, total: int, seed: int) -> dict[int, list[int]]:
    """stripped.gz and names.gz in `work`; the sequences by A-number."""
    rng = random.Random(seed)
    given = {int(s.id[1:]): s.terms for s in read_sequence_file(sample, "oeis").sequences}
    templates = list(given.values())
    free = (n for n in range(1, 10 * total) if n not in given)
    sequences = dict(given)
    for _ in range(total - len(given)):
        sequences[next(free)] = made_sequence(rng, rng.choice(templates))
    sequences = dict(sorted(sequences.items()))
    if not (work / "names.gz").exists():
        with gzip.open(work / "stripped.gz", "wt") as f:
            f.write("# OEIS-like data made by scripts/oeis_bench.py\n")
            f.writelines(f"A{n:06d} ,{''.join(f'{t},' for t in terms)}\n" for n, terms in sequences.items())
        with gzip.open(work / "names.gz", "wt") as f:
            f.writelines(f"A{n:06d} {'Sample' if n in given else 'Made'} sequence {n}.\n" for n in sequences)
    return sequences


def queries(rng: random.Random, sequences: dict[int, list[int]], n: int) -> list[tuple[int, list[int]]]:
    ids = list(sequences)
    picked = []
    while len(picked) < n:
        id = rng.choice(ids)
        terms = sequences[id]
        length = rng.randint(4, 12)
        if len(terms) >= length:
            start = rng.randint(0, len(terms) - length)
            picked.append((id, terms[start:start + length]))
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sample", type=Path, help="an OEIS stripped file, e.g. the shared 10k sample")
    parser.add_argument("--work", type=Path, default=Path("/tmp/nextterm-oeis-bench"))
    parser.add_argument("--sequences", type=int, default=390_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    sequences = make_files(args.sample, args.work, args.sequences, args.seed)
    started = time.perf_counter()
    report = build_index(args.work / "stripped.gz", args.work / "names.gz", args.work / "index.sqlite", "bench")
    build_seconds = time.perf_counter() - started

    picked = queries(random.Random(args.seed + 1), sequences, args.queries)
    latencies, found = [], 0
    with Index(args.work / "index.sqlite") as index:
        for id, terms in picked:
            started = time.perf_counter()
            index.search(terms, limit=10)
            latencies.append(time.perf_counter() - started)
        for id, terms in picked:
            found += any(m.id == f"A{id:06d}" for m in index.search(terms, limit=ALL))
    latencies.sort()
    print(json.dumps({
        "sequences": report.sequences,
        "build_seconds": round(build_seconds, 1),
        "index_bytes": (args.work / "index.sqlite").stat().st_size,
        "stripped_gz_bytes": (args.work / "stripped.gz").stat().st_size,
        "queries": len(picked),
        "latency_ms_median": round(1000 * statistics.median(latencies), 2),
        "latency_ms_p99": round(1000 * latencies[int(0.99 * len(latencies)) - 1], 2),
        "latency_ms_max": round(1000 * latencies[-1], 2),
        "recall": found / len(picked),
    }))


if __name__ == "__main__":
    main()
