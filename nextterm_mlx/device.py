"""Which device MLX computes on: the CPU or the GPU, as the user asks."""

from __future__ import annotations

from typing import Optional

import mlx.core as mx

from . import settings
from .errors import UserError

DEVICES = {"cpu": mx.cpu, "gpu": mx.gpu}


def use_device(name: Optional[str]) -> None:
    """Make `name` MLX's default device; None: NEXTTERM_MLX_DEVICE's, else
    MLX's own default (the GPU where there is one)."""
    name = name or settings.from_environment().device
    if name is None:
        return
    if name not in DEVICES:
        raise UserError(f"device {name!r} is not one of {', '.join(DEVICES)} (--device or NEXTTERM_MLX_DEVICE)")
    if not mx.is_available(DEVICES[name]):
        raise UserError(f"MLX has no GPU on this machine (it has one on Apple silicon Macs); "
                        "use --device cpu, or unset NEXTTERM_MLX_DEVICE")
    mx.set_default_device(DEVICES[name])
