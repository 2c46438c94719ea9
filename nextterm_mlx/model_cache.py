"""The converted-model cache: each HF checkpoint is converted once, then reused.

Entries live in ~/.cache/nextterm-mlx (NEXTTERM_MLX_CACHE, or an explicit
cache_dir), one folder per key. A file lock per key lets two processes ask
for the same model at once: one converts, the other waits and reuses it.
An entry is renamed into place complete, so it is complete or absent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from filelock import FileLock

from .meta import read_meta

LOCKS_DIR = ".locks"


def cache_root(cache_dir: Optional[str | Path] = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("NEXTTERM_MLX_CACHE"):
        return Path(os.environ["NEXTTERM_MLX_CACHE"]).expanduser()
    return Path.home() / ".cache" / "nextterm-mlx"


def cached_conversion(
    root: Path,
    key: str,
    fetch_source: Callable[[], Path],
    source_info: dict[str, Any],
    dtype: Optional[str] = None,
) -> Path:
    """The cache entry `key`, converting `fetch_source()` into it if absent."""
    entry = root / key
    if read_meta(entry) is not None:
        return entry
    (root / LOCKS_DIR).mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / LOCKS_DIR / f"{key}.lock")):
        if read_meta(entry) is not None:  # another process converted it while we waited
            return entry
        source = fetch_source()
        print(f"converting {source} to MLX (once; cached in {entry})", file=sys.stderr)
        from convert.converter import convert_checkpoint  # the runtime needs it only on first use

        return convert_checkpoint(source, entry, dtype=dtype, force=True, source_info=source_info)
