"""Load a converted MLX folder into our model with mlx-lm's loader, in the
dtype to compute in, with the kernels for the device it runs on."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional

import mlx.core as mx
from mlx_lm.utils import dequantize_model, load_model

from .dtypes import DTYPES
from .errors import UserError
from .model import Kernels, Model, ModelArgs

logger = logging.getLogger(__name__)


def on_cpu() -> bool:
    return mx.default_device().type == mx.DeviceType.cpu


def default_compute_dtype(config: dict[str, Any]) -> Optional[str]:
    """float32 on a CPU, where MLX's bfloat16 matmul is several times slower
    than float32 with a real BLAS; on a GPU the dtype the folder was converted
    in, the fast path (quantization scales, stored in float32, cast to it)."""
    if on_cpu():
        return "float32"
    stored = config.get("torch_dtype")
    return stored if stored in DTYPES else None


def kernels_for_this_device() -> Kernels:
    """The Linux-CPU kernels where MLX computes on a Linux CPU, else MLX's own."""
    if sys.platform.startswith("linux") and on_cpu():
        from . import settings
        from .cpu.kernels import CPUKernels

        return CPUKernels(settings.from_environment())
    return Kernels()


def load_mlx_folder(
    folder: Path, dtype: Optional[str] = None, keep_quantized: bool = False
) -> tuple[Model, dict[str, Any]]:
    """The model in `folder` and its config, weights cast to `dtype` (None:
    the default for this device) and read into memory.

    Quantized weights are dequantized on a CPU, where MLX's quantized matmul
    is scalar and several times slower than float32, unless `keep_quantized`.
    """
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    try:
        model, config = load_model(folder, lazy=True, get_model_classes=lambda config: (Model, ModelArgs))
    except FileNotFoundError as e:
        raise UserError(f"{folder} is not a complete MLX model folder ({e}); convert the checkpoint again") from None
    if config.get("quantization") and on_cpu() and not keep_quantized:
        dtype = dtype or "float32"
        logger.info("dequantizing the weights to %s to run on the CPU, where quantized matmul is slow "
                 "(--keep-quantized to keep them)", dtype)
        model.set_dtype(DTYPES[dtype])  # first, so that scale * q + bias is computed in `dtype`
        model = dequantize_model(model)
    dtype = dtype or default_compute_dtype(config)
    if dtype is not None:
        model.set_dtype(DTYPES[dtype])
    model.kernels = kernels_for_this_device()
    mx.eval(model.parameters())
    return model, config
