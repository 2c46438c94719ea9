"""The exact guessers against closed forms, brute force and SymPy.

Every expected value here comes from a closed form evaluated directly
(math.comb, factorials, sums), from SymPy, or from a formula written by
hand; none from the guessers themselves.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from fractions import Fraction
from math import comb, factorial

import pytest
import sympy
from sympy.concrete.guess import find_simple_recurrence_vector

from nextterm_mlx.guess import C_FINITE, P_RECURSIVE, POLYNOMIAL, guess
from test_cli import run


def motzkin(n: int) -> int:
    return sum(comb(n, 2 * k) * comb(2 * k, k) // (k + 1) for k in range(n // 2 + 1))


def derangements(n: int) -> int:
    return sum((-1) ** k * factorial(n) // factorial(k) for k in range(n + 1))


def interleaved(n: int) -> int:
    return 2 ** (n // 2) if n % 2 == 0 else -(3 ** (n // 2))


# name: (closed form, family, formula written by hand, terms given)
CLOSED_FORMS = {
    "zeros": (lambda n: 0, POLYNOMIAL, "a(n) = 0 for n ≥ 0", 8),
    "constant": (lambda n: -7, POLYNOMIAL, "a(n) = -7 for n ≥ 0", 8),
    "squares": (lambda n: n * n, POLYNOMIAL, "a(n) = n^2 for n ≥ 0", 8),
    "triangular": (lambda n: n * (n + 1) // 2, POLYNOMIAL, "a(n) = (n^2 + n)/2 for n ≥ 0", 9),
    "negative cubic": (lambda n: 2 - n**3, POLYNOMIAL, "a(n) = -n^3 + 2 for n ≥ 0", 10),
    "huge linear": (lambda n: 10**60 * n - 10**59, POLYNOMIAL, f"a(n) = {10**60}n - {10**59} for n ≥ 0", 8),
    "fibonacci": (lambda n: sympy.fibonacci(n), C_FINITE, "a(n) = a(n-1) + a(n-2) for n ≥ 2", 12),
    "pell": (lambda n: sum(comb(n, 2 * k + 1) * 2**k for k in range(n)), C_FINITE,
             "a(n) = 2·a(n-1) + a(n-2) for n ≥ 2", 12),
    "alternating powers": (lambda n: (-2) ** n, C_FINITE, "a(n) = -2·a(n-1) for n ≥ 1", 10),
    "periodic": (lambda n: [4, -1, 0][n % 3], C_FINITE, "a(n) = a(n-3) for n ≥ 3", 12),
    "interleaved": (interleaved, C_FINITE, "a(n) = 5·a(n-2) - 6·a(n-4) for n ≥ 4", 16),
    "huge geometric": (lambda n: 3**n * 10**60 + 1, C_FINITE, "a(n) = 4·a(n-1) - 3·a(n-2) for n ≥ 2", 12),
    "factorials": (factorial, P_RECURSIVE, "a(n) = n·a(n-1) for n ≥ 1", 10),
    "catalan": (lambda n: comb(2 * n, n) // (n + 1), P_RECURSIVE, "(n+1)·a(n) = (4n-2)·a(n-1) for n ≥ 1", 12),
    "central binomials": (lambda n: comb(2 * n, n), P_RECURSIVE, "n·a(n) = (4n-2)·a(n-1) for n ≥ 1", 12),
    "motzkin": (motzkin, P_RECURSIVE, "(n+2)·a(n) = (2n+1)·a(n-1) + (3n-3)·a(n-2) for n ≥ 2", 16),
    "derangements": (derangements, P_RECURSIVE, "a(n) = (n-1)·a(n-1) + (n-1)·a(n-2) for n ≥ 2", 16),
}


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_closed_forms_are_found_with_their_next_terms(name):
    form, family, formula, given = CLOSED_FORMS[name]
    terms = [int(form(n)) for n in range(given)]
    best = guess(terms, count=4).best
    assert best is not None, name
    assert (best.family, best.formula) == (family, formula)
    assert best.next == [int(form(n)) for n in range(given, given + 4)]
    assert best.fitted + best.verified <= given and best.verified >= 3


@pytest.mark.parametrize("name", [n for n, c in CLOSED_FORMS.items() if c[1] != POLYNOMIAL])
def test_recurrences_hold_far_beyond_the_given_terms(name):
    """The fitted coefficients, applied to 60 terms of the closed form."""
    form, _, _, given = CLOSED_FORMS[name]
    fit = guess([int(form(n)) for n in range(given)]).best
    truth = [int(form(n)) for n in range(60)]
    for n in range(fit.start, 60):
        assert sum(sum(c * n**j for j, c in enumerate(q)) * truth[n - i] for i, q in enumerate(fit.coefficients)) == 0


def test_polynomial_coefficients_match_sympy_interpolation():
    rng = random.Random(5)
    n = sympy.Symbol("n")
    for _ in range(30):
        degree = rng.randrange(0, 6)
        coefficients = [Fraction(rng.randrange(-50, 50), rng.choice([1, 2, 3, 6])) for _ in range(degree + 1)]
        # Integer-valued: scale by the common denominator's multiple over every n.
        values = [sum(c * k**j for j, c in enumerate(coefficients)) for k in range(degree + 5)]
        scale = 1
        for v in values:
            scale = scale * v.denominator // sympy.gcd(scale, v.denominator)
        terms = [int(v * scale) for v in values]
        fit = guess(terms).best
        expected = sympy.Poly(sympy.interpolate(list(zip(range(len(terms)), terms)), n), n).all_coeffs()[::-1]
        if all(t == 0 for t in terms):
            expected = []
        while expected and expected[-1] == 0:
            expected.pop()
        assert fit.family == POLYNOMIAL
        assert list(fit.coefficients) == [Fraction(int(c.p), int(c.q)) for c in expected]


def test_random_c_finite_sequences_agree_with_sympy():
    """A few hundred random recurrences: the guess's recurrence is SymPy's
    (find_simple_recurrence_vector, normalized alike) and its next terms
    are the recurrence's own."""
    rng = random.Random(1)
    checked = 0
    for _ in range(300):
        order = rng.randrange(1, 5)
        weights = [rng.randrange(-4, 5) for _ in range(order)]
        if weights[-1] == 0:
            weights[-1] = 1
        terms = [rng.randrange(-9, 10) for _ in range(order)]
        while len(terms) < 24:
            terms.append(sum(w * terms[-1 - k] for k, w in enumerate(weights)))
        given, following = terms[:20], terms[20:]
        sympy_vector = find_simple_recurrence_vector([sympy.Integer(t) for t in given])
        if len(sympy_vector) == 1 or len(sympy_vector) - 1 > order:
            continue  # SymPy found nothing shorter than the generator (a degenerate draw)
        fits = {fit.family: fit for fit in guess(given, count=4).fits}
        fit = fits.get(C_FINITE) or fits.get(POLYNOMIAL)
        assert fit is not None, given
        assert fit.next == following
        if fit.family == C_FINITE and fit.start == len(fit.coefficients) - 1:
            ours = [Fraction(q[0], fit.coefficients[0][0]) for q in fit.coefficients]
            theirs = [Fraction(int(sympy.Rational(v).p), int(sympy.Rational(v).q)) / sympy_vector[0]
                      for v in sympy_vector]
            assert ours == theirs
            checked += 1
    assert checked > 150


def primes(count: int) -> list[int]:
    found = []
    candidate = 2
    while len(found) < count:
        if all(candidate % p for p in found):
            found.append(candidate)
        candidate += 1
    return found


PI_DIGITS = [int(d) for d in "31415926535897932384626433832795028841"]


RANDOM = random.Random(7)


@pytest.mark.parametrize("terms", [
    primes(25),
    PI_DIGITS,
    [random.Random(seed).randrange(-10**6, 10**6) for seed in range(25)],
    [RANDOM.randrange(0, 100) for _ in range(25)],
], ids=["primes", "digits of pi", "random signed", "random small"])
def test_no_fit_for_sequences_without_a_formula(terms):
    result = guess(terms)
    assert result.fits == [] and result.complete


def test_a_fit_must_reproduce_the_spare_terms():
    fibonacci = [int(sympy.fibonacci(n)) for n in range(12)]
    broken = fibonacci[:-1] + [fibonacci[-1] + 1]
    assert all(fit.next != [int(sympy.fibonacci(12))] for fit in guess(broken).fits)
    # Order 2 is fitted on 4 terms: 4 + spare terms are needed, no fewer.
    assert guess(fibonacci[:7], spare=3).best.formula.startswith("a(n) = a(n-1) + a(n-2)")
    assert guess(fibonacci[:6], spare=3).best is None
    assert guess(fibonacci[:6], spare=2).best is not None


def test_next_terms_that_are_not_integers_are_no_answer():
    # a(n) = a(n-1)/2 holds on these terms, but the next would be 1/2.
    assert all(fit.family != C_FINITE for fit in guess([256, 128, 64, 32, 16, 8, 4, 2, 1]).fits)


def test_the_time_budget_stops_the_search():
    # A constant sequence leaves recurrences of every family to solve.
    result = guess([5] * 30, budget=1e-9)
    assert not result.complete and [fit.family for fit in result.fits] == [POLYNOMIAL]


def test_guess_command_prints_each_fit(capsys):
    code, out, _ = run(["guess", "1", "1", "2", "3", "5", "8", "13", "21"], capsys)
    assert code == 0
    assert out == "34  a(n) = a(n-1) + a(n-2) for n ≥ 2  [c-finite; fitted to 4 terms, checked on 4]\n"


def test_guess_command_json(capsys):
    code, out, _ = run(["guess", "--json", "--terms", "3", "1,", "2,", "6,", "24,", "120,", "720,", "5040"], capsys)
    record = json.loads(out)
    assert code == 0 and record["terms"] == [1, 2, 6, 24, 120, 720, 5040]
    [fit] = record["fits"]
    assert fit["family"] == "p-recursive" and fit["next"] == [factorial(n) for n in range(8, 11)]
    assert {"formula", "fitted", "verified", "coefficients"} <= set(fit)


def test_guess_command_reads_stdin(capsys, monkeypatch):
    code, out, _ = run(["guess", "--json"], capsys, "1 4 9 16 25 36\n\n2 3 5 7 11 13 17\n", monkeypatch)
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["fits"][0]["next"] if r["fits"] else None for r in records] == [[49], None]


@pytest.mark.parametrize("args", [["guess", "1", "2.5", "3"], ["guess", "--spare", "0", "1", "2"]])
def test_guess_command_refuses_bad_input_in_one_line(capsys, args):
    code, out, err = run(args, capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1


def test_guess_command_loads_no_model_library():
    script = ("import sys; from nextterm_mlx.cli import main\n"
              "try:\n    main(['guess', '1', '2', '4', '8', '16', '32'])\nexcept SystemExit:\n    pass\n"
              "assert 'mlx_lm' not in sys.modules, 'mlx_lm imported'")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("64  a(n) = 2·a(n-1)")
