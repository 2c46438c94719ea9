"""nextterm-mlx: NextTerm-440M, a next-term predictor for integer sequences, on MLX.

    >>> import nextterm_mlx
    >>> p = nextterm_mlx.load("path/to/checkpoint")
    >>> p.predict([1, 1, 2, 3, 5, 8]).value
    13
"""

import os
import platform
import sys
from importlib.metadata import version

__version__ = version("nextterm-mlx")  # pyproject.toml's, the one source

if sys.platform == "darwin" and platform.machine() != "arm64":
    raise ImportError("nextterm-mlx needs an Apple silicon Mac (or Linux): MLX has no build for Intel Macs")

# MLX otherwise computes float32 products as TF32 on newer Apple GPUs and on
# CUDA, which is not the float32 the answers are checked against. MLX reads
# the switch at its first product, so it is set before any can run; a value
# the user set is kept.
os.environ.setdefault("MLX_ENABLE_TF32", "0")

from .errors import UserError  # noqa: E402

__all__ = ["Candidate", "Candidates", "DecodeStats", "Prediction", "Predictor", "StopReason", "UserError", "load",
           "__version__"]


def __getattr__(name: str):
    """The API, imported on first use: importing the converter
    (nextterm_mlx.convert) or the vocabulary does not load it."""
    if name in ("DecodeStats", "Prediction", "StopReason"):
        from . import decode

        return getattr(decode, name)
    if name in ("Candidate", "Candidates"):
        from . import beam

        return getattr(beam, name)
    if name in ("Predictor", "load"):
        from . import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
