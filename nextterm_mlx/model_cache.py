"""The converted-model cache: each HF checkpoint is converted once, then reused.

Entries live in ~/.cache/nextterm-mlx (NEXTTERM_MLX_CACHE, or an explicit
cache_dir), one folder per key. A file lock per key lets two processes ask
for the same model at once: one converts, the other waits and reuses it.
An entry is renamed into place complete, so it is complete or absent.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from filelock import FileLock

from .errors import UserError
from .meta import damage, read_meta

LOCKS_DIR = ".locks"

logger = logging.getLogger(__name__)


def cache_root(cache_dir: Optional[str | Path] = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("NEXTTERM_MLX_CACHE"):
        return Path(os.environ["NEXTTERM_MLX_CACHE"]).expanduser()
    return Path.home() / ".cache" / "nextterm-mlx"


@dataclass
class CacheEntry:
    key: str
    path: Path
    meta: dict[str, Any]

    @property
    def source(self) -> dict[str, Any]:
        return self.meta.get("source") or {}

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())


def entries(root: Path) -> Iterator[CacheEntry]:
    """The complete entries in the cache (partial builds are hidden folders)."""
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        meta = read_meta(path) if not path.name.startswith(".") else None
        if meta is not None:
            yield CacheEntry(path.name, path, meta)


def cached_conversion(
    root: Path, key: str, source: Path, source_info: dict[str, Any], quantization: Any = None
) -> Path:
    """The cache entry `key`, converting the HF folder `source` into it if
    absent or damaged (a file changed or missing since conversion)."""
    entry = root / key
    if intact(entry):
        return entry
    (root / LOCKS_DIR).mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / LOCKS_DIR / f"{key}.lock")):
        if intact(entry):  # another process converted it while we waited
            return entry
        if entry.exists():
            problem = damage(entry, read_meta(entry) or {})
            logger.warning("cache entry %s is damaged (%s); converting it again", key, problem)
        logger.info("converting %s to MLX (once; cached as %s)", source, key)
        from .convert.converter import convert_checkpoint  # the runtime needs it only on first use

        return convert_checkpoint(source, entry, force=True, source_info=source_info, quantization=quantization)


def intact(entry: Path) -> bool:
    meta = read_meta(entry)
    return meta is not None and damage(entry, meta) is None


def remove_entry(root: Path, name: str) -> list[str]:
    """Remove the entry keyed `name`, or every entry of the checkpoint `name`."""
    matches = [e for e in entries(root) if name in (e.key, Path(e.source.get("subfolder") or "-").name)]
    if not name or not matches:
        raise UserError(f"no cached model {name!r} in {root}; `nextterm-mlx models` lists them")
    for entry in matches:
        with FileLock(str(root / LOCKS_DIR / f"{entry.key}.lock")):
            shutil.rmtree(entry.path)
    return [e.key for e in matches]
