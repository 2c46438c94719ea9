"""Load a converted MLX folder into our model with mlx-lm's loader, in the
dtype to compute in, with the kernels for the device it runs on."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional

import mlx.core as mx
from mlx.utils import tree_unflatten
from mlx_lm.utils import dequantize_model, load_model

from .dtypes import DTYPES
from .errors import UserError
from .model import Kernels, Model, ModelArgs

logger = logging.getLogger(__name__)


def on_cpu() -> bool:
    return mx.default_device().type == mx.DeviceType.cpu


# The reference computes in float32, so the answers are exactly its answers
# wherever the tool runs; bfloat16 and float16 are the opt-in for speed.
DEFAULT_DTYPE = "float32"


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
    float32) and read into memory.

    Quantized weights are dequantized on a CPU, where MLX's quantized matmul
    is scalar and several times slower than float32, unless `keep_quantized`.
    In float32, the weights the kernels multiply as stored stay as stored
    (on a Linux CPU: bfloat16, half the memory and the same numbers; 8-bit).
    """
    dtype = dtype or DEFAULT_DTYPE
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    try:
        model, config = load_model(folder, lazy=True, get_model_classes=lambda config: (Model, ModelArgs))
    except FileNotFoundError as e:
        raise UserError(f"{folder} is not a complete MLX model folder ({e}); convert the checkpoint again") from None
    kernels = kernels_for_this_device()
    as_stored = [(name, module, module.weight) for name, module in model.named_modules()
                 if dtype == "float32" and kernels.reads_stored(module)]
    if config.get("quantization") and on_cpu() and not keep_quantized:
        logger.info("dequantizing the weights to %s to run on the CPU, where quantized matmul is slow "
                    "(--keep-quantized to keep them)", dtype)
        model.set_dtype(DTYPES[dtype])  # first, so that scale * q + bias is computed in `dtype`
        # Lazily: the layers read as stored are put back below, before any is computed.
        model = dequantize_model(model)
    # Quantized weights stay integers; their scales and biases, and every
    # other weight, are cast.
    model.set_dtype(DTYPES[dtype])
    for _, module, weight in as_stored:
        module.weight = weight
    model.update_modules(tree_unflatten([(name, module) for name, module, _ in as_stored]))
    model.kernels = kernels
    mx.eval(model.parameters())
    return model, config
