"""Integer sequences from simple rules, to train and test a tiny NextTerm-compatible model.

Each family is a function of a `random.Random` that returns an endless
iterator of terms; `sample` picks a family and a length (3 to 40 terms) and
cuts the sequence before a term would exceed 20 digits. Everything depends
only on the generator's state, so a seed names a whole stream of sequences.

    python scripts/synthetic_sequences.py [--n 500] [--seed 7] > sequences.txt

writes sequences one per line, comma-separated, for `nextterm-mlx eval`.
"""

from __future__ import annotations

import argparse
import random
from itertools import count
from typing import Iterator

MAX_DIGITS = 20
MIN_TERMS = 3
MAX_TERMS = 40
LIMIT = 10**MAX_DIGITS  # every kept term has |term| < LIMIT


def magnitude(rng: random.Random, max_digits: int = MAX_DIGITS) -> int:
    """A non-negative integer whose digit count falls off geometrically, so
    small numbers dominate but 20-digit ones still occur."""
    digits = rng.choices(range(1, max_digits + 1), weights=[0.55**d for d in range(max_digits)])[0]
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def signed(rng: random.Random, max_digits: int = MAX_DIGITS) -> int:
    value = magnitude(rng, max_digits)
    return -value if rng.random() < 0.3 else value


def arithmetic(rng: random.Random) -> Iterator[int]:
    a, d = signed(rng), signed(rng)
    return (a + n * d for n in count())


def geometric(rng: random.Random) -> Iterator[int]:
    a = signed(rng, 6) or 1
    r = rng.choice([-5, -4, -3, -2, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10])
    return (a * r**n for n in count())


def polynomial(rng: random.Random) -> Iterator[int]:
    """c0 + c1 n + ... + ck n^k for k <= 3, from a random starting n."""
    degree = rng.randint(1, 3)
    coefficients = [rng.randint(-(10 ** rng.randint(0, 2)), 10 ** rng.randint(0, 2)) for _ in range(degree + 1)]
    coefficients[-1] = coefficients[-1] or 1
    start = rng.randint(0, 20)
    return (sum(c * n**k for k, c in enumerate(coefficients)) for n in count(start))


def recurrence(rng: random.Random) -> Iterator[int]:
    """a(n) = c1 a(n-1) + ... + ck a(n-k) with small ck, like Fibonacci."""
    order = rng.choice([2, 2, 3])
    coefficients = [rng.randint(-2, 2) for _ in range(order)]
    coefficients[-1] = coefficients[-1] or 1
    window = [signed(rng, 2) for _ in range(order)]

    def terms() -> Iterator[int]:
        yield from window
        while True:
            window.append(sum(c * t for c, t in zip(coefficients, reversed(window))))
            window.pop(0)
            yield window[-1]

    return terms()


def periodic(rng: random.Random) -> Iterator[int]:
    period = [signed(rng, 4) for _ in range(rng.randint(2, 6))]
    return (period[n % len(period)] for n in count())


def alternating(rng: random.Random) -> Iterator[int]:
    """A growing positive sequence with signs alternating."""
    base = rng.choice([arithmetic_positive, squares, geometric_positive])(rng)
    first = rng.choice([1, -1])
    return (first * (-1) ** n * t for n, t in enumerate(base))


def arithmetic_positive(rng: random.Random) -> Iterator[int]:
    a, d = magnitude(rng, 6), magnitude(rng, 4) + 1
    return (a + n * d for n in count())


def geometric_positive(rng: random.Random) -> Iterator[int]:
    a, r = magnitude(rng, 4) + 1, rng.randint(2, 5)
    return (a * r**n for n in count())


def squares(rng: random.Random) -> Iterator[int]:
    k = magnitude(rng, 9)
    return ((k + n) ** 2 for n in count())


def cubes(rng: random.Random) -> Iterator[int]:
    k = magnitude(rng, 6)
    return ((k + n) ** 3 for n in count())


def triangular(rng: random.Random) -> Iterator[int]:
    k = magnitude(rng, 9)
    return ((k + n) * (k + n + 1) // 2 for n in count())


def partial_sums(rng: random.Random) -> Iterator[int]:
    """Running totals of a sequence from a simpler family."""
    base = rng.choice([arithmetic, geometric, polynomial, periodic, alternating, squares])(rng)
    total = 0
    for term in base:
        total += term
        yield total


def interleaved(rng: random.Random) -> Iterator[int]:
    """Two arithmetic progressions taking turns: a1, a2, a1 + d1, a2 + d2, ..."""
    (a1, d1), (a2, d2) = [(signed(rng, 6), signed(rng, 4)) for _ in range(2)]
    for n in count():
        yield a1 + n * d1
        yield a2 + n * d2


def factorial_like(rng: random.Random) -> Iterator[int]:
    """c * m (m + s) (m + 2s) ...: factorials, double factorials and their shifts."""
    c, m, s = rng.randint(1, 3), rng.randint(1, 10), rng.choice([1, 1, 1, 2, 3])
    product = c
    for n in count():
        yield product
        product *= m + s * n


FAMILIES = {
    "arithmetic": arithmetic,
    "geometric": geometric,
    "polynomial": polynomial,
    "recurrence": recurrence,
    "periodic": periodic,
    "alternating": alternating,
    "squares": squares,
    "cubes": cubes,
    "triangular": triangular,
    "partial_sums": partial_sums,
    "interleaved": interleaved,
    "factorial_like": factorial_like,
}


def take(terms: Iterator[int], length: int) -> list[int]:
    """Up to `length` terms, stopping before the first one over 20 digits."""
    kept = []
    for term in terms:
        if len(kept) == length or abs(term) >= LIMIT:
            break
        kept.append(term)
    return kept


def sample(rng: random.Random, weights: dict[str, float] | None = None) -> tuple[str, list[int]]:
    """A family name and a sequence of 3 to 40 terms from it; a draw that
    grows past 20 digits before its third term is drawn again. Families are
    equally likely unless `weights` (family name -> relative weight, 1 for
    those left out) says otherwise."""
    if weights is None:
        family = rng.choice(list(FAMILIES))
    else:
        family = rng.choices(list(FAMILIES), [weights.get(name, 1.0) for name in FAMILIES])[0]
    length = rng.randint(MIN_TERMS, MAX_TERMS)
    while True:
        terms = take(FAMILIES[family](rng), length)
        if len(terms) >= MIN_TERMS:
            return family, terms


def main() -> None:
    parser = argparse.ArgumentParser(description="Write synthetic integer sequences, one per line.")
    parser.add_argument("--n", type=int, default=500, help="how many sequences")
    parser.add_argument("--seed", type=int, default=7, help="the stream; training uses 0")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for _ in range(args.n):
        print(",".join(map(str, sample(rng)[1])))


if __name__ == "__main__":
    main()
