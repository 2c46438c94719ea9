"""From what a user names to an MLX model folder on disk.

- a converted MLX folder (it has nextterm_meta.json): used as it is;
- a local HF checkpoint folder (config.json + safetensors): converted once
  into the cache and reused while its files are unchanged;
- a published checkpoint's name ("final_latest", "best_val", a token count),
  or nothing for the default: downloaded once from the hub, converted once,
  then found in the cache with no network call;
- "tiny": the toy model shipped in the package, converted on first use.

Quantized variants of a source are converted and cached beside it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .errors import UserError
from .hub import DEFAULT_CHECKPOINT, DEFAULT_REPO, PUBLISHED, checkpoint_name, download_checkpoint, subfolder_for
from .meta import damage, read_meta
from .model_cache import cache_root, cached_conversion, entries

if TYPE_CHECKING:
    from .convert.quantize import Quantization


# A toy model shipped in the package, trained by scripts/train_tiny.py, for
# trying the tool offline: not NextTerm-440M.
TINY_NAME = "tiny"
TINY_CHECKPOINT = Path(__file__).parent / "models" / "tiny"


@dataclass
class ResolvedModel:
    path: Path  # the MLX folder to load
    name: str  # what to call it in output


def resolve_model(
    model: Optional[str | Path] = None,
    *,
    checkpoint: Optional[str] = None,
    repo: Optional[str] = None,
    revision: Optional[str] = None,
    quantization: Optional[Quantization] = None,
    cache_dir: Optional[str | Path] = None,
) -> ResolvedModel:
    """The MLX folder for `model` (a folder or a name), or for the published
    `checkpoint` of `repo` at `revision`; by default NextTerm-440M final_latest.
    With `quantization`, a quantized variant converted from the same source."""
    variant = Variant(cache_root(cache_dir), quantization)
    if model is not None and (checkpoint or repo or revision):
        raise UserError("give either --model or --checkpoint/--repo/--revision, not both")
    if model is None:
        repo = repo or DEFAULT_REPO
        name = checkpoint_name(checkpoint or DEFAULT_CHECKPOINT, repo)
        if name is None:
            raise UserError(f"no published checkpoint {checkpoint!r}; choose one of {published_names()}")
        return ResolvedModel(resolve_hub(variant, repo, name, revision), name)

    if str(model) == TINY_NAME:
        return ResolvedModel(convert_local_checkpoint(variant, TINY_CHECKPOINT), TINY_NAME)
    path = Path(model).expanduser()
    if path.is_dir():
        return ResolvedModel(resolve_folder(variant, path), str(model))
    if path.exists():
        raise UserError(f"model {str(model)!r} is a file, not a folder; give the checkpoint's folder")
    name = checkpoint_name(str(model))
    if name is not None:
        return ResolvedModel(resolve_hub(variant, DEFAULT_REPO, name, None), name)
    raise UserError(
        f"model {str(model)!r} is neither a folder nor a model name; give a checkpoint folder "
        f"or one of {published_names()}"
    )


def published_names() -> str:
    return ", ".join([c.name for c in PUBLISHED] + [TINY_NAME])


@dataclass
class Variant:
    """Where converted models go, and which variant of a source is wanted."""

    root: Path
    quantization: Optional[Quantization]

    def key(self, *parts: str) -> str:
        tag = [self.quantization.tag] if self.quantization else []
        return "--".join([*parts, *tag])

    def matches(self, meta: dict) -> bool:
        return meta.get("quantization") == (self.quantization.to_dict() if self.quantization else None)

    def convert(self, key: str, source: Path, source_info: dict) -> Path:
        return cached_conversion(self.root, key, source, source_info, quantization=self.quantization)


def resolve_folder(variant: Variant, path: Path) -> Path:
    meta = read_meta(path)
    if meta is not None:
        problem = damage(path, meta)
        if problem:
            raise UserError(f"{path} is damaged: {problem}; convert the checkpoint again (--force)")
        if variant.quantization and not variant.matches(meta):
            raise UserError(
                f"{path} is already converted; to quantize, give its HF checkpoint folder or a model name "
                "with the --q-* options, or run `nextterm-mlx convert` with them"
            )
        return path
    if not (path / "config.json").exists():
        raise UserError(
            f"{path} has no config.json; give a NextTerm checkpoint folder (config.json + safetensors) "
            "or a folder made by `nextterm-mlx convert`"
        )
    return convert_local_checkpoint(variant, path.resolve())


# What conversion reads from a checkpoint folder: its config and meta (JSON)
# and its weights. Anything else there, such as a README or the .DS_Store a
# Finder window leaves, does not make it another checkpoint.
CHECKPOINT_FILES = ("*.json", "*.safetensors")


def convert_local_checkpoint(variant: Variant, folder: Path) -> Path:
    """A local HF folder's cache entry, keyed by its path and the sizes and
    times of the files conversion reads, so an edited checkpoint is
    converted again."""
    fingerprint = hashlib.sha256(str(folder).encode())
    read = sorted({f for pattern in CHECKPOINT_FILES for f in folder.glob(pattern) if f.is_file()})
    for f in read:
        stat = f.stat()
        fingerprint.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    key = variant.key("local", folder.name, fingerprint.hexdigest()[:16])
    return variant.convert(key, folder, {"path": str(folder)})


def resolve_hub(variant: Variant, repo: str, name: str, revision: Optional[str]) -> Path:
    """A published checkpoint's cache entry: found with no network call when
    converted before, else downloaded (only its subfolder) and converted."""
    subfolder = subfolder_for(name)
    cached = find_hub_entry(variant, repo, subfolder, revision)
    if cached is not None:
        return cached
    folder, commit = download_checkpoint(repo, subfolder, revision)
    key = variant.key(repo.replace("/", "--"), name.replace("/", "--"), commit[:12])
    info = {"repo": repo, "revision": revision or "main", "commit": commit, "subfolder": subfolder}
    return variant.convert(key, folder, info)


def find_hub_entry(variant: Variant, repo: str, subfolder: str, revision: Optional[str]) -> Optional[Path]:
    """The newest entry converted from `subfolder` of `repo` at `revision`
    (a branch asked for before, or a commit sha or its prefix)."""
    wanted = revision or "main"
    matches = [
        e for e in entries(variant.root)
        if variant.matches(e.meta)
        and damage(e.path, e.meta) is None  # a damaged entry is converted again
        and e.source.get("repo") == repo
        and e.source.get("subfolder") == subfolder
        and (e.source.get("revision") == wanted or (len(wanted) >= 7 and e.source.get("commit", "").startswith(wanted)))
    ]
    if not matches:
        return None
    return max(matches, key=lambda e: e.meta.get("created", "")).path
