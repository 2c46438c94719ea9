"""Read the OEIS's `stripped` and `names` files, gzipped or plain.

- stripped: `A000045 ,0,1,1,2,3,5,8,` (a sequence's terms as the OEIS shows them)
- names: `A000045 Fibonacci numbers: F(n) = F(n-1) + F(n-2) ...`

"#" lines (the files' headers) and blank lines are skipped. A line that can't
be read is reported with its number and skipped, as `eval` does with
sequence files; so is an A-number seen before. A truncated or damaged gzip
file ends the reading with a UserError: nothing read from it can be trusted
to be the whole file.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from pathlib import Path
from typing import Iterator, TextIO

from ..errors import UserError
from ..sequence_files import parse_oeis

GZIP_MAGIC = b"\x1f\x8b"
# The OEIS's own spelling of a line (no leading zeros, no "-0"): such lines,
# nearly all of them, are taken as they are, without parsing every term.
CANONICAL = re.compile(r"A([0-9]+) ,((?:-?(?:0|[1-9][0-9]*),)+)")
NAME_LINE = re.compile(r"A([0-9]+)\s+(\S.*)")
# The date the OEIS writes in the header of its files.
LAST_MODIFIED = re.compile(r"#.*Last Modified:\s*(.+?)\s*$")


def a_number(number: int) -> str:
    return f"A{number:06d}"


def open_text(path: Path) -> TextIO:
    """The file as text, gunzipped if it is a gzip file (whatever its name)."""
    with path.open("rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    raw = gzip.open(path, "rb") if compressed else path.open("rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig")


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The lines of a file, numbered from 1; a damaged file is a UserError."""
    try:
        with open_text(path) as f:
            yield from enumerate(f, start=1)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise UserError(f"{path} is truncated or damaged ({e}); fetch it again") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not a UTF-8 text file ({e})") from None


class Reader:
    """Reads one file, keeping the problems of the lines it skipped and the
    date the file's header gives, if any."""

    def __init__(self, path: Path):
        self.path = path
        self.problems: list[str] = []
        self.date: str | None = None
        self.seen: set[int] = set()

    def data_lines(self) -> Iterator[tuple[int, str]]:
        for number, line in numbered_lines(self.path):
            line = line.strip()
            if line.startswith("#"):
                date = LAST_MODIFIED.match(line)
                self.date = self.date or (date.group(1) if date else None)
            elif line:
                yield number, line

    def first_time(self, id: int, number: int) -> bool:
        if id in self.seen:
            self.problems.append(f"line {number}: {a_number(id)} appeared before")
            return False
        self.seen.add(id)
        return True

    def sequences(self) -> Iterator[tuple[int, str]]:
        """(A-number, terms) of a stripped file; the terms as text in the
        OEIS's spelling with a comma before and after each, ",0,1,1,2,"."""
        for number, line in self.data_lines():
            match = CANONICAL.fullmatch(line)
            if match:
                id, terms = int(match.group(1)), "," + match.group(2)
            else:
                try:
                    sequence = parse_oeis(line, number)
                except ValueError as e:
                    self.problems.append(f"line {number}: {e}")
                    continue
                id, terms = int(sequence.id[1:]), "," + "".join(f"{t}," for t in sequence.terms)
            if self.first_time(id, number):
                yield id, terms

    def names(self) -> Iterator[tuple[int, str]]:
        """(A-number, name) of a names file."""
        for number, line in self.data_lines():
            match = NAME_LINE.fullmatch(line)
            if not match:
                self.problems.append(f"line {number}: expected an A-number and a name, such as "
                                     "'A000045 Fibonacci numbers'")
            elif self.first_time(int(match.group(1)), number):
                yield int(match.group(1)), match.group(2)
