"""The local OEIS index: an SQLite file in the cache, and the search over it.

Tables:
- sequences(id, name, terms): id the A-number as an integer; terms as text in
  the OEIS's spelling with a comma before and after each term (",0,1,1,2,"),
  so that signed terms of any size are kept exactly and a run of terms is a
  substring: ",1,2," occurs in it exactly where the terms 1, 2 do.
- windows(key, seq): for each position of each sequence, the text of the
  WINDOW terms that start there ("1,1,2,3,"; fewer at the end), cut to
  KEY_CHARS characters; one row per distinct key and sequence.

A query looks up the keys that begin like its own first terms (a range of
the windows' primary key), then checks each sequence found with the whole
query as a substring: no query reads every sequence. A query of fewer than
WINDOW terms takes the same path, but a short, common one finds a large
share of the OEIS and takes longer.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from ..errors import UserError
from ..model_cache import cache_root
from ..terms import check_terms
from .files import a_number
from .transforms import Transform, transforms_of

FORMAT = "1"  # of the tables: an index of another format is built again
WINDOW = 4
KEY_CHARS = 16
ATTRIBUTION = ("The OEIS data is CC BY-SA 4.0: The On-Line Encyclopedia of Integer Sequences, https://oeis.org "
               "(OEIS Foundation Inc.)")
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sequences (id INTEGER PRIMARY KEY, name TEXT, terms TEXT NOT NULL);
CREATE TABLE windows (key TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (key, seq)) WITHOUT ROWID;
"""
SEARCH = """
SELECT id, name, terms, instr(terms, :pattern) AS at FROM sequences
WHERE id IN (SELECT seq FROM windows WHERE key >= :low AND key < :high) AND at > 0
ORDER BY at > 1, id LIMIT :limit
"""
# Driven by the windows, so that it stops at the first sequence that holds the query.
CONTAINS = """
SELECT 1 FROM windows JOIN sequences ON id = seq
WHERE key >= :low AND key < :high AND instr(terms, :pattern) > 0 LIMIT 1
"""


def index_path(cache_dir: Optional[str | Path] = None) -> Path:
    """Where the OEIS index is kept: oeis/index.sqlite in the cache."""
    return cache_root(cache_dir) / "oeis" / "index.sqlite"


def window_key(terms: list[str]) -> str:
    """The key of the terms from one position on (as text): the first WINDOW of them, cut to KEY_CHARS."""
    return (",".join(terms[:WINDOW]) + ",")[:KEY_CHARS]


@dataclass
class Match:
    """A sequence of the local OEIS in which the query (or a transform of it) occurs."""

    id: str  # "A000045"
    name: Optional[str]  # None when the names file did not name it
    offset: int  # 0-based index in the stored terms where the query starts
    next: Optional[int]  # the stored term after the match; None at the end of the stored terms
    transform: Optional[Transform] = None  # None: the query itself matched

    @property
    def query_next(self) -> Optional[int]:
        """The query's next term that this match implies: `next`, with the transform undone."""
        return self.transform.query_next(self.next) if self.transform else self.next

    def to_dict(self) -> dict[str, Any]:
        """The match as `oeis search --json` prints it."""
        record = {"id": self.id, "name": self.name, "offset": self.offset, "next": self.next}
        if self.transform is not None:
            record["transform"] = {"name": self.transform.name, "description": self.transform.describe(),
                                   "terms": self.transform.terms, "query_next": self.query_next}
        return record


class Index:
    """The local OEIS index, open for reading; see `open_index`."""

    def __init__(self, path: Path):
        self.path = path
        try:
            # check_same_thread off: a server's worker threads share it, and it is only read.
            self.db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            self.meta = dict(self.db.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as e:
            raise UserError(f"the OEIS index {path} can't be read ({e}); build it again with "
                            "`nextterm-mlx oeis download`") from None
        if self.meta.get("format") != FORMAT:
            raise UserError(f"the OEIS index {path} was built by another version of nextterm-mlx; build it "
                            "again with `nextterm-mlx oeis download`")

    def search(self, terms: Iterable[Any], limit: int = 10, transforms: bool = False) -> list[Match]:
        """The sequences in which `terms` occur as consecutive terms, best first: those that start with
        them, then the others, each by A-number; at most `limit`."""
        terms = check_terms(terms)
        if limit < 1:
            raise UserError(f"limit {limit} is not a positive number of matches")
        matches = self.find(terms, limit)
        for transform in transforms_of(terms) if transforms else ():
            if len(matches) == limit:
                break
            seen = {m.id for m in matches}
            found = [m for m in self.find(transform.terms, limit) if m.id not in seen]
            matches += [Match(m.id, m.name, m.offset, m.next, transform) for m in found[: limit - len(matches)]]
        return matches

    def contains(self, terms: Iterable[Any]) -> bool:
        """Whether `terms` occur as consecutive terms in some sequence of the index."""
        terms = check_terms(terms)
        return self.db.execute(CONTAINS, query_parameters(terms)).fetchone() is not None

    def find(self, terms: list[int], limit: int) -> list[Match]:
        parameters = query_parameters(terms)
        rows = self.db.execute(SEARCH, {**parameters, "limit": limit})
        return [matched(row, parameters["pattern"]) for row in rows]

    def info(self) -> dict[str, Any]:
        """The index's path, when and from what it was built, its number of sequences and its size."""
        return {"path": str(self.path), "built": self.meta["built"], "source": self.meta["source"],
                "data_date": self.meta.get("data_date"), "sequences": int(self.meta["sequences"]),
                "size_bytes": os.path.getsize(self.path), "license": ATTRIBUTION}

    def close(self) -> None:
        """Close the SQLite connection (a `with` block does it too)."""
        self.db.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def query_parameters(terms: list[int]) -> dict[str, str]:
    text = [str(t) for t in terms]
    low = window_key(text)
    return {"low": low, "high": low[:-1] + chr(ord(low[-1]) + 1), "pattern": "," + ",".join(text) + ","}


def matched(row: tuple, pattern: str) -> Match:
    id, name, terms, at = row
    start = at - 1  # instr counts from 1
    after = terms[start + len(pattern):]
    next = int(after[: after.index(",")]) if after else None
    return Match(a_number(id), name, terms.count(",", 0, start), next)


def open_index(cache_dir: Optional[str | Path] = None) -> Optional[Index]:
    """The local OEIS index in the cache, or None when none was built."""
    path = index_path(cache_dir)
    return Index(path) if path.is_file() else None


def require_index(cache_dir: Optional[str | Path] = None) -> Index:
    """The local OEIS index in the cache; a UserError that says how to build it when there is none."""
    index = open_index(cache_dir)
    if index is None:
        raise UserError(f"there is no OEIS index in {index_path(cache_dir).parent}; run `nextterm-mlx oeis download` "
                        "(or `nextterm-mlx oeis download --from DIR` with the stripped and names files you have)")
    return index
