"""The exact guessers against SymPy's rational generating functions, on the same sequences.

    python scripts/guess_bench.py ../shared/data/oeis_sample_10k.txt [--skip 0] [--count 2000]
        [--given 20] [--spare 1,2,3] [--no-sympy] [--json FILE]

Takes the first --count sequences (after skipping --skip of them) that have
more than --given terms, gives the first --given terms and checks the next
one. For each --spare and for SymPy's
`sympy.concrete.guess.guess_generating_function_rational`: coverage (how
often it answers), precision (right when it answers), accuracy (right over
all sequences), with 95% Wilson intervals, and milliseconds per sequence
on one core. SymPy is timed twice: the guess alone, and the guess plus the
series expansion (sympy.series) that turns its generating function into
the next term, which is what an answer costs with SymPy alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nextterm_mlx.evaluate import wilson_interval  # noqa: E402
from nextterm_mlx.guess import guess  # noqa: E402
from nextterm_mlx.sequence_files import read_sequence_file  # noqa: E402


def sympy_next(given: list[int]):
    """SymPy's answer (None: no guess), the seconds its guess took and the
    seconds its series expansion took."""
    import sympy
    from sympy.concrete.guess import guess_generating_function_rational

    x = sympy.Symbol("x")
    started = time.perf_counter()
    try:
        function = guess_generating_function_rational(given, X=x)
    except IndexError:  # SymPy's search runs off the end of some sequences ending in zeros
        function = None
    seconds = time.perf_counter() - started
    if function is None:
        return None, seconds, 0.0
    started = time.perf_counter()
    by_sympy = sympy.series(function, x, 0, len(given) + 1).removeO().coeff(x, len(given))
    expansion = time.perf_counter() - started
    parts = sympy.fraction(sympy.together(function))
    numerator, denominator = (sympy.Poly(part, x).all_coeffs()[::-1] for part in parts)
    numerator = [Fraction(int(c.p), int(c.q)) for c in map(sympy.Rational, numerator)]
    denominator = [Fraction(int(c.p), int(c.q)) for c in map(sympy.Rational, denominator)]
    series: list[Fraction] = []
    for n in range(len(given) + 1):
        p = numerator[n] if n < len(numerator) else 0
        rest = sum(denominator[k] * series[n - k] for k in range(1, min(n, len(denominator) - 1) + 1))
        series.append((p - rest) / denominator[0])
    value = series[len(given)]
    assert value == Fraction(int(sympy.Rational(by_sympy).p), int(sympy.Rational(by_sympy).q))
    return (int(value) if value.denominator == 1 else value), seconds, expansion


def score(answers: list, expected: list[int], seconds: float) -> dict:
    answered = [a for a in answers if a is not None]
    correct = sum(a is not None and a == e for a, e in zip(answers, expected))
    return {
        "coverage": len(answered) / len(expected),
        "precision": correct / len(answered) if answered else 0.0,
        "precision_ci95": list(wilson_interval(correct, len(answered))),
        "accuracy": correct / len(expected),
        "accuracy_ci95": list(wilson_interval(correct, len(expected))),
        "correct": correct,
        "answered": len(answered),
        "wrong": len(answered) - correct,
        "ms_per_sequence": 1000 * seconds / len(expected),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sample", type=Path)
    parser.add_argument("--skip", type=int, default=0, help="long-enough sequences to skip first")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--given", type=int, default=20)
    parser.add_argument("--spare", default="2")
    parser.add_argument("--no-sympy", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the target says
    sys.set_int_max_str_digits(0)

    long_enough = [s.terms for s in read_sequence_file(args.sample).sequences if len(s.terms) > args.given]
    sequences = long_enough[args.skip : args.skip + args.count]
    given = [terms[: args.given] for terms in sequences]
    expected = [terms[args.given] for terms in sequences]
    report = {"sample": str(args.sample), "skip": args.skip, "sequences": len(sequences), "given": args.given}

    # Each sequence is guessed by every contender in turn, so that whatever
    # else the machine does slows them alike.
    spares = [int(spare) for spare in args.spare.split(",")]
    contenders = [f"guess_spare_{spare}" for spare in spares] + ([] if args.no_sympy else ["sympy"])
    answers = {name: [] for name in contenders}
    seconds = {name: 0.0 for name in contenders}
    expanding = 0.0
    for terms in given:
        for spare in spares:
            started = time.perf_counter()
            best = guess(terms, spare=spare).best
            seconds[f"guess_spare_{spare}"] += time.perf_counter() - started
            answers[f"guess_spare_{spare}"].append(best.next[0] if best else None)
        if not args.no_sympy:
            answer, spent, expansion = sympy_next(terms)
            answers["sympy"].append(answer)
            seconds["sympy"] += spent
            expanding += expansion
    for name in contenders:
        report[name] = score(answers[name], expected, seconds[name])
    if not args.no_sympy:
        sympy_report = report["sympy"]
        sympy_report["ms_per_sequence_with_series"] = 1000 * (seconds["sympy"] + expanding) / len(expected)
        for spare in spares:
            ours = report[f"guess_spare_{spare}"]
            ours["speed_vs_sympy_guess"] = sympy_report["ms_per_sequence"] / ours["ms_per_sequence"]
            ours["speed_vs_sympy_answer"] = sympy_report["ms_per_sequence_with_series"] / ours["ms_per_sequence"]
    for name in contenders:
        print(f"{name}: {json.dumps(report[name])}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
