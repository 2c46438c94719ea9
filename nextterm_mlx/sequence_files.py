"""Read files of integer sequences in the formats users have them.

- JSONL, as NextTerm's own eval scripts write it: {"seq": [0, 1, 1, 2], "id": "A000045"}
- the OEIS "stripped" format: A000045 ,0,1,1,2,3,5,
- plain text: one sequence a line, terms separated by commas and/or spaces.

The format is detected from the first line with data unless given; blank
lines and "#" comment lines (the OEIS file's header) are skipped. A line
that can't be read is reported with its number and skipped, never fatal.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import UserError

FORMATS = ("jsonl", "oeis", "plain")
TERM = re.compile(r"[+-]?[0-9]+")
OEIS_LINE = re.compile(r"(A[0-9]+)\s+,?(.*?),?\s*")


@dataclass
class Sequence:
    id: str
    terms: list[int]


@dataclass
class SequenceFile:
    sequences: list[Sequence]
    format: str
    problems: list[str]  # "line N: what is wrong", one per skipped line


def detect_format(first_line: str) -> str:
    if first_line.lstrip().startswith("{"):
        return "jsonl"
    if OEIS_LINE.fullmatch(first_line.strip()):
        return "oeis"
    return "plain"


def read_sequence_file(path: str | Path, fmt: Optional[str] = None) -> SequenceFile:
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise UserError(f"sequence file {str(path)!r} does not exist; give the path of a .jsonl, OEIS or text file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"sequence file {str(path)!r} is not a UTF-8 text file ({e})") from None
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    fmt = fmt or detect_format(next((line for line in lines if has_data(line)), ""))
    parse = {"jsonl": parse_jsonl, "oeis": parse_oeis, "plain": parse_plain}[fmt]

    sequences, problems, seen = [], [], set()
    for number, line in enumerate(lines, start=1):
        if not has_data(line):
            continue
        try:
            sequence = parse(line, number)
        except ValueError as e:
            problems.append(f"line {number}: {e}")
            continue
        if sequence.id in seen:
            problems.append(f"line {number}: id {sequence.id!r} appeared before")
            continue
        seen.add(sequence.id)
        sequences.append(sequence)
    return SequenceFile(sequences, fmt, problems)


def has_data(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def parse_terms(words: list[str]) -> list[int]:
    terms = []
    for word in words:
        if not TERM.fullmatch(word):
            raise ValueError(f"{word[:40]!r} is not an integer")
        terms.append(int(word))
    if not terms:
        raise ValueError("no terms")
    return terms


def parse_jsonl(line: str, number: int) -> Sequence:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("seq"), list):
        raise ValueError('expected an object with a "seq" list')
    words = [str(t) if not isinstance(t, (bool, float)) else repr(t) for t in record["seq"]]
    return Sequence(str(record.get("id", f"line{number}")), parse_terms(words))


def parse_oeis(line: str, number: int) -> Sequence:
    match = OEIS_LINE.fullmatch(line.strip())
    if not match:
        raise ValueError("expected an OEIS stripped line such as 'A000045 ,0,1,1,2,'")
    return Sequence(match.group(1), parse_terms([w.strip() for w in match.group(2).split(",")]))


def parse_plain(line: str, number: int) -> Sequence:
    return Sequence(f"line{number}", parse_terms([w for w in re.split(r"[\s,]+", line.strip()) if w]))
