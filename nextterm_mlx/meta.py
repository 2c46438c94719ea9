"""nextterm_meta.json: where a converted folder came from, and its checksums."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

META_FILE = "nextterm_meta.json"
# Sizes and times of the files when their checksums last matched: a folder
# whose files still show them is not hashed again (hashing a full model
# takes a noticeable while).
VERIFIED_FILE = ".verified"


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
            meta = json.load(f)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def damage(folder: Path, meta: dict[str, Any]) -> Optional[str]:
    """What is wrong with a converted folder's files, or None when each
    matches the checksum its meta recorded at conversion."""
    expected = meta.get("files")
    if not isinstance(expected, dict) or not expected:
        return f"{META_FILE} records no checksums"
    signatures = {}
    for name in sorted(expected):
        try:
            stat = (folder / name).stat()
        except FileNotFoundError:
            return f"{name} is missing"
        signatures[name] = [stat.st_size, stat.st_mtime_ns]
    stamp = folder / VERIFIED_FILE
    try:
        if json.loads(stamp.read_text()) == signatures:
            return None
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        pass
    for name, digest in expected.items():
        if sha256_file(folder / name) != digest:
            return f"{name} does not match its checksum"
    try:
        stamp.write_text(json.dumps(signatures))
    except OSError:
        pass  # a read-only folder is verified again next time
    return None
