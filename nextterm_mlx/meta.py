"""nextterm_meta.json: where a converted folder came from, and its checksums."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

META_FILE = "nextterm_meta.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file directly in a folder, by file name."""
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


def read_meta(folder: Path) -> dict[str, Any] | None:
    """A converted folder's meta, or None when the folder is not one of ours."""
    try:
        with open(folder / META_FILE) as f:
            return json.load(f)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
