"""Peak memory, in bytes, wherever the model's memory lives."""

from __future__ import annotations

import resource
import sys

import mlx.core as mx


def peak_rss_bytes(who: int = resource.RUSAGE_SELF) -> int:
    """The largest resident set so far: getrusage gives it in kilobytes on
    Linux and in bytes on macOS."""
    peak = resource.getrusage(who).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak_memory_bytes() -> int:
    """On a GPU, the most MLX has held at once (Apple's unified memory does
    not show in the resident set); on a CPU, the process's peak resident set."""
    if mx.default_device().type == mx.DeviceType.gpu:
        return mx.get_peak_memory()
    return peak_rss_bytes()
