"""From what a user names (`--model`) to an MLX model folder on disk.

- a converted MLX folder (it has nextterm_meta.json): used as it is;
- a local HF checkpoint folder (config.json + safetensors): converted once
  into the cache and reused while its files are unchanged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from .errors import UserError
from .meta import read_meta
from .model_cache import cache_root, cached_conversion


def resolve_model(model: str | Path, cache_dir: Optional[str | Path] = None) -> Path:
    """The MLX folder to load for `model`."""
    path = Path(model).expanduser()
    if not path.exists():
        raise UserError(f"model {str(model)!r} is neither a folder nor a known model name; give a checkpoint folder")
    if not path.is_dir():
        raise UserError(f"model {str(model)!r} is a file, not a folder; give the checkpoint's folder")
    if read_meta(path) is not None:
        return path
    if not (path / "config.json").exists():
        raise UserError(
            f"{path} has no config.json; give a NextTerm checkpoint folder (config.json + safetensors) "
            "or a folder made by `nextterm-mlx convert`"
        )
    return convert_local_checkpoint(path.resolve(), cache_root(cache_dir))


def convert_local_checkpoint(folder: Path, root: Path) -> Path:
    """A local HF folder's cache entry, keyed by its path and its files'
    sizes and times, so an edited checkpoint is converted again."""
    fingerprint = hashlib.sha256(str(folder).encode())
    for f in sorted(folder.iterdir()):
        if f.is_file():
            stat = f.stat()
            fingerprint.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    key = f"local--{folder.name}--{fingerprint.hexdigest()[:16]}"
    return cached_conversion(root, key, lambda: folder, {"path": str(folder)})
