"""Integer terms as users write them: one set of rules for the command line,
the sequence files and the Python API.

- A term is decimal, in ASCII digits, with an optional sign: "+", "-", or a
  typographic minus pasted from a paper or a web page (U+2212 minus sign,
  U+2013 en dash, U+FE63 small hyphen-minus, U+FF0D fullwidth hyphen-minus).
  Leading zeros are read ("007" is 7). Nothing else is a term: not "1.5",
  "1e3", "0x10", "1/2", "--5", "1_000", nor digits of other scripts.
- In text, terms are separated by any run of white space, commas and
  semicolons: "1 2 3", "1,2,3", "1, 2; 3", an OEIS line's ",1,2,3,".
- As values (the API, a JSON list), a term is an int (numpy's integers too;
  True and False are not terms) or a string that spells one term; a float
  is not a term, not even 5.0.

The parsers raise ValueError naming the first word that is not a term
(files report it for the line and go on); check_terms, for the API, raises
the UserError a caller sees.
"""

from __future__ import annotations

import operator
import re
from typing import Any, Iterable

from .errors import UserError

MINUS_SIGNS = "\u2212\u2013\ufe63\uff0d"
TERM = re.compile(f"[-+{MINUS_SIGNS}]?[0-9]+")
SEPARATORS = re.compile(r"[\s,;]+")


def parse_term(word: str) -> int:
    """One term spelled as text: "-12" -> -12."""
    if not TERM.fullmatch(word):
        raise ValueError(f"{word[:40]!r} is not an integer")
    return -int(word[1:]) if word[0] in MINUS_SIGNS else int(word)


def parse_text(text: str) -> list[int]:
    """The terms in a text such as "1, 2, 3"; at least one."""
    return at_least_one([parse_term(word) for word in SEPARATORS.split(text) if word])


def parse_values(values: Iterable[Any]) -> list[int]:
    """The terms in a list of values such as [1, 2, "3"]; at least one."""
    return at_least_one([term_value(value) for value in values])


def term_value(value: Any) -> int:
    if isinstance(value, str):
        return parse_term(value)
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{str(value)[:40]!r} is not an integer") from None


class NoTerms(ValueError):
    """A text or list that holds no term at all."""


def at_least_one(terms: list[int]) -> list[int]:
    if not terms:
        raise NoTerms("no terms")
    return terms


def check_terms(terms: Iterable[Any] | str) -> list[int]:
    """The API's terms as Python ints: a list of values, or one text."""
    try:
        return parse_text(terms) if isinstance(terms, str) else parse_values(terms)
    except NoTerms:
        raise UserError("no terms given; give at least one integer, e.g. 1 1 2 3 5 8") from None
    except ValueError as e:
        raise UserError(f"{e}; give whole numbers such as 1 2 3 or -4") from None
