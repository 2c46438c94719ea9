"""NextTerm's 16-token vocabulary: integer terms to token ids and back.

A sequence 1, 2, 3 is the prompt [BOS, 1, SEP, 2, SEP, 3, SEP]: each term is
written in decimal, most significant digit first, with NEG before a negative
one, and every term (the last included) is followed by the separator.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

NEG = 10
SEP = 11
BOS = 12
EOS = 13
PAD = 14
RESERVED = 15
VOCAB_SIZE = 16

# The model card's generate call stops on any of these.
STOP_TOKENS = (SEP, EOS, PAD)
# ... or after this many new tokens, which suffice for every answer in its eval.
MAX_NEW_TOKENS = 192

# The token strings written into tokenizer.json, indexed by id.
TOKEN_STRINGS = tuple("0123456789") + ("-", ",", "<bos>", "<eos>", "<pad>", "<reserved>")


def encode_term(term: int) -> list[int]:
    """Tokens of one integer, without its separator: -12 -> [10, 1, 2]."""
    digits = [int(d) for d in str(abs(term))]
    return [NEG] + digits if term < 0 else digits


def encode_prompt(terms: Iterable[int]) -> list[int]:
    """The model's prompt for a sequence: [12, 1, 11, 2, 11, 3, 11] for 1, 2, 3."""
    ids = [BOS]
    for term in terms:
        ids += encode_term(term)
        ids.append(SEP)
    return ids


def decode_term(tokens: Sequence[int]) -> Optional[int]:
    """The integer that a term's tokens (separator excluded) spell, or None.

    Only canonical decimal is accepted: an optional NEG, then digits with no
    leading zero; "-0", an empty term and any non-digit token are rejected so
    that a malformed output is never read as a wrong integer.
    """
    negative = len(tokens) > 0 and tokens[0] == NEG
    digits = tokens[1:] if negative else tokens
    if not digits or any(not 0 <= t <= 9 for t in digits):
        return None
    if len(digits) > 1 and digits[0] == 0:
        return None
    if negative and list(digits) == [0]:
        return None
    value = int("".join(str(d) for d in digits))
    return -value if negative else value


def strict_allowed(term: Sequence[int]) -> list[bool]:
    """Which tokens may follow the partial term `term` so that it can still
    become a canonical integer: an optional NEG, no leading zero, no "-0",
    and the separator only after a complete number."""
    negative = len(term) > 0 and term[0] == NEG
    digits = term[1:] if negative else term
    allowed = [False] * VOCAB_SIZE
    if not term:
        for t in range(10):
            allowed[t] = True
        allowed[NEG] = True
    elif not digits:  # just "-": a nonzero digit must follow
        for t in range(1, 10):
            allowed[t] = True
    elif digits[0] == 0:  # "0" is complete; nothing may follow it
        allowed[SEP] = True
    else:
        for t in range(10):
            allowed[t] = True
        allowed[SEP] = True
    return allowed
