"""Superseeker-style transforms: other forms of a query that the OEIS may
hold when it does not hold the query itself.

- gcd: the query divided by the gcd of its terms (when that is above 1);
- shift: the query minus a constant: minus 1, plus 1, and moved to start at 0
  and at 1 (minus its first term, and minus its first term less 1);
- differences: its first differences;
- partial_sums: its partial sums.

A transform that gives the query back, or a form already tried, is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from math import gcd
from typing import Optional


@dataclass(frozen=True)
class Transform:
    """A form of the query that was searched instead of the query itself."""

    name: str  # "gcd", "shift", "differences" or "partial_sums"
    terms: list[int]
    constant: int  # the gcd, the shift subtracted, the query's last term, or its sum

    def describe(self) -> str:
        """The transform in words, such as "divided by 3" or "first differences"."""
        if self.name == "gcd":
            return f"divided by {self.constant}"
        if self.name == "shift":
            return f"minus {self.constant}" if self.constant > 0 else f"plus {-self.constant}"
        return "first differences" if self.name == "differences" else "partial sums"

    def query_next(self, next: Optional[int]) -> Optional[int]:
        """The query's next term that a match's next term implies."""
        if next is None:
            return None
        if self.name == "gcd":
            return next * self.constant
        if self.name == "partial_sums":
            return next - self.constant
        return next + self.constant  # shift, and differences (the constant is the query's last term)


def transforms_of(terms: list[int]) -> list[Transform]:
    """The forms of `terms` to search, in the order they are tried."""
    found: list[Transform] = []
    g = gcd(*terms)
    if g > 1:
        found.append(Transform("gcd", [t // g for t in terms], g))
    for shift in (1, -1, terms[0], terms[0] - 1):
        if shift:
            found.append(Transform("shift", [t - shift for t in terms], shift))
    if len(terms) > 1:
        found.append(Transform("differences", [b - a for a, b in zip(terms, terms[1:])], terms[-1]))
        found.append(Transform("partial_sums", list(accumulate(terms)), sum(terms)))
    tried = [terms]
    unique = []
    for transform in found:
        if transform.terms not in tried:
            tried.append(transform.terms)
            unique.append(transform)
    return unique
