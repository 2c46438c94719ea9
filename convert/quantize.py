"""Quantized MLX weights: 8 or 4 bits, or the mixed_4_8 recipe.

mlx-lm's quantize_model does the work and writes its config format (a
`quantization` key with per-layer overrides), so `mlx_lm.load` reads the
result. The embedding and the output head stay unquantized: each is only
16 x hidden, so there is nothing to gain and fidelity to lose.

Scales and biases are computed from float32 weights, and 8-bit layers keep
them in float32. Quantizing a bfloat16 model the usual way rounds them to
bfloat16, which can move the top level of 255 by half a step as well: as
much error again as 8-bit rounding itself. At 4 bits (15 steps) that shift
is 0.03 of a step, so those stay in the model's dtype, in a smaller file.
Loaders cast them to the dtype they compute in (nextterm_mlx.loading).
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import asdict, dataclass
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map_with_path
from mlx_lm.convert import mixed_quant_predicate_builder
from mlx_lm.utils import quantize_model

from nextterm_mlx.errors import UserError

MODES = ("affine", "mxfp4", "mxfp8", "nvfp4")
RECIPES = ("mixed_4_8",)
UNQUANTIZED = ("embed_tokens", "lm_head")
# The group sizes each mode supports, the first its default.
GROUP_SIZES = {"affine": (64, 32, 128), "mxfp4": (32,), "mxfp8": (32,), "nvfp4": (16,)}
MODE_BITS = {"mxfp4": 4, "mxfp8": 8, "nvfp4": 4}

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quantization:
    bits: int
    group_size: int
    mode: str = "affine"
    recipe: Optional[str] = None

    @property
    def tag(self) -> str:
        """A short name for cache keys and listings: q4g64, mxfp4, mixed_4_8g64."""
        if self.recipe:
            return f"{self.recipe}g{self.group_size}"
        if self.mode != "affine":
            return self.mode
        return f"q{self.bits}g{self.group_size}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quantization_from_options(
    bits: Optional[int], group_size: Optional[int], mode: Optional[str], recipe: Optional[str]
) -> Optional[Quantization]:
    """The quantization the --q-* options ask for, or None for none; checked."""
    if bits is None and recipe is None and mode is None:
        if group_size is not None:
            raise UserError("--q-group-size needs --q-bits, --q-mode or --q-recipe")
        return None
    if mode == "affine" and bits is None and recipe is None:
        raise UserError("--q-mode affine needs --q-bits 4 or 8 (or --q-recipe)")
    if mode in MODE_BITS and bits is not None and bits != MODE_BITS[mode]:
        raise UserError(f"--q-mode {mode} is {MODE_BITS[mode]}-bit; drop --q-bits {bits}")
    mode = mode or "affine"
    if mode not in MODES:
        raise UserError(f"--q-mode {mode!r} is not one of {', '.join(MODES)}")
    if recipe is not None and (recipe not in RECIPES or mode != "affine"):
        raise UserError(f"--q-recipe {recipe!r} is not one of {', '.join(RECIPES)} (affine mode only)")
    if recipe is not None and bits is not None:
        raise UserError("give --q-bits or --q-recipe, not both: the recipe sets the bits per layer")
    bits = 4 if recipe else MODE_BITS.get(mode, bits)
    if bits not in (4, 8) and recipe is None:
        raise UserError(f"--q-bits must be 4 or 8, not {bits}")
    group_size = group_size or GROUP_SIZES[mode][0]
    if group_size not in GROUP_SIZES[mode]:
        allowed = ", ".join(map(str, GROUP_SIZES[mode]))
        raise UserError(f"--q-group-size {group_size} does not work with --q-mode {mode}; use {allowed}")
    return Quantization(bits, group_size, mode, recipe)


def quantize(model: nn.Module, config: dict[str, Any], q: Quantization) -> tuple[dict[str, Any], list[str]]:
    """Quantize `model` in place; its new config and the layers left unquantized
    because the group size does not divide their input size."""
    recipe = mixed_4_8_predicate(model, q.group_size) if q.recipe else None

    def predicate(path: str, module: nn.Module):
        if any(name in path for name in UNQUANTIZED):
            return False
        return recipe(path, module) if recipe else True

    skipped = [
        path for path, module in model.named_modules()
        if isinstance(module, nn.Linear) and not any(name in path for name in UNQUANTIZED)
        and module.weight.shape[-1] % q.group_size != 0
    ]
    dtype = model.model.embed_tokens.weight.dtype  # the dtype everything else stays in
    model.set_dtype(mx.float32)
    # quantize_model prints what it did; a library prints nothing, so that goes to the log.
    with contextlib.redirect_stdout(io.StringIO()) as said:
        _, config = quantize_model(model, config, q.group_size, q.bits, mode=q.mode, quant_predicate=predicate)
    for line in said.getvalue().splitlines():
        if line.strip():
            logger.info("%s", line.strip().removeprefix("[INFO] "))
    float32 = {f"{path}.{name}" for path, module in model.named_modules()
               if isinstance(module, nn.QuantizedLinear) and module.mode == "affine" and module.bits == 8
               for name in ("scales", "biases")}
    model.update(tree_map_with_path(
        lambda path, p: p if path in float32 or not mx.issubdtype(p.dtype, mx.floating) else p.astype(dtype),
        model.parameters(),
    ))
    return config, sorted(skipped)


def mixed_4_8_predicate(model: nn.Module, group_size: int):
    """8 bits for v_proj and down_proj in the first and last eighth of the
    layers and every third layer between, 4 bits elsewhere: mlx-lm's mixed
    recipes' choice of layers, with 8 bits where they use 6."""
    mixed_4_6 = mixed_quant_predicate_builder("mixed_4_6", model, group_size)

    def predicate(path: str, module: nn.Module):
        params = mixed_4_6(path, module)
        return {**params, "bits": 8} if params["bits"] == 6 else params

    return predicate
