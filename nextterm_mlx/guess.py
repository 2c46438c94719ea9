"""Exact formula fits for integer sequences, found without a model.

Three families, each a set of shapes with a number of unknowns:

- polynomial: a(n) = P(n) with P of degree d (d+1 unknowns);
- c-finite: a(n) = c1·a(n-1) + ... + cr·a(n-r) with constant coefficients,
  i.e. a rational generating function (r unknowns); Fibonacci, geometric,
  periodic and interleaved sequences;
- p-recursive: q0(n)·a(n) + q1(n)·a(n-1) + ... + qr(n)·a(n-r) = 0 with
  polynomials qi of degree d ≥ 1 ((r+1)(d+1)-1 unknowns); n!, Catalan,
  Motzkin, central binomials, derangements.

A recurrence may hold only from some n on: each term it leaves unexplained
before that counts as one more unknown.

a(0) is the first given term. A shape is fitted to the fewest terms that
determine it, then checked on every term after those; it is kept only if at
least `spare` terms check out and it gives integer next terms. Only the
simplest verified fits are kept: those with the fewest unknowns, one per
family, most terms verified first; a formula with more unknowns adds nothing
to one that already explains the terms. A fit that only repeats another's
next terms is left out.

The linear algebra is exact, in FLINT's integer matrices. Shapes are first
screened modulo a prime, where a recurrence with coprime integer
coefficients stays a recurrence: a shape without a solution there has none
at all. Berlekamp-Massey gives each start's shortest constant-coefficient
recurrence at once, and one echelon form rules out every polynomial-
coefficient shape of most sequences; only the shapes left are solved.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from fractions import Fraction
from math import comb, factorial, gcd
from typing import Any, Optional, Sequence

import flint

POLYNOMIAL = "polynomial"
C_FINITE = "c-finite"
P_RECURSIVE = "p-recursive"
FAMILIES = (POLYNOMIAL, C_FINITE, P_RECURSIVE)

# How many terms a fit must predict correctly beyond those it was fitted to.
DEFAULT_SPARE = 3
# Seconds one sequence may take; past it the search stops with what it found.
DEFAULT_BUDGET = 1.0

# The shapes searched: the largest degree and orders (bounded so that a long
# sequence costs little more than a short one), and how many leading terms a
# recurrence may leave unexplained.
MAX_POLYNOMIAL_DEGREE = 30
MAX_C_FINITE_ORDER = 40
MAX_P_RECURSIVE_ORDER = 4
MAX_P_RECURSIVE_DEGREE = 2
MAX_C_FINITE_EXCEPTIONS = 4
MAX_P_RECURSIVE_EXCEPTIONS = 1

# Screening modulus: a Mersenne prime that fits FLINT's word-sized matrices.
SCREEN_PRIME = 2**61 - 1


@dataclass(frozen=True)
class Fit:
    """A formula that reproduces the given terms, and what it says comes next.

    family: "polynomial", "c-finite" or "p-recursive".
    formula: the formula in words, a(0) being the first given term.
    coefficients: polynomial: the rational coefficients of n^0, n^1, ...;
        recurrences: for a(n), a(n-1), ..., a(n-r), the integer coefficients
        of n^0, n^1, ... of the polynomial that multiplies it.
    start: the first n at which the formula holds (terms before it are
        exceptions).
    fitted: how many terms determined the formula.
    verified: how many later terms it reproduced.
    unknowns: the formula's free parameters, exceptions included.
    next: the next terms it gives.
    """

    family: str
    formula: str
    coefficients: tuple
    start: int
    fitted: int
    verified: int
    unknowns: int
    next: list[int]

    def to_dict(self) -> dict[str, Any]:
        coefficients: Any = self.coefficients
        if self.family == POLYNOMIAL:
            coefficients = [str(c) for c in coefficients]
        else:
            coefficients = [list(q) for q in coefficients]
        return {"family": self.family, "formula": self.formula, "next": self.next, "fitted": self.fitted,
                "verified": self.verified, "unknowns": self.unknowns, "start": self.start,
                "coefficients": coefficients}


@dataclass
class Guesses:
    """The verified fits of one sequence, best first; `complete` is False
    when the time budget ran out before every shape was tried."""

    terms: list[int]
    fits: list[Fit] = field(default_factory=list)
    complete: bool = True

    @property
    def best(self) -> Optional[Fit]:
        return self.fits[0] if self.fits else None

    def to_dict(self) -> dict[str, Any]:
        return {"terms": self.terms, "fits": [fit.to_dict() for fit in self.fits], "complete": self.complete}


def guess(
    terms: Sequence[int], count: int = 1, spare: int = DEFAULT_SPARE, budget: float = DEFAULT_BUDGET
) -> Guesses:
    """The verified fits of `terms` and the `count` terms each gives next."""
    terms = [int(t) for t in terms]
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    if spare < 1:
        raise ValueError(f"spare must be at least 1, not {spare}")
    deadline = time.perf_counter() + budget
    residues = [t % SCREEN_PRIME for t in terms]
    shortest = shortest_recurrences(residues)
    found: dict[str, Fit] = {}
    polynomial = fit_polynomial(terms, residues, count, spare)
    if polynomial is not None:
        found[POLYNOMIAL] = polynomial
    shapes = c_finite_candidates(shortest, len(terms), spare) + p_recursive_candidates(residues, spare)
    complete = True
    for shape in sorted(shapes, key=Shape.simplicity):
        if found and shape.unknowns > min(fit.unknowns for fit in found.values()):
            break  # a formula with more unknowns adds nothing to one that explains the terms
        if shape.family in found:
            continue
        if time.perf_counter() > deadline:
            complete = False
            break
        if shape.family == P_RECURSIVE and not passes_screen(residues, shape):
            continue
        fit = fit_recurrence(terms, shape, count, spare)
        if fit is not None:
            found[shape.family] = fit
    return Guesses(terms, distinct(sorted(found.values(), key=rank)), complete)


def rank(fit: Fit) -> tuple:
    return fit.unknowns, -fit.verified, FAMILIES.index(fit.family)


def distinct(fits: list[Fit]) -> list[Fit]:
    """The fits whose next terms no simpler fit already gave."""
    kept: list[Fit] = []
    for fit in fits:
        if all(fit.next != other.next for other in kept):
            kept.append(fit)
    return kept


# Polynomials, by finite differences: the sequence is a polynomial of degree
# d exactly when its (d+1)-th differences vanish.


def fit_polynomial(terms: list[int], residues: list[int], count: int, spare: int) -> Optional[Fit]:
    degree = polynomial_degree(residues, spare)
    if degree is None:
        return None
    # The residues name the degree; the terms' own differences confirm it.
    differences = [terms]
    for _ in range(degree + 1):
        row = differences[-1]
        differences.append([b - a for a, b in zip(row, row[1:])])
    if any(differences[-1]):
        return None
    fitted = degree + 1  # 0 for the zero sequence
    if len(terms) - fitted < spare:
        return None
    # Newton's form: a(n) = sum over k of (k-th difference at 0)·C(n, k).
    leading = [row[0] for row in differences[:-1]]
    polynomial = sum((leading[k] * falling(k) for k in range(len(leading))), flint.fmpq_poly(0))
    coefficients = tuple(Fraction(int(c.p), int(c.q)) for c in polynomial.coeffs())
    n = len(terms)
    following = [sum(leading[k] * comb(m, k) for k in range(len(leading))) for m in range(n, n + count)]
    return Fit(POLYNOMIAL, f"a(n) = {polynomial_text(coefficients)} for n ≥ 0", coefficients, 0, fitted, n - fitted,
               fitted, following)


def polynomial_degree(residues: list[int], spare: int) -> Optional[int]:
    """The degree the differences modulo SCREEN_PRIME point to, or None:
    a polynomial's differences vanish modulo any prime too, and small
    residues are cheaper to subtract than the terms."""
    row = residues
    for degree in range(-1, MAX_POLYNOMIAL_DEGREE + 1):
        if not any(row):
            return degree
        if len(row) <= spare:
            return None
        row = [(b - a) % SCREEN_PRIME for a, b in zip(row, row[1:])]
    return None


def falling(k: int) -> flint.fmpq_poly:
    """C(n, k) as a polynomial in n."""
    result = flint.fmpq_poly([1])
    for j in range(k):
        result *= flint.fmpq_poly([-j, 1])
    return result / flint.fmpq(factorial(k))


# Recurrences: sum over i ≤ r and j ≤ d of c[i][j]·n^j·a(n-i) = 0 for n ≥ start.
# One equation per n, one unknown per (i, j); a fit is the system's one
# solution up to scale.


@dataclass(frozen=True)
class Shape:
    family: str
    order: int
    degree: int
    start: int

    @property
    def columns(self) -> int:
        return (self.order + 1) * (self.degree + 1)

    @property
    def unknowns(self) -> int:
        return self.columns - 1 + self.start - self.order

    def simplicity(self) -> tuple:
        return self.unknowns, FAMILIES.index(self.family), self.order

    def fits(self, length: int, spare: int) -> bool:
        """Whether `length` terms determine the shape (one equation per
        unknown) and leave `spare` terms to check it."""
        return self.start + self.columns - 1 + spare <= length


def shortest_recurrences(residues: list[int]) -> list[flint.fmpz_mod_poly]:
    """For each number of leading exceptions, the characteristic polynomial
    of the shortest recurrence the rest satisfies (Berlekamp-Massey)."""
    field = flint.fmpz_mod_poly_ctx(SCREEN_PRIME)
    return [field.minpoly(residues[exceptions:])
            for exceptions in range(min(MAX_C_FINITE_EXCEPTIONS, len(residues) - 1) + 1)]


def c_finite_candidates(shortest: list[flint.fmpz_mod_poly], length: int, spare: int) -> list[Shape]:
    """The shortest recurrence after each number of exceptions, where the
    terms determine it and leave `spare` to check it."""
    shapes = []
    for exceptions, polynomial in enumerate(shortest):
        order = max(1, polynomial.degree())  # order 1 says a(n) = 0 for a tail of zeros
        shape = Shape(C_FINITE, order, 0, exceptions + order)
        if order <= MAX_C_FINITE_ORDER and shape.fits(length, spare):
            shapes.append(shape)
    return shapes


def p_recursive_candidates(residues: list[int], spare: int) -> list[Shape]:
    """The shapes with polynomial coefficients that one screen leaves open.

    The widest shape's equations, from the latest start, are one matrix
    whose leading columns are a narrower shape's unknowns (order by order,
    at the widest degree), on a subset of its equations. Where those columns
    are independent, no shape of that order has a solution. The shapes this
    leaves open are screened one by one before they are solved.
    """
    shapes, widest = p_recursive_shapes(len(residues), spare)
    if not shapes:
        return []
    # As many equations as unknowns suffice to rule out a sequence with no formula.
    equations = range(widest.start, min(len(residues), widest.start + widest.columns))
    independent = independent_columns([equation(residues, widest, n, SCREEN_PRIME) for n in equations])

    def ruled_out(shape: Shape) -> bool:
        return (shape.order + 1) * (MAX_P_RECURSIVE_DEGREE + 1) <= independent

    return [shape for shape in shapes if not ruled_out(shape)]


@functools.lru_cache(maxsize=None)
def p_recursive_shapes(length: int, spare: int) -> tuple[list[Shape], Shape]:
    """The shapes `length` terms determine with `spare` to check, and the
    widest one from the latest start, whose equations screen them all."""
    shapes = [Shape(P_RECURSIVE, order, degree, order + exceptions)
              for order in range(1, MAX_P_RECURSIVE_ORDER + 1)
              for degree in range(1, MAX_P_RECURSIVE_DEGREE + 1)
              for exceptions in range(MAX_P_RECURSIVE_EXCEPTIONS + 1)]
    shapes = [shape for shape in shapes if shape.fits(length, spare)]
    latest = max([s.start for s in shapes] + [MAX_P_RECURSIVE_ORDER])
    return shapes, Shape(P_RECURSIVE, MAX_P_RECURSIVE_ORDER, MAX_P_RECURSIVE_DEGREE, latest)


def independent_columns(rows: list[list[int]]) -> int:
    """How many leading columns of the matrix are linearly independent modulo SCREEN_PRIME."""
    if not rows:
        return 0
    echelon, rank = flint.nmod_mat(rows, SCREEN_PRIME).rref()
    # In reduced echelon form, row k's pivot is never left of column k, and
    # the entry at (k, k) is nonzero only when it is the pivot.
    independent = 0
    while independent < rank and int(echelon[independent, independent]):
        independent += 1
    return independent


def passes_screen(residues: list[int], shape: Shape) -> bool:
    """Whether the shape's equations have a solution modulo SCREEN_PRIME."""
    rows = [equation(residues, shape, n, SCREEN_PRIME) for n in range(shape.start, len(residues))]
    return independent_columns(rows) < shape.columns


def equation(values: list[int], shape: Shape, n: int, modulus: Optional[int] = None) -> list[int]:
    """The coefficients of the unknowns in the equation at n: n^j·a(n-i),
    for i = 0 ... order, and j = 0 ... degree within each i."""
    window = values[n - shape.order : n + 1][::-1]
    if shape.degree == 0:
        return window
    powers = [n**j for j in range(shape.degree + 1)]
    row = [value * power for value in window for power in powers]
    return row if modulus is None else [x % modulus for x in row]


def fit_recurrence(terms: list[int], shape: Shape, count: int, spare: int) -> Optional[Fit]:
    n_terms = len(terms)
    system = [equation(terms, shape, n) for n in range(shape.start, n_terms)]

    def solutions(used: int) -> tuple[flint.fmpz_mat, int]:
        return flint.fmpz_mat(system[:used]).nullspace()

    # Fit on the fewest equations that leave one solution, check the rest.
    # Most shapes need one equation per unknown; a sequence that several
    # recurrences of the shape explain is refused after one more try.
    used, most = shape.columns - 1, len(system) - spare
    basis, nullity = solutions(used)
    if nullity > 1:
        basis, nullity = solutions(most)
        if nullity == 1:
            used = most
    if nullity != 1:
        return None
    solution = [int(basis[k, 0]) for k in range(shape.columns)]
    if any(sum(c * x for c, x in zip(solution, row)) for row in system[used:]):
        return None
    polynomials = normalized([solution[i * (shape.degree + 1) : (i + 1) * (shape.degree + 1)]
                              for i in range(shape.order + 1)])
    # Where a(n)'s coefficient vanishes, the recurrence says nothing about
    # a(n): a zero among the fitted terms hides an exception.
    leading = polynomials[0]
    if not any(leading) or shape.degree and any(evaluate(leading, n) == 0 for n in range(shape.start, n_terms + count)):
        return None
    following = extend(polynomials, terms, count)
    if following is None:
        return None
    return Fit(shape.family, recurrence_text(polynomials, shape.start), tuple(tuple(q) for q in polynomials),
               shape.start, shape.order + used, len(system) - used, shape.unknowns, following)


def normalized(polynomials: list[list[int]]) -> list[list[int]]:
    """The recurrence with coprime integer coefficients and a(n)'s leading one positive."""
    divisor = 0
    for q in polynomials:
        for c in q:
            divisor = gcd(divisor, c)
    leading = next((c for c in reversed(polynomials[0]) if c), 1)
    sign = -1 if leading < 0 else 1
    return [[sign * c // divisor for c in q] for q in polynomials]


def evaluate(polynomial: list[int], n: int) -> int:
    return sum(c * n**j for j, c in enumerate(polynomial))


def extend(polynomials: list[list[int]], terms: list[int], count: int) -> Optional[list[int]]:
    """The next `count` terms, or None if one is not an integer."""
    values = list(terms)
    for n in range(len(terms), len(terms) + count):
        leading = evaluate(polynomials[0], n)
        rest = sum(evaluate(q, n) * values[n - i] for i, q in enumerate(polynomials) if i)
        if leading == 0 or rest % leading:
            return None
        values.append(-rest // leading)
    return values[len(terms):]


# Formulas as people write them: "a(n) = a(n-1) + a(n-2)",
# "(n+1)·a(n) = (4n-2)·a(n-1)", "a(n) = (n^2 + n)/2".


def monomial(coefficient: int, power: int) -> str:
    """|coefficient|·n^power, without its sign."""
    size = abs(coefficient)
    if power == 0:
        return str(size)
    variable = "n" if power == 1 else f"n^{power}"
    return variable if size == 1 else f"{size}{variable}"


def signed_sum(terms: list[tuple[int, str]], spaced: bool) -> str:
    """Texts with signs joined: [(1, "n"), (-1, "2")] -> "n - 2" (or "n-2")."""
    text = ""
    for sign, body in terms:
        if not text:
            text = body if sign > 0 else f"-{body}"
        elif spaced:
            text += f" {'+' if sign > 0 else '-'} {body}"
        else:
            text += f"{'+' if sign > 0 else '-'}{body}"
    return text or "0"


def integer_polynomial_text(coefficients: Sequence[int], spaced: bool) -> str:
    return signed_sum([(1 if c > 0 else -1, monomial(c, j)) for j, c in reversed(list(enumerate(coefficients))) if c],
                      spaced)


def polynomial_text(coefficients: Sequence[Fraction]) -> str:
    denominator = 1
    for c in coefficients:
        denominator = denominator * c.denominator // gcd(denominator, c.denominator)
    numerators = [int(c * denominator) for c in coefficients]
    text = integer_polynomial_text(numerators, spaced=True)
    if denominator == 1:
        return text
    return f"({text})/{denominator}" if sum(1 for c in numerators if c) > 1 else f"{text}/{denominator}"


def product_text(polynomial: list[int], term: str) -> tuple[int, str]:
    """q(n)·term with q's sign taken out when q is one monomial."""
    nonzero = [(j, c) for j, c in enumerate(polynomial) if c]
    if len(nonzero) == 1:
        j, c = nonzero[0]
        factor = monomial(c, j)
        return (1 if c > 0 else -1), (term if factor == "1" else f"{factor}·{term}")
    # Several monomials: the leading one's sign comes out, the rest go in parentheses.
    sign = 1 if nonzero[-1][1] > 0 else -1
    return sign, f"({integer_polynomial_text([sign * c for c in polynomial], spaced=False)})·{term}"


def recurrence_text(polynomials: list[list[int]], start: int) -> str:
    _, left = product_text(polynomials[0], "a(n)")  # positive: see normalized
    right = [product_text([-c for c in q], f"a(n-{i})") for i, q in enumerate(polynomials) if i and any(q)]
    return f"{left} = {signed_sum(right, spaced=True)} for n ≥ {start}"
