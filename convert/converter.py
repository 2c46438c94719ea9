"""Convert a NextTerm checkpoint folder (HF format) into an MLX model folder.

The result is a normal mlx-lm folder (config.json, model.safetensors and its
index, tokenizer files) plus nextterm_meta.json. It is built in a temporary
folder beside the target and renamed into place at the end, so a failure or
Ctrl-C leaves either no target or the previous one intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator, Optional

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.models.qwen3 import Model, ModelArgs
from mlx_lm.utils import save_config, save_model
from tqdm import tqdm

from nextterm_mlx.errors import UserError
from nextterm_mlx.meta import META_FILE, folder_checksums

from .hf_checkpoint import (
    DTYPES,
    SOURCE_META_FILE,
    checkpoint_dtype,
    load_weights,
    mlx_config,
    read_config,
    read_json,
    weight_files,
)
from .quantize import Quantization, quantize
from .tokenizer_files import write_tokenizer_files


def convert_checkpoint(
    source: Path,
    target: Path,
    *,
    dtype: Optional[str] = None,
    force: bool = False,
    source_info: Optional[dict[str, Any]] = None,
    allow_nonfinite: bool = False,
    quantization: Optional[Quantization] = None,
) -> Path:
    """Convert the HF checkpoint folder `source` into the MLX folder `target`.

    dtype: "bfloat16", "float16" or "float32"; None keeps the checkpoint's own.
    quantization: quantize the weights (the embedding and head excepted).
    source_info: how the source was obtained (hub repo, revision, subfolder),
    recorded in nextterm_meta.json; a local path is recorded by default.
    """
    source, target = Path(source).resolve(), Path(target).resolve()
    if not source.is_dir():
        raise UserError(f"{source} is not a folder; give the path of a NextTerm checkpoint folder")
    if target == source or source in target.parents:
        raise UserError(f"the target {target} is inside the source {source}; choose a target elsewhere")
    if target.exists() and not force:
        raise UserError(f"{target} already exists; pass --force to replace it")
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")

    hf_config = read_config(source)
    weights = load_weights(weight_files(source))
    dtype = dtype or checkpoint_dtype(hf_config, weights)
    config = mlx_config(hf_config, dtype)
    model = Model(ModelArgs.from_dict(config))
    weights = model.sanitize(weights)
    check_tensor_names_and_shapes(model, weights, source)
    weights = cast_and_check(weights, DTYPES[dtype], source, allow_nonfinite)
    model.load_weights(list(weights.items()))
    left_unquantized: list[str] = []
    if quantization is not None:
        config, left_unquantized = quantize(model, config, quantization)

    meta = {
        "format": "nextterm-mlx",
        "converter_version": version("nextterm-mlx"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source_info or {"path": str(source)},
        "source_files": folder_checksums(source),
        "source_meta": read_json(source / SOURCE_META_FILE, "")
        if (source / SOURCE_META_FILE).exists()
        else None,
        "dtype": dtype,
        "quantization": quantization.to_dict() if quantization else None,
        "left_unquantized": left_unquantized,
    }
    with atomic_folder(target) as building:
        save_model(building, model)
        save_config(config, building / "config.json")
        write_tokenizer_files(building)
        meta["files"] = folder_checksums(building)
        with open(building / META_FILE, "w") as f:
            json.dump(meta, f, indent=2)
    return target


def check_tensor_names_and_shapes(model: Model, weights: dict[str, mx.array], source: Path) -> None:
    """Refuse a checkpoint whose tensors are not exactly the model's, in one line."""
    expected = {name: p.shape for name, p in tree_flatten(model.parameters())}
    missing = sorted(expected.keys() - weights.keys())
    if missing:
        raise UserError(
            f"{source} lacks {len(missing)} tensor(s) the config needs, first {missing[0]!r}; "
            "the download is incomplete or the config does not match the weights"
        )
    extra = sorted(weights.keys() - expected.keys())
    if extra:
        raise UserError(
            f"{source} has {len(extra)} tensor(s) a NextTerm model does not use, first {extra[0]!r}; "
            "it is not a NextTerm checkpoint, or its config.json does not match"
        )
    for name, shape in expected.items():
        if tuple(weights[name].shape) != tuple(shape):
            raise UserError(
                f"{source}: tensor {name!r} has shape {tuple(weights[name].shape)} but config.json "
                f"implies {tuple(shape)}; the config does not match the weights"
            )


def cast_and_check(
    weights: dict[str, mx.array], dtype: mx.Dtype, source: Path, allow_nonfinite: bool
) -> dict[str, mx.array]:
    """Each tensor in `dtype`, read one at a time under a progress bar."""
    cast = {}
    for name, array in tqdm(weights.items(), desc="converting", unit="tensor", disable=None):
        array = array.astype(dtype)
        mx.eval(array)
        if not allow_nonfinite and not mx.all(mx.isfinite(array)).item():
            raise UserError(
                f"{source}: tensor {name!r} holds NaN or Inf values; the checkpoint is damaged "
                "(pass --allow-nonfinite to convert it anyway)"
            )
        cast[name] = array
    return cast


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """A temporary folder beside `target` that replaces it only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield building
        os.chmod(building, 0o755)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, retired / target.name)
            os.rename(building, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(building, target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
