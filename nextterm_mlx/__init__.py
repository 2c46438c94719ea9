"""nextterm-mlx: NextTerm-440M, a next-term predictor for integer sequences, on MLX.

    >>> import nextterm_mlx
    >>> p = nextterm_mlx.load("path/to/checkpoint")
    >>> p.predict([1, 1, 2, 3, 5, 8]).value
    13
"""

__version__ = "0.1.0"

# Before anything imports mlx.core: it binds its BLAS at import.
from . import blas as _blas  # noqa: E402,F401
from .errors import UserError  # noqa: E402

__all__ = ["Prediction", "Predictor", "UserError", "load", "__version__"]


def __getattr__(name: str):
    """The API, imported on first use: importing the converter
    (nextterm_mlx.convert) or the vocabulary does not load it."""
    if name == "Prediction":
        from .decode import Prediction

        return Prediction
    if name in ("Predictor", "load"):
        from . import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
