"""Read files of integer sequences in the formats users have them.

- JSONL, as NextTerm's own eval scripts write it: {"seq": [0, 1, 1, 2], "id": "A000045"}
- the OEIS "stripped" format: A000045 ,0,1,1,2,3,5,
- plain text: one sequence a line, terms separated by spaces, commas or semicolons.

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
from .terms import parse_text, parse_values

FORMATS = ("jsonl", "oeis", "plain")
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


def parse_jsonl(line: str, number: int) -> Sequence:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("seq"), list):
        raise ValueError('expected an object with a "seq" list')
    return Sequence(str(record.get("id", f"line{number}")), parse_values(record["seq"]))


def parse_oeis(line: str, number: int) -> Sequence:
    match = OEIS_LINE.fullmatch(line.strip())
    if not match:
        raise ValueError("expected an OEIS stripped line such as 'A000045 ,0,1,1,2,'")
    fields = match.group(2).split(",")
    if len(fields) > 1 and "" in (field.strip() for field in fields):
        raise ValueError("a term is missing between two commas")
    return Sequence(match.group(1), parse_text(match.group(2)))


def parse_plain(line: str, number: int) -> Sequence:
    return Sequence(f"line{number}", parse_text(line))
