"""Load a converted MLX folder with mlx-lm's loader, in the dtype to compute in."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.utils import load_model

from .errors import UserError

DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}


def on_cpu() -> bool:
    return mx.default_device().type == mx.DeviceType.cpu


def default_compute_dtype() -> Optional[str]:
    """float32 on a CPU, where MLX's bfloat16 matmul is several times slower
    than float32 with a real BLAS; on a GPU the stored dtype, the fast path."""
    return "float32" if on_cpu() else None


def load_mlx_folder(folder: Path, dtype: Optional[str] = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model in `folder` and its config, weights cast to `dtype`
    (None: the default for this device) and read into memory."""
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    try:
        model, config = load_model(folder, lazy=True)
    except FileNotFoundError as e:
        raise UserError(f"{folder} is not a complete MLX model folder ({e}); convert the checkpoint again") from None
    dtype = dtype or default_compute_dtype()
    if dtype is not None:
        model.set_dtype(DTYPES[dtype])
    mx.eval(model.parameters())
    return model, config
