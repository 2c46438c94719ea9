"""Build the local OEIS index from a stripped file and a names file.

The index is written into a temporary file beside the old one and renamed
over it only when complete, so a failed or interrupted build (a truncated
gzip, Ctrl-C, a full disk) leaves the previous index as it was.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from ..errors import UserError
from .files import Reader
from .index import FORMAT, SCHEMA, WINDOW, window_key

# The file is of no use until it is complete and renamed, so nothing is
# journaled or synced while it is written; it is synced once before the rename.
PRAGMAS = "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -262144;"
BATCH = 200_000  # windows held in memory before they are written

logger = logging.getLogger(__name__)


@dataclass
class BuildReport:
    """What a build read: the sequences indexed and the lines skipped, by file."""

    sequences: int
    problems: dict[str, list[str]]  # file -> "line N: what is wrong", one per skipped line


def build_index(stripped: Path, names: Optional[Path], target: Path, source: str) -> BuildReport:
    """Index the stripped file (and the names file, if any) into `target`, replacing it only when done."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".index-", suffix=".partial", dir=target.parent)
    os.close(fd)
    partial = Path(name)
    try:
        report = write_index(partial, stripped, names, source)
        with partial.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, target)
    except UserError as e:
        kept = "the previous index is unchanged" if target.exists() else "no index was built"
        raise UserError(f"{e}; {kept}") from None
    finally:
        partial.unlink(missing_ok=True)
    return report


def write_index(path: Path, stripped: Path, names: Optional[Path], source: str) -> BuildReport:
    readers = {str(stripped): Reader(stripped)}
    name_of = {}
    if names is not None:
        readers[str(names)] = Reader(names)
        name_of = dict(readers[str(names)].names())
    sequences = readers[str(stripped)]
    db = sqlite3.connect(path)
    try:
        db.executescript(PRAGMAS + SCHEMA + "CREATE TEMP TABLE unsorted (key TEXT, seq INTEGER);")
        count, rows, windows = 0, [], []
        for id, terms in sequences.sequences():
            count += 1
            rows.append((id, name_of.get(id), terms))
            fields = terms[1:-1].split(",")
            windows += [(key, id) for key in {window_key(fields[i:i + WINDOW]) for i in range(len(fields))}]
            if len(windows) >= BATCH:
                write_rows(db, rows, windows)
        write_rows(db, rows, windows)
        # In key order, the windows' B-tree is written page after page instead of at random.
        db.execute("INSERT INTO windows SELECT key, seq FROM unsorted ORDER BY key, seq")
        db.execute("DROP TABLE unsorted")
        meta = {"format": FORMAT, "built": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                "source": source, "sequences": str(count), "data_date": sequences.date}
        db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, v) for k, v in meta.items() if v is not None])
        db.commit()
    finally:
        db.close()
    if count == 0:
        raise UserError(f"{stripped} holds no OEIS sequence (lines such as 'A000045 ,0,1,1,2,3,5,'); "
                        "give the OEIS's stripped file")
    return BuildReport(count, {file: reader.problems for file, reader in readers.items() if reader.problems})


def write_rows(db: sqlite3.Connection, rows: list, windows: list) -> None:
    db.executemany("INSERT INTO sequences VALUES (?, ?, ?)", rows)
    db.executemany("INSERT INTO unsorted VALUES (?, ?)", windows)
    rows.clear()
    windows.clear()
